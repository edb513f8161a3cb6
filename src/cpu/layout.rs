//! Moving data between the NCHW image layout and the [B, tokens, channels] sequence layout that
//! attention works in, channel concatenation, and elementwise residual adds.

use rayon::prelude::*;

use crate::tensor::Tensor;

/// [B, C, H, W] → [B, H·W, C].
pub fn nchw_to_nlc(x: &Tensor) -> Tensor {
    let [b, c, h, w] = x.shape()[..] else {
        panic!("nchw_to_nlc: rank 4")
    };
    let hw = h * w;
    let mut out = vec![0.0f32; x.numel()];
    out.par_chunks_mut(hw * c)
        .zip(x.data().par_chunks(c * hw))
        .for_each(|(o, xs)| transpose(xs, o, c, hw));
    Tensor::from_parts(vec![b, hw, c], out)
}

/// [B, H·W, C] → [B, C, H, W].
pub fn nlc_to_nchw(x: &Tensor, h: usize, w: usize) -> Tensor {
    let [b, hw, c] = x.shape()[..] else {
        panic!("nlc_to_nchw: rank 3")
    };
    assert_eq!(hw, h * w);
    let mut out = vec![0.0f32; x.numel()];
    out.par_chunks_mut(c * hw)
        .zip(x.data().par_chunks(hw * c))
        .for_each(|(o, xs)| transpose(xs, o, hw, c));
    Tensor::from_parts(vec![b, c, h, w], out)
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

/// Concatenates [B, Ca, H, W] and [B, Cb, H, W] along channels.
pub fn cat_channels(a: &Tensor, b: &Tensor) -> Tensor {
    let [n, ca, h, w] = a.shape()[..] else {
        panic!("cat: rank 4")
    };
    let cb = b.shape()[1];
    assert_eq!((b.shape()[0], b.shape()[2], b.shape()[3]), (n, h, w));
    let (sa, sb) = (ca * h * w, cb * h * w);
    let mut out = vec![0.0f32; n * (sa + sb)];
    out.par_chunks_mut(sa + sb)
        .zip(a.data().par_chunks(sa).zip(b.data().par_chunks(sb)))
        .for_each(|(o, (xa, xb))| {
            o[..sa].copy_from_slice(xa);
            o[sa..].copy_from_slice(xb);
        });
    Tensor::from_parts(vec![n, ca + cb, h, w], out)
}

/// `acc += x`, elementwise, then `acc *= scale` when `scale != 1`.
pub fn add_inplace(acc: &mut Tensor, x: &Tensor, scale: f32) {
    assert_eq!(acc.shape(), x.shape(), "add: shapes");
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
}
