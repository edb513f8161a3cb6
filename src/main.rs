//! The `freelunch` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use freelunch::device::Device;
use freelunch::weights::{Checkpoint, ModelFiles};
use freelunch::{safetensors_io, UNet, UNetConfig, UNetInputs};

#[derive(Parser)]
#[command(
    name = "freelunch",
    version,
    about = "Diffusion U-Nets from diffusers checkpoints"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One U-Net forward pass: what diffusers' `model(sample, timestep, ...).sample` returns.
    Forward {
        /// diffusers model folder (config.json + weights) or pipeline folder with unet/.
        #[arg(long)]
        model: PathBuf,
        /// safetensors with `sample`, `timestep` and the model's conditioning tensors.
        #[arg(long)]
        input: PathBuf,
        /// safetensors to write; holds `sample`, f32 [B, C_out, H, W].
        #[arg(long)]
        output: PathBuf,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// CPU threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> freelunch::Result<()> {
    match cli.command {
        Command::Forward {
            model,
            input,
            output,
            device,
            threads,
        } => {
            let device: Device = device.parse()?;
            device.ensure_available()?;
            let pool = thread_pool(threads)?;
            pool.install(|| {
                let files = ModelFiles::locate(&model)?;
                let config = UNetConfig::from_file(&files.config)?;
                let mut ckpt = Checkpoint::load(&files.weights)?;
                let unet = UNet::load(config, &mut ckpt)?;
                let unused = ckpt.remaining();
                if !unused.is_empty() {
                    eprintln!(
                        "warning: {} checkpoint tensors were not used by the model (first: `{}`)",
                        unused.len(),
                        unused[0]
                    );
                }
                let inputs = UNetInputs::load(&input)?;
                let out = unet.forward(&inputs)?;
                safetensors_io::save(&output, &[("sample", &out)])
            })
        }
    }
}

fn thread_pool(threads: Option<usize>) -> freelunch::Result<rayon::ThreadPool> {
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(n) = threads {
        if n == 0 {
            return Err(freelunch::Error::Msg("--threads must be at least 1".into()));
        }
        builder = builder.num_threads(n);
    }
    builder
        .build()
        .map_err(|e| freelunch::Error::Msg(format!("cannot start the thread pool: {e}")))
}
