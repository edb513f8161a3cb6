//! Samplers numerically the same as diffusers' schedulers for the same `scheduler_config.json`
//! (module names mirror diffusers': `scheduling_ddim`, `scheduling_ddpm`,
//! `scheduling_euler_discrete`, …), a `Sampler` trait, and the sampling loop diffusers'
//! pipelines run.

pub mod conditioning;
pub mod config;
pub mod scheduling_ddim;
pub mod scheduling_ddpm;
pub mod scheduling_dpmsolver_multistep;
pub mod scheduling_euler_ancestral_discrete;
pub mod scheduling_euler_discrete;
pub mod scheduling_heun_discrete;
pub mod scheduling_lms_discrete;
pub mod scheduling_pndm;
pub mod scheduling_unipc_multistep;

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
    /// The timesteps the model is evaluated at, in order (one model call each; PNDM's and
    /// Heun's repeat some).
    fn timesteps(&self) -> &[f32];
    /// The σ schedule of the σ-parameterised samplers (diffusers' `scheduler.sigmas`: one per
    /// call, then the final one); None for the DDPM-parameterised ones.
    fn sigmas(&self) -> Option<&[f32]> {
        None
    }
    /// The sampler step model call `call` belongs to (what per-step masks are indexed by): the
    /// call itself for one-call-per-step samplers; Heun's and PNDM's steps take several calls.
    fn step_of_call(&self, call: usize) -> usize {
        call
    }
    /// The scale of the initial noise (1 for the DDPM-parameterised samplers).
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }
    /// The model input at call `i` (identity unless overridden; `x/√(σ²+1)` for Euler and Heun).
    fn scale_model_input(&self, sample: &Tensor, _i: usize) -> Tensor {
        sample.clone()
    }
    /// The last step's prediction of the denoised sample, x̂₀ (diffusers' `pred_original_sample`),
    /// where the sampler computes one: DDPM, DDIM, Euler, Euler ancestral, LMS and Heun do, and
    /// DPM-Solver++ and UniPC step from it; PNDM has none. None before the first step.
    fn pred_original_sample(&self) -> Option<&Tensor> {
        None
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
    /// The step's prediction of the denoised latents (diffusers' `pred_original_sample`; one
    /// per sample, guidance applied), where the sampler has one: what a preview shows.
    pub pred_x0: Option<&'a Tensor>,
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
            return Err(Error::input(
                "guidance",
                format!("must be a finite number, got {g}"),
            ));
        }
    }
    check_timesteps("the sampler", sampler.timesteps())?;
    let init = sampler.init_noise_sigma();
    if !(init.is_finite() && init > 0.0) {
        return Err(Error::sampler(
            "sampler",
            format!(
                "the sampler's initial noise sigma is {init}: it must be a positive finite number"
            ),
        ));
    }
    check_finite("noise", noise.data())?;
    // The conditioning against the model, before any work (its errors name the user's tensors).
    let context = cond.for_model(model, noise, guidance.is_some())?;
    let mut latents = noise.clone();
    latents.data_mut().iter_mut().for_each(|v| *v *= init);
    if let Some((at, v)) = first_non_finite(latents.data()) {
        return Err(Error::input(
            "noise",
            format!(
                "the initial noise times the sampler's initial sigma {init} overflows \
             (element {at} is {v})"
            ),
        ));
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
        // Per-step masks follow the sampler's steps: all calls of one step share its masks.
        boosters.mask_step = sampler.step_of_call(i);
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
                    return Err(in_step(Error::shape(
                        "model",
                        format!(
                            "the model outputs {:?} for a guided batch of {}",
                            out.shape(),
                            2 * b
                        ),
                    )));
                }
                let half = out.numel() / 2;
                let (u, c) = out.data().split_at(half);
                let data = u.iter().zip(c).map(|(&u, &c)| u + g * (c - u)).collect();
                let mut shape = crate::Shape::from(out.shape());
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
            return Err(Error::shape(
                "model",
                format!(
                    "the model outputs {:?} for samples of {:?}; sampling needs out_channels = \
                 in_channels (learned-variance outputs are not implemented)",
                    out.shape(),
                    latents.shape()
                ),
            ));
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
                pred_x0: sampler.pred_original_sample(),
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
        return Err(Error::sampler(sampler, "has no timesteps"));
    }
    if let Some(i) = timesteps.iter().position(|t| !(t.is_finite() && *t >= 0.0)) {
        return Err(Error::sampler(
            sampler,
            format!(
                "timestep {} of step {} is not a finite non-negative number",
                timesteps[i],
                i + 1
            ),
        ));
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
            return Err(Error::sampler(
                sampler,
                format!(
                    "σ of step {} is {s}; it must be positive and finite (check \
                 `beta_start`, `beta_end`, `beta_schedule` and `num_train_timesteps`)",
                    i + 1
                ),
            ));
        }
    }
    if strictly_decreasing {
        if let Some(i) = (0..steps).find(|&i| sigmas[i + 1] >= sigmas[i]) {
            return Err(Error::sampler(
                sampler,
                format!(
                    "σ does not decrease from step {} to step {} ({} then {}): the \
                 timesteps repeat; give fewer steps or another `timestep_spacing`",
                    i + 1,
                    i + 2,
                    sigmas[i],
                    sigmas[i + 1]
                ),
            ));
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
    let mut shape = crate::Shape::from(a.shape());
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
    Tensor::from_parts(x.shape(), data)
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
        return Err(Error::sampler(
            format!("{kind:?}"),
            format!("eta = {eta}: eta applies to the DDIM sampler only ({kind:?} has none)"),
        ));
    }
    config.validate()?;
    use scheduling_dpmsolver_multistep::DpmSolverMultistepScheduler;
    let sampler: Box<dyn Sampler> = match kind {
        SamplerKind::Ddpm => Box::new(scheduling_ddpm::DdpmScheduler::new(config, steps)?),
        SamplerKind::Ddim => Box::new(scheduling_ddim::DdimScheduler::new(config, steps, eta)?),
        SamplerKind::Pndm => Box::new(scheduling_pndm::PndmScheduler::new(config, steps)?),
        SamplerKind::Euler => Box::new(scheduling_euler_discrete::EulerScheduler::new(
            config, steps,
        )?),
        SamplerKind::EulerAncestral => Box::new(
            scheduling_euler_ancestral_discrete::EulerAncestralScheduler::new(config, steps)?,
        ),
        SamplerKind::Heun => Box::new(scheduling_heun_discrete::HeunScheduler::new(config, steps)?),
        SamplerKind::Lms => Box::new(scheduling_lms_discrete::LmsScheduler::new(config, steps)?),
        SamplerKind::DpmSolverMultistep => {
            Box::new(DpmSolverMultistepScheduler::new(config, steps, false)?)
        }
        SamplerKind::DpmSolverMultistepSde => {
            Box::new(DpmSolverMultistepScheduler::new(config, steps, true)?)
        }
        SamplerKind::UniPc => Box::new(scheduling_unipc_multistep::UniPcScheduler::new(
            config, steps,
        )?),
    };
    check_timesteps(&format!("{kind:?}"), sampler.timesteps())?;
    Ok(sampler)
}

