//! Linear multistep (`LMSDiscreteScheduler`, order 4): x_{i+1} = x_i + Σ_j c_{ij}·d_{i−j} over
//! the slopes d = (x − x̂₀)/σ of the last calls, with c_{ij} the integral from σ_i to σ_{i+1} of
//! the Lagrange basis polynomial of σ_{i−j} on the nodes σ_i, …, σ_{i−order+1}. diffusers
//! integrates numerically (scipy's quad); the integrand is a polynomial of degree < 4, so here it
//! is expanded and integrated exactly.

use super::config::{Prediction, SchedulerConfig};
use super::scheduling_euler_discrete::{denoised, sigma_sampler_methods, DiscreteSigmas};
use super::{NoiseSource, Sampler};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// diffusers' default `order` of `step`.
pub const LMS_ORDER: usize = 4;

/// diffusers' `LMSDiscreteScheduler`: linear multistep in σ, order 4.
pub struct LmsScheduler {
    /// σ per call, then a final 0.
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
    init_noise_sigma: f32,
    prediction: Prediction,
    /// Per call, the coefficients of its slope and the previous ones (newest first).
    coeffs: Vec<Vec<f32>>,
    /// Slopes of the last calls (newest last).
    derivatives: Vec<Tensor>,
    /// The last step's prediction of the denoised sample (`pred_original_sample`).
    x0: Option<Tensor>,
}

/// ∫_{σ_i}^{σ_{i+1}} Π_{k≠j} (τ − σ_{i−k}) / (σ_{i−j} − σ_{i−k}) dτ over k < `order`.
///
/// In the shifted variable u = τ − σ_i the polynomial's coefficients stay small (its roots are
/// the distances between the nodes), and ∫_0^h u^m du = h^{m+1}/(m+1) with h = σ_{i+1} − σ_i.
pub fn lms_coefficient(sigmas: &[f32], order: usize, i: usize, j: usize) -> f64 {
    let node = |k: usize| sigmas[i - k] as f64;
    let origin = node(0);
    // Coefficients of the numerator in u, lowest degree first.
    let mut poly = vec![1.0f64];
    let mut denom = 1.0f64;
    for k in (0..order).filter(|&k| k != j) {
        let root = node(k) - origin;
        let mut next = vec![0.0; poly.len() + 1];
        for (m, &c) in poly.iter().enumerate() {
            next[m + 1] += c;
            next[m] -= root * c;
        }
        poly = next;
        denom *= node(j) - node(k);
    }
    let h = sigmas[i + 1] as f64 - origin;
    let mut power = h;
    let mut integral = 0.0;
    for (m, &c) in poly.iter().enumerate() {
        integral += c * power / (m + 1) as f64;
        power *= h;
    }
    integral / denom
}

impl LmsScheduler {
    /// The sampler for `cfg` over `steps` model calls.
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Result<Self> {
        cfg.refuse_zero_snr("LMS")?;
        let s = DiscreteSigmas::new("LMS", cfg, steps, cfg.use_karras_sigmas)?;
        let coeffs: Vec<Vec<f32>> = (0..steps)
            .map(|i| {
                let order = (i + 1).min(LMS_ORDER);
                (0..order)
                    .map(|j| lms_coefficient(&s.sigmas, order, i, j) as f32)
                    .collect()
            })
            .collect();
        // Nodes that coincide (repeated σ) make the Lagrange basis divide by 0.
        if let Some(i) = coeffs.iter().position(|c| c.iter().any(|v| !v.is_finite())) {
            return Err(Error::sampler(
                "LMS",
                format!(
                    "the coefficients of step {} are not finite: its σ's repeat (give fewer \
                 steps or another `timestep_spacing`)",
                    i + 1
                ),
            ));
        }
        Ok(LmsScheduler {
            sigmas: s.sigmas,
            timesteps: s.timesteps,
            init_noise_sigma: s.init_noise_sigma,
            prediction: cfg.prediction_type,
            coeffs,
            derivatives: Vec::new(),
            x0: None,
        })
    }

    /// Per call, the coefficients of its slope and the previous ones (newest first).
    pub fn coefficients(&self) -> &[Vec<f32>] {
        &self.coeffs
    }
}

impl Sampler for LmsScheduler {
    sigma_sampler_methods!();

    fn step(
        &mut self,
        output: &Tensor,
        i: usize,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let sigma = self.sigmas[i];
        let x0 = denoised(self.prediction, sigma, output, sample, None);
        let d = sample
            .data()
            .iter()
            .zip(x0.data())
            .map(|(&x, &x0)| (x - x0) / sigma)
            .collect();
        self.x0 = Some(x0);
        self.derivatives.push(Tensor::from_parts(sample.shape(), d));
        if self.derivatives.len() > LMS_ORDER {
            self.derivatives.remove(0);
        }
        let coeffs = &self.coeffs[i];
        let data = (0..sample.numel())
            .map(|k| {
                // Python's sum(): 0 + c_0·d_i + c_1·d_{i−1} + …, each term in f32.
                let mut acc = 0.0f32;
                for (c, d) in coeffs.iter().zip(self.derivatives.iter().rev()) {
                    acc += c * d.data()[k];
                }
                sample.data()[k] + acc
            })
            .collect();
        Ok(Tensor::from_parts(sample.shape(), data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Lagrange basis on σ_i … σ_{i−order+1} at τ.
    fn basis(sigmas: &[f32], order: usize, i: usize, j: usize, tau: f64) -> f64 {
        (0..order)
            .filter(|&k| k != j)
            .map(|k| {
                let (sk, sj) = (sigmas[i - k] as f64, sigmas[i - j] as f64);
                (tau - sk) / (sj - sk)
            })
            .product()
    }

    #[test]
    fn coefficients_integrate_the_lagrange_basis() {
        let sigmas = [14.6f32, 9.7, 6.1, 3.8, 2.0, 0.9, 0.0];
        for i in 0..sigmas.len() - 1 {
            let order = (i + 1).min(LMS_ORDER);
            let (a, b) = (sigmas[i] as f64, sigmas[i + 1] as f64);
            let mut total = 0.0;
            for j in 0..order {
                let c = lms_coefficient(&sigmas, order, i, j);
                // Simpson's rule is exact for cubics: 2 panels are enough, 8 check it.
                let n = 8;
                let h = (b - a) / n as f64;
                let simpson: f64 = (0..=n)
                    .map(|m| {
                        let w = if m == 0 || m == n {
                            1.0
                        } else if m % 2 == 1 {
                            4.0
                        } else {
                            2.0
                        };
                        w * basis(&sigmas, order, i, j, a + m as f64 * h)
                    })
                    .sum::<f64>()
                    * h
                    / 3.0;
                assert!(
                    (c - simpson).abs() < 1e-9 * (1.0 + c.abs()),
                    "{i} {j}: {c} vs {simpson}"
                );
                total += c;
            }
            // The basis sums to 1, so the coefficients to the step σ_{i+1} − σ_i.
            assert!((total - (b - a)).abs() < 1e-9, "{i}: {total} vs {}", b - a);
        }
    }
}
