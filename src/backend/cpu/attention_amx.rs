//! Flash-style scaled dot-product attention in bf16 on AMX tiles: the attention of the CPU
//! backend's `--dtype bf16` (`Precision::Bf16`), as PyTorch's CPU autocast runs
//! `scaled_dot_product_attention` in bf16. q, k, v and the softmax weights P enter the tiles as
//! bf16 (rounded to nearest even); scores, the softmax and the output accumulate in f32.
//!
//! Algorithm (`attention_flash`'s loop order, with tiles for the two products):
//! - A task is (sample, head, block of up to `ROWS` query rows). Its q rows are packed once as
//!   bf16 A tiles (16 rows × 32 depths each; dh zero-padded to a multiple of 32). The task keeps
//!   per row a running maximum m and sum l, and an unnormalised f32 output O (`[rows][dh padded
//!   to 16]`).
//! - Per block of up to `KEYS` keys: k is packed as VNNI B tiles of kᵀ (per 32 depths and 16
//!   keys: 16 rows of depth pairs, one pair per key: a 16 × 16 transpose of 32-bit pairs) and v
//!   as VNNI B tiles (per 32 keys and 16 channels: 16 rows of key pairs, one per channel).
//! - Per group of 32 query rows: S = q·kᵀ on 2 × 2 accumulator tiles per 32 keys, stored to a
//!   32 × `KEYS` f32 block; then per row, in f32 on 16 lanes, the scale, the block's maximum,
//!   α = e^(m − m'), P = e^(S − m') (`avx512::exp16`, Cephes' `expf`), l ← α·l + ΣP, and P
//!   converted to bf16 rows (`vcvtne2ps2bf16`), which are the next product's A tiles; O's rows
//!   are scaled by α, then O += P·v on 2 × 2 (or 2 × 1) accumulator tiles loaded from and stored
//!   to O.
//! - At the end O/l is written to the task's output rows.
//!
//! Error: each P is off its f32 value by at most 2⁻⁹ relative, so the output is within
//! 2⁻⁹·max|v| of the exact attention of the rounded q, k and v (plus f32 rounding), which the
//! tests assert. Denormal operands are flushed to zero (tiles and conversion alike).
//!
//! Limits: not causal (the text encoder's causal attention stays on the f32 kernel); needs
//! AMX-BF16 and AVX512-BF16 (`available`); M ≥ 1. On by default for `--dtype bf16` where
//! available; `FREELUNCH_ATTN_AMX=off` keeps the f32 flash kernel (see [`enabled`]).
//! Tested: this module's tests (against an f64 attention of the rounded operands over dh 1–160,
//! ragged N and M, several key blocks with the maximum moving, NaN inputs), the bf16 model
//! goldens (`tests/cpu_bf16.rs`). Benched: `attention_cpu_time` in `attention_flash` with
//! `FREELUNCH_ATTN_PRECISION=bf16` against `tools/bench_attention_torch.py --dtype bf16`.

use std::arch::x86_64::*;

use super::amx;
use super::attention_flash::{with_scratch, Problem};
use super::avx512::{exp16, lane_mask};
use super::gemm_bf16::transpose_pairs;
use crate::error::{Error, Result};

/// Whether `--dtype bf16` attention runs here: [`available`], and not turned off with
/// `FREELUNCH_ATTN_AMX=off` (read once).
pub(super) fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FREELUNCH_ATTN_AMX").map_or(true, |v| v != "off"))
        && available()
}

/// Rows and columns of one tile.
const T: usize = amx::ROWS;
/// Depths (bf16 values) per tile row.
const TK: usize = 32;
/// One tile's size in f32 units of the scratch (1 KiB).
const TILE: usize = T * TK / 2;
/// Query rows per group: two row tiles.
const G: usize = 2 * T;

/// Whether the bf16 attention can run here: AMX-BF16 with the tile permission, and
/// AVX512-BF16 and AVX512-BW for the conversions.
pub(super) fn available() -> bool {
    amx::available()
        && std::arch::is_x86_feature_detected!("avx512bf16")
        && std::arch::is_x86_feature_detected!("avx512bw")
}

/// Query rows per task (a multiple of 32). Tunable with FREELUNCH_ATTN_AMX_ROWS for benches.
fn rows_per_task() -> usize {
    static ROWS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    super::switch::tunable(&ROWS, "FREELUNCH_ATTN_AMX_ROWS", 256).next_multiple_of(G)
}

