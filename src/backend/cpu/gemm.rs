//! Strided single-precision matrix product: the crate's own AVX-512 kernel
//! (`cpu::gemm_avx512`, which allocates nothing per call) where the CPU has AVX-512F, the `gemm`
//! crate's packed SIMD kernels elsewhere (and when [`set_own_enabled`] or
//! `FREELUNCH_CPU_GEMM=crate` turns the own kernel off).

/// A matrix inside a slice: element (i, j) is at `offset + i*rs + j*cs`.
#[derive(Clone, Copy, Debug)]
pub struct Mat {
    /// Index of element (0, 0).
    pub offset: usize,
    /// Row stride, in elements.
    pub rs: usize,
    /// Column stride, in elements.
    pub cs: usize,
}

impl Mat {
    /// A row-major matrix at `offset` with rows of `cols` elements.
    pub fn row_major(offset: usize, cols: usize) -> Self {
        Mat {
            offset,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major `rows × cols` matrix at `offset`, seen as `cols × rows`.
    pub fn transposed(offset: usize, cols: usize) -> Self {
        Mat {
            offset,
            rs: 1,
            cs: cols,
        }
    }

    /// Whether the `rows × cols` elements are at distinct indices because one dimension's stride
    /// steps over the whole extent of the other (every layout the crate builds; parallel tasks
    /// may then write blocks of it at once).
    fn distinct(&self, rows: usize, cols: usize) -> bool {
        let spans = |outer: usize, outer_n: usize, inner: usize, inner_n: usize| {
            (inner_n <= 1 || inner > 0)
                && (outer_n <= 1 || inner.checked_mul(inner_n).is_some_and(|e| outer >= e))
        };
        spans(self.rs, rows, self.cs, cols) || spans(self.cs, cols, self.rs, rows)
    }

    fn check(&self, rows: usize, cols: usize, len: usize, what: &str) {
        if rows == 0 || cols == 0 {
            return;
        }
        // Checked: a wrapped index would pass the bound and let the product read anywhere.
        let last = (rows - 1)
            .checked_mul(self.rs)
            .and_then(|r| {
                (cols - 1)
                    .checked_mul(self.cs)
                    .and_then(|c| r.checked_add(c))
            })
            .and_then(|v| v.checked_add(self.offset));
        match last {
            Some(last) => assert!(last < len, "gemm: {what} out of bounds ({last} >= {len})"),
            None => panic!("gemm: {what} index overflows"),
        }
    }
}

/// The implicit matrix of a stride-1 k×k convolution over a zero-padded channel-major image
/// (`cpu::conv`'s "tall image"): row i is an output position, depth p = (c·k + ki)·k + kj one tap
/// of one input channel, and element (i, p) is at `base + i + c·plane + ki·row + kj`.
#[derive(Clone, Copy, Debug)]
pub struct Taps {
    /// Index of element (0, 0).
    pub base: usize,
    /// Distance between input channels.
    pub plane: usize,
    /// Distance between image rows.
    pub row: usize,
    /// Kernel size.
    pub k: usize,
}

/// `c = (accumulate ? c : 0) + scale · a · b` with `a` the `m × channels·k²` implicit matrix of
/// `taps`, `b` `channels·k² × n` and `c` `m × n` with column stride 1: a whole convolution in one
/// product, each A element read from the image in place. Only the own AVX-512 kernel has this
/// form; returns false (computing nothing) where it does not run, and the caller takes its
/// per-tap products instead.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_taps(
    m: usize,
    n: usize,
    channels: usize,
    a: &[f32],
    taps: Taps,
    b: &[f32],
    bm: Mat,
    c: &mut [f32],
    cm: Mat,
    accumulate: bool,
    scale: f32,
    threads: Threads,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if !own_enabled() || cm.cs != 1 || taps.k == 0 {
            return false;
        }
        let Some(k) = taps.k.checked_mul(taps.k).and_then(|kk| kk.checked_mul(channels)) else {
            panic!("gemm: tap depth overflows");
        };
        bm.check(k, n, b.len(), "rhs");
        cm.check(m, n, c.len(), "dst");
        if m == 0 || n == 0 || k == 0 {
            return false;
        }
        let last = (m - 1)
            .checked_add((channels - 1).checked_mul(taps.plane).expect("gemm: taps overflow"))
            .and_then(|v| v.checked_add((taps.k - 1).checked_mul(taps.row)?))
            .and_then(|v| v.checked_add(taps.k - 1 + taps.base));
        assert!(last.is_some_and(|l| l < a.len()), "gemm: taps out of bounds");
        if !cm.distinct(m, n) {
            return false;
        }
        // SAFETY: AVX-512F was detected; every element was bounds-checked above, and C's are
        // distinct.
        unsafe {
            super::gemm_avx512::sgemm(
                m,
                n,
                k,
                a,
                super::gemm_avx512::AView::Taps(taps),
                b,
                bm,
                c,
                cm,
                accumulate,
                scale,
                threads,
            )
        };
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (m, n, channels, a, taps, b, bm, c, cm, accumulate, scale, threads);
        false
    }
}

