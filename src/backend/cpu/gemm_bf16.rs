//! The bf16 matrix product on AMX tiles, `c = β·c + s·a·b` with f32 operands rounded to bf16
//! (nearest even) as they are packed and f32 accumulation: the CPU backend's `--dtype bf16`, as
//! PyTorch's CPU autocast runs its convolutions and linear layers. Same operands and contract as
//! the f32 kernel (`cpu::gemm_avx512`): strided A or a convolution's implicit matrix
//! (`gemm::Taps`), strided B and C, packing buffers kept per thread (no allocation once warm).
//!
//! Algorithm (the f32 kernel's loop nest, with tiles for registers):
//! - Tasks: blocks of up to `NC` columns × a share of the rows (`task_shape`), run on rayon's
//!   pool when the product is large enough; each configures the tiles (`amx::configure`) once.
//! - Per task and per depth slice of at most `KC`: B's panel is packed once as bf16 VNNI tiles
//!   (strips of 16 columns; per 32 depths, 16 rows of 16 column pairs), then each `MC` block of
//!   rows packs its A strips (16 rows × 32 depths per tile, row-major bf16), and every 32 × 32
//!   micro block of C runs 2 × 2 accumulator tiles over the slice: per 32 depths, two A and two
//!   B tile loads feed four `tdpbf16ps`. Strips are zero-padded to 16 rows/columns and the depth
//!   to 32, so ragged edges cost padding, not separate code.
//! - Unscaled products (all the backend's) accumulate in the tiles: a micro block's tiles load
//!   C (after the first slice, or to add to it) and are stored back, so each element's sum runs
//!   in depth order whatever the task split (masked and dense layers agree bit for bit). Whole
//!   blocks of a row-major C load and store C itself; ragged or strided ones go through a 4 KiB
//!   buffer. Scaled products add `s·(tile sum)` to C per slice. C is never read or written
//!   outside the matrix.
//! - Packing converts 16 floats at a time with AVX-512F integer arithmetic (`round_bf16`), and
//!   moves transposed layouts through the in-register 16 × 16 transpose.
//!
//! Limits: needs AMX-BF16 (`amx::available`); denormals are flushed to zero by the tiles; the
//! rounding of the operands is what bounds the error (≈ 2⁻⁹ relative per operand), so results
//! agree with the f32 product to about 1e-2 relative on O(1) data, not to the last bit.
//!
//! Tested in this module against an f64 product of the bf16-rounded operands over every stride
//! layout, the convolution form, ragged sizes and both threading modes; benched by
//! `benches/gemm.rs` (`--bench gemm -- bf16`) against the f32 kernel.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::amx;
use super::avx512::{lane_mask, transpose16};
use super::matrix::{run_tasks, AView, Mat, Operands, Threads};

/// Depth of one packed slice (a multiple of the 32 depths of a tile).
pub const KC: usize = 512;
/// Rows packed at a time within a task (A strips of 16 rows).
pub const MC: usize = 128;
/// Columns of C per task: a B panel of `KC · NC` bf16 values (256 KiB).
pub const NC: usize = 256;
/// Rows and columns of one tile.
const T: usize = amx::ROWS;
/// Depths per tile (32 bf16 values fill a 64-byte row).
const TK: usize = 32;
/// bf16 values per tile.
const TILE: usize = T * TK;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u16; 32]);

/// A thread's packing buffers, grown to the largest task it has run and then kept.
#[derive(Default)]
struct Packs {
    a: Vec<Line>,
    b: Vec<Line>,
}

thread_local! {
    static PACKS: RefCell<Packs> = RefCell::new(Packs::default());
}

