//! Pointwise activations, computed as PyTorch does in f32 (GELU is the exact erf form).

use rayon::prelude::*;

use crate::tensor::Tensor;

const PAR_CHUNK: usize = 1 << 14;

pub use super::vector::silu as silu_scalar;

#[inline]
pub fn gelu_scalar(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

pub fn silu_inplace(data: &mut [f32]) {
    data.par_chunks_mut(PAR_CHUNK)
        .for_each(super::vector::silu_slice);
}

pub fn silu(x: &Tensor) -> Tensor {
    let mut y = x.clone();
    silu_inplace(y.data_mut());
    y
}

pub fn gelu(x: &Tensor) -> Tensor {
    let mut y = x.clone();
    y.data_mut()
        .par_chunks_mut(PAR_CHUNK)
        .for_each(|c| c.iter_mut().for_each(|v| *v = gelu_scalar(*v)));
    y
}

/// diffusers' GEGLU after its projection: `x` is [..., 2·d]; returns `x[..., :d] * gelu(x[..., d:])`.
pub fn geglu(x: &Tensor) -> Tensor {
    let two_d = *x.shape().last().unwrap();
    let d = two_d / 2;
    let rows = x.numel() / two_d;
    let mut out = vec![0.0; rows * d];
    out.par_chunks_mut(d)
        .zip(x.data().par_chunks(two_d))
        .for_each(|(o, row)| {
            let (h, gate) = row.split_at(d);
            for ((o, &h), &g) in o.iter_mut().zip(h).zip(gate) {
                *o = h * gelu_scalar(g);
            }
        });
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap() = d;
    Tensor::from_parts(shape, out)
}
