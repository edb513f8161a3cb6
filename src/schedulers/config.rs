//! diffusers `scheduler_config.json`: the noise schedule and the options of the samplers here.
//! Keys of other scheduler classes are ignored (as diffusers does when a config is loaded into
//! another class); an option this crate does not implement is an error naming it.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// A sampler this crate implements: one diffusers scheduler class (and for DPM-Solver, its
/// algorithm).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerKind {
    /// `DDPMScheduler`: ancestral sampling with the posterior variance (stochastic).
    Ddpm,
    /// `DDIMScheduler`: deterministic at eta 0, DDPM-like noise up to eta 1.
    Ddim,
    /// `EulerDiscreteScheduler`.
    Euler,
    /// `HeunDiscreteScheduler`: second order, two model calls per step but the last.
    Heun,
    /// `DPMSolverMultistepScheduler` with `algorithm_type` = dpmsolver++ (DPM-Solver++ 2M).
    DpmSolverMultistep,
    /// `DPMSolverMultistepScheduler` with `algorithm_type` = sde-dpmsolver++.
    DpmSolverMultistepSde,
    /// `PNDMScheduler`: PLMS (`skip_prk_steps`, the SD 1.x default), or the PRK warm-up first.
    Pndm,
    /// `EulerAncestralDiscreteScheduler` (stochastic).
    EulerAncestral,
    /// `LMSDiscreteScheduler` (linear multistep, order 4).
    Lms,
    /// `UniPCMultistepScheduler` (bh2 predictor-corrector).
    UniPc,
}

impl SamplerKind {
    /// Every sampler implemented, in the order the messages list them.
    pub const ALL: [SamplerKind; 10] = [
        SamplerKind::Ddpm,
        SamplerKind::Ddim,
        SamplerKind::Pndm,
        SamplerKind::Euler,
        SamplerKind::EulerAncestral,
        SamplerKind::Heun,
        SamplerKind::Lms,
        SamplerKind::DpmSolverMultistep,
        SamplerKind::DpmSolverMultistepSde,
        SamplerKind::UniPc,
    ];

    /// The diffusers class (the SDE variant is DPM-Solver's class with another
    /// `algorithm_type`).
    pub fn class_name(self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "DDPMScheduler",
            SamplerKind::Ddim => "DDIMScheduler",
            SamplerKind::Pndm => "PNDMScheduler",
            SamplerKind::Euler => "EulerDiscreteScheduler",
            SamplerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SamplerKind::Heun => "HeunDiscreteScheduler",
            SamplerKind::Lms => "LMSDiscreteScheduler",
            SamplerKind::DpmSolverMultistep | SamplerKind::DpmSolverMultistepSde => {
                "DPMSolverMultistepScheduler"
            }
            SamplerKind::UniPc => "UniPCMultistepScheduler",
        }
    }

    /// The CLI's name (`--sampler`).
    pub fn short_name(self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "ddpm",
            SamplerKind::Ddim => "ddim",
            SamplerKind::Pndm => "pndm",
            SamplerKind::Euler => "euler",
            SamplerKind::EulerAncestral => "euler-a",
            SamplerKind::Heun => "heun",
            SamplerKind::Lms => "lms",
            SamplerKind::DpmSolverMultistep => "dpmpp-2m",
            SamplerKind::DpmSolverMultistepSde => "dpmpp-2m-sde",
            SamplerKind::UniPc => "unipc",
        }
    }

    /// Draws noise at every step whatever its options (DDIM only with eta > 0).
    pub fn always_stochastic(self) -> bool {
        matches!(
            self,
            SamplerKind::Ddpm | SamplerKind::EulerAncestral | SamplerKind::DpmSolverMultistepSde
        )
    }

    /// The implemented classes, for messages: "DDPMScheduler, DDIMScheduler, …".
    pub fn class_names() -> String {
        let mut names: Vec<&str> = Self::ALL.iter().map(|k| k.class_name()).collect();
        names.dedup();
        names.join(", ")
    }

    /// The CLI's names, for messages: "ddpm, ddim, …".
    pub fn short_names() -> String {
        Self::ALL.map(Self::short_name).join(", ")
    }

    /// From a diffusers `_class_name` (`DPMSolverMultistepScheduler` is the ODE solver here; the
    /// config reader picks the SDE one from its `algorithm_type`).
    pub fn from_class_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.class_name() == name)
            .ok_or_else(|| Error::Unsupported {
                field: "_class_name".into(),
                value: format!("\"{name}\" (implemented: {})", Self::class_names()),
            })
    }

    /// From the CLI's short names.
    pub fn from_short_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.short_name() == name)
            .ok_or_else(|| Error::Unsupported {
                field: "sampler".into(),
                value: format!("`{name}` (implemented: {})", Self::short_names()),
            })
    }
}