/// The product on matrices already bounds-checked by `gemm::sgemm` (m, n, k ≥ 1).
///
/// # Safety
/// `amx::available()` must be true. Every element (i, p) of A (`av`) for i < m, p < k lies in
/// `a`, every (p, j) of `bm` in `b` and every (i, j) of `cm` in `c`, and C's elements are distinct.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    av: AView,
    b: &[f32],
    bm: Mat,
    c: &mut [f32],
    cm_in: Mat,
    accumulate: bool,
    scale: f32,
    threads: Threads,
) {
    let o = Operands {
        m,
        n,
        a,
        av,
        b,
        bm,
        cm: cm_in,
    }
    .stores_along_rows();
    let workers = rayon::current_num_threads();
    let parallel = threads == Threads::Pool
        && workers > 1
        && o.m.saturating_mul(o.n).saturating_mul(k) >= 1 << 17;
    let shape = task_shape(o.m, o.n, if parallel { workers } else { 1 });
    let job = Job {
        k,
        a: o.a.as_ptr(),
        av: o.av,
        b: o.b.as_ptr(),
        bm: o.bm,
        c: c.as_mut_ptr(),
        cm: o.cm,
        accumulate,
        scale,
    };
    // SAFETY (each block): it lies inside the checked matrices, and tasks write disjoint blocks.
    run_tasks((o.m, o.n), shape, parallel, |i0, rows, j0, cols| unsafe {
        job.block(i0, rows, j0, cols)
    });
}

/// Rows and columns of C per task: column blocks of `NC` (narrowed to whole micro blocks) cut by
/// rows until there are four tasks per worker; on one thread, one column block is one task.
fn task_shape(m: usize, n: usize, workers: usize) -> (usize, usize) {
    let nc = NC.min(n.next_multiple_of(2 * T));
    if workers == 1 {
        return (m, nc);
    }
    let want = 4 * workers;
    let tn = n.div_ceil(nc);
    let chunks = want.div_ceil(tn).min(m.div_ceil(2 * T));
    (m.div_ceil(chunks).next_multiple_of(2 * T), nc)
}

/// One product's operands as raw parts, shared by its tasks.
#[derive(Clone, Copy)]
struct Job {
    k: usize,
    a: *const f32,
    av: AView,
    b: *const f32,
    bm: Mat,
    c: *mut f32,
    cm: Mat,
    accumulate: bool,
    scale: f32,
}

// SAFETY: tasks read a and b only and write disjoint blocks of c (see `sgemm`).
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    /// C's rows i0..i0+rows, columns j0..j0+cols over the whole depth.
    ///
    /// # Safety
    /// As `sgemm`, for this block; no other thread writes it meanwhile.
    #[target_feature(enable = "avx512f")]
    unsafe fn block(&self, i0: usize, rows: usize, j0: usize, cols: usize) {
        let b_strips = cols.div_ceil(T);
        let slice = self.k.div_ceil(self.k.div_ceil(KC)).next_multiple_of(TK);
        let chunks_max = slice / TK;
        PACKS.with(|packs| {
            // A product never runs inside another on one thread; were the buffers taken, a fresh
            // pair keeps the product correct.
            let (mut own, mut borrowed);
            let packs: &mut Packs = match packs.try_borrow_mut() {
                Ok(p) => {
                    borrowed = p;
                    &mut borrowed
                }
                Err(_) => {
                    own = Packs::default();
                    &mut own
                }
            };
            let need_a = MC / T * chunks_max * TILE / 32;
            let need_b = b_strips * chunks_max * TILE / 32;
            if packs.a.len() < need_a {
                packs.a.resize(need_a, Line([0; 32]));
            }
            if packs.b.len() < need_b {
                packs.b.resize(need_b, Line([0; 32]));
            }
            let pa = packs.a.as_mut_ptr() as *mut u16;
            let pb = packs.b.as_mut_ptr() as *mut u16;
            // SAFETY: AMX is available (the caller's contract).
            unsafe { amx::configure() };
            let mut p0 = 0;
            while p0 < self.k {
                let kc = (slice).min(self.k - p0);
                let chunks = kc.div_ceil(TK);
                let load = self.accumulate || p0 > 0;
                for s in 0..b_strips {
                    let c0 = j0 + s * T;
                    let n = T.min(j0 + cols - c0);
                    // SAFETY: the buffer holds b_strips·chunks tiles; B's elements were checked.
                    unsafe { pack_b(self.b, self.bm, p0, kc, c0, n, pb.add(s * chunks * TILE)) };
                }
                for ic in (i0..i0 + rows).step_by(MC) {
                    let mc = MC.min(i0 + rows - ic);
                    let a_strips = mc.div_ceil(T);
                    for s in 0..a_strips {
                        let r0 = ic + s * T;
                        let n = T.min(ic + mc - r0);
                        // SAFETY: the buffer holds MC/T·chunks tiles; A's elements were checked.
                        unsafe {
                            pack_a(self.a, self.av, r0, n, p0, kc, pa.add(s * chunks * TILE))
                        };
                    }
                    for sa in (0..a_strips).step_by(2) {
                        let r0 = ic + sa * T;
                        let two_a = sa + 1 < a_strips;
                        for sb in (0..b_strips).step_by(2) {
                            let c0 = j0 + sb * T;
                            let out = Out {
                                c: self.c,
                                cm: self.cm,
                                i0: r0,
                                j0: c0,
                                rows: (2 * T).min(ic + mc - r0),
                                cols: (2 * T).min(j0 + cols - c0),
                                load,
                                scale: self.scale,
                            };
                            let a0 = pa.add(sa * chunks * TILE);
                            let b0 = pb.add(sb * chunks * TILE);
                            let step = chunks * TILE;
                            // SAFETY: the strips were packed above with `chunks` tiles each (a
                            // second strip only where `two_*` says so); `out` lies in C, in this
                            // task's block.
                            unsafe {
                                match (two_a, sb + 1 < b_strips) {
                                    (true, true) => {
                                        micro::<true, true>(chunks, a0, step, b0, step, &out)
                                    }
                                    (true, false) => {
                                        micro::<true, false>(chunks, a0, step, b0, 0, &out)
                                    }
                                    (false, true) => {
                                        micro::<false, true>(chunks, a0, 0, b0, step, &out)
                                    }
                                    (false, false) => {
                                        micro::<false, false>(chunks, a0, 0, b0, 0, &out)
                                    }
                                }
                            }
                        }
                    }
                }
                p0 += kc;
            }
            // SAFETY: configured above.
            unsafe { amx::release() };
        });
    }
}

