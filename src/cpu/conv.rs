//! 2-D convolution (NCHW, groups = 1) on the GEMM.
//!
//! - 1×1 stride 1: one product per sample, [Cout, Cin] × [Cin, H·W].
//! - k×k stride 1 "same" padding (every 3×3 of a U-Net but the downsamplers): implicit GEMM
//!   over the whole batch. The input is copied once, channel-major, into a zero-padded "tall
//!   image": the samples stacked vertically with p = (k−1)/2 zero rows between them and p zero
//!   columns closing each row (shared by the next row's left edge). Output pixel (b, y, x) sits
//!   at position q = (b·(H+p) + y)·Wp + x, and tap (ki, kj) reads the buffer at q + ki·Wp + kj for
//!   every q. So the convolution is k² accumulating products [Cout, Cin] × [Cin, positions] over
//!   shifted views, accumulated position-major: no patch matrix, and one product spans the batch, which keeps the small deep
//!   levels efficient. Positions are cut into cache-sized chunks processed in parallel, all taps
//!   of a chunk back to back while its accumulator is hot. The padding positions computed along
//!   the way (p per row, p rows per sample) are dropped when results are copied out.
//! - anything else (the stride-2 downsamplers): im2col + one product.
//!
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

    let same = stride == 1 && kh == kw && pad == Padding::same((kh - 1) / 2) && kh % 2 == 1;

    if same && !pointwise {
        return shifted_taps(x, weight, bias, kh);
    }
    let mut out = vec![0.0f32; b * cout * hw_out];
    let run = |xs: &[f32], o: &mut [f32], threads: Threads| {
        if let Some(bias) = bias {
            for (plane, &bv) in o.chunks_mut(hw_out).zip(bias) {
                plane.fill(bv);
            }
        }
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
    // Whole samples per thread when the batch covers the pool: no synchronisation inside
    // products, and each thread's working set stays in its own cache.
    if b >= rayon::current_num_threads() || (b > 1 && hw_out * cout < 1 << 16) {
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

/// A stride-1 "same" k×k convolution of the whole batch as k² shifted products (module doc).
fn shifted_taps(x: &Tensor, weight: &Tensor, bias: Option<&[f32]>, k: usize) -> Tensor {
    let [b, cin, h, w] = x.shape()[..] else {
        unreachable!()
    };
    let cout = weight.shape()[0];
    let p = (k - 1) / 2;
    let wp = w + p;
    let rows = b * (h + p) + p; // p leading zero rows, then each sample and p zero rows
    let plane = rows * wp + 2 * p; // + margins so every tap of every position stays in bounds
    let mut padded = vec![0.0f32; cin * plane];
    padded
        .par_chunks_mut(plane)
        .enumerate()
        .for_each(|(ci, dst)| {
            for bi in 0..b {
                let src = &x.data()[(bi * cin + ci) * h * w..][..h * w];
                for (y, row) in src.chunks(w).enumerate() {
                    let at = (p + bi * (h + p) + y) * wp + p;
                    dst[at..at + w].copy_from_slice(row);
                }
            }
        });
    // Positions q in 0..n cover every output pixel; tap (ki, kj) reads q + ki·wp + kj.
    let n = ((b - 1) * (h + p) + h - 1) * wp + w;
    let threads = rayon::current_num_threads();
    let chunk = (n.div_ceil(4 * threads)).clamp(512, 1024);
    let mut acc = vec![0.0f32; cout * n];
    // Chunks of positions are disjoint column strips of `acc`; each task runs its k² products
    // into its own strip through a raw pointer, as safe chunking cannot split columns.
    let acc_ptr = SendPtr(acc.as_mut_ptr());
    let acc_len = acc.len();
    (0..n.div_ceil(chunk)).into_par_iter().for_each(|c| {
        let (q0, q1) = (c * chunk, ((c + 1) * chunk).min(n));
        // SAFETY: `acc` outlives the parallel loop; tasks touch disjoint columns q0..q1 and the
        // slice is only used through the bounds-checked `sgemm` with those columns.
        let dst = unsafe { std::slice::from_raw_parts_mut(acc_ptr.get(), acc_len) };
        if let Some(bias) = bias {
            for row in dst[q0 * cout..q1 * cout].chunks_mut(cout) {
                row.copy_from_slice(bias);
            }
        }
        for ki in 0..k {
            for kj in 0..k {
                sgemm(
                    cout,
                    q1 - q0,
                    cin,
                    weight.data(),
                    Mat {
                        offset: ki * k + kj,
                        rs: cin * k * k,
                        cs: k * k,
                    },
                    &padded,
                    Mat {
                        offset: q0 + ki * wp + kj,
                        rs: plane,
                        cs: 1,
                    },
                    dst,
                    Mat {
                        offset: q0 * cout,
                        rs: 1,
                        cs: cout,
                    },
                    bias.is_some() || ki + kj > 0,
                    1.0,
                    Threads::Single,
                );
            }
        }
    });
    // `acc` is position-major ([positions][Cout]: the product's natural order for the GEMM);
    // copying out transposes each image row in tiles of positions.
    let mut out = vec![0.0f32; b * cout * h * w];
    out.par_chunks_mut(cout * h * w)
        .enumerate()
        .for_each(|(bi, o)| {
            for y in 0..h {
                let row0 = (bi * (h + p) + y) * wp;
                for x0 in (0..w).step_by(16) {
                    let x1 = (x0 + 16).min(w);
                    for co in 0..cout {
                        let dst = &mut o[(co * h + y) * w..][x0..x1];
                        for (x, d) in (x0..x1).zip(dst) {
                            *d = acc[(row0 + x) * cout + co];
                        }
                    }
                }
            }
        });
    Tensor::from_parts(vec![b, cout, h, w], out)
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only for the disjoint column strips described in `shifted_taps`.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}
