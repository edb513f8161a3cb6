//! Flash-style scaled dot-product attention on a hand-written AVX-512 f32 kernel: the path
//! `attention::try_attention` and `attention::try_causal_attention` take on CPUs with
//! AVX-512F (the `gemm`-crate path of `attention.rs` stays as the portable fallback, and runs
//! everywhere when `FREELUNCH_CPU_ATTENTION=gemm` is set).
//!
//! Algorithm (FlashAttention-2's loop order, with CPU-sized blocks):
//! - A task is (sample, head, block of `ROWS` query rows). Its rows of q are copied once,
//!   scaled, into a contiguous `[rows][dh]` block. The task keeps per row a running maximum
//!   `m`, a running sum `l` and an unnormalised output `O` (`[rows][dh padded to 16]`).
//! - For each block of `KEYS` keys: k is packed transposed (`[dh][keys padded to 16]`: 16
//!   keys per zmm, by 16 × 16 register transposes) and v as `[keys][dh padded to 16]`; both
//!   come from the strided heads of the input, once per task and key block, and stay in L1/L2
//!   for the task's rows. The next block's rows are prefetched while this one computes.
//! - For each tile of `R` = 6 query rows: S = q·kᵀ on a 6 × 64 register tile (6 broadcasts of
//!   q and 4 loads of packed k per 24 FMAs, the dh loop innermost); then per row the block's
//!   maximum, `m' = max(m, ·)`, the tile's rescale factors α = e^(m − m') in one `exp16`,
//!   P = e^(S − m') (Cephes' `expf` on 16 lanes: `exp16`, the same polynomial as
//!   `vector::exp`) and `l ← α·l + ΣP` (l kept on 16 lanes, reduced once at the end); then
//!   O ← α·O + P·v on a 6 × (≤ 4·16) register tile, α applied as the tile is loaded. O's round
//!   trip through memory costs 2·dh per `KEYS`·dh FMAs.
//! - At the end O/l is written to the task's rows of the output (masked for dh % 16).
//!
//!   No score matrix beyond one 6 × `KEYS` tile exists; each thread's buffers (q block, packed
//!   k and v, scores, O, m, l) live in one grow-only thread-local vector, so repeated calls
//!   allocate nothing but their output. Causal attention runs the same kernel: key blocks
//!   past a tile's last row are skipped and the diagonal block's masked keys get P = 0.
//!
//! Non-finite values behave as on the fallback: a NaN or ±∞ score makes its row NaN (the
//! maximum or the exponentials carry it), and a row whose scores are all −∞ is NaN (0/0).
//!
//! Sizes: `ROWS` = 192 query rows per task (B·heads·⌈N/192⌉ tasks: 352 at SD1.5's 4096 tokens,
//! 32 at 256), `KEYS` = 128 (FREELUNCH_ATTN_ROWS and FREELUNCH_ATTN_KEYS for benches; 64 keys
//! measured clearly slower, 256 no better). Per thread that is ~130 KiB of scratch at dh 40, ~425 KiB
//! at dh 160.
//!
//! Limits: any dh ≥ 1, N ≥ 1, M ≥ 1 (M = 0 stays on the fallback). Summation order differs
//! from the fallback's and the scale is folded into q, so the two agree to f32 rounding, not
//! bit for bit.
//! Tested: this module's tests (against an f64 reference over dh 1–160 and ragged N and M,
//! flat and peaked softmax, causal and not, against the fallback, with NaN and ∞ inputs, and
//! `exp16` against f64 and `vector::exp`), `tests/ops_props.rs` (random shapes) and the model
//! goldens (`tests/golden.rs`, `tests/clip.rs`, `tests/vae.rs`, …). Benched:
//! `benches/cpu_ops.rs` (`cpu_attention_flop`, `FREELUNCH_CPU_ATTENTION=gemm` for the old
//! path) against `tools/bench_attention_torch.py` (BENCHMARKS.md, issue 13).

use crate::error::{Error, Result};

static SWITCH: super::switch::Switch =
    super::switch::Switch::new("FREELUNCH_CPU_ATTENTION", "gemm");

/// Whether the flash path runs here: AVX-512F detected, and neither turned off with
/// `FREELUNCH_CPU_ATTENTION=gemm` nor by [`set_enabled`].
pub fn available() -> bool {
    SWITCH.on()
}

/// Turns the flash path on (where the CPU has AVX-512F) or off (the `gemm` path of
/// `attention.rs` everywhere) for the whole process, for benches and tests that set the two
/// side by side; returns whether it is on now.
pub fn set_enabled(on: bool) -> bool {
    SWITCH.set(on)
}

/// Query rows per task. Tunable with FREELUNCH_ATTN_ROWS for benches.
fn rows_per_task() -> usize {
    static ROWS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    super::switch::tunable(&ROWS, "FREELUNCH_ATTN_ROWS", 192)
}

/// Keys per block (a multiple of 16). Tunable with FREELUNCH_ATTN_KEYS for benches.
fn keys_per_block() -> usize {
    static KEYS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    super::switch::tunable(&KEYS, "FREELUNCH_ATTN_KEYS", 128).next_multiple_of(16)
}

/// One attention call's operands: q `[B, N, heads·dh]`, k and v `[B, M, heads·dh]`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) struct Problem<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub b: usize,
    pub n: usize,
    pub m: usize,
    pub heads: usize,
    pub dh: usize,
    pub scale: f32,
    /// Query i sees keys 0..=i only (then N = M).
    pub causal: bool,
}

