//! MaskUNet's binary weight masks (Wang et al. 2025): `y_b = x_b · (W ⊙ M_b)ᵀ + bias`, a mask
//! per weight element that may differ per sample and per sampler step.
//!
//! A mask file is safetensors keyed by the weight's diffusers name, dtype u8 or bool (non-zero
//! keeps). With r the weight's rank, a mask of rank r is shared by the batch, rank r+1 (leading B)
//! is per sample, rank r+2 (leading steps, then B) per step and sample. In memory each mask is
//! bit-packed, one bit per weight, every weight row (output channel) starting on a word, so a
//! kernel can unpack the rows of the tile it is staging.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::Dtype;

use crate::error::{Error, Result};

/// The masks of one weight, bit-packed: `[steps][batch][rows][row_words]`.
#[derive(Clone, Debug)]
pub struct WeightMask {
    /// The weight's shape; rows are `shape[0]`, a row holds the rest.
    pub shape: Vec<usize>,
    /// Per-step masks: how many steps; None when the masks do not depend on the step.
    pub steps: Option<usize>,
    /// Per-sample masks: the batch size; None when shared by the batch.
    pub batch: Option<usize>,
    row_words: usize,
    bits: Vec<u64>,
    /// Identifies these (immutable) bits for a device backend's cache; clones share it.
    uid: u64,
}

impl PartialEq for WeightMask {
    fn eq(&self, o: &Self) -> bool {
        (&self.shape, self.steps, self.batch, &self.bits) == (&o.shape, o.steps, o.batch, &o.bits)
    }
}

/// Gives sample b's mask (a kernel's view of a call's masks, one per sample).
pub type MaskFn<'a, 'm> = &'a (dyn Fn(usize) -> MaskView<'m> + Sync);

/// One (step, sample)'s mask of a weight.
#[derive(Clone, Copy, Debug)]
pub struct MaskView<'a> {
    words: &'a [u64],
    row_words: usize,
}

impl MaskView<'_> {
    /// Whether row `r` keeps element `i`.
    #[inline]
    pub fn bit(&self, r: usize, i: usize) -> bool {
        self.words[r * self.row_words + i / 64] >> (i % 64) & 1 == 1
    }

    /// `out[i] = w[i]` where row `r`'s bit i is set, else 0.
    #[inline]
    pub fn apply_row(&self, r: usize, w: &[f32], out: &mut [f32]) {
        let words = &self.words[r * self.row_words..(r + 1) * self.row_words];
        for ((o, w), &word) in out.chunks_mut(64).zip(w.chunks(64)).zip(words) {
            for (i, (o, &w)) in o.iter_mut().zip(w).enumerate() {
                *o = if word >> i & 1 == 1 { w } else { 0.0 };
            }
        }
    }
}

impl WeightMask {
    /// Identifies these bits for a device backend's cache of uploaded masks.
    pub fn uid(&self) -> u64 {
        self.uid
    }

    /// Rows of the weight (its output channels, `shape[0]`).
    pub fn rows(&self) -> usize {
        self.shape[0]
    }

    /// Elements per weight row (the product of `shape[1..]`).
    pub fn row_len(&self) -> usize {
        self.shape[1..].iter().product()
    }

