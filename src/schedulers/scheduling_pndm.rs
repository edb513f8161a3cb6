//! PNDM (`PNDMScheduler`): pseudo linear multistep (PLMS) updates on ε, optionally after a
//! Runge–Kutta warm-up (PRK, `skip_prk_steps` = false). Every update is DDIM's deterministic
//! step with an ε combined from the previous model outputs. The timestep list repeats entries:
//! PLMS alone evaluates the second timestep twice (its first step is a two-stage Heun-like one),
//! PRK evaluates each of its 3 steps at the start, twice at the midpoint and at the end.

use super::config::{Prediction, SchedulerConfig, Spacing};
use super::{NoiseSource, Sampler};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// diffusers' `PNDMScheduler`: pseudo numerical methods (PLMS, after an optional PRK
/// warm-up).
pub struct PndmScheduler {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    /// The model calls' timesteps (PRK's first, then PLMS').
    timesteps: Vec<f32>,
    /// Per call: the timestep the update starts from and the one it goes to (negative: past
    /// the first training timestep, where ᾱ is `final_alpha_cumprod`).
    updates: Vec<(usize, i64)>,
    /// How many of the calls are PRK's.
    prk_calls: usize,
    prediction: Prediction,
    /// ε of the steps so far (PLMS' history: at most 4 kept).
    ets: Vec<Tensor>,
    /// PRK: the weighted sum of this step's stages so far.
    cur_model_output: Option<Tensor>,
    /// The sample the current (PRK or first PLMS) step starts from.
    cur_sample: Option<Tensor>,
}

