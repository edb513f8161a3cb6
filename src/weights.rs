//! Where model parameters come from: a diffusers checkpoint on disk (single file, fp16 variant,
//! sharded index, or a pipeline folder's `unet/`), or a seeded random initialisation for benches
//! and tests. Builders pull each parameter by its diffusers state-dict name and expected shape, so
//! a misnamed or misshapen weight is reported by name at load time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::safetensors_io;
use crate::tensor::Tensor;

/// Hands out parameters by diffusers name.
pub trait WeightSource {
    /// The parameter `name`, which must have exactly `shape`.
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// Whether the source has `name` (for parameters whose presence the config does not decide).
    fn has(&self, name: &str) -> bool;
}

/// The files of a diffusers model folder.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    /// The model folder (a pipeline folder's `unet/`).
    pub dir: PathBuf,
    /// Its `config.json`.
    pub config: PathBuf,
    /// The safetensors files of the weights: one, or every shard of the index.
    pub weights: Vec<PathBuf>,
    /// The variant the weights are (None: full precision).
    pub variant: Option<String>,
}

const WEIGHT_STEM: &str = "diffusion_pytorch_model";

/// How a model folder is read: which weights variant, and in which type to keep 16-bit weights.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// The weights variant (`fp16`, `bf16`, …: `diffusion_pytorch_model.<variant>.safetensors`
    /// or its shards). None prefers the full-precision files, as diffusers does, and takes the
    /// folder's one variant when it has no others.
    pub variant: Option<String>,
    /// The revision (branch, tag or commit) of a Hugging Face cache repo (`hub::resolve`);
    /// None: `main`.
    pub revision: Option<String>,
    /// Keep checkpoint tensors stored in this 16-bit type as stored (`Tensor::stored_half`),
    /// for a device computing in it; others are widened to f32 at load.
    pub keep: Option<crate::tensor::HalfType>,
}

/// The weight files a variant may have in a folder, in the order diffusers tries them: one file,
/// then a sharded index as `save_pretrained` names it now (`….safetensors.index.<v>.json`), then,
/// for a variant, the index naming of diffusers before 0.28 (`….safetensors.<v>.index.json`).
fn candidates(variant: Option<&str>) -> Vec<String> {
    match variant {
        None => vec![
            format!("{WEIGHT_STEM}.safetensors"),
            format!("{WEIGHT_STEM}.safetensors.index.json"),
        ],
        Some(v) => vec![
            format!("{WEIGHT_STEM}.{v}.safetensors"),
            format!("{WEIGHT_STEM}.safetensors.index.{v}.json"),
            format!("{WEIGHT_STEM}.safetensors.{v}.index.json"),
        ],
    }
}

/// The variants present in `dir`, from its file names (single files and both index namings).
fn variants_in(dir: &Path) -> Vec<String> {
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let v = name
            .strip_prefix(&format!("{WEIGHT_STEM}."))
            .and_then(|rest| {
                rest.strip_suffix(".safetensors")
                    .or_else(|| {
                        rest.strip_prefix("safetensors.index.")?
                            .strip_suffix(".json")
                    })
                    .or_else(|| {
                        rest.strip_prefix("safetensors.")?
                            .strip_suffix(".index.json")
                    })
            })
            .filter(|v| !v.is_empty() && !v.contains('.') && !v.contains('-'));
        if let Some(v) = v {
            found.insert(v.to_string());
        }
    }
    found.into_iter().collect()
}

impl ModelFiles {
    /// Every file a load reads: the config and each weight file.
    pub fn paths(&self) -> Vec<&Path> {
        std::iter::once(self.config.as_path())
            .chain(self.weights.iter().map(PathBuf::as_path))
            .collect()
    }

    /// Finds config and weights in a model folder or in a pipeline folder's `unet/`, preferring
    /// full-precision weights (`locate_with` picks a variant).
    pub fn locate(dir: &Path) -> Result<Self> {
        Self::locate_with(dir, None)
    }

    /// The files of the model `arg` names (a folder, a Hugging Face cache repo folder or repo
    /// id: `hub::resolve`) under `opts`.
    pub fn find(arg: &Path, opts: &LoadOptions) -> Result<Self> {
        let dir = crate::hub::resolve(arg, opts.revision.as_deref())?;
        Self::locate_with(&dir, opts.variant.as_deref())
    }