    /// Builds packed masks from one byte per element (`[steps][batch][weight...]` flattened):
    /// exactly `steps × batch × weight elements` bytes (`None` counting 1), or an error saying
    /// how many were given and needed. Whether `shape` is the shape of the weight the mask is
    /// attached to is checked when a model uses it (`MaskSet::check_layers`).
    pub fn from_bytes(
        shape: Vec<usize>,
        steps: Option<usize>,
        batch: Option<usize>,
        bytes: &[u8],
    ) -> Result<Self> {
        let bad = |msg: String| Error::Mask {
            name: String::new(),
            msg: format!("mask for a weight of shape {shape:?}: {msg}"),
        };
        if shape.is_empty() || shape.contains(&0) {
            return Err(bad(
                "a weight shape has at least one dimension, none of them 0".into(),
            ));
        }
        if steps == Some(0) || batch == Some(0) {
            return Err(bad(format!(
                "{steps:?} steps and {batch:?} samples: a count given must be at least 1"
            )));
        }
        let sizes = steps
            .unwrap_or(1)
            .checked_mul(batch.unwrap_or(1))
            .and_then(|count| {
                let need = shape.iter().try_fold(count, |a, &d| a.checked_mul(d))?;
                Some((count, need))
            });
        let Some((count, need)) = sizes else {
            return Err(bad("too many mask elements to address".into()));
        };
        // Both fit: each is at most `need`.
        let rows = shape[0];
        let row_len: usize = shape[1..].iter().product();
        let row_words = row_len.div_ceil(64);
        let words = count * rows * row_words;
        if bytes.len() != need {
            return Err(bad(format!(
                "{} bytes given; {need} needed (one per weight element{}{})",
                bytes.len(),
                steps.map_or(String::new(), |s| format!(", × {s} steps")),
                batch.map_or(String::new(), |b| format!(", × {b} samples")),
            )));
        }
        let mut bits = Vec::new();
        bits.try_reserve_exact(words)
            .map_err(|_| bad(format!("cannot allocate {words} words of mask bits")))?;
        bits.resize(words, 0u64);
        for (row_bits, row_bytes) in bits.chunks_mut(row_words).zip(bytes.chunks(row_len)) {
            for (i, &b) in row_bytes.iter().enumerate() {
                if b != 0 {
                    row_bits[i / 64] |= 1 << (i % 64);
                }
            }
        }
        Ok(WeightMask {
            shape,
            steps,
            batch,
            row_words,
            bits,
            uid: crate::uid::fresh_uid(),
        })
    }

    /// Checks the mask against the weight it is attached to (`name`, of `weight_shape`), and
    /// its bits against its own (public, so changeable) shape, steps and batch.
    pub fn check_weight(&self, name: &str, weight_shape: &[usize]) -> Result<()> {
        if self.shape != weight_shape {
            return Err(Error::Mask {
                name: name.to_string(),
                msg: format!(
                    "mask `{name}` is for a weight of shape {:?} (rank {}); `{name}` has shape \
                     {weight_shape:?} (rank {})",
                    self.shape,
                    self.shape.len(),
                    weight_shape.len()
                ),
            });
        }
        let per = self.rows().checked_mul(self.row_len().div_ceil(64));
        let words = per.and_then(|p| {
            p.checked_mul(self.steps.unwrap_or(1))?
                .checked_mul(self.batch.unwrap_or(1))
        });
        let consistent = self.row_words == self.row_len().div_ceil(64)
            && words == Some(self.bits.len())
            && self.steps != Some(0)
            && self.batch != Some(0);
        if !consistent {
            return Err(Error::Mask {
                name: name.to_string(),
                msg: format!(
                    "mask `{name}`: its bits do not match its shape {:?}, {:?} steps and {:?} \
                     samples (changed after `WeightMask::from_bytes`?)",
                    self.shape, self.steps, self.batch
                ),
            });
        }
        Ok(())
    }

    /// The mask sample `b` uses at sampler step `step`.
    pub fn view(&self, step: usize, b: usize) -> MaskView<'_> {
        let per = self.rows() * self.row_words;
        let s = if self.steps.is_some() { step } else { 0 };
        let bi = if self.batch.is_some() { b } else { 0 };
        let start = (s * self.batch.unwrap_or(1) + bi) * per;
        MaskView {
            words: &self.bits[start..start + per],
            row_words: self.row_words,
        }
    }
}