/// Keys per block (a multiple of 32). Tunable with FREELUNCH_ATTN_AMX_KEYS for benches.
fn keys_per_block() -> usize {
    static KEYS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    super::switch::tunable(&KEYS, "FREELUNCH_ATTN_AMX_KEYS", 128).next_multiple_of(TK)
}

/// Runs non-causal attention into `out` (`[B, N, heads·dh]`, every element written). The
/// caller has checked the shapes and that [`available`] holds, and M ≥ 1.
pub(super) fn run(p: &Problem, out: &mut [f32]) -> Result<()> {
    use rayon::prelude::*;
    let inner = p.heads * p.dh;
    assert!(p.m >= 1 && p.q.len() == p.b * p.n * inner && out.len() == p.q.len());
    assert!(p.k.len() == p.b * p.m * inner && p.v.len() == p.k.len() && !p.causal);
    let rows = rows_per_task().min(p.n.next_multiple_of(G));
    let blocks = p.n.div_ceil(rows);
    let keys = keys_per_block().min(p.m.next_multiple_of(TK));
    let layout = Layout::new(rows, keys, p.dh).ok_or_else(|| Error::TooLarge {
        what: "attention scratch".into(),
        detail: format!("{rows} rows × {keys} keys × dh {}", p.dh),
    })?;
    let out_ptr = super::SendPtr(out.as_mut_ptr());
    (0..p.b * p.heads * blocks)
        .into_par_iter()
        .try_for_each(|t| {
            let (bh, blk) = (t / blocks, t % blocks);
            let (bi, h) = (bh / p.heads, bh % p.heads);
            let (r0, r1) = (blk * rows, ((blk + 1) * rows).min(p.n));
            with_scratch(layout.len, |buf| {
                // SAFETY: `available()` holds (the caller's contract); `buf` has `layout.len`
                // floats, 64-byte aligned; the task's output rows (r0..r1 of head h of sample
                // bi) are written by no other task and lie in `out` (checked above).
                unsafe { task(p, &layout, bi, h, r0, r1, buf, out_ptr.get()) }
            })
        })
}

/// Offsets (in f32 units, each 64-byte aligned) of a task's buffers in its scratch.
struct Layout {
    /// Query rows (a multiple of 32) and keys (a multiple of 32) per block.
    rows: usize,
    keys: usize,
    /// Depth chunks of 32 (q and k), output columns padded to 16, column tiles.
    chunks: usize,
    dhp: usize,
    cols: usize,
    q: usize,
    k: usize,
    v: usize,
    s: usize,
    p: usize,
    o: usize,
    m: usize,
    l: usize,
    alpha: usize,
    len: usize,
}

impl Layout {
    fn new(rows: usize, keys: usize, dh: usize) -> Option<Self> {
        let chunks = dh.div_ceil(TK);
        let dhp = dh.checked_next_multiple_of(T)?;
        let cols = dhp / T;
        let mut at = 0usize;
        let mut take = |n: usize| -> Option<usize> {
            let start = at;
            at = at.checked_add(n.checked_next_multiple_of(16)?)?;
            Some(start)
        };
        let q = take((rows / T).checked_mul(chunks)?.checked_mul(TILE)?)?;
        let k = take(chunks.checked_mul(keys / T)?.checked_mul(TILE)?)?;
        let v = take((keys / TK).checked_mul(cols)?.checked_mul(TILE)?)?;
        let s = take(G.checked_mul(keys)?)?;
        let p = take(G.checked_mul(keys)? / 2)?;
        let o = take(rows.checked_mul(dhp)?)?;
        let m = take(rows)?;
        let l = take(rows)?;
        let alpha = take(G)?;
        Some(Self {
            rows,
            keys,
            chunks,
            dhp,
            cols,
            q,
            k,
            v,
            s,
            p,
            o,
            m,
            l,
            alpha,
            len: at,
        })
    }
}

/// 32 floats (`lo`, then `hi`) as 32 bf16 values in order, two per 32-bit lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
fn bf16_in_order(lo: __m512, hi: __m512) -> __m512i {
    // SAFETY: both types are 64 plain bytes.
    unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)) }
}

/// Lane i: bf16 of `even` lane i in the low half, of `odd` lane i in the high half (a VNNI row).
#[inline]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
fn bf16_interleaved(even: __m512, odd: __m512) -> __m512i {
    let zip = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    _mm512_permutexvar_epi16(zip, bf16_in_order(even, odd))
}