    /// Finds config and the weights of `variant` (None: full precision, else the folder's only
    /// variant) in a model folder or a pipeline folder's `unet/`.
    pub fn locate_with(dir: &Path, variant: Option<&str>) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::not_found(
                dir.display().to_string(),
                format!(
                    "model folder {} does not exist or is not a folder",
                    dir.display()
                ),
            ));
        }
        let dir = if dir.join("model_index.json").is_file() && dir.join("unet").is_dir() {
            dir.join("unet")
        } else {
            dir.to_path_buf()
        };
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(Error::not_found(dir.display().to_string(), format!(
                "{}: no config.json (expected a diffusers model folder, or a pipeline folder with unet/)",
                dir.display()
            )));
        }
        if let Some(v) = variant {
            let ok = !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(Error::Unsupported {
                    field: "variant".into(),
                    value: format!("`{v}` (a variant is a name like fp16 or bf16)"),
                });
            }
        }
        let found = |variant: Option<&str>| -> Result<Option<Vec<PathBuf>>> {
            let names = candidates(variant);
            if dir.join(&names[0]).is_file() {
                return Ok(Some(vec![dir.join(&names[0])]));
            }
            match names[1..].iter().find(|index| dir.join(index).is_file()) {
                Some(index) => shard_files(&dir.join(index)).map(Some),
                None => Ok(None),
            }
        };
        let present = variants_in(&dir);
        let mut chosen = variant.map(str::to_string);
        let weights = match variant {
            Some(v) => found(Some(v))?.ok_or_else(|| {
                Error::not_found(format!("--variant {v}"), format!(
                    "{}: no weights of variant `{v}` (looked for {}); the folder has {}",
                    dir.display(),
                    candidates(Some(v)).join(", "),
                    describe_variants(&dir, &present)
                ))
            })?,
            None => match found(None)? {
                Some(w) => w,
                None => match &present[..] {
                    [only] => {
                        chosen = Some(only.clone());
                        found(Some(only))?.expect("variants_in saw its file")
                    }
                    [] => {
                        return Err(Error::not_found(dir.display().to_string(), format!(
                            "{}: no weights found (looked for {WEIGHT_STEM}.safetensors, variants                              like {WEIGHT_STEM}.fp16.safetensors, and their sharded                              .safetensors.index.json; PyTorch .bin checkpoints are not read,                              convert them to safetensors)",
                            dir.display()
                        )))
                    }
                    several => {
                        return Err(Error::not_found(dir.display().to_string(), format!(
                            "{}: no full-precision weights, and several variants ({}); pick one                              with --variant",
                            dir.display(),
                            several.join(", ")
                        )))
                    }
                },
            },
        };
        Ok(ModelFiles {
            dir,
            config,
            weights,
            variant: chosen,
        })
    }
}

fn describe_variants(dir: &Path, present: &[String]) -> String {
    let full = candidates(None).iter().any(|f| dir.join(f).is_file());
    let mut parts: Vec<String> = Vec::new();
    if full {
        parts.push("full-precision weights".into());
    }
    if !present.is_empty() {
        parts.push(format!("variants {}", present.join(", ")));
    }
    if parts.is_empty() {
        "no weights".into()
    } else {
        parts.join(" and ")
    }
}

fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let origin = index.display().to_string();
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json {
        origin: origin.clone(),
        msg: e.to_string(),
    })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Json {
            origin: origin.clone(),
            msg: "no `weight_map` object".into(),
        })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files = BTreeSet::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| Error::Json {
            origin: origin.clone(),
            msg: format!("weight_map[`{name}`] is not a file name"),
        })?;
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(Error::Json {
                origin: origin.clone(),
                msg: format!("weight_map[`{name}`] = `{file}` is not a plain file name"),
            });
        }
        files.insert(dir.join(file));
    }
    Ok(files.into_iter().collect())
}

/// Parameters loaded from safetensors files, widened to f32. Every parameter is finite: a file's
/// are checked at load (an f16 weight that overflowed to inf included), those of
/// `from_tensors` as the model builder takes them.
#[derive(Default)]
pub struct Checkpoint {
    tensors: BTreeMap<String, Tensor>,
    /// Whether every tensor was checked finite at load.
    checked: bool,
}

impl Checkpoint {
    /// Every tensor of `files`, widened to f32 (f32 ones read in place from the file's map).
    pub fn load(files: &[PathBuf]) -> Result<Self> {
        Self::load_keeping(files, None)
    }

    /// As `load`, keeping tensors stored as `keep` in that type (see `LoadOptions::keep`).
    pub fn load_keeping(files: &[PathBuf], keep: Option<crate::tensor::HalfType>) -> Result<Self> {
        Self::load_reporting(files, keep, &mut |_| {})
    }

