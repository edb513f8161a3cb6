//! The bf16 convolution on AMX tiles for stride-1 "same" k×k layers (3×3 and 1×1) whose input
//! channels are a multiple of 32 and output channels a multiple of 16: every such layer of the
//! SD and DDPM U-Nets but the first and the last. The image is converted once to a bf16
//! channels-last "tall image", and the tiles load their A operands straight from it: nothing is
//! packed per product.
//!
//! Algorithm:
//! - Tall image: the samples stacked vertically with p = (k−1)/2 zero rows between them and p
//!   zero columns closing each row (as `cpu::conv`'s f32 tall image), each position holding its
//!   `cin` channels in bf16 (nearest even). Output pixel (b, y, x) is position
//!   q = (b·(H+p) + y)·Wp + x, and tap (ki, kj) reads position q + ki·Wp + kj. So for a tap and
//!   32 channels, 16 consecutive output positions are 16 rows of 64 bytes, `cin·2` bytes apart:
//!   one tile load.
//! - Weights: packed as VNNI B tiles (once per layer, kept in `cpu::pack_cache`, for dense
//!   layers), depth ordered (tap, channel): per strip of 16 output channels and per (tap, 32
//!   channels), 16 rows of 16 channel pairs.
//! - Every buffer the tiles read or write is 64-byte aligned (`aligned_mut`): an unaligned tile
//!   load measured 6.6× an aligned one here. C rows that cannot be aligned (a linear layer's
//!   output, a tensor of its own) go through an aligned block in L1.
//! - Tasks: blocks of `POSITIONS` positions × `COUTS` output channels. Per 32 × 32 micro block,
//!   four accumulator tiles run over the whole depth (k²·cin/32 steps of two A loads, two B loads
//!   and four `tdpbf16ps`), then are stored position-major; the copy out transposes 16 × 16 at a
//!   time into NCHW, adding the bias, and drops the padding positions.
//!
//! - MaskUNet masks: each sample's `W ⊙ M_b` is packed for it (masks applied while packing), and
//!   the samples run one after another on the same kernel.
//! - The same kernel (`Job`) runs the bf16 linear layers as 1 × 1 convolutions whose image is
//!   the input rows themselves (`cpu::linear_amx`): there the accumulators start from the bias
//!   and, for GEGLU's projection, pair each strip with its gate's strip and store
//!   `h · gelu(gate)`.
//!
//! Limits: needs AMX-BF16; shapes outside the channel multiples take the generic bf16 path
//! (`cpu::conv`). Accuracy: the operands are rounded to bf16, f32 accumulation
//! (`cpu::gemm_bf16`'s contract).
//!
//! Tested in `tests/ops_props.rs` (`bf16_convolutions_match_the_f32_product_of_rounded_operands`)
//! against an f64 convolution of the rounded operands, and through every U-Net golden in
//! `tests/cpu_bf16.rs`; benched by `benches/gemm_bf16.rs`.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::amx;
use super::avx512::{lane_mask, transpose16};
use crate::backend::layer::Padding;
use crate::boosters::masks::MaskFn;
use crate::boosters::masks::MaskView;
use crate::error::{Error, Result};
use crate::tensor::{numel_of, try_zeroed_vec, Scratch, Tensor};

/// Output positions per task (a multiple of 32).
const POSITIONS: usize = 256;
/// Output channels per task (a multiple of 32).
const COUTS: usize = 64;
/// bf16 values per tile.
const TILE: usize = 512;

/// Whether the layer runs here: AMX available, `cin` a multiple of 32, `cout` of 16, k odd.
pub(crate) fn takes(cin: usize, cout: usize, k: usize) -> bool {
    cin > 0
        && cin.is_multiple_of(32)
        && cout > 0
        && cout.is_multiple_of(16)
        && k % 2 == 1
        && amx::available()
}

