//! DPM-Solver++ (`DPMSolverMultistepScheduler`, algorithm dpmsolver++ or sde-dpmsolver++,
//! midpoint solver, order ≤ 2): data-prediction multistep updates in log-SNR λ = ln(α/σ), the
//! last step first order (final σ = 0), optionally on Karras sigmas. The SDE variant adds
//! noise every step: the deterministic part decays by e^{−h} more and the noise has variance
//! σ_t²(1 − e^{−2h}).

use super::config::{Prediction, SchedulerConfig, SolverType, Spacing};
use super::scheduling_euler_discrete::sigma_to_t;
use super::{NoiseSource, Sampler};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// diffusers' `DPMSolverMultistepScheduler`: DPM-Solver++ of order 1 or 2, deterministic
/// (`dpmsolver++`) or stochastic (`sde-dpmsolver++`).
pub struct DpmSolverMultistepScheduler {
    /// σ per call, then 0.
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
    prediction: Prediction,
    order: usize,
    /// sde-dpmsolver++: noise at every step.
    sde: bool,
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

/// The schedule of diffusers' multistep solvers (DPM-Solver, UniPC): integer timesteps by the
/// config's spacing (linspace by default) placing `steps` + 1 points and dropping the last,
/// σ interpolated linearly from the training σ's (with zero terminal SNR, the last ᾱ is 2⁻²⁴),
/// or on Karras' schedule between the first and last training σ with the timesteps read back
/// from σ (DPM-Solver keeps them fractional on the cosine schedule, `round_karras` = false;
/// UniPC always rounds). Returns (timesteps, σ's with a final 0), checked.
pub(crate) fn multistep_schedule(
    sampler: &str,
    cfg: &SchedulerConfig,
    steps: usize,
    round_karras: bool,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let n = cfg.num_train_timesteps;
    let spacing = cfg.timestep_spacing.unwrap_or(Spacing::Linspace);
    // Linspace and leading spacing place steps + 1 points on the training timesteps.
    let max_steps = match spacing {
        Spacing::Trailing => n,
        Spacing::Linspace | Spacing::Leading => n - 1,
    };
    super::config::check_steps(steps, n, max_steps)?;
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
    let train = cfg.train_sigmas();
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
                if round_karras {
                    t.round_ties_even()
                } else {
                    t
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
        return Err(Error::sampler(
            "timesteps",
            format!(
                "{steps} steps with {spacing:?} spacing and `steps_offset` = {} reach timestep \
             {t}, outside 0..{n} (`num_train_timesteps`)",
                cfg.steps_offset
            ),
        ));
    }
    sigmas.push(0.0);
    let sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
    super::check_sigmas(sampler, &sigmas, true)?;
    // diffusers stores these timesteps as int64.
    Ok((ts.into_iter().map(|t| t as i64 as f32).collect(), sigmas))
}

impl DpmSolverMultistepScheduler {
    /// The ODE solver (dpmsolver++), or with `sde` the SDE one (sde-dpmsolver++, whose noise
    /// comes from the loop's noise source).
    pub fn new(cfg: &SchedulerConfig, steps: usize, sde: bool) -> Result<Self> {
        cfg.validate()?;
        if cfg.dpm_solver_order == 0 || cfg.dpm_solver_order > 2 {
            return Err(Error::Unsupported {
                field: "solver_order".into(),
                value: cfg.dpm_solver_order.to_string(),
            });
        }
        // diffusers reads bh1, bh2 and logrho (UniPC's) as midpoint.
        if cfg.solver_type == Some(SolverType::Heun) {
            return Err(Error::Unsupported {
                field: "solver_type".into(),
                value: "heun (DPM-Solver++ implements midpoint)".into(),
            });
        }
        // The cosine schedule keeps fractional Karras timesteps in diffusers' DPM-Solver.
        let (timesteps, sigmas) =
            multistep_schedule("DPM-Solver++", cfg, steps, !cfg.beta_schedule_is_cosine)?;
        Ok(DpmSolverMultistepScheduler {
            sigmas,
            timesteps,
            prediction: cfg.prediction_type,
            order: cfg.dpm_solver_order,
            sde,
            outputs: Vec::new(),
            lower_order_nums: 0,
        })
    }

    /// The σ of each step, then the final one (diffusers' `scheduler.sigmas`).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Sampler for DpmSolverMultistepScheduler {
    /// The data prediction the last step stored (this solver always predicts x̂₀).
    fn pred_original_sample(&self) -> Option<&Tensor> {
        self.outputs.last()
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }

    fn step(
        &mut self,
        output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let steps = self.timesteps.len();
        let z = if self.sde {
            Some(noise.noise(i, sample.shape())?)
        } else {
            None
        };
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
        let x0 = Tensor::from_parts(sample.shape(), x0);
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
        let data: Vec<f32> = if let Some(z) = z {
            self.sde_update(
                sample,
                &z,
                first_order,
                h,
                (alpha_t, sigma_t64, sigma_s0),
                i,
            )
        } else if first_order {
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
        Ok(Tensor::from_parts(sample.shape(), data))
    }
}

impl DpmSolverMultistepScheduler {
    /// sde-dpmsolver++'s midpoint update from σ_i to σ_{i+1} (diffusers' first- or second-order
    /// formula): x_t = (σ_t/σ_s·e^{−h})·x + α_t(1 − e^{−2h})·(D0 + ½D1) + σ_t√(1 − e^{−2h})·z.
    fn sde_update(
        &self,
        sample: &Tensor,
        z: &Tensor,
        first_order: bool,
        h: f64,
        (alpha_t, sigma_t, sigma_s0): (f64, f64, f64),
        i: usize,
    ) -> Vec<f32> {
        let decay = (-h).exp();
        let c_x = (sigma_t / sigma_s0 * decay) as f32;
        let c_d = (alpha_t * (1.0 - (-2.0 * h).exp())) as f32;
        let c_z = (sigma_t * (1.0 - (-2.0 * h).exp()).sqrt()) as f32;
        let m0 = &self.outputs[self.outputs.len() - 1];
        let d1 = (!first_order).then(|| {
            let m1 = &self.outputs[self.outputs.len() - 2];
            let h0 = lambda(self.sigmas[i]) - lambda(self.sigmas[i - 1]);
            (m1, (h0 / h) as f32)
        });
        (0..sample.numel())
            .map(|k| {
                let (x, d0, z) = (sample.data()[k], m0.data()[k], z.data()[k]);
                let mut v = c_x * x + c_d * d0;
                if let Some((m1, r0)) = &d1 {
                    v += 0.5 * c_d * ((d0 - m1.data()[k]) / r0);
                }
                v + c_z * z
            })
            .collect()
    }
}
