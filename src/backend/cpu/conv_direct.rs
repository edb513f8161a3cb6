//! Direct k×k stride-1 "same" convolution on a hand-written AVX-512 f32 microkernel,
//! the path `conv::try_conv2d_masked` takes on CPUs with AVX-512F (the `gemm`-crate implicit
//! GEMM of `conv.rs` stays as the portable fallback, and runs everywhere when
//! `FREELUNCH_CPU_CONV=gemm` is set).
//!
//! Algorithm (oneDNN's direct convolution on blocked layouts, adapted to the "tall image" of
//! `conv.rs`):
//! - The input is copied once into a zero-padded channels-last tall image: the samples stacked
//!   vertically with p = (k−1)/2 zero rows between them and p zero columns closing each row, each
//!   position holding its `Cin` channels contiguously. Output pixel (b, y, x) sits at position
//!   q = (b·(H+p) + y)·Wp + x and tap (ki, kj) reads position q + ki·Wp + kj, so every tap of a
//!   run of consecutive positions is a run of consecutive positions too.
//! - Weights are packed into blocks of 32 output channels (16 for a last block of ≤ 16), as
//!   `[tap][Cin][32]`, zero beyond `Cout`: one 64-byte row per (tap, input channel).
//! - The microkernel holds an N×V register tile of accumulators (N ≤ 14 consecutive positions,
//!   V ≤ 2 vectors of 16 output channels: up to 28 zmm registers). A task runs its chunk of
//!   positions once per block of `icb()` = 16 input channels: each tile starts at the bias (first
//!   block) or at what the previous block stored, and for every tap and input channel of the
//!   block loads V weight vectors and does N·V FMAs with the input value broadcast, then stores
//!   the tile, position-major (`[positions][Cout]`, masked for the last channels). The block's
//!   weights (taps·16·32 floats, 18 KiB at 3×3) stay in L1 across the chunk; the tile's
//!   round trip through memory is 2·N·V accesses per taps·16·N·V FMAs. At the end the result is
//!   transposed to NCHW (the padding columns dropped).
//! - Tasks are (sample, tile of 64 output channels, chunk of positions), as in `conv.rs`. A
//!   masked layer packs `W ⊙ M_b` for its tile inside each task (masks applied while packing);
//!   a dense layer packs once per call, or once per layer when the backend passes its uid
//!   (`conv::try_conv2d_layer`: the process-wide `cpu::pack_cache`, capped at
//!   FREELUNCH_PACK_CACHE_MB, default 2048). Both run the same kernel on the same values, so an
//!   all-ones mask gives the dense output bit for bit.
//!
//! Limits: groups = 1, stride 1, odd square kernels with "same" padding (1×1 works but is not
//! routed here: see `conv.rs`); every summation order
//! differs from the GEMM path's, so the two agree to f32 rounding, not bit for bit.
//! Tested: `tests/ops_props.rs` (against a scalar reference on random shapes with odd channel
//! counts, width 1, batch 1, and against the GEMM path), the U-Net goldens (`tests/golden.rs`) and
//! the mask tests (`tests/masks.rs`, all-ones mask bit-identical to dense). Benched:
//! `benches/cpu_ops.rs` (GFLOP/s per shape, `FREELUNCH_CPU_CONV=gemm` for the old path) and
//! `benches/cpu_forward.rs`.

use std::sync::Arc;

use rayon::prelude::*;

use super::masked::MaskFn;
use super::SendPtr;
use crate::error::{Error, Result};
use crate::tensor::{numel_of, try_zeroed_vec, Scratch, Tensor};

/// Output channels per register block (two 16-lane vectors).
const BLOCK: usize = 32;
/// Output channels per task (two blocks).
const TILE: usize = 64;
/// Most positions per microkernel call (the register tile's rows).
const NMAX: usize = 14;
/// Most positions per task. Tunable with FREELUNCH_CONV_CHUNK for benches.
fn chunk_max() -> usize {
    static CHUNK: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    super::switch::tunable(&CHUNK, "FREELUNCH_CONV_CHUNK", 1024)
}

/// Input channels per pass over a chunk (the block's weights for them, taps·ICB·32 floats,
/// stay in L1 across the chunk's tiles). Tunable with FREELUNCH_CONV_ICB for benches.
fn icb() -> usize {
    static ICB: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    super::switch::tunable(&ICB, "FREELUNCH_CONV_ICB", 16)
}