/// The masks of one forward call (or a sampler run), keyed by weight name.
///
/// A set made for a model ([`for_layers`](Self::for_layers) with `unet.layers()`) checks each
/// mask as it is inserted; any set is checked again against the model of each call.
///
/// ```
/// use freelunch::boosters::{MaskSet, WeightMask};
/// use freelunch::UNet;
///
/// let unet = UNet::from_dir("tests/fixtures/ddpm_basic".as_ref())?;
/// let mut masks = MaskSet::for_layers(unet.layers());
/// let name = "conv_in.weight";
/// let shape = unet.layers()[name].clone();
/// let n: usize = shape.iter().product();
/// let keep_all = WeightMask::from_bytes(shape, None, None, &vec![1; n])?;
/// masks.insert(name.into(), keep_all.clone())?;
/// // A name the model does not have is refused at once, naming it.
/// let err = masks.insert("conv_in".into(), keep_all).unwrap_err();
/// assert!(err.to_string().contains("did you mean `conv_in.weight`"));
/// # Ok::<(), freelunch::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct MaskSet {
    masks: BTreeMap<String, WeightMask>,
    /// The maskable weights (name → shape) of the model this set was made for, if one.
    layers: Option<std::sync::Arc<BTreeMap<String, Vec<usize>>>>,
}

impl PartialEq for MaskSet {
    /// Two sets are equal when they hold the same masks, whichever model they were made for.
    fn eq(&self, other: &Self) -> bool {
        self.masks == other.masks
    }
}

impl MaskSet {
    /// No masks, for any model: masks are checked when a call uses them.
    pub fn new() -> Self {
        MaskSet::default()
    }

    /// No masks, for the model whose maskable weights are `layers` (`UNet::layers`): each
    /// `insert` is checked against them.
    pub fn for_layers(layers: &BTreeMap<String, Vec<usize>>) -> Self {
        MaskSet {
            masks: BTreeMap::new(),
            layers: Some(std::sync::Arc::new(layers.clone())),
        }
    }

    /// Sets the mask of weight `weight_name` (its state-dict name), replacing any. In a set made
    /// for a model, a name the model does not have, or a mask of another shape than its weight,
    /// is an error naming it (and the set is unchanged).
    pub fn insert(&mut self, weight_name: String, mask: WeightMask) -> Result<()> {
        if let Some(layers) = &self.layers {
            check_layer(layers, &weight_name, &mask)?;
        }
        self.masks.insert(weight_name, mask);
        Ok(())
    }

    /// The mask of weight `weight_name`, if it has one.
    pub fn get(&self, weight_name: &str) -> Option<&WeightMask> {
        self.masks.get(weight_name)
    }

    /// How many weights have masks.
    pub fn len(&self) -> usize {
        self.masks.len()
    }

    /// Whether no weight has a mask.
    pub fn is_empty(&self) -> bool {
        self.masks.is_empty()
    }

    /// Whether any mask differs per sample.
    pub fn has_per_sample(&self) -> bool {
        self.masks.values().any(|m| m.batch.is_some())
    }

    /// The masks for a guided batch of `2 × batch` (`[uncond, cond]`): a per-sample mask for
    /// `batch` samples serves both halves (sample i's mask for uncond i and cond i); one for
    /// `2 × batch` is taken as given (the caller's own uncond masks first). None when no mask
    /// needs repeating.
    pub fn for_guidance(&self, batch: usize) -> Option<MaskSet> {
        let repeat = |m: &WeightMask| m.batch == Some(batch);
        if !self.masks.values().any(repeat) {
            return None;
        }
        let masks = self
            .masks
            .iter()
            .map(|(name, m)| {
                if !repeat(m) {
                    return (name.clone(), m.clone());
                }
                let per_sample = m.rows() * m.row_words;
                let mut bits = Vec::with_capacity(m.bits.len() * 2);
                for step in m.bits.chunks(per_sample * batch) {
                    bits.extend_from_slice(step);
                    bits.extend_from_slice(step);
                }
                let doubled = WeightMask {
                    shape: m.shape.clone(),
                    steps: m.steps,
                    batch: Some(2 * batch),
                    row_words: m.row_words,
                    bits,
                    uid: crate::uid::fresh_uid(),
                };
                (name.clone(), doubled)
            })
            .collect();
        Some(MaskSet {
            masks,
            layers: self.layers.clone(),
        })
    }

