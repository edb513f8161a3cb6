//! Samplers numerically the same as diffusers' schedulers for the same `scheduler_config.json`
//! (module names mirror diffusers': `scheduling_ddim`, `scheduling_ddpm`,
//! `scheduling_euler_discrete`), a `Sampler` trait, and the sampling loop diffusers' pipelines run.

pub mod config;
pub mod scheduling_ddim;
pub mod scheduling_ddpm;
pub mod scheduling_dpmsolver_multistep;
pub mod scheduling_euler_discrete;
pub mod scheduling_heun_discrete;

pub use config::{SamplerKind, SchedulerConfig};

use crate::boosters::Boosters;
use crate::error::{Error, Result};
use crate::models::unet_2d::UNetInputs;
use crate::models::Denoiser;
use crate::tensor::Tensor;

/// Where stochastic samplers get their per-step noise.
pub trait NoiseSource: Send {
    /// Standard-normal noise of `shape` for sampler step `step`.
    fn noise(&mut self, step: usize, shape: &[usize]) -> Result<Tensor>;
}

/// Noise from a seed: step i draws from its own stream, so runs are reproducible.
pub struct SeededNoise(pub u64);

impl NoiseSource for SeededNoise {
    fn noise(&mut self, step: usize, shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::randn(
            shape.to_vec(),
            self.0 ^ (step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        ))
    }
}

/// Noise given up front, one tensor per step (to reproduce another implementation's draws).
pub struct GivenNoise(pub Vec<Tensor>);

impl NoiseSource for GivenNoise {
    fn noise(&mut self, step: usize, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .0
            .get(step)
            .ok_or_else(|| Error::input("noise", format!("no noise given for step {step}")))?;
        if t.shape() != shape {
            return Err(Error::input(
                "noise",
                format!("step {step}: shape {:?}, expected {shape:?}", t.shape()),
            ));
        }
        Ok(t.clone())
    }
}

/// A diffusion sampler: a schedule of timesteps and the update that follows each model call.
pub trait Sampler: Send {
    /// The timesteps the model is evaluated at, in order (one model call each).
    fn timesteps(&self) -> &[f32];
    /// The scale of the initial noise (1 for the DDPM-parameterised samplers).
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }
    /// The model input at call `i` (identity unless overridden; `x/√(σ²+1)` for Euler and Heun).
    fn scale_model_input(&self, sample: &Tensor, _i: usize) -> Tensor {
        sample.clone()
    }
    /// The sample after call `i`, from that call's model output.
    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor>;
}

/// Conditioning of a sampling run.
#[derive(Clone, Debug, Default)]
pub struct Conditioning {
    /// [B, M, D] text states.
    pub encoder_hidden_states: Option<Tensor>,
    /// [B, M, D] unconditional states, for classifier-free guidance.
    pub uncond_hidden_states: Option<Tensor>,
    /// [B] class labels.
    pub class_labels: Option<Vec<f32>>,
}

/// Everything a sampling run takes besides the model and the sampler.
pub struct SampleOptions<'a> {
    /// Classifier-free guidance scale: uncond and cond run in one batch,
    /// `out = uncond + g·(cond − uncond)`.
    pub guidance: Option<f32>,
    pub conditioning: Conditioning,
    /// Boosters for every call; the loop sets `mask_step` to the call index.
    pub boosters: Boosters,
    /// Called after every step with (steps done, total).
    pub progress: Option<&'a mut (dyn FnMut(usize, usize) + Send)>,
}

