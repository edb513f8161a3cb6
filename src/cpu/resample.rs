//! Nearest-neighbour upsampling with PyTorch's index rule (`F.interpolate(mode="nearest")`).

use rayon::prelude::*;

use crate::tensor::Tensor;

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

/// `x`: [B, C, H, W] → [B, C, out_h, out_w].
pub fn upsample_nearest(x: &Tensor, out_h: usize, out_w: usize) -> Tensor {
    let [b, c, h, w] = x.shape()[..] else {
        panic!("upsample: rank 4")
    };
    let cols: Vec<usize> = (0..out_w).map(|o| src_index(o, w, out_w)).collect();
    let mut out = vec![0.0f32; b * c * out_h * out_w];
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
    Tensor::from_parts(vec![b, c, out_h, out_w], out)
}