/// Where a micro block's results go: C's rows i0..i0+rows, columns j0..j0+cols.
struct Out {
    c: *mut f32,
    cm: Mat,
    i0: usize,
    j0: usize,
    rows: usize,
    cols: usize,
    /// Whether the block adds to what C holds (false: overwrites it, never reading it).
    load: bool,
    scale: f32,
}

/// A 32 × 32 f32 block, the staging of one micro block's four tiles.
#[repr(C, align(64))]
struct Block([[f32; 2 * T]; 2 * T]);

/// One micro block: `1 + TWO_A` A strips × `1 + TWO_B` B strips over `chunks` tiles of depth,
/// then added to C.
///
/// # Safety
/// The tiles are configured; `a0` (and `a0 + a_step` with `TWO_A`) hold `chunks` packed A tiles,
/// likewise `b0`/`b_step` for B; `out` lies inside C.
#[target_feature(enable = "avx512f")]
unsafe fn micro<const TWO_A: bool, const TWO_B: bool>(
    chunks: usize,
    a0: *const u16,
    a_step: usize,
    b0: *const u16,
    b_step: usize,
    out: &Out,
) {
    const S: usize = amx::ROW_BYTES;
    let cm = out.cm;
    // Unscaled products accumulate in the tiles: C's values are loaded into them (when added
    // to) and the sums stored back, so every element is c + a₁b₁ + a₂b₂ + … in depth order,
    // whatever the blocks. A block that fills its tiles in a row-major C loads and stores C
    // itself; others go through `block`.
    let in_tile = out.scale == 1.0;
    let direct = in_tile
        && cm.cs == 1
        && out.rows == T * (1 + TWO_A as usize)
        && out.cols == T * (1 + TWO_B as usize);
    let at = |r: usize, j: usize| cm.offset + (out.i0 + r) * cm.rs + (out.j0 + j) * cm.cs;
    let mut block = Block([[0.0; 2 * T]; 2 * T]);
    if in_tile && !direct && out.load {
        for (r, vals) in block.0.iter_mut().enumerate().take(out.rows) {
            for (j, v) in vals.iter_mut().enumerate().take(out.cols) {
                // SAFETY: element (i0+r, j0+j) of C.
                *v = unsafe { *out.c.add(at(r, j)) };
            }
        }
    }
    let (c_tile, c_row) = if direct {
        (out.c.wrapping_add(at(0, 0)).cast::<u8>(), cm.rs * 4)
    } else {
        (block.0.as_mut_ptr().cast::<u8>(), 2 * T * 4)
    };
    // SAFETY: tile loads read whole packed tiles (1 KiB, rows 64 bytes apart) inside the
    // buffers; C tiles are `block`'s, or with `direct` the block's rows × columns of C (inside
    // the matrix: its rows and columns were checked to be whole).
    unsafe {
        if in_tile && out.load {
            amx::load::<0>(c_tile, c_row);
            if TWO_B {
                amx::load::<1>(c_tile.add(T * 4), c_row);
            }
            if TWO_A {
                amx::load::<2>(c_tile.add(T * c_row), c_row);
                if TWO_B {
                    amx::load::<3>(c_tile.add(T * c_row + T * 4), c_row);
                }
            }
        } else {
            amx::zero::<0>();
            amx::zero::<1>();
            amx::zero::<2>();
            amx::zero::<3>();
        }
        for q in 0..chunks {
            let (a, b) = (a0.add(q * TILE), b0.add(q * TILE));
            amx::load::<4>(a.cast(), S);
            amx::load::<6>(b.cast(), S);
            amx::dot::<0, 4, 6>();
            if TWO_B {
                amx::load::<7>(b.add(b_step).cast(), S);
                amx::dot::<1, 4, 7>();
            }
            if TWO_A {
                amx::load::<5>(a.add(a_step).cast(), S);
                amx::dot::<2, 5, 6>();
                if TWO_B {
                    amx::dot::<3, 5, 7>();
                }
            }
        }
        let (base, row) = (c_tile, c_row);
        amx::store::<0>(base, row);
        if TWO_B {
            amx::store::<1>(base.add(T * 4), row);
        }
        if TWO_A {
            amx::store::<2>(base.add(T * row), row);
            if TWO_B {
                amx::store::<3>(base.add(T * row + T * 4), row);
            }
        }
    }
    if direct {
        return;
    }
    if in_tile {
        for (r, vals) in block.0.iter().enumerate().take(out.rows) {
            for (j, &v) in vals.iter().enumerate().take(out.cols) {
                // SAFETY: element (i0+r, j0+j) of C.
                unsafe { *out.c.add(at(r, j)) = v };
            }
        }
        return;
    }
    let s = _mm512_set1_ps(out.scale);
    for (r, vals) in block.0.iter().enumerate().take(out.rows) {
        if cm.cs == 1 {
            for half in 0..2 {
                let mask = lane_mask(out.cols.saturating_sub(T * half));
                if mask == 0 {
                    continue;
                }
                // SAFETY: row i0+r, columns j0+16·half.. of C, masked to the block's columns.
                unsafe {
                    let d = out
                        .c
                        .add(cm.offset + (out.i0 + r) * cm.rs + out.j0 + T * half);
                    let mut y = _mm512_mul_ps(_mm512_loadu_ps(vals.as_ptr().add(T * half)), s);
                    if out.load {
                        y = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, d), y);
                    }
                    _mm512_mask_storeu_ps(d, mask, y);
                }
            }
        } else {
            for (j, &v) in vals.iter().enumerate().take(out.cols) {
                // SAFETY: element (i0+r, j0+j) of C.
                unsafe {
                    let d = out
                        .c
                        .add(cm.offset + (out.i0 + r) * cm.rs + (out.j0 + j) * cm.cs);
                    *d = if out.load {
                        *d + v * out.scale
                    } else {
                        v * out.scale
                    };
                }
            }
        }
    }
}