/// `x` [B, Cin, H, W] ⊛ `weight` [Cout, Cin, k, k] (+ bias), stride 1, padding (k−1)/2, in bf16.
/// The caller checked the shapes agree and `takes` holds.
/// With `key` (the layer's uid) the packed weights are kept in `cpu::pack_cache`; with `mask`,
/// sample b runs `W ⊙ mask(b)`, packed for it (masks applied while packing: the same kernel,
/// so an all-ones mask gives the dense output bit for bit).
pub(crate) fn conv2d_same(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&[f32]>,
    key: Option<u64>,
    mask: Option<MaskFn>,
) -> Result<Tensor> {
    let (&[b, _, h, w], &[_, _, k, _]) = (x.shape(), weight.shape()) else {
        return Err(Error::shape(
            "conv2d",
            format!("input shape {:?}", x.shape()),
        ));
    };
    let p = (k - 1) / 2;
    let big = || Error::shape("conv2d", "the padded input is too large".to_string());
    let wp = w.checked_add(p).ok_or_else(big)?;
    let sample_stride = (h + p).checked_mul(wp).ok_or_else(big)?;
    let sample_positions = (h - 1) * wp + w;
    let outputs = (b - 1)
        .checked_mul(sample_stride)
        .and_then(|v| v.checked_add(sample_positions))
        .ok_or_else(big)?;
    // Rows of the accumulator: whole micro blocks past the last output, and one more block for
    // a masked call's last sample, whose blocks start at its own first position.
    let outputs_padded = outputs.next_multiple_of(32);
    let acc_rows = outputs_padded + 32;
    // Every tap of every (padded) output position lies inside the image.
    let positions = acc_rows
        .checked_add((k - 1) * wp + k)
        .and_then(|v| v.checked_add(p * wp + p))
        .ok_or_else(big)?;
    let geo = Geometry {
        wp,
        sample_rows: h + p,
        top: p,
        left: p,
        out_stride: sample_stride,
        out_pitch: wp,
    };
    let samples = Samples {
        count: b,
        stride: sample_stride,
        positions: sample_positions,
        all: outputs_padded,
    };
    // SAFETY: AMX is available (`takes`); acc_rows ≥ every sample's padded positions, and
    // `positions` holds every tap of them.
    unsafe {
        convolve(
            (x, weight, bias),
            (key, mask),
            (&geo, 1, positions, acc_rows),
            samples,
            (h, w),
        )
    }
}

/// Whether a stride-2 k×k layer runs on the tiles: `takes`, k ≥ 3, each side's padding below
/// k (so every output reads a data pixel).
pub(crate) fn takes_strided(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: Padding,
) -> bool {
    let pads = [pad.top, pad.bottom, pad.left, pad.right];
    stride == 2 && k >= 3 && pads.iter().all(|&p| p < k) && takes(cin, cout, k)
}

/// `x` [B, Cin, H, W] ⊛ `weight` [Cout, Cin, k, k] (+ bias), stride 2, padding `pad`, in bf16
/// (a U-Net's downsampling convolution). The tall image has an even padded width Wp, so that
/// output (y, x) at accumulator position q = y·Wp + x reads image position 2q + ki·Wp + kj: a
/// tap's 16 consecutive outputs are 16 rows `2·cin·2` bytes apart, one tile load. The columns
/// x ≥ Wo of each output row are computed and dropped (about half the work: the price of a
/// layout with no copy per tap). The caller checked the shapes agree, that the padded input
/// holds the kernel, and that `takes_strided` holds; `key` and `mask` as `conv2d_same`'s.
pub(crate) fn conv2d_strided(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&[f32]>,
    pad: Padding,
    key: Option<u64>,
    mask: Option<MaskFn>,
) -> Result<Tensor> {
    let (&[b, _, h, w], &[_, _, k, _]) = (x.shape(), weight.shape()) else {
        return Err(Error::shape(
            "conv2d",
            format!("input shape {:?}", x.shape()),
        ));
    };
    let big = || Error::shape("conv2d", "the padded input is too large".to_string());
    let (hp, wpad) = (h + pad.top + pad.bottom, w + pad.left + pad.right);
    let (ho, wo) = ((hp - k) / 2 + 1, (wpad - k) / 2 + 1);
    let wp = wpad.next_multiple_of(2);
    // hp ≥ 2·ho + k − 2 ≥ 2·ho rows per sample: each sample's outputs end before the next's.
    let out_stride = hp.checked_mul(wp).ok_or_else(big)? / 2;
    let per_sample = ho * wp;
    let acc_rows = (b - 1)
        .checked_mul(out_stride)
        .and_then(|v| v.checked_add(per_sample.next_multiple_of(32) + 32))
        .ok_or_else(big)?;
    // Every tap of every computed position lies inside the image.
    let positions = acc_rows
        .checked_mul(2)
        .and_then(|v| v.checked_add(k * wp + k))
        .ok_or_else(big)?;
    let geo = Geometry {
        wp,
        sample_rows: hp,
        top: pad.top,
        left: pad.left,
        out_stride,
        out_pitch: wp,
    };
    // Sample by sample even when dense: the positions between samples' outputs are not
    // computed.
    let samples = Samples {
        count: b,
        stride: out_stride,
        positions: per_sample,
        all: 0,
    };
    // SAFETY: AMX is available (`takes_strided`); acc_rows is past every sample's padded
    // outputs, and `positions` holds every tap of them, 2q + (k−1)·Wp + k − 1 < positions.
    unsafe {
        convolve(
            (x, weight, bias),
            (key, mask),
            (&geo, 2, positions, acc_rows),
            samples,
            (ho, wo),
        )
    }
}

