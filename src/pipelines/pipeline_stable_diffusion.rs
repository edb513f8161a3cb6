//! From a prompt to an image, as diffusers' `StableDiffusionPipeline.__call__` and
//! `StableDiffusionXLPipeline.__call__` do it: encode the prompt (and the negative prompt under
//! classifier-free guidance), add SDXL's size conditioning, run the sampler over the U-Net from
//! the initial latents, decode with the VAE. The sampler, the U-Net (a `Denoiser`) and the
//! conditioning stay reachable, so an engine can run its own loop between the same two ends.
//!
//! Differences from diffusers, on purpose: the initial latents come from this crate's seeded
//! normal generator, not torch's (pass `latents` to reproduce a diffusers run exactly); there is no
//! safety checker; `guidance_rescale`, IP adapters and textual inversion are not implemented.

use std::path::Path;

use super::pipeline_utils::{add_time_ids, image_size, ModelIndex, PipelineKind};
use crate::backend::Backend;
use crate::boosters::Boosters;
use crate::device::{DType, Device, Exec};
use crate::error::{Error, Result};
use crate::models::autoencoders::{AutoencoderKL, Tiling};
use crate::models::encode_prompt::{
    encode_prompt_sd, encode_prompt_sdxl, PromptEmbeds, SdxlPrompts, TextEncoder,
};
use crate::models::unet_2d::UNet;
use crate::schedulers::{
    self, Conditioning, SampleOptions, SamplerKind, SchedulerConfig, SeededNoise, StepControl,
    StepState,
};
use crate::tensor::Tensor;
use crate::weights::LoadOptions;
use crate::workspace::Workspace;

/// What to draw: the prompts (one image each, times `images_per_prompt`) and what to steer away
/// from. `prompt_2`/`negative_prompt_2` feed SDXL's second text encoder (default: the first's).
#[derive(Clone, Debug, Default)]
pub struct Prompt {
    /// `prompt`: one per image.
    pub prompt: Vec<String>,
    /// `negative_prompt` (default: empty; SDXL zeroes it under `force_zeros_for_empty_prompt`).
    pub negative_prompt: Option<Vec<String>>,
    /// SDXL's `prompt_2`.
    pub prompt_2: Option<Vec<String>>,
    /// SDXL's `negative_prompt_2`.
    pub negative_prompt_2: Option<Vec<String>>,
}

impl Prompt {
    /// One prompt, nothing else.
    pub fn new(prompt: impl Into<String>) -> Self {
        Prompt {
            prompt: vec![prompt.into()],
            ..Prompt::default()
        }
    }
}

/// The settings of one `generate` call, with diffusers' defaults.
pub struct GenerateOptions<'a> {
    /// `num_inference_steps` (default 50).
    pub steps: usize,
    /// `guidance_scale`: classifier-free guidance when above 1 (default 7.5 for SD, 5.0 for
    /// SDXL: `None` picks the pipeline's).
    pub guidance_scale: Option<f32>,
    /// Image height in pixels (default: the U-Net's `sample_size` × the VAE's scale factor).
    pub height: Option<usize>,
    /// Image width in pixels (default as `height`).
    pub width: Option<usize>,
    /// `num_images_per_prompt` (default 1).
    pub images_per_prompt: usize,
    /// Seed of the initial latents (when `latents` is None) and of stochastic samplers.
    pub seed: u64,
    /// The initial latents, standard normal and unscaled, `[B, C, H/f, W/f]` (diffusers'
    /// `latents`); None draws them from `seed`.
    pub latents: Option<Tensor>,
    /// The sampler (default: the pipeline's `scheduler/` class).
    pub sampler: Option<SamplerKind>,
    /// DDIM's eta (default 0).
    pub eta: f32,
    /// `clip_skip`: layers of the text encoder to skip.
    pub clip_skip: Option<usize>,
    /// SDXL's `original_size` (default: the image size).
    pub original_size: Option<(usize, usize)>,
    /// SDXL's `crops_coords_top_left` (default (0, 0)).
    pub crops_coords_top_left: (usize, usize),
    /// SDXL's `target_size` (default: the image size).
    pub target_size: Option<(usize, usize)>,
    /// Boosters for every U-Net call (FreeU, Skip-Tuning, masks, ...).
    pub boosters: Boosters,
    /// How the VAE decodes (default: whole, as diffusers' pipelines, unless it would not fit).
    pub tiling: Tiling,
    /// Called after every sampler step (see `SampleOptions::on_step`).
    pub on_step: Option<&'a mut (dyn FnMut(&StepState) -> StepControl + Send)>,
}

