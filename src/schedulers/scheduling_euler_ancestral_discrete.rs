//! Euler ancestral (`EulerAncestralDiscreteScheduler`): each step goes deterministically down to
//! σ_down, then adds fresh noise of σ_up, with σ_down² + σ_up² = σ_next² (so every step draws
//! noise, the last with σ_up = 0).

use super::config::{Prediction, SchedulerConfig};
use super::scheduling_euler_discrete::{denoised, sigma_sampler_methods, DiscreteSigmas};
use super::{NoiseSource, Sampler};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// diffusers' `EulerAncestralDiscreteScheduler`: an Euler step to σ_down, then fresh noise
/// of σ_up.
pub struct EulerAncestralScheduler {
    /// σ per call, then a final 0.
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
    init_noise_sigma: f32,
    prediction: Prediction,
    /// The last step's prediction of the denoised sample (`pred_original_sample`).
    x0: Option<Tensor>,
}

impl EulerAncestralScheduler {
    /// The sampler for `cfg` over `steps` model calls.
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Result<Self> {
        if cfg.prediction_type == Prediction::Sample {
            // diffusers raises NotImplementedError for it.
            return Err(Error::Unsupported {
                field: "prediction_type".into(),
                value: "sample (Euler ancestral implements epsilon and v_prediction)".into(),
            });
        }
        // The class has no Karras option: diffusers ignores `use_karras_sigmas` here.
        let s = DiscreteSigmas::new("Euler ancestral", cfg, steps, false)?;
        let s = EulerAncestralScheduler {
            sigmas: s.sigmas,
            timesteps: s.timesteps,
            init_noise_sigma: s.init_noise_sigma,
            prediction: cfg.prediction_type,
            x0: None,
        };
        // Every step's split, before any model call: from a σ thousands of times the next
        // (the cosine schedule's ~20000 at t = 999), σ_from² − σ_to² rounds to σ_from² in f32
        // and σ_down is the root of a negative number, in diffusers as here.
        for i in 0..steps {
            let (up, down) = s.split(i);
            if !(up.is_finite() && down.is_finite()) {
                return Err(Error::sampler(
                    "Euler ancestral",
                    format!(
                        "step {} from σ = {} to σ = {} has no real σ_down in f32 \
                     (diffusers' update is NaN there); give another `timestep_spacing` or more \
                     steps",
                        i + 1,
                        s.sigmas[i],
                        s.sigmas[i + 1]
                    ),
                ));
            }
        }
        Ok(s)
    }

    /// (σ_up, σ_down) of call `i`, in f32 and diffusers' order: σ_up² = σ_to²(σ_from² −
    /// σ_to²)/σ_from², σ_down² = σ_to² − σ_up².
    fn split(&self, i: usize) -> (f32, f32) {
        let (from, to) = (self.sigmas[i], self.sigmas[i + 1]);
        let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        (up, (to * to - up * up).sqrt())
    }
}

impl Sampler for EulerAncestralScheduler {
    sigma_sampler_methods!();

    fn step(
        &mut self,
        output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let sigma = self.sigmas[i];
        let x0 = denoised(self.prediction, sigma, output, sample, None);
        let (sigma_up, sigma_down) = self.split(i);
        let dt = sigma_down - sigma;
        let z = noise.noise(i, sample.shape())?;
        let data = sample
            .data()
            .iter()
            .zip(x0.data())
            .zip(z.data())
            .map(|((&x, &x0), &z)| {
                let prev = x + (x - x0) / sigma * dt;
                prev + z * sigma_up
            })
            .collect();
        self.x0 = Some(x0);
        Ok(Tensor::from_parts(sample.shape(), data))
    }
}
