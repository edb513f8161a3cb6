//! The `freelunch` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use std::sync::Arc;

use freelunch::boosters::deme::{self, Router};
use freelunch::boosters::mask_generator::{Gumbel, MaskGenerator};
use freelunch::boosters::{Boosters, FreeU, FreeUBlocks, MaskSet, SkipScales};
use freelunch::cpu::fourier::FilterForm;
use freelunch::device::{DType, Device, Exec};
use freelunch::models::{Placed, Runnable};
use freelunch::schedulers::{
    self, Conditioning, SampleOptions, SamplerKind, SchedulerConfig, SeededNoise,
};
use freelunch::weights::{Checkpoint, ModelFiles};
use freelunch::Tensor;
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
        #[arg(long, required_unless_present = "route", conflicts_with = "route")]
        model: Option<PathBuf>,
        /// DeMe: unmerged experts (low timesteps first), each serving its share of the
        /// timesteps, instead of --model.
        #[arg(long, value_name = "D1,D2,...", value_delimiter = ',')]
        route: Option<Vec<PathBuf>>,
        /// Training timesteps T the routed experts split between them.
        #[arg(long, default_value_t = 1000, requires = "route")]
        route_timesteps: usize,
        /// safetensors with `sample`, `timestep` and the model's conditioning tensors.
        #[arg(long)]
        input: PathBuf,
        /// safetensors to write; holds `sample`, f32 [B, C_out, H, W].
        #[arg(long)]
        output: PathBuf,
        #[command(flatten)]
        device: DeviceArgs,
        /// CPU threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        #[command(flatten)]
        boosters: BoosterArgs,
    },
    /// Generate samples: diffusers' sampling loop with any booster of `forward`.
    Sample {
        /// diffusers model or pipeline folder (default: the built-in MNIST digit model).
        #[arg(long)]
        model: Option<PathBuf>,
        /// scheduler_config.json, its folder, or a pipeline folder (default: the model's
        /// pipeline folder).
        #[arg(long, value_name = "DIR_OR_JSON")]
        scheduler: Option<PathBuf>,
        /// Overrides the config's `_class_name`: ddpm, ddim, euler, heun, dpmpp-2m.
        #[arg(long)]
        sampler: Option<String>,
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Seed of the initial noise and of stochastic samplers' noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Samples in the batch (ignored with --noise).
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Initial noise: tensor `sample`, standard normal, unscaled, [B, C, H, W].
        #[arg(long, value_name = "NOISE.safetensors")]
        noise: Option<PathBuf>,
        /// DDIM's eta (0: deterministic).
        #[arg(long, default_value_t = 0.0)]
        eta: f32,
        /// Classifier-free guidance scale (needs --cond with uncond_hidden_states).
        #[arg(long)]
        guidance: Option<f32>,
        /// `encoder_hidden_states` (and `uncond_hidden_states`, `class_labels`) for conditional
        /// models.
        #[arg(long, value_name = "COND.safetensors")]
        cond: Option<PathBuf>,
        #[command(flatten)]
        device: DeviceArgs,
        /// CPU threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        #[command(flatten)]
        boosters: BoosterArgs,
        /// .png (image grid; pixel models) or .safetensors (the final sample, unclamped).
        #[arg(long)]
        output: PathBuf,
    },
    /// Score digit samples (like the built-in model's): the built-in classifier's mean
    /// confidence, and the FID of its features against the real digits.
    Eval {
        /// safetensors with `sample` [B, 1, 28, 28] in [-1, 1] (`sample --output X.safetensors`).
        #[arg(long)]
        images: PathBuf,
    },
    /// DeMe: merge timestep experts by task arithmetic, θ = θ0 + Σ w_i (θ_i − θ0), into a
    /// diffusers folder.
    Merge {
        /// The model the experts were fine-tuned from.
        #[arg(long)]
        base: PathBuf,
        /// Expert folders.
        #[arg(long, value_name = "D1,D2,...", value_delimiter = ',', required = true)]
        experts: Vec<PathBuf>,
        /// One weight per expert (need not sum to 1; DeMe's default for four: 0.1,0.1,0.2,0.5).
        #[arg(
            long,
            value_name = "W1,W2,...",
            value_delimiter = ',',
            required = true,
            allow_negative_numbers = true
        )]
        weights: Vec<f32>,
        /// Output folder (config.json + diffusion_pytorch_model.safetensors).
        #[arg(long)]
        out: PathBuf,
    },
}