/// What the model predicts (`prediction_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// The noise ε (`epsilon`).
    Epsilon,
    /// The velocity v = √ᾱ·ε − √(1−ᾱ)·x₀ (`v_prediction`).
    VPrediction,
    /// The clean sample x₀ (`sample`).
    Sample,
}

/// How inference timesteps are picked from the training ones (`timestep_spacing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spacing {
    /// Multiples of T / steps from 0, plus `steps_offset` (`leading`).
    Leading,
    /// Counting down from T − 1 in steps of T / steps (`trailing`).
    Trailing,
    /// Evenly spaced from 0 to T − 1, rounded (`linspace`).
    Linspace,
}

/// `solver_type` as written: DPM-Solver implements midpoint (diffusers reads bh1, bh2 and logrho
/// as midpoint there), UniPC bh1 and bh2 (diffusers reads midpoint, heun and logrho as bh2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SolverType {
    /// `midpoint` (DPM-Solver's).
    Midpoint,
    /// `heun`.
    Heun,
    /// `logrho`.
    Logrho,
    /// `bh1` (UniPC's B(h) = h).
    Bh1,
    /// `bh2` (UniPC's B(h) = eʰ − 1, diffusers' default).
    Bh2,
}

/// A diffusers `scheduler_config.json`, validated: the noise schedule and every option the
/// samplers here read.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// The sampler the config's `_class_name` names, if any (DPM-Solver's SDE variant when its
    /// `algorithm_type` is sde-dpmsolver++).
    pub class: Option<SamplerKind>,
    /// `_class_name` as written, implemented or not (for messages).
    pub class_name: Option<String>,
    /// `num_train_timesteps`: T, the training timesteps (1000 for SD).
    pub num_train_timesteps: usize,
    /// β per training timestep, as torch computes them (f32), after the zero-terminal-SNR
    /// rescale when `rescale_betas_zero_snr` is set (the last β is then 1).
    pub betas: Vec<f32>,
    /// `rescale_betas_zero_snr`: the betas are rescaled so that the last ᾱ is 0.
    pub rescale_betas_zero_snr: bool,
    /// `prediction_type`: what the model predicts.
    pub prediction_type: Prediction,
    /// None: the sampler's own default (linspace for Euler, leading otherwise).
    pub timestep_spacing: Option<Spacing>,
    /// `steps_offset`: added to every leading-spaced timestep (1 for SD).
    pub steps_offset: usize,
    /// None: the sampler's default (on for DDPM and DDIM).
    pub clip_sample: Option<bool>,
    /// `clip_sample_range`: the bound of x₀'s clipping when `clip_sample` is on.
    pub clip_sample_range: f32,
    /// None: the sampler's default (true for DDIM, false for PNDM).
    pub set_alpha_to_one: Option<bool>,
    /// `use_karras_sigmas`: Karras et al.'s σ spacing (ρ = 7) for the σ-parameterised
    /// samplers.
    pub use_karras_sigmas: bool,
    /// `solver_order` of DPM-Solver and UniPC (1 or 2 implemented).
    pub dpm_solver_order: usize,
    /// None: the sampler's default (midpoint for DPM-Solver, bh2 for UniPC).
    pub solver_type: Option<SolverType>,
    /// PNDM's `skip_prk_steps`: PLMS steps only (true), or a Runge–Kutta warm-up first
    /// (false, diffusers' default).
    pub skip_prk_steps: bool,
    /// UniPC's `predict_x0`: the multistep updates on data (true) or noise (false) predictions.
    pub predict_x0: bool,
    /// UniPC's `lower_order_final`: the last steps at lower order.
    pub lower_order_final: bool,
    /// UniPC's `disable_corrector`: the steps whose model output corrects no previous step.
    pub disable_corrector: Vec<usize>,
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
            .ok_or_else(|| {
                Error::not_found(
                    path.display().to_string(),
                    format!("{}: no scheduler_config.json", path.display()),
                )
            })?
        } else {
            path.to_path_buf()
        };
        // A scheduler config is a few hundred bytes; a huge file is not one (and is not read).
        let len = std::fs::metadata(&file)
            .map_err(|e| Error::io(&file, e))?
            .len();
        if len > MAX_CONFIG_BYTES {
            return Err(Error::Config {
                origin: file.display().to_string(),
                msg: format!(
                    "{len} bytes: a scheduler_config.json is at most {MAX_CONFIG_BYTES} bytes"
                ),
            });
        }
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        Self::from_json_str(&text, &file.display().to_string())
    }

    /// Parses and validates a config's JSON text (`origin` names it in errors); Python's bare
    /// `Infinity`/`NaN` are read as diffusers writes them.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self> {
        // Python's json module writes non-finite floats as bare `Infinity`/`NaN` (DPM-Solver's
        // `lambda_min_clipped: -Infinity`); they are read as marked strings, so a NaN is never
        // taken for `null` (unset) and silently defaulted.
        let text = python_non_finite_to_marker(text);
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::Json {
            origin: origin.into(),
            msg: e.to_string(),
        })?;
        let m = v.as_object().ok_or_else(|| Error::Config {
            origin: origin.into(),
            msg: "top level is not a JSON object".into(),
        })?;
        let p = Fields { m, origin };
        for k in [
            "thresholding",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "use_lu_lambdas",
            "euler_at_final",
            "use_flow_sigmas",
            "use_dynamic_shifting",
        ] {
            if p.flag(k)? == Some(true) {
                return Err(p.unsupported(k, &Value::Bool(true)));
            }
        }
        for (k, ok) in [
            ("variance_type", "fixed_small"),
            ("interpolation_type", "linear"),
            ("final_sigmas_type", "zero"),
            ("timestep_type", "discrete"),
        ] {
            if let Some(v) = p.string(k)? {
                if v != ok {
                    return Err(p.unsupported(k, &Value::String(v.into())));
                }
            }
        }
        // −inf (written by Python as `-Infinity`) is the only `lambda_min_clipped` implemented,
        // and none of the others.
        match m.get("lambda_min_clipped") {
            None | Some(Value::Null) => {}
            Some(v) if non_finite(v) == Some("-Infinity") => {}
            Some(v) => return Err(p.unsupported("lambda_min_clipped", v)),
        }
        // `solver_p` would be a scheduler object (never JSON), `shift_terminal` applies to flow
        // sigmas only.
        for k in [
            "sigma_min",
            "sigma_max",
            "trained_betas",
            "solver_p",
            "shift_terminal",
        ] {
            match m.get(k) {
                None | Some(Value::Null) => {}
                Some(v) => return Err(p.unsupported(k, v)),
            }
        }
        // dpmsolver and sde-dpmsolver (diffusers deprecates both) are not implemented.
        let sde = p.choice(
            "algorithm_type",
            "dpmsolver++",
            &["dpmsolver++", "sde-dpmsolver++"],
        )? == "sde-dpmsolver++";
        let class_name = p.string("_class_name")?.map(str::to_string);
        let class = class_name
            .as_deref()
            .and_then(|c| SamplerKind::from_class_name(c).ok())
            .map(|k| match k {
                SamplerKind::DpmSolverMultistep if sde => SamplerKind::DpmSolverMultistepSde,
                k => k,
            });
        let solver_type = if m.contains_key("solver_type") {
            Some(
                match p.choice(
                    "solver_type",
                    "midpoint",
                    &["midpoint", "heun", "logrho", "bh1", "bh2"],
                )? {
                    "midpoint" => SolverType::Midpoint,
                    "heun" => SolverType::Heun,
                    "logrho" => SolverType::Logrho,
                    "bh1" => SolverType::Bh1,
                    _ => SolverType::Bh2,
                },
            )
        } else {
            None
        };
        let disable_corrector = match m.get("disable_corrector") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(steps)) => steps
                .iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|s| usize::try_from(s).ok())
                        .ok_or_else(|| {
                            p.invalid(
                                "disable_corrector",
                                shown(v),
                                "must be a list of step indices (integers from 0)",
                            )
                        })
                })
                .collect::<Result<_>>()?,
            Some(v) => {
                return Err(p.invalid(
                    "disable_corrector",
                    shown(v),
                    "must be a list of step indices",
                ))
            }
        };
        let n = p.integer("num_train_timesteps", 1000, 2, MAX_TRAIN_TIMESTEPS)?;
        let schedule = p
            .choice(
                "beta_schedule",
                "linear",
                &["linear", "scaled_linear", "squaredcos_cap_v2"],
            )?
            .to_string();
        let (start, end) = (p.number("beta_start", 0.0001)?, p.number("beta_end", 0.02)?);
        let betas = match schedule.as_str() {
            "linear" | "scaled_linear" => {
                for (k, x) in [("beta_start", start), ("beta_end", end)] {
                    if !(x > 0.0 && x < 1.0) {
                        return Err(p.invalid(k, fnum(x), "a beta must be in (0, 1)"));
                    }
                }
                if start > end {
                    return Err(p.config(format!(
                        "`beta_start` = {} is above `beta_end` = {}: the betas of a {schedule} \
                         schedule rise from beta_start to beta_end",
                        fnum(start),
                        fnum(end)
                    )));
                }
                if schedule == "linear" {
                    torch_linspace(start as f32, end as f32, n)
                } else {
                    torch_linspace(start.sqrt() as f32, end.sqrt() as f32, n)
                        .into_iter()
                        .map(|b| b * b)
                        .collect()
                }
            }
            _ => betas_for_alpha_bar(n),
        };
        let rescale_betas_zero_snr = p.flag("rescale_betas_zero_snr")?.unwrap_or(false);
        let betas = if rescale_betas_zero_snr {
            rescale_zero_terminal_snr(&betas)
        } else {
            betas
        };
        let prediction_type = match p.choice(
            "prediction_type",
            "epsilon",
            &["epsilon", "v_prediction", "sample"],
        )? {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::VPrediction,
            _ => Prediction::Sample,
        };
        let timestep_spacing = if m.contains_key("timestep_spacing") {
            Some(
                match p.choice(
                    "timestep_spacing",
                    "leading",
                    &["leading", "trailing", "linspace"],
                )? {
                    "leading" => Spacing::Leading,
                    "trailing" => Spacing::Trailing,
                    _ => Spacing::Linspace,
                },
            )
        } else {
            None
        };
        let steps_offset = p.integer("steps_offset", 0, 0, n - 1)?;
        let clip_sample_range = p.number("clip_sample_range", 1.0)?;
        if !(clip_sample_range > 0.0 && (clip_sample_range as f32).is_finite()) {
            return Err(p.invalid(
                "clip_sample_range",
                fnum(clip_sample_range),
                "must be a positive number (x̂₀ is clamped to [−range, range])",
            ));
        }
        let config = SchedulerConfig {
            class,
            class_name,
            num_train_timesteps: n,
            betas,
            rescale_betas_zero_snr,
            prediction_type,
            timestep_spacing,
            steps_offset,
            clip_sample: p.flag("clip_sample")?,
            clip_sample_range: clip_sample_range as f32,
            set_alpha_to_one: p.flag("set_alpha_to_one")?,
            use_karras_sigmas: p.flag("use_karras_sigmas")?.unwrap_or(false),
            dpm_solver_order: p.integer("solver_order", 2, 1, 3)?,
            solver_type,
            skip_prk_steps: p.flag("skip_prk_steps")?.unwrap_or(false),
            predict_x0: p.flag("predict_x0")?.unwrap_or(true),
            lower_order_final: p.flag("lower_order_final")?.unwrap_or(true),
            disable_corrector,
            beta_schedule_is_cosine: schedule == "squaredcos_cap_v2",
        };
        config.check(origin)?;
        Ok(config)
    }

    /// Checks what the samplers rely on, for a config built by hand (`from_json_str` checks its
    /// own): `num_train_timesteps` in 2..=`MAX_TRAIN_TIMESTEPS` with one β each, every β in
    /// (0, 1), every ᾱ in (0, 1) with a finite σ = √((1 − ᾱ)/ᾱ) (the σ-samplers divide by σ and
    /// the DDPM-family ones by √ᾱ and √(1 − ᾱ)), a positive finite clip range, and a
    /// `steps_offset` below `num_train_timesteps`.
    pub fn validate(&self) -> Result<()> {
        self.check("scheduler config")
    }

    fn check(&self, origin: &str) -> Result<()> {
        let err = |msg: String| Error::Config {
            origin: origin.into(),
            msg,
        };
        let n = self.num_train_timesteps;
        if !(2..=MAX_TRAIN_TIMESTEPS).contains(&n) {
            return Err(err(format!(
                "`num_train_timesteps` = {n}: must be an integer from 2 to {MAX_TRAIN_TIMESTEPS}"
            )));
        }
        if self.betas.len() != n {
            return Err(err(format!(
                "{} betas for `num_train_timesteps` = {n}",
                self.betas.len()
            )));
        }
        // Zero terminal SNR: the last β is 1 and the last ᾱ 0 (the samplers that take it treat
        // that timestep apart).
        let terminal = |t: usize| self.rescale_betas_zero_snr && t == n - 1;
        if let Some((t, b)) = self
            .betas
            .iter()
            .enumerate()
            .find(|&(t, &b)| !((b > 0.0 && b < 1.0) || (terminal(t) && b == 1.0)))
        {
            return Err(err(format!(
                "β at timestep {t} is {b}: every beta must be in (0, 1) (from `beta_start`, \
                 `beta_end` and `beta_schedule`)"
            )));
        }
        for (t, a) in self.alphas_cumprod().into_iter().enumerate() {
            if terminal(t) {
                if a != 0.0 {
                    return Err(err(format!(
                        "ᾱ at the last timestep is {a:e}, not 0, although \
                         `rescale_betas_zero_snr` is set"
                    )));
                }
                continue;
            }
            if a >= 1.0 {
                return Err(err(format!(
                    "ᾱ at timestep {t} rounds to 1 in f32 (β = {:e}): σ = 0 there, which the \
                     samplers divide by; `beta_start` is too small",
                    self.betas[t]
                )));
            }
            let sigma = ((1.0 - a) / a).sqrt();
            if !(a > 0.0 && (sigma * sigma).is_finite()) {
                return Err(err(format!(
                    "ᾱ at timestep {t} underflows to {a:e}: σ = √((1 − ᾱ)/ᾱ) is not finite \
                     there; lower `beta_end` or `num_train_timesteps`"
                )));
            }
        }
        let r = self.clip_sample_range;
        if !(r.is_finite() && r > 0.0) {
            return Err(err(format!(
                "`clip_sample_range` = {r}: must be a positive finite number (x̂₀ is clamped \
                 to [−range, range])"
            )));
        }
        if self.steps_offset >= n {
            return Err(err(format!(
                "`steps_offset` = {}: must be below `num_train_timesteps` = {n}",
                self.steps_offset
            )));
        }
        if self.dpm_solver_order == 0 {
            return Err(err("`solver_order` = 0: must be at least 1".into()));
        }
        Ok(())
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

    /// ᾱ_t as diffusers' σ-parameterised samplers (Euler, Euler ancestral, DPM-Solver, UniPC)
    /// hold it: with zero terminal SNR the last ᾱ is 2⁻²⁴ instead of 0, so that the last σ is
    /// √(2²⁴ − 1) ≈ 4096, not infinite.
    pub fn alphas_cumprod_nonzero(&self) -> Vec<f32> {
        let mut a = self.alphas_cumprod();
        if self.rescale_betas_zero_snr {
            if let Some(last) = a.last_mut() {
                *last = 2f32.powi(-24);
            }
        }
        a
    }

    /// σ_t = √((1 − ᾱ)/ᾱ) of every training timestep in f32 (from `alphas_cumprod_nonzero`).
    pub fn train_sigmas(&self) -> Vec<f32> {
        self.alphas_cumprod_nonzero()
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect()
    }

    /// An error for the samplers here without zero terminal SNR: DDPM (diffusers has it, not
    /// implemented here) and PNDM, Heun and LMS (diffusers' classes have no such option and
    /// would ignore the key, running on the original betas; here it is refused rather than
    /// silently dropped).
    pub fn refuse_zero_snr(&self, sampler: &str) -> Result<()> {
        if self.rescale_betas_zero_snr {
            return Err(Error::Unsupported {
                field: "rescale_betas_zero_snr".into(),
                value: format!(
                    "true (not implemented for {sampler}; implemented for DDIM, Euler, Euler \
                     ancestral, DPM-Solver++ and UniPC)"
                ),
            });
        }
        Ok(())
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
        check_steps(steps, n, n)?;
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
                    Error::sampler(
                        "timesteps",
                        format!(
                            "{steps} steps with {spacing:?} spacing and `steps_offset` = {} reach \
                         timestep {t}, outside 0..{n} (`num_train_timesteps`)",
                            self.steps_offset
                        ),
                    )
                })
            })
            .collect()
    }
}