/// Each lane's f32 rounded to bf16 (nearest even; NaN quieted), in the lane's low 16 bits.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn round_bf16(v: __m512) -> __m512i {
    let u = _mm512_castps_si512(v);
    let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(u), _mm512_set1_epi32(1));
    let up = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd);
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
    let quiet = _mm512_or_si512(u, _mm512_set1_epi32(0x0040_0000));
    _mm512_srli_epi32::<16>(_mm512_mask_blend_epi32(nan, up, quiet))
}

/// Lane i: bf16 of `lo` lane i in the low half, of `hi` lane i in the high half.
#[inline]
#[target_feature(enable = "avx512f")]
fn pair(lo: __m512, hi: __m512) -> __m512i {
    _mm512_or_si512(round_bf16(lo), _mm512_slli_epi32::<16>(round_bf16(hi)))
}

/// The 32 floats `v0, v1` (in order) as 32 bf16 values in order: lane i holds values 2i, 2i+1.
#[inline]
#[target_feature(enable = "avx512f")]
fn pairs_in_order(v0: __m512, v1: __m512) -> __m512i {
    let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    let odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    pair(
        _mm512_permutex2var_ps(v0, even, v1),
        _mm512_permutex2var_ps(v0, odd, v1),
    )
}

/// The 16 × 16 transpose of 32-bit lanes.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn transpose_pairs(w: &[__m512i; 16]) -> [__m512i; 16] {
    let mut f = [_mm512_setzero_ps(); 16];
    for (f, w) in f.iter_mut().zip(w) {
        *f = _mm512_castsi512_ps(*w);
    }
    let t = transpose16(&f);
    let mut out = [_mm512_setzero_si512(); 16];
    for (o, t) in out.iter_mut().zip(t) {
        *o = _mm512_castps_si512(t);
    }
    out
}

