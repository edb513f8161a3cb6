//! diffusers `scheduler_config.json`: the noise schedule and the options of the samplers here.
//! Keys of other scheduler classes are ignored (as diffusers does when a config is loaded into
//! another class); an option this crate does not implement is an error naming it.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerKind {
    Ddpm,
    Ddim,
    Euler,
    Heun,
    DpmSolverMultistep,
}

impl SamplerKind {
    /// From a diffusers `_class_name`.
    pub fn from_class_name(name: &str) -> Result<Self> {
        match name {
            "DDPMScheduler" => Ok(SamplerKind::Ddpm),
            "DDIMScheduler" => Ok(SamplerKind::Ddim),
            "EulerDiscreteScheduler" => Ok(SamplerKind::Euler),
            "HeunDiscreteScheduler" => Ok(SamplerKind::Heun),
            "DPMSolverMultistepScheduler" => Ok(SamplerKind::DpmSolverMultistep),
            other => Err(Error::Unsupported {
                field: "_class_name".into(),
                value: format!(
                    "\"{other}\" (implemented: DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, \
                     HeunDiscreteScheduler, DPMSolverMultistepScheduler)"
                ),
            }),
        }
    }

    /// From the CLI's short names.
    pub fn from_short_name(name: &str) -> Result<Self> {
        match name {
            "ddpm" => Ok(SamplerKind::Ddpm),
            "ddim" => Ok(SamplerKind::Ddim),
            "euler" => Ok(SamplerKind::Euler),
            "heun" => Ok(SamplerKind::Heun),
            "dpmpp-2m" => Ok(SamplerKind::DpmSolverMultistep),
            other => Err(Error::Msg(format!(
                "unknown sampler `{other}` (implemented: ddpm, ddim, euler, heun, dpmpp-2m)"
            ))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    VPrediction,
    Sample,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spacing {
    Leading,
    Trailing,
    Linspace,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// The sampler the config's `_class_name` names, if any.
    pub class: Option<SamplerKind>,
    pub num_train_timesteps: usize,
    /// β per training timestep, as torch computes them (f32).
    pub betas: Vec<f32>,
    pub prediction_type: Prediction,
    /// None: the sampler's own default (linspace for Euler, leading otherwise).
    pub timestep_spacing: Option<Spacing>,
    pub steps_offset: usize,
    /// None: the sampler's default (on for DDPM and DDIM).
    pub clip_sample: Option<bool>,
    pub clip_sample_range: f32,
    pub set_alpha_to_one: bool,
    pub use_karras_sigmas: bool,
    /// DPM-Solver's `solver_order` (1 or 2 implemented).
    pub dpm_solver_order: usize,
    /// `beta_schedule` is squaredcos_cap_v2 (DPM-Solver keeps fractional Karras timesteps then).
    pub beta_schedule_is_cosine: bool,
}

impl SchedulerConfig {
    /// A scheduler_config.json, its folder, or a pipeline folder's `scheduler/`.
    pub fn from_path(path: &Path) -> Result<Self> {
        let file = if path.is_dir() {
            [
                path.join("scheduler_config.json"),
                path.join("scheduler/scheduler_config.json"),
            ]
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| Error::Msg(format!("{}: no scheduler_config.json", path.display())))?
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        Self::from_json_str(&text, &file.display().to_string())
    }

    pub fn from_json_str(text: &str, origin: &str) -> Result<Self> {
        // Python's json module writes non-finite floats as bare `Infinity`/`NaN` (DPM-Solver's
        // `lambda_min_clipped: -Infinity`); read them as null, the keys' "unset".
        let text = python_non_finite_to_null(text);
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::Json {
            origin: origin.into(),
            msg: e.to_string(),
        })?;
        let m = v.as_object().ok_or_else(|| Error::Config {
            origin: origin.into(),
            msg: "top level is not a JSON object".into(),
        })?;
        let bad = |field: &str, v: &Value| Error::Unsupported {
            field: field.into(),
            value: v.to_string(),
        };
        let get = |k: &str| m.get(k).filter(|v| !v.is_null());
        let num = |k: &str, d: f64| -> Result<f64> {
            match get(k) {
                None => Ok(d),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| bad(k, v)),
            }
        };
        let flag = |k: &str| -> Result<Option<bool>> {
            match get(k) {
                None => Ok(None),
                Some(Value::Bool(b)) => Ok(Some(*b)),
                Some(v) => Err(bad(k, v)),
            }
        };
        let string = |k: &str| -> Result<Option<&str>> {
            match get(k) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(v) => Err(bad(k, v)),
            }
        };
        for k in [
            "thresholding",
            "rescale_betas_zero_snr",
            "use_exponential_sigmas",
            "use_beta_sigmas",
        ] {
            if flag(k)? == Some(true) {
                return Err(bad(k, &Value::Bool(true)));
            }
        }
        for (k, ok) in [
            ("variance_type", "fixed_small"),
            ("interpolation_type", "linear"),
            ("final_sigmas_type", "zero"),
            ("timestep_type", "discrete"),
        ] {
            if let Some(v) = string(k)? {
                if v != ok {
                    return Err(bad(k, &get(k).cloned().unwrap_or_default()));
                }
            }
        }
        for (k, ok) in [
            ("algorithm_type", "dpmsolver++"),
            ("solver_type", "midpoint"),
        ] {
            if let Some(v) = string(k)? {
                if v != ok {
                    return Err(bad(k, &get(k).cloned().unwrap_or_default()));
                }
            }
        }
        for k in [
            "use_lu_lambdas",
            "euler_at_final",
            "use_flow_sigmas",
            "use_dynamic_shifting",
        ] {
            if flag(k)? == Some(true) {
                return Err(bad(k, &Value::Bool(true)));
            }
        }
        // −inf (written by Python as `-Infinity`, read as null) is the only value implemented.
        for k in [
            "sigma_min",
            "sigma_max",
            "trained_betas",
            "lambda_min_clipped",
        ] {
            if let Some(v) = get(k) {
                return Err(bad(k, v));
            }
        }
        let class = string("_class_name")?
            .map(SamplerKind::from_class_name)
            .transpose()
            .ok()
            .flatten();
        let n = num("num_train_timesteps", 1000.0)?;
        if n < 2.0 || n.fract() != 0.0 || n > 1e6 {
            return Err(bad(
                "num_train_timesteps",
                get("num_train_timesteps").unwrap(),
            ));
        }
        let n = n as usize;
        let (start, end) = (num("beta_start", 0.0001)?, num("beta_end", 0.02)?);
        let schedule = string("beta_schedule")?.unwrap_or("linear");
        let betas = match schedule {
            "linear" => torch_linspace(start as f32, end as f32, n),
            "scaled_linear" => torch_linspace(start.sqrt() as f32, end.sqrt() as f32, n)
                .into_iter()
                .map(|b| b * b)
                .collect(),
            "squaredcos_cap_v2" => betas_for_alpha_bar(n),
            other => return Err(bad("beta_schedule", &Value::String(other.into()))),
        };
        let prediction_type = match string("prediction_type")?.unwrap_or("epsilon") {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::VPrediction,
            "sample" => Prediction::Sample,
            other => return Err(bad("prediction_type", &Value::String(other.into()))),
        };
        let timestep_spacing = match string("timestep_spacing")? {
            None => None,
            Some("leading") => Some(Spacing::Leading),
            Some("trailing") => Some(Spacing::Trailing),
            Some("linspace") => Some(Spacing::Linspace),
            Some(other) => return Err(bad("timestep_spacing", &Value::String(other.into()))),
        };
        let steps_offset = num("steps_offset", 0.0)?;
        if steps_offset < 0.0 || steps_offset.fract() != 0.0 {
            return Err(bad("steps_offset", get("steps_offset").unwrap()));
        }
        Ok(SchedulerConfig {
            class,
            num_train_timesteps: n,
            betas,
            prediction_type,
            timestep_spacing,
            steps_offset: steps_offset as usize,
            clip_sample: flag("clip_sample")?,
            clip_sample_range: num("clip_sample_range", 1.0)? as f32,
            set_alpha_to_one: flag("set_alpha_to_one")?.unwrap_or(true),
            use_karras_sigmas: flag("use_karras_sigmas")?.unwrap_or(false),
            dpm_solver_order: num("solver_order", 2.0)? as usize,
            beta_schedule_is_cosine: schedule == "squaredcos_cap_v2",
        })
    }

    /// ᾱ_t, accumulated in f64 and stored in f32 as torch's CPU `cumprod` does.
    pub fn alphas_cumprod(&self) -> Vec<f32> {
        let mut acc = 1f64;
        self.betas
            .iter()
            .map(|&b| {
                acc *= (1.0 - b) as f64;
                acc as f32
            })
            .collect()
    }

    /// The x̂₀ clamp range when `clip_sample` is on; `default` is the sampler's own default.
    pub fn clip(&self, default: bool) -> Option<f32> {
        self.clip_sample
            .unwrap_or(default)
            .then_some(self.clip_sample_range)
    }

    /// Training timesteps for `steps` inference steps with `spacing` (diffusers' DDPM/DDIM rule).
    pub fn discrete_timesteps(&self, steps: usize, spacing: Spacing) -> Result<Vec<usize>> {
        let n = self.num_train_timesteps;
        if steps == 0 || steps > n {
            return Err(Error::Msg(format!(
                "steps must be in 1..={n} (the model's training timesteps), got {steps}"
            )));
        }
        let ts: Vec<i64> = match spacing {
            Spacing::Linspace => numpy_linspace(0.0, (n - 1) as f64, steps)
                .into_iter()
                .rev()
                .map(|v| v.round_ties_even() as i64)
                .collect(),
            Spacing::Leading => {
                let ratio = n / steps;
                (0..steps)
                    .rev()
                    .map(|i| (i * ratio + self.steps_offset) as i64)
                    .collect()
            }
            Spacing::Trailing => {
                let ratio = n as f64 / steps as f64;
                numpy_arange_desc(n as f64, 0.0, ratio)
                    .into_iter()
                    .map(|v| v.round_ties_even() as i64 - 1)
                    .collect()
            }
        };
        ts.into_iter()
            .map(|t| {
                usize::try_from(t).ok().filter(|&t| t < n).ok_or_else(|| {
                    Error::Msg(format!("timestep {t} outside 0..{n} (steps_offset?)"))
                })
            })
            .collect()
    }
}

/// Replaces the bare tokens `-Infinity`, `Infinity` and `NaN` outside strings by `null`.
fn python_non_finite_to_null(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            in_string = c != '"' || escaped;
            escaped = c == '\\' && !escaped;
        } else if c == '"' {
            in_string = true;
        } else if let Some(tok) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            out.push_str("null");
            rest = &rest[tok.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// `torch.linspace(start, end, n, dtype=float32)`: f32 arithmetic, filled from both ends.
fn torch_linspace(start: f32, end: f32, n: usize) -> Vec<f32> {
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - i - 1) as f32
            }
        })
        .collect()
}

/// `np.linspace(start, stop, n)` (f64; the last value is `stop` exactly).
pub(crate) fn numpy_linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
    v[n - 1] = stop;
    v
}

/// `np.arange(start, stop, -step)` for start > stop.
fn numpy_arange_desc(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((start - stop) / step).ceil() as usize;
    (0..len).map(|i| start - i as f64 * step).collect()
}

/// diffusers' `betas_for_alpha_bar` with the cosine ᾱ of Nichol & Dhariwal (max β 0.999).
fn betas_for_alpha_bar(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_non_finite_floats_read_as_null() {
        let text = r#"{"a": -Infinity, "b": "NaN \"Infinity\"", "c": [NaN, Infinity], "d": 1}"#;
        let v: Value = serde_json::from_str(&python_non_finite_to_null(text)).unwrap();
        assert!(v["a"].is_null());
        assert_eq!(v["b"], "NaN \"Infinity\"");
        assert!(v["c"][0].is_null() && v["c"][1].is_null());
        assert_eq!(v["d"], 1);
    }

    #[test]
    fn torch_linspace_is_exact_at_both_ends() {
        let v = torch_linspace(0.0001, 0.02, 1000);
        assert_eq!((v[0], v[999]), (0.0001, 0.02));
    }
}