impl PndmScheduler {
    /// The sampler for `cfg` over `steps` steps (its `timesteps` list the model calls, repeats
    /// included).
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Result<Self> {
        cfg.validate()?;
        cfg.refuse_zero_snr("PNDM")?;
        if cfg.prediction_type == Prediction::Sample {
            // diffusers' PNDM raises for it.
            return Err(Error::Unsupported {
                field: "prediction_type".into(),
                value: "sample (PNDM implements epsilon and v_prediction)".into(),
            });
        }
        let n = cfg.num_train_timesteps;
        let spacing = cfg.timestep_spacing.unwrap_or(Spacing::Leading);
        // diffusers' `_timesteps`, ascending; the spacing rules are DDIM's.
        let mut base: Vec<i64> = cfg
            .discrete_timesteps(steps, spacing)?
            .into_iter()
            .map(|t| t as i64)
            .collect();
        base.reverse();
        // The distance to the previous timestep, whatever the spacing (diffusers uses it for
        // linspace and trailing too, where the timesteps are not exactly that far apart).
        let ratio = (n / steps) as i64;
        let (calls, prk_calls): (Vec<i64>, usize) = if cfg.skip_prk_steps {
            // [t_{N-1}, t_{N-2}, t_{N-2}, t_{N-3}, …, t_0].
            let k = base.len();
            let mut v: Vec<i64> = base[..k - 1].to_vec();
            v.extend_from_slice(&base[k.saturating_sub(2)..k - 1]);
            v.push(base[k - 1]);
            v.reverse();
            (v, 0)
        } else {
            if steps < 4 {
                // diffusers' array arithmetic fails below 4 (the warm-up is 3 steps plus one).
                return Err(Error::sampler(
                    "PNDM",
                    format!(
                        "steps = {steps}; the Runge–Kutta warm-up (`skip_prk_steps` = false) \
                     takes at least 4 steps"
                    ),
                ));
            }
            let half = ratio / 2;
            // The last 4 timesteps, each followed by its midpoint …
            let last4 = &base[base.len() - 4..];
            let prk: Vec<i64> = last4.iter().flat_map(|&t| [t, t + half]).collect();
            // … without the last midpoint, each doubled, less the first and last entry:
            // [t3, m2, m2, t2, t2, m1, m1, t1, t1, m0, m0, t0] from the top.
            let doubled: Vec<i64> = prk[..prk.len() - 1].iter().flat_map(|&t| [t, t]).collect();
            let mut prk: Vec<i64> = doubled[1..doubled.len() - 1].to_vec();
            prk.reverse();
            let prk_calls = prk.len();
            let mut v = prk;
            v.extend(base[..base.len() - 3].iter().rev());
            (v, prk_calls)
        };
        let alphas_cumprod = cfg.alphas_cumprod();
        let final_alpha_cumprod = if cfg.set_alpha_to_one.unwrap_or(false) {
            1.0
        } else {
            alphas_cumprod[0]
        };
        let updates: Vec<(usize, i64)> = (0..calls.len())
            .map(|c| {
                let t = calls[c];
                if c < prk_calls {
                    // Even stages step to the midpoint or the end, odd ones to their own
                    // timestep, all from the step's start.
                    let diff = if c % 2 == 1 { 0 } else { ratio / 2 };
                    (calls[c / 4 * 4], t - diff)
                } else if c == 1 && prk_calls == 0 {
                    // PLMS' second call redoes the first step with the averaged ε.
                    (t + ratio, t)
                } else {
                    (t, t - ratio)
                }
            })
            .map(|(t, prev)| {
                usize::try_from(t)
                    .ok()
                    .filter(|&t| t < n)
                    .map(|t| (t, prev))
                    .ok_or_else(|| {
                        Error::sampler(
                            "PNDM",
                            format!(
                                "{steps} steps with {spacing:?} spacing step from timestep \
                             {t}, outside 0..{n} (`num_train_timesteps`)"
                            ),
                        )
                    })
            })
            .collect::<Result<_>>()?;
        let s = PndmScheduler {
            alphas_cumprod,
            final_alpha_cumprod,
            timesteps: calls.iter().map(|&t| t as f32).collect(),
            updates,
            prk_calls,
            prediction: cfg.prediction_type,
            ets: Vec::new(),
            cur_model_output: None,
            cur_sample: None,
        };
        if let Some(t) = calls.iter().find(|&&t| !(0..n as i64).contains(&t)) {
            return Err(Error::sampler(
                "PNDM",
                format!(
                    "{steps} steps with {spacing:?} spacing reach timestep {t}, outside \
                 0..{n} (`num_train_timesteps`)"
                ),
            ));
        }
        // Every update's coefficients, before any model call.
        for c in 0..s.updates.len() {
            let (sample_coeff, diff, denom, _) = s.coefficients(c);
            if !(sample_coeff.is_finite() && (diff / denom).is_finite()) {
                return Err(Error::sampler(
                    "PNDM",
                    format!(
                        "the coefficients of call {} (timestep {}) are not finite",
                        c + 1,
                        s.timesteps[c]
                    ),
                ));
            }
        }
        Ok(s)
    }

    /// (√(ᾱ_prev/ᾱ_t), ᾱ_prev − ᾱ_t, the ε denominator, ᾱ_t) of call `c`'s update (diffusers'
    /// `_get_prev_sample`, in f32).
    fn coefficients(&self, c: usize) -> (f32, f32, f32, f32) {
        let (t, prev) = self.updates[c];
        let a = self.alphas_cumprod[t];
        let a_prev = match usize::try_from(prev) {
            Ok(p) => self.alphas_cumprod[p],
            Err(_) => self.final_alpha_cumprod,
        };
        let (b, b_prev) = (1.0 - a, 1.0 - a_prev);
        let sample_coeff = (a_prev / a).sqrt();
        let denom = a * b_prev.sqrt() + (a * b * a_prev).sqrt();
        (sample_coeff, a_prev - a, denom, a)
    }

    /// The sample after call `c`'s update from `sample` with ε (or v) `output`.
    fn prev_sample(&self, c: usize, sample: &Tensor, output: &Tensor) -> Tensor {
        let (sample_coeff, diff, denom, a) = self.coefficients(c);
        let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
        let v = self.prediction == Prediction::VPrediction;
        let data = sample
            .data()
            .iter()
            .zip(output.data())
            .map(|(&x, &o)| {
                // v → ε: √ᾱ·v + √(1 − ᾱ)·x.
                let eps = if v { sa * o + sb * x } else { o };
                sample_coeff * x - diff * eps / denom
            })
            .collect();
        Tensor::from_parts(sample.shape(), data)
    }
}

