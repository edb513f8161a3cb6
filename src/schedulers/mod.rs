//! Samplers numerically the same as diffusers' schedulers for the same `scheduler_config.json`
//! (module names mirror diffusers': `scheduling_ddim`, `scheduling_ddpm`,
//! `scheduling_euler_discrete`), a `Sampler` trait, and the sampling loop diffusers' pipelines run.

pub mod conditioning;
pub mod config;
pub mod scheduling_ddim;
pub mod scheduling_ddpm;
pub mod scheduling_dpmsolver_multistep;
pub mod scheduling_euler_discrete;
pub mod scheduling_heun_discrete;

pub use conditioning::Conditioning;
pub use config::{SamplerKind, SchedulerConfig};

use crate::boosters::Boosters;
use crate::error::{Error, Result};
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
        if let Some((at, v)) = first_non_finite(t.data()) {
            return Err(Error::input(
                "noise",
                format!("step {step}: element {at} is {v}"),
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

/// Everything a sampling run takes besides the model and the sampler.
pub struct SampleOptions<'a> {
    /// Classifier-free guidance scale: uncond and cond run in one batch,
    /// `out = uncond + g·(cond − uncond)`.
    pub guidance: Option<f32>,
    /// What the run is conditioned on (prompt embeddings, class labels, SDXL's extras).
    pub conditioning: Conditioning,
    /// Boosters for every call; the loop sets `mask_step` to the call index.
    pub boosters: Boosters,
    /// Called after every step with its state, as diffusers' `callback_on_step_end`: it can
    /// watch (progress, previews) and end the run early (`StepControl`).
    pub on_step: Option<&'a mut (dyn FnMut(&StepState) -> StepControl + Send)>,
}

/// What the step callback sees after a step.
#[derive(Debug)]
pub struct StepState<'a> {
    /// The step just done, from 0 (one per model call: Heun's second-order calls count).
    pub step: usize,
    /// How many steps the run has.
    pub total: usize,
    /// The timestep the model was called at.
    pub timestep: f32,
    /// The latents after the step (what the run returns if it ends here).
    pub latents: &'a Tensor,
}

/// The step callback's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepControl {
    /// Go on.
    Continue,
    /// End the run with `Error::Cancelled`, discarding the latents.
    Cancel,
    /// End the run now, returning the latents so far as its result.
    Stop,
}

