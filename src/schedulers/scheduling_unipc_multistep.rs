//! UniPC (`UniPCMultistepScheduler`, Zhao et al. 2023): a multistep predictor (UniP) in log-SNR
//! λ = ln(α/σ) and, from the second call on, a corrector (UniC) that redoes the previous step
//! with this call's model output before predicting the next. Orders 1 and 2, B(h) = e^h − 1
//! (bh2; diffusers' bh1 ends in NaN at the final σ = 0, so it is refused), on data predictions
//! x̂₀ (`predict_x0`; diffusers' noise-prediction variant ends in NaN
//! at the final σ = 0, so it is refused). The coefficients are computed in f32, as diffusers
//! does: the φ-function recursion cancels, and its rounding is part of the result.

use super::config::{Prediction, SchedulerConfig, SolverType};
use super::scheduling_dpmsolver_multistep::multistep_schedule;
use super::{NoiseSource, Sampler};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// diffusers' `UniPCMultistepScheduler`: the UniP predictor and UniC corrector (bh2).
pub struct UniPcScheduler {
    /// σ per call, then 0.
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
    prediction: Prediction,
    order: usize,
    lower_order_final: bool,
    disable_corrector: Vec<usize>,
    /// Converted model outputs of the last calls (newest last).
    outputs: Vec<Tensor>,
    lower_order_nums: usize,
    /// The order of the last prediction (the corrector redoes it at that order).
    this_order: usize,
    /// The sample the last prediction started from.
    last_sample: Option<Tensor>,
}

/// (α_t, σ_t) of the VP process at noise level σ, in f32.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

fn lambda(sigma: f32) -> f32 {
    let (a, s) = alpha_sigma(sigma);
    a.ln() - s.ln()
}

/// `torch.linalg.solve` of a 2×2 system the way LAPACK's sgesv does it: LU with partial
/// pivoting (the multiplier from the pivot's reciprocal), then the two triangular solves.
fn solve2(mut a: [[f32; 2]; 2], mut b: [f32; 2]) -> [f32; 2] {
    if a[1][0].abs() > a[0][0].abs() {
        a.swap(0, 1);
        b.swap(0, 1);
    }
    let l = a[1][0] * (1.0 / a[0][0]);
    let u11 = a[1][1] - l * a[0][1];
    let x1 = (b[1] - l * b[0]) / u11;
    let x0 = (b[0] - x1 * a[0][1]) / a[0][0];
    [x0, x1]
}

/// The step's φ-coefficients: (h·φ₁(h) = e^h − 1, B(h) = e^h − 1 (bh2), b_1 … b_order) for
/// `hh` = −h (data predictions), in diffusers' f32 recursion.
fn phi_coefficients(hh: f32, order: usize) -> (f32, f32, Vec<f32>) {
    let h_phi_1 = hh.exp_m1();
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let mut factorial = 1u32;
    let b_h = hh.exp_m1();
    let mut b = Vec::with_capacity(order);
    for i in 1..=order as u32 {
        b.push(h_phi_k * factorial as f32 / b_h);
        factorial *= i + 1;
        h_phi_k = h_phi_k / hh - 1.0 / factorial as f32;
    }
    (h_phi_1, b_h, b)
}

impl UniPcScheduler {
    /// The sampler for `cfg` over `steps` model calls.
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Result<Self> {
        cfg.validate()?;
        if !(1..=2).contains(&cfg.dpm_solver_order) {
            return Err(Error::Unsupported {
                field: "solver_order".into(),
                value: format!("{} (UniPC implements 1 and 2)", cfg.dpm_solver_order),
            });
        }
        // diffusers reads midpoint, heun and logrho as bh2 here. Its bh1 (B(h) = h) ends in
        // NaN: the last, first-order step to σ = 0 multiplies B(h) = −∞ by its zero
        // second-order term.
        if cfg.solver_type == Some(SolverType::Bh1) {
            return Err(Error::Unsupported {
                field: "solver_type".into(),
                value: "bh1 (diffusers' bh1 returns NaN at the final σ = 0; implemented: bh2)"
                    .into(),
            });
        }
        let (timesteps, sigmas) = multistep_schedule("UniPC", cfg, steps, true)?;
        // With the final σ = 0, h = ∞ at the last step: a second-order update there divides
        // the previous output's difference by r = 0 (diffusers returns NaN).
        if !cfg.predict_x0 {
            // ε at σ = 0 leaves the last update 0·∞.
            return Err(Error::Unsupported {
                field: "predict_x0".into(),
                value: "false (diffusers' noise-prediction UniPC returns NaN at the final σ = 0; \
                        implemented: true)"
                    .into(),
            });
        }
        if !cfg.lower_order_final && cfg.dpm_solver_order > 1 && steps > 1 {
            return Err(Error::Unsupported {
                field: "lower_order_final".into(),
                value: "false (the last step to σ = 0 at second order is infinite in diffusers; \
                        implemented: true)"
                    .into(),
            });
        }
        Ok(UniPcScheduler {
            sigmas,
            timesteps,
            prediction: cfg.prediction_type,
            order: cfg.dpm_solver_order,
            lower_order_final: cfg.lower_order_final,
            disable_corrector: cfg.disable_corrector.clone(),
            outputs: Vec::new(),
            lower_order_nums: 0,
            this_order: 0,
            last_sample: None,
        })
    }