/// Whether a product should use the thread pool itself: not when the caller already runs
/// products in parallel, nor for products too small to split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// Run on the calling thread.
    Single,
    /// Split over rayon's current pool when the product is large enough (m·n·k ≥ 2^15).
    Pool,
}

/// `c = (accumulate ? c : 0) + scale * a · b`, with `a` m×k, `b` k×n, `c` m×n.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    am: Mat,
    b: &[f32],
    bm: Mat,
    c: &mut [f32],
    cm: Mat,
    accumulate: bool,
    scale: f32,
    threads: Threads,
) {
    am.check(m, k, a.len(), "lhs");
    bm.check(k, n, b.len(), "rhs");
    cm.check(m, n, c.len(), "dst");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c[cm.offset + i * cm.rs + j * cm.cs] = 0.0;
                }
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if own_enabled() {
        // SAFETY: AVX-512F was detected; every index was bounds-checked above, and `c` is
        // borrowed mutably, so it cannot alias `a` or `b`. C's elements are distinct (`distinct`), so the
        // kernel's tasks write disjoint blocks.
        if cm.distinct(m, n) {
            unsafe {
                super::gemm_avx512::sgemm(
                    m,
                    n,
                    k,
                    a,
                    super::gemm_avx512::AView::Strided(am),
                    b,
                    bm,
                    c,
                    cm,
                    accumulate,
                    scale,
                    threads,
                )
            };
            return;
        }
    }
    let nthreads = rayon::current_num_threads();
    let parallelism = if threads == Threads::Pool && nthreads > 1 && m * n * k >= 1 << 15 {
        gemm::Parallelism::Rayon(nthreads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index the product touches was bounds-checked above; `c` is borrowed mutably,
    // so it cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr().add(cm.offset),
            cm.cs as isize,
            cm.rs as isize,
            accumulate,
            a.as_ptr().add(am.offset),
            am.cs as isize,
            am.rs as isize,
            b.as_ptr().add(bm.offset),
            bm.cs as isize,
            bm.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// 0: not decided yet; 1: off; 2: on.
static OWN: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether products run on the own AVX-512 kernel: AVX-512F detected, and neither turned off with
/// `FREELUNCH_CPU_GEMM=crate` nor by [`set_own_enabled`].
pub fn own_enabled() -> bool {
    use std::sync::atomic::Ordering;
    match OWN.load(Ordering::Relaxed) {
        0 => {
            let off = std::env::var("FREELUNCH_CPU_GEMM").is_ok_and(|v| v == "crate");
            let on = !off && own_detected();
            OWN.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
        s => s == 2,
    }
}

/// Turns the own kernel on (where the CPU has AVX-512F) or off (the `gemm` crate everywhere) for
/// the whole process, for benches and tests that set the two side by side; returns whether it is
/// on now.
pub fn set_own_enabled(on: bool) -> bool {
    let on = on && own_detected();
    OWN.store(if on { 2 } else { 1 }, std::sync::atomic::Ordering::Relaxed);
    on
}

#[cfg(target_arch = "x86_64")]
fn own_detected() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn own_detected() -> bool {
    false
}
