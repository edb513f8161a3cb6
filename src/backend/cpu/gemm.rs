//! Strided single-precision matrix product on top of the `gemm` crate.

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