/// The tile convolution once its geometry is known: `x` into a bf16 tall image of `positions`
/// positions laid out as `geo`, the kernel (`stride` image positions per output) over
/// `samples` into an accumulator of `acc_rows` positions, then the `ho × wo` outputs of each
/// sample out to NCHW with the bias.
///
/// # Safety
/// AMX is available; every position the runs of `samples` reach lies below `acc_rows`, and
/// every tap of them below `positions`.
unsafe fn convolve(
    (x, weight, bias): (&Tensor, &Tensor, Option<&[f32]>),
    (key, mask): (Option<u64>, Option<MaskFn>),
    (geo, stride, positions, acc_rows): (&Geometry, usize, usize, usize),
    samples: Samples,
    (ho, wo): (usize, usize),
) -> Result<Tensor> {
    let (b, cin) = (x.shape()[0], x.shape()[1]);
    let (cout, k) = (weight.shape()[0], weight.shape()[2]);
    let image_len = numel_of(&[positions, cin / 2], "conv2d bf16 image")?;
    let mut image = Scratch::zeroed(image_len + ALIGN_PAD, "conv2d bf16 image")?;
    let image = aligned_mut(&mut image, image_len);
    to_tall_image(x, image, geo);
    let acc_len = numel_of(&[acc_rows, cout], "conv2d accumulator")?;
    let mut acc = Scratch::zeroed(acc_len + ALIGN_PAD, "conv2d accumulator")?;
    let acc = aligned_mut(&mut acc, acc_len);
    let acc_ptr = acc.as_mut_ptr();
    let job = |weights: &[f32]| Job {
        image: image.as_ptr().cast(),
        weights: weights.as_ptr().cast(),
        acc: acc_ptr,
        bias: std::ptr::null(),
        cin,
        cout,
        k,
        wp: geo.wp,
        stride,
        depth_tiles: k * k * cin / 32,
        gate: 0,
    };
    // SAFETY: the caller's contract; the weights are `pack_weights`'s.
    unsafe { samples.run(weight, (cin, k), key, mask, job)? };
    let out_len = numel_of(&[b, cout, ho, wo], "conv2d output")?;
    let mut out = try_zeroed_vec(out_len, "conv2d output")?;
    copy_out(acc, &mut out, (cout, ho, wo), geo, bias);
    Ok(Tensor::from_parts([b, cout, ho, wo], out))
}

/// Where the tall image holds sample b's pixel (r, c): position (b·`sample_rows` + `top` + r)
/// · `wp` + `left` + c; and where the accumulator holds its output (y, x): position
/// b·`out_stride` + y·`out_pitch` + x.
struct Geometry {
    wp: usize,
    sample_rows: usize,
    top: usize,
    left: usize,
    out_stride: usize,
    out_pitch: usize,
}

/// Writes `x` (NCHW f32) into `image` as the bf16 channels-last tall image (positions of `cin`
/// values; the padding stays zero).
fn to_tall_image(x: &Tensor, image: &mut [f32], g: &Geometry) {
    let [b, cin, h, w] = x.shape()[..] else {
        unreachable!("checked by the caller")
    };
    // One task per image row: it writes only that row's positions.
    let dst = super::SendPtr(image.as_mut_ptr());
    (0..b * h).into_par_iter().for_each(|row| {
        let (bi, y) = (row / h, row % h);
        let first = (bi * g.sample_rows + g.top + y) * g.wp + g.left;
        let src = &x.data()[bi * cin * h * w + y * w..];
        // SAFETY: AVX-512F comes with AMX; positions first..first+w of the image, which lies
        // inside it (sized by the caller), are this task's alone.
        unsafe { row_to_bf16(src, h * w, cin, w, dst.get().cast::<u16>().add(first * cin)) };
    });
}

