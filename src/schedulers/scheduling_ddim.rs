//! DDIM (`DDIMScheduler`): deterministic for eta = 0; eta > 0 adds σ_t·noise.

use super::config::{Prediction, SchedulerConfig, Spacing};
use super::{axpby, NoiseSource, Sampler};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// diffusers' `DDIMScheduler`: the DDIM update with eta-scaled noise.
pub struct DdimScheduler {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    step_ratio: usize,
    timesteps: Vec<f32>,
    prediction: Prediction,
    clip: Option<f32>,
    eta: f32,
    /// The last step's prediction of the denoised sample (`pred_original_sample`).
    x0: Option<Tensor>,
}

impl DdimScheduler {
    /// The sampler for `cfg` over `steps` model calls, with DDIM's `eta` (0 to 1).
    pub fn new(cfg: &SchedulerConfig, steps: usize, eta: f32) -> Result<Self> {
        cfg.validate()?;
        super::check_eta(eta)?;
        let alphas_cumprod = cfg.alphas_cumprod();
        let spacing = cfg.timestep_spacing.unwrap_or(Spacing::Leading);
        let timesteps = cfg.discrete_timesteps(steps, spacing)?;
        let s = DdimScheduler {
            final_alpha_cumprod: if cfg.set_alpha_to_one.unwrap_or(true) {
                1.0
            } else {
                alphas_cumprod[0]
            },
            alphas_cumprod,
            step_ratio: cfg.num_train_timesteps / steps,
            timesteps: timesteps.into_iter().map(|t| t as f32).collect(),
            prediction: cfg.prediction_type,
            clip: cfg.clip(true),
            eta,
            x0: None,
        };
        // Every step's coefficients, before any model call.
        for i in 0..s.timesteps.len() {
            let (a, a_prev, std_dev, dir) = s.coefficients(i);
            // ᾱ = 0 (zero terminal SNR) leaves x̂₀ = (x − √(1 − ᾱ)·ε)/√ᾱ undefined under epsilon
            // prediction; v- and sample prediction give x̂₀ and ε̂ without dividing by √ᾱ.
            if a == 0.0 && s.prediction == Prediction::Epsilon {
                return Err(Error::sampler(
                    "DDIM",
                    format!(
                        "ᾱ = 0 at timestep {} (rescale_betas_zero_snr), where epsilon \
                     prediction divides by √ᾱ; zero terminal SNR needs v_prediction or sample \
                     prediction",
                        s.timesteps[i]
                    ),
                ));
            }
            if !((0.0..1.0).contains(&a)
                && a_prev > 0.0
                && [std_dev, dir].iter().all(|v| v.is_finite()))
            {
                return Err(Error::sampler(
                    "DDIM",
                    format!(
                        "the coefficients of step {} (timestep {}) are not usable: ᾱ_t = {a}, \
                     ᾱ_prev = {a_prev}, σ_t = {std_dev}, direction {dir}",
                        i + 1,
                        s.timesteps[i]
                    ),
                ));
            }
        }
        Ok(s)
    }

    /// (ᾱ_t, ᾱ_prev, σ_t, √(1 − ᾱ_prev − σ_t²)) of call `i`.
    fn coefficients(&self, i: usize) -> (f32, f32, f32, f32) {
        let t = self.timesteps[i] as usize;
        let prev = t as i64 - self.step_ratio as i64;
        let alpha_prod_t = self.alphas_cumprod[t];
        let alpha_prod_prev = if prev >= 0 {
            self.alphas_cumprod[prev as usize]
        } else {
            self.final_alpha_cumprod
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let variance =
            (1.0 - alpha_prod_prev) / beta_prod_t * (1.0 - alpha_prod_t / alpha_prod_prev);
        let std_dev = self.eta * variance.max(0.0).sqrt();
        // At eta = 1 rounding can take the radicand a hair below 0.
        let dir = (1.0 - alpha_prod_prev - std_dev * std_dev).max(0.0).sqrt();
        (alpha_prod_t, alpha_prod_prev, std_dev, dir)
    }
}

/// x̂₀ and ε̂ from a model output, for ᾱ_t (DDPM-family parameterisations).
pub(crate) fn predict(
    prediction: Prediction,
    alpha_prod_t: f32,
    output: &Tensor,
    sample: &Tensor,
) -> (Tensor, Tensor) {
    let (a, b) = (alpha_prod_t.sqrt(), (1.0 - alpha_prod_t).sqrt());
    match prediction {
        Prediction::Epsilon => {
            let x0 = sample
                .data()
                .iter()
                .zip(output.data())
                .map(|(&x, &e)| (x - b * e) / a)
                .collect();
            (Tensor::from_parts(sample.shape(), x0), output.clone())
        }
        Prediction::Sample => {
            let eps = sample
                .data()
                .iter()
                .zip(output.data())
                .map(|(&x, &x0)| (x - a * x0) / b)
                .collect();
            (output.clone(), Tensor::from_parts(sample.shape(), eps))
        }
        Prediction::VPrediction => (axpby(a, sample, -b, output), axpby(a, output, b, sample)),
    }
}

impl Sampler for DdimScheduler {
    fn pred_original_sample(&self) -> Option<&Tensor> {
        self.x0.as_ref()
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn step(
        &mut self,
        output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let (alpha_prod_t, alpha_prod_prev, std_dev, dir) = self.coefficients(i);
        let (mut x0, eps) = predict(self.prediction, alpha_prod_t, output, sample);
        if let Some(r) = self.clip {
            x0.data_mut().iter_mut().for_each(|v| *v = v.clamp(-r, r));
        }
        let mut prev_sample = axpby(alpha_prod_prev.sqrt(), &x0, dir, &eps);
        self.x0 = Some(x0);
        if self.eta > 0.0 {
            let z = noise.noise(i, sample.shape())?;
            prev_sample
                .data_mut()
                .iter_mut()
                .zip(z.data())
                .for_each(|(p, &z)| *p += std_dev * z);
        }
        Ok(prev_sample)
    }
}
