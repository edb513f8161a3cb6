//! 2-D convolution (NCHW, groups = 1) as im2col + GEMM: per sample, the [Cin·kh·kw, Ho·Wo]
//! patch matrix times the [Cout, Cin·kh·kw] weight. 1×1 stride-1 convolutions skip im2col.
//! Small spatial sizes run samples in parallel; large ones split each product across threads.

use rayon::prelude::*;

use super::gemm::{sgemm, Mat, Threads};
use crate::tensor::Tensor;

/// Zero padding on each side, as (top, bottom, left, right).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Padding {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Padding {
    pub fn same(p: usize) -> Self {
        Padding {
            top: p,
            bottom: p,
            left: p,
            right: p,
        }
    }
}

/// `x`: [B, Cin, H, W]; `weight`: [Cout, Cin, kh, kw]; returns [B, Cout, Ho, Wo].
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&[f32]>,
    stride: usize,
    pad: Padding,
) -> Tensor {
    let [b, cin, h, w] = x.shape()[..] else {
        panic!("conv2d: input must be rank 4")
    };
    let [cout, wcin, kh, kw] = weight.shape()[..] else {
        panic!("conv2d: weight must be rank 4")
    };
    assert_eq!(cin, wcin, "conv2d: channels");
    let ho = (h + pad.top + pad.bottom - kh) / stride + 1;
    let wo = (w + pad.left + pad.right - kw) / stride + 1;
    let (hw_out, k) = (ho * wo, cin * kh * kw);
    let pointwise = kh == 1 && kw == 1 && stride == 1 && pad == Padding::same(0);

    let mut out = vec![0.0f32; b * cout * hw_out];
    if let Some(bias) = bias {
        out.par_chunks_mut(hw_out)
            .enumerate()
            .for_each(|(i, plane)| plane.fill(bias[i % cout]));
    }
    let run = |xs: &[f32], o: &mut [f32], threads: Threads| {
        let mut col = Vec::new();
        let patches: &[f32] = if pointwise {
            xs
        } else {
            col.resize(k * hw_out, 0.0);
            im2col(
                xs,
                &mut col,
                (cin, h, w),
                (kh, kw),
                stride,
                pad,
                (ho, wo),
                threads,
            );
            &col
        };
        sgemm(
            cout,
            hw_out,
            k,
            weight.data(),
            Mat::row_major(0, k),
            patches,
            Mat::row_major(0, hw_out),
            o,
            Mat::row_major(0, hw_out),
            bias.is_some(),
            1.0,
            threads,
        );
    };
    let per_sample_in = cin * h * w;
    if b > 1 && hw_out * cout < 1 << 16 {
        out.par_chunks_mut(cout * hw_out)
            .zip(x.data().par_chunks(per_sample_in))
            .for_each(|(o, xs)| run(xs, o, Threads::Single));
    } else {
        out.chunks_mut(cout * hw_out)
            .zip(x.data().chunks(per_sample_in))
            .for_each(|(o, xs)| run(xs, o, Threads::Pool));
    }
    Tensor::from_parts(vec![b, cout, ho, wo], out)
}

#[allow(clippy::too_many_arguments)]
fn im2col(
    x: &[f32],
    col: &mut [f32],
    (cin, h, w): (usize, usize, usize),
    (kh, kw): (usize, usize),
    stride: usize,
    pad: Padding,
    (ho, wo): (usize, usize),
    threads: Threads,
) {
    let fill_row = |r: usize, row: &mut [f32]| {
        let (ci, ki, kj) = (r / (kh * kw), (r / kw) % kh, r % kw);
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for oy in 0..ho {
            let iy = (oy * stride + ki) as isize - pad.top as isize;
            let dst = &mut row[oy * wo..(oy + 1) * wo];
            if iy < 0 || iy >= h as isize {
                dst.fill(0.0);
                continue;
            }
            let src = &plane[iy as usize * w..(iy as usize + 1) * w];
            for (ox, d) in dst.iter_mut().enumerate() {
                let ix = (ox * stride + kj) as isize - pad.left as isize;
                *d = if ix < 0 || ix >= w as isize {
                    0.0
                } else {
                    src[ix as usize]
                };
            }
        }
    };
    let n = ho * wo;
    if threads == Threads::Pool {
        col.par_chunks_mut(n)
            .enumerate()
            .for_each(|(r, row)| fill_row(r, row));
    } else {
        col.chunks_mut(n)
            .enumerate()
            .for_each(|(r, row)| fill_row(r, row));
    }
    let _ = cin;
}
