//! Reading and writing safetensors files. Every stored dtype a diffusers checkpoint or an input
//! file may use is widened to f32 here (integers exactly, up to 2^24), so the rest of the crate sees
//! one element type.
//!
//! Before safetensors' own parser sees a buffer, `check_layout` walks the header with checked
//! arithmetic and says in plain words what is wrong (the header length, the JSON, a tensor's
//! dtype, shape or offsets, overlapping or missing data, a truncated file), naming the tensor;
//! any malformed or truncated file becomes an `Error::Safetensors`, never a panic, and never one
//! of the parser's enum names.
//!
//! `first_non_finite` and `non_finite_words` are the finiteness check every loader (weights,
//! inputs) and the forward's block-boundary checks share.

use std::collections::BTreeMap;
use std::path::Path;

use std::sync::Arc;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, Result};
use crate::tensor::{HalfType, Mapping, Tensor};

/// A tensor read from a file, widened to f32, with the dtype it was stored in.
#[derive(Clone, Debug)]
pub struct StoredTensor {
    /// The safetensors dtype it was stored in.
    pub dtype: Dtype,
    /// The values, widened to f32 (16-bit ones kept as stored where asked).
    pub tensor: Tensor,
}

/// The bytes of `path`, or an `Error::Io` naming it.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// A file as a read-only memory map, shared with every other live map of the same file (same
/// device, inode, size and modification time): two loads of one checkpoint share its pages.
///
/// Like safetensors' and PyTorch's own loaders, this relies on nobody truncating the file while
/// it is mapped (the process would get SIGBUS); a file replaced by rename, as this crate writes
/// its outputs, is safe.
pub fn map_file(path: &Path) -> Result<Arc<Mapping>> {
    use std::sync::{Mutex, Weak};
    type Key = (u64, u64, u64, i64, i64);
    static LIVE: Mutex<Vec<(Key, Weak<Mapping>)>> = Mutex::new(Vec::new());
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::not_found(
            path.display().to_string(),
            format!("{} is not a file", path.display()),
        ));
    }
    #[cfg(unix)]
    let key: Key = {
        use std::os::unix::fs::MetadataExt;
        (
            meta.dev(),
            meta.ino(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec(),
        )
    };
    #[cfg(not(unix))]
    let key: Key = (
        0,
        crate::rng::fnv1a(path.to_string_lossy().as_bytes()),
        meta.len(),
        0,
        0,
    );
    let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    live.retain(|(_, w)| w.strong_count() > 0);
    if let Some(map) = live
        .iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, w)| w.upgrade())
    {
        return Ok(map);
    }
    let map = if meta.len() == 0 {
        // An empty file cannot be mapped; its (absent) bytes are reported by the parser.
        Mapping::Bytes(Vec::new())
    } else {
        // SAFETY: the map is read-only; see the function's note on truncation.
        Mapping::File(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?)
    };
    let map = Arc::new(map);
    live.push((key, Arc::downgrade(&map)));
    Ok(map)
}

/// All tensors of a safetensors file, by name, from its memory map: f32 tensors read in place
/// (`Tensor::from_mapped_f32`), the others widened one at a time with their pages released after,
/// so a load never holds two copies of the weights.
pub fn load(path: &Path) -> Result<BTreeMap<String, StoredTensor>> {
    load_keeping(path, None)
}

/// As `load`, keeping f16 or bf16 tensors of type `keep` as stored (`Tensor::stored_half`) for a
/// device that computes in that type.
pub fn load_keeping(path: &Path, keep: Option<HalfType>) -> Result<BTreeMap<String, StoredTensor>> {
    load_reporting(path, keep, &mut |_| {})
}

/// As `load_keeping`, calling `loaded` with each tensor's stored bytes once it is built (a
/// progress bar's feed).
pub fn load_reporting(
    path: &Path,
    keep: Option<HalfType>,
    loaded: &mut dyn FnMut(u64),
) -> Result<BTreeMap<String, StoredTensor>> {
    let map = map_file(path)?;
    let origin = path.display().to_string();
    let st = deserialize(&map, &origin)?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let raw = view.data();
        let start = raw.as_ptr() as usize - map.as_ptr() as usize;
        let bytes = start..start + raw.len();
        let shape = crate::Shape::from(view.shape());
        let half = match view.dtype() {
            Dtype::F16 => Some(HalfType::F16),
            Dtype::BF16 => Some(HalfType::BF16),
            _ => None,
        };
        let tensor = match (view.dtype(), half) {
            (Dtype::F32, _) => Tensor::from_mapped_f32(shape, &map, bytes),
            (_, Some(h)) => Tensor::from_mapped_half(shape, &map, bytes, h, keep == Some(h)),
            _ => widen(&view).map_err(|msg| Error::Safetensors {
                origin: origin.clone(),
                msg: format!("tensor `{name}`: {msg}"),
            }),
        }?;
        loaded(raw.len() as u64);
        out.insert(
            name,
            StoredTensor {
                dtype: view.dtype(),
                tensor,
            },
        );
    }
    Ok(out)
}