/// Offsets of A's depths p0..p0+kc relative to its row: `cs·p` for a strided A, the taps'
/// (channel, ki, kj) offsets for a convolution; with the row stride and the offset of (0, 0).
fn depth_offsets(av: AView, p0: usize, kc: usize, offs: &mut [usize; KC]) -> (usize, usize) {
    match av {
        AView::Strided(am) => {
            for (p, o) in offs.iter_mut().enumerate().take(kc) {
                *o = (p0 + p) * am.cs;
            }
            (am.offset, am.rs)
        }
        AView::Taps(t) => {
            let kk = t.k * t.k;
            let (mut ch, mut tap) = (p0 / kk, p0 % kk);
            for o in offs.iter_mut().take(kc) {
                *o = ch * t.plane + (tap / t.k) * t.row + tap % t.k;
                tap += 1;
                if tap == kk {
                    tap = 0;
                    ch += 1;
                }
            }
            (t.base, 1)
        }
    }
}

/// Packs A's rows r0..r0+rows (≤ 16), depths p0..p0+kc as bf16 tiles: per 32 depths, 16 rows of
/// 32 values; rows and depths past the matrix are zero.
///
/// # Safety
/// AVX-512F must be available; the elements lie in A; `dst` holds kc.div_ceil(32) tiles,
/// 64-byte aligned.
#[target_feature(enable = "avx512f")]
unsafe fn pack_a(
    a: *const f32,
    av: AView,
    r0: usize,
    rows: usize,
    p0: usize,
    kc: usize,
    dst: *mut u16,
) {
    let mut offs = [0usize; KC];
    let (base, rs) = depth_offsets(av, p0, kc, &mut offs);
    let chunks = kc.div_ceil(TK);
    // SAFETY (whole body): element (r0 + r, p0 + p) is at base + (r0 + r)·rs + offs[p] for
    // r < rows, p < kc, inside A; each tile written is one of `dst`'s `chunks`.
    unsafe {
        let contiguous_depth = matches!(av, AView::Strided(am) if am.cs == 1);
        if contiguous_depth {
            for q in 0..chunks {
                let depth = (kc - TK * q).min(TK);
                let (m0, m1) = (lane_mask(depth), lane_mask(depth.saturating_sub(16)));
                let tile = dst.add(q * TILE);
                for r in 0..T {
                    let v = if r < rows {
                        let src = a.add(base + (r0 + r) * rs + offs[0] + TK * q);
                        pairs_in_order(
                            _mm512_maskz_loadu_ps(m0, src),
                            _mm512_maskz_loadu_ps(m1, src.add(16)),
                        )
                    } else {
                        _mm512_setzero_si512()
                    };
                    _mm512_store_si512(tile.add(r * TK).cast(), v);
                }
            }
        } else if rs == 1 {
            // Consecutive rows are contiguous at each depth: 16 rows per load, pairs of depths
            // joined lane by lane, then transposed so that each row's pairs lie together.
            let mask = lane_mask(rows);
            let at = |p: usize| {
                if p < kc {
                    _mm512_maskz_loadu_ps(mask, a.add(base + r0 + offs[p]))
                } else {
                    _mm512_setzero_ps()
                }
            };
            for q in 0..chunks {
                let w: [__m512i; 16] =
                    std::array::from_fn(|i| pair(at(TK * q + 2 * i), at(TK * q + 2 * i + 1)));
                let t = transpose_pairs(&w);
                let tile = dst.add(q * TILE);
                for (r, v) in t.iter().enumerate() {
                    _mm512_store_si512(tile.add(r * TK).cast(), *v);
                }
            }
        } else {
            std::ptr::write_bytes(dst, 0, chunks * TILE);
            for r in 0..rows {
                for (p, &o) in offs.iter().enumerate().take(kc) {
                    let v = *a.add(base + (r0 + r) * rs + o);
                    *dst.add((p / TK) * TILE + r * TK + p % TK) = amx::bf16_bits(v);
                }
            }
        }
    }
}

