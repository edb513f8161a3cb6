//! The crate's own single-precision matrix product for CPUs with AVX-512F, `c = β·c + s·a·b`
//! over strided matrices, with its packing buffers kept per thread so that repeated products
//! allocate nothing (the `gemm` crate allocates its packed panels on every call, which was most
//! of the bytes a U-Net forward asked the allocator for; BENCHMARKS.md, issue 16).
//!
//! Algorithm (the BLIS/GotoBLAS loop nest):
//! - C is cut into tasks: blocks of `NC` columns, each cut by rows into as many pieces as keep
//!   rayon's workers busy (four tasks per worker; one piece on the calling thread). Tasks of one
//!   column block run back to back.
//! - Per task and per slice of the depth (equal slices of at most `KC`), B's panel is packed
//!   once into strips of `NR` columns (`[p][c]`); then each `MC` block of the task's rows packs
//!   its A strips of `MR` rows (`[p][r]`), and runs one A strip (in L1) against every B strip (from
//!   L2). Packing reads any strides; the row-major and transposed layouts the crate's products
//!   use are moved 16 × 16 at a time through an in-register transpose.
//! - The register tile is `MR × NR` = 12 × 32: 24 zmm accumulators; per depth step two loads of
//!   B and twelve broadcasts of A feed 24 FMAs. Its rows of C are prefetched while it computes.
//!   Ragged edges run the tile of fewer rows (a const generic per row count) and masked column
//!   stores; nothing outside the matrices is read or written.
//! - A product whose C is column-major (row stride 1) is run transposed, `cᵀ = bᵀ·aᵀ`, so stores
//!   are always along C's contiguous dimension.
//! - A can also be the implicit matrix of a stride-1 convolution over a padded image
//!   (`gemm::Taps`: row = output position, depth = (channel, tap)): a whole k×k convolution is
//!   then one product, A packed straight from the image, C loaded and stored once instead of k²
//!   times.
//!
//! Limits: f32 in, f32 accumulate (the depth sum is split in slices, so the rounding differs
//! from the `gemm` crate's in the last bits); C with neither stride 1 is stored element by
//! element. Measured against the `gemm` crate (`benches/gemm.rs`, BENCHMARKS.md): parity within
//! ±10% on the U-Nets' linear layers and 3×3 convolutions; 1×1 convolutions (64-row weight tiles)
//! 1.1–1.3× its time.
//!
//! Tested in this module against an f64 product over every stride layout, ragged sizes and both
//! threading modes (`tests/ops_props.rs` covers the convolution form); every model golden runs
//! through it. Benched by `benches/gemm.rs`, interleaved with the `gemm` crate
//! (`gemm::set_own_enabled`).

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::avx512::{lane_mask, transpose16};
use super::matrix::{run_tasks, AView, Mat, Operands, Threads};

/// Rows of the register tile.
pub const MR: usize = 12;
/// Columns of the register tile (two zmm vectors).
pub const NR: usize = 32;
/// Depth of one packed slice.
pub const KC: usize = 512;
/// Rows of C packed and run at a time within a task (16 A strips).
pub const MC: usize = 16 * MR;
/// Columns of C per task (16 B strips: a packed B panel of up to `KC·NC` floats, 1 MiB).
pub const NC: usize = 16 * NR;

/// One cache line of floats: the unit the packing buffers are allocated in, so that every strip
/// starts 64-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A thread's packing buffers, grown to the largest task it has run and then kept.
#[derive(Default)]
struct Packs {
    a: Vec<Line>,
    b: Vec<Line>,
}

impl Packs {
    fn ensure(&mut self, a_floats: usize, b_floats: usize) {
        for (buf, n) in [(&mut self.a, a_floats), (&mut self.b, b_floats)] {
            let lines = n.div_ceil(16);
            if buf.len() < lines {
                buf.resize(lines, Line([0.0; 16]));
            }
        }
    }
}

thread_local! {
    static PACKS: RefCell<Packs> = RefCell::new(Packs::default());
}

/// Bytes of packing buffer this thread holds (for tests and the allocation bench).
pub fn thread_buffer_bytes() -> usize {
    PACKS.with(|p| {
        let p = p.borrow();
        (p.a.len() + p.b.len()) * std::mem::size_of::<Line>()
    })
}