/// DDIM's eta: 0 (deterministic) to 1 (DDPM's variance). Above 1 the noise's variance exceeds
/// 1 − ᾱ_prev and the direction term would be the root of a negative number.
pub(crate) fn check_eta(eta: f32) -> Result<()> {
    if !(0.0..=1.0).contains(&eta) {
        return Err(Error::sampler(
            "DDIM",
            format!("eta = {eta}: must be a number from 0 to 1"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::unet_2d::UNetInputs;

    fn config(json: &str) -> Result<SchedulerConfig> {
        SchedulerConfig::from_json_str(json, "test")
    }

    /// The error of building `kind` from `json` for `steps`, as text.
    fn refused(kind: SamplerKind, json: &str, steps: usize) -> String {
        match config(json).and_then(|c| build(kind, &c, steps, 0.0)) {
            Ok(_) => panic!("{kind:?} accepted {json}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn an_unsupported_class_is_named_with_every_supported_one() {
        let msg = SamplerKind::from_class_name("KDPM2DiscreteScheduler")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("_class_name") && msg.contains("KDPM2DiscreteScheduler"));
        for kind in SamplerKind::ALL {
            assert!(msg.contains(kind.class_name()), "{msg}");
        }
        let msg = SamplerKind::from_short_name("plms")
            .unwrap_err()
            .to_string();
        for kind in SamplerKind::ALL {
            assert!(msg.contains(kind.short_name()), "{msg}");
        }
        // The config itself still loads (a --sampler may be given); its class is unknown.
        let c = config(r#"{"_class_name": "KDPM2DiscreteScheduler"}"#).unwrap();
        assert_eq!(c.class, None);
        assert_eq!(c.class_name.as_deref(), Some("KDPM2DiscreteScheduler"));
    }

    #[test]
    fn class_names_and_short_names_round_trip() {
        for kind in SamplerKind::ALL {
            assert_eq!(
                SamplerKind::from_short_name(kind.short_name()).unwrap(),
                kind
            );
        }
        let class = |json: &str| config(json).unwrap().class;
        assert_eq!(
            class(r#"{"_class_name": "PNDMScheduler"}"#),
            Some(SamplerKind::Pndm)
        );
        assert_eq!(
            class(r#"{"_class_name": "UniPCMultistepScheduler", "solver_type": "bh2"}"#),
            Some(SamplerKind::UniPc)
        );
        assert_eq!(
            class(r#"{"_class_name": "DPMSolverMultistepScheduler"}"#),
            Some(SamplerKind::DpmSolverMultistep)
        );
        assert_eq!(
            class(
                r#"{"_class_name": "DPMSolverMultistepScheduler",
                    "algorithm_type": "sde-dpmsolver++"}"#
            ),
            Some(SamplerKind::DpmSolverMultistepSde)
        );
    }

    #[test]
    fn unimplemented_options_are_named() {
        use SamplerKind::*;
        let cases: &[(SamplerKind, &str, usize, &[&str])] = &[
            (UniPc, r#"{"solver_order": 3}"#, 10, &["solver_order", "3"]),
            (UniPc, r#"{"predict_x0": false}"#, 10, &["predict_x0"]),
            (
                UniPc,
                r#"{"lower_order_final": false}"#,
                10,
                &["lower_order_final"],
            ),
            (UniPc, r#"{"solver_p": {}}"#, 10, &["solver_p"]),
            (
                UniPc,
                r#"{"disable_corrector": [1.5]}"#,
                10,
                &["disable_corrector"],
            ),
            (
                UniPc,
                r#"{"disable_corrector": 1}"#,
                10,
                &["disable_corrector"],
            ),
            (
                UniPc,
                r#"{"final_sigmas_type": "sigma_min"}"#,
                10,
                &["final_sigmas_type"],
            ),
            (
                UniPc,
                r#"{"use_flow_sigmas": true}"#,
                10,
                &["use_flow_sigmas"],
            ),
            (
                UniPc,
                r#"{"solver_type": "fancy"}"#,
                10,
                &["solver_type", "fancy"],
            ),
            (
                UniPc,
                r#"{"solver_type": "bh1"}"#,
                10,
                &["solver_type", "bh1"],
            ),
            (UniPc, r#"{"shift_terminal": 0.1}"#, 10, &["shift_terminal"]),
            (
                DpmSolverMultistep,
                r#"{"algorithm_type": "dpmsolver"}"#,
                10,
                &["algorithm_type", "dpmsolver"],
            ),
            (
                DpmSolverMultistepSde,
                r#"{"solver_type": "heun"}"#,
                10,
                &["solver_type", "heun"],
            ),
            (
                Pndm,
                r#"{"prediction_type": "sample"}"#,
                10,
                &["prediction_type"],
            ),
            (
                Pndm,
                r#"{"skip_prk_steps": false}"#,
                3,
                &["skip_prk_steps", "4"],
            ),
            (
                EulerAncestral,
                r#"{"prediction_type": "sample"}"#,
                10,
                &["prediction_type"],
            ),
            (
                Lms,
                r#"{"use_beta_sigmas": true}"#,
                10,
                &["use_beta_sigmas"],
            ),
            // From σ ≈ 20000 (cosine, t = 999) σ_down has no real value in f32.
            (
                EulerAncestral,
                r#"{"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing"}"#,
                3,
                &["σ_down", "step 1"],
            ),
            (
                Lms,
                r#"{"rescale_betas_zero_snr": true}"#,
                10,
                &["rescale_betas_zero_snr"],
            ),
            (
                Pndm,
                r#"{"rescale_betas_zero_snr": true}"#,
                10,
                &["rescale_betas_zero_snr"],
            ),
            (
                Heun,
                r#"{"rescale_betas_zero_snr": true}"#,
                10,
                &["rescale_betas_zero_snr"],
            ),
            (
                Ddpm,
                r#"{"rescale_betas_zero_snr": true}"#,
                10,
                &["rescale_betas_zero_snr"],
            ),
            // Zero terminal SNR under epsilon prediction divides by √ᾱ = 0 where t = 999.
            (
                Ddim,
                r#"{"rescale_betas_zero_snr": true, "timestep_spacing": "trailing"}"#,
                10,
                &["ᾱ = 0", "v_prediction"],
            ),
        ];
        for (kind, json, steps, words) in cases {
            let msg = refused(*kind, json, *steps);
            for w in *words {
                assert!(msg.contains(w), "{kind:?} {json}: {msg:?} lacks {w:?}");
            }
        }
        // diffusers reads UniPC's solver types as DPM-Solver's midpoint and the reverse.
        for (kind, json) in [
            (DpmSolverMultistep, r#"{"solver_type": "bh2"}"#),
            (UniPc, r#"{"solver_type": "midpoint"}"#),
            (UniPc, r#"{"disable_corrector": [0, 2]}"#),
            (
                Ddim,
                r#"{"rescale_betas_zero_snr": true, "prediction_type": "v_prediction"}"#,
            ),
        ] {
            build(kind, &config(json).unwrap(), 10, 0.0).unwrap();
        }
    }

    #[test]
    fn zero_terminal_snr_ends_at_zero_and_keeps_the_first_alpha() {
        let plain = config(
            r#"{"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}"#,
        )
        .unwrap();
        let zsnr = config(
            r#"{"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                "rescale_betas_zero_snr": true}"#,
        )
        .unwrap();
        let (a, z) = (plain.alphas_cumprod(), zsnr.alphas_cumprod());
        assert_eq!(z[999], 0.0);
        assert_eq!(zsnr.betas[999], 1.0);
        assert!((a[0] - z[0]).abs() < 1e-6, "{} vs {}", a[0], z[0]);
        // The σ-samplers' last ᾱ is 2⁻²⁴: σ = √(2²⁴ − 1).
        let s = zsnr.train_sigmas();
        assert!((s[999] - 4096.0).abs() < 1e-3, "{}", s[999]);
        assert!(z.windows(2).all(|w| w[1] < w[0]));
    }

    /// The scheduler config Stable Diffusion 1.5 ships: PLMS from timestep 981, the second
    /// timestep evaluated twice.
    #[test]
    fn the_sd15_pndm_config_builds_plms() {
        let cfg = config(
            r#"{"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0",
                "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                "num_train_timesteps": 1000, "set_alpha_to_one": false,
                "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null,
                "clip_sample": false}"#,
        )
        .unwrap();
        assert_eq!(cfg.class, Some(SamplerKind::Pndm));
        let s = build(SamplerKind::Pndm, &cfg, 50, 0.0).unwrap();
        let ts = s.timesteps();
        assert_eq!(ts.len(), 51);
        assert_eq!(&ts[..4], &[981.0, 961.0, 961.0, 941.0]);
        assert_eq!(ts[50], 1.0);
    }

    /// A stand-in model: its input, halved.
    struct Half;

    impl Denoiser for Half {
        fn forward_with(&self, inputs: &UNetInputs, _: &Boosters) -> Result<Tensor> {
            let mut out = inputs.sample.clone();
            out.data_mut().iter_mut().for_each(|v| *v *= 0.5);
            Ok(out)
        }
    }

    /// Every sampler over spacings, schedules, step counts and its options either refuses the
    /// schedule with an error or runs it to a finite sample (no panic, no silent NaN), and
    /// calls the model once per timestep.
    #[test]
    fn every_sampler_runs_or_refuses_every_schedule() {
        let mut ran = 0;
        for kind in SamplerKind::ALL {
            for spacing in ["leading", "trailing", "linspace"] {
                for extra in [
                    r#""beta_schedule": "linear""#,
                    r#""beta_schedule": "squaredcos_cap_v2", "steps_offset": 1"#,
                    r#""beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                       "skip_prk_steps": true, "use_karras_sigmas": true,
                       "prediction_type": "v_prediction""#,
                    r#""rescale_betas_zero_snr": true, "prediction_type": "v_prediction",
                       "solver_order": 1"#,
                ] {
                    let json = format!(
                        r#"{{"num_train_timesteps": 60, "timestep_spacing": "{spacing}", {extra}}}"#
                    );
                    let cfg = config(&json).unwrap();
                    for steps in 1..=61 {
                        let Ok(mut s) = build(kind, &cfg, steps, 0.0) else {
                            continue;
                        };
                        let noise = Tensor::randn([1, 1, 2, 2], steps as u64);
                        let opts = SampleOptions {
                            guidance: None,
                            conditioning: Conditioning::default(),
                            boosters: Boosters::default(),
                            on_step: None,
                        };
                        let calls = s.timesteps().len();
                        let out = sample(&Half, s.as_mut(), &noise, opts, &mut SeededNoise(1));
                        match out {
                            Ok(x) => assert!(x.data().iter().all(|v| v.is_finite())),
                            Err(e) => panic!("{kind:?} {json} {steps} steps ({calls} calls): {e}"),
                        }
                        ran += 1;
                    }
                }
            }
        }
        assert!(ran > 1000, "{ran}");
    }
}