/// Packs B's depths p0..p0+kc, columns c0..c0+cols (≤ 16) as bf16 VNNI tiles: per 32 depths, 16
/// rows (depth pairs) of 16 columns × 2 values; columns and depths past the matrix are zero.
///
/// # Safety
/// AVX-512F must be available; the elements lie in B; `dst` holds kc.div_ceil(32) tiles,
/// 64-byte aligned.
#[target_feature(enable = "avx512f")]
unsafe fn pack_b(
    b: *const f32,
    bm: Mat,
    p0: usize,
    kc: usize,
    c0: usize,
    cols: usize,
    dst: *mut u16,
) {
    let chunks = kc.div_ceil(TK);
    // SAFETY (whole body): element (p0 + p, c0 + j) is at bm.offset + (p0 + p)·rs + (c0 + j)·cs
    // for p < kc, j < cols, inside B; each tile written is one of `dst`'s `chunks`.
    unsafe {
        let at = |p: usize, j: usize| b.add(bm.offset + (p0 + p) * bm.rs + (c0 + j) * bm.cs);
        if bm.rs == 1 {
            // Each column's depths are contiguous: pairs in order per column, then transposed
            // so that each depth pair's columns lie together.
            for q in 0..chunks {
                let depth = (kc - TK * q).min(TK);
                let (m0, m1) = (lane_mask(depth), lane_mask(depth.saturating_sub(16)));
                let w: [__m512i; 16] = std::array::from_fn(|j| {
                    if j < cols {
                        let src = at(TK * q, j);
                        pairs_in_order(
                            _mm512_maskz_loadu_ps(m0, src),
                            _mm512_maskz_loadu_ps(m1, src.add(16)),
                        )
                    } else {
                        _mm512_setzero_si512()
                    }
                });
                let t = transpose_pairs(&w);
                let tile = dst.add(q * TILE);
                for (r, v) in t.iter().enumerate() {
                    _mm512_store_si512(tile.add(r * TK).cast(), *v);
                }
            }
        } else if bm.cs == 1 {
            let mask = lane_mask(cols);
            let row = |p: usize| {
                if p < kc {
                    _mm512_maskz_loadu_ps(mask, at(p, 0))
                } else {
                    _mm512_setzero_ps()
                }
            };
            for q in 0..chunks {
                let tile = dst.add(q * TILE);
                for r in 0..T {
                    let p = TK * q + 2 * r;
                    _mm512_store_si512(tile.add(r * TK).cast(), pair(row(p), row(p + 1)));
                }
            }
        } else {
            std::ptr::write_bytes(dst, 0, chunks * TILE);
            for j in 0..cols {
                for p in 0..kc {
                    let v = *at(p, j);
                    *dst.add((p / TK) * TILE + (p % TK / 2) * TK + 2 * j + p % 2) =
                        amx::bf16_bits(v);
                }
            }
        }
    }
}