/// The training-free boosters (SPEC §3–5).
/// Where the U-Net runs.
#[derive(Args)]
struct DeviceArgs {
    /// auto (the first GPU if there is one, else the CPU), cpu, cuda, cuda:N, or emu / emu:N
    /// (the CUDA backend on the PTX executor, which runs the kernels on the CPU and checks them:
    /// for developing and testing kernels without a GPU).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Storage type of weights and activations on the GPU: f32, f16 or bf16 (f32
    /// accumulation throughout). The CPU computes in f32 only.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

impl DeviceArgs {
    fn open(&self) -> freelunch::Result<Exec> {
        let device: Device = self.device.parse()?;
        let dtype: DType = self.dtype.parse()?;
        device.open(dtype)
    }
}

#[derive(Args)]
struct BoosterArgs {
    /// FreeU: B1,B2,S1,S2 or a preset (sd14, sd15, sd21, sdxl).
    #[arg(long, value_name = "B1,B2,S1,S2|PRESET")]
    freeu: Option<String>,
    /// Which decoder resnets FreeU acts on.
    #[arg(long, value_enum, default_value = "stage", requires = "freeu")]
    freeu_blocks: Blocks,
    /// FreeU v2: backbone factor modulated by the normalised channel mean.
    #[arg(long, requires = "freeu")]
    freeu_v2: bool,
    /// Half-width of FreeU's low-frequency window.
    #[arg(long, default_value_t = 1, requires = "freeu")]
    freeu_threshold: usize,
    /// How the Fourier filter is computed (both exact; direct is the faster).
    #[arg(long, value_enum, default_value = "direct", requires = "freeu")]
    freeu_filter: Filter,
    /// Skip-Tuning: skip factors varying linearly from the outermost to the innermost skip.
    #[arg(
        long,
        value_name = "RHO_TOP,RHO_BOTTOM",
        conflicts_with = "skip_scales"
    )]
    skip_tuning: Option<String>,
    /// One factor per skip, in encoder order (conv_in's output first).
    #[arg(long, value_name = "R0,R1,...")]
    skip_scales: Option<String>,
    /// MaskUNet masks: safetensors keyed by weight name, u8/bool, shared [..], per sample
    /// [B, ..] or per step and sample [steps, B, ..].
    #[arg(long, value_name = "FILE.safetensors")]
    masks: Option<PathBuf>,
    /// The sampler step whose masks a forward call uses (per-step mask files; it also seeds
    /// the mask generator's noise).
    #[arg(long, default_value_t = 0)]
    mask_step: usize,
    /// MaskUNet's hyper-network (official parameter names, converted to safetensors by
    /// tools/convert_maskunet_checkpoint.py): masks computed inside each call.
    #[arg(long, value_name = "FILE.safetensors", conflicts_with = "masks")]
    mask_generator: Option<PathBuf>,
    /// Seed of the generator's Gumbel noise (the official inference seeds 42).
    #[arg(
        long,
        default_value_t = 42,
        requires = "mask_generator",
        conflicts_with = "no_gumbel"
    )]
    gumbel_seed: u64,
    /// No Gumbel noise: deterministic masks, logit > 0.
    #[arg(long, requires = "mask_generator")]
    no_gumbel: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Blocks {
    Stage,
    Channels,
}

#[derive(Clone, Copy, ValueEnum)]
enum Filter {
    Fft,
    Direct,
}

fn numbers(flag: &str, text: &str) -> freelunch::Result<Vec<f32>> {
    text.split(',')
        .map(|v| {
            v.trim().parse::<f32>().map_err(|_| {
                freelunch::Error::Msg(format!("--{flag}: `{v}` is not a number (in `{text}`)"))
            })
        })
        .collect()
}

