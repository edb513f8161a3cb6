//! The `freelunch` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use std::sync::Arc;

use freelunch::backend::cpu::fourier::FilterForm;
use freelunch::boosters::deme::{self, Router};
use freelunch::boosters::mask_generator::{Gumbel, MaskGenerator};
use freelunch::boosters::{Boosters, FreeU, FreeUBlocks, MaskSet, SkipScales};
use freelunch::device::{DType, Device, Exec};
use freelunch::models::autoencoders::{AutoencoderKL, AutoencoderKLConfig, Tiling};
use freelunch::models::Denoiser;
use freelunch::schedulers::config::MAX_TRAIN_TIMESTEPS;
use freelunch::schedulers::{
    self, Conditioning, SampleOptions, SamplerKind, SchedulerConfig, SeededNoise,
};
use freelunch::weights::{Checkpoint, LoadOptions, ModelFiles};
use freelunch::Tensor;
use freelunch::{safetensors_io, UNet, UNetConfig, UNetInputs};

mod uvit_cli;

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
        /// diffusers model folder (config.json + weights), pipeline folder with unet/, Hugging
        /// Face cache repo folder (models--org--name), or repo id (org/name) in the cache.
        #[arg(long, required_unless_present = "route", conflicts_with = "route")]
        model: Option<PathBuf>,
        #[command(flatten)]
        load: LoadArgs,
        /// DeMe: unmerged experts (low timesteps first), each serving its share of the
        /// timesteps, instead of --model.
        #[arg(long, value_name = "D1,D2,...", value_delimiter = ',')]
        route: Option<Vec<PathBuf>>,
        /// Training timesteps T the routed experts split between them (default 1000).
        #[arg(long, value_name = "T")]
        route_timesteps: Option<usize>,
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
        /// diffusers model or pipeline folder, Hugging Face cache repo folder, or repo id in
        /// the cache (default: the built-in MNIST digit model).
        #[arg(long)]
        model: Option<PathBuf>,
        #[command(flatten)]
        load: LoadArgs,
        /// scheduler_config.json, its folder, or a pipeline folder (default: the model's
        /// pipeline folder).
        #[arg(long, value_name = "DIR_OR_JSON")]
        scheduler: Option<PathBuf>,
        /// Overrides the config's `_class_name`: ddpm, ddim, pndm, euler, euler-a, heun, lms,
        /// dpmpp-2m, dpmpp-2m-sde, unipc.
        #[arg(long)]
        sampler: Option<String>,
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Seed of the initial noise and of stochastic samplers' noise (default 0).
        #[arg(long)]
        seed: Option<u64>,
        /// Samples in the batch (default 16; with --noise, the noise's batch).
        #[arg(long, conflicts_with = "noise")]
        batch: Option<usize>,
        /// Initial noise: tensor `sample`, standard normal, unscaled, [B, C, H, W].
        #[arg(long, value_name = "NOISE.safetensors")]
        noise: Option<PathBuf>,
        /// DDIM's eta, 0 (deterministic, the default) to 1.
        #[arg(long)]
        eta: Option<f32>,
        /// Classifier-free guidance scale (with --prompt: default 7.5 for SD, 5 for SDXL, none
        /// at 1 or below; else needs --cond with uncond_hidden_states).
        #[arg(long)]
        guidance: Option<f32>,
        /// `encoder_hidden_states` (and `uncond_hidden_states`, `class_labels`) for conditional
        /// models.
        #[arg(long, value_name = "COND.safetensors")]
        cond: Option<PathBuf>,
        /// The prompt, for a StableDiffusionPipeline or StableDiffusionXLPipeline folder as
        /// --model: text encoders, U-Net and VAE, prompt to image.
        #[arg(long, conflicts_with = "cond")]
        prompt: Option<String>,
        /// What to steer away from (with --prompt; default empty).
        #[arg(long, requires = "prompt")]
        negative_prompt: Option<String>,
        /// Image height in pixels (with --prompt; default: the pipeline's).
        #[arg(long, requires = "prompt")]
        height: Option<usize>,
        /// Image width in pixels (with --prompt; default: the pipeline's).
        #[arg(long, requires = "prompt")]
        width: Option<usize>,
        /// Layers of the text encoder to skip (diffusers' clip_skip; with --prompt).
        #[arg(long, requires = "prompt")]
        clip_skip: Option<usize>,
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
        /// Only the mean confidence: no FID (which needs at least 65 samples).
        #[arg(long)]
        no_fid: bool,
    },
    /// Decode latents to an image with a pipeline's VAE (AutoencoderKL), as diffusers'
    /// pipelines do: latents / scaling_factor (+ shift_factor) → vae.decode → postprocess.
    Decode {
        /// AutoencoderKL folder, pipeline folder with vae/, Hugging Face cache repo folder or
        /// repo id in the cache.
        #[arg(long, value_name = "DIR_OR_PIPELINE")]
        vae: PathBuf,
        #[command(flatten)]
        load: LoadArgs,
        /// safetensors with the latents as a sampler leaves them (scaled), [B, C, h, w]: tensor
        /// `latents`, or `sample` (what `sample --output X.safetensors` writes).
        #[arg(long, value_name = "LATENTS.safetensors")]
        latents: PathBuf,
        /// Always decode in tiles (diffusers' tiled_decode). Default: tiles when the latents are
        /// larger than a tile (as after diffusers' enable_tiling) or the whole decode would not
        /// fit in memory.
        #[arg(long, conflicts_with = "no_tile")]
        tile: bool,
        /// Never decode in tiles (diffusers' default decode).
        #[arg(long)]
        no_tile: bool,
        #[command(flatten)]
        device: DeviceArgs,
        /// CPU threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// .png (the image; a grid of the batch, as `sample` writes) or .safetensors (`sample`,
        /// the decoded image, f32 [B, C, H, W], unclamped).
        #[arg(long)]
        output: PathBuf,
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

/// The training-free boosters (README: Boosters).
/// Where the U-Net runs.
#[derive(Args)]
struct DeviceArgs {
    /// auto (the first GPU if there is one, else the CPU), cpu, cuda, cuda:N, or emu / emu:N
    /// (the CUDA backend on the PTX executor, which runs the kernels on the CPU and checks them:
    /// for developing and testing kernels without a GPU).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Storage type of weights and activations on the GPU: f32, f16 or bf16 (f32
    /// accumulation throughout). On the CPU: f32, or bf16 for the convolutions and linear
    /// layers on AMX tiles (CPUs with AMX-BF16; as PyTorch's CPU autocast).
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

/// Which files of a model folder are read.
#[derive(Args)]
struct LoadArgs {
    /// Weights variant: diffusion_pytorch_model.<VARIANT>.safetensors or its shards (fp16,
    /// bf16, ...). Default: the full-precision weights, else the folder's only variant.
    #[arg(long)]
    variant: Option<String>,
    /// Revision (branch, tag or commit) of a Hugging Face cache repo given as --model
    /// (models--org--name or org/name). Default: main.
    #[arg(long)]
    revision: Option<String>,
}

impl LoadArgs {
    /// The load options for a model run on `exec`: 16-bit weights stored in the type a GPU
    /// computes in stay as stored.
    fn options(&self, exec: Option<&Exec>) -> LoadOptions {
        use freelunch::tensor::HalfType;
        let keep = match exec.map(Exec::dtype) {
            Some(DType::F16) => Some(HalfType::F16),
            Some(DType::BF16) => Some(HalfType::BF16),
            _ => None,
        };
        LoadOptions {
            variant: self.variant.clone(),
            revision: self.revision.clone(),
            keep,
        }
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
    /// How the Fourier filter is computed (both exact; direct needs no cuFFT on the GPU).
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
    /// the mask generator's noise). Default 0; `sample` sets it to each call's index.
    #[arg(long, value_name = "N")]
    mask_step: Option<usize>,
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

/// The largest booster factor accepted, in magnitude: the published values are near 1, and a
/// factor far beyond this overflows the activations it scales (f16's range ends at 65504).
const MAX_FACTOR: f32 = 1e4;

/// The widest FreeU window accepted: one wider than any sample's side filters the whole
/// spectrum, so this bounds nothing real.
const MAX_FREEU_THRESHOLD: usize = 1 << 20;

/// A command-line flag that cannot be used as given.
fn arg(flag: &str, text: impl Into<String>) -> freelunch::Error {
    freelunch::Error::argument(flag, text)
}

/// Booster factors: finite and at most `MAX_FACTOR` in magnitude.
fn numbers(flag: &str, text: &str) -> freelunch::Result<Vec<f32>> {
    text.split(',')
        .map(|v| {
            let x = v.trim().parse::<f32>().map_err(|_| {
                arg(
                    flag,
                    format!("--{flag}: `{v}` is not a number (in `{text}`)"),
                )
            })?;
            if !x.is_finite() {
                return Err(arg(
                    flag,
                    format!("--{flag}: `{v}` is not a finite number (in `{text}`)"),
                ));
            }
            if x.abs() > MAX_FACTOR {
                return Err(arg(
                    flag,
                    format!(
                    "--{flag}: `{v}` is out of range (in `{text}`): factors beyond ±{MAX_FACTOR} \
                     overflow the activations they scale"
                ),
                ));
            }
            Ok(x)
        })
        .collect()
}

/// A float flag that must be finite.
fn finite(flag: &str, v: f32) -> freelunch::Result<f32> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(arg(flag, format!("--{flag} {v}: must be a finite number")))
    }
}

impl BoosterArgs {
    /// Checks the flags before anything is loaded: factors (`numbers`), the FreeU window, and
    /// `--mask-step`, which only per-step masks and the mask generator read, and which `sample`
    /// sets itself.
    fn check(&self, sampling: bool) -> freelunch::Result<()> {
        if let Some(spec) = &self.freeu {
            if spec.contains(',') || spec.parse::<f32>().is_ok() {
                numbers("freeu", spec)?;
            }
        }
        if let Some(spec) = &self.skip_tuning {
            numbers("skip-tuning", spec)?;
        }
        if let Some(spec) = &self.skip_scales {
            numbers("skip-scales", spec)?;
        }
        if self.freeu.is_some() && !(1..=MAX_FREEU_THRESHOLD).contains(&self.freeu_threshold) {
            return Err(arg(
                "freeu-threshold",
                format!(
                    "--freeu-threshold {}: must be 1 to {MAX_FREEU_THRESHOLD}",
                    self.freeu_threshold
                ),
            ));
        }
        if let Some(step) = self.mask_step {
            if sampling {
                return Err(arg(
                    "mask-step",
                    format!(
                        "--mask-step {step}: `sample` gives each call its sampler step (all calls \
                     of one step share it); --mask-step is for `forward`"
                    ),
                ));
            }
            if self.masks.is_none() && self.mask_generator.is_none() {
                return Err(arg(
                    "mask-step",
                    format!(
                        "--mask-step {step} selects per-step masks or seeds the mask generator; \
                     give --masks or --mask-generator"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `--freeu` and its settings (FreeU's blocks left at their default), if given.
    fn freeu(&self) -> freelunch::Result<Option<FreeU>> {
        let Some(spec) = &self.freeu else {
            return Ok(None);
        };
        let mut f = if spec.contains(',') || spec.parse::<f32>().is_ok() {
            match numbers("freeu", spec)?[..] {
                [b1, b2, s1, s2] => FreeU::new(b1, b2, s1, s2),
                _ => {
                    return Err(arg(
                        "freeu",
                        format!("--freeu takes four numbers B1,B2,S1,S2 or a preset, got `{spec}`"),
                    ))
                }
            }
        } else {
            FreeU::preset(spec)?
        };
        f.v2 = self.freeu_v2;
        f.threshold = self.freeu_threshold;
        f.filter = match self.freeu_filter {
            Filter::Fft => FilterForm::Fft,
            Filter::Direct => FilterForm::Direct,
        };
        Ok(Some(f))
    }

    /// `--skip-tuning` or `--skip-scales`, if given.
    fn skip_scales(&self) -> freelunch::Result<Option<SkipScales>> {
        Ok(match (&self.skip_tuning, &self.skip_scales) {
            (Some(spec), _) => match numbers("skip-tuning", spec)?[..] {
                [top, bottom] => Some(SkipScales::Linear { top, bottom }),
                _ => {
                    return Err(arg(
                        "skip-tuning",
                        format!("--skip-tuning takes two numbers RHO_TOP,RHO_BOTTOM, got `{spec}`"),
                    ))
                }
            },
            (None, Some(spec)) => Some(SkipScales::Explicit(numbers("skip-scales", spec)?)),
            (None, None) => None,
        })
    }

    /// The boosters for `unet` (masks are checked against its layers).
    fn boosters(&self, unet: &UNet) -> freelunch::Result<Boosters> {
        let freeu = self.freeu()?.map(|mut f| {
            f.blocks = match self.freeu_blocks {
                Blocks::Stage => FreeUBlocks::Stage,
                Blocks::Channels => FreeUBlocks::Channels,
            };
            f
        });
        let skip_scales = self.skip_scales()?;
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
        if let (Some(step), Some(m), None) = (self.mask_step, &masks, &mask_generator) {
            let per_step = unet
                .layers()
                .keys()
                .filter_map(|k| m.get(k))
                .any(|w| w.steps.is_some());
            if !per_step {
                return Err(arg(
                    "mask-step",
                    format!(
                        "--mask-step {step}: the masks of {} are the same at every step (none is \
                     [steps, B, ..]), so it would change nothing",
                        self.masks
                            .as_ref()
                            .map_or(String::new(), |p| p.display().to_string())
                    ),
                ));
            }
        }
        Ok(Boosters {
            skip_scales,
            freeu,
            masks,
            mask_step: self.mask_step.unwrap_or(0),
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
            load,
            route_timesteps,
            input,
            output,
            device,
            threads,
            boosters,
        } => {
            let mut read = vec![input.clone()];
            for dir in model.iter() {
                read.extend(model_paths(dir, &load.options(None)));
            }
            for dir in route.iter().flatten() {
                read.extend(model_paths(dir, &LoadOptions::default()));
            }
            if route.is_some() && (load.variant.is_some() || load.revision.is_some()) {
                return Err(arg("variant", 
                    "--variant and --revision apply to --model; routed experts are read as                      they are",
                ));
            }
            refuse_overwriting(&output, &read)?;
            let route_timesteps = match (route_timesteps, &route) {
                (Some(t), None) => {
                    return Err(arg(
                        "route-timesteps",
                        format!(
                            "--route-timesteps {t} applies to --route only (the timesteps routed \
                         experts split between them)"
                        ),
                    ))
                }
                (Some(t), Some(_)) if !(1..=MAX_TRAIN_TIMESTEPS).contains(&t) => {
                    return Err(arg(
                        "route-timesteps",
                        format!("--route-timesteps {t}: must be 1 to {MAX_TRAIN_TIMESTEPS}"),
                    ))
                }
                (t, _) => t.unwrap_or(1000),
            };
            boosters.check(false)?;
            let started = std::time::Instant::now();
            let exec = device.open()?;
            let pool = thread_pool(threads)?;
            pool.install(|| {
                let loaded: f64;
                let inputs = UNetInputs::load(&input)?;
                let out = match (model, route) {
                    (_, Some(dirs)) => {
                        let router = Router::from_dirs(&dirs, route_timesteps)?;
                        loaded = started.elapsed().as_secs_f64();
                        let b = boosters.boosters(&router.experts()[0])?;
                        router.on(exec.clone()).forward_with(&inputs, &b)?
                    }
                    (Some(model), None) => {
                        if let Some(uvit) =
                            uvit_cli::load_if_uvit(&model, &load.options(Some(&exec)))?
                        {
                            loaded = started.elapsed().as_secs_f64();
                            uvit_cli::forward(&uvit, exec.clone(), &input, &boosters)?
                        } else {
                            let unet = load_reporting_unused(&model, &load.options(Some(&exec)))?;
                            loaded = started.elapsed().as_secs_f64();
                            unet.on(exec.clone())
                                .forward_with(&inputs, &boosters.boosters(&unet)?)?
                        }
                    }
                    (None, None) => unreachable!("clap requires --model or --route"),
                };
                safetensors_io::save(&output, &[("sample", &out)])?;
                eprintln!(
                    "wrote {}: sample {:?} in {:.2} s (inputs and model loaded in {loaded:.2} s)",
                    output.display(),
                    out.shape(),
                    started.elapsed().as_secs_f64()
                );
                Ok(())
            })
        }
        Command::Sample {
            model,
            load,
            scheduler,
            sampler,
            steps,
            seed,
            batch,
            noise,
            eta,
            guidance,
            cond,
            prompt,
            negative_prompt,
            height,
            width,
            clip_skip,
            device,
            threads,
            boosters,
            output,
        } => {
            if let Some(prompt) = prompt {
                let model = model.ok_or_else(|| {
                    freelunch::Error::input(
                        "--prompt",
                        "needs --model PIPELINE_DIR (a StableDiffusionPipeline or \
                         StableDiffusionXLPipeline folder)",
                    )
                })?;
                return sample_from_prompt(PromptRun {
                    model,
                    load,
                    scheduler,
                    sampler,
                    steps,
                    seed,
                    batch,
                    noise,
                    eta,
                    guidance,
                    prompt,
                    negative_prompt,
                    height,
                    width,
                    clip_skip,
                    device,
                    threads,
                    boosters,
                    output,
                });
            }
            let mut read: Vec<PathBuf> = noise
                .iter()
                .chain(cond.iter())
                .chain(scheduler.iter())
                .cloned()
                .collect();
            if let Some(m) = &model {
                read.extend(model_paths(m, &load.options(None)));
            } else if load.variant.is_some() || load.revision.is_some() {
                return Err(arg("variant", 
                    "--variant and --revision apply to --model; the built-in model has one                      set of weights",
                ));
            }
            refuse_overwriting(&output, &read)?;
            let ext = output.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext != "png" && ext != "safetensors" {
                return Err(arg(
                    "output",
                    format!(
                        "--output must end in .png or .safetensors, got {}",
                        output.display()
                    ),
                ));
            }
            // Flags first, before anything is loaded.
            if steps == 0 {
                return Err(arg("steps", "--steps must be at least 1"));
            }
            if batch == Some(0) {
                return Err(arg("batch", "--batch must be at least 1"));
            }
            if let Some(e) = eta {
                if !(0.0..=1.0).contains(&finite("eta", e)?) {
                    return Err(arg(
                        "eta",
                        format!("--eta {e}: must be a number from 0 to 1"),
                    ));
                }
            }
            if let Some(g) = guidance {
                finite("guidance", g)?;
                if cond.is_none() {
                    return Err(arg(
                        "guidance",
                        "--guidance needs --cond COND.safetensors with encoder_hidden_states \
                         and uncond_hidden_states",
                    ));
                }
            }
            boosters.check(true)?;
            let exec = device.open()?;
            let pool = thread_pool(threads)?;
            pool.install(|| {
                if let Some(m) = &model {
                    let opts = load.options(Some(&exec));
                    if let Some(uvit) = uvit_cli::load_if_uvit(m, &opts)? {
                        if guidance.is_some() {
                            return Err(arg("guidance", "--guidance: a MaskedUViT has no text conditioning"));
                        }
                        let started = std::time::Instant::now();
                        let out = uvit_cli::sample(uvit_cli::SampleRun {
                            model: uvit,
                            exec: exec.clone(),
                            scheduler: match scheduler.clone() {
                                Some(p) => p,
                                None => scheduler_beside(m)?,
                            },
                            sampler: sampler.clone(),
                            steps,
                            seed,
                            batch,
                            noise: noise.clone(),
                            eta,
                            conditioning: match &cond {
                                Some(p) => load_conditioning(p, false)?,
                                None => Conditioning::default(),
                            },
                            boosters: &boosters,
                            output: &output,
                        })?;
                        eprintln!(
                            "wrote {}: {} samples {:?} in {:.1} s",
                            output.display(),
                            out.shape()[0],
                            &out.shape()[1..],
                            started.elapsed().as_secs_f64()
                        );
                        return Ok(());
                    }
                }
                let (unet, config, origin) = match &model {
                    Some(m) => {
                        let m = &freelunch::hub::resolve(m, load.revision.as_deref())?;
                        let path = match scheduler {
                            Some(p) => p,
                            None => scheduler_beside(m)?,
                        };
                        let config = SchedulerConfig::from_path(&path)?;
                        let opts = LoadOptions {
                            revision: None,
                            ..load.options(Some(&exec))
                        };
                        (
                            load_reporting_unused(m, &opts)?,
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
                        let why = match &config.class_name {
                            Some(c) => format!(
                                "its _class_name \"{c}\" is not implemented here \
                                 (implemented: {})",
                                SamplerKind::class_names()
                            ),
                            None => "it has no _class_name".to_string(),
                        };
                        return Err(arg("sampler", format!(
                            "{origin}: {why}; pick a sampler with --sampler {}",
                            SamplerKind::ALL.map(SamplerKind::short_name).join("|")
                        )));
                    }
                };
                let n = config.num_train_timesteps;
                if steps > n {
                    return Err(arg("steps", format!(
                        "--steps {steps}: the scheduler ({origin}) has num_train_timesteps = \
                         {n}; give 1 to {n}"
                    )));
                }
                if eta.is_some() && kind != SamplerKind::Ddim {
                    return Err(arg("eta", format!(
                        "--eta applies to the DDIM sampler only; the {} sampler has no eta",
                        kind.short_name()
                    )));
                }
                let eta = eta.unwrap_or(0.0);
                let stochastic = kind.always_stochastic() || eta > 0.0;
                if let (Some(seed), Some(p), false) = (seed, &noise, stochastic) {
                    return Err(arg("seed", format!(
                        "--seed {seed} has no effect: the initial noise comes from --noise {} and \
                         the {} sampler draws no noise of its own",
                        p.display(),
                        kind.short_name()
                    )));
                }
                let seed = seed.unwrap_or(0);
                let mut s = schedulers::build(kind, &config, steps, eta)?;
                let c = unet.config.in_channels;
                if ext == "png" && c != 1 && c != 3 {
                    return Err(arg("output", format!(
                        "--output {}: a PNG needs 1 or 3 channels and this model's samples have                          {c} (latents need a VAE decoder): write .safetensors, then `freelunch decode` them",
                        output.display()
                    )));
                }
                let conditioning = match &cond {
                    Some(p) => load_conditioning(p, guidance.is_some())?,
                    None => Conditioning::default(),
                };
                let noise = match noise {
                    Some(p) => {
                        let n = UNetInputs::load_tensor(&p, "sample")?;
                        match n.shape() {
                            [b, ch, _, _] if *ch == c && *b > 0 => n,
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
                            arg("noise", "the model's config has no sample_size; give --noise")
                        })?;
                        // diffusers samples one image per prompt unless told more; with no
                        // conditioning, a grid of 16.
                        let batch = batch
                            .or_else(|| conditioning_batch(&conditioning))
                            .unwrap_or(16);
                        plan_samples([batch, c, h, w], guidance.is_some())?;
                        Tensor::try_randn([batch, c, h, w], seed)?
                    }
                };
                let bar = indicatif::ProgressBar::new(s.timesteps().len() as u64);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:40} {pos}/{len} steps, {per_sec}, {eta} left",
                    )
                    .expect("a valid template"),
                );
                let mut tick = |s: &schedulers::StepState| {
                    bar.set_position(s.step as u64 + 1);
                    schedulers::StepControl::Continue
                };
                let started = std::time::Instant::now();
                let calls = s.timesteps().len();
                let opts = SampleOptions {
                    guidance,
                    conditioning,
                    boosters: boosters.boosters(&unet)?,
                    on_step: Some(&mut tick),
                };
                // Every step makes the same call: the later ones reuse the first one's buffers.
                let model = unet
                    .on(exec)
                    .with_workspace(freelunch::workspace::Workspace::new());
                let out =
                    schedulers::sample(&model, s.as_mut(), &noise, opts, &mut SeededNoise(seed));
                bar.finish_and_clear();
                let out = out?;
                if ext == "png" {
                    freelunch::image::save_png_grid(&output, &out)?;
                } else {
                    safetensors_io::save(&output, &[("sample", &out)])?;
                }
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "wrote {}: {} samples {:?}, {calls} model calls in {secs:.1} s ({:.2} it/s)",
                    output.display(),
                    out.shape()[0],
                    &out.shape()[1..],
                    calls as f64 / secs.max(1e-9)
                );
                Ok(())
            })
        }
        Command::Eval { images, no_fid } => {
            let images = UNetInputs::load_tensor(&images, "sample")?;
            let min = freelunch::eval::MIN_FID_SAMPLES;
            if let [b, 1, 28, 28] = images.shape() {
                if (1..min).contains(b) && !no_fid {
                    return Err(arg(
                        "batch",
                        format!(
                            "{b} samples are too few for an FID: its {} features need at least \
                         {min} samples for a non-singular covariance; sample more (--batch {min}) \
                         or pass --no-fid for the mean confidence alone",
                            freelunch::eval::FEATURES
                        ),
                    ));
                }
            }
            let scores = freelunch::builtin::score(&images, !no_fid)?;
            println!("samples: {}", scores.samples);
            if let Some(fid) = scores.fid {
                println!("fid: {fid:.3}");
            }
            println!("mean_confidence: {:.4}", scores.mean_confidence);
            Ok(())
        }
        Command::Decode {
            vae,
            load,
            latents,
            tile,
            no_tile,
            device,
            threads,
            output,
        } => decode(DecodeArgs {
            vae,
            load,
            latents,
            tiling: match (tile, no_tile) {
                (true, _) => Tiling::Always,
                (_, true) => Tiling::Never,
                _ => Tiling::Auto,
            },
            device,
            threads,
            output,
        }),
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
            freelunch::Error::not_found(
                "scheduler_config.json",
                format!(
                    "no scheduler_config.json in or beside {}; give --scheduler",
                    model.display()
                ),
            )
        })
}

/// What `freelunch decode` was given.
struct DecodeArgs {
    vae: PathBuf,
    load: LoadArgs,
    latents: PathBuf,
    tiling: Tiling,
    device: DeviceArgs,
    threads: Option<usize>,
    output: PathBuf,
}

/// `freelunch decode`: latents → `AutoencoderKL::decode_latents` → PNG or safetensors.
fn decode(a: DecodeArgs) -> freelunch::Result<()> {
    let started = std::time::Instant::now();
    let ext = a.output.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext != "png" && ext != "safetensors" {
        return Err(freelunch::Error::input(
            "--output",
            format!("{}: must end in .png or .safetensors", a.output.display()),
        ));
    }
    let files = AutoencoderKL::files(&a.vae, &a.load.options(None))?;
    let mut read = vec![a.latents.clone()];
    read.extend(files.paths().into_iter().map(PathBuf::from));
    refuse_overwriting(&a.output, &read)?;
    let config = AutoencoderKLConfig::from_file(&files.config)?;
    let c = config.out_channels;
    if ext == "png" && c != 1 && c != 3 {
        return Err(freelunch::Error::input(
            "--output",
            format!(
                "{}: a PNG needs 1 or 3 channels and this VAE decodes {c}; write .safetensors",
                a.output.display()
            ),
        ));
    }
    let device: Device = a.device.device.parse()?;
    let mut dtype: DType = a.device.dtype.parse()?;
    if dtype != DType::F32 && config.force_upcast {
        // diffusers' pipelines upcast such a VAE to f32 before decoding (16-bit overflows in it).
        eprintln!(
            "note: {} has force_upcast = true; decoding in f32, as diffusers does",
            files.config.display()
        );
        dtype = DType::F32;
    }
    let exec = device.open(dtype)?;
    let pool = thread_pool(a.threads)?;
    pool.install(|| {
        let mut stored = safetensors_io::load(&a.latents)?;
        let name = ["latents", "sample"]
            .into_iter()
            .find(|n| stored.contains_key(*n))
            .ok_or_else(|| {
                freelunch::Error::input(
                    "latents",
                    format!(
                        "{} has no tensor `latents` or `sample`",
                        a.latents.display()
                    ),
                )
            })?;
        let latents = stored.remove(name).expect("found above").tensor;
        let keep = a.load.options(Some(&exec)).keep;
        let mut ckpt = Checkpoint::load_keeping(&files.weights, keep)?;
        let vae = AutoencoderKL::load(config, &mut ckpt)?;
        let unused = ckpt.remaining();
        if !unused.is_empty() {
            eprintln!(
                "warning: {} checkpoint tensors were not used by the VAE (first: `{}`)",
                unused.len(),
                unused[0]
            );
        }
        let loaded = started.elapsed().as_secs_f64();
        let image = vae.decode_latents(&exec, &latents, a.tiling)?;
        if ext == "png" {
            freelunch::image::save_png_grid(&a.output, &image)?;
        } else {
            safetensors_io::save(&a.output, &[("sample", &image)])?;
        }
        eprintln!(
            "wrote {}: image {:?} from latents {:?} in {:.2} s (VAE loaded in {loaded:.2} s)",
            a.output.display(),
            image.shape(),
            latents.shape(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })
}

/// The flags of `sample --prompt`.
struct PromptRun {
    model: PathBuf,
    load: LoadArgs,
    scheduler: Option<PathBuf>,
    sampler: Option<String>,
    steps: usize,
    seed: Option<u64>,
    batch: Option<usize>,
    noise: Option<PathBuf>,
    eta: Option<f32>,
    guidance: Option<f32>,
    prompt: String,
    negative_prompt: Option<String>,
    height: Option<usize>,
    width: Option<usize>,
    clip_skip: Option<usize>,
    device: DeviceArgs,
    threads: Option<usize>,
    boosters: BoosterArgs,
    output: PathBuf,
}

/// `sample --prompt`: a pipeline folder, prompt to image (PNG) or to final latents
/// (.safetensors), with a step progress bar.
fn sample_from_prompt(a: PromptRun) -> freelunch::Result<()> {
    use freelunch::pipelines::{GenerateOptions, Prompt, StableDiffusionPipeline};
    let ext = a.output.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext != "png" && ext != "safetensors" {
        return Err(freelunch::Error::input(
            "--output",
            format!("{}: must end in .png or .safetensors", a.output.display()),
        ));
    }
    if a.steps == 0 {
        return Err(arg("steps", "--steps must be at least 1"));
    }
    if a.batch == Some(0) {
        return Err(arg("batch", "--batch must be at least 1"));
    }
    let mut read: Vec<PathBuf> = a.noise.iter().chain(a.scheduler.iter()).cloned().collect();
    read.push(a.model.clone());
    refuse_overwriting(&a.output, &read)?;
    a.boosters.check(true)?;
    let device: Device = a.device.device.parse()?;
    let dtype: DType = a.device.dtype.parse()?;
    let pool = thread_pool(a.threads)?;
    pool.install(|| {
        let started = std::time::Instant::now();
        let keep = match dtype {
            DType::F16 => Some(freelunch::tensor::HalfType::F16),
            DType::BF16 => Some(freelunch::tensor::HalfType::BF16),
            DType::F32 => None,
        };
        let opts = LoadOptions {
            keep,
            ..a.load.options(None)
        };
        let mut pipe = StableDiffusionPipeline::from_pretrained(&a.model, &opts, device, dtype)?;
        if let Some(p) = &a.scheduler {
            pipe.scheduler = SchedulerConfig::from_path(p)?;
        }
        let loaded = started.elapsed().as_secs_f64();
        let latents = match &a.noise {
            Some(p) => Some(UNetInputs::load_tensor(p, "sample")?),
            None => None,
        };
        let images_per_prompt = match (&latents, a.batch) {
            (Some(l), _) => l.shape().first().copied().unwrap_or(0).max(1),
            (None, b) => b.unwrap_or(1),
        };
        let bar = indicatif::ProgressBar::new(a.steps as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} steps, {per_sec}, {eta} left",
            )
            .expect("a valid template"),
        );
        let mut tick = |s: &schedulers::StepState| {
            bar.set_length(s.total as u64);
            bar.set_position(s.step as u64 + 1);
            schedulers::StepControl::Continue
        };
        let sampler = a
            .sampler
            .as_deref()
            .map(SamplerKind::from_short_name)
            .transpose()?;
        let gen = GenerateOptions {
            steps: a.steps,
            guidance_scale: a.guidance,
            height: a.height,
            width: a.width,
            images_per_prompt,
            seed: a.seed.unwrap_or(0),
            latents,
            sampler,
            eta: a.eta.unwrap_or(0.0),
            clip_skip: a.clip_skip,
            boosters: a.boosters.boosters(&pipe.unet)?,
            on_step: Some(&mut tick),
            ..GenerateOptions::default()
        };
        let prompt = Prompt {
            prompt: vec![a.prompt.clone()],
            negative_prompt: a.negative_prompt.clone().map(|n| vec![n]),
            ..Prompt::default()
        };
        let out = pipe.generate(&prompt, gen);
        bar.finish_and_clear();
        let out = out?;
        if ext == "png" {
            freelunch::image::save_png_grid(&a.output, &out.images)?;
        } else {
            safetensors_io::save(&a.output, &[("sample", &out.latents)])?;
        }
        eprintln!(
            "wrote {}: {} image(s) {:?} in {:.1} s (pipeline loaded in {loaded:.2} s)",
            a.output.display(),
            out.images.shape()[0],
            &out.images.shape()[1..],
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })
}

/// Loads a model folder, warning about checkpoint tensors the model does not use.
fn load_reporting_unused(dir: &std::path::Path, opts: &LoadOptions) -> freelunch::Result<UNet> {
    let files = ModelFiles::find(dir, opts)?;
    if let (None, Some(v)) = (&opts.variant, &files.variant) {
        eprintln!(
            "note: {} has no full-precision weights; reading its {v} variant",
            files.dir.display()
        );
    }
    let config = UNetConfig::from_file(&files.config)?;
    config.ensure_weights_fit()?;
    let bytes: u64 = files
        .weights
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    // Shown only on a terminal (indicatif draws nothing otherwise).
    let bar = indicatif::ProgressBar::new(bytes);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "loading {msg} {bar:30} {bytes}/{total_bytes} ({bytes_per_sec})",
        )
        .expect("a valid template"),
    );
    bar.set_message(format!(
        "{} ({} file{})",
        files.dir.display(),
        files.weights.len(),
        if files.weights.len() == 1 { "" } else { "s" }
    ));
    let loaded = Checkpoint::load_reporting(&files.weights, opts.keep, &mut |b| bar.inc(b))
        .and_then(|mut ckpt| Ok((UNet::load(config, &mut ckpt)?, ckpt)));
    bar.finish_and_clear();
    let (unet, ckpt) = loaded?;
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
fn model_paths(dir: &std::path::Path, opts: &LoadOptions) -> Vec<PathBuf> {
    ModelFiles::find(dir, opts).map_or_else(
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
            return Err(arg(
                "threads",
                format!("--threads {n}: this machine runs 1 to {cores} threads at once"),
            ));
        }
        builder = builder.num_threads(n);
    }
    builder
        .build()
        .map_err(|e| freelunch::Error::system("starting the thread pool", e.to_string()))
}

/// Refuses a batch of samples of `shape` whose size overflows, or whose copies in the sampling
/// loop (the latents, the model's input and output, the sampler's temporaries: about 8, 11
/// under guidance, which doubles the model's batch) do not fit in the memory available. The
/// model's own activations are planned by each forward call.
fn plan_samples(shape: [usize; 4], guided: bool) -> freelunch::Result<()> {
    let what = format!("--batch {}", shape[0]);
    let n = freelunch::tensor::numel_of(&shape, &what)?;
    let copies: u64 = if guided { 11 } else { 8 };
    let bytes = (n as u64).saturating_mul(4).saturating_mul(copies);
    freelunch::tensor::ensure_fits(
        &format!("{what}: samples of shape {shape:?} (about {copies} copies in the sampling loop)"),
        bytes,
    )
}

/// The conditioning file holds something, and what guidance needs; an unconditional state
/// that nothing would read is reported.
/// The batch the conditioning was given at, when it names one (more than one sample): the
/// default `--batch`, as diffusers samples one image per prompt.
fn conditioning_batch(c: &Conditioning) -> Option<usize> {
    [
        &c.encoder_hidden_states,
        &c.text_embeds,
        &c.time_ids,
        &c.uncond_hidden_states,
    ]
    .iter()
    .filter_map(|t| t.as_ref().and_then(|t| t.shape().first().copied()))
    .chain(c.class_labels.as_ref().map(Vec::len))
    .max()
}

/// The conditioning tensors of `--cond`: at least one must be there; the unconditional ones are
/// read only under guidance (without it they are dropped with a warning, since they change
/// nothing).
fn load_conditioning(path: &std::path::Path, guided: bool) -> freelunch::Result<Conditioning> {
    let load = |name: &str| UNetInputs::load_optional(path, name);
    let mut c = Conditioning {
        encoder_hidden_states: load("encoder_hidden_states")?,
        uncond_hidden_states: load("uncond_hidden_states")?,
        class_labels: load("class_labels")?.map(Tensor::into_data),
        text_embeds: load("text_embeds")?,
        time_ids: load("time_ids")?,
        uncond_text_embeds: load("uncond_text_embeds")?,
        uncond_time_ids: load("uncond_time_ids")?,
    };
    let p = path.display();
    let conditional = [&c.encoder_hidden_states, &c.text_embeds, &c.time_ids]
        .iter()
        .any(|t| t.is_some())
        || c.class_labels.is_some();
    if !conditional {
        return Err(arg(
            "cond",
            format!(
            "--cond {p} holds none of encoder_hidden_states, text_embeds, time_ids, class_labels"
        ),
        ));
    }
    if guided && (c.encoder_hidden_states.is_none() || c.uncond_hidden_states.is_none()) {
        return Err(arg(
            "guidance",
            format!(
                "--guidance needs encoder_hidden_states and uncond_hidden_states in --cond {p}"
            ),
        ));
    }
    if !guided {
        for (name, t) in [
            ("uncond_hidden_states", &mut c.uncond_hidden_states),
            ("uncond_text_embeds", &mut c.uncond_text_embeds),
            ("uncond_time_ids", &mut c.uncond_time_ids),
        ] {
            if t.take().is_some() {
                eprintln!("warning: --cond {p}: {name} is unused without --guidance");
            }
        }
    }
    Ok(c)
}