/// 32 floats at `src`, the first `n` of them (the rest 0), as 32 bf16 values in order.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn load_bf16_32(src: *const f32, n: usize) -> __m512i {
    let lo = _mm512_maskz_loadu_ps(lane_mask(n), src);
    // wrapping: with n ≤ 16 the high half may lie past the row's allocation; its mask is then 0
    // and nothing is read.
    let hi = _mm512_maskz_loadu_ps(lane_mask(n.saturating_sub(T)), src.wrapping_add(T));
    bf16_in_order(lo, hi)
}

/// One task: rows `r0..r1` of head `h` of sample `bi`, written to `out`.
///
/// # Safety
/// `available()` must hold; `buf` must hold `lay.len` floats, 64-byte aligned; `out` must be
/// valid for `p.b·p.n·heads·dh` floats, rows r0..r1 of head h of sample bi written by no one
/// else meanwhile; `p`'s slices must have their shapes.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn task(
    p: &Problem,
    lay: &Layout,
    bi: usize,
    h: usize,
    r0: usize,
    r1: usize,
    buf: &mut [f32],
    out: *mut f32,
) {
    let (dh, inner) = (p.dh, p.heads * p.dh);
    let rows = r1 - r0;
    let rows_p = rows.next_multiple_of(G);
    debug_assert!(rows_p <= lay.rows && buf.len() >= lay.len);
    let base = buf.as_mut_ptr();
    let at = |off: usize| base.add(off);
    amx::configure();

    // q as A tiles: tile (row tile, chunk) holds 16 rows × 32 depths.
    for rt in 0..rows_p / T {
        for c in 0..lay.chunks {
            let tile = at(lay.q + (rt * lay.chunks + c) * TILE).cast::<__m512i>();
            for i in 0..T {
                let r = rt * T + i;
                let x = if r < rows {
                    let src =
                        p.q.as_ptr()
                            .add((bi * p.n + r0 + r) * inner + h * dh + TK * c);
                    load_bf16_32(src, dh - TK * c)
                } else {
                    _mm512_setzero_si512()
                };
                _mm512_store_si512(tile.add(i), x);
            }
        }
    }
    for r in 0..rows_p {
        *at(lay.m + r) = f32::NEG_INFINITY;
        *at(lay.l + r) = 0.0;
    }
    std::ptr::write_bytes(at(lay.o), 0, rows_p * lay.dhp);

    let mut k0 = 0;
    while k0 < p.m {
        let bc = lay.keys.min(p.m - k0);
        let bcp = bc.next_multiple_of(TK);
        pack_k(p, lay, bi, h, k0, bc, bcp, at(lay.k));
        pack_v(p, lay, bi, h, k0, bc, bcp, at(lay.v));
        for g in 0..rows_p / G {
            scores(lay, g, bcp, at(lay.q), at(lay.k), at(lay.s));
            softmax(lay, p.scale, g, bc, bcp, base);
            let alpha = at(lay.alpha);
            for r in 0..G {
                let a = _mm512_set1_ps(*alpha.add(r));
                let row = at(lay.o + (g * G + r) * lay.dhp);
                for c in 0..lay.cols {
                    let x = row.add(T * c);
                    _mm512_store_ps(x, _mm512_mul_ps(a, _mm512_load_ps(x)));
                }
            }
            weighted_values(lay, g, bcp, at(lay.p), at(lay.v), at(lay.o));
        }
        k0 += bc;
    }
    amx::release();

    let last = lane_mask(dh - (lay.dhp - T));
    for r in 0..rows {
        let inv = _mm512_set1_ps(1.0 / *at(lay.l + r));
        let src = at(lay.o + r * lay.dhp);
        let dst = out.add((bi * p.n + r0 + r) * inner + h * dh);
        for c in 0..lay.cols {
            let mk = if c + 1 == lay.cols { last } else { 0xffff };
            let x = _mm512_load_ps(src.add(T * c));
            _mm512_mask_storeu_ps(dst.add(T * c), mk, _mm512_mul_ps(x, inv));
        }
    }
}