/// One image row: `src[c·plane + x]` for c < cin, x < w, to `dst[x·cin + c]` in bf16, 16 × 16
/// values at a time through the register transpose.
///
/// # Safety
/// AVX-512F; `dst` holds w·cin values; `src` holds (cin−1)·plane + w values.
#[target_feature(enable = "avx512f")]
unsafe fn row_to_bf16(src: &[f32], plane: usize, cin: usize, w: usize, dst: *mut u16) {
    for x0 in (0..w).step_by(16) {
        let n = (w - x0).min(16);
        let mask = lane_mask(n);
        for c0 in (0..cin).step_by(16) {
            let mut rows = [_mm512_setzero_ps(); 16];
            for (c, r) in rows.iter_mut().enumerate() {
                // SAFETY: channel c0+c, columns x0..x0+n of this row.
                *r =
                    unsafe { _mm512_maskz_loadu_ps(mask, src.as_ptr().add((c0 + c) * plane + x0)) };
            }
            let t = transpose16(&rows);
            for (x, v) in t.iter().enumerate().take(n) {
                let half = _mm512_cvtepi32_epi16(super::gemm_bf16::round_bf16(*v));
                // SAFETY: position x0+x, channels c0..c0+16 of the row.
                unsafe {
                    _mm256_storeu_si256(dst.add((x0 + x) * cin + c0).cast(), half);
                }
            }
        }
    }
}

/// Values a buffer holds past a 64-byte aligned run: `n + ALIGN_PAD` f32 hold one of `n`. Tile
/// loads and stores from unaligned rows cost several times more than aligned ones (measured: a
/// 1 KiB tile load from L1 took 16.7 ns unaligned, 2.5 ns aligned), and the allocator aligns
/// f32 buffers to 16 bytes at best.
pub(super) const ALIGN_PAD: usize = 16;

/// The 64-byte aligned run of `n` values in `v` (of at least `n + ALIGN_PAD`).
pub(super) fn aligned_mut(v: &mut [f32], n: usize) -> &mut [f32] {
    let off = v.as_ptr().align_offset(64);
    &mut v[off..off + n]
}

/// The values of `v` from its first 64-byte aligned one (where `aligned_mut` put them).
fn aligned(v: &[f32]) -> &[f32] {
    &v[v.as_ptr().align_offset(64)..]
}

/// How a call's output positions split into samples: `count` samples of `positions` positions,
/// `stride` apart; `all` the padded positions of a dense call (one run over every sample), or 0
/// where even dense calls run sample by sample.
pub(super) struct Samples {
    pub count: usize,
    pub stride: usize,
    pub positions: usize,
    pub all: usize,
}

