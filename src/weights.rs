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
    pub dir: PathBuf,
    pub config: PathBuf,
    pub weights: Vec<PathBuf>,
}

const WEIGHT_STEM: &str = "diffusion_pytorch_model";

impl ModelFiles {
    /// Every file a load reads: the config and each weight file.
    pub fn paths(&self) -> Vec<&Path> {
        std::iter::once(self.config.as_path())
            .chain(self.weights.iter().map(PathBuf::as_path))
            .collect()
    }

    /// Finds config and weights in a model folder or in a pipeline folder's `unet/`.
    pub fn locate(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Msg(format!(
                "model folder {} does not exist or is not a folder",
                dir.display()
            )));
        }
        let dir = if dir.join("model_index.json").is_file() && dir.join("unet").is_dir() {
            dir.join("unet")
        } else {
            dir.to_path_buf()
        };
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(Error::Msg(format!(
                "{}: no config.json (expected a diffusers model folder, or a pipeline folder with unet/)",
                dir.display()
            )));
        }
        for variant in ["", ".fp16"] {
            let single = dir.join(format!("{WEIGHT_STEM}{variant}.safetensors"));
            if single.is_file() {
                return Ok(ModelFiles {
                    dir,
                    config,
                    weights: vec![single],
                });
            }
            let index = dir.join(format!("{WEIGHT_STEM}{variant}.safetensors.index.json"));
            if index.is_file() {
                let weights = shard_files(&index)?;
                return Ok(ModelFiles {
                    dir,
                    config,
                    weights,
                });
            }
        }
        Err(Error::Msg(format!(
            "{}: no weights found (looked for {WEIGHT_STEM}.safetensors, its .fp16 variant and their \
             sharded .safetensors.index.json; PyTorch .bin checkpoints are not read, convert them to safetensors)",
            dir.display()
        )))
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
    pub fn load(files: &[PathBuf]) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        let mut source: BTreeMap<String, &Path> = BTreeMap::new();
        for file in files {
            for (name, stored) in safetensors_io::load(file)? {
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

    pub fn from_tensors(tensors: BTreeMap<String, Tensor>) -> Self {
        Checkpoint {
            tensors,
            checked: false,
        }
    }

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
            return Ok(Tensor::from_parts(shape.to_vec(), t.into_data()));
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