/// The product on matrices already bounds-checked by `gemm::sgemm` (m, n, k ≥ 1).
///
/// # Safety
/// AVX-512F must be available. Every element (i, p) of A (`av`) for i < m, p < k lies in `a`, every
/// (p, j) of `bm` in `b` and every (i, j) of `cm` in `c`, and C's elements are distinct (no
/// stride 0 along a dimension longer than 1).
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
    let parallel = threads == Threads::Pool
        && rayon::current_num_threads() > 1
        && o.m.saturating_mul(o.n).saturating_mul(k) >= 1 << 15;
    let shape = if parallel {
        task_shape(o.m, o.n, rayon::current_num_threads())
    } else {
        (o.m, NC)
    };
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

/// Rows and columns of C per task for `threads` workers: blocks of `NC` columns, cut by rows
/// (in whole strips) and then narrowed until there are at least four tasks per worker, or the
/// blocks are one strip each way.
fn task_shape(m: usize, n: usize, threads: usize) -> (usize, usize) {
    let want = 4 * threads;
    let mut nc = NC.min(n.next_multiple_of(NR));
    loop {
        let tn = n.div_ceil(nc);
        let chunks = want.div_ceil(tn).min(m.div_ceil(MR));
        let rows = m.div_ceil(chunks).next_multiple_of(MR);
        if m.div_ceil(rows) * tn >= want || nc == NR {
            return (rows, nc);
        }
        nc = (nc / 2).next_multiple_of(NR);
    }
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
    /// C's rows i0..i0+rows, columns j0..j0+cols, over the whole depth: per `KC` slice, B's
    /// panel is packed once, then each `MC` block of rows packs its A strips and runs its tiles,
    /// one A strip (in L1) against every B strip (from L2).
    ///
    /// # Safety
    /// As `sgemm`, for this block; no other thread writes it meanwhile.
    #[target_feature(enable = "avx512f")]
    unsafe fn block(&self, i0: usize, rows: usize, j0: usize, cols: usize) {
        let b_strips = cols.div_ceil(NR);
        // Depth slices of equal length: a short last slice would reload C for little work.
        let slice = self.k.div_ceil(self.k.div_ceil(KC));
        PACKS.with(|packs| {
            // A product never runs inside another on one thread, so the buffers are free; were
            // they not, a fresh pair keeps the product correct.
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
            packs.ensure(MC * slice, b_strips * NR * slice);
            let pa = packs.a.as_mut_ptr() as *mut f32;
            let pb = packs.b.as_mut_ptr() as *mut f32;
            let mut p0 = 0;
            while p0 < self.k {
                let kc = slice.min(self.k - p0);
                let load = self.accumulate || p0 > 0;
                for s in 0..b_strips {
                    let c0 = j0 + s * NR;
                    let n = NR.min(j0 + cols - c0);
                    // SAFETY: the buffer holds b_strips·NR·slice floats; B's elements were checked.
                    unsafe { pack_b(self.b, self.bm, p0, kc, c0, n, pb.add(s * NR * kc)) };
                }
                for ic in (i0..i0 + rows).step_by(MC) {
                    let mc = MC.min(i0 + rows - ic);
                    let a_strips = mc.div_ceil(MR);
                    for s in 0..a_strips {
                        let r0 = ic + s * MR;
                        let n = MR.min(ic + mc - r0);
                        // SAFETY: the buffer holds MC·slice floats; A's elements were checked.
                        unsafe { pack_a(self.a, self.av, r0, n, p0, kc, pa.add(s * MR * kc)) };
                    }
                    for sa in 0..a_strips {
                        let r0 = ic + sa * MR;
                        for sb in 0..b_strips {
                            let c0 = j0 + sb * NR;
                            let out = Out {
                                c: self.c,
                                cm: self.cm,
                                i0: r0,
                                j0: c0,
                                cols: NR.min(j0 + cols - c0),
                                load,
                                scale: self.scale,
                            };
                            // SAFETY: both strips were packed above with kc steps; `out` lies
                            // inside C, in this task's block.
                            unsafe {
                                tile(
                                    MR.min(ic + mc - r0),
                                    kc,
                                    pa.add(sa * MR * kc),
                                    pb.add(sb * NR * kc),
                                    &out,
                                )
                            };
                        }
                    }
                }
                p0 += kc;
            }
        });
    }
}

