//! GroupNorm (optionally followed by SiLU, the pair every resnet uses) and LayerNorm.
//! Statistics take two passes (mean, then squared deviations) with f32 lanes folded into f64, so
//! they are at least as accurate as PyTorch's f32 kernels.

use rayon::prelude::*;

use super::vector;
use crate::tensor::Tensor;

fn mean_rstd(xs: &[f32], eps: f32) -> (f32, f32) {
    let (mean, var) = vector::mean_var(xs);
    (mean, (1.0 / (var as f64 + eps as f64).sqrt()) as f32)
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
        c.is_multiple_of(groups),
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
                let g = gamma[c0 + j] * rstd;
                vector::normalize(xs, o, mean, g, beta[c0 + j], silu);
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
