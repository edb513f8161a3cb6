//! `y = x · Wᵀ + b` over the last dimension, as torch.nn.Linear.

use super::gemm::{sgemm, Mat, Threads};
use crate::tensor::Tensor;

/// `x`: [..., in]; `weight`: [out, in]; returns [..., out].
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&[f32]>) -> Tensor {
    let (out_f, in_f) = (weight.shape()[0], weight.shape()[1]);
    let rows = x.numel() / in_f;
    assert_eq!(*x.shape().last().unwrap(), in_f, "linear: input features");
    let mut out = match bias {
        Some(b) => b.repeat(rows),
        None => vec![0.0; rows * out_f],
    };
    sgemm(
        rows,
        out_f,
        in_f,
        x.data(),
        Mat::row_major(0, in_f),
        weight.data(),
        Mat::transposed(0, in_f),
        &mut out,
        Mat::row_major(0, out_f),
        bias.is_some(),
        1.0,
        Threads::Pool,
    );
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap() = out_f;
    Tensor::from_parts(shape, out)
}