/// Runs attention into `out` (`[B, N, heads·dh]`, every element written). The caller has
/// checked the shapes and that [`available`] holds, and M ≥ 1.
pub(super) fn run(p: &Problem, out: &mut [f32]) -> Result<()> {
    use rayon::prelude::*;
    let inner = p.heads * p.dh;
    assert!(p.m >= 1 && p.q.len() == p.b * p.n * inner && out.len() == p.q.len());
    assert!(p.k.len() == p.b * p.m * inner && p.v.len() == p.k.len());
    assert!(!p.causal || p.n == p.m);
    let rows = rows_per_task().min(p.n).max(1);
    let blocks = p.n.div_ceil(rows);
    let keys = keys_per_block().min(p.m.next_multiple_of(16));
    let layout = Layout::new(rows, keys, p.dh).ok_or_else(|| Error::TooLarge {
        what: "attention scratch".into(),
        detail: format!("{rows} rows × {keys} keys × dh {}", p.dh),
    })?;
    let out_ptr = super::SendPtr(out.as_mut_ptr());
    (0..p.b * p.heads * blocks)
        .into_par_iter()
        .try_for_each(|task| {
            let (bh, blk) = (task / blocks, task % blocks);
            let (bi, h) = (bh / p.heads, bh % p.heads);
            let (r0, r1) = (blk * rows, ((blk + 1) * rows).min(p.n));
            with_scratch(layout.len, |buf| {
                // SAFETY: `available()` holds (the caller's contract), so AVX-512F is present;
                // `buf` has `layout.len` floats, 64-byte aligned; the task's output rows
                // (r0..r1 of head h of sample bi) are written by no other task, and lie in
                // `out` (checked above: `out` is [B, N, heads·dh]).
                unsafe { kernel::task(p, &layout, bi, h, r0, r1, buf, out_ptr.get()) }
            })
        })
}

/// Offsets (in floats, each 64-byte aligned) of a task's buffers in its scratch.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) struct Layout {
    pub rows: usize,
    pub keys: usize,
    pub dhp: usize,
    pub q: usize,
    pub kt: usize,
    pub v: usize,
    pub s: usize,
    pub o: usize,
    pub ml: usize,
    pub l: usize,
    pub len: usize,
}

impl Layout {
    fn new(rows: usize, keys: usize, dh: usize) -> Option<Self> {
        let dhp = dh.checked_next_multiple_of(16)?;
        let mut at = 0usize;
        let mut take = |n: usize| -> Option<usize> {
            let start = at;
            at = at.checked_add(n.checked_next_multiple_of(16)?)?;
            Some(start)
        };
        let q = take(rows.checked_mul(dh)?)?;
        let kt = take(dhp.checked_mul(keys)?)?;
        let v = take(keys.checked_mul(dhp)?)?;
        let s = take(R.checked_mul(keys)?)?;
        let o = take(rows.checked_mul(dhp)?)?;
        // m per query row, α per tile row.
        let ml = take(rows.checked_add(16)?)?;
        // l per query row, on 16 lanes.
        let l = take(rows.checked_mul(16)?)?;
        Some(Self {
            rows,
            keys,
            dhp,
            q,
            kt,
            v,
            s,
            o,
            ml,
            l,
            len: at,
        })
    }
}

/// Query rows per register tile.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const R: usize = 6;

thread_local! {
    /// This thread's attention buffers: grown to the largest task it has run, never shrunk,
    /// so that a sampling loop's repeated calls allocate nothing here.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` floats of this thread's scratch, 64-byte aligned (values left over from
/// earlier tasks: `f` must write before it reads).
pub(super) fn with_scratch(len: usize, f: impl FnOnce(&mut [f32])) -> Result<()> {
    let grow = |v: &mut Vec<f32>| -> Result<()> {
        let need = len.checked_add(16).ok_or_else(|| too_large(len))?;
        if v.len() < need {
            v.clear();
            v.try_reserve_exact(need).map_err(|_| too_large(len))?;
            v.resize(need, 0.0);
        }
        Ok(())
    };
    let run_on = |v: &mut Vec<f32>| {
        let start = (16 - (v.as_ptr() as usize / 4) % 16) % 16;
        f(&mut v[start..start + len]);
    };
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            grow(&mut v)?;
            run_on(&mut v);
            Ok(())
        }
        // Only if a task ever ran inside another on one thread: use a buffer of its own.
        Err(_) => {
            let mut v = Vec::new();
            grow(&mut v)?;
            run_on(&mut v);
            Ok(())
        }
    })
}