    /// Reads a mask file for a model whose maskable weights (linear and convolution) are
    /// `layers` (name → shape).
    pub fn load(path: &Path, layers: &BTreeMap<String, Vec<usize>>) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&bytes, &path.display().to_string(), layers)
    }

    /// As `load`, from the bytes of a mask file (`origin` names it in errors).
    pub fn parse(
        bytes: &[u8],
        origin: &str,
        layers: &BTreeMap<String, Vec<usize>>,
    ) -> Result<Self> {
        let st = crate::safetensors_io::deserialize(bytes, origin)?;
        let bad = |name: &str, msg: String| Error::Mask {
            name: name.to_string(),
            msg: format!("mask file {origin}: `{name}`: {msg}"),
        };
        let mut set = MaskSet::for_layers(layers);
        for (name, view) in st.tensors() {
            if !matches!(view.dtype(), Dtype::U8 | Dtype::BOOL) {
                return Err(bad(
                    &name,
                    format!("dtype {:?}; masks are u8 or bool", view.dtype()),
                ));
            }
            let Some(wshape) = layers.get(&name) else {
                return Err(bad(
                    &name,
                    "names no linear or convolution weight of this model".into(),
                ));
            };
            let shape = view.shape();
            let r = wshape.len();
            let (steps, batch) = if shape == &wshape[..] {
                (None, None)
            } else if shape.len() == r + 1 && shape[1..] == wshape[..] {
                (None, Some(shape[0]))
            } else if shape.len() == r + 2 && shape[2..] == wshape[..] {
                (Some(shape[0]), Some(shape[1]))
            } else {
                return Err(bad(
                    &name,
                    format!(
                        "shape {shape:?} fits no rule for a weight of shape {wshape:?} \
                         (expected {wshape:?}, [B, ..] or [steps, B, ..])"
                    ),
                ));
            };
            if steps == Some(0) || batch == Some(0) {
                return Err(bad(&name, format!("empty shape {shape:?}")));
            }
            let mask = WeightMask::from_bytes(wshape.clone(), steps, batch, view.data())
                .map_err(|e| bad(&name, e.to_string()))?;
            set.insert(name, mask)?;
        }
        Ok(set)
    }

    /// Checks every mask against the model it is used with, whose maskable weights are `layers`
    /// (name → shape): a mask under a name the model does not have, or of another shape than
    /// its weight, is an error naming it.
    pub fn check_layers(&self, layers: &BTreeMap<String, Vec<usize>>) -> Result<()> {
        self.masks
            .iter()
            .try_for_each(|(name, m)| check_layer(layers, name, m))
    }

    /// Checks the masks against a call with batch `batch` at sampler step `step`.
    pub fn check_call(&self, batch: usize, step: usize) -> Result<()> {
        for (name, m) in &self.masks {
            if let Some(b) = m.batch {
                if b != batch {
                    return Err(Error::Mask {
                        name: name.to_string(),
                        msg: format!(
                            "mask `{name}` is per sample for a batch of {b}; the input's batch \
                             is {batch}"
                        ),
                    });
                }
            }
            if let Some(s) = m.steps {
                if step >= s {
                    return Err(Error::Mask {
                        name: name.to_string(),
                        msg: format!("mask `{name}` has {s} steps; step {step} was asked for"),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Checks mask `m` under weight name `name` against a model's maskable weights `layers`.
fn check_layer(layers: &BTreeMap<String, Vec<usize>>, name: &str, m: &WeightMask) -> Result<()> {
    let Some(shape) = layers.get(name) else {
        let hint = if layers.contains_key(&format!("{name}.weight")) {
            format!(" (did you mean `{name}.weight`?)")
        } else {
            String::new()
        };
        return Err(Error::Mask {
            name: name.to_string(),
            msg: format!(
                "mask `{name}` names no linear or convolution weight of this model{hint}; \
                 masks are keyed by weight names such as `{}`",
                layers.keys().next().map_or("", String::as_str)
            ),
        });
    };
    m.check_weight(name, shape)
}
