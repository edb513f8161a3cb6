//! Moving data between the NCHW image layout and the [B, tokens, channels] sequence layout that
//! attention works in, channel concatenation, and elementwise residual adds.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::tensor::{try_zeroed_vec, Tensor};

fn layout_error(what: &str, msg: String) -> Error {
    Error::shape(what, msg)
}

/// [B, C, H, W] → [B, H·W, C]. Panics where `try_nchw_to_nlc` errs.
pub fn nchw_to_nlc(x: &Tensor) -> Tensor {
    try_nchw_to_nlc(x).unwrap_or_else(|e| panic!("{e}"))
}

/// As `nchw_to_nlc`; a tensor that is not rank 4 is an error.
pub fn try_nchw_to_nlc(x: &Tensor) -> Result<Tensor> {
    let [b, c, h, w] = x.shape()[..] else {
        return Err(layout_error(
            "image to tokens",
            format!("expected a rank-4 [B, C, H, W] tensor, got {:?}", x.shape()),
        ));
    };
    let hw = h * w;
    let mut out = try_zeroed_vec(x.numel(), "image to tokens")?;
    if out.is_empty() {
        return Ok(Tensor::from_parts([b, hw, c], out));
    }
    out.par_chunks_mut(hw * c)
        .zip(x.data().par_chunks(c * hw))
        .for_each(|(o, xs)| transpose(xs, o, c, hw));
    Ok(Tensor::from_parts([b, hw, c], out))
}

/// [B, H·W, C] → [B, C, H, W]. Panics where `try_nlc_to_nchw` errs.
pub fn nlc_to_nchw(x: &Tensor, h: usize, w: usize) -> Tensor {
    try_nlc_to_nchw(x, h, w).unwrap_or_else(|e| panic!("{e}"))
}

/// As `nlc_to_nchw`; a tensor that is not [B, h·w, C] is an error.
pub fn try_nlc_to_nchw(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let shape_ok = match x.shape() {
        [_, hw, _] => h.checked_mul(w) == Some(*hw),
        _ => false,
    };
    let [b, hw, c] = x.shape()[..] else {
        return Err(layout_error(
            "tokens to image",
            format!(
                "expected a rank-3 [B, {h}·{w}, C] tensor, got {:?}",
                x.shape()
            ),
        ));
    };
    if !shape_ok {
        return Err(layout_error(
            "tokens to image",
            format!("{:?} does not hold {h}×{w} = H·W tokens", x.shape()),
        ));
    }
    let mut out = try_zeroed_vec(x.numel(), "tokens to image")?;
    if out.is_empty() {
        return Ok(Tensor::from_parts([b, c, h, w], out));
    }
    out.par_chunks_mut(c * hw)
        .zip(x.data().par_chunks(hw * c))
        .for_each(|(o, xs)| transpose(xs, o, hw, c));
    Ok(Tensor::from_parts([b, c, h, w], out))
}

/// `dst` (cols × rows) = transpose of `src` (rows × cols), in cache-sized tiles.
fn transpose(src: &[f32], dst: &mut [f32], rows: usize, cols: usize) {
    const T: usize = 32;
    for r0 in (0..rows).step_by(T) {
        for c0 in (0..cols).step_by(T) {
            for r in r0..(r0 + T).min(rows) {
                for c in c0..(c0 + T).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}

/// Concatenates [B, Ca, H, W] and [B, Cb, H, W] along channels. Panics where
/// `try_cat_channels` errs.
pub fn cat_channels(a: &Tensor, b: &Tensor) -> Tensor {
    try_cat_channels(a, b).unwrap_or_else(|e| panic!("{e}"))
}

/// As `cat_channels`; tensors that are not rank 4 or differ in batch, H or W are an error
/// naming both shapes.
pub fn try_cat_channels(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (n, ca, h, w, cb) = match (a.shape(), b.shape()) {
        (&[n, ca, h, w], &[nb, cb, hb, wb]) if (nb, hb, wb) == (n, h, w) => (n, ca, h, w, cb),
        (sa, sb) => {
            return Err(layout_error(
                "channel concatenation",
                format!("{sa:?} and {sb:?} must both be [B, C, H, W] with the same B, H and W"),
            ))
        }
    };
    let (sa, sb) = (ca * h * w, cb * h * w);
    let total = crate::tensor::numel_of(&[n, ca + cb, h, w], "channel concatenation")?;
    if sa == 0 || sb == 0 {
        // One side has no channels: the result is the other side's data.
        let data = crate::tensor::try_copy(
            if sa == 0 { b.data() } else { a.data() },
            "channel concatenation",
        )?;
        return Ok(Tensor::from_parts([n, ca + cb, h, w], data));
    }
    let mut out = try_zeroed_vec(total, "channel concatenation")?;
    out.par_chunks_mut(sa + sb)
        .zip(a.data().par_chunks(sa).zip(b.data().par_chunks(sb)))
        .for_each(|(o, (xa, xb))| {
            o[..sa].copy_from_slice(xa);
            o[sa..].copy_from_slice(xb);
        });
    Ok(Tensor::from_parts([n, ca + cb, h, w], out))
}

/// `acc += x`, elementwise, then `acc *= scale` when `scale != 1`. Panics where
/// `try_add_inplace` errs.
pub fn add_inplace(acc: &mut Tensor, x: &Tensor, scale: f32) {
    try_add_inplace(acc, x, scale).unwrap_or_else(|e| panic!("{e}"))
}

/// As `add_inplace`; different shapes are an error naming both.
pub fn try_add_inplace(acc: &mut Tensor, x: &Tensor, scale: f32) -> Result<()> {
    if acc.shape() != x.shape() {
        return Err(layout_error(
            "elementwise add",
            format!("shapes {:?} and {:?} differ", acc.shape(), x.shape()),
        ));
    }
    acc.data_mut()
        .par_chunks_mut(1 << 14)
        .zip(x.data().par_chunks(1 << 14))
        .for_each(|(a, x)| {
            for (a, &x) in a.iter_mut().zip(x) {
                *a += x;
                if scale != 1.0 {
                    *a *= scale;
                }
            }
        });
    Ok(())
}
