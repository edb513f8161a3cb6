//! Heun's second-order method (`HeunDiscreteScheduler`): every σ after the first is visited
//! twice, an Euler step then a correction averaging the two slopes, so N steps take 2N − 1 model
//! calls. The last call is a plain Euler step to σ = 0.

use super::config::{Prediction, SchedulerConfig};
use super::scheduling_euler_discrete::{denoised, sigma_sampler_methods, DiscreteSigmas};
use super::{NoiseSource, Sampler};
use crate::error::Result;
use crate::tensor::Tensor;

/// diffusers' `HeunDiscreteScheduler`: Heun's second-order method in σ.
pub struct HeunScheduler {
    /// [σ0, σ1, σ1, …, σ_{N−1}, σ_{N−1}, 0].
    sigmas: Vec<f32>,
    /// [t0, t1, t1, …, t_{N−1}, t_{N−1}].
    timesteps: Vec<f32>,
    init_noise_sigma: f32,
    prediction: Prediction,
    clip: Option<f32>,
    /// After a first-order call: its slope, step and starting sample.
    pending: Option<(Tensor, f32, Tensor)>,
    /// The last call's prediction of the denoised sample (`pred_original_sample`).
    x0: Option<Tensor>,
}

impl HeunScheduler {
    /// The sampler for `cfg` over `steps` steps (2 × steps − 1 model calls).
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Result<Self> {
        cfg.refuse_zero_snr("Heun")?;
        let s = DiscreteSigmas::new("Heun", cfg, steps, cfg.use_karras_sigmas)?;
        let twice = |v: &[f32], keep_last: bool| {
            let mut out = vec![v[0]];
            let end = if keep_last { v.len() - 1 } else { v.len() };
            for &x in &v[1..end] {
                out.extend([x, x]);
            }
            if keep_last {
                out.push(v[v.len() - 1]);
            }
            out
        };
        Ok(HeunScheduler {
            sigmas: twice(&s.sigmas, true),
            timesteps: twice(&s.timesteps, false),
            init_noise_sigma: s.init_noise_sigma,
            prediction: cfg.prediction_type,
            clip: cfg.clip(false),
            pending: None,
            x0: None,
        })
    }
}

impl Sampler for HeunScheduler {
    sigma_sampler_methods!();

    /// Step k evaluates σ_k and then σ_{k+1} (calls 2k and 2k + 1); the last step is first
    /// order (one call).
    fn step_of_call(&self, call: usize) -> usize {
        call / 2
    }

    fn step(
        &mut self,
        output: &Tensor,
        i: usize,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let slope = |x: &Tensor, x0: &Tensor, sigma: f32| -> Vec<f32> {
            x.data()
                .iter()
                .zip(x0.data())
                .map(|(&x, &x0)| (x - x0) / sigma)
                .collect()
        };
        let (start, d, dt) = match self.pending.take() {
            None => {
                let (sigma, next) = (self.sigmas[i], self.sigmas[i + 1]);
                let x0 = denoised(self.prediction, sigma, output, sample, self.clip);
                let d = slope(sample, &x0, sigma);
                self.x0 = Some(x0);
                let dt = next - sigma;
                let d_t = Tensor::from_parts(sample.shape(), d.clone());
                self.pending = Some((d_t, dt, sample.clone()));
                (sample.clone(), d, dt)
            }
            Some((prev_d, dt, start)) => {
                let next = self.sigmas[i];
                let x0 = denoised(self.prediction, next, output, sample, self.clip);
                let d2 = slope(sample, &x0, next);
                self.x0 = Some(x0);
                let d = prev_d
                    .data()
                    .iter()
                    .zip(&d2)
                    .map(|(a, b)| (a + b) / 2.0)
                    .collect();
                (start, d, dt)
            }
        };
        let data = start
            .data()
            .iter()
            .zip(&d)
            .map(|(&x, &d)| x + d * dt)
            .collect();
        Ok(Tensor::from_parts(sample.shape(), data))
    }
}
