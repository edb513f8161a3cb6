//! `forward` and `sample` for a converted MaskDM folder (`_class_name: MaskedUViT`): the same
//! flags as for a U-Net, with a `token_mask` input for the masked forward; `--freeu` runs this
//! crate's U-ViT extension of FreeU, and the mask generator, built for a U-Net's layers, is
//! refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use freelunch::boosters::{Boosters, MaskSet};
use freelunch::device::Exec;
use freelunch::models::mask_uvit::{MaskedUViT, MaskedUViTConfig, TokenMask};
use freelunch::models::Denoiser;
use freelunch::schedulers::{self, Conditioning, SampleOptions, SamplerKind, SeededNoise};
use freelunch::weights::{LoadOptions, ModelFiles};
use freelunch::{safetensors_io, Tensor, UNetInputs};

use super::{arg, BoosterArgs};

/// The U-ViT at `arg` when its config names one, else None (a U-Net, left to the caller).
pub fn load_if_uvit(arg: &Path, opts: &LoadOptions) -> freelunch::Result<Option<MaskedUViT>> {
    let Ok(files) = ModelFiles::find(arg, opts) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&files.config)
        .map_err(|e| freelunch::Error::io(&files.config, e))?;
    if !MaskedUViTConfig::is_mask_uvit(&text) {
        return Ok(None);
    }
    MaskedUViT::from_pretrained(arg, opts).map(Some)
}

/// The boosters of `args` for `model`.
fn boosters(args: &BoosterArgs, model: &MaskedUViT) -> freelunch::Result<Boosters> {
    // FreeU on a U-ViT is this crate's extension (models::mask_uvit's docs); --freeu-blocks
    // selects U-Net resnets and means nothing here.
    let freeu = args.freeu()?;
    if args.mask_generator.is_some() {
        return Err(arg(
            "mask-generator",
            "--mask-generator is built for a U-Net's layers; give --masks for a MaskedUViT",
        ));
    }
    let skip_scales = args.skip_scales()?;
    let masks = match &args.masks {
        Some(path) => Some(Arc::new(MaskSet::load(path, model.layers())?)),
        None => None,
    };
    Ok(Boosters {
        skip_scales,
        freeu,
        masks,
        mask_step: args.mask_step.unwrap_or(0),
        mask_generator: None,
    })
}

/// `freelunch forward` of a U-ViT: `sample` `[B, C, H, W]`, or with a `token_mask` (u8/bool
/// `[B, num_patches]`, non-zero dropped) in the input file `[B, visible, patch²·C]`.
pub fn forward(
    model: &MaskedUViT,
    exec: Exec,
    input: &Path,
    args: &BoosterArgs,
) -> freelunch::Result<Tensor> {
    let inputs = UNetInputs::load(input)?;
    let b = boosters(args, model)?;
    let model = model.on(exec);
    match TokenMask::load(input)? {
        Some(mask) => model.forward_masked(&inputs, &mask, &b),
        None => model.forward_with(&inputs, &b),
    }
}

/// What `freelunch sample` passes for a U-ViT.
pub struct SampleRun<'a> {
    /// The loaded model.
    pub model: MaskedUViT,
    /// Where it runs.
    pub exec: Exec,
    /// scheduler_config.json or its folder.
    pub scheduler: PathBuf,
    /// --sampler, overriding the config's class.
    pub sampler: Option<String>,
    /// --steps.
    pub steps: usize,
    /// --seed (default 0).
    pub seed: Option<u64>,
    /// --batch (default 16).
    pub batch: Option<usize>,
    /// --noise: the initial noise.
    pub noise: Option<PathBuf>,
    /// --eta (DDIM).
    pub eta: Option<f32>,
    /// --cond: class labels of a conditional model.
    pub conditioning: Conditioning,
    /// The booster flags.
    pub boosters: &'a BoosterArgs,
    /// .png or .safetensors.
    pub output: &'a Path,
}

/// `freelunch sample` of a U-ViT: its scheduler (converted as eval.py samples: DDIM, cosine
/// betas, x̂₀ clipped; eval.py's eta is 1) over the Denoiser; returns the final sample.
pub fn sample(r: SampleRun) -> freelunch::Result<Tensor> {
    let config = schedulers::SchedulerConfig::from_path(&r.scheduler)?;
    let origin = r.scheduler.display().to_string();
    let kind = match (&r.sampler, config.class) {
        (Some(s), _) => SamplerKind::from_short_name(s)?,
        (None, Some(k)) => k,
        (None, None) => {
            return Err(arg(
                "sampler",
                format!("{origin}: no sampler this crate implements; pick one with --sampler"),
            ))
        }
    };
    if r.steps > config.num_train_timesteps {
        return Err(arg(
            "steps",
            format!(
                "--steps {}: the scheduler ({origin}) has num_train_timesteps = {}",
                r.steps, config.num_train_timesteps
            ),
        ));
    }
    if r.eta.is_some() && kind != SamplerKind::Ddim {
        return Err(arg("eta", "--eta applies to the DDIM sampler only"));
    }
    let eta = r.eta.unwrap_or(0.0);
    let mut s = schedulers::build(kind, &config, r.steps, eta)?;
    let c = &r.model.config;
    let seed = r.seed.unwrap_or(0);
    let noise = match &r.noise {
        Some(p) => UNetInputs::load_tensor(p, "sample")?,
        None => {
            let batch = r.batch.unwrap_or(16);
            super::plan_samples([batch, c.in_chans, c.img_size, c.img_size], false)?;
            Tensor::try_randn([batch, c.in_chans, c.img_size, c.img_size], seed)?
        }
    };
    let opts = SampleOptions {
        guidance: None,
        conditioning: r.conditioning,
        boosters: boosters(r.boosters, &r.model)?,
        on_step: None,
    };
    let model = r.model.on(r.exec);
    let out = schedulers::sample(&model, s.as_mut(), &noise, opts, &mut SeededNoise(seed))?;
    if r.output.extension().is_some_and(|e| e == "png") {
        freelunch::image::save_png_grid(r.output, &out)?;
    } else {
        safetensors_io::save(r.output, &[("sample", &out)])?;
    }
    Ok(out)
}