/// All tensors of an in-memory safetensors buffer; `origin` names it in errors.
pub fn parse(bytes: &[u8], origin: &str) -> Result<BTreeMap<String, StoredTensor>> {
    let st = deserialize(bytes, origin)?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let tensor = widen(&view).map_err(|msg| Error::Safetensors {
            origin: origin.to_string(),
            msg: format!("tensor `{name}`: {msg}"),
        })?;
        out.insert(
            name,
            StoredTensor {
                dtype: view.dtype(),
                tensor,
            },
        );
    }
    Ok(out)
}

fn widen(view: &TensorView<'_>) -> std::result::Result<Tensor, String> {
    let bytes = view.data();
    let shape = crate::Shape::from(view.shape());
    fn conv<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        bytes
            .chunks_exact(N)
            .map(|c| f(c.try_into().expect("chunks_exact")))
            .collect()
    }
    let data = match view.dtype() {
        Dtype::F32 => conv::<4>(bytes, f32::from_le_bytes),
        Dtype::F16 => conv::<2>(bytes, |b| half::f16::from_le_bytes(b).to_f32()),
        Dtype::BF16 => conv::<2>(bytes, |b| half::bf16::from_le_bytes(b).to_f32()),
        Dtype::F64 => conv::<8>(bytes, |b| f64::from_le_bytes(b) as f32),
        Dtype::I64 => conv::<8>(bytes, |b| i64::from_le_bytes(b) as f32),
        Dtype::I32 => conv::<4>(bytes, |b| i32::from_le_bytes(b) as f32),
        Dtype::I16 => conv::<2>(bytes, |b| i16::from_le_bytes(b) as f32),
        Dtype::I8 => conv::<1>(bytes, |b| b[0] as i8 as f32),
        Dtype::U64 => conv::<8>(bytes, |b| u64::from_le_bytes(b) as f32),
        Dtype::U32 => conv::<4>(bytes, |b| u32::from_le_bytes(b) as f32),
        Dtype::U16 => conv::<2>(bytes, |b| u16::from_le_bytes(b) as f32),
        Dtype::U8 | Dtype::BOOL => conv::<1>(bytes, |b| b[0] as f32),
        other => {
            return Err(format!(
                "dtype {other:?} is not read here (floating point F64, F32, F16, BF16, \
                 integers and BOOL are)"
            ))
        }
    };
    Tensor::new(shape, data).map_err(|e| e.to_string())
}

/// f32 tensors as the bytes of a safetensors file (`path` names it in messages).
pub fn serialize(tensors: &[(&str, &Tensor)], path: &Path) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(name, t)| {
            let raw: &[u8] = bytemuck::cast_slice(t.data());
            (name.to_string(), raw.to_vec(), t.shape().to_vec())
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, raw, shape)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), raw).map_err(|e| {
                Error::Safetensors {
                    origin: path.display().to_string(),
                    msg: format!("cannot serialise tensor `{name}`: {e}"),
                }
            })?;
            Ok((name.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, &None).map_err(|e| Error::Safetensors {
        origin: path.display().to_string(),
        msg: format!("cannot serialise: {e}"),
    })
}

/// Writes f32 tensors to a safetensors file, atomically (`output::write_file`).
pub fn save(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let buf = serialize(tensors, path)?;
    crate::output::write_file(path, |w| w.write_all(&buf).map_err(|e| Error::io(path, e)))
}

/// The largest header safetensors reads.
const MAX_HEADER: u64 = 100_000_000;

/// Parses a safetensors buffer after `check_layout`; `origin` names it in errors.
pub fn deserialize<'a>(bytes: &'a [u8], origin: &str) -> Result<SafeTensors<'a>> {
    let bad = |msg: String| Error::Safetensors {
        origin: origin.to_string(),
        msg,
    };
    check_layout(bytes).map_err(bad)?;
    SafeTensors::deserialize(bytes).map_err(|e| bad(describe(&e)))
}

/// `n` with thousands separators: 1,000,000.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn bytes_words(n: u64) -> String {
    if n == 1 {
        "1 byte".into()
    } else {
        format!("{} bytes", grouped(n))
    }
}