/// Packs A's rows r0..r0+rows, depths p0..p0+kc as `[p][r]` with MR values per step (rows past
/// `rows` are left as they were: the tile of `rows` rows never reads them).
///
/// # Safety
/// AVX-512F must be available; the elements lie in A; `dst` holds MR·kc floats.
#[target_feature(enable = "avx512f")]
unsafe fn pack_a(
    a: *const f32,
    av: AView,
    r0: usize,
    rows: usize,
    p0: usize,
    kc: usize,
    dst: *mut f32,
) {
    let am = match av {
        AView::Strided(am) => am,
        AView::Taps(t) => {
            // Depth p is (channel, ki, kj) in that order; the strip's rows are consecutive
            // positions, so each step is one contiguous run of `rows` values.
            let mask = lane_mask(rows);
            let kk = t.k * t.k;
            let (mut ch, mut tap) = (p0 / kk, p0 % kk);
            let (mut ki, mut kj) = (tap / t.k, tap % t.k);
            for p in 0..kc {
                // SAFETY: (r0.., p0 + p) lies in A (checked by `gemm::sgemm_taps`).
                unsafe {
                    let src = a.add(t.base + r0 + ch * t.plane + ki * t.row + kj);
                    _mm512_mask_storeu_ps(dst.add(p * MR), mask, _mm512_maskz_loadu_ps(mask, src));
                }
                tap += 1;
                kj += 1;
                if kj == t.k {
                    kj = 0;
                    ki += 1;
                }
                if tap == kk {
                    (tap, ki, kj) = (0, 0, 0);
                    ch += 1;
                }
            }
            return;
        }
    };
    unsafe {
        if am.rs == 1 && rows == MR {
            for p in 0..kc {
                let src = a.add(am.offset + r0 + (p0 + p) * am.cs);
                std::ptr::copy_nonoverlapping(src, dst.add(p * MR), MR);
            }
        } else if am.cs == 1 {
            // Rows run along the depth: 16 depths of the strip's rows are loaded as rows and
            // transposed in registers.
            let keep = lane_mask(MR);
            for q in (0..kc).step_by(16) {
                let depth = (kc - q).min(16);
                let mask = lane_mask(depth);
                let mut m = [_mm512_setzero_ps(); 16];
                for (r, row) in m.iter_mut().enumerate().take(rows) {
                    *row =
                        _mm512_maskz_loadu_ps(mask, a.add(am.offset + (r0 + r) * am.rs + p0 + q));
                }
                let t = transpose16(&m);
                for (p, v) in t.iter().enumerate().take(depth) {
                    _mm512_mask_storeu_ps(dst.add((q + p) * MR), keep, *v);
                }
            }
        } else {
            for r in 0..rows {
                let src = a.add(am.offset + (r0 + r) * am.rs + p0 * am.cs);
                for p in 0..kc {
                    *dst.add(p * MR + r) = *src.add(p * am.cs);
                }
            }
        }
    }
}

/// Packs B's depths p0..p0+kc, columns c0..c0+cols as `[p][c]` with NR values per step, columns
/// past `cols` zeroed.
///
/// # Safety
/// AVX-512F must be available; the elements lie in B; `dst` holds NR·kc floats, 64-byte aligned.
#[target_feature(enable = "avx512f")]
unsafe fn pack_b(
    b: *const f32,
    bm: Mat,
    p0: usize,
    kc: usize,
    c0: usize,
    cols: usize,
    dst: *mut f32,
) {
    unsafe {
        if bm.cs == 1 {
            for p in 0..kc {
                let src = b.add(bm.offset + (p0 + p) * bm.rs + c0);
                let d = dst.add(p * NR);
                std::ptr::copy_nonoverlapping(src, d, cols);
                std::ptr::write_bytes(d.add(cols), 0, NR - cols);
            }
        } else if bm.rs == 1 {
            // Each column runs along the depth: 16 columns × 16 depths at a time are loaded as
            // rows and transposed in registers.
            for half in 0..2 {
                let first = 16 * half;
                let n = cols.saturating_sub(first).min(16);
                for q in (0..kc).step_by(16) {
                    let depth = (kc - q).min(16);
                    let mask = lane_mask(depth);
                    let mut rows = [_mm512_setzero_ps(); 16];
                    for (c, row) in rows.iter_mut().enumerate().take(n) {
                        let src = b.add(bm.offset + p0 + q + (c0 + first + c) * bm.cs);
                        *row = _mm512_maskz_loadu_ps(mask, src);
                    }
                    let t = transpose16(&rows);
                    for (p, v) in t.iter().enumerate().take(depth) {
                        _mm512_store_ps(dst.add((q + p) * NR + first), *v);
                    }
                }
            }
        } else {
            if cols < NR {
                std::ptr::write_bytes(dst, 0, NR * kc);
            }
            for c in 0..cols {
                let src = b.add(bm.offset + p0 * bm.rs + (c0 + c) * bm.cs);
                for p in 0..kc {
                    *dst.add(p * NR + c) = *src.add(p * bm.rs);
                }
            }
        }
    }
}

