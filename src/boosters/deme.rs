//! DeMe (Ma et al. 2024): timestep-specialised fine-tunes of one model, merged by task
//! arithmetic, `θ = θ₀ + Σᵢ wᵢ (θᵢ − θ₀)` (the weights need not sum to 1; the paper's default for
//! four experts, low to high timesteps, is 0.1, 0.1, 0.2, 0.5), or kept apart and routed by
//! timestep: with N experts, expert i serves t ∈ [i·T/N, (i+1)·T/N). The channel projections a
//! DeMe checkpoint carries are part of the model (`models::unet_2d`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::boosters::Boosters;
use crate::config::UNetConfig;
use crate::device::Exec;
use crate::error::{Error, Result};
use crate::models::unet_2d::{UNet, UNetInputs};
use crate::models::Denoiser;
use crate::safetensors_io;
use crate::tensor::Tensor;
use crate::weights::{Checkpoint, ModelFiles};

/// The first top-level config field whose value differs between two diffusers configs
/// (metadata fields, `_…`, aside).
fn config_difference(a: &Path, b: &Path) -> Result<Option<String>> {
    let read = |p: &Path| -> Result<serde_json::Map<String, serde_json::Value>> {
        let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json {
            origin: p.display().to_string(),
            msg: e.to_string(),
        })?;
        Ok(v.as_object().cloned().unwrap_or_default())
    };
    let (ja, jb) = (read(a)?, read(b)?);
    let keys: std::collections::BTreeSet<&String> = ja.keys().chain(jb.keys()).collect();
    let show = |v: Option<&serde_json::Value>| v.map_or("absent".into(), |v| v.to_string());
    let diff = keys
        .into_iter()
        .filter(|k| !k.starts_with('_'))
        .find(|k| ja.get(*k) != jb.get(*k))
        .map(|k| format!("`{k}`: {} vs {}", show(ja.get(k)), show(jb.get(k))));
    Ok(diff)
}

/// Checks that every expert has the base's architecture; returns the parsed configs' files.
fn same_architecture(base: &ModelFiles, experts: &[ModelFiles]) -> Result<UNetConfig> {
    let cfg = UNetConfig::from_file(&base.config)?;
    for e in experts {
        let ecfg = UNetConfig::from_file(&e.config)?;
        if ecfg != cfg {
            let what = config_difference(&base.config, &e.config)?
                .unwrap_or_else(|| "an equivalent spelling of a different network".into());
            return Err(Error::booster(
                "deme",
                format!(
                    "expert {} has a different config from {} ({what}); DeMe experts must share \
                 the architecture",
                    e.dir.display(),
                    base.dir.display()
                ),
            ));
        }
    }
    Ok(cfg)
}