static SWITCH: super::switch::Switch = super::switch::Switch::new("FREELUNCH_CPU_CONV", "gemm");

/// Whether the direct path runs here: AVX-512F detected, and neither turned off with
/// `FREELUNCH_CPU_CONV=gemm` nor by [`set_enabled`].
pub fn available() -> bool {
    SWITCH.on()
}

/// Largest image (H·W) routed to the direct path. Measured (`benches/conv_peak.rs`,
/// BENCHMARKS.md): the direct kernel is 0.2–0.85× the GEMM path's time at 16×16 and below, but
/// 1.0–1.4× at 32×32 and 64×64, where it loses more to its transposes and L2 misses than the
/// GEMM (which packs its own panels) does; those stay on the GEMM until the kernel is fixed.
pub const MAX_POSITIONS: usize = 256;

/// Whether an H×W image's stride-1 "same" k×k convolution (k > 1) runs on the direct path:
/// [`available`] and H·W ≤ [`MAX_POSITIONS`].
pub fn takes(h: usize, w: usize) -> bool {
    h.checked_mul(w).is_some_and(|n| n <= MAX_POSITIONS) && available()
}

/// Turns the direct path on (where the CPU has AVX-512F) or off (the GEMM path of `conv.rs`
/// everywhere) for the whole process, for benches and tests that set the two side by side;
/// returns whether it is on now.
pub fn set_enabled(on: bool) -> bool {
    SWITCH.set(on)
}

fn too_large(what: &str) -> Error {
    Error::TooLarge {
        what: format!("conv2d {what}"),
        detail: "its size overflows".into(),
    }
}

/// Weights packed for the microkernel: blocks of `BLOCK` (or 16) output channels, each
/// `[taps][cin][lanes]`, zero beyond the real channels.
#[derive(Default)]
struct Packed {
    data: Vec<f32>,
    /// Index of the first element of `data` that is 64-byte aligned.
    start: usize,
    /// Per block: (first output channel relative to the packed rows, channels, lanes 16 or 32,
    /// offset in the aligned data).
    blocks: Vec<(usize, usize, usize, usize)>,
    /// Per block: the bias (zero-padded to the lanes), offset in `bias`.
    bias: Vec<f32>,
}

/// Packs `rows` output channels (row-major `[rows][cin][taps]`, PyTorch's layout) for the
/// microkernel; `bias` is theirs.
fn pack(w: &[f32], rows: usize, cin: usize, taps: usize, bias: Option<&[f32]>) -> Result<Packed> {
    let mut p = Packed::default();
    pack_into(&mut p, w, rows, cin, taps, bias)?;
    Ok(p)
}

thread_local! {
    /// This thread's buffers for the masked tiles it packs (grown once, then reused).
    static MASKED_PACK: std::cell::Cell<Option<Packed>> = const { std::cell::Cell::new(None) };
}

/// A masked tile packed in this thread's buffers (given back when dropped).
struct PackedTile(Option<Packed>);

impl std::ops::Deref for PackedTile {
    type Target = Packed;
    fn deref(&self) -> &Packed {
        self.0.as_ref().expect("held until dropped")
    }
}

impl Drop for PackedTile {
    fn drop(&mut self) {
        let p = self.0.take();
        let _ = MASKED_PACK.try_with(|slot| slot.set(p));
    }
}

/// As [`pack`], into this thread's reused buffers (the masked path packs a tile per task).
fn pack_tile(
    w: &[f32],
    rows: usize,
    cin: usize,
    taps: usize,
    bias: Option<&[f32]>,
) -> Result<PackedTile> {
    let mut p = MASKED_PACK
        .try_with(std::cell::Cell::take)
        .ok()
        .flatten()
        .unwrap_or_default();
    pack_into(&mut p, w, rows, cin, taps, bias)?;
    Ok(PackedTile(Some(p)))
}

