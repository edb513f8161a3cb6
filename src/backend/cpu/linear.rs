//! `y = x · Wᵀ + b` over the last dimension, as torch.nn.Linear.

use super::gemm::{sgemm, Mat, Precision, Threads};
use crate::error::{Error, Result};
use crate::tensor::{numel_of, try_repeat, try_zeroed_vec, Tensor};

/// `x`: [..., in]; `weight`: [out, in]; returns [..., out]. Panics where `try_linear` errs.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&[f32]>) -> Tensor {
    try_linear(x, weight, bias).unwrap_or_else(|e| panic!("{e}"))
}

/// Checks `x` [..., in] against `weight` [out, in] and `bias` [out]; returns (rows, in, out).
pub(crate) fn check_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&[f32]>,
) -> Result<(usize, usize, usize)> {
    let [out_f, in_f] = weight.shape()[..] else {
        return Err(Error::shape(
            "linear",
            format!("weight must be rank 2 [out, in], got {:?}", weight.shape()),
        ));
    };
    if x.shape().last() != Some(&in_f) {
        return Err(Error::shape(
            "linear",
            format!(
                "input {:?} does not end in the weight's {in_f} input features",
                x.shape()
            ),
        ));
    }
    if let Some(b) = bias {
        if b.len() != out_f {
            return Err(Error::shape(
                "linear",
                format!("{} bias values for {out_f} outputs", b.len()),
            ));
        }
    }
    let rows = x.shape()[..x.rank() - 1]
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::TooLarge {
            what: "linear input".into(),
            detail: format!("shape {:?}", x.shape()),
        })?;
    let mut out_shape = crate::Shape::from(x.shape());
    *out_shape.last_mut().expect("rank ≥ 1") = out_f;
    numel_of(&out_shape, "linear output")?;
    Ok((rows, in_f, out_f))
}

/// As `linear`; shapes that do not agree and memory that cannot be had are errors.
pub fn try_linear(x: &Tensor, weight: &Tensor, bias: Option<&[f32]>) -> Result<Tensor> {
    let (rows, in_f, out_f) = check_linear(x, weight, bias)?;
    let mut out = match bias {
        Some(b) => try_repeat(b, rows, "linear output")?,
        None => try_zeroed_vec(rows * out_f, "linear output")?,
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
        Precision::F32,
    );
    let mut shape = crate::Shape::from(x.shape());
    *shape.last_mut().expect("rank ≥ 1") = out_f;
    Ok(Tensor::from_parts(shape, out))
}