impl Samples {
    /// Runs the tile kernel over every output position: dense, once on the layer's packed
    /// weights (kept in `cpu::pack_cache` under `key` when given); with `mask`, sample by
    /// sample on `W ⊙ mask(b)`, packed for it, in order (a sample's last micro block may run
    /// into the next sample's first rows, which that sample then writes afresh). `job` makes
    /// the kernel's operands for a packing.
    ///
    /// # Safety
    /// AMX is available; the `Job`s `job` makes hold every position and tap the runs reach
    /// (`all` positions dense; per sample, `stride·b + positions` rounded up to 32, past the
    /// start), with `cin` and `k` those of `weight` [cout, cin, k, k].
    pub(super) unsafe fn run(
        &self,
        weight: &Tensor,
        (cin, k): (usize, usize),
        key: Option<u64>,
        mask: Option<MaskFn>,
        job: impl Fn(&[f32]) -> Job,
    ) -> Result<()> {
        let cout = weight.shape()[0];
        let packed_len = numel_of(&[cout / 16, k * k * cin / 32, TILE / 2], "bf16 weights")?;
        let pack = |m: Option<MaskView>| {
            let mut packed = try_zeroed_vec(packed_len + ALIGN_PAD, "bf16 weights")?;
            pack_weights(
                weight.data(),
                cin,
                k,
                m,
                aligned_mut(&mut packed, packed_len),
            );
            Ok((packed, packed_len * 4))
        };
        let count = self.positions.next_multiple_of(32);
        // SAFETY (each run): the caller's contract.
        let dense = |packed: &[f32]| {
            if self.all > 0 {
                unsafe { job(aligned(packed)).run(0, self.all) };
            } else {
                for bi in 0..self.count {
                    unsafe { job(aligned(packed)).run(bi * self.stride, count) };
                }
            }
        };
        match (mask, key) {
            (Some(mask), _) => {
                for bi in 0..self.count {
                    let packed = pack(Some(mask(bi)))?.0;
                    unsafe { job(aligned(&packed)).run(bi * self.stride, count) };
                }
            }
            (None, Some(uid)) => {
                let id = (weight.data().as_ptr() as usize, 0);
                let kernel = super::pack_cache::Kernel::Amx;
                dense(&super::pack_cache::get_or_pack(uid, kernel, id, || {
                    pack(None)
                })?);
            }
            (None, None) => dense(&pack(None)?.0),
        }
        Ok(())
    }
}

/// Packs `w` [cout, cin, k, k] as VNNI B tiles: strip s (output channels 16s..16s+16), depth tile
/// d = tap·cin/32 + c/32; row r holds, per output channel j, w[16s+j][c+2r][tap] and
/// w[16s+j][c+2r+1][tap].
fn pack_weights(w: &[f32], cin: usize, k: usize, mask: Option<MaskView>, packed: &mut [f32]) {
    let taps = k * k;
    let depth_tiles = taps * cin / 32;
    packed
        .par_chunks_mut(depth_tiles * TILE / 2)
        .enumerate()
        .for_each(|(s, strip)| {
            let strip: &mut [u16] = bytemuck::cast_slice_mut(strip);
            for tap in 0..taps {
                for cb in 0..cin / 32 {
                    let tile = &mut strip[(tap * cin / 32 + cb) * TILE..][..TILE];
                    for r in 0..16 {
                        for j in 0..16 {
                            let co = 16 * s + j;
                            for e in 0..2 {
                                let c = 32 * cb + 2 * r + e;
                                let i = c * taps + tap;
                                let keep = mask.is_none_or(|m| m.bit(co, i));
                                let v = if keep { w[co * cin * taps + i] } else { 0.0 };
                                tile[r * 32 + 2 * j + e] = amx::bf16_bits(v);
                            }
                        }
                    }
                }
            }
        });
}

/// The operands of one convolution, shared by its tasks: the bf16 channels-last image (`cin`
/// values per position, positions `wp` apart per kernel row), the packed weights, and the
/// position-major f32 accumulator (`cout` values per position). With a `bias` (`cout` values;
/// null: none) the accumulators start from it rather than from zero. With `gate` = d > 0 the
/// layer is GEGLU's projection: output channel j < d is `h_j · gelu(g_j)` of the product's
/// channels h_j = j and g_j = d + j (`vector::geglu_row`), and the accumulator holds d values
/// per position.
pub(super) struct Job {
    pub image: *const u16,
    pub weights: *const u16,
    pub acc: *mut f32,
    pub bias: *const f32,
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub wp: usize,
    pub stride: usize,
    pub depth_tiles: usize,
    pub gate: usize,
}

