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

/// `dst` (cols × rows) = transpose of `src` (rows × cols): in parallel bands of 16 rows of
/// `dst`, each moved 16 × 16 at a time through the register transpose where the CPU has
/// AVX-512F.
fn transpose(src: &[f32], dst: &mut [f32], rows: usize, cols: usize) {
    dst.par_chunks_mut(16 * rows)
        .enumerate()
        .for_each(|(band, d)| {
            let c0 = 16 * band;
            #[cfg(target_arch = "x86_64")]
            if super::switch::avx512f() {
                // SAFETY: AVX-512F is available; `d` holds dst rows c0.. (16, or fewer at the
                // end), and `src` is rows × cols.
                unsafe { transpose_band(src, d, rows, cols, c0) };
                return;
            }
            for (j, row) in d.chunks_mut(rows).enumerate() {
                for (r, v) in row.iter_mut().enumerate() {
                    *v = src[r * cols + c0 + j];
                }
            }
        });
}

/// Rows c0..c0+16 (at most) of the transpose, into `d`.
///
/// # Safety
/// AVX-512F; `src` holds rows × cols values and `d` min(16, cols − c0) · rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_band(src: &[f32], d: &mut [f32], rows: usize, cols: usize, c0: usize) {
    use super::avx512::{lane_mask, transpose16};
    use std::arch::x86_64::*;
    let nc = (cols - c0).min(16);
    let (cmask, s, dp) = (lane_mask(nc), src.as_ptr(), d.as_mut_ptr());
    for r0 in (0..rows).step_by(16) {
        let nr = (rows - r0).min(16);
        let mut t = [_mm512_setzero_ps(); 16];
        for (i, t) in t.iter_mut().enumerate().take(nr) {
            // SAFETY: row r0+i, columns c0..c0+nc of `src`.
            *t = unsafe { _mm512_maskz_loadu_ps(cmask, s.add((r0 + i) * cols + c0)) };
        }
        let rmask = lane_mask(nr);
        for (j, v) in transpose16(&t).iter().enumerate().take(nc) {
            // SAFETY: row j, columns r0..r0+nr of `d`.
            unsafe { _mm512_mask_storeu_ps(dp.add(j * rows + r0), rmask, *v) };
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