/// Packs keys k0..k0+bc of head h of sample bi as VNNI tiles of kᵀ: tile (chunk c, keys 16t..)
/// row i holds, per key, depths 32c + 2i and 32c + 2i + 1; zero past dh and past bc (to bcp).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn pack_k(
    p: &Problem,
    lay: &Layout,
    bi: usize,
    h: usize,
    k0: usize,
    bc: usize,
    bcp: usize,
    dst: *mut f32,
) {
    let (dh, inner) = (p.dh, p.heads * p.dh);
    let per_chunk = lay.keys / T;
    for t in 0..bcp / T {
        for c in 0..lay.chunks {
            let mut r = [_mm512_setzero_si512(); T];
            for (i, x) in r.iter_mut().enumerate() {
                let j = T * t + i;
                if j < bc {
                    let src =
                        p.k.as_ptr()
                            .add((bi * p.m + k0 + j) * inner + h * dh + TK * c);
                    *x = load_bf16_32(src, dh - TK * c);
                }
            }
            let tile = dst.add((c * per_chunk + t) * TILE).cast::<__m512i>();
            for (i, &x) in transpose_pairs(&r).iter().enumerate() {
                _mm512_store_si512(tile.add(i), x);
            }
        }
    }
}

/// Packs keys k0..k0+bc of v as VNNI tiles: tile (keys 32t.., channels 16c..) row i holds, per
/// channel, keys 32t + 2i and 32t + 2i + 1; zero past dh and past bc (to bcp).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn pack_v(
    p: &Problem,
    lay: &Layout,
    bi: usize,
    h: usize,
    k0: usize,
    bc: usize,
    bcp: usize,
    dst: *mut f32,
) {
    let (dh, inner) = (p.dh, p.heads * p.dh);
    let row = |j: usize, c: usize| {
        if j < bc {
            let src =
                p.v.as_ptr()
                    .add((bi * p.m + k0 + j) * inner + h * dh + T * c);
            _mm512_maskz_loadu_ps(lane_mask(dh - T * c), src)
        } else {
            _mm512_setzero_ps()
        }
    };
    for t in 0..bcp / TK {
        for c in 0..lay.cols {
            let tile = dst.add((t * lay.cols + c) * TILE).cast::<__m512i>();
            for i in 0..T {
                let j = TK * t + 2 * i;
                _mm512_store_si512(tile.add(i), bf16_interleaved(row(j, c), row(j + 1, c)));
            }
        }
    }
}

/// S = q·kᵀ for query group g and the block's bcp keys: `s` is 32 rows of `lay.keys` f32.
#[target_feature(enable = "avx512f")]
unsafe fn scores(lay: &Layout, g: usize, bcp: usize, q: *const f32, k: *const f32, s: *mut f32) {
    let per_chunk = lay.keys / T;
    let ld = 4 * lay.keys;
    let qtile = |rt: usize, c: usize| q.add(((2 * g + rt) * lay.chunks + c) * TILE).cast::<u8>();
    let ktile = |c: usize, t: usize| k.add((c * per_chunk + t) * TILE).cast::<u8>();
    for t in 0..bcp / TK {
        amx::zero::<0>();
        amx::zero::<1>();
        amx::zero::<2>();
        amx::zero::<3>();
        for c in 0..lay.chunks {
            amx::load::<4>(qtile(0, c), 64);
            amx::load::<5>(qtile(1, c), 64);
            amx::load::<6>(ktile(c, 2 * t), 64);
            amx::load::<7>(ktile(c, 2 * t + 1), 64);
            amx::dot::<0, 4, 6>();
            amx::dot::<1, 4, 7>();
            amx::dot::<2, 5, 6>();
            amx::dot::<3, 5, 7>();
        }
        let s0 = s.add(TK * t).cast::<u8>();
        amx::store::<0>(s0, ld);
        amx::store::<1>(s0.add(4 * T), ld);
        amx::store::<2>(s0.add(T * ld), ld);
        amx::store::<3>(s0.add(T * ld + 4 * T), ld);
    }
}