/// The loop of diffusers' pipelines: scale the noise by the sampler's initial sigma, then per
/// timestep scale the model input, call the model (twice-batched under guidance), combine, step.
/// `noise` is standard normal and unscaled.
pub fn sample(
    model: &dyn Denoiser,
    sampler: &mut dyn Sampler,
    noise: &Tensor,
    opts: SampleOptions,
    step_noise: &mut dyn NoiseSource,
) -> Result<Tensor> {
    let SampleOptions {
        guidance,
        conditioning: cond,
        mut boosters,
        mut progress,
    } = opts;
    let b = noise.dims4("noise")?.0;
    if let Some(g) = guidance {
        if !g.is_finite() {
            return Err(Error::Msg("guidance must be a finite number".into()));
        }
        if cond.encoder_hidden_states.is_none() || cond.uncond_hidden_states.is_none() {
            return Err(Error::Msg(
                "guidance needs both encoder_hidden_states and uncond_hidden_states".into(),
            ));
        }
    }
    let init = sampler.init_noise_sigma();
    let mut latents = noise.clone();
    latents.data_mut().iter_mut().for_each(|v| *v *= init);
    let context = match (
        guidance,
        &cond.uncond_hidden_states,
        &cond.encoder_hidden_states,
    ) {
        (Some(_), Some(u), Some(c)) => Some(concat_batch(u, c)?),
        (_, _, c) => c.clone(),
    };
    let labels = match (guidance, &cond.class_labels) {
        (Some(_), Some(l)) => Some([l.clone(), l.clone()].concat()),
        (_, l) => l.clone(),
    };
    let total = sampler.timesteps().len();
    for i in 0..total {
        let t = sampler.timesteps()[i];
        let x = match guidance {
            Some(_) => concat_batch(&latents, &latents)?,
            None => latents.clone(),
        };
        let inputs = UNetInputs {
            sample: sampler.scale_model_input(&x, i),
            timesteps: vec![t],
            encoder_hidden_states: context.clone(),
            class_labels: labels.clone(),
            text_embeds: None,
            time_ids: None,
        };
        boosters.mask_step = i;
        let out = model.forward_with(&inputs, &boosters)?;
        let out = match guidance {
            Some(g) => {
                let half = out.numel() / 2;
                let (u, c) = out.data().split_at(half);
                let data = u.iter().zip(c).map(|(&u, &c)| u + g * (c - u)).collect();
                let mut shape = out.shape().to_vec();
                shape[0] = b;
                Tensor::new(shape, data)?
            }
            None => out,
        };
        if out.shape() != latents.shape() {
            return Err(Error::Msg(format!(
                "the model outputs {:?} for samples of {:?}; sampling needs out_channels = \
                 in_channels (learned-variance outputs are not implemented)",
                out.shape(),
                latents.shape()
            )));
        }
        latents = sampler.step(&out, i, &latents, step_noise)?;
        if let Some(p) = progress.as_mut() {
            p(i + 1, total);
        }
    }
    Ok(latents)
}

fn concat_batch(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape()[1..] != b.shape()[1..] {
        return Err(Error::input(
            "uncond_hidden_states",
            format!("shape {:?} does not match {:?}", a.shape(), b.shape()),
        ));
    }
    let mut shape = a.shape().to_vec();
    shape[0] += b.shape()[0];
    Tensor::new(shape, [a.data(), b.data()].concat())
}

/// Elementwise `a·x + b·y` (the samplers' updates).
pub(crate) fn axpby(a: f32, x: &Tensor, b: f32, y: &Tensor) -> Tensor {
    let data = x
        .data()
        .iter()
        .zip(y.data())
        .map(|(&x, &y)| a * x + b * y)
        .collect();
    Tensor::from_parts(x.shape().to_vec(), data)
}

/// The sampler `kind` for `config`, set for `steps` model calls' worth of steps.
pub fn build(
    kind: SamplerKind,
    config: &SchedulerConfig,
    steps: usize,
    eta: f32,
) -> Result<Box<dyn Sampler>> {
    if !(eta.is_finite() && eta >= 0.0) {
        return Err(Error::Msg(format!(
            "eta must be a non-negative number, got {eta}"
        )));
    }
    if eta > 0.0 && kind != SamplerKind::Ddim {
        return Err(Error::Msg("eta applies to the DDIM sampler only".into()));
    }
    Ok(match kind {
        SamplerKind::Ddpm => Box::new(scheduling_ddpm::DdpmScheduler::new(config, steps)?),
        SamplerKind::Ddim => Box::new(scheduling_ddim::DdimScheduler::new(config, steps, eta)?),
        SamplerKind::Euler => Box::new(scheduling_euler_discrete::EulerScheduler::new(
            config, steps,
        )?),
        SamplerKind::Heun => Box::new(scheduling_heun_discrete::HeunScheduler::new(config, steps)?),
        SamplerKind::DpmSolverMultistep => Box::new(
            scheduling_dpmsolver_multistep::DpmSolverMultistepScheduler::new(config, steps)?,
        ),
    })
}
