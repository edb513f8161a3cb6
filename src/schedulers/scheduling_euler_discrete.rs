//! Euler (`EulerDiscreteScheduler`), optionally on Karras sigmas or with zero terminal SNR;
//! s_churn = 0 (deterministic).

use super::config::{numpy_linspace, Prediction, SchedulerConfig, Spacing};
use super::{NoiseSource, Sampler};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// diffusers' `EulerDiscreteScheduler`: Euler steps in σ (Karras et al.'s sampler).
pub struct EulerScheduler {
    /// σ per call, then a final 0.
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
    init_noise_sigma: f32,
    prediction: Prediction,
    /// The last step's prediction of the denoised sample (`pred_original_sample`).
    x0: Option<Tensor>,
}

/// The σ schedule of diffusers' discrete Euler-family samplers (Euler, Euler ancestral, Heun,
/// LMS): timesteps by the config's spacing (linspace by default, kept fractional), σ
/// interpolated linearly in t from the training σ's (or, with `karras`, on Karras' schedule), a
/// final σ = 0, and the initial noise scale. With zero terminal SNR the last training ᾱ is
/// 2⁻²⁴ (σ ≈ 4096), as diffusers sets it.
pub(crate) struct DiscreteSigmas {
    pub timesteps: Vec<f32>,
    pub sigmas: Vec<f32>,
    pub init_noise_sigma: f32,
}

impl DiscreteSigmas {
    pub fn new(sampler: &str, cfg: &SchedulerConfig, steps: usize, karras: bool) -> Result<Self> {
        cfg.validate()?;
        let n = cfg.num_train_timesteps;
        super::config::check_steps(steps, n, n)?;
        let spacing = cfg.timestep_spacing.unwrap_or(Spacing::Linspace);
        let ts: Vec<f64> = match spacing {
            // Euler keeps fractional linspace timesteps (f32), unlike DDIM.
            Spacing::Linspace => numpy_linspace(0.0, (n - 1) as f64, steps)
                .into_iter()
                .rev()
                .map(|v| v as f32 as f64)
                .collect(),
            s => cfg
                .discrete_timesteps(steps, s)?
                .into_iter()
                .map(|t| t as f64)
                .collect(),
        };
        // σ_t = √((1 − ᾱ)/ᾱ), computed in f32 as torch does, interpolated linearly in t.
        let train_sigmas: Vec<f64> = cfg.train_sigmas().iter().map(|&s| s as f64).collect();
        let interp = |t: f64| {
            let lo = (t.floor() as usize).min(n - 1);
            let hi = (lo + 1).min(n - 1);
            let w = t - lo as f64;
            train_sigmas[lo] * (1.0 - w) + train_sigmas[hi] * w
        };
        let mut sigmas: Vec<f64> = ts.iter().map(|&t| interp(t)).collect();
        let mut timesteps = ts;
        if karras {
            let (smin, smax) = (sigmas[steps - 1], sigmas[0]);
            let rho = 7.0;
            let (min_inv, max_inv) = (smin.powf(1.0 / rho), smax.powf(1.0 / rho));
            sigmas = numpy_linspace(0.0, 1.0, steps)
                .into_iter()
                .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
                .collect();
            let log_sigmas: Vec<f64> = train_sigmas
                .iter()
                .map(|s| (*s as f32).ln() as f64)
                .collect();
            timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect();
        }
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(0.0);
        let max = sigmas.iter().copied().fold(0.0f32, f32::max);
        let init_noise_sigma = match spacing {
            Spacing::Linspace | Spacing::Trailing => max,
            Spacing::Leading => (max * max + 1.0).sqrt(),
        };
        super::check_sigmas(sampler, &sigmas, false)?;
        if !(init_noise_sigma.is_finite() && init_noise_sigma > 0.0) {
            return Err(Error::sampler(
                sampler,
                format!(
                    "the initial noise sigma is {init_noise_sigma}; it must be positive \
                 and finite"
                ),
            ));
        }
        Ok(DiscreteSigmas {
            timesteps: timesteps.into_iter().map(|t| t as f32).collect(),
            sigmas,
            init_noise_sigma,
        })
    }
}