/// `steps` inference steps of a schedule with `n` training timesteps, of which at most `max`
/// can be distinct.
pub(crate) fn check_steps(steps: usize, n: usize, max: usize) -> Result<()> {
    if steps == 0 || steps > max {
        return Err(Error::sampler(
            "timesteps",
            format!(
            "steps = {steps}: this schedule takes 1 to {max} steps (`num_train_timesteps` = {n})"
        ),
        ));
    }
    Ok(())
}

/// The largest scheduler config file read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The largest `num_train_timesteps` accepted (diffusers' models use 1000).
pub const MAX_TRAIN_TIMESTEPS: usize = 1_000_000;

/// What a bare Python `NaN`, `Infinity` or `-Infinity` becomes before parsing: a string with
/// this prefix, so a non-finite number is told apart from `null` and from a missing key.
const NON_FINITE: &str = "\u{0}non-finite:";

/// The Python token of a non-finite number (`NaN`, `Infinity`, `-Infinity`), if `v` is one.
fn non_finite(v: &Value) -> Option<&str> {
    v.as_str().and_then(|s| s.strip_prefix(NON_FINITE))
}

/// A number for a message: exponent notation when very large or small.
fn fnum(x: f64) -> String {
    if x != 0.0 && !(1e-6..1e16).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

/// A value as the config wrote it.
fn shown(v: &Value) -> String {
    non_finite(v).map_or_else(|| v.to_string(), str::to_string)
}

/// The keys of a scheduler config, read with the type and range each needs; every error names
/// the key and the value.
struct Fields<'a> {
    m: &'a serde_json::Map<String, Value>,
    origin: &'a str,
}