/// Where a tile's results go: C's rows i0.., columns j0..j0+cols.
struct Out {
    c: *mut f32,
    cm: Mat,
    i0: usize,
    j0: usize,
    cols: usize,
    /// Whether the tile adds to what C holds (false: overwrites it, never reading it).
    load: bool,
    scale: f32,
}

/// Runs the tile of `rows` (1..=MR) rows.
///
/// # Safety
/// As `tile_of`.
#[target_feature(enable = "avx512f")]
unsafe fn tile(rows: usize, kc: usize, pa: *const f32, pb: *const f32, out: &Out) {
    macro_rules! dispatch {
        ($($r:literal)*) => {
            match rows {
                // SAFETY: as this function's contract.
                $($r => unsafe { tile_of::<$r>(kc, pa, pb, out) },)*
                _ => unreachable!("tile rows 1..=MR"),
            }
        };
    }
    dispatch!(1 2 3 4 5 6 7 8 9 10 11 12)
}

/// The register tile: `R` rows × 32 columns over `kc` depth steps.
///
/// # Safety
/// AVX-512F must be available; `pa` holds kc·MR packed floats and `pb` kc·NR, 64-byte aligned;
/// `out` names R rows and `out.cols` columns inside C.
#[target_feature(enable = "avx512f")]
unsafe fn tile_of<const R: usize>(kc: usize, pa: *const f32, pb: *const f32, out: &Out) {
    let cm = out.cm;
    if cm.cs == 1 {
        // The tile's rows of C are fetched while it computes: they are stored (and read, when
        // added to) only at its end, and a C beyond the caches would stall every store there.
        for r in 0..R {
            let row = out
                .c
                .wrapping_add(cm.offset + (out.i0 + r) * cm.rs + out.j0)
                as *const i8;
            _mm_prefetch::<_MM_HINT_T0>(row);
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(64));
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(124));
        }
    }
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for p in 0..kc {
        // SAFETY: p < kc, inside A's strip and B's packed strip; pb is aligned (strips are NR
        // floats wide).
        unsafe {
            let b0 = _mm512_load_ps(pb.add(p * NR));
            let b1 = _mm512_load_ps(pb.add(p * NR + 16));
            let ap = pa.add(p * MR);
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(r));
                row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                row[1] = _mm512_fmadd_ps(av, b1, row[1]);
            }
        }
    }
    let s = _mm512_set1_ps(out.scale);
    if cm.cs == 1 {
        let masks = [lane_mask(out.cols), lane_mask(out.cols.saturating_sub(16))];
        for (r, row) in acc.iter().enumerate() {
            // SAFETY: row i0+r, columns j0.. j0+cols of C (masked lanes are neither read nor
            // written).
            unsafe {
                let dst = out.c.add(cm.offset + (out.i0 + r) * cm.rs + out.j0);
                for (v, &mask) in masks.iter().enumerate() {
                    if mask == 0 {
                        continue;
                    }
                    let d = dst.add(16 * v);
                    let mut y = _mm512_mul_ps(row[v], s);
                    if out.load {
                        y = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, d), y);
                    }
                    _mm512_mask_storeu_ps(d, mask, y);
                }
            }
        }
    } else {
        for (r, row) in acc.iter().enumerate() {
            let mut vals = [0f32; NR];
            // SAFETY: vals holds 32 floats.
            unsafe {
                _mm512_storeu_ps(vals.as_mut_ptr(), _mm512_mul_ps(row[0], s));
                _mm512_storeu_ps(vals.as_mut_ptr().add(16), _mm512_mul_ps(row[1], s));
            }
            for (j, &v) in vals.iter().enumerate().take(out.cols) {
                // SAFETY: element (i0+r, j0+j) of C.
                unsafe {
                    let d = out
                        .c
                        .add(cm.offset + (out.i0 + r) * cm.rs + (out.j0 + j) * cm.cs);
                    *d = if out.load { *d + v } else { v };
                }
            }
        }
    }
}