/// Elementwise combination of tensors with coefficients, summed left to right in f32 (as torch
/// evaluates `23 * a - 16 * b + 5 * c`).
fn combine(terms: &[(f32, &Tensor)]) -> Tensor {
    let first = terms[0].1;
    let data = (0..first.numel())
        .map(|k| {
            let mut acc = terms[0].0 * terms[0].1.data()[k];
            for (c, t) in &terms[1..] {
                acc += c * t.data()[k];
            }
            acc
        })
        .collect();
    Tensor::from_parts(first.shape(), data)
}

fn scale(t: &Tensor, f: impl Fn(f32) -> f32) -> Tensor {
    Tensor::from_parts(t.shape(), t.data().iter().map(|&v| f(v)).collect())
}

impl Sampler for PndmScheduler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// PRK's steps take 4 calls each; PLMS' first step takes 2 (its two stages), the rest one.
    fn step_of_call(&self, call: usize) -> usize {
        if call < self.prk_calls {
            call / 4
        } else {
            let prk_steps = self.prk_calls / 4;
            let plms = call - self.prk_calls;
            // Without the warm-up, PLMS' first step is two-stage; after it, PLMS steps are one
            // call each (the history is already there).
            if self.prk_calls == 0 {
                plms.saturating_sub(1)
            } else {
                prk_steps + plms
            }
        }
    }

    fn step(
        &mut self,
        output: &Tensor,
        i: usize,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        if i < self.prk_calls {
            // Runge–Kutta: stages weighted 1/6, 1/3, 1/3, 1/6; the first three step from the
            // start with their own output, the fourth with the weighted sum.
            let eps = match i % 4 {
                0 => {
                    self.cur_model_output = Some(scale(output, |v| (1.0f32 / 6.0) * v));
                    self.ets.push(output.clone());
                    self.cur_sample = Some(sample.clone());
                    output.clone()
                }
                1 | 2 => {
                    let cur = self.cur_model_output.take().expect("stage 0 ran");
                    self.cur_model_output = Some(combine(&[(1.0, &cur), (1.0 / 3.0, output)]));
                    output.clone()
                }
                _ => {
                    let cur = self.cur_model_output.take().expect("stage 0 ran");
                    combine(&[(1.0, &cur), (1.0 / 6.0, output)])
                }
            };
            let start = self.cur_sample.clone().expect("stage 0 ran");
            return Ok(self.prev_sample(i, &start, &eps));
        }
        let counter = i;
        // (With PRK first, PLMS' calls start at 12.)
        if counter != 1 {
            if self.ets.len() > 3 {
                self.ets.remove(0);
            }
            self.ets.push(output.clone());
        }
        let e = &self.ets;
        let k = e.len();
        let (eps, start) = if k == 1 && counter == 0 {
            self.cur_sample = Some(sample.clone());
            (output.clone(), sample.clone())
        } else if k == 1 && counter == 1 {
            // The first step again, from its start, with the mean of its two ε.
            let avg = scale(&combine(&[(1.0, output), (1.0, &e[0])]), |v| v / 2.0);
            (avg, self.cur_sample.take().expect("call 0 ran"))
        } else if k == 2 {
            let c = combine(&[(3.0, &e[1]), (-1.0, &e[0])]);
            (scale(&c, |v| v / 2.0), sample.clone())
        } else if k == 3 {
            let c = combine(&[(23.0, &e[2]), (-16.0, &e[1]), (5.0, &e[0])]);
            (scale(&c, |v| v / 12.0), sample.clone())
        } else {
            let c = combine(&[(55.0, &e[3]), (-59.0, &e[2]), (37.0, &e[1]), (-9.0, &e[0])]);
            (scale(&c, |v| (1.0f32 / 24.0) * v), sample.clone())
        };
        Ok(self.prev_sample(i, &start, &eps))
    }
}