/// [`pack`] into `p`, reusing its buffers.
fn pack_into(
    p: &mut Packed,
    w: &[f32],
    rows: usize,
    cin: usize,
    taps: usize,
    bias: Option<&[f32]>,
) -> Result<()> {
    let row_len = cin * taps;
    let blocks = &mut p.blocks;
    blocks.clear();
    let mut len = 0usize;
    let mut r = 0;
    while r < rows {
        let n = (rows - r).min(BLOCK);
        let lanes = if n <= 16 { 16 } else { BLOCK };
        blocks.push((r, n, lanes, len));
        len = taps
            .checked_mul(cin)
            .and_then(|v| v.checked_mul(lanes))
            .and_then(|v| v.checked_add(len))
            .ok_or_else(|| too_large("packed weights"))?;
        r += n;
    }
    let data = &mut p.data;
    data.clear();
    if data.try_reserve_exact(len + 16).is_err() {
        // The allocator's own error, named (as `try_zeroed_vec` would).
        *data = try_zeroed_vec(len + 16, "conv2d packed weights")?;
    }
    data.resize(len + 16, 0.0);
    let start = (16 - (data.as_ptr() as usize / 4) % 16) % 16;
    p.start = start;
    p.bias.clear();
    p.bias.resize(blocks.len() * BLOCK, 0.0);
    // The blocks are consecutive runs of `data`: split them off and fill them in parallel.
    let mut dsts: smallvec::SmallVec<[&mut [f32]; 16]> = smallvec::SmallVec::new();
    let mut rest = &mut data[start..];
    for &(_, _, lanes, _) in blocks.iter() {
        let (d, r) = rest.split_at_mut(taps * cin * lanes);
        dsts.push(d);
        rest = r;
    }
    dsts.par_iter_mut()
        .zip(&blocks[..])
        .for_each(|(dst, &(r0, n, lanes, _))| {
            for j in 0..n {
                let src = &w[(r0 + j) * row_len..(r0 + j + 1) * row_len];
                for ci in 0..cin {
                    for t in 0..taps {
                        dst[(t * cin + ci) * lanes + j] = src[ci * taps + t];
                    }
                }
            }
        });
    if let Some(b) = bias {
        for (bi, &(r0, n, _, _)) in blocks.iter().enumerate() {
            p.bias[bi * BLOCK..bi * BLOCK + n].copy_from_slice(&b[r0..r0 + n]);
        }
    }
    Ok(())
}

/// The dense layer `key`'s packed weights: packed once, then shared by every later call (a
/// layer's weights are immutable tensors), while `pack_cache` is under its cap.
fn cached_pack(
    key: u64,
    weight: &Tensor,
    cin: usize,
    taps: usize,
    bias: Option<&[f32]>,
) -> Result<Arc<Packed>> {
    let id = (
        weight.data().as_ptr() as usize,
        bias.map_or(0, |b| b.as_ptr() as usize),
    );
    super::pack_cache::get_or_pack(key, super::pack_cache::Kernel::Direct, id, || {
        let packed = pack(weight.data(), weight.shape()[0], cin, taps, bias)?;
        let bytes = packed.data.len() * 4;
        Ok((packed, bytes))
    })
}

/// The padded channels-last tall image of the batch (see the module doc).
struct TallImage {
    data: Scratch,
    wp: usize,
    /// Positions in `data` (each `cin` values).
    positions: usize,
    /// Positions from one sample's first row to the next sample's.
    sample_stride: usize,
    /// Positions covering every output pixel of a sample.
    sample_positions: usize,
}

impl TallImage {
    fn new(x: &Tensor, k: usize) -> Result<Self> {
        let [b, cin, h, w] = x.shape()[..] else {
            return Err(Error::shape(
                "conv2d",
                format!("input shape {:?}", x.shape()),
            ));
        };
        let p = (k - 1) / 2;
        let big = || too_large("padded input");
        let wp = w.checked_add(p).ok_or_else(big)?;
        let rows = h
            .checked_add(p)
            .and_then(|v| v.checked_mul(b))
            .and_then(|v| v.checked_add(p))
            .ok_or_else(big)?;
        // + margins so every tap of every position stays in bounds.
        let positions = rows
            .checked_mul(wp)
            .and_then(|v| v.checked_add(2 * p))
            .ok_or_else(big)?;
        let sample_stride = (h + p).checked_mul(wp).ok_or_else(big)?;
        let mut data = Scratch::zeroed(
            numel_of(&[positions, cin], "conv2d padded input")?,
            "conv2d padded input",
        )?;
        // One task per (sample, image row): its destination positions are one run.
        let xs = x.data();
        let rows_per = h;
        let dst_ptr = SendPtr(data.as_mut_ptr());
        let dst_len = data.len();
        (0..b * rows_per).into_par_iter().for_each(|task| {
            let (bi, y) = (task / rows_per, task % rows_per);
            let at = (p + bi * (h + p) + y) * wp + p;
            assert!((at + w) * cin <= dst_len);
            // SAFETY: in bounds (checked); rows of distinct (sample, y) are disjoint runs of
            // positions, so no two tasks write the same element.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(dst_ptr.get().add(at * cin), w * cin) };
            for ci in 0..cin {
                let src = &xs[((bi * cin + ci) * h + y) * w..][..w];
                for (xx, &v) in src.iter().enumerate() {
                    dst[xx * cin + ci] = v;
                }
            }
        });
        Ok(TallImage {
            data,
            wp,
            positions,
            sample_stride,
            sample_positions: (h - 1) * wp + w,
        })
    }
}