impl EulerScheduler {
    /// The sampler for `cfg` over `steps` model calls.
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Result<Self> {
        let s = DiscreteSigmas::new("Euler", cfg, steps, cfg.use_karras_sigmas)?;
        Ok(EulerScheduler {
            sigmas: s.sigmas,
            timesteps: s.timesteps,
            init_noise_sigma: s.init_noise_sigma,
            prediction: cfg.prediction_type,
            x0: None,
        })
    }

    /// The σ of each step, then the final 0 (diffusers' `scheduler.sigmas`).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

/// diffusers' `_sigma_to_t`: the (fractional) training timestep of σ, interpolating log σ.
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    let low = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l >= 0.0)
        .unwrap_or(0)
        .min(n - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// x̂₀ of the σ-parameterised (Karras) samplers at noise level σ, clamped when `clip` is set.
pub(crate) fn denoised(
    prediction: Prediction,
    sigma: f32,
    output: &Tensor,
    sample: &Tensor,
    clip: Option<f32>,
) -> Tensor {
    let data = sample
        .data()
        .iter()
        .zip(output.data())
        .map(|(&x, &o)| {
            let x0 = match prediction {
                Prediction::Epsilon => x - sigma * o,
                Prediction::Sample => o,
                Prediction::VPrediction => {
                    o * (-sigma / (sigma * sigma + 1.0).sqrt()) + x / (sigma * sigma + 1.0)
                }
            };
            clip.map_or(x0, |r| x0.clamp(-r, r))
        })
        .collect();
    Tensor::from_parts(sample.shape(), data)
}

/// The `Sampler` methods every σ-parameterised sampler (Euler, Euler ancestral, LMS, Heun)
/// shares, from its fields `timesteps`, `sigmas`, `init_noise_sigma` and `x0` (the last step's
/// x̂₀): the schedule, the initial σ, the input scaling `x/√(σ²+1)` and the prediction.
macro_rules! sigma_sampler_methods {
    () => {
        fn timesteps(&self) -> &[f32] {
            &self.timesteps
        }

        fn sigmas(&self) -> Option<&[f32]> {
            Some(&self.sigmas)
        }

        fn init_noise_sigma(&self) -> f32 {
            self.init_noise_sigma
        }

        fn scale_model_input(
            &self,
            sample: &$crate::tensor::Tensor,
            i: usize,
        ) -> $crate::tensor::Tensor {
            $crate::schedulers::scheduling_euler_discrete::scale_by_sigma(sample, self.sigmas[i])
        }

        fn pred_original_sample(&self) -> Option<&$crate::tensor::Tensor> {
            self.x0.as_ref()
        }
    };
}
pub(crate) use sigma_sampler_methods;

/// `x / √(σ² + 1)`.
pub(crate) fn scale_by_sigma(sample: &Tensor, sigma: f32) -> Tensor {
    let k = (sigma * sigma + 1.0).sqrt();
    let data = sample.data().iter().map(|&x| x / k).collect();
    Tensor::from_parts(sample.shape(), data)
}

impl Sampler for EulerScheduler {
    sigma_sampler_methods!();

    fn step(
        &mut self,
        output: &Tensor,
        i: usize,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let (sigma, next) = (self.sigmas[i], self.sigmas[i + 1]);
        let x0 = denoised(self.prediction, sigma, output, sample, None);
        let dt = next - sigma;
        let data = sample
            .data()
            .iter()
            .zip(x0.data())
            .map(|(&x, &x0)| x + (x - x0) / sigma * dt)
            .collect();
        self.x0 = Some(x0);
        Ok(Tensor::from_parts(sample.shape(), data))
    }
}
