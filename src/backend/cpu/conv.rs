//! 2-D convolution (NCHW, groups = 1) on the GEMM, with an optional MaskUNet weight mask per
//! sample. Work is split into tasks of (sample, tile of `TILE` output channels, chunk of output
//! positions); each task multiplies its weight tile, read in place or staged through the mask
//! (see `cpu::masked`), so masked and unmasked convolutions issue the very same products and an
//! all-ones mask gives the dense output bit for bit.
//!
//! - k×k stride 1 "same" padding (every 3×3 of a U-Net but the downsamplers): implicit GEMM. The
//!   input is copied once, channel-major, into a zero-padded "tall image": the samples stacked
//!   vertically with p = (k−1)/2 zero rows between them and p zero columns closing each row
//!   (shared by the next row's left edge). Output pixel (b, y, x) sits at position
//!   q = (b·(H+p) + y)·Wp + x, and tap (ki, kj) reads the buffer at q + ki·Wp + kj for every q. So
//!   the convolution is k² accumulating products [tile, Cin] × [Cin, positions] over shifted
//!   views, accumulated position-major, with no patch matrix; all taps of a chunk run back to back
//!   while its accumulator is hot. The padding positions computed along the way (p per row) are
//!   dropped when results are copied out.
//!   With the own AVX-512 product (`cpu::gemm_avx512`), the k² taps are one product instead:
//!   depth (channel, tap), A read from the tall image in place (`gemm::Taps`), so the accumulator
//!   is loaded and stored once.
//! - 1×1 stride 1: [tile, Cin] × [Cin, H·W] per sample.
//! - anything else (the stride-2 downsamplers): im2col per sample + one product per tile.
//!
//! On CPUs with AVX-512F the stride-1 "same" k×k cases (k > 1) of images up to 16×16 positions
//! (`conv_direct::takes`) run the direct convolution of
//! `cpu::conv_direct` instead (hand-written microkernel); the paths above are the portable
//! fallback, and are forced with `FREELUNCH_CPU_CONV=gemm`.

use rayon::prelude::*;

use super::gemm::{sgemm, sgemm_taps, Mat, Precision, Taps, Threads};
use super::masked::MaskFn;
use super::SendPtr;
pub use crate::backend::layer::Padding;
use crate::error::{Error, Result};
use crate::tensor::{numel_of, try_zeroed_vec, Scratch, Tensor};

/// Most output channels per task (one weight tile); tiles are split evenly below this.
pub const TILE: usize = 64;

/// `x`: [B, Cin, H, W]; `weight`: [Cout, Cin, kh, kw]; returns [B, Cout, Ho, Wo]. Panics
/// where `try_conv2d` errs.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&[f32]>,
    stride: usize,
    pad: Padding,
) -> Tensor {
    conv2d_masked(x, weight, bias, stride, pad, None)
}

/// As `conv2d`; shapes that do not agree, sizes that overflow and memory that cannot be had are
/// errors.
pub fn try_conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&[f32]>,
    stride: usize,
    pad: Padding,
) -> Result<Tensor> {
    try_conv2d_masked(x, weight, bias, stride, pad, None)
}

/// As `conv2d`, sample b using `W ⊙ mask(b)` when a mask is given. Panics where
/// `try_conv2d_masked` errs.
pub fn conv2d_masked(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&[f32]>,
    stride: usize,
    pad: Padding,
    mask: Option<MaskFn>,
) -> Tensor {
    try_conv2d_masked(x, weight, bias, stride, pad, mask).unwrap_or_else(|e| panic!("{e}"))
}