impl BoosterArgs {
    /// The boosters for `unet` (masks are checked against its layers).
    fn boosters(&self, unet: &UNet) -> freelunch::Result<Boosters> {
        let freeu = match &self.freeu {
            None => None,
            Some(spec) => {
                let mut f = if spec.contains(',') || spec.parse::<f32>().is_ok() {
                    match numbers("freeu", spec)?[..] {
                        [b1, b2, s1, s2] => FreeU::new(b1, b2, s1, s2),
                        _ => {
                            return Err(freelunch::Error::Msg(format!(
                                "--freeu takes four numbers B1,B2,S1,S2 or a preset, got `{spec}`"
                            )))
                        }
                    }
                } else {
                    FreeU::preset(spec)?
                };
                f.blocks = match self.freeu_blocks {
                    Blocks::Stage => FreeUBlocks::Stage,
                    Blocks::Channels => FreeUBlocks::Channels,
                };
                f.v2 = self.freeu_v2;
                f.threshold = self.freeu_threshold;
                f.filter = match self.freeu_filter {
                    Filter::Fft => FilterForm::Fft,
                    Filter::Direct => FilterForm::Direct,
                };
                Some(f)
            }
        };
        let skip_scales = match (&self.skip_tuning, &self.skip_scales) {
            (Some(spec), _) => match numbers("skip-tuning", spec)?[..] {
                [top, bottom] => Some(SkipScales::Linear { top, bottom }),
                _ => {
                    return Err(freelunch::Error::Msg(format!(
                        "--skip-tuning takes two numbers RHO_TOP,RHO_BOTTOM, got `{spec}`"
                    )))
                }
            },
            (None, Some(spec)) => Some(SkipScales::Explicit(numbers("skip-scales", spec)?)),
            (None, None) => None,
        };
        let gumbel = if self.no_gumbel {
            Gumbel::Off
        } else {
            Gumbel::Seeded(self.gumbel_seed)
        };
        let mask_generator = match &self.mask_generator {
            Some(path) => Some(Arc::new(MaskGenerator::load(path, unet, gumbel)?)),
            None => None,
        };
        let masks = match &self.masks {
            Some(path) => Some(Arc::new(MaskSet::load(path, unet.layers())?)),
            None => None,
        };
        Ok(Boosters {
            skip_scales,
            freeu,
            masks,
            mask_step: self.mask_step,
            mask_generator,
        })
    }
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
            route,
            route_timesteps,
            input,
            output,
            device,
            threads,
            boosters,
        } => {
            let mut read = vec![input.clone()];
            for dir in model.iter().chain(route.iter().flatten()) {
                read.extend(model_paths(dir));
            }
            refuse_overwriting(&output, &read)?;
            let exec = device.open()?;
            let pool = thread_pool(threads)?;
            pool.install(|| {
                let inputs = UNetInputs::load(&input)?;
                let out = match (model, route) {
                    (_, Some(dirs)) => {
                        let router = Router::from_dirs(&dirs, route_timesteps)?;
                        let b = boosters.boosters(&router.experts()[0])?;
                        router.run(&exec, &inputs, &b)?
                    }
                    (Some(model), None) => {
                        let unet = load_reporting_unused(&model)?;
                        unet.run(&exec, &inputs, &boosters.boosters(&unet)?)?
                    }
                    (None, None) => unreachable!("clap requires --model or --route"),
                };
                safetensors_io::save(&output, &[("sample", &out)])
            })
        }
        Command::Sample {
            model,
            scheduler,
            sampler,
            steps,
            seed,
            batch,
            noise,
            eta,
            guidance,
            cond,
            device,
            threads,
            boosters,
            output,
        } => {
            let mut read: Vec<PathBuf> = noise
                .iter()
                .chain(cond.iter())
                .chain(scheduler.iter())
                .cloned()
                .collect();
            if let Some(m) = &model {
                read.extend(model_paths(m));
            }
            refuse_overwriting(&output, &read)?;
            let exec = device.open()?;
            let ext = output.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext != "png" && ext != "safetensors" {
                return Err(freelunch::Error::Msg(format!(
                    "--output must end in .png or .safetensors, got {}",
                    output.display()
                )));
            }
            let pool = thread_pool(threads)?;
            pool.install(|| {
                let (unet, config, origin) = match &model {
                    Some(m) => {
                        let path = match scheduler {
                            Some(p) => p,
                            None => scheduler_beside(m)?,
                        };
                        let config = SchedulerConfig::from_path(&path)?;
                        (
                            load_reporting_unused(m)?,
                            config,
                            path.display().to_string(),
                        )
                    }
                    None => {
                        let config = match scheduler {
                            Some(p) => SchedulerConfig::from_path(&p)?,
                            None => freelunch::builtin::scheduler()?,
                        };
                        (freelunch::builtin::unet()?, config, "built-in".to_string())
                    }
                };
                let kind = match (&sampler, config.class) {
                    (Some(s), _) => SamplerKind::from_short_name(s)?,
                    (None, Some(k)) => k,
                    (None, None) => {
                        return Err(freelunch::Error::Msg(format!(
                            "{origin}: its _class_name names no sampler implemented here; \
                             pick one with --sampler ddpm|ddim|euler|heun|dpmpp-2m"
                        )))
                    }
                };
                let mut s = schedulers::build(kind, &config, steps, eta)?;
                let c = unet.config.in_channels;
                let noise = match noise {
                    Some(p) => {
                        let n = UNetInputs::load_tensor(&p, "sample")?;
                        match n.shape() {
                            [_, ch, _, _] if *ch == c => n,
                            other => {
                                return Err(freelunch::Error::input(
                                    "noise",
                                    format!("shape {other:?}; the model takes [B, {c}, H, W]"),
                                ))
                            }
                        }
                    }
                    None => {
                        let (h, w) = unet.config.sample_size.ok_or_else(|| {
                            freelunch::Error::Msg(
                                "the model's config has no sample_size; give --noise".into(),
                            )
                        })?;
                        if batch == 0 {
                            return Err(freelunch::Error::Msg("--batch must be at least 1".into()));
                        }
                        Tensor::randn([batch, c, h, w], seed)
                    }
                };
                let conditioning = match &cond {
                    Some(p) => Conditioning {
                        encoder_hidden_states: UNetInputs::load_optional(
                            p,
                            "encoder_hidden_states",
                        )?,
                        uncond_hidden_states: UNetInputs::load_optional(p, "uncond_hidden_states")?,
                        class_labels: UNetInputs::load_optional(p, "class_labels")?
                            .map(Tensor::into_data),
                    },
                    None => Conditioning::default(),
                };
                let bar = indicatif::ProgressBar::new(s.timesteps().len() as u64);
                let mut tick = |i: usize, _n: usize| bar.set_position(i as u64);
                let opts = SampleOptions {
                    guidance,
                    conditioning,
                    boosters: boosters.boosters(&unet)?,
                    progress: Some(&mut tick),
                };
                let model = Placed { model: unet, exec };
                let out =
                    schedulers::sample(&model, s.as_mut(), &noise, opts, &mut SeededNoise(seed))?;
                bar.finish_and_clear();
                if ext == "png" {
                    freelunch::image::save_png_grid(&output, &out)
                } else {
                    safetensors_io::save(&output, &[("sample", &out)])
                }
            })
        }
        Command::Eval { images } => {
            let images = UNetInputs::load_tensor(&images, "sample")?;
            let mut clamped = images.clone();
            clamped
                .data_mut()
                .iter_mut()
                .for_each(|v| *v = v.clamp(-1.0, 1.0));
            let out = freelunch::builtin::classifier()?.classify(&clamped)?;
            let (mu, sigma) = freelunch::builtin::real_stats()?;
            let (m, s) = freelunch::eval::gaussian(&out.features);
            let fid = freelunch::eval::frechet_distance(&m, &s, &mu, &sigma);
            let conf = freelunch::eval::mean_confidence(&out.logits);
            println!("samples: {}", images.shape()[0]);
            println!("fid: {fid:.3}");
            println!("mean_confidence: {conf:.4}");
            Ok(())
        }
        Command::Merge {
            base,
            experts,
            weights,
            out,
        } => deme::merge(&base, &experts, &weights, &out),
    }
}