/// The size of one element of a safetensors dtype name, or None for a name safetensors lacks.
fn dtype_size(name: &str) -> Option<u64> {
    Some(match name {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// One tensor's header entry: (name, begin, end).
type Entry<'a> = (&'a str, u64, u64);

/// Checks everything safetensors checks of a buffer (header length, UTF-8, JSON, each tensor's
/// dtype, shape and offsets, tensors stored back to back and covering the data exactly), with
/// checked arithmetic, and says what is wrong in plain words.
pub fn check_layout(bytes: &[u8]) -> std::result::Result<(), String> {
    let len = bytes.len() as u64;
    let Some(prefix) = bytes.get(..8) else {
        return Err(format!(
            "the file is {} long; a safetensors file starts with an 8-byte header length",
            bytes_words(len)
        ));
    };
    let n = u64::from_le_bytes(prefix.try_into().expect("8 bytes"));
    if n > MAX_HEADER {
        return Err(format!(
            "its first 8 bytes say the header is {} long, more than the {} a safetensors \
             header may have (is it a safetensors file?)",
            bytes_words(n),
            bytes_words(MAX_HEADER)
        ));
    }
    if n > len - 8 {
        return Err(format!(
            "the header is said to be {} long but the file has only {} after the length \
             (is it truncated?)",
            bytes_words(n),
            bytes_words(len - 8)
        ));
    }
    let header = &bytes[8..8 + n as usize];
    let text = std::str::from_utf8(header).map_err(|e| {
        format!(
            "the header is not valid UTF-8 text (at byte {} of the header)",
            grouped(e.valid_up_to() as u64)
        )
    })?;
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the header is not valid JSON ({e})"))?;
    let serde_json::Value::Object(map) = json else {
        return Err("the header is not a JSON object mapping tensor names to entries".into());
    };
    let mut entries: Vec<Entry> = Vec::with_capacity(map.len());
    for (name, v) in &map {
        if name == "__metadata__" {
            match v {
                serde_json::Value::Object(m) if m.values().all(serde_json::Value::is_string) => {
                    continue
                }
                _ => {
                    return Err(
                        "the header's `__metadata__` is not an object of strings".to_string()
                    )
                }
            }
        }
        let bad = |what: &str| format!("tensor `{name}`: {what}");
        let obj = v
            .as_object()
            .ok_or_else(|| bad("its header entry is not an object"))?;
        let dtype = obj
            .get("dtype")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| bad("its header entry has no `dtype` string"))?;
        let size = dtype_size(dtype).ok_or_else(|| bad(&format!("unknown dtype `{dtype}`")))?;
        let shape: Vec<u64> = obj
            .get("shape")
            .and_then(serde_json::Value::as_array)
            .and_then(|a| a.iter().map(serde_json::Value::as_u64).collect())
            .ok_or_else(|| bad("its `shape` is not a list of non-negative integers"))?;
        let offsets: Vec<u64> = obj
            .get("data_offsets")
            .and_then(serde_json::Value::as_array)
            .and_then(|a| a.iter().map(serde_json::Value::as_u64).collect())
            .filter(|o: &Vec<u64>| o.len() == 2)
            .ok_or_else(|| {
                bad("its `data_offsets` are not two non-negative integers [begin, end]")
            })?;
        let (begin, end) = (offsets[0], offsets[1]);
        if end < begin {
            return Err(bad(&format!(
                "its data_offsets [{begin}, {end}] end before they begin"
            )));
        }
        let need = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|numel| numel.checked_mul(size))
            .filter(|&b| usize::try_from(b).is_ok())
            .ok_or_else(|| bad(&format!("shape {shape:?} is too large to address")))?;
        if end - begin != need {
            return Err(bad(&format!(
                "shape {shape:?} of {dtype} needs {} but its data_offsets [{begin}, {end}] hold {}",
                bytes_words(need),
                bytes_words(end - begin)
            )));
        }
        entries.push((name, begin, end));
    }
    entries.sort_by_key(|&(name, b, e)| (b, e, name));
    let mut pos = 0u64;
    let mut prev: Option<Entry> = None;
    for &(name, begin, end) in &entries {
        if begin < pos {
            let (p, pb, pe) = prev.expect("pos > 0 only after an entry");
            return Err(format!(
                "the data of tensors `{p}` (bytes {pb}..{pe}) and `{name}` (bytes \
                 {begin}..{end}) overlap"
            ));
        }
        if begin > pos {
            return Err(format!(
                "{} before tensor `{name}`'s data belong to no tensor (safetensors stores \
                 tensors back to back)",
                bytes_words(begin - pos)
            ));
        }
        pos = end;
        prev = Some((name, begin, end));
    }
    let data = len - 8 - n;
    if pos > data {
        return Err(format!(
            "the header says {} of tensor data but the file has {} after the header \
             (is it truncated?)",
            bytes_words(pos),
            grouped(data)
        ));
    }
    if pos < data {
        return Err(format!(
            "the file has {} after the last tensor's data that belong to no tensor",
            bytes_words(data - pos)
        ));
    }
    Ok(())
}