/// The online softmax of query group g over the block's scores: per row the scale, the new
/// maximum, α (into `alpha`), l ← α·l + ΣP, and P as bf16 rows (zero past `bc`).
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn softmax(lay: &Layout, scale: f32, g: usize, bc: usize, bcp: usize, base: *mut f32) {
    let (s, pb) = (base.add(lay.s), base.add(lay.p).cast::<__m512i>());
    let (m, l, alpha) = (
        base.add(lay.m + g * G),
        base.add(lay.l + g * G),
        base.add(lay.alpha),
    );
    let sc = _mm512_set1_ps(scale);
    let mut old = [0f32; G];
    for (r, o) in old.iter_mut().enumerate() {
        let row = s.add(r * lay.keys);
        let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
        for c in 0..bc.div_ceil(T) {
            let mk = lane_mask(bc - T * c);
            let x = _mm512_mul_ps(sc, _mm512_load_ps(row.add(T * c)));
            _mm512_store_ps(row.add(T * c), x);
            mx = _mm512_mask_max_ps(mx, mk, mx, x);
        }
        let bm = _mm512_reduce_max_ps(mx);
        *o = *m.add(r);
        // NaN-blind, as the f32 kernel: a NaN score makes its P, and so its row, NaN anyway.
        if bm > *o {
            *m.add(r) = bm;
        }
    }
    // α = e^(m − m'), 1 where the maximum did not move (both −∞ included); scores are shifted
    // by m', or by 0 while it is −∞ (−∞ − −∞ would be NaN).
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut shift = [0f32; G];
    for half in 0..G / T {
        let o = _mm512_loadu_ps(old.as_ptr().add(T * half));
        let n = _mm512_loadu_ps(m.add(T * half));
        let u = _mm512_mask_blend_ps(
            _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(n, ninf),
            n,
            _mm512_setzero_ps(),
        );
        let same = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(o, n);
        let a = _mm512_mask_blend_ps(same, exp16(_mm512_sub_ps(o, u)), _mm512_set1_ps(1.0));
        _mm512_storeu_ps(alpha.add(T * half), a);
        _mm512_storeu_ps(shift.as_mut_ptr().add(T * half), u);
    }
    for (r, &u) in shift.iter().enumerate() {
        let row = s.add(r * lay.keys);
        let prow = pb.add(r * lay.keys / TK);
        let mu = _mm512_set1_ps(u);
        let mut sum = _mm512_setzero_ps();
        for c in 0..bcp / TK {
            let e = |v: usize| {
                let at = TK * c + T * v;
                let x = exp16(_mm512_sub_ps(_mm512_load_ps(row.add(at)), mu));
                _mm512_maskz_mov_ps(lane_mask(bc.saturating_sub(at)), x)
            };
            let (e0, e1) = (e(0), e(1));
            sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
            _mm512_store_si512(prow.add(c), bf16_in_order(e0, e1));
        }
        *l.add(r) = *alpha.add(r) * *l.add(r) + _mm512_reduce_add_ps(sum);
    }
}