/// A dense layer's convolution with its packed weights cached under `uid` (the layer's, see
/// `nn::fresh_uid`): in f32 on the direct path, in bf16 on the AMX tile convolution. None where
/// that path does not take it (no AVX-512 or AMX, turned off, not stride-1 "same", channel
/// counts the tiles do not fit, or shapes `try_conv2d` would refuse): then the caller runs
/// `try_conv2d_in`.
pub fn try_conv2d_layer(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&[f32]>,
    stride: usize,
    pad: Padding,
    uid: u64,
    precision: Precision,
) -> Option<Result<Tensor>> {
    let ([b, cin, h, w], [cout, wcin, kh, kw]) = (x.shape(), weight.shape()) else {
        return None;
    };
    let same = stride == 1 && kh == kw && kh % 2 == 1 && pad == Padding::same((kh - 1) / 2);
    let fits = cin == wcin && bias.is_none_or(|b| b.len() == *cout) && *h > 0 && *w > 0;
    if !(fits && *b > 0 && *cout > 0 && *cin > 0) {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if precision == Precision::Bf16
        && kh == kw
        && h + pad.top + pad.bottom >= *kh
        && w + pad.left + pad.right >= *kw
        && super::conv_amx::takes_strided(*cin, *cout, *kh, stride, pad)
    {
        return Some(super::conv_amx::conv2d_strided(
            x,
            weight,
            bias,
            pad,
            Some(uid),
            None,
        ));
    }
    if !same {
        return None;
    }
    match precision {
        Precision::F32 if *kh > 1 && super::conv_direct::takes(*h, *w) => Some(
            super::conv_direct::conv2d_same_keyed(x, weight, bias, None, Some(uid)),
        ),
        #[cfg(target_arch = "x86_64")]
        Precision::Bf16 if super::conv_amx::takes(*cin, *cout, *kh) => Some(
            super::conv_amx::conv2d_same(x, weight, bias, Some(uid), None),
        ),
        _ => None,
    }
}

fn conv_error(msg: String) -> Error {
    Error::shape("conv2d", msg)
}

fn too_large(what: &str) -> Error {
    Error::TooLarge {
        what: format!("conv2d {what}"),
        detail: "its size overflows".into(),
    }
}

/// One output dimension, `(in + pads − k) / stride + 1`, or an error when the kernel does not
/// fit in the padded input.
fn out_dim(
    input: usize,
    pads: (usize, usize),
    k: usize,
    stride: usize,
    axis: &str,
) -> Result<usize> {
    let padded = input
        .checked_add(pads.0)
        .and_then(|v| v.checked_add(pads.1))
        .ok_or_else(|| too_large("padding"))?;
    if k == 0 || padded < k {
        return Err(conv_error(format!(
            "a {k}-wide kernel does not fit in {axis} = {input} padded by {} + {}",
            pads.0, pads.1
        )));
    }
    Ok((padded - k) / stride + 1)
}

/// As `conv2d_masked`, with every shape and size checked first and every large buffer allocated
/// fallibly.
pub fn try_conv2d_masked(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&[f32]>,
    stride: usize,
    pad: Padding,
    mask: Option<MaskFn>,
) -> Result<Tensor> {
    try_conv2d_in(x, weight, bias, stride, pad, mask, Precision::F32)
}

/// As `try_conv2d_masked`, its products in `precision`. In bf16 every shape runs on the GEMM
/// paths or the AMX tile convolution (`conv_amx`), never the f32 direct kernel.
pub fn try_conv2d_in(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&[f32]>,
    stride: usize,
    pad: Padding,
    mask: Option<MaskFn>,
    precision: Precision,
) -> Result<Tensor> {
    let [b, cin, h, w] = x.shape()[..] else {
        return Err(conv_error(format!(
            "input must be a rank-4 [B, C, H, W] tensor, got shape {:?}",
            x.shape()
        )));
    };
    let [cout, wcin, kh, kw] = weight.shape()[..] else {
        return Err(conv_error(format!(
            "weight must be rank 4, got shape {:?}",
            weight.shape()
        )));
    };
    if cin != wcin {
        return Err(conv_error(format!(
            "input {:?} has {cin} channels, weight {:?} takes {wcin}",
            x.shape(),
            weight.shape()
        )));
    }
    if stride == 0 {
        return Err(conv_error("stride 0".into()));
    }
    if let Some(bv) = bias {
        if bv.len() != cout {
            return Err(conv_error(format!(
                "{} bias values for {cout} output channels",
                bv.len()
            )));
        }
    }
    let ho = out_dim(h, (pad.top, pad.bottom), kh, stride, "H")?;
    let wo = out_dim(w, (pad.left, pad.right), kw, stride, "W")?;
    let out_len = crate::tensor::numel_of(&[b, cout, ho, wo], "conv2d output")?;
    if out_len == 0 {
        return Ok(Tensor::from_parts([b, cout, ho, wo], Vec::new()));
    }
    let row_len = cin
        .checked_mul(kh)
        .and_then(|v| v.checked_mul(kw))
        .ok_or_else(|| too_large("weight rows"))?;
    let same = stride == 1 && kh == kw && kh % 2 == 1 && pad == Padding::same((kh - 1) / 2);
    // 1×1 stays on the GEMM, which reads NCHW in place: at one tap the direct path's two
    // transposes cost more than its kernel saves (2.7× slower across ddpm-cifar10's 1×1s).
    if precision == Precision::F32 && same && kh > 1 && super::conv_direct::takes(h, w) {
        return super::conv_direct::conv2d_same(x, weight, bias, mask);
    }
    #[cfg(target_arch = "x86_64")]
    if precision == Precision::Bf16 && same && super::conv_amx::takes(cin, cout, kh) {
        return super::conv_amx::conv2d_same(x, weight, bias, None, mask);
    }
    #[cfg(target_arch = "x86_64")]
    if precision == Precision::Bf16
        && kh == kw
        && super::conv_amx::takes_strided(cin, cout, kh, stride, pad)
    {
        return super::conv_amx::conv2d_strided(x, weight, bias, pad, None, mask);
    }
    let layout = if same && kh > 1 {
        Layout::Shifted(ShiftedInput::new(x, kh)?)
    } else if same {
        Layout::Pointwise
    } else {
        Layout::Patches
    };
    // Dense bf16 layers run one product per sample over every output channel and position,
    // split by the product itself: the tile kernel's packing then serves the most work.
    let whole = precision == Precision::Bf16 && mask.is_none();
    let (tiles, chunks, threads) = if whole {
        let positions = match &layout {
            Layout::Shifted(s) => s.sample_positions,
            _ => ho * wo,
        };
        let one = Chunks {
            per_sample: 1,
            size: positions,
        };
        (1, one, Threads::Pool)
    } else {
        (
            cout.div_ceil(TILE),
            layout.chunks(b, ho * wo),
            Threads::Single,
        )
    };
    let tile_rows = cout.div_ceil(tiles);
    let mut out = try_zeroed_vec(out_len, "conv2d output")?;
    let acc_len = layout.acc_len(b, cout)?;
    let mut acc = Scratch::zeroed(acc_len, "conv2d accumulator")?;
    // Tasks write disjoint parts of `acc` (Shifted: its position rows q0..q1, columns of their
    // tile) or of `out` (other layouts: their sample's tile rows): column strips safe chunking
    // cannot express.
    let acc_ptr = SendPtr(acc.as_mut_ptr());
    let out_ptr = SendPtr(out.as_mut_ptr());
    let out_len = out.len();
    let patches: smallvec::SmallVec<[Scratch; 8]> = match layout {
        Layout::Patches => {
            let col_len = row_len
                .checked_mul(ho * wo)
                .ok_or_else(|| too_large("patch matrix"))?;
            numel_of(&[b, col_len], "conv2d patch matrix")?;
            // Taken on this thread, so that a workspace in scope here serves them.
            let mut cols: smallvec::SmallVec<[Scratch; 8]> = (0..b)
                .map(|_| Scratch::zeroed(col_len, "conv2d patch matrix"))
                .collect::<Result<_>>()?;
            cols.par_iter_mut().enumerate().for_each(|(bi, col)| {
                let xs = &x.data()[bi * cin * h * w..(bi + 1) * cin * h * w];
                im2col(xs, col, (h, w), (kh, kw), stride, pad, (ho, wo));
            });
            cols
        }
        _ => smallvec::SmallVec::new(),
    };
    if let (true, Layout::Shifted(s)) = (whole, &layout) {
        // One product over the whole tall image: the rows between samples are computed and
        // dropped, and B's panel is packed once per task of many rows.
        let positions = (b - 1) * s.sample_stride + s.sample_positions;
        s.taps(
            weight.data(),
            0,
            row_len,
            bias,
            &mut acc,
            cout,
            (0, cout),
            (0, positions),
            threads,
            precision,
        );
        s.copy_out(&acc, &mut out, b, cout);
        return Ok(Tensor::from_parts([b, cout, ho, wo], out));
    }
    (0..b * tiles * chunks.per_sample)
        .into_par_iter()
        .for_each(|task| {
            let (bi, rest) = (
                task / (tiles * chunks.per_sample),
                task % (tiles * chunks.per_sample),
            );
            let (t, c) = (rest / chunks.per_sample, rest % chunks.per_sample);
            let (r0, r1) = (t * tile_rows, ((t + 1) * tile_rows).min(cout));
            let staged;
            let (wt, w_off) = match mask {
                Some(mask) => {
                    staged = super::masked::stage_masked_rows(
                        weight.data(),
                        row_len,
                        (r0, r1),
                        mask(bi),
                    );
                    (&staged[..], 0)
                }
                None => (weight.data(), r0 * row_len),
            };
            let bias = bias.map(|bv| &bv[r0..r1]);
            match &layout {
                Layout::Shifted(s) => {
                    let (q0, q1) = chunks.range(c, s.sample_positions);
                    let base = bi * s.sample_stride;
                    // SAFETY: `acc` outlives the loop; this task writes only rows
                    // base+q0..base+q1, columns r0..r1, through the bounds-checked `sgemm`.
                    let dst = unsafe { std::slice::from_raw_parts_mut(acc_ptr.get(), acc_len) };
                    s.taps(
                        wt,
                        w_off,
                        row_len,
                        bias,
                        dst,
                        cout,
                        (r0, r1),
                        (base + q0, base + q1),
                        threads,
                        precision,
                    );
                }
                Layout::Pointwise | Layout::Patches => {
                    let (p0, p1) = chunks.range(c, ho * wo);
                    let src: &[f32] = match layout {
                        Layout::Pointwise => &x.data()[bi * cin * h * w..(bi + 1) * cin * h * w],
                        _ => &patches[bi],
                    };
                    // SAFETY: `out` outlives the loop; this task writes only the rows r0..r1,
                    // columns p0..p1 of sample bi, through the bounds-checked `sgemm`.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.get(), out_len) };
                    let o = bi * cout * ho * wo;
                    if let Some(bias) = bias {
                        for (r, &bv) in (r0..r1).zip(bias) {
                            dst[o + r * ho * wo + p0..o + r * ho * wo + p1].fill(bv);
                        }
                    }
                    sgemm(
                        r1 - r0,
                        p1 - p0,
                        row_len,
                        wt,
                        Mat::row_major(w_off, row_len),
                        src,
                        Mat::row_major(p0, ho * wo),
                        dst,
                        Mat::row_major(o + r0 * ho * wo + p0, ho * wo),
                        bias.is_some(),
                        1.0,
                        threads,
                        precision,
                    );
                }
            }
        });
    if let Layout::Shifted(s) = &layout {
        s.copy_out(&acc, &mut out, b, cout);
    }
    Ok(Tensor::from_parts([b, cout, ho, wo], out))
}

enum Layout {
    Shifted(ShiftedInput),
    Pointwise,
    Patches,
}

/// How one sample's output positions are cut into chunks.
struct Chunks {
    per_sample: usize,
    size: usize,
}

impl Chunks {
    fn range(&self, c: usize, positions: usize) -> (usize, usize) {
        (c * self.size, ((c + 1) * self.size).min(positions))
    }
}

impl Layout {
    fn chunks(&self, b: usize, hw_out: usize) -> Chunks {
        let positions = match self {
            Layout::Shifted(s) => s.sample_positions,
            _ => hw_out,
        };
        // Enough tasks for the pool, each a sizeable product of at most 1024 positions, and
        // split evenly (a ragged last chunk would be a slow thin product).
        let threads = rayon::current_num_threads();
        let want = (4 * threads).div_ceil(b);
        let per_sample = positions
            .div_ceil(1024)
            .max(want.min(positions.div_ceil(256)))
            .max(1);
        Chunks {
            per_sample,
            size: positions.div_ceil(per_sample),
        }
    }

    fn acc_len(&self, b: usize, cout: usize) -> Result<usize> {
        match self {
            Layout::Shifted(s) => numel_of(&[b, s.sample_stride, cout], "conv2d accumulator"),
            _ => Ok(0),
        }
    }
}

/// The padded channel-major "tall image" of the whole batch (see the module doc).
struct ShiftedInput {
    padded: Scratch,
    k: usize,
    p: usize,
    h: usize,
    w: usize,
    wp: usize,
    plane: usize,
    /// Positions from one sample's first row to the next sample's.
    sample_stride: usize,
    /// Positions covering every output pixel of a sample.
    sample_positions: usize,
}

impl ShiftedInput {
    /// `x` is rank 4 with H, W ≥ 1 (the caller checked the kernel fits).
    fn new(x: &Tensor, k: usize) -> Result<Self> {
        let [b, cin, h, w] = x.shape()[..] else {
            return Err(conv_error(format!("input shape {:?}", x.shape())));
        };
        let p = (k - 1) / 2;
        let big = || too_large("padded input");
        let wp = w.checked_add(p).ok_or_else(big)?;
        // p leading zero rows, then each sample and p zero rows.
        let rows = h
            .checked_add(p)
            .and_then(|v| v.checked_mul(b))
            .and_then(|v| v.checked_add(p))
            .ok_or_else(big)?;
        // + margins so every tap of every position stays in bounds.
        let plane = rows
            .checked_mul(wp)
            .and_then(|v| v.checked_add(2 * p))
            .ok_or_else(big)?;
        let sample_stride = (h + p).checked_mul(wp).ok_or_else(big)?;
        let mut padded = Scratch::zeroed(
            numel_of(&[cin, plane], "conv2d padded input")?,
            "conv2d padded input",
        )?;
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
        Ok(ShiftedInput {
            padded,
            k,
            p,
            h,
            w,
            wp,
            plane,
            sample_stride,
            sample_positions: (h - 1) * wp + w,
        })
    }

    /// The k² tap products of positions q0..q1 for output channels r0..r1, into `acc`
    /// (position-major, [positions][cout]).
    #[allow(clippy::too_many_arguments)]
    fn taps(
        &self,
        wt: &[f32],
        w_off: usize,
        row_len: usize,
        bias: Option<&[f32]>,
        acc: &mut [f32],
        cout: usize,
        (r0, r1): (usize, usize),
        (q0, q1): (usize, usize),
        threads: Threads,
        precision: Precision,
    ) {
        let k = self.k;
        let cin = row_len / (k * k);
        if let Some(bias) = bias {
            for row in acc[q0 * cout..q1 * cout].chunks_mut(cout) {
                row[r0..r1].copy_from_slice(bias);
            }
        }
        // All k² taps as one product over depth (channel, tap), where the own kernel runs: C is
        // loaded and stored once rather than k² times, and the weights are read as they lie.
        let taps = Taps {
            base: q0,
            plane: self.plane,
            row: self.wp,
            k,
        };
        let acc_at = Mat {
            offset: q0 * cout + r0,
            rs: cout,
            cs: 1,
        };
        let w_at = Mat::transposed(w_off, row_len);
        if sgemm_taps(
            q1 - q0,
            r1 - r0,
            cin,
            &self.padded,
            taps,
            wt,
            w_at,
            acc,
            acc_at,
            bias.is_some(),
            1.0,
            threads,
            precision,
        ) {
            return;
        }
        for ki in 0..k {
            for kj in 0..k {
                sgemm(
                    r1 - r0,
                    q1 - q0,
                    cin,
                    wt,
                    Mat {
                        offset: w_off + ki * k + kj,
                        rs: row_len,
                        cs: k * k,
                    },
                    &self.padded,
                    Mat {
                        offset: q0 + ki * self.wp + kj,
                        rs: self.plane,
                        cs: 1,
                    },
                    acc,
                    Mat {
                        offset: q0 * cout + r0,
                        rs: 1,
                        cs: cout,
                    },
                    bias.is_some() || ki + kj > 0,
                    1.0,
                    threads,
                    precision,
                );
            }
        }
    }

    /// `acc` is position-major; copying out transposes each image row in tiles of positions.
    fn copy_out(&self, acc: &[f32], out: &mut [f32], b: usize, cout: usize) {
        let (h, w, wp, p) = (self.h, self.w, self.wp, self.p);
        out.par_chunks_mut(cout * h * w)
            .take(b)
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
    }
}

#[allow(clippy::too_many_arguments)]
fn im2col(
    x: &[f32],
    col: &mut [f32],
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    stride: usize,
    pad: Padding,
    (ho, wo): (usize, usize),
) {
    let n = ho * wo;
    for (r, row) in col.chunks_mut(n).enumerate() {
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
    }
}