fn too_large(len: usize) -> Error {
    Error::TooLarge {
        what: "attention scratch".into(),
        detail: format!("{len} floats per thread cannot be had"),
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;

    use super::{Layout, Problem, R};
    use crate::backend::cpu::avx512::{exp16, transpose16};

    /// The first `n` (≤ 16) lanes.
    #[inline]
    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// One task: rows `r0..r1` of head `h` of sample `bi`, written to `out`.
    ///
    /// # Safety
    /// AVX-512F must be available; `buf` must hold `lay.len` floats, its start 64-byte
    /// aligned; `out` must be valid for `p.b·p.n·heads·dh` floats, rows r0..r1 of head h of
    /// sample bi written by no one else meanwhile; `p`'s slices must have their shapes.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn task(
        p: &Problem,
        lay: &Layout,
        bi: usize,
        h: usize,
        r0: usize,
        r1: usize,
        buf: &mut [f32],
        out: *mut f32,
    ) {
        let (dh, dhp, m, inner) = (p.dh, lay.dhp, p.m, p.heads * p.dh);
        let rows = r1 - r0;
        debug_assert!(rows <= lay.rows && buf.len() >= lay.len);
        let base = buf.as_mut_ptr();
        let (qb, kt, vb, sb, ob, ml) = (
            base.add(lay.q),
            base.add(lay.kt),
            base.add(lay.v),
            base.add(lay.s),
            base.add(lay.o),
            base.add(lay.ml),
        );
        let (mrow, alpha, lrow) = (ml, ml.add(lay.rows), base.add(lay.l));
        let dmask_last = lanes(dh - (dhp - 16));
        let nvec = dhp / 16;

        // The scaled q block: the scale folded in once here rather than into every score.
        let scale = _mm512_set1_ps(p.scale);
        for r in 0..rows {
            let src = p.q.as_ptr().add((bi * p.n + r0 + r) * inner + h * dh);
            let dst = qb.add(r * dh);
            for c in 0..nvec {
                let mk = if c + 1 == nvec { dmask_last } else { 0xffff };
                let x = _mm512_maskz_loadu_ps(mk, src.add(16 * c));
                _mm512_mask_storeu_ps(dst.add(16 * c), mk, _mm512_mul_ps(x, scale));
            }
            *mrow.add(r) = f32::NEG_INFINITY;
            _mm512_store_ps(lrow.add(16 * r), _mm512_setzero_ps());
        }

        // A causal task's last row sees keys up to r1 − 1.
        let kend = if p.causal { r1.min(m) } else { m };
        let mut k0 = 0;
        while k0 < kend {
            let bc = lay.keys.min(kend - k0);
            let bcp = bc.next_multiple_of(16);
            pack_kv(p, bi, h, k0, bc, bcp, dhp, kt, vb);
            let first = k0 == 0;
            // The next block's k and v rows are strided across the heads and, at 4096 keys, no
            // longer in L2 when a task comes back to them: fetch them a few rows per tile while
            // this block computes (without it their loads are an eighth of the time).
            let next = (k0 + bc)..(k0 + bc + lay.keys).min(kend);
            let per_tile = next.len().div_ceil(rows.div_ceil(R));
            let mut t0 = 0;
            while t0 < rows {
                let rr = R.min(rows - t0);
                let ahead = next.start + (t0 / R) * per_tile;
                for j in ahead..(ahead + per_tile).min(next.end) {
                    let at = (bi * m + j) * inner + h * dh;
                    prefetch_row(p.k.as_ptr().add(at), dh);
                    prefetch_row(p.v.as_ptr().add(at), dh);
                }
                // Rows see keys 0..=row under the causal mask: a tile whose last row comes
                // before the block sees none of it.
                if p.causal && k0 > r0 + t0 + rr - 1 {
                    t0 += rr;
                    continue;
                }
                let mut j0 = 0;
                while j0 < bcp {
                    let vv = 4.min((bcp - j0) / 16);
                    qk(
                        rr,
                        vv,
                        qb.add(t0 * dh),
                        dh,
                        kt.add(j0),
                        bcp,
                        sb.add(j0),
                        bcp,
                    );
                    j0 += 16 * vv;
                }
                let valid = |r: usize| {
                    if p.causal {
                        (r0 + t0 + r + 1).saturating_sub(k0).min(bc)
                    } else {
                        bc
                    }
                };
                let mut mo = [0f32; 16];
                for (r, o) in mo.iter_mut().enumerate().take(rr) {
                    let bm = row_max(sb.add(r * bcp), valid(r));
                    *o = *mrow.add(t0 + r);
                    // NaN-blind: see `row_max`.
                    if bm > *o {
                        *mrow.add(t0 + r) = bm;
                    }
                }
                let mut mu = [0f32; 16];
                rescale(rr, &mo, mrow.add(t0), alpha, &mut mu);
                for (r, &u) in mu.iter().enumerate().take(rr) {
                    let sum = exp_row(sb.add(r * bcp), bc, valid(r), u);
                    let l = lrow.add(16 * (t0 + r));
                    let a = _mm512_set1_ps(*alpha.add(r));
                    _mm512_store_ps(l, _mm512_fmadd_ps(_mm512_load_ps(l), a, sum));
                }
                let mut c0 = 0;
                let chunks = nvec.div_ceil(4);
                for ci in 0..chunks {
                    // Even chunks (5 vectors as 3 + 2, 10 as 4 + 3 + 3): no thin last tile.
                    let w = (nvec - c0).div_ceil(chunks - ci);
                    pv(
                        rr,
                        w,
                        sb,
                        bcp,
                        vb.add(16 * c0),
                        dhp,
                        bc,
                        ob.add(t0 * dhp + 16 * c0),
                        dhp,
                        alpha,
                        first,
                    );
                    c0 += w;
                }
                t0 += rr;
            }
            k0 += bc;
        }

        for r in 0..rows {
            let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(_mm512_load_ps(lrow.add(16 * r))));
            let src = ob.add(r * dhp);
            let dst = out.add((bi * p.n + r0 + r) * inner + h * dh);
            for c in 0..nvec {
                let mk = if c + 1 == nvec { dmask_last } else { 0xffff };
                let x = _mm512_load_ps(src.add(16 * c));
                _mm512_mask_storeu_ps(dst.add(16 * c), mk, _mm512_mul_ps(x, inv));
            }
        }
    }

    /// Asks for the cache lines of `dh` floats at `x` in L2.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn prefetch_row(x: *const f32, dh: usize) {
        let (start, end) = (x as usize, x as usize + 4 * dh);
        let mut line = start & !63;
        while line < end {
            _mm_prefetch::<_MM_HINT_T1>(line as *const i8);
            line += 64;
        }
    }

    /// Packs keys k0..k0+bc of head h of sample bi: k transposed into `kt` (`[dh][bcp]`),
    /// v into `vb` (`[bc][dhp]`), zero in the padding.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_kv(
        p: &Problem,
        bi: usize,
        h: usize,
        k0: usize,
        bc: usize,
        bcp: usize,
        dhp: usize,
        kt: *mut f32,
        vb: *mut f32,
    ) {
        let (dh, inner) = (p.dh, p.heads * p.dh);
        let nvec = dhp / 16;
        let dmask_last = lanes(dh - (dhp - 16));
        let row = |j: usize| (bi * p.m + k0 + j) * inner + h * dh;
        // k: 16 keys × 16 dims at a time, transposed in registers (a scalar or gathered
        // transpose costs a tenth of the whole kernel).
        let mut j0 = 0;
        while j0 < bcp {
            let nk = 16.min(bc - j0);
            for c in 0..nvec {
                let mk = if c + 1 == nvec { dmask_last } else { 0xffff };
                let mut r = [_mm512_setzero_ps(); 16];
                for (i, x) in r.iter_mut().enumerate().take(nk) {
                    *x = _mm512_maskz_loadu_ps(mk, p.k.as_ptr().add(row(j0 + i) + 16 * c));
                }
                let t = transpose16(&r);
                for (d, &x) in t.iter().enumerate().take(dh - 16 * c) {
                    _mm512_store_ps(kt.add((16 * c + d) * bcp + j0), x);
                }
            }
            j0 += 16;
        }
        for j in 0..bc {
            let src = p.v.as_ptr().add(row(j));
            let dst = vb.add(j * dhp);
            for c in 0..nvec {
                let mk = if c + 1 == nvec { dmask_last } else { 0xffff };
                _mm512_store_ps(dst.add(16 * c), _mm512_maskz_loadu_ps(mk, src.add(16 * c)));
            }
        }
    }

    /// The largest of `s[0..valid]` (−∞ for none). A NaN may or may not win; either way it
    /// makes its P, and so its row, NaN.
    #[target_feature(enable = "avx512f")]
    unsafe fn row_max(s: *const f32, valid: usize) -> f32 {
        let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
        for c in 0..valid.div_ceil(16) {
            let mk = lanes(valid - 16 * c);
            mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(mx, mk, s.add(16 * c)));
        }
        _mm512_reduce_max_ps(mx)
    }

    /// The rescale factors α = e^(mo − mu) of `rr` rows, mu as `shift` gives it, 1 where the
    /// maximum did not move (both −∞ included); on 16 lanes, one `exp16` per tile.
    #[target_feature(enable = "avx512f")]
    unsafe fn rescale(
        rr: usize,
        mo: &[f32; 16],
        mn: *const f32,
        alpha: *mut f32,
        mu: &mut [f32; 16],
    ) {
        let mk = lanes(rr);
        let o = _mm512_loadu_ps(mo.as_ptr());
        let n = _mm512_maskz_loadu_ps(mk, mn);
        let u = shift(n);
        let same = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(o, n);
        let a = _mm512_mask_blend_ps(same, exp16(_mm512_sub_ps(o, u)), _mm512_set1_ps(1.0));
        _mm512_mask_storeu_ps(alpha, mk, a);
        _mm512_storeu_ps(mu.as_mut_ptr(), u);
    }

    /// What scores are shifted by: the row maximum, or 0 where it is −∞ (every score so far
    /// −∞: −∞ − −∞ would be NaN; such a row ends 0/0 = NaN only if it never sees a finite
    /// score, as on the fallback).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn shift(m: __m512) -> __m512 {
        let ninf = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(m, _mm512_set1_ps(f32::NEG_INFINITY));
        _mm512_mask_blend_ps(ninf, m, _mm512_setzero_ps())
    }

    /// One row's scores `s[0..bc]` → e^(s − mu) in place, keys `valid..bc` 0; returns their
    /// sum on 16 lanes (reduced once per row at the end of the task, not per block).
    #[target_feature(enable = "avx512f")]
    unsafe fn exp_row(s: *mut f32, bc: usize, valid: usize, mu: f32) -> __m512 {
        let mv = _mm512_set1_ps(mu);
        let mut sum = _mm512_setzero_ps();
        for c in 0..bc.div_ceil(16) {
            let mk = lanes(valid.saturating_sub(16 * c));
            let e = exp16(_mm512_sub_ps(_mm512_load_ps(s.add(16 * c)), mv));
            let e = _mm512_maskz_mov_ps(mk, e);
            sum = _mm512_add_ps(sum, e);
            _mm512_store_ps(s.add(16 * c), e);
        }
        sum
    }

    /// S tile: `s[r][0..16·vv] = Σ_d q[r][d]·kt[d][0..16·vv]` for r < rr.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn qk(
        rr: usize,
        vv: usize,
        q: *const f32,
        ldq: usize,
        kt: *const f32,
        ldk: usize,
        s: *mut f32,
        lds: usize,
    ) {
        macro_rules! dispatch {
            ($($r:literal)*) => {
                match (rr, vv) {
                    $(
                        ($r, 1) => qk_tile::<$r, 1>(q, ldq, kt, ldk, s, lds),
                        ($r, 2) => qk_tile::<$r, 2>(q, ldq, kt, ldk, s, lds),
                        ($r, 3) => qk_tile::<$r, 3>(q, ldq, kt, ldk, s, lds),
                        ($r, 4) => qk_tile::<$r, 4>(q, ldq, kt, ldk, s, lds),
                    )*
                    _ => unreachable!("qk tiles are 1..=6 rows × 1..=4 vectors"),
                }
            };
        }
        dispatch!(1 2 3 4 5 6)
    }

    /// The register tile of `qk`: `N` rows × `V` vectors of 16 keys; the dh loop (ldq = dh)
    /// innermost.
    #[target_feature(enable = "avx512f")]
    unsafe fn qk_tile<const N: usize, const V: usize>(
        q: *const f32,
        ldq: usize,
        kt: *const f32,
        ldk: usize,
        s: *mut f32,
        lds: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; N];
        for d in 0..ldq {
            let kp = kt.add(d * ldk);
            let mut kv = [_mm512_setzero_ps(); V];
            for (v, x) in kv.iter_mut().enumerate() {
                *x = _mm512_load_ps(kp.add(16 * v));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let qv = _mm512_set1_ps(*q.add(r * ldq + d));
                for (a, &x) in row.iter_mut().zip(&kv) {
                    *a = _mm512_fmadd_ps(qv, x, *a);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, &a) in row.iter().enumerate() {
                _mm512_store_ps(s.add(r * lds + 16 * v), a);
            }
        }
    }

    /// O tile: `o[r][0..16·w] = α[r]·o[r] + Σ_{j<keys} p[r][j]·v[j][0..16·w]` for r < rr
    /// (`first`: from zero, whatever `o` holds).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn pv(
        rr: usize,
        w: usize,
        p: *const f32,
        ldp: usize,
        v: *const f32,
        ldv: usize,
        keys: usize,
        o: *mut f32,
        ldo: usize,
        alpha: *const f32,
        first: bool,
    ) {
        macro_rules! dispatch {
            ($($r:literal)*) => {
                match (rr, w) {
                    $(
                        ($r, 1) => pv_tile::<$r, 1>(p, ldp, v, ldv, keys, o, ldo, alpha, first),
                        ($r, 2) => pv_tile::<$r, 2>(p, ldp, v, ldv, keys, o, ldo, alpha, first),
                        ($r, 3) => pv_tile::<$r, 3>(p, ldp, v, ldv, keys, o, ldo, alpha, first),
                        ($r, 4) => pv_tile::<$r, 4>(p, ldp, v, ldv, keys, o, ldo, alpha, first),
                    )*
                    _ => unreachable!("pv tiles are 1..=6 rows × 1..=4 vectors"),
                }
            };
        }
        dispatch!(1 2 3 4 5 6)
    }

    /// The register tile of `pv`: `N` rows × `V` vectors of 16 output channels.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn pv_tile<const N: usize, const V: usize>(
        p: *const f32,
        ldp: usize,
        v: *const f32,
        ldv: usize,
        keys: usize,
        o: *mut f32,
        ldo: usize,
        alpha: *const f32,
        first: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; N];
        if !first {
            for (r, row) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*alpha.add(r));
                for (c, x) in row.iter_mut().enumerate() {
                    *x = _mm512_mul_ps(a, _mm512_load_ps(o.add(r * ldo + 16 * c)));
                }
            }
        }
        for j in 0..keys {
            let vp = v.add(j * ldv);
            let mut vv = [_mm512_setzero_ps(); V];
            for (c, x) in vv.iter_mut().enumerate() {
                *x = _mm512_load_ps(vp.add(16 * c));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let pb = _mm512_set1_ps(*p.add(r * ldp + j));
                for (a, &x) in row.iter_mut().zip(&vv) {
                    *a = _mm512_fmadd_ps(pb, x, *a);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (c, &a) in row.iter().enumerate() {
                _mm512_store_ps(o.add(r * ldo + 16 * c), a);
            }
        }
    }

    /// `exp16` on 16 values, for the tests.
    #[cfg(test)]
    pub(super) fn exp16_array(x: &[f32; 16]) -> [f32; 16] {
        let mut y = [0f32; 16];
        // SAFETY: the tests call this only where AVX-512F is detected.
        unsafe {
            #[target_feature(enable = "avx512f")]
            unsafe fn go(x: &[f32; 16], y: &mut [f32; 16]) {
                _mm512_storeu_ps(y.as_mut_ptr(), exp16(_mm512_loadu_ps(x.as_ptr())));
            }
            go(x, &mut y);
        }
        y
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    use super::{Layout, Problem};

    /// Never called: `available()` is false off x86-64.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn task(
        _p: &Problem,
        _lay: &Layout,
        _bi: usize,
        _h: usize,
        _r0: usize,
        _r1: usize,
        _buf: &mut [f32],
        _out: *mut f32,
    ) {
        unreachable!("the flash attention kernel needs AVX-512")
    }
}

