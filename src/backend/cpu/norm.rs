//! GroupNorm (optionally followed by SiLU, the pair every resnet uses) and LayerNorm.
//! Statistics take two passes (mean, then squared deviations) with f32 lanes folded into f64, so
//! they are at least as accurate as PyTorch's f32 kernels.

use rayon::prelude::*;

use super::vector;
use crate::error::{Error, Result};
use crate::tensor::{try_zeroed_vec, Tensor};

fn mean_rstd(xs: &[f32], eps: f32) -> (f32, f32) {
    let (mean, var) = vector::mean_var(xs);
    (mean, (1.0 / (var as f64 + eps as f64).sqrt()) as f32)
}

/// `x`: [B, C, ...]; normalises each of `groups` channel groups per sample, then applies the
/// per-channel affine, then SiLU when `silu`. Panics where `try_group_norm` errs.
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    silu: bool,
) -> Tensor {
    try_group_norm(x, groups, gamma, beta, eps, silu).unwrap_or_else(|e| panic!("{e}"))
}

/// As `group_norm`; shapes that do not agree and memory that cannot be had are errors.
pub fn try_group_norm(
    x: &Tensor,
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    silu: bool,
) -> Result<Tensor> {
    let bad = |msg: String| Err(Error::shape("group_norm", msg));
    if x.rank() < 2 {
        return bad(format!("input must be [B, C, ...], got {:?}", x.shape()));
    }
    let c = x.shape()[1];
    let spatial: usize = x.shape()[2..].iter().product();
    if groups == 0 || !c.is_multiple_of(groups) {
        return bad(format!("{c} channels cannot be split into {groups} groups"));
    }
    if gamma.len() != c || beta.len() != c {
        return bad(format!(
            "{} scales and {} shifts for {c} channels",
            gamma.len(),
            beta.len()
        ));
    }
    let cg = c / groups;
    let mut out = try_zeroed_vec(x.numel(), "group_norm output")?;
    if out.is_empty() {
        return Ok(Tensor::from_parts(x.shape(), out));
    }
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
    Ok(Tensor::from_parts(x.shape(), out))
}

/// LayerNorm over the last dimension. Panics where `try_layer_norm` errs.
pub fn layer_norm(x: &Tensor, gamma: &[f32], beta: &[f32], eps: f32) -> Tensor {
    try_layer_norm(x, gamma, beta, eps).unwrap_or_else(|e| panic!("{e}"))
}

/// As `layer_norm`; shapes that do not agree and memory that cannot be had are errors.
pub fn try_layer_norm(x: &Tensor, gamma: &[f32], beta: &[f32], eps: f32) -> Result<Tensor> {
    let Some(&d) = x.shape().last() else {
        return Err(Error::shape("layer_norm", "a rank-0 input"));
    };
    if gamma.len() != d || beta.len() != d {
        return Err(Error::shape(
            "layer_norm",
            format!(
                "{} scales and {} shifts for an input of shape {:?}",
                gamma.len(),
                beta.len(),
                x.shape()
            ),
        ));
    }
    let mut out = try_zeroed_vec(x.numel(), "layer_norm output")?;
    if out.is_empty() {
        return Ok(Tensor::from_parts(x.shape(), out));
    }
    out.par_chunks_mut(d)
        .zip(x.data().par_chunks(d))
        .for_each(|(o, xs)| {
            let (mean, rstd) = mean_rstd(xs, eps);
            for (((o, &v), &g), &b) in o.iter_mut().zip(xs).zip(gamma).zip(beta) {
                *o = (v - mean) * rstd * g + b;
            }
        });
    Ok(Tensor::from_parts(x.shape(), out))
}