impl Fields<'_> {
    fn config(&self, msg: String) -> Error {
        Error::Config {
            origin: self.origin.into(),
            msg,
        }
    }

    fn invalid(&self, k: &str, v: impl std::fmt::Display, why: &str) -> Error {
        self.config(format!("`{k}` = {v}: {why}"))
    }

    fn unsupported(&self, k: &str, v: &Value) -> Error {
        Error::Unsupported {
            field: k.into(),
            value: shown(v),
        }
    }

    /// A finite number; `default` when the key is missing. `null` and non-finite values are
    /// errors (nothing the crate reads may be None or NaN in diffusers either).
    fn number(&self, k: &str, default: f64) -> Result<f64> {
        match self.m.get(k) {
            None => Ok(default),
            Some(Value::Number(x)) => x
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| self.invalid(k, x, "not a finite number")),
            Some(v) if non_finite(v).is_some() => {
                Err(self.invalid(k, shown(v), "must be a finite number"))
            }
            Some(v) => Err(self.invalid(k, v, "must be a number")),
        }
    }

    /// An integer in `lo..=hi`; never rounded.
    fn integer(&self, k: &str, default: usize, lo: usize, hi: usize) -> Result<usize> {
        let x = self.number(k, default as f64)?;
        if x.fract() != 0.0 {
            return Err(self.invalid(k, fnum(x), "must be an integer"));
        }
        if x < lo as f64 || x > hi as f64 {
            return Err(self.invalid(k, fnum(x), &format!("must be an integer from {lo} to {hi}")));
        }
        Ok(x as usize)
    }

    /// true or false; None when missing. `null` reads as false, as Python's `None` does where
    /// diffusers tests these flags (`if self.config.clip_sample:`).
    fn flag(&self, k: &str) -> Result<Option<bool>> {
        match self.m.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::Null) => Ok(Some(false)),
            Some(v) => Err(self.invalid(k, shown(v), "must be true or false")),
        }
    }

    /// A string; None when missing or `null`.
    fn string(&self, k: &str) -> Result<Option<&str>> {
        match self.m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) if non_finite(v).is_some() => {
                Err(self.invalid(k, shown(v), "must be a string"))
            }
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.invalid(k, v, "must be a string")),
        }
    }

    /// One of `allowed`; `default` when missing (`null` is an error: diffusers raises on it).
    fn choice(&self, k: &str, default: &'static str, allowed: &[&'static str]) -> Result<&str> {
        let list = allowed.join(", ");
        match self.m.get(k) {
            None => Ok(default),
            Some(Value::Null) => Err(self.invalid(k, "null", &format!("must be one of {list}"))),
            Some(v) => match self.string(k)? {
                Some(s) if allowed.contains(&s) => Ok(s),
                _ => Err(Error::Unsupported {
                    field: k.into(),
                    value: format!("{} (implemented: {list})", shown(v)),
                }),
            },
        }
    }
}