// SAFETY: tasks read `image`, `weights` and `bias` only and write disjoint blocks of `acc`.
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    /// Output positions first..first+count (a multiple of 32), every channel, on rayon's pool
    /// in blocks of `POSITIONS` × `COUTS`.
    ///
    /// # Safety
    /// AMX is available; `acc` holds the positions, `image` every tap of them, `weights` the
    /// packed layer, and nothing else touches the block meanwhile.
    pub(super) unsafe fn run(&self, first: usize, count: usize) {
        let (tp, tc) = (count.div_ceil(POSITIONS), self.out_cols().div_ceil(COUTS));
        (0..tp * tc).into_par_iter().for_each(|t| {
            let (q, c0) = ((t / tc) * POSITIONS, (t % tc) * COUTS);
            // SAFETY: the caller's contract; tasks write disjoint blocks.
            unsafe {
                self.block(
                    first + q,
                    POSITIONS.min(count - q),
                    c0,
                    COUTS.min(self.out_cols() - c0),
                )
            };
        });
    }

    /// How many columns past a micro block's first strip its second one starts: the next 16,
    /// or for GEGLU the gate's half.
    fn second_strip(&self) -> usize {
        if self.gate > 0 {
            self.gate
        } else {
            16
        }
    }

    /// Values per position of the accumulator.
    fn out_cols(&self) -> usize {
        if self.gate > 0 {
            self.gate
        } else {
            self.cout
        }
    }

    /// Output positions q0..q0+rows (a multiple of 32), channels c0..c0+cols (a multiple of 16).
    ///
    /// # Safety
    /// AMX is available; the block lies in `acc`, no other thread writes it; the image holds
    /// every position a tap of these outputs reads.
    unsafe fn block(&self, q0: usize, rows: usize, c0: usize, cols: usize) {
        // SAFETY: as this function's contract.
        unsafe {
            amx::configure();
            // GEGLU pairs each strip of 16 with its gate's.
            let step = if self.gate > 0 { 16 } else { 32 };
            for cc in (c0..c0 + cols).step_by(step) {
                let two_b = self.gate > 0 || cc + 16 < c0 + cols;
                for q in (q0..q0 + rows).step_by(32) {
                    if two_b {
                        self.micro::<true>(q, cc);
                    } else {
                        self.micro::<false>(q, cc);
                    }
                }
            }
            amx::release();
        }
    }

    /// Positions q..q+32, channels cc..cc+16 (and with `TWO_B` the next 16, or with a gate
    /// those 16 channels' gates) over the whole depth, stored position-major into `acc`.
    ///
    /// # Safety
    /// As `block`, the tiles configured.
    #[inline(always)]
    unsafe fn micro<const TWO_B: bool>(&self, q: usize, cc: usize) {
        // A tile's 16 outputs are `stride` image positions apart.
        let row = self.stride * self.cin * 2;
        let cblocks = self.cin / 32;
        // SAFETY: as `block`.
        unsafe {
            if self.bias.is_null() {
                amx::zero::<0>();
                amx::zero::<1>();
                amx::zero::<2>();
                amx::zero::<3>();
            } else {
                // Every row of the tiles starts from the bias (16 rows read with stride 0).
                let bias = self.bias.add(cc).cast::<u8>();
                let bias1 = self.bias.add(cc + self.second_strip()).cast::<u8>();
                amx::load::<0>(bias, 0);
                amx::load::<2>(bias, 0);
                if TWO_B {
                    amx::load::<1>(bias1, 0);
                    amx::load::<3>(bias1, 0);
                }
            }
            let b0 = self.weights.add((cc / 16) * self.depth_tiles * TILE);
            let b1 = self
                .weights
                .add(((cc + self.second_strip()) / 16) * self.depth_tiles * TILE);
            let mut d = 0;
            for ki in 0..self.k {
                for kj in 0..self.k {
                    let a = self
                        .image
                        .add((self.stride * q + ki * self.wp + kj) * self.cin);
                    for cb in 0..cblocks {
                        let a0 = a.add(32 * cb);
                        amx::load::<4>(a0.cast(), row);
                        amx::load::<5>(a0.add(16 * self.stride * self.cin).cast(), row);
                        amx::load::<6>(b0.add(d * TILE).cast(), 64);
                        amx::dot::<0, 4, 6>();
                        amx::dot::<2, 5, 6>();
                        if TWO_B {
                            amx::load::<7>(b1.add(d * TILE).cast(), 64);
                            amx::dot::<1, 4, 7>();
                            amx::dot::<3, 5, 7>();
                        }
                        d += 1;
                    }
                }
            }
            let c = self.acc.add(q * self.out_cols() + cc);
            if self.gate == 0 && (c as usize).is_multiple_of(64) {
                store_tiles::<TWO_B>(c.cast(), self.cout * 4);
                return;
            }
            // A GEGLU block, or unaligned rows (a linear layer's output): through an aligned
            // block in L1.
            let mut block = std::mem::MaybeUninit::<Block>::uninit();
            store_tiles::<TWO_B>(block.as_mut_ptr().cast(), 32 * 4);
            // SAFETY (both arms): the stores wrote the block's first 16 (with `TWO_B` 32)
            // columns of every row, all that is read.
            if self.gate > 0 {
                let rows = &*block.as_ptr();
                for (r, vals) in rows.0.iter().enumerate() {
                    let (h, g) = vals.split_at(16);
                    // Row r of C holds `gate` values.
                    let out = std::slice::from_raw_parts_mut(c.add(r * self.gate), 16);
                    super::vector::geglu_row(out, h, g);
                }
            } else {
                copy_block(block.as_ptr(), c, self.cout, if TWO_B { 32 } else { 16 });
            }
        }
    }
}