/// The scheduler config of a pipeline folder, or of the pipeline a `unet/` folder belongs to.
fn scheduler_beside(model: &std::path::Path) -> freelunch::Result<PathBuf> {
    let candidates = [
        model.join("scheduler"),
        model.join("../scheduler"),
        model.to_path_buf(),
    ];
    candidates
        .into_iter()
        .find(|d| d.join("scheduler_config.json").is_file())
        .ok_or_else(|| {
            freelunch::Error::Msg(format!(
                "no scheduler_config.json in or beside {}; give --scheduler",
                model.display()
            ))
        })
}

/// Loads a model folder, warning about checkpoint tensors the model does not use.
fn load_reporting_unused(dir: &std::path::Path) -> freelunch::Result<UNet> {
    let files = ModelFiles::locate(dir)?;
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
    Ok(unet)
}

/// The files a model folder's load reads (none if it is not a model folder: loading reports that).
fn model_paths(dir: &std::path::Path) -> Vec<PathBuf> {
    ModelFiles::locate(dir).map_or_else(
        |_| Vec::new(),
        |f| f.paths().into_iter().map(PathBuf::from).collect(),
    )
}

/// `output` may not be any of the files the command reads.
fn refuse_overwriting(output: &std::path::Path, inputs: &[PathBuf]) -> freelunch::Result<()> {
    let inputs: Vec<&std::path::Path> = inputs.iter().map(PathBuf::as_path).collect();
    freelunch::output::refuse_inputs_as_outputs(&[output], &inputs)
}

fn thread_pool(threads: Option<usize>) -> freelunch::Result<rayon::ThreadPool> {
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(n) = threads {
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        if n == 0 || n > cores {
            return Err(freelunch::Error::Msg(format!(
                "--threads {n}: this machine runs 1 to {cores} threads at once"
            )));
        }
        builder = builder.num_threads(n);
    }
    builder
        .build()
        .map_err(|e| freelunch::Error::Msg(format!("cannot start the thread pool: {e}")))
}
