//! Pointwise activations, computed as PyTorch does in f32 (GELU is the exact erf form).

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::tensor::{try_zeroed_vec, Tensor};

const PAR_CHUNK: usize = 1 << 14;

pub use super::vector::silu as silu_scalar;

/// Exact GELU, `x · Φ(x)` with the erf form of Φ (PyTorch's default `approximate="none"`), by
/// `vector::gelu` (within a few 1e-7 relative).
#[inline]
pub fn gelu_scalar(x: f32) -> f32 {
    super::vector::gelu(x)
}

/// transformers' `quick_gelu`, `x · sigmoid(1.702 · x)` (CLIP's original activation).
#[inline]
pub fn quick_gelu_scalar(x: f32) -> f32 {
    x / (1.0 + (-1.702 * x).exp())
}

/// `act` of every element, allocated fallibly.
pub fn try_activation(x: &Tensor, act: crate::backend::Activation) -> Result<Tensor> {
    let mut y = x.try_clone()?;
    let chunks = y.data_mut().par_chunks_mut(PAR_CHUNK);
    match act {
        crate::backend::Activation::Gelu => chunks.for_each(super::vector::gelu_slice),
        crate::backend::Activation::QuickGelu => {
            chunks.for_each(|c| c.iter_mut().for_each(|v| *v = quick_gelu_scalar(*v)))
        }
    }
    Ok(y)
}

/// SiLU, `x · sigmoid(x)`, of every value in place (in parallel chunks).
pub fn silu_inplace(data: &mut [f32]) {
    data.par_chunks_mut(PAR_CHUNK)
        .for_each(super::vector::silu_slice);
}

/// SiLU of every element (aborts where a copy cannot be allocated: use `try_silu`).
pub fn silu(x: &Tensor) -> Tensor {
    let mut y = x.clone();
    silu_inplace(y.data_mut());
    y
}

/// As `silu`, allocated fallibly.
pub fn try_silu(x: &Tensor) -> Result<Tensor> {
    let mut y = x.try_clone()?;
    silu_inplace(y.data_mut());
    Ok(y)
}

/// Exact GELU of every element.
pub fn gelu(x: &Tensor) -> Tensor {
    let mut y = x.clone();
    y.data_mut()
        .par_chunks_mut(PAR_CHUNK)
        .for_each(super::vector::gelu_slice);
    y
}

/// diffusers' GEGLU after its projection: `x` is [..., 2·d]; returns `x[..., :d] * gelu(x[..., d:])`.
/// Panics where `try_geglu` errs.
pub fn geglu(x: &Tensor) -> Tensor {
    try_geglu(x).unwrap_or_else(|e| panic!("{e}"))
}

/// As `geglu`; a last dimension that is not even and positive is an error.
pub fn try_geglu(x: &Tensor) -> Result<Tensor> {
    let two_d = match x.shape().last() {
        Some(&n) if n > 0 && n % 2 == 0 => n,
        _ => {
            return Err(Error::shape(
                "geglu",
                format!(
                    "the last dimension must be even and positive, got shape {:?}",
                    x.shape()
                ),
            ))
        }
    };
    let d = two_d / 2;
    let rows = x.numel() / two_d;
    let mut shape = crate::Shape::from(x.shape());
    *shape.last_mut().expect("rank ≥ 1") = d;
    let mut out = try_zeroed_vec(rows * d, "geglu output")?;
    if out.is_empty() {
        return Ok(Tensor::from_parts(shape, out));
    }
    out.par_chunks_mut(d)
        .zip(x.data().par_chunks(two_d))
        .for_each(|(o, row)| {
            let (h, gate) = row.split_at(d);
            super::vector::geglu_row(o, h, gate);
        });
    Ok(Tensor::from_parts(shape, out))
}
