//! Nearest-neighbour upsampling with PyTorch's index rule (`F.interpolate(mode="nearest")`).

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::tensor::{numel_of, try_zeroed_vec, Tensor};

/// Source index of output index `o` along an axis of `in_size` → `out_size`, as PyTorch computes
/// it: exact doubling is `o / 2`, anything else `min(floor(o * (in/out as f32)), in - 1)`.
fn src_index(o: usize, in_size: usize, out_size: usize) -> usize {
    if out_size == in_size {
        o
    } else if out_size == 2 * in_size {
        o / 2
    } else {
        let scale = in_size as f32 / out_size as f32;
        (((o as f32) * scale).floor() as usize).min(in_size - 1)
    }
}

/// `x`: [B, C, H, W] → [B, C, out_h, out_w]. Panics where `try_upsample_nearest` errs.
pub fn upsample_nearest(x: &Tensor, out_h: usize, out_w: usize) -> Tensor {
    try_upsample_nearest(x, out_h, out_w).unwrap_or_else(|e| panic!("{e}"))
}

/// As `upsample_nearest`; an input that is not rank 4, an empty input to a non-empty output,
/// and sizes that overflow are errors.
pub fn try_upsample_nearest(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let [b, c, h, w] = x.shape()[..] else {
        return Err(Error::shape(
            "upsample",
            format!("expected a rank-4 [B, C, H, W] tensor, got {:?}", x.shape()),
        ));
    };
    let n = numel_of(&[b, c, out_h, out_w], "upsample output")?;
    if n == 0 {
        return Ok(Tensor::from_parts([b, c, out_h, out_w], Vec::new()));
    }
    if h == 0 || w == 0 {
        return Err(Error::shape(
            "upsample",
            format!("an empty {h}×{w} image cannot be resized to {out_h}×{out_w}"),
        ));
    }
    // Inline for every width a U-Net upsamples to (a VAE's last levels spill to the heap).
    let cols: smallvec::SmallVec<[usize; 512]> =
        (0..out_w).map(|o| src_index(o, w, out_w)).collect();
    let mut out = try_zeroed_vec(n, "upsample output")?;
    out.par_chunks_mut(out_h * out_w)
        .zip(x.data().par_chunks(h * w))
        .for_each(|(o, plane)| {
            for (oy, row) in o.chunks_mut(out_w).enumerate() {
                let src = &plane[src_index(oy, h, out_h) * w..][..w];
                for (d, &ix) in row.iter_mut().zip(&cols) {
                    *d = src[ix];
                }
            }
        });
    Ok(Tensor::from_parts([b, c, out_h, out_w], out))
}