/// O += P·v for query group g: 2 × 2 accumulator tiles per 32 output columns (2 × 1 for an
/// odd last 16), loaded from and stored to O.
#[target_feature(enable = "avx512f")]
unsafe fn weighted_values(
    lay: &Layout,
    g: usize,
    bcp: usize,
    pb: *const f32,
    v: *const f32,
    o: *mut f32,
) {
    let ldp = 2 * lay.keys;
    let ldo = 4 * lay.dhp;
    let p0 = pb.cast::<u8>();
    let vtile = |t: usize, c: usize| v.add((t * lay.cols + c) * TILE).cast::<u8>();
    let mut c = 0;
    while c < lay.cols {
        let o0 = o.add(g * G * lay.dhp + T * c).cast::<u8>();
        let pair = c + 1 < lay.cols;
        amx::load::<0>(o0, ldo);
        amx::load::<2>(o0.add(T * ldo), ldo);
        if pair {
            amx::load::<1>(o0.add(4 * T), ldo);
            amx::load::<3>(o0.add(T * ldo + 4 * T), ldo);
        }
        for t in 0..bcp / TK {
            amx::load::<4>(p0.add(2 * TK * t), ldp);
            amx::load::<5>(p0.add(T * ldp + 2 * TK * t), ldp);
            amx::load::<6>(vtile(t, c), 64);
            amx::dot::<0, 4, 6>();
            amx::dot::<2, 5, 6>();
            if pair {
                amx::load::<7>(vtile(t, c + 1), 64);
                amx::dot::<1, 4, 7>();
                amx::dot::<3, 5, 7>();
            }
        }
        amx::store::<0>(o0, ldo);
        amx::store::<2>(o0.add(T * ldo), ldo);
        if pair {
            amx::store::<1>(o0.add(4 * T), ldo);
            amx::store::<3>(o0.add(T * ldo + 4 * T), ldo);
        }
        c += if pair { 2 } else { 1 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    fn values(n: usize, seed: u64, by: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0) * by
            })
            .collect()
    }

    fn rounded(x: &[f32]) -> Vec<f64> {
        x.iter()
            .map(|&v| f32::from_bits((amx::bf16_bits(v) as u32) << 16) as f64)
            .collect()
    }

    /// softmax(q·kᵀ·scale)·v in f64 on the bf16-rounded operands.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        b: usize,
        n: usize,
        m: usize,
        heads: usize,
        dh: usize,
        scale: f32,
    ) -> Vec<f64> {
        let (q, k, v) = (rounded(q), rounded(k), rounded(v));
        let inner = heads * dh;
        let mut out = vec![0f64; b * n * inner];
        for bi in 0..b {
            for h in 0..heads {
                for i in 0..n {
                    let qi = &q[(bi * n + i) * inner + h * dh..][..dh];
                    let s: Vec<f64> = (0..m)
                        .map(|j| {
                            let kj = &k[(bi * m + j) * inner + h * dh..][..dh];
                            qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() * scale as f64
                        })
                        .collect();
                    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                    let total: f64 = e.iter().sum();
                    for d in 0..dh {
                        out[(bi * n + i) * inner + h * dh + d] = (0..m)
                            .map(|j| e[j] * v[(bi * m + j) * inner + h * dh + d])
                            .sum::<f64>()
                            / total;
                    }
                }
            }
        }
        out
    }

    fn run_amx(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        shape: (usize, usize, usize, usize, usize),
        scale: f32,
    ) -> Vec<f32> {
        let (b, n, m, heads, dh) = shape;
        let p = Problem {
            q,
            k,
            v,
            b,
            n,
            m,
            heads,
            dh,
            scale,
            causal: false,
        };
        let mut out = vec![f32::NAN; q.len()];
        run(&p, &mut out).unwrap();
        out
    }

    /// Within 2⁻⁹·max|v| (P's rounding) of the f64 attention of the rounded operands, over
    /// ragged shapes, several key blocks, flat and peaked softmax.
    #[test]
    fn tiles_match_the_rounded_f64_attention() {
        if !available() {
            eprintln!("no AMX-BF16 and AVX512-BF16 here: skipped");
            assert!(!amx::available() || !std::arch::is_x86_feature_detected!("avx512bf16"));
            return;
        }
        let shapes = [
            (1, 1, 1, 1, 1),
            (2, 7, 77, 3, 40),
            (1, 300, 300, 2, 33),
            (2, 77, 1025, 1, 64),
            (1, 33, 129, 2, 80),
            (1, 64, 200, 1, 160),
            (1, 5, 16, 2, 8),
        ];
        for (si, &(b, n, m, heads, dh)) in shapes.iter().enumerate() {
            for peak in [1.0f32, 6.0] {
                let inner = heads * dh;
                let q = values(b * n * inner, 10 + si as u64, peak);
                let k = values(b * m * inner, 20 + si as u64, 1.0);
                let v = values(b * m * inner, 30 + si as u64, 1.0);
                let scale = 0.37 / (dh as f32).sqrt() * 3.0;
                let got = run_amx(&q, &k, &v, (b, n, m, heads, dh), scale);
                let want = reference(&q, &k, &v, b, n, m, heads, dh, scale);
                let vmax = v.iter().fold(0f32, |a, x| a.max(x.abs())) as f64;
                let bound = vmax / 512.0 + 1e-5;
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(&g, &w)| (g as f64 - w).abs())
                    .fold(0f64, f64::max);
                assert!(
                    worst <= bound,
                    "{:?} peak {peak}: worst |Δ| {worst:e} > {bound:e}",
                    (b, n, m, heads, dh)
                );
            }
        }
    }

    /// A NaN in a query row makes that row NaN and leaves the others finite.
    #[test]
    fn nan_queries_poison_their_rows_only() {
        if !available() {
            return;
        }
        let (b, n, m, heads, dh) = (1, 40, 50, 2, 24);
        let mut q = values(b * n * heads * dh, 1, 1.0);
        let k = values(b * m * heads * dh, 2, 1.0);
        let v = values(b * m * heads * dh, 3, 1.0);
        q[(5 * heads + 1) * dh + 3] = f32::NAN;
        let got = run_amx(&q, &k, &v, (b, n, m, heads, dh), 0.5);
        let t = Tensor::from_parts([b, n, heads * dh], got);
        for i in 0..n {
            for h in 0..heads {
                let row = &t.data()[(i * heads + h) * dh..][..dh];
                let poisoned = i == 5 && h == 1;
                assert_eq!(row.iter().all(|x| x.is_nan()), poisoned, "row {i} head {h}");
                if !poisoned {
                    assert!(row.iter().all(|x| x.is_finite()), "row {i} head {h}");
                }
            }
        }
    }
}