/// Stores accumulator tiles 0 and 2 (rows 0–15 and 16–31 of columns 0–15) and with `TWO_B`
/// tiles 1 and 3 (columns 16–31) as a 32-row block at `c`, rows `row_bytes` apart.
///
/// # Safety
/// The tiles are configured; the block's rows lie in writable memory no reference holds.
#[inline(always)]
unsafe fn store_tiles<const TWO_B: bool>(c: *mut u8, row_bytes: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        amx::store::<0>(c, row_bytes);
        amx::store::<2>(c.add(16 * row_bytes), row_bytes);
        if TWO_B {
            amx::store::<1>(c.add(64), row_bytes);
            amx::store::<3>(c.add(16 * row_bytes + 64), row_bytes);
        }
    }
}

/// A 32 × 32 f32 block staging one micro block's tiles.
#[repr(C, align(64))]
struct Block([[f32; 32]; 32]);

/// The 32 rows of `cols` (16 or 32) values of `block` to `c`, rows `row` values apart.
///
/// # Safety
/// AVX-512F; those values of the block are written; C's rows lie in writable memory no
/// reference holds.
#[target_feature(enable = "avx512f")]
unsafe fn copy_block(block: *const Block, c: *mut f32, row: usize, cols: usize) {
    let src = block.cast::<f32>();
    for r in 0..32 {
        for j in (0..cols).step_by(16) {
            // SAFETY: row r, columns j..j+16 of the block and of C.
            unsafe { _mm512_storeu_ps(c.add(r * row + j), _mm512_load_ps(src.add(r * 32 + j))) };
        }
    }
}

/// `acc` [positions][cout] to `out` NCHW, plus the bias, dropping the padding positions: per
/// task 16 output planes, moved 16 positions × 16 channels at a time through the transpose.
fn copy_out(
    acc: &[f32],
    out: &mut [f32],
    (cout, h, w): (usize, usize, usize),
    g: &Geometry,
    bias: Option<&[f32]>,
) {
    let (stride, pitch) = (g.out_stride, g.out_pitch);
    out.par_chunks_mut(16 * h * w)
        .enumerate()
        .for_each(|(t, o)| {
            let (bi, co0) = ((16 * t) / cout, (16 * t) % cout);
            // SAFETY: AVX-512F comes with AMX (`takes`).
            unsafe { copy_planes(acc, o, (bi, co0), (cout, h, w), (stride, pitch), bias) };
        });
}