/// `x` [B, Cin, H, W] ⊛ `weight` [Cout, Cin, k, k] with "same" padding, stride 1, k odd; the
/// caller (`conv::try_conv2d_masked`) checked the shapes and that `available()`.
pub(crate) fn conv2d_same(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&[f32]>,
    mask: Option<MaskFn>,
) -> Result<Tensor> {
    conv2d_same_keyed(x, weight, bias, mask, None)
}

/// As `conv2d_same`, the dense layer's packed weights cached under `key` (a layer's uid) when
/// given (see `cached_pack`).
pub(crate) fn conv2d_same_keyed(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&[f32]>,
    mask: Option<MaskFn>,
    key: Option<u64>,
) -> Result<Tensor> {
    let [b, cin, h, w] = x.shape()[..] else {
        return Err(Error::shape(
            "conv2d",
            format!("input shape {:?}", x.shape()),
        ));
    };
    let [cout, _, k, _] = weight.shape()[..] else {
        return Err(Error::shape(
            "conv2d",
            format!("weight shape {:?}", weight.shape()),
        ));
    };
    let taps = k * k;
    let row_len = cin * taps;
    let out_len = numel_of(&[b, cout, h, w], "conv2d output")?;
    let img = TallImage::new(x, k)?;
    let offs: smallvec::SmallVec<[usize; 9]> = (0..k)
        .flat_map(|ki| (0..k).map(move |kj| (ki, kj)))
        .map(|(ki, kj)| ki * img.wp + kj)
        .collect();
    let acc_len = numel_of(&[b, img.sample_stride, cout], "conv2d accumulator")?;
    let mut acc = Scratch::zeroed(acc_len, "conv2d accumulator")?;
    let dense = match (mask, key) {
        (None, Some(key)) => Some(cached_pack(key, weight, cin, taps, bias)?),
        (None, None) => Some(Arc::new(pack(weight.data(), cout, cin, taps, bias)?)),
        (Some(_), _) => None,
    };
    let tiles = cout.div_ceil(TILE);
    // Chunks of positions: enough tasks for the pool, at most `chunk_max()` positions (whose
    // input rows stay in L2 across the passes over input-channel blocks).
    let threads = rayon::current_num_threads();
    let want = (4 * threads).div_ceil(b);
    let cmax = chunk_max();
    let per_sample = img
        .sample_positions
        .div_ceil(cmax)
        .max(want.min(img.sample_positions.div_ceil(64)))
        .max(1);
    let chunk = img.sample_positions.div_ceil(per_sample);
    let acc_ptr = SendPtr(acc.as_mut_ptr());
    (0..b * tiles * per_sample)
        .into_par_iter()
        .try_for_each(|task| -> Result<()> {
            let (bi, rest) = (task / (tiles * per_sample), task % (tiles * per_sample));
            let (t, c) = (rest / per_sample, rest % per_sample);
            let (r0, r1) = (t * TILE, ((t + 1) * TILE).min(cout));
            let (q0, q1) = (c * chunk, ((c + 1) * chunk).min(img.sample_positions));
            if q0 >= q1 {
                return Ok(());
            }
            let staged;
            let (packed, block_base) = match (&dense, mask) {
                (Some(p), _) => (&**p, r0 / BLOCK),
                (None, Some(mask)) => {
                    let rows = super::masked::stage_masked_rows(
                        weight.data(),
                        row_len,
                        (r0, r1),
                        mask(bi),
                    );
                    staged = pack_tile(&rows, r1 - r0, cin, taps, bias.map(|bv| &bv[r0..r1]))?;
                    (&*staged, 0)
                }
                (None, None) => unreachable!("dense weights are packed when there is no mask"),
            };
            let base = bi * img.sample_stride;
            // Bounds of everything the kernel touches for this task.
            let last_read = (base + q1 - 1 + offs[taps - 1] + 1) * cin;
            assert!(last_read <= img.data.len() && base + q1 + offs[taps - 1] <= img.positions);
            assert!((base + q1 - 1) * cout + r1 <= acc_len);
            let nblocks = (r1 - r0).div_ceil(BLOCK);
            for blk in block_base..block_base + nblocks {
                let (br0, n, lanes, off) = packed.blocks[blk];
                let oc0 = if dense.is_some() { br0 } else { r0 + br0 };
                assert!(off + taps * cin * lanes <= packed.data.len() - packed.start);
                let wptr = packed.data[packed.start + off..].as_ptr();
                let bptr = packed.bias[blk * BLOCK..].as_ptr();
                let icb = icb();
                for ic0 in (0..cin).step_by(icb) {
                    let ic1 = (ic0 + icb).min(cin);
                    let mut q = q0;
                    while q < q1 {
                        let nq = (q1 - q).min(NMAX);
                        // SAFETY: reads of `img.data` stay below `last_read`, of the weights within
                        // this block, of the bias within its 32 values; writes go to positions
                        // base+q0..base+q1, channels oc0..oc0+n of `acc`, checked above, which no
                        // other task writes (tasks own disjoint (position, channel) ranges).
                        unsafe {
                            kernel::run(
                                nq,
                                lanes,
                                &kernel::Args {
                                    x: img.data.as_ptr().add((base + q) * cin),
                                    cin,
                                    offs: &offs,
                                    w: wptr,
                                    bias: bptr,
                                    out: acc_ptr.get().add((base + q) * cout + oc0),
                                    ldo: cout,
                                    mask: mask_of(n, lanes),
                                    ic: (ic0, ic1),
                                    first: ic0 == 0,
                                },
                            )
                        };
                        q += nq;
                    }
                }
            }
            Ok(())
        })?;
    let mut out = try_zeroed_vec(out_len, "conv2d output")?;
    copy_out(&acc, &mut out, (b, cout, h, w), img.wp, (k - 1) / 2);
    Ok(Tensor::from_parts([b, cout, h, w], out))
}

