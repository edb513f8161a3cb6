//! Reading and writing safetensors files. Every stored dtype a diffusers checkpoint or an input
//! file may use is widened to f32 here (integers exactly, up to 2^24), so the rest of the crate sees
//! one element type. The parser is safetensors' own, which validates the header and offsets; any
//! malformed or truncated file becomes an `Error::Safetensors`, never a panic.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A tensor read from a file, widened to f32, with the dtype it was stored in.
#[derive(Clone, Debug)]
pub struct StoredTensor {
    pub dtype: Dtype,
    pub tensor: Tensor,
}

pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// All tensors of a safetensors file, by name.
pub fn load(path: &Path) -> Result<BTreeMap<String, StoredTensor>> {
    let bytes = read_file(path)?;
    parse(&bytes, &path.display().to_string())
}

/// All tensors of an in-memory safetensors buffer; `origin` names it in errors.
pub fn parse(bytes: &[u8], origin: &str) -> Result<BTreeMap<String, StoredTensor>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors {
        origin: origin.to_string(),
        msg: e.to_string(),
    })?;
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
    let shape = view.shape().to_vec();
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
        Dtype::U8 | Dtype::BOOL => conv::<1>(bytes, |b| b[0] as f32),
        other => return Err(format!("unsupported dtype {other:?}")),
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
            let view = TensorView::new(Dtype::F32, shape.clone(), raw)
                .map_err(|e| Error::Msg(format!("cannot serialise tensor `{name}`: {e}")))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, &None)
        .map_err(|e| Error::Msg(format!("cannot serialise {}: {e}", path.display())))
}

/// Writes f32 tensors to a safetensors file, atomically (`output::write_file`).
pub fn save(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let buf = serialize(tensors, path)?;
    crate::output::write_file(path, |w| w.write_all(&buf).map_err(|e| Error::io(path, e)))
}