/// The loop of diffusers' pipelines: scale the noise by the sampler's initial sigma, then per
/// timestep scale the model input, call the model (twice-batched under guidance), combine, step.
/// `noise` is standard normal and unscaled.
///
/// Nothing non-finite goes by unnamed: the schedule (timesteps, initial σ), the noise and the
/// conditioning are checked before the first call; after each call, the model's output, the
/// guided combination and the sampler's update are checked, and an error says at which step
/// (and timestep) and which of them it was. A model error is reported with its step too.
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
        mut on_step,
    } = opts;
    let b = noise.dims4("noise")?.0;
    if b == 0 {
        return Err(Error::input("noise", "an empty batch"));
    }
    if let Some(g) = guidance {
        if !g.is_finite() {
            return Err(Error::Msg(format!(
                "guidance must be a finite number, got {g}"
            )));
        }
    }
    check_timesteps("the sampler", sampler.timesteps())?;
    let init = sampler.init_noise_sigma();
    if !(init.is_finite() && init > 0.0) {
        return Err(Error::Msg(format!(
            "the sampler's initial noise sigma is {init}: it must be a positive finite number"
        )));
    }
    check_finite("noise", noise.data())?;
    // The conditioning against the model, before any work (its errors name the user's tensors).
    let context = cond.for_model(model, noise, guidance.is_some())?;
    let mut latents = noise.clone();
    latents.data_mut().iter_mut().for_each(|v| *v *= init);
    if let Some((at, v)) = first_non_finite(latents.data()) {
        return Err(Error::Msg(format!(
            "the initial noise times the sampler's initial sigma {init} overflows \
             (element {at} is {v})"
        )));
    }
    if guidance.is_some() {
        // Per-sample masks are given per sample; the guided call has each sample twice.
        if let Some(doubled) = boosters.masks.as_ref().and_then(|m| m.for_guidance(b)) {
            boosters.masks = Some(std::sync::Arc::new(doubled));
        }
    }
    let total = sampler.timesteps().len();
    for i in 0..total {
        let t = sampler.timesteps()[i];
        // Errors of this step carry it; a NaN or infinity is `NonFinite` naming its source.
        let in_step = |source: Error| Error::AtStep {
            step: i + 1,
            total,
            timestep: t,
            source: Box::new(source),
        };
        let at = |source: &str, what: String| {
            in_step(Error::NonFinite {
                at: source.to_string(),
                msg: what,
            })
        };
        let x = match guidance {
            Some(_) => concat_batch(&latents, &latents)?,
            None => latents.clone(),
        };
        let scaled = sampler.scale_model_input(&x, i);
        if let Some((k, v)) = first_non_finite(scaled.data()) {
            return Err(at(
                "scale_model_input",
                format!("the sampler's scaled model input is not finite (element {k} is {v})"),
            ));
        }
        let inputs = context.inputs(scaled, t);
        boosters.mask_step = i;
        let out = model.forward_with(&inputs, &boosters).map_err(in_step)?;
        if let Some((k, v)) = first_non_finite(out.data()) {
            return Err(at(
                "model",
                format!("the model's output is not finite (element {k} is {v})"),
            ));
        }
        let out = match guidance {
            Some(g) => {
                if out.shape().first() != Some(&(2 * b)) {
                    return Err(in_step(Error::Msg(format!(
                        "the model outputs {:?} for a guided batch of {}",
                        out.shape(),
                        2 * b
                    ))));
                }
                let half = out.numel() / 2;
                let (u, c) = out.data().split_at(half);
                let data = u.iter().zip(c).map(|(&u, &c)| u + g * (c - u)).collect();
                let mut shape = out.shape().to_vec();
                shape[0] = b;
                let guided = Tensor::new(shape, data)?;
                if let Some((k, v)) = first_non_finite(guided.data()) {
                    return Err(at(
                        "guidance",
                        format!(
                            "classifier-free guidance at scale {g} overflows (element {k} is {v})"
                        ),
                    ));
                }
                guided
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
        latents = sampler
            .step(&out, i, &latents, step_noise)
            .map_err(in_step)?;
        if let Some((k, v)) = first_non_finite(latents.data()) {
            return Err(at(
                "step",
                format!(
                    "the sampler's update is not finite although the model's output is \
                     (element {k} is {v})"
                ),
            ));
        }
        if let Some(f) = on_step.as_mut() {
            let state = StepState {
                step: i,
                total,
                timestep: t,
                latents: &latents,
            };
            match f(&state) {
                StepControl::Continue => {}
                StepControl::Stop => return Ok(latents),
                StepControl::Cancel => return Err(Error::Cancelled { step: i + 1, total }),
            }
        }
    }
    Ok(latents)
}

/// The first non-finite value of `data`, with its index.
pub(crate) fn first_non_finite(data: &[f32]) -> Option<(usize, f32)> {
    data.iter()
        .position(|v| !v.is_finite())
        .map(|i| (i, data[i]))
}

/// An error naming input `name` when `data` holds a non-finite value.
pub(crate) fn check_finite(name: &str, data: &[f32]) -> Result<()> {
    match first_non_finite(data) {
        Some((at, v)) => Err(Error::input(name, format!("element {at} is {v}"))),
        None => Ok(()),
    }
}

/// A sampler's timesteps: at least one, all finite and non-negative.
pub(crate) fn check_timesteps(sampler: &str, timesteps: &[f32]) -> Result<()> {
    if timesteps.is_empty() {
        return Err(Error::Msg(format!("{sampler} has no timesteps")));
    }
    if let Some(i) = timesteps.iter().position(|t| !(t.is_finite() && *t >= 0.0)) {
        return Err(Error::Msg(format!(
            "{sampler}: timestep {} of step {} is not a finite non-negative number",
            timesteps[i],
            i + 1
        )));
    }
    Ok(())
}

/// A σ schedule (one σ per step, then the final 0): every σ but the last positive with a
/// finite square (the samplers divide by σ and scale by √(σ² + 1)), and with
/// `strictly_decreasing` (DPM-Solver's log-SNR steps divide by their differences) no repeats.
pub(crate) fn check_sigmas(sampler: &str, sigmas: &[f32], strictly_decreasing: bool) -> Result<()> {
    let steps = sigmas.len().saturating_sub(1);
    for (i, &s) in sigmas[..steps].iter().enumerate() {
        if !(s > 0.0 && (s * s).is_finite()) {
            return Err(Error::Msg(format!(
                "{sampler}: σ of step {} is {s}; it must be positive and finite (check \
                 `beta_start`, `beta_end`, `beta_schedule` and `num_train_timesteps`)",
                i + 1
            )));
        }
    }
    if strictly_decreasing {
        if let Some(i) = (0..steps).find(|&i| sigmas[i + 1] >= sigmas[i]) {
            return Err(Error::Msg(format!(
                "{sampler}: σ does not decrease from step {} to step {} ({} then {}): the \
                 timesteps repeat; give fewer steps or another `timestep_spacing`",
                i + 1,
                i + 2,
                sigmas[i],
                sigmas[i + 1]
            )));
        }
    }
    Ok(())
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

/// The sampler `kind` for `config`, set for `steps` model calls' worth of steps. The config is
/// validated (`SchedulerConfig::validate`) and the schedule checked for non-finite values
/// before a sampler is returned.
pub fn build(
    kind: SamplerKind,
    config: &SchedulerConfig,
    steps: usize,
    eta: f32,
) -> Result<Box<dyn Sampler>> {
    check_eta(eta)?;
    if eta > 0.0 && kind != SamplerKind::Ddim {
        return Err(Error::Msg(format!(
            "eta = {eta}: eta applies to the DDIM sampler only ({kind:?} has none)"
        )));
    }
    config.validate()?;
    let sampler: Box<dyn Sampler> = match kind {
        SamplerKind::Ddpm => Box::new(scheduling_ddpm::DdpmScheduler::new(config, steps)?),
        SamplerKind::Ddim => Box::new(scheduling_ddim::DdimScheduler::new(config, steps, eta)?),
        SamplerKind::Euler => Box::new(scheduling_euler_discrete::EulerScheduler::new(
            config, steps,
        )?),
        SamplerKind::Heun => Box::new(scheduling_heun_discrete::HeunScheduler::new(config, steps)?),
        SamplerKind::DpmSolverMultistep => Box::new(
            scheduling_dpmsolver_multistep::DpmSolverMultistepScheduler::new(config, steps)?,
        ),
    };
    check_timesteps(&format!("{kind:?}"), sampler.timesteps())?;
    Ok(sampler)
}

/// DDIM's eta: 0 (deterministic) to 1 (DDPM's variance). Above 1 the noise's variance exceeds
/// 1 − ᾱ_prev and the direction term would be the root of a negative number.
pub(crate) fn check_eta(eta: f32) -> Result<()> {
    if !(0.0..=1.0).contains(&eta) {
        return Err(Error::Msg(format!(
            "eta = {eta}: must be a number from 0 to 1"
        )));
    }
    Ok(())
}