// The kernel's own entry points (exp16) exist on x86-64 only.
#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::super::attention::{attention_on, causal_attention_on, Kernel};
    use crate::tensor::Tensor;

    /// softmax(q·kᵀ·scale)·v in f64, heads side by side, optionally causal.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        scale: f32,
        causal: bool,
    ) -> Vec<f64> {
        let (b, n, inner) = (q.shape()[0], q.shape()[1], q.shape()[2]);
        let (m, dh) = (k.shape()[1], inner / heads);
        let (qs, ks, vs) = (q.data(), k.data(), v.data());
        let mut out = vec![0f64; b * n * inner];
        let mut s = vec![0f64; m];
        for bi in 0..b {
            for h in 0..heads {
                for i in 0..n {
                    let keys = if causal { i + 1 } else { m };
                    let qi = &qs[(bi * n + i) * inner + h * dh..][..dh];
                    for (j, sj) in s.iter_mut().enumerate().take(keys) {
                        let kj = &ks[(bi * m + j) * inner + h * dh..][..dh];
                        *sj = qi
                            .iter()
                            .zip(kj)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                            * scale as f64;
                    }
                    let max = s[..keys].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let mut z = 0f64;
                    for sj in &mut s[..keys] {
                        *sj = (*sj - max).exp();
                        z += *sj;
                    }
                    let o = &mut out[(bi * n + i) * inner + h * dh..][..dh];
                    for (j, &p) in s[..keys].iter().enumerate() {
                        let vj = &vs[(bi * m + j) * inner + h * dh..][..dh];
                        for (od, &vd) in o.iter_mut().zip(vj) {
                            *od += p / z * vd as f64;
                        }
                    }
                }
            }
        }
        out
    }

    /// The largest |got − want| / max(1, |want|).
    fn worst(got: &[f32], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        got.iter()
            .zip(want)
            .map(|(&g, &w)| (g as f64 - w).abs() / w.abs().max(1.0))
            .fold(0.0, f64::max)
    }

    fn scaled(t: Tensor, by: f32) -> Tensor {
        let mut t = t;
        t.data_mut().iter_mut().for_each(|x| *x *= by);
        t
    }

    /// Flash against the f64 reference and against the `gemm` path over head sizes 1–160,
    /// ragged and single-token N and M, flat and peaked softmax (q ×8: logits of ±30 and more).
    #[test]
    fn flash_matches_reference_and_fallback() {
        if !super::super::switch::avx512f() {
            eprintln!("no AVX-512F: the flash kernel is not tested");
            return;
        }
        let sizes = [
            (1, 1),
            (1, 77),
            (7, 1),
            (7, 77),
            (77, 7),
            (77, 77),
            (300, 1025),
            (1025, 300),
            (1025, 1),
        ];
        // Worst errors against f64, [flat, peaked], for flash and the gemm path.
        let (mut worst_ref, mut worst_fb) = ([0f64; 2], [0f64; 2]);
        let mut seed = 0;
        for dh in [1, 8, 16, 33, 40, 64, 80, 160] {
            for &(n, m) in &sizes {
                for peaked in [false, true] {
                    // Fewer samples and heads where the f64 reference is slow.
                    let (b, heads) = if n * m > 10_000 { (1, 2) } else { (2, 3) };
                    seed += 3;
                    let q = Tensor::randn([b, n, heads * dh], seed);
                    let q = scaled(q, if peaked { 8.0 } else { 1.0 });
                    let k = Tensor::randn([b, m, heads * dh], seed + 1);
                    let v = Tensor::randn([b, m, heads * dh], seed + 2);
                    let scale = 0.7 / (dh as f32).sqrt();
                    let got = attention_on(&q, &k, &v, heads, scale, Kernel::Flash).unwrap();
                    let fb = attention_on(&q, &k, &v, heads, scale, Kernel::Gemm).unwrap();
                    let want = reference(&q, &k, &v, heads, scale, false);
                    let (er, ef) = (worst(got.data(), &want), worst(fb.data(), &want));
                    let tag = format!("dh {dh} n {n} m {m} peaked {peaked}");
                    // Peaked rows amplify the f32 rounding of their large logits: the gemm path
                    // is itself 1.5e-5 off the f64 reference at dh 160 there.
                    let tol = if peaked { 3e-5 } else { 1e-5 };
                    assert!(er <= tol, "{tag}: flash off by {er:e} (gemm path: {ef:e})");
                    let d = got
                        .data()
                        .iter()
                        .zip(fb.data())
                        .map(|(&a, &b)| (a - b).abs() as f64 / (b.abs() as f64).max(1.0))
                        .fold(0.0, f64::max);
                    assert!(
                        d <= 2.0 * tol,
                        "{tag}: flash and gemm paths differ by {d:e}"
                    );
                    worst_ref[peaked as usize] = worst_ref[peaked as usize].max(er);
                    worst_fb[peaked as usize] = worst_fb[peaked as usize].max(ef);
                }
            }
        }
        let [a, b, c, d] = [worst_ref[0], worst_ref[1], worst_fb[0], worst_fb[1]];
        eprintln!("off f64, flat/peaked: flash {a:.1e}/{b:.1e}, gemm path {c:.1e}/{d:.1e}");
    }

    /// The causal variant against the f64 reference and the `gemm` path, across task and key
    /// block boundaries.
    #[test]
    fn flash_causal_matches_reference() {
        if !super::super::switch::avx512f() {
            return;
        }
        let (mut worst_ref, mut worst_fb) = ([0f64; 2], [0f64; 2]);
        for dh in [1, 8, 40, 64, 80] {
            for n in [1, 7, 77, 300, 450] {
                for peaked in [false, true] {
                    let (b, heads) = (2, 2);
                    let seed = (dh * 1000 + n) as u64 + peaked as u64;
                    let q = scaled(
                        Tensor::randn([b, n, heads * dh], seed),
                        if peaked { 8.0 } else { 1.0 },
                    );
                    let k = Tensor::randn([b, n, heads * dh], seed + 1);
                    let v = Tensor::randn([b, n, heads * dh], seed + 2);
                    let scale = 1.3 / (dh as f32).sqrt();
                    let got = causal_attention_on(&q, &k, &v, heads, scale, true).unwrap();
                    let fb = causal_attention_on(&q, &k, &v, heads, scale, false).unwrap();
                    let want = reference(&q, &k, &v, heads, scale, true);
                    let (er, ef) = (worst(got.data(), &want), worst(fb.data(), &want));
                    let tag = format!("causal dh {dh} n {n} peaked {peaked}");
                    let tol = if peaked { 3e-5 } else { 1e-5 };
                    assert!(er <= tol, "{tag}: flash off by {er:e} (gemm path: {ef:e})");
                    worst_ref[peaked as usize] = worst_ref[peaked as usize].max(er);
                    worst_fb[peaked as usize] = worst_fb[peaked as usize].max(ef);
                }
            }
        }
        let [a, b, c, d] = [worst_ref[0], worst_ref[1], worst_fb[0], worst_fb[1]];
        eprintln!("causal, off f64, flat/peaked: flash {a:.1e}/{b:.1e}, gemm {c:.1e}/{d:.1e}");
    }

    /// NaN and ±∞ in q, k or v, and scores that overflow: NaN exactly where the `gemm` path
    /// has NaN, the same values elsewhere.
    #[test]
    fn non_finite_inputs_behave_as_the_fallback() {
        if !super::super::switch::avx512f() {
            return;
        }
        let (b, n, m, heads, dh) = (2, 150, 200, 2, 24);
        let fresh = |seed| {
            (
                Tensor::randn([b, n, heads * dh], seed),
                Tensor::randn([b, m, heads * dh], seed + 1),
                Tensor::randn([b, m, heads * dh], seed + 2),
            )
        };
        type Edit = fn(&mut Tensor, &mut Tensor, &mut Tensor);
        let edits: [(&str, Edit); 7] = [
            ("NaN in q", |q, _, _| q.data_mut()[5 * 48 + 30] = f32::NAN),
            ("NaN in k", |_, k, _| k.data_mut()[170 * 48 + 3] = f32::NAN),
            ("NaN in v", |_, _, v| {
                v.data_mut()[(200 + 9) * 48 + 40] = f32::NAN
            }),
            ("+inf in q", |q, _, _| {
                q.data_mut()[48 * 149 + 1] = f32::INFINITY
            }),
            ("-inf in k", |_, k, _| {
                k.data_mut()[48 * 7] = f32::NEG_INFINITY
            }),
            ("+inf in v", |_, _, v| {
                v.data_mut()[48 * 130 + 25] = f32::INFINITY
            }),
            ("overflowing scores", |q, k, _| {
                q.data_mut()[..48].iter_mut().for_each(|x| *x *= 1e20);
                k.data_mut()[48 * 140..48 * 141]
                    .iter_mut()
                    .for_each(|x| *x *= 1e20);
            }),
        ];
        for (what, edit) in edits {
            let (mut q, mut k, mut v) = fresh(7);
            edit(&mut q, &mut k, &mut v);
            let got = attention_on(&q, &k, &v, heads, 0.2, Kernel::Flash).unwrap();
            let fb = attention_on(&q, &k, &v, heads, 0.2, Kernel::Gemm).unwrap();
            let mut odd = 0;
            for (i, (&a, &f)) in got.data().iter().zip(fb.data()).enumerate() {
                assert_eq!(a.is_nan(), f.is_nan(), "{what}: element {i}: {a} vs {f}");
                odd += !a.is_finite() as usize;
                if !f.is_nan() {
                    assert!(
                        a == f || (a - f).abs() <= 2e-5 * f.abs().max(1.0),
                        "{what}: element {i}: {a} vs {f}"
                    );
                }
            }
            assert!(odd > 0, "{what}: every output finite");
        }
    }

    /// exp16 against f64's exp (within 2 ulp, as `vector::exp`) and against `vector::exp`
    /// over the range softmax uses and beyond; NaN stays NaN.
    #[test]
    fn exp16_is_cephes_expf() {
        if !super::super::switch::avx512f() {
            return;
        }
        let ulp = |a: f32, b: f32| (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs();
        let (mut worst_f64, mut worst_scalar) = (0u64, 0u64);
        let mut x = -87.0f32;
        while x < 88.5 {
            let mut xs = [0f32; 16];
            for (i, v) in xs.iter_mut().enumerate() {
                *v = x + i as f32 * 1.37e-3;
            }
            let ys = super::kernel::exp16_array(&xs);
            for (&x, &y) in xs.iter().zip(&ys) {
                let exact = (x as f64).exp() as f32;
                worst_f64 = worst_f64.max(ulp(y, exact));
                worst_scalar = worst_scalar.max(ulp(y, super::super::vector::exp(x)));
            }
            x += 0.0219;
        }
        assert!(worst_f64 <= 2, "exp16 off f64 by {worst_f64} ulp");
        assert!(
            worst_scalar <= 1,
            "exp16 off vector::exp by {worst_scalar} ulp"
        );
        let mut xs = [0f32; 16];
        xs[0] = f32::NAN;
        xs[1] = f32::NEG_INFINITY;
        xs[2] = -1e30;
        xs[3] = -0.0;
        let ys = super::kernel::exp16_array(&xs);
        assert!(ys[0].is_nan());
        assert_eq!(ys[1], super::super::vector::exp(f32::NEG_INFINITY));
        assert_eq!(ys[2], super::super::vector::exp(-1e30));
        assert_eq!(ys[3], 1.0);
        eprintln!("exp16: {worst_f64} ulp off f64, {worst_scalar} off vector::exp");
    }

    /// A second call of one shape on one thread reuses that thread's scratch: same buffer,
    /// no growth.
    #[test]
    fn repeated_calls_reuse_the_scratch() {
        if !super::super::switch::avx512f() {
            return;
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let q = Tensor::randn([2, 300, 80], 1);
        let k = Tensor::randn([2, 77, 80], 2);
        let v = Tensor::randn([2, 77, 80], 3);
        let buf = || {
            super::SCRATCH.with(|c| {
                let c = c.borrow();
                (c.as_ptr() as usize, c.capacity())
            })
        };
        pool.install(|| attention_on(&q, &k, &v, 2, 0.3, Kernel::Flash).unwrap());
        let before = pool.install(buf);
        assert!(before.1 > 0);
        for _ in 0..3 {
            pool.install(|| attention_on(&q, &k, &v, 2, 0.3, Kernel::Flash).unwrap());
        }
        assert_eq!(pool.install(buf), before);
    }
}

/// Timing on a busy machine: `cargo test --release --lib attention_cpu_time -- --ignored
/// --nocapture` runs the flash and `gemm` paths interleaved in a pool of `FREELUNCH_THREADS`
/// (default 1) and prints the least wall time and, at one thread, the least thread CPU time of
/// `FREELUNCH_BENCH_ITERS` (default 5) calls per shape (shapes as `benches/cpu_ops.rs`'s
/// `FREELUNCH_BENCH_ATTENTION`; SD1.5's by default). CPU time, unlike wall time, does not
/// count the time other processes hold the core.
#[cfg(all(test, target_arch = "x86_64"))]
mod timing {
    use super::super::attention::{attention_on, Kernel};
    use crate::tensor::Tensor;

    fn thread_ms() -> f64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec to write.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 * 1e-6
    }

    #[test]
    #[ignore]
    fn attention_cpu_time() {
        if !super::super::switch::avx512f() {
            return;
        }
        let spec = std::env::var("FREELUNCH_BENCH_ATTENTION").unwrap_or_else(|_| {
            "2,4096,4096,320,8;2,4096,77,320,8;2,1024,1024,640,8;2,256,256,1280,8".into()
        });
        let iters: usize = std::env::var("FREELUNCH_BENCH_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        let threads: usize = std::env::var("FREELUNCH_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        // FREELUNCH_ATTN_PRECISION=bf16 sets the f32 flash kernel beside the bf16 one on AMX
        // tiles instead of beside the `gemm` path.
        let bf16 = std::env::var("FREELUNCH_ATTN_PRECISION").is_ok_and(|v| v == "bf16");
        if bf16 && !super::super::attention_amx::available() {
            eprintln!("no AMX-BF16 here: the bf16 attention cannot be timed");
            return;
        }
        let (other, name) = if bf16 {
            (Kernel::FlashBf16, "bf16")
        } else {
            (Kernel::Gemm, "gemm")
        };
        for s in spec.split(';').filter(|s| !s.is_empty()) {
            let d: Vec<usize> = s.split(',').map(|x| x.trim().parse().unwrap()).collect();
            let (b, n, m, c, heads) = (d[0], d[1], d[2], d[3], d[4]);
            let q = Tensor::randn([b, n, c], 0);
            let k = Tensor::randn([b, m, c], 1);
            let v = Tensor::randn([b, m, c], 2);
            let scale = 1.0 / ((c / heads) as f32).sqrt();
            // [flash, other] × [wall, thread CPU].
            let mut best = [[f64::INFINITY; 2]; 2];
            for it in 0..iters + 1 {
                for (i, kernel) in [Kernel::Flash, other].into_iter().enumerate() {
                    let t = pool.install(|| {
                        let (w0, t0) = (std::time::Instant::now(), thread_ms());
                        let o = attention_on(&q, &k, &v, heads, scale, kernel).unwrap();
                        let t = [w0.elapsed().as_secs_f64() * 1e3, thread_ms() - t0];
                        drop(o);
                        t
                    });
                    // The first round warms caches and the scratch.
                    if it > 0 {
                        best[i][0] = best[i][0].min(t[0]);
                        best[i][1] = best[i][1].min(t[1]);
                    }
                }
            }
            let [[fw, fc], [gw, gc]] = best;
            if threads == 1 {
                println!(
                    "attention {s} t1: flash {fw:.2} ms wall {fc:.2} ms cpu, {name} {gw:.2} ms \
                     wall {gc:.2} ms cpu (least of {iters})"
                );
            } else {
                println!(
                    "attention {s} t{threads}: flash {fw:.2} ms wall, {name} {gw:.2} ms wall \
                     (least of {iters})"
                );
            }
        }
    }
}