impl Default for GenerateOptions<'_> {
    fn default() -> Self {
        GenerateOptions {
            steps: 50,
            guidance_scale: None,
            height: None,
            width: None,
            images_per_prompt: 1,
            seed: 0,
            latents: None,
            sampler: None,
            eta: 0.0,
            clip_skip: None,
            original_size: None,
            crops_coords_top_left: (0, 0),
            target_size: None,
            boosters: Boosters::default(),
            tiling: Tiling::WhenNeeded,
            on_step: None,
        }
    }
}

/// What a `generate` call made.
#[derive(Clone, Debug)]
pub struct Generated {
    /// The decoded images, `[B, 3, H, W]` in [-1, 1] as the VAE gives them
    /// (`image::postprocess` makes 8-bit images of them, `image::save_png` writes one).
    pub images: Tensor,
    /// The final latents (diffusers' `output_type="latent"`), before the VAE.
    pub latents: Tensor,
}

/// A Stable Diffusion (1.x, 2.x) or SDXL pipeline folder, loaded: load once, then `generate`
/// from any number of threads.
///
/// ```
/// use freelunch::device::{DType, Device};
/// use freelunch::pipelines::{GenerateOptions, Prompt, StableDiffusionPipeline};
///
/// let dir = "tests/fixtures/pipelines/sd_tiny".as_ref();
/// let pipe = StableDiffusionPipeline::from_pretrained(dir, &Default::default(), Device::Cpu, DType::F32)?;
/// let opts = GenerateOptions { steps: 3, ..GenerateOptions::default() };
/// let out = pipe.generate(&Prompt::new("a cat, drawn in ink"), opts)?;
/// let images = freelunch::image::postprocess(&out.images)?;
/// assert_eq!(images.len(), 1);
/// # Ok::<(), freelunch::Error>(())
/// ```
pub struct StableDiffusionPipeline {
    /// Which pipeline class the folder holds.
    pub kind: PipelineKind,
    /// The folder's `model_index.json`.
    pub index: ModelIndex,
    /// The U-Net, placed on the pipeline's device.
    pub unet: UNet,
    /// The VAE.
    pub vae: AutoencoderKL,
    /// `tokenizer` + `text_encoder`.
    pub text_encoder: TextEncoder,
    /// SDXL's `tokenizer_2` + `text_encoder_2`.
    pub text_encoder_2: Option<TextEncoder>,
    /// `scheduler/scheduler_config.json`.
    pub scheduler: SchedulerConfig,
    exec: Exec,
    vae_exec: Exec,
}

