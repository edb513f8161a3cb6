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