/// Replaces the bare tokens `-Infinity`, `Infinity` and `NaN` outside strings by strings that
/// `non_finite` recognises.
fn python_non_finite_to_marker(text: &str) -> String {
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
            out.push_str("\"\\u0000non-finite:");
            out.push_str(tok);
            out.push('"');
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

/// diffusers' `rescale_zero_terminal_snr` (Lin et al. 2023), in torch's f32 arithmetic: √ᾱ is
/// shifted so that its last value is 0 and scaled so that its first is kept, and the betas are
/// recovered from the new ᾱ (the last β is 1).
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1f64;
    let mut s: Vec<f32> = betas
        .iter()
        .map(|&b| {
            acc *= (1.0 - b) as f64;
            (acc as f32).sqrt()
        })
        .collect();
    let (s0, st) = (s[0], s[s.len() - 1]);
    let scale = s0 / (s0 - st);
    for v in &mut s {
        *v = (*v - st) * scale;
    }
    let ab: Vec<f32> = s.iter().map(|v| v * v).collect();
    (0..ab.len())
        .map(|i| {
            let alpha = if i == 0 { ab[0] } else { ab[i] / ab[i - 1] };
            1.0 - alpha
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_non_finite_floats_are_marked_not_null() {
        let text = r#"{"a": -Infinity, "b": "NaN \"Infinity\"", "c": [NaN, Infinity], "d": 1}"#;
        let v: Value = serde_json::from_str(&python_non_finite_to_marker(text)).unwrap();
        assert_eq!(non_finite(&v["a"]), Some("-Infinity"));
        assert_eq!(v["b"], "NaN \"Infinity\"");
        assert_eq!(non_finite(&v["c"][0]), Some("NaN"));
        assert_eq!(non_finite(&v["c"][1]), Some("Infinity"));
        assert_eq!(v["d"], 1);
    }

    #[test]
    fn torch_linspace_is_exact_at_both_ends() {
        let v = torch_linspace(0.0001, 0.02, 1000);
        assert_eq!((v[0], v[999]), (0.0001, 0.02));
    }
}