/// The store mask of a block's last vector: the channels of `n` that fall in it.
fn mask_of(n: usize, lanes: usize) -> u16 {
    let in_last = n - (lanes - 16);
    if in_last >= 16 {
        u16::MAX
    } else {
        (1u16 << in_last) - 1
    }
}

/// `acc` is position-major; copying out transposes each image row in tiles of positions.
fn copy_out(
    acc: &[f32],
    out: &mut [f32],
    (b, cout, h, w): (usize, usize, usize, usize),
    wp: usize,
    p: usize,
) {
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

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;

    use super::NMAX;

    /// One microkernel call: `N` positions from `x` (channels-last, `cin` per position), every
    /// tap at `offs` positions further, input channels `ic.0..ic.1`, one block of packed
    /// weights `w` (`[taps][cin][16·V]`), starting from its bias (`first`) or from `out`, into
    /// `out` (row stride `ldo`), the last vector loaded and stored under `mask`.
    pub(super) struct Args<'a> {
        pub x: *const f32,
        pub cin: usize,
        pub offs: &'a [usize],
        pub w: *const f32,
        pub bias: *const f32,
        pub out: *mut f32,
        pub ldo: usize,
        pub mask: u16,
        /// The input channels of this pass.
        pub ic: (usize, usize),
        /// Whether the tile starts at the bias (the first pass) or at what `out` holds.
        pub first: bool,
    }

    /// Dispatches to the tile of `n` (1..=NMAX) positions and `lanes` (16 or 32) channels.
    ///
    /// # Safety
    /// AVX-512F must be available; every pointer in `a` must be valid for what the tile reads
    /// and writes (see `tile`).
    pub(super) unsafe fn run(n: usize, lanes: usize, a: &Args) {
        macro_rules! dispatch {
            ($v:literal: $($n:literal)*) => {
                match n {
                    $($n => tile::<$n, $v>(a),)*
                    _ => unreachable!("tile rows 1..=NMAX"),
                }
            };
        }
        debug_assert!((1..=NMAX).contains(&n));
        if lanes == 32 {
            dispatch!(2: 1 2 3 4 5 6 7 8 9 10 11 12 13 14)
        } else {
            dispatch!(1: 1 2 3 4 5 6 7 8 9 10 11 12 13 14)
        }
    }

    /// The register tile: `N` positions × `V` vectors of 16 output channels.
    ///
    /// # Safety
    /// AVX-512F must be available. Reads `x[(n + offs[t])·cin + ic]` for n < N, every tap t and
    /// ic in `a.ic`; `w[0 .. taps·cin·16V]`; `bias[0 .. 16V]`; reads (unless `first`) and
    /// writes `out[n·ldo .. n·ldo + 16V]` (the last vector only where `mask` is set) for n < N.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const N: usize, const V: usize>(a: &Args) {
        let cin = a.cin;
        let step = 16 * V;
        let mut acc = [[_mm512_setzero_ps(); V]; N];
        for (n, row) in acc.iter_mut().enumerate() {
            for (v, r) in row.iter_mut().enumerate() {
                *r = if a.first {
                    _mm512_loadu_ps(a.bias.add(16 * v))
                } else if v + 1 == V {
                    _mm512_maskz_loadu_ps(a.mask, a.out.add(n * a.ldo + 16 * v))
                } else {
                    _mm512_loadu_ps(a.out.add(n * a.ldo + 16 * v))
                };
            }
        }
        let (ic0, ic1) = a.ic;
        {
            for (t, &off) in a.offs.iter().enumerate() {
                let xt = a.x.add(off * cin);
                let mut wt = a.w.add((t * cin + ic0) * step);
                for ic in ic0..ic1 {
                    let mut wv = [_mm512_setzero_ps(); V];
                    for (v, r) in wv.iter_mut().enumerate() {
                        *r = _mm512_load_ps(wt.add(16 * v));
                    }
                    for (n, row) in acc.iter_mut().enumerate() {
                        let xb = _mm512_set1_ps(*xt.add(n * cin + ic));
                        for (r, &wvv) in row.iter_mut().zip(&wv) {
                            *r = _mm512_fmadd_ps(xb, wvv, *r);
                        }
                    }
                    wt = wt.add(step);
                }
            }
        }
        for (n, row) in acc.iter().enumerate() {
            let o = a.out.add(n * a.ldo);
            for (v, &r) in row.iter().enumerate() {
                if v + 1 == V {
                    _mm512_mask_storeu_ps(o.add(16 * v), a.mask, r);
                } else {
                    _mm512_storeu_ps(o.add(16 * v), r);
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    pub(super) struct Args<'a> {
        pub x: *const f32,
        pub cin: usize,
        pub offs: &'a [usize],
        pub w: *const f32,
        pub bias: *const f32,
        pub out: *mut f32,
        pub ldo: usize,
        pub mask: u16,
        pub ic: (usize, usize),
        pub first: bool,
    }

    /// Never called: `available()` is false off x86-64.
    pub(super) unsafe fn run(_n: usize, _lanes: usize, _a: &Args) {
        unreachable!("the direct convolution needs AVX-512")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer's packing is cached under its uid until `evict` (a dropped model's layers).
    #[test]
    fn packed_weights_are_cached_by_uid_until_evicted() {
        if !available() {
            return; // No AVX-512 here: the GEMM path runs and nothing is packed.
        }
        let uid = crate::nn::fresh_uid();
        let x = Tensor::randn([1, 16, 8, 8], 1);
        let w = Tensor::randn([32, 16, 3, 3], 2);
        let cached =
            |uid| super::super::pack_cache::holds(uid, super::super::pack_cache::Kernel::Direct);
        let first = conv2d_same_keyed(&x, &w, None, None, Some(uid)).unwrap();
        assert!(cached(uid));
        assert_eq!(
            conv2d_same_keyed(&x, &w, None, None, Some(uid)).unwrap(),
            first
        );
        super::super::pack_cache::evict(&[uid]);
        assert!(!cached(uid));
    }
}