/// Output planes co0..co0+16 of sample bi into `o`.
///
/// # Safety
/// AVX-512F; `acc` holds every position of sample bi (`cout` values each), `o` 16·h·w values.
#[target_feature(enable = "avx512f")]
unsafe fn copy_planes(
    acc: &[f32],
    o: &mut [f32],
    (bi, co0): (usize, usize),
    (cout, h, w): (usize, usize, usize),
    (stride, pitch): (usize, usize),
    bias: Option<&[f32]>,
) {
    let add: [f32; 16] = std::array::from_fn(|c| bias.map_or(0.0, |bv| bv[co0 + c]));
    for y in 0..h {
        let row0 = bi * stride + y * pitch;
        for x0 in (0..w).step_by(16) {
            let n = (w - x0).min(16);
            let mut rows = [_mm512_setzero_ps(); 16];
            for (x, r) in rows.iter_mut().enumerate().take(n) {
                // SAFETY: position row0+x0+x, channels co0..co0+16 lie in `acc`.
                *r = unsafe { _mm512_loadu_ps(acc.as_ptr().add((row0 + x0 + x) * cout + co0)) };
            }
            let mask = lane_mask(n);
            for (c, v) in transpose16(&rows).iter().enumerate() {
                let v = _mm512_add_ps(*v, _mm512_set1_ps(add[c]));
                // SAFETY: plane c, row y, columns x0..x0+n of `o`.
                unsafe { _mm512_mask_storeu_ps(o.as_mut_ptr().add((c * h + y) * w + x0), mask, v) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer's bf16 packing is kept under its uid, gives the uncached result bit for bit, and
    /// goes with `evict`.
    #[test]
    fn packed_tiles_are_cached_by_uid_until_evicted() {
        if !amx::available() {
            eprintln!("no AMX-BF16 here: the tile convolution does not run");
            return;
        }
        let uid = crate::nn::fresh_uid();
        let x = Tensor::randn([2, 64, 6, 5], 1);
        let w = Tensor::randn([48, 64, 3, 3], 2);
        let bias: Vec<f32> = Tensor::randn([48], 3).data().to_vec();
        let plain = conv2d_same(&x, &w, Some(&bias), None, None).unwrap();
        let holds = || super::super::pack_cache::holds(uid, super::super::pack_cache::Kernel::Amx);
        assert!(!holds());
        assert_eq!(
            conv2d_same(&x, &w, Some(&bias), Some(uid), None).unwrap(),
            plain
        );
        assert!(holds());
        assert_eq!(
            conv2d_same(&x, &w, Some(&bias), Some(uid), None).unwrap(),
            plain
        );
        super::super::pack_cache::evict(&[uid]);
        assert!(!holds());
    }

    /// The stride-2 tile convolution gives the f32 convolution of the bf16-rounded operands
    /// (to f32 accumulation order), dense, cached and masked, over odd and even sizes and
    /// diffusers' two downsampling paddings.
    #[test]
    fn strided_tiles_match_the_f32_convolution_of_rounded_operands() {
        use super::super::conv::try_conv2d_in;
        use super::super::gemm::Precision;
        use crate::boosters::masks::WeightMask;
        if !amx::available() {
            eprintln!("no AMX-BF16 here: the tile convolution does not run");
            return;
        }
        let rounded = |t: &Tensor| {
            let v = t
                .data()
                .iter()
                .map(|&v| f32::from_bits((amx::bf16_bits(v) as u32) << 16));
            Tensor::new(t.shape(), v.collect()).unwrap()
        };
        let asym = Padding {
            top: 0,
            bottom: 1,
            left: 0,
            right: 1,
        };
        for (b, cin, cout, h, w) in [(2, 32, 16, 8, 8), (1, 64, 48, 7, 9), (3, 32, 32, 2, 3)] {
            for pad in [Padding::same(1), asym] {
                let x = Tensor::randn([b, cin, h, w], 7);
                let wt = Tensor::randn([cout, cin, 3, 3], 8);
                let bias: Vec<f32> = Tensor::randn([cout], 9).data().to_vec();
                let (xr, wr) = (rounded(&x), rounded(&wt));
                let close = |got: &Tensor, want: &Tensor| {
                    assert_eq!(got.shape(), want.shape());
                    for (g, e) in got.data().iter().zip(want.data()) {
                        assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "{g} vs {e}");
                    }
                };
                let want = try_conv2d_in(&xr, &wr, Some(&bias), 2, pad, None, Precision::F32);
                let got = conv2d_strided(&x, &wt, Some(&bias), pad, None, None).unwrap();
                close(&got, &want.unwrap());
                let uid = crate::nn::fresh_uid();
                let cached = conv2d_strided(&x, &wt, Some(&bias), pad, Some(uid), None).unwrap();
                assert_eq!(cached, got);
                super::super::pack_cache::evict(&[uid]);
                let bits: Vec<u8> = (0..b * cout * cin * 9)
                    .map(|j| (j % 7 != 0) as u8)
                    .collect();
                let set = WeightMask::from_bytes(vec![cout, cin, 3, 3], None, Some(b), &bits);
                let set = set.unwrap();
                let view = |s: usize| set.view(0, s);
                let want = try_conv2d_in(&xr, &wr, None, 2, pad, Some(&view), Precision::F32);
                let got = conv2d_strided(&x, &wt, None, pad, None, Some(&view)).unwrap();
                close(&got, &want.unwrap());
            }
        }
    }
}