/// Task arithmetic over diffusers folders; writes a diffusers folder to `out` (the base's
/// config.json and f32 weights).
///
/// Computed as `(1 − Σw)·θ₀ + Σ wᵢ θᵢ` in f64 and rounded once: the same value as the
/// task-vector form up to that rounding, and exactly θ₁ for one expert of weight 1.
pub fn merge(base: &Path, experts: &[PathBuf], weights: &[f32], out: &Path) -> Result<()> {
    if experts.is_empty() {
        return Err(Error::booster("deme", "merge needs at least one expert"));
    }
    if weights.len() != experts.len() {
        return Err(Error::booster(
            "deme",
            format!("{} experts but {} weights", experts.len(), weights.len()),
        ));
    }
    if weights.iter().any(|w| !w.is_finite()) {
        return Err(Error::booster(
            "deme",
            "merge weights must be finite numbers",
        ));
    }
    let base_files = ModelFiles::locate(base)?;
    let expert_files = experts
        .iter()
        .map(|e| ModelFiles::locate(e))
        .collect::<Result<Vec<_>>>()?;
    same_architecture(&base_files, &expert_files)?;
    let config_out = out.join("config.json");
    let weights_out = out.join("diffusion_pytorch_model.safetensors");
    let inputs: Vec<&Path> = std::iter::once(&base_files)
        .chain(&expert_files)
        .flat_map(ModelFiles::paths)
        .collect();
    crate::output::refuse_inputs_as_outputs(&[&config_out, &weights_out], &inputs)?;

    // Every tensor of every checkpoint is finite (`Checkpoint::load`); an error names whose.
    let theta0 = Checkpoint::load(&base_files.weights)
        .map_err(|e| naming_checkpoint(e, format!("base {}", base_files.dir.display())))?
        .into_tensors();
    let base_share = 1.0 - weights.iter().map(|&w| w as f64).sum::<f64>();
    let mut acc: BTreeMap<String, Vec<f64>> = theta0
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.data().iter().map(|&v| base_share * v as f64).collect(),
            )
        })
        .collect();
    let load_expert = |i: usize, files: &ModelFiles| {
        Checkpoint::load(&files.weights)
            .map(Checkpoint::into_tensors)
            .map_err(|e| {
                naming_checkpoint(e, format!("expert {} ({})", i + 1, files.dir.display()))
            })
    };
    for (i, (files, &w)) in expert_files.iter().zip(weights).enumerate() {
        let mut theta = load_expert(i, files)?;
        for (name, sum) in acc.iter_mut() {
            let t = theta.remove(name).ok_or_else(|| {
                Error::booster(
                    "deme",
                    format!("expert {} has no tensor `{name}`", files.dir.display()),
                )
            })?;
            if t.shape() != theta0[name].shape() {
                return Err(Error::booster(
                    "deme",
                    format!(
                        "expert {}: `{name}` has shape {:?}, the base {:?}",
                        files.dir.display(),
                        t.shape(),
                        theta0[name].shape()
                    ),
                ));
            }
            sum.iter_mut()
                .zip(t.data())
                .for_each(|(s, &v)| *s += w as f64 * v as f64);
        }
        if let Some(extra) = theta.keys().next() {
            return Err(Error::booster(
                "deme",
                format!(
                    "expert {} has tensor `{extra}`, which the base lacks",
                    files.dir.display()
                ),
            ));
        }
    }
    let mut merged: Vec<(String, Tensor)> = Vec::with_capacity(acc.len());
    for (k, v) in acc {
        let shape = theta0[&k].shape().to_vec();
        let data: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        if let Some((j, _)) = safetensors_io::first_non_finite(&data) {
            return Err(overflow_error(
                &k,
                &shape,
                j,
                v[j],
                base_share * theta0[&k].data()[j] as f64,
                &expert_files,
                weights,
                &load_expert,
            ));
        }
        let t = Tensor::new(shape, data).expect("shape of the base tensor");
        merged.push((k, t));
    }
    let config = std::fs::read(&base_files.config).map_err(|e| Error::io(&base_files.config, e))?;
    let refs: Vec<(&str, &Tensor)> = merged.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let weights = safetensors_io::serialize(&refs, &weights_out)?;
    // Both files appear together or not at all; a folder this call made goes if it fails.
    let write = |bytes: Vec<u8>, path: PathBuf| -> crate::output::FileWriter<'static> {
        let p = path.clone();
        (
            path,
            Box::new(move |w| w.write_all(&bytes).map_err(|e| Error::io(&p, e))),
        )
    };
    crate::output::write_files(
        out,
        vec![write(config, config_out), write(weights, weights_out)],
    )
}

/// Loads expert i's tensors (the merge's loader, whose errors name the expert).
type ExpertLoader<'a> = dyn Fn(usize, &ModelFiles) -> Result<BTreeMap<String, Tensor>> + 'a;

/// The error of a merged value `value` at flat index `j` of tensor `name` that overflows f32,
/// naming the term that dominates it (the base's share or an expert's weighted value; the experts
/// are read again, as this is the failure path only).
#[allow(clippy::too_many_arguments)]
fn overflow_error(
    name: &str,
    shape: &[usize],
    j: usize,
    value: f64,
    base_term: f64,
    experts: &[ModelFiles],
    weights: &[f32],
    load: &ExpertLoader,
) -> Error {
    let mut culprit = (
        base_term.abs(),
        format!(
            "the base's share 1 − Σw = {:e}",
            1.0 - weights.iter().map(|&w| w as f64).sum::<f64>()
        ),
    );
    for (i, (files, &w)) in experts.iter().zip(weights).enumerate() {
        let Ok(theta) = load(i, files) else { continue };
        if let Some(v) = theta.get(name).and_then(|t| t.data().get(j)) {
            let term = w as f64 * *v as f64;
            if term.abs() > culprit.0 {
                culprit = (
                    term.abs(),
                    format!(
                        "expert {} ({}), weight {w:e} × value {v:e}",
                        i + 1,
                        files.dir.display()
                    ),
                );
            }
        }
    }
    Error::booster(
        "deme",
        format!(
            "merged `{name}` is {value:e} at index {:?}, which overflows f32; its largest term is \
         {}: merge weights that large make no model",
            safetensors_io::index_of(shape, j),
            culprit.1
        ),
    )
}

/// Unmerged experts, each serving its share of the timesteps (low timesteps first).
pub struct Router {
    experts: Vec<UNet>,
    num_train_timesteps: f32,
}