    /// x̂₀ from the model output at σ_i.
    fn convert(&self, output: &Tensor, i: usize, sample: &Tensor) -> Tensor {
        let (alpha, sigma) = alpha_sigma(self.sigmas[i]);
        let data = sample
            .data()
            .iter()
            .zip(output.data())
            .map(|(&x, &o)| match self.prediction {
                Prediction::Epsilon => (x - sigma * o) / alpha,
                Prediction::Sample => o,
                Prediction::VPrediction => alpha * x - sigma * o,
            })
            .collect();
        Tensor::from_parts(sample.shape(), data)
    }

    /// One update from σ_`from` to σ_`to` of sample `x` at `order`, with m0 = the newest stored
    /// output (at σ_from) and, at order 2, the one before it (at σ_`from − 1`). `correction`
    /// is this call's output for the corrector (which redoes the previous step with it); None
    /// for the predictor.
    fn update(
        &self,
        from: usize,
        to: usize,
        x: &Tensor,
        order: usize,
        correction: Option<&Tensor>,
    ) -> Tensor {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[to]);
        let sigma_s0 = alpha_sigma(self.sigmas[from]).1;
        let lambda_s0 = lambda(self.sigmas[from]);
        let h = lambda(self.sigmas[to]) - lambda_s0;
        let m0 = &self.outputs[self.outputs.len() - 1];
        // D1 = (m1 − m0)/r with r = (λ_{s1} − λ_{s0})/h, at order 2.
        let d1 = (order == 2).then(|| {
            let m1 = &self.outputs[self.outputs.len() - 2];
            let rk = (lambda(self.sigmas[from - 1]) - lambda_s0) / h;
            (m1, rk)
        });
        let (h_phi_1, b_h, b) = phi_coefficients(-h, order);
        // The weights of D1 (the predictor's) or of [D1, this output's difference] (the
        // corrector's).
        let rhos: Vec<f32> = match (correction, &d1) {
            (None, _) => vec![0.5],
            (Some(_), None) => vec![0.5],
            (Some(_), Some((_, rk))) => solve2([[1.0, 1.0], [*rk, 1.0]], [b[0], b[1]]).to_vec(),
        };
        let (c_x, c_m0, c_res) = (sigma_t / sigma_s0, alpha_t * h_phi_1, alpha_t * b_h);
        let data = (0..x.numel())
            .map(|k| {
                let base = c_x * x.data()[k] - c_m0 * m0.data()[k];
                let d1k = d1
                    .as_ref()
                    .map(|(m1, rk)| (m1.data()[k] - m0.data()[k]) / rk);
                match correction {
                    None => match d1k {
                        Some(d) => base - c_res * (rhos[0] * d),
                        None => base - c_res * 0.0,
                    },
                    Some(model_t) => {
                        let d1_t = model_t.data()[k] - m0.data()[k];
                        let corr = d1k.map_or(0.0, |d| rhos[0] * d);
                        let last = rhos[rhos.len() - 1];
                        base - c_res * (corr + last * d1_t)
                    }
                }
            })
            .collect();
        Tensor::from_parts(x.shape(), data)
    }
}

impl Sampler for UniPcScheduler {
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
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let converted = self.convert(output, i, sample);
        let mut sample = sample.clone();
        if i > 0 && !self.disable_corrector.contains(&(i - 1)) {
            if let Some(last) = &self.last_sample {
                // UniC: the previous step again, from its start, with this call's output.
                sample = self.update(i - 1, i, last, self.this_order, Some(&converted));
            }
        }
        if self.outputs.len() == self.order {
            self.outputs.remove(0);
        }
        self.outputs.push(converted);
        let steps = self.timesteps.len();
        let order = if self.lower_order_final {
            self.order.min(steps - i)
        } else {
            self.order
        };
        // Warm-up: the order grows with the outputs stored.
        self.this_order = order.min(self.lower_order_nums + 1);
        let prev = self.update(i, i + 1, &sample, self.this_order, None);
        self.last_sample = Some(sample);
        if self.lower_order_nums < self.order {
            self.lower_order_nums += 1;
        }
        Ok(prev)
    }
}