impl StableDiffusionPipeline {
    /// Loads a pipeline folder (`model_index.json` naming `StableDiffusionPipeline` or
    /// `StableDiffusionXLPipeline`) onto `device`, computing in `dtype` (a VAE with
    /// `force_upcast` decodes in f32, as diffusers' pipelines do).
    pub fn from_pretrained(
        dir: &Path,
        opts: &LoadOptions,
        device: Device,
        dtype: DType,
    ) -> Result<Self> {
        let dir = crate::hub::resolve(dir, opts.revision.as_deref())?;
        let index = ModelIndex::from_dir(&dir)?;
        let kind = index.kind()?;
        let exec = device.open(dtype)?;
        let component = LoadOptions {
            revision: None,
            ..opts.clone()
        };
        let unet =
            UNet::from_pretrained(&index.component_dir("unet"), &component)?.on(exec.clone());
        let vae = AutoencoderKL::from_pretrained(&index.component_dir("vae"), &component)?;
        let vae_exec = if dtype != DType::F32 && vae.config.force_upcast {
            device.open(DType::F32)?
        } else {
            exec.clone()
        };
        let variant = opts.variant.as_deref();
        let text_encoder =
            TextEncoder::from_pretrained(&dir, "tokenizer", "text_encoder", variant)?;
        let text_encoder_2 = match kind {
            PipelineKind::StableDiffusion => None,
            PipelineKind::StableDiffusionXL => Some(TextEncoder::from_pretrained(
                &dir,
                "tokenizer_2",
                "text_encoder_2",
                variant,
            )?),
        };
        let scheduler = SchedulerConfig::from_path(&index.component_dir("scheduler"))?;
        Ok(StableDiffusionPipeline {
            kind,
            index,
            unet,
            vae,
            text_encoder,
            text_encoder_2,
            scheduler,
            exec,
            vae_exec,
        })
    }

    /// diffusers' default `guidance_scale` for this pipeline class.
    pub fn default_guidance_scale(&self) -> f32 {
        match self.kind {
            PipelineKind::StableDiffusion => 7.5,
            PipelineKind::StableDiffusionXL => 5.0,
        }
    }

