//! Ancestral DDPM (`DDPMScheduler`, fixed_small variance).

use super::config::{Prediction, SchedulerConfig, Spacing};
use super::scheduling_ddim::predict;
use super::{axpby, NoiseSource, Sampler};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// diffusers' `DDPMScheduler`: ancestral sampling with the `fixed_small` posterior variance.
pub struct DdpmScheduler {
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f32>,
    prediction: Prediction,
    clip: Option<f32>,
    /// The last step's prediction of the denoised sample (`pred_original_sample`).
    x0: Option<Tensor>,
}

impl DdpmScheduler {
    /// The sampler for `cfg` over `steps` model calls.
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Result<Self> {
        cfg.validate()?;
        cfg.refuse_zero_snr("DDPM")?;
        let spacing = cfg.timestep_spacing.unwrap_or(Spacing::Leading);
        let s = DdpmScheduler {
            alphas_cumprod: cfg.alphas_cumprod(),
            timesteps: cfg
                .discrete_timesteps(steps, spacing)?
                .into_iter()
                .map(|t| t as f32)
                .collect(),
            prediction: cfg.prediction_type,
            clip: cfg.clip(true),
            x0: None,
        };
        // Every step's coefficients, before any model call.
        for i in 0..s.timesteps.len() {
            let (a, x0_coeff, x_coeff, std) = s.coefficients(i);
            if !(a > 0.0 && a < 1.0 && [x0_coeff, x_coeff, std].iter().all(|v| v.is_finite())) {
                return Err(Error::sampler(
                    "DDPM",
                    format!(
                        "the coefficients of step {} (timestep {}) are not usable: ᾱ_t = {a}, \
                     x̂₀ coefficient {x0_coeff}, sample coefficient {x_coeff}, noise σ {std}",
                        i + 1,
                        s.timesteps[i]
                    ),
                ));
            }
        }
        Ok(s)
    }

    /// (ᾱ_t, the x̂₀ and sample coefficients of the posterior mean, its σ; 0 at t = 0) of call
    /// `i`.
    fn coefficients(&self, i: usize) -> (f32, f32, f32, f32) {
        let t = self.timesteps[i] as usize;
        let alpha_prod_t = self.alphas_cumprod[t];
        let alpha_prod_prev = match self.timesteps.get(i + 1) {
            Some(&p) => self.alphas_cumprod[p as usize],
            None => 1.0,
        };
        let (beta_prod_t, beta_prod_prev) = (1.0 - alpha_prod_t, 1.0 - alpha_prod_prev);
        let current_alpha = alpha_prod_t / alpha_prod_prev;
        let current_beta = 1.0 - current_alpha;
        let x0_coeff = alpha_prod_prev.sqrt() * current_beta / beta_prod_t;
        let x_coeff = current_alpha.sqrt() * beta_prod_prev / beta_prod_t;
        let std = if t > 0 {
            (beta_prod_prev / beta_prod_t * current_beta)
                .max(1e-20)
                .sqrt()
        } else {
            0.0
        };
        (alpha_prod_t, x0_coeff, x_coeff, std)
    }
}

impl Sampler for DdpmScheduler {
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
        let (alpha_prod_t, x0_coeff, x_coeff, std) = self.coefficients(i);
        let (mut x0, _) = predict(self.prediction, alpha_prod_t, output, sample);
        if let Some(r) = self.clip {
            x0.data_mut().iter_mut().for_each(|v| *v = v.clamp(-r, r));
        }
        let mut prev = axpby(x0_coeff, &x0, x_coeff, sample);
        self.x0 = Some(x0);
        if self.timesteps[i] > 0.0 {
            let z = noise.noise(i, sample.shape())?;
            prev.data_mut()
                .iter_mut()
                .zip(z.data())
                .for_each(|(p, &z)| *p += std * z);
        }
        Ok(prev)
    }
}
