//! The operands of the CPU's matrix products: where a matrix's elements lie in a slice (`Mat`,
//! or a convolution's implicit matrix, `Taps`) and whether a product may use the thread pool.
//! Shared by `gemm` (the dispatch and the `gemm` crate) and `gemm_avx512` (the own kernel).

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
    pub(crate) fn distinct(&self, rows: usize, cols: usize) -> bool {
        let spans = |outer: usize, outer_n: usize, inner: usize, inner_n: usize| {
            (inner_n <= 1 || inner > 0)
                && (outer_n <= 1 || inner.checked_mul(inner_n).is_some_and(|e| outer >= e))
        };
        spans(self.rs, rows, self.cs, cols) || spans(self.cs, cols, self.rs, rows)
    }

    /// The same elements seen transposed.
    pub(crate) fn t(self) -> Mat {
        Mat {
            offset: self.offset,
            rs: self.cs,
            cs: self.rs,
        }
    }

    pub(crate) fn check(&self, rows: usize, cols: usize, len: usize, what: &str) {
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

/// Where A's elements are, for the own kernels: a strided matrix, or the implicit matrix of a
/// convolution's taps.
#[derive(Clone, Copy, Debug)]
pub(crate) enum AView {
    Strided(Mat),
    Taps(Taps),
}

/// One product's operands as the own kernels take them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Operands<'a> {
    pub m: usize,
    pub n: usize,
    pub a: &'a [f32],
    pub av: AView,
    pub b: &'a [f32],
    pub bm: Mat,
    pub cm: Mat,
}

impl Operands<'_> {
    /// The same product with C's stores along its contiguous dimension: a column-major C (with
    /// a strided A) is the row-major C of bᵀ·aᵀ.
    pub(crate) fn stores_along_rows(self) -> Self {
        match self.av {
            AView::Strided(am) if self.cm.cs != 1 && self.cm.rs == 1 => Operands {
                m: self.n,
                n: self.m,
                a: self.b,
                av: AView::Strided(self.bm.t()),
                b: self.a,
                bm: am.t(),
                cm: self.cm.t(),
            },
            _ => self,
        }
    }
}

/// Runs `block(i0, rows, j0, cols)` over C (`m × n`) cut into blocks of `rows_per_task` rows
/// and `nc` columns, on rayon's pool when `parallel`. Tasks of one column block are neighbours
/// (on the pool they read B from L3 together; on one thread one packed B panel serves them).
pub(crate) fn run_tasks(
    (m, n): (usize, usize),
    (rows_per_task, nc): (usize, usize),
    parallel: bool,
    block: impl Fn(usize, usize, usize, usize) + Sync,
) {
    use rayon::prelude::*;
    let (tm, tn) = (m.div_ceil(rows_per_task), n.div_ceil(nc));
    let run = |t: usize| {
        let (j0, i0) = ((t / tm) * nc, (t % tm) * rows_per_task);
        block(i0, rows_per_task.min(m - i0), j0, nc.min(n - j0));
    };
    if parallel {
        (0..tm * tn).into_par_iter().for_each(run);
    } else {
        (0..tm * tn).for_each(run);
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

/// The arithmetic of a product.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 operands, f32 accumulation.
    #[default]
    F32,
    /// Operands rounded to bf16 (nearest even) as they are packed, f32 accumulation, on AMX tiles
    /// (`cpu::gemm_bf16`); where the CPU has no AMX-BF16 the product runs in f32 (the CPU
    /// device refuses `--dtype bf16` there, see `gemm::bf16_available`).
    Bf16,
}