    /// The VAE's scale factor, `2^(len(block_out_channels) − 1)`.
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.config.upscale_factor()
    }

    /// The prompt's embeddings as the sampling loop takes them (`guidance`: with the negative
    /// prompt's), without SDXL's size conditioning, on the pipeline's device.
    pub fn encode_prompt(
        &self,
        prompt: &Prompt,
        guidance: bool,
        clip_skip: Option<usize>,
    ) -> Result<PromptEmbeds> {
        match &self.exec {
            Exec::Cpu(cpu) => self.encode_prompt_on(cpu, prompt, guidance, clip_skip),
            Exec::Cuda(gpu) => self.encode_prompt_on(gpu.as_ref(), prompt, guidance, clip_skip),
        }
    }

    /// `encode_prompt` on backend `be`.
    fn encode_prompt_on<B: Backend>(
        &self,
        be: &B,
        prompt: &Prompt,
        guidance: bool,
        clip_skip: Option<usize>,
    ) -> Result<PromptEmbeds> {
        fn strs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        let p = strs(&prompt.prompt);
        let np = prompt.negative_prompt.as_deref().map(strs);
        let Some(enc2) = &self.text_encoder_2 else {
            return encode_prompt_sd(
                be,
                &self.text_encoder,
                &p,
                np.as_deref(),
                guidance,
                clip_skip,
            );
        };
        let p2 = prompt.prompt_2.as_deref().map(strs);
        let np2 = prompt.negative_prompt_2.as_deref().map(strs);
        let prompts = SdxlPrompts {
            prompt: &p,
            prompt_2: p2.as_deref(),
            negative_prompt: np.as_deref(),
            negative_prompt_2: np2.as_deref(),
        };
        encode_prompt_sdxl(
            be,
            Some(&self.text_encoder),
            enc2,
            &prompts,
            guidance,
            clip_skip,
            self.index.force_zeros_for_empty_prompt,
        )
    }

    /// The whole run: prompt → conditioning → sampler over the U-Net → VAE.
    pub fn generate(&self, prompt: &Prompt, opts: GenerateOptions) -> Result<Generated> {
        if prompt.prompt.is_empty() {
            return Err(Error::input("prompt", "no prompt given"));
        }
        if opts.images_per_prompt == 0 {
            return Err(Error::input("num_images_per_prompt", "must be at least 1"));
        }
        if opts.steps == 0 {
            return Err(Error::input("num_inference_steps", "must be at least 1"));
        }
        let g = opts
            .guidance_scale
            .unwrap_or_else(|| self.default_guidance_scale());
        if !g.is_finite() {
            return Err(Error::input(
                "guidance_scale",
                format!("must be a finite number, got {g}"),
            ));
        }
        // diffusers guides only above 1; at or below it the unconditional half is not run.
        let guidance = (g > 1.0).then_some(g);
        let f = self.vae_scale_factor();
        let (h, w) = image_size(opts.height, opts.width, self.unet.config.sample_size, f)?;
        let batch = prompt.prompt.len() * opts.images_per_prompt;
        let shape = [batch, self.unet.config.in_channels, h / f, w / f];
        let noise = match opts.latents {
            Some(l) if l.shape() == shape => l,
            Some(l) => {
                return Err(Error::input(
                    "latents",
                    format!(
                        "shape {:?}; {} prompt(s) × {} image(s) at {h}×{w} need {shape:?}",
                        l.shape(),
                        prompt.prompt.len(),
                        opts.images_per_prompt
                    ),
                ))
            }
            None => Tensor::try_randn(shape, opts.seed)?,
        };
        let embeds = self.encode_prompt(prompt, guidance.is_some(), opts.clip_skip)?;
        let mut conditioning =
            repeat_per_image(embeds.into_conditioning(), opts.images_per_prompt)?;
        if self.kind == PipelineKind::StableDiffusionXL {
            let ids = add_time_ids(
                opts.original_size.unwrap_or((h, w)),
                opts.crops_coords_top_left,
                opts.target_size.unwrap_or((h, w)),
            );
            conditioning.time_ids = Some(ids);
        }
        let kind = match (opts.sampler, self.scheduler.class) {
            (Some(k), _) => k,
            (None, Some(k)) => k,
            (None, None) => {
                return Err(Error::Unsupported {
                    field: "scheduler _class_name".into(),
                    value: format!(
                        "{:?} in {} (implemented: {}); choose a sampler",
                        self.scheduler.class_name,
                        self.index.component_dir("scheduler").display(),
                        SamplerKind::class_names()
                    ),
                })
            }
        };
        let mut sampler = schedulers::build(kind, &self.scheduler, opts.steps, opts.eta)?;
        let sample_opts = SampleOptions {
            guidance,
            conditioning,
            boosters: opts.boosters,
            on_step: opts.on_step,
        };
        // Every step makes the same call: the later ones reuse the first one's host buffers
        // (kept by the handle's workspace unless the caller gave the U-Net one of its own).
        let unet = match self.unet.placement().workspace() {
            Some(_) => self.unet.clone(),
            None => self.unet.clone().with_workspace(Workspace::new()),
        };
        let latents = schedulers::sample(
            &unet,
            sampler.as_mut(),
            &noise,
            sample_opts,
            &mut SeededNoise(opts.seed),
        )?;
        let images = self
            .vae
            .decode_latents(&self.vae_exec, &latents, opts.tiling)?;
        Ok(Generated { images, latents })
    }
}

/// diffusers' `num_images_per_prompt`: each prompt's rows repeated in place (`[p0, p0, p1, p1]`).
fn repeat_per_image(c: Conditioning, n: usize) -> Result<Conditioning> {
    if n == 1 {
        return Ok(c);
    }
    let rep = |t: Option<Tensor>| -> Result<Option<Tensor>> {
        let Some(t) = t else { return Ok(None) };
        let b = t.shape()[0];
        let per = t.numel() / b.max(1);
        let mut data = crate::tensor::try_vec_with_capacity(t.numel() * n, "repeated prompts")?;
        for row in t.data().chunks(per.max(1)) {
            for _ in 0..n {
                data.extend_from_slice(row);
            }
        }
        let mut shape = crate::Shape::from(t.shape());
        shape[0] = b * n;
        Tensor::new(shape, data).map(Some)
    };
    Ok(Conditioning {
        encoder_hidden_states: rep(c.encoder_hidden_states)?,
        uncond_hidden_states: rep(c.uncond_hidden_states)?,
        text_embeds: rep(c.text_embeds)?,
        uncond_text_embeds: rep(c.uncond_text_embeds)?,
        ..c
    })
}