/// safetensors' errors in words (`check_layout` reports all of these first; this is the
/// fallback should the parser refuse something it let through).
fn describe(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::InvalidHeader => "the header is not valid UTF-8 text".into(),
        E::InvalidHeaderStart => "the header does not start with `{`".into(),
        E::InvalidHeaderDeserialization => {
            "the header is not valid JSON, or not a safetensors header".into()
        }
        E::HeaderTooLarge => "the header is larger than safetensors allows".into(),
        E::HeaderTooSmall => "the file is shorter than the 8-byte header length".into(),
        E::InvalidHeaderLength => "the header length is larger than the file".into(),
        E::TensorNotFound(name) => format!("there is no tensor `{name}`"),
        E::TensorInvalidInfo => {
            "a tensor's shape and dtype do not match the size of its data".into()
        }
        E::InvalidOffset(name) => {
            format!("tensor `{name}`'s data offsets do not follow the previous tensor's data")
        }
        E::IoError(e) => format!("cannot be read: {e}"),
        E::JsonError(e) => format!("the header is not valid JSON ({e})"),
        E::InvalidTensorView(dtype, shape, n) => format!(
            "a tensor of shape {shape:?} and dtype {dtype:?} cannot hold {}",
            bytes_words(*n as u64)
        ),
        E::MetadataIncompleteBuffer => {
            "the tensors' data does not cover the file exactly (truncated or padded)".into()
        }
        E::ValidationOverflow => "a tensor's shape is too large to address".into(),
    }
}

/// The first NaN or infinity of `data`: (flat index, value).
pub fn first_non_finite(data: &[f32]) -> Option<(usize, f32)> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    // A branch-free pass per block of 256 (it vectorises), the position only in a bad block.
    let scan = |c: &[f32]| {
        let (bi, block) = c
            .chunks(256)
            .enumerate()
            .find(|(_, b)| !b.iter().fold(true, |ok, v| ok & v.is_finite()))?;
        Some(bi * 256 + block.iter().position(|v| !v.is_finite())?)
    };
    let i = if data.len() <= CHUNK {
        scan(data)?
    } else {
        let (ci, j) = data
            .par_chunks(CHUNK)
            .enumerate()
            .find_map_first(|(ci, c)| scan(c).map(|j| (ci, j)))?;
        ci * CHUNK + j
    };
    Some((i, data[i]))
}

/// The index `[0, 2, 1]` of flat index `i` in a row-major tensor of `shape`.
pub fn index_of(shape: &[usize], i: usize) -> Vec<usize> {
    let mut idx = vec![0usize; shape.len()];
    let mut rest = i;
    for (k, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[k] = rest % d;
            rest /= d;
        }
    }
    idx
}

/// "NaN at index [0, 2, 1]" for the flat index `i` of a tensor of `shape`.
pub fn non_finite_words(shape: &[usize], (i, v): (usize, f32)) -> String {
    let idx = index_of(shape, i);
    let what = if v.is_nan() {
        "NaN"
    } else if v > 0.0 {
        "+inf"
    } else {
        "-inf"
    };
    format!("{what} at index {idx:?}")
}

/// Refuses a non-finite tensor: `Err` with `non_finite_words` of its first bad element. A
/// tensor kept in its stored 16-bit type is checked on its bits (it stays unwidened).
pub fn check_finite(t: &Tensor) -> std::result::Result<(), String> {
    if let Some((dtype, raw)) = t.stored_half() {
        let bad = raw
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .position(|bits| dtype.is_non_finite(bits));
        return match bad {
            Some(i) => {
                let v = dtype.to_f32(u16::from_le_bytes([raw[2 * i], raw[2 * i + 1]]));
                Err(non_finite_words(t.shape(), (i, v)))
            }
            None => Ok(()),
        };
    }
    match first_non_finite(t.data()) {
        Some(bad) => Err(non_finite_words(t.shape(), bad)),
        None => Ok(()),
    }
}