impl Router {
    /// Routes timesteps 0..`num_train_timesteps` over `experts` (low timesteps first), which must
    /// share one config.
    pub fn new(experts: Vec<UNet>, num_train_timesteps: usize) -> Result<Self> {
        if experts.is_empty() || num_train_timesteps == 0 {
            return Err(Error::booster(
                "deme",
                "routing needs at least one expert and a positive number of timesteps",
            ));
        }
        if let Some(i) = experts.iter().position(|e| e.config != experts[0].config) {
            return Err(Error::booster(
                "deme",
                format!(
                "routed expert {} has a different config from expert 0; DeMe experts must share \
                 the architecture",
                i
            ),
            ));
        }
        Ok(Router {
            experts,
            num_train_timesteps: num_train_timesteps as f32,
        })
    }

    /// Loads experts from diffusers folders.
    pub fn from_dirs(dirs: &[PathBuf], num_train_timesteps: usize) -> Result<Self> {
        let experts = dirs
            .iter()
            .map(|d| UNet::from_dir(d))
            .collect::<Result<Vec<_>>>()?;
        Self::new(experts, num_train_timesteps)
    }

    /// The experts, low timesteps first.
    pub fn experts(&self) -> &[UNet] {
        &self.experts
    }

    /// The expert serving timestep `t`: ⌊t·N/T⌋, clamped to the experts there are.
    pub fn expert_for(&self, t: f32) -> usize {
        let n = self.experts.len();
        ((t * n as f32 / self.num_train_timesteps).floor().max(0.0) as usize).min(n - 1)
    }
}

impl Router {
    /// The experts (sharing their weights with these) placed on an opened device: see
    /// [`UNet::on`].
    pub fn on(&self, exec: Exec) -> Self {
        Router {
            experts: self.experts.iter().map(|e| e.on(exec.clone())).collect(),
            num_train_timesteps: self.num_train_timesteps,
        }
    }

    /// The experts placed on `device` in `dtype`: see [`UNet::to`].
    pub fn to(&self, device: crate::device::Device, dtype: crate::device::DType) -> Result<Self> {
        Ok(self.on(device.open(dtype)?))
    }
}

impl Denoiser for Router {
    /// The experts share one architecture (checked at load), so the first one's checks hold.
    fn check(&self, inputs: &UNetInputs) -> Result<()> {
        self.experts[0].check(inputs)
    }

    fn warm_up(&self) -> Result<()> {
        self.experts.iter().try_for_each(Denoiser::warm_up)
    }

    fn forward_with(&self, inputs: &UNetInputs, boosters: &Boosters) -> Result<Tensor> {
        let b = inputs.sample.shape().first().copied().unwrap_or(0);
        let n_t = inputs.timesteps.len();
        if b == 0 || (n_t != 1 && n_t != b) {
            // Nothing to route by: the expert's own input checks say what is wrong.
            return self.experts[0].forward_with(inputs, boosters);
        }
        let expert_of = |i: usize| {
            let t = if inputs.timesteps.len() == 1 {
                inputs.timesteps[0]
            } else {
                inputs.timesteps[i]
            };
            self.expert_for(t)
        };
        let first = expert_of(0);
        if (0..b).all(|i| expert_of(i) == first) {
            return self.experts[first].forward_with(inputs, boosters);
        }
        // Samples served by different experts: run each expert on its samples, then reassemble.
        if boosters.masks.as_ref().is_some_and(|m| m.has_per_sample()) {
            return Err(Error::booster(
                "deme",
                "per-sample masks cannot be used when one batch is routed to several experts; \
                 give all samples timesteps of one expert, or shared masks",
            ));
        }
        let mut out: Option<Vec<f32>> = None;
        let mut out_shape = Vec::new();
        for e in 0..self.experts.len() {
            let idx: Vec<usize> = (0..b).filter(|&i| expert_of(i) == e).collect();
            if idx.is_empty() {
                continue;
            }
            let y = self.experts[e].forward_with(&inputs.select(&idx)?, boosters)?;
            let per = y.numel() / idx.len();
            if out.is_none() {
                out_shape = y.shape().to_vec();
                out_shape[0] = b;
                out = Some(vec![0.0; b * per]);
            }
            let buf = out.as_mut().expect("set above");
            for (j, &i) in idx.iter().enumerate() {
                buf[i * per..(i + 1) * per].copy_from_slice(&y.data()[j * per..(j + 1) * per]);
            }
        }
        Tensor::new(out_shape, out.unwrap_or_default())
    }
}

/// A checkpoint's load error `e` with `which` (the base, expert i) in its message; the kind is
/// kept, so an engine still matches a bad weight or a missing file.
fn naming_checkpoint(e: Error, which: String) -> Error {
    match e {
        Error::Weight { name, msg } => Error::Weight {
            name,
            msg: format!("{which}: {msg}"),
        },
        Error::Safetensors { origin, msg } => Error::Safetensors {
            origin: format!("{which}: {origin}"),
            msg,
        },
        Error::MissingWeight(name) => Error::MissingWeight(format!("{name} ({which})")),
        other => other,
    }
}