    /// As `load_keeping`, calling `loaded` with each tensor's stored bytes as it is read (a
    /// progress bar's feed; the files' sizes are the total, less their headers).
    pub fn load_reporting(
        files: &[PathBuf],
        keep: Option<crate::tensor::HalfType>,
        loaded: &mut dyn FnMut(u64),
    ) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        let mut source: BTreeMap<String, &Path> = BTreeMap::new();
        for file in files {
            for (name, stored) in safetensors_io::load_reporting(file, keep, loaded)? {
                if !stored.dtype.is_float() {
                    return Err(Error::weight(
                        &name,
                        format!(
                            "stored as {:?}; parameters must be floating point",
                            stored.dtype
                        ),
                    ));
                }
                if let Err(bad) = safetensors_io::check_finite(&stored.tensor) {
                    return Err(Error::weight(
                        &name,
                        format!(
                            "{} holds {bad} (stored as {:?}); weights must be finite numbers",
                            file.display(),
                            stored.dtype
                        ),
                    ));
                }
                if let Some(first) = source.insert(name.clone(), file) {
                    return Err(Error::weight(
                        &name,
                        format!(
                            "stored twice, in {} and in {}",
                            first.display(),
                            file.display()
                        ),
                    ));
                }
                tensors.insert(name, stored.tensor);
            }
        }
        Ok(Checkpoint {
            tensors,
            checked: true,
        })
    }

    /// Parameters built in memory, checked finite as the model builder takes them.
    pub fn from_tensors(tensors: BTreeMap<String, Tensor>) -> Self {
        Checkpoint {
            tensors,
            checked: false,
        }
    }

    /// The parameters not yet taken, by name.
    pub fn into_tensors(self) -> BTreeMap<String, Tensor> {
        self.tensors
    }

    /// Names not taken by the model builder (diffusers warns about these; so does the CLI).
    pub fn remaining(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn resolve(&self, name: &str) -> Option<String> {
        if self.tensors.contains_key(name) {
            return Some(name.to_string());
        }
        // Old UNet2DModel checkpoints (google/ddpm-*) name the attention projections the way
        // diffusers' deprecated AttentionBlock did; diffusers renames them on load, and so do we.
        const ALIASES: [(&str, &str); 4] = [
            (".to_q.", ".query."),
            (".to_k.", ".key."),
            (".to_v.", ".value."),
            (".to_out.0.", ".proj_attn."),
        ];
        ALIASES.iter().find_map(|(new, old)| {
            let alias = name.replacen(new, old, 1);
            (alias != name && self.tensors.contains_key(&alias)).then_some(alias)
        })
    }
}

trait DtypeExt {
    fn is_float(&self) -> bool;
}

impl DtypeExt for safetensors::Dtype {
    fn is_float(&self) -> bool {
        use safetensors::Dtype::*;
        matches!(self, F16 | BF16 | F32 | F64)
    }
}

impl WeightSource for Checkpoint {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let key = self
            .resolve(name)
            .ok_or_else(|| Error::MissingWeight(name.to_string()))?;
        let t = self.tensors.remove(&key).expect("resolved key exists");
        if !self.checked {
            safetensors_io::check_finite(&t).map_err(|bad| {
                Error::weight(name, format!("holds {bad}; weights must be finite numbers"))
            })?;
        }
        // A 1×1 convolution stored as a Linear weight (or the reverse) is the same parameter.
        let same_numel = t.numel() == shape.iter().product::<usize>();
        let squeezable = |a: &[usize], b: &[usize]| {
            a.len() == 4 && b.len() == 2 && a[0] == b[0] && a[1] == b[1] && a[2] == 1 && a[3] == 1
        };
        if t.shape() == shape
            || (same_numel && (squeezable(t.shape(), shape) || squeezable(shape, t.shape())))
        {
            return Ok(t.with_shape(shape.to_vec()));
        }
        Err(Error::weight(
            name,
            format!("expected shape {shape:?}, checkpoint has {:?}", t.shape()),
        ))
    }

    fn has(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }
}

/// Seeded random parameters with the scales of a trained network (norm weights near 1, weights
/// ~ 1/sqrt(fan_in)), so activations stay O(1) through a deep model.
pub struct RandomWeights {
    seed: u64,
}

impl RandomWeights {
    /// Parameters drawn from `seed` (each from its own stream, keyed by its name).
    pub fn new(seed: u64) -> Self {
        RandomWeights { seed }
    }
}

impl WeightSource for RandomWeights {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let mut t = Tensor::randn(
            shape.to_vec(),
            self.seed ^ crate::rng::fnv1a(name.as_bytes()),
        );
        let is_norm = name.contains("norm");
        let scale = if shape.len() == 1 {
            0.1
        } else {
            1.0 / (shape[1..].iter().product::<usize>() as f32).sqrt()
        };
        let offset = if is_norm && name.ends_with(".weight") {
            1.0
        } else {
            0.0
        };
        t.data_mut()
            .iter_mut()
            .for_each(|v| *v = *v * scale + offset);
        Ok(t)
    }

    fn has(&self, _name: &str) -> bool {
        false
    }
}
