//! GroupNorm (optionally followed by SiLU, the pair every resnet uses) and LayerNorm.
//! Statistics are accumulated in f64 (two passes), so the result is at least as accurate as
//! PyTorch's f32 kernels and the comparison tolerance is spent elsewhere.

use rayon::prelude::*;

use super::activation::silu_scalar;
use crate::tensor::Tensor;

fn mean_rstd(xs: &[f32], eps: f32) -> (f32, f32) {
    let n = xs.len() as f64;
    let mean = xs.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = xs
        .iter()
        .map(|&v| {
            let d = v as f64 - mean;
            d * d
        })
        .sum::<f64>()
        / n;
    (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
}

/// `x`: [B, C, ...]; normalises each of `groups` channel groups per sample, then applies the
/// per-channel affine, then SiLU when `silu`.
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    silu: bool,
) -> Tensor {
    let c = x.shape()[1];
    let spatial: usize = x.shape()[2..].iter().product();
    assert!(
        c % groups == 0,
        "group_norm: {c} channels in {groups} groups"
    );
    let cg = c / groups;
    let mut out = vec![0.0f32; x.numel()];
    out.par_chunks_mut(cg * spatial)
        .zip(x.data().par_chunks(cg * spatial))
        .enumerate()
        .for_each(|(i, (o, xs))| {
            let (mean, rstd) = mean_rstd(xs, eps);
            let c0 = (i % groups) * cg;
            for (j, (o, xs)) in o.chunks_mut(spatial).zip(xs.chunks(spatial)).enumerate() {
                let (g, bb) = (gamma[c0 + j] * rstd, beta[c0 + j]);
                for (o, &v) in o.iter_mut().zip(xs) {
                    let y = (v - mean) * g + bb;
                    *o = if silu { silu_scalar(y) } else { y };
                }
            }
        });
    Tensor::from_parts(x.shape().to_vec(), out)
}

/// LayerNorm over the last dimension.
pub fn layer_norm(x: &Tensor, gamma: &[f32], beta: &[f32], eps: f32) -> Tensor {
    let d = *x.shape().last().unwrap();
    let mut out = vec![0.0f32; x.numel()];
    out.par_chunks_mut(d)
        .zip(x.data().par_chunks(d))
        .for_each(|(o, xs)| {
            let (mean, rstd) = mean_rstd(xs, eps);
            for (((o, &v), &g), &b) in o.iter_mut().zip(xs).zip(gamma).zip(beta) {
                *o = (v - mean) * rstd * g + b;
            }
        });
    Tensor::from_parts(x.shape().to_vec(), out)
}
