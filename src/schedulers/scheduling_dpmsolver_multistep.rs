//! DPM-Solver++ (`DPMSolverMultistepScheduler`, algorithm dpmsolver++, midpoint solver, order
//! ≤ 2): data-prediction multistep updates in log-SNR λ = ln(α/σ), the last step first order
//! (final σ = 0), optionally on Karras sigmas.

use super::config::{Prediction, SchedulerConfig, Spacing};
use super::scheduling_euler_discrete::sigma_to_t;
use super::{NoiseSource, Sampler};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub struct DpmSolverMultistepScheduler {
    /// σ per call, then 0.
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
    prediction: Prediction,
    order: usize,
    /// Data predictions of the previous calls (newest last).
    outputs: Vec<Tensor>,
    lower_order_nums: usize,
}

/// (α_t, σ_t) of the VP process at Karras noise level σ.
fn alpha_sigma(sigma: f32) -> (f64, f64) {
    let alpha = 1.0 / ((sigma as f64) * (sigma as f64) + 1.0).sqrt();
    (alpha, sigma as f64 * alpha)
}

fn lambda(sigma: f32) -> f64 {
    let (a, s) = alpha_sigma(sigma);
    a.ln() - s.ln()
}

impl DpmSolverMultistepScheduler {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Result<Self> {
        cfg.validate()?;
        let n = cfg.num_train_timesteps;
        let spacing = cfg.timestep_spacing.unwrap_or(Spacing::Linspace);
        // Linspace and leading spacing place steps + 1 points on the training timesteps.
        let max_steps = match spacing {
            Spacing::Trailing => n,
            Spacing::Linspace | Spacing::Leading => n - 1,
        };
        super::config::check_steps(steps, n, max_steps)?;
        if cfg.dpm_solver_order == 0 || cfg.dpm_solver_order > 2 {
            return Err(Error::Unsupported {
                field: "solver_order".into(),
                value: cfg.dpm_solver_order.to_string(),
            });
        }
        let mut ts: Vec<f64> = match spacing {
            Spacing::Linspace => super::config::numpy_linspace(0.0, (n - 1) as f64, steps + 1)
                .into_iter()
                .rev()
                .take(steps)
                .map(|v| v.round_ties_even())
                .collect(),
            Spacing::Leading => {
                let ratio = n / (steps + 1);
                (1..=steps)
                    .rev()
                    .map(|i| (i * ratio + cfg.steps_offset) as f64)
                    .collect()
            }
            Spacing::Trailing => cfg
                .discrete_timesteps(steps, Spacing::Trailing)?
                .into_iter()
                .map(|t| t as f64)
                .collect(),
        };
        let train: Vec<f32> = cfg
            .alphas_cumprod()
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect();
        let mut sigmas: Vec<f64> = if cfg.use_karras_sigmas {
            let (smin, smax) = (train[0] as f64, train[n - 1] as f64);
            let rho = 7.0;
            let (lo, hi) = (smin.powf(1.0 / rho), smax.powf(1.0 / rho));
            let s: Vec<f64> = super::config::numpy_linspace(0.0, 1.0, steps)
                .into_iter()
                .map(|r| (hi + r * (lo - hi)).powf(rho))
                .collect();
            let log_sigmas: Vec<f64> = train.iter().map(|s| s.ln() as f64).collect();
            ts = s
                .iter()
                .map(|&x| {
                    let t = sigma_to_t(x, &log_sigmas);
                    if cfg.beta_schedule_is_cosine {
                        t
                    } else {
                        t.round_ties_even()
                    }
                })
                .collect();
            s
        } else {
            ts.iter()
                .map(|&t| {
                    let lo = (t.floor() as usize).min(n - 1);
                    let hi = (lo + 1).min(n - 1);
                    let w = t - lo as f64;
                    train[lo] as f64 * (1.0 - w) + train[hi] as f64 * w
                })
                .collect()
        };
        if let Some(t) = ts.iter().find(|&&t| !(t >= 0.0 && t < n as f64)) {
            return Err(Error::Msg(format!(
                "{steps} steps with {spacing:?} spacing and `steps_offset` = {} reach timestep \
                 {t}, outside 0..{n} (`num_train_timesteps`)",
                cfg.steps_offset
            )));
        }
        sigmas.push(0.0);
        let sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        super::check_sigmas("DPM-Solver++", &sigmas, true)?;
        Ok(DpmSolverMultistepScheduler {
            sigmas,
            // diffusers stores these timesteps as int64.
            timesteps: ts.into_iter().map(|t| t as i64 as f32).collect(),
            prediction: cfg.prediction_type,
            order: cfg.dpm_solver_order,
            outputs: Vec::new(),
            lower_order_nums: 0,
        })
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Sampler for DpmSolverMultistepScheduler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn step(
        &mut self,
        output: &Tensor,
        i: usize,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let steps = self.timesteps.len();
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        // Data prediction x̂₀ from the model output at σ_i.
        let x0: Vec<f32> = sample
            .data()
            .iter()
            .zip(output.data())
            .map(|(&x, &o)| {
                let (x, o) = (x as f64, o as f64);
                (match self.prediction {
                    Prediction::Epsilon => (x - sigma_s0 * o) / alpha_s0,
                    Prediction::Sample => o,
                    Prediction::VPrediction => alpha_s0 * x - sigma_s0 * o,
                }) as f32
            })
            .collect();
        let x0 = Tensor::from_parts(sample.shape().to_vec(), x0);
        if self.outputs.len() == self.order {
            self.outputs.remove(0);
        }
        self.outputs.push(x0);
        // diffusers takes the last step at first order whenever the final σ is 0 (the only
        // final_sigmas_type implemented), whatever `lower_order_final` says.
        let last = i == steps - 1;
        let first_order = self.order == 1 || self.lower_order_nums < 1 || last;
        let sigma_t = self.sigmas[i + 1];
        let (alpha_t, sigma_t64) = alpha_sigma(sigma_t);
        let lambda_t = lambda(sigma_t);
        let lambda_s0 = lambda(self.sigmas[i]);
        let h = lambda_t - lambda_s0;
        let m0 = self.outputs.last().expect("pushed above");
        let ratio = (sigma_t64 / sigma_s0) as f32;
        let coeff = (alpha_t * ((-h).exp() - 1.0)) as f32;
        let data: Vec<f32> = if first_order {
            sample
                .data()
                .iter()
                .zip(m0.data())
                .map(|(&x, &d0)| ratio * x - coeff * d0)
                .collect()
        } else {
            let m1 = &self.outputs[self.outputs.len() - 2];
            let h0 = lambda_s0 - lambda(self.sigmas[i - 1]);
            let r0 = (h0 / h) as f32;
            sample
                .data()
                .iter()
                .zip(m0.data().iter().zip(m1.data()))
                .map(|(&x, (&d0, &d1))| {
                    let d1 = (d0 - d1) / r0;
                    ratio * x - coeff * d0 - 0.5 * coeff * d1
                })
                .collect()
        };
        if self.lower_order_nums < self.order {
            self.lower_order_nums += 1;
        }
        Ok(Tensor::from_parts(sample.shape().to_vec(), data))
    }
}
