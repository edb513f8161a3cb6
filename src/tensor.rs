//! A dense, row-major f32 tensor: the currency of the CPU backend and of the public API
//! (NCHW for images, like diffusers).
//!
//! Sizes come from files, configs and flags, so every element count is computed with checked
//! arithmetic, and the `try_*` constructors allocate fallibly: a shape that overflows, or an
//! allocation the machine cannot satisfy, is an `Error`, never a panic or an abort. Large
//! allocations are compared with the memory still available first (`available_memory`).

use crate::error::{Error, Result};

/// Allocations of at least this many bytes are checked against `available_memory` first (a
/// reservation the kernel overcommits would otherwise end in the OOM killer, not an error).
const CHECKED_ALLOCATION_BYTES: u64 = 256 << 20;

/// The element count of `shape`, or None when it overflows `usize` or its bytes as f32 would
/// not fit in an allocation (`isize::MAX`).
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    let n = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
    (n.checked_mul(4)? <= isize::MAX as usize).then_some(n)
}

/// The element count of `shape`, or an error naming `what` and the shape.
pub fn numel_of(shape: &[usize], what: &str) -> Result<usize> {
    checked_numel(shape).ok_or_else(|| Error::TooLarge {
        what: what.to_string(),
        detail: format!("shape {shape:?} has more elements than this machine can address"),
    })
}

/// Bytes this process can still allocate, as far as the system says: Linux's `MemAvailable`,
/// capped by a cgroup v2 `memory.max` when one is set, and by `FREELUNCH_HOST_MEMORY_MB` when
/// that is set (to plan for less than the machine has). None where nothing says (then no plan
/// refuses anything and only the allocator can fail).
pub fn available_memory() -> Option<u64> {
    let mut avail: Option<u64> = None;
    let mut cap = |v: u64| avail = Some(avail.map_or(v, |a| a.min(v)));
    if let Ok(text) = std::fs::read_to_string("/proc/meminfo") {
        if let Some(kb) = text.lines().find_map(|l| {
            l.strip_prefix("MemAvailable:").and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        }) {
            cap(kb.saturating_mul(1024));
        }
    }
    let read = |p: &str| std::fs::read_to_string(p).ok();
    if let (Some(max), Some(cur)) = (
        read("/sys/fs/cgroup/memory.max"),
        read("/sys/fs/cgroup/memory.current"),
    ) {
        if let (Ok(max), Ok(cur)) = (max.trim().parse::<u64>(), cur.trim().parse::<u64>()) {
            cap(max.saturating_sub(cur));
        }
    }
    if let Some(mb) = std::env::var("FREELUNCH_HOST_MEMORY_MB")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        cap(mb.saturating_mul(1 << 20));
    }
    avail
}

/// Refuses, with "needs ~X GiB, Y GiB available", when `bytes` exceed `available` (skipped
/// when the available memory is unknown).
pub fn ensure_fits_in(what: &str, bytes: u64, available: Option<u64>) -> Result<()> {
    match available {
        Some(avail) if bytes > avail => Err(Error::OutOfMemory {
            what: what.to_string(),
            needed: bytes,
            available: avail,
        }),
        _ => Ok(()),
    }
}

/// `ensure_fits_in` against this machine's `available_memory`.
pub fn ensure_fits(what: &str, bytes: u64) -> Result<()> {
    ensure_fits_in(what, bytes, available_memory())
}

fn alloc_error(what: &str, n: usize) -> Error {
    Error::OutOfMemory {
        what: what.to_string(),
        needed: (n as u64).saturating_mul(4),
        available: available_memory().unwrap_or(0),
    }
}

/// Checks an allocation of `n` f32 before it is made: its bytes must be addressable and, when
/// large, fit in the memory available.
fn plan_alloc(n: usize, what: &str) -> Result<()> {
    let bytes = n.checked_mul(4).filter(|&b| b <= isize::MAX as usize);
    let Some(bytes) = bytes else {
        return Err(Error::TooLarge {
            what: what.to_string(),
            detail: format!("{n} f32 values do not fit in memory"),
        });
    };
    if bytes as u64 >= CHECKED_ALLOCATION_BYTES {
        ensure_fits(what, bytes as u64)?;
    }
    Ok(())
}

/// An empty vector with room for `n` f32, or an error (never an abort) when it cannot be had.
pub fn try_vec_with_capacity(n: usize, what: &str) -> Result<Vec<f32>> {
    plan_alloc(n, what)?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| alloc_error(what, n))?;
    Ok(v)
}

/// `n` zeros, or an error (never an abort) when they cannot be allocated. Zeroed pages come
/// from the allocator (calloc), so a large buffer costs no pass over memory until it is used.
pub fn try_zeroed_vec(n: usize, what: &str) -> Result<Vec<f32>> {
    plan_alloc(n, what)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<f32>(n).map_err(|_| alloc_error(what, n))?;
    // SAFETY: `layout` has a non-zero size (n > 0). A non-null result is a zeroed block of
    // `n` f32 allocated by the global allocator with exactly the layout `Vec<f32>` uses for
    // capacity `n`, so the vector may own and free it; all-zero bits are 0.0f32.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout) as *mut f32;
        if ptr.is_null() {
            return Err(alloc_error(what, n));
        }
        Ok(Vec::from_raw_parts(ptr, n, n))
    }
}

/// A copy of `src`, allocated fallibly.
pub fn try_copy(src: &[f32], what: &str) -> Result<Vec<f32>> {
    let mut v = try_vec_with_capacity(src.len(), what)?;
    v.extend_from_slice(src);
    Ok(v)
}

/// `pattern` repeated `times` times, allocated fallibly.
pub fn try_repeat(pattern: &[f32], times: usize, what: &str) -> Result<Vec<f32>> {
    let n = pattern
        .len()
        .checked_mul(times)
        .ok_or_else(|| Error::TooLarge {
            what: what.to_string(),
            detail: format!("{times} × {} values", pattern.len()),
        })?;
    let mut v = try_vec_with_capacity(n, what)?;
    if pattern.is_empty() {
        return Ok(v);
    }
    for _ in 0..times {
        v.extend_from_slice(pattern);
    }
    Ok(v)
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// A tensor over `data`; fails when the element count does not match the shape.
    pub fn new(shape: impl Into<Vec<usize>>, data: Vec<f32>) -> Result<Self> {
        let shape = shape.into();
        let numel = numel_of(&shape, "tensor")?;
        if numel != data.len() {
            return Err(Error::Msg(format!(
                "tensor of shape {shape:?} needs {numel} elements, got {}",
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }

    /// Internal constructor for shapes the caller has already checked.
    pub(crate) fn from_parts(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data }
    }

    /// Zeros of `shape`. Panics where `try_zeros` errs: for shapes from untrusted input use that.
    pub fn zeros(shape: impl Into<Vec<usize>>) -> Self {
        Self::try_zeros(shape).unwrap_or_else(|e| panic!("Tensor::zeros: {e}"))
    }

    /// Zeros of `shape`; an error when the shape overflows or the memory cannot be had.
    pub fn try_zeros(shape: impl Into<Vec<usize>>) -> Result<Self> {
        let shape = shape.into();
        let n = numel_of(&shape, "tensor")?;
        let data = try_zeroed_vec(n, &format!("a tensor of shape {shape:?}"))?;
        Ok(Tensor { shape, data })
    }

    /// Standard-normal entries from a fixed seed (tests, benches, random-weight models).
    /// Panics where `try_randn` errs: for shapes from untrusted input use that.
    pub fn randn(shape: impl Into<Vec<usize>>, seed: u64) -> Self {
        Self::try_randn(shape, seed).unwrap_or_else(|e| panic!("Tensor::randn: {e}"))
    }

    /// As `randn`; an error when the shape overflows or the memory cannot be had.
    pub fn try_randn(shape: impl Into<Vec<usize>>, seed: u64) -> Result<Self> {
        let shape = shape.into();
        let n = numel_of(&shape, "tensor")?;
        let mut data = try_vec_with_capacity(n, &format!("a tensor of shape {shape:?}"))?;
        let mut rng = crate::rng::Rng::new(seed);
        data.extend((0..n).map(|_| rng.normal()));
        Ok(Tensor { shape, data })
    }

    /// A copy, allocated fallibly (`clone` aborts when memory runs out).
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Tensor {
            shape: self.shape.clone(),
            data: try_copy(&self.data, &format!("a tensor of shape {:?}", self.shape))?,
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Same data, new shape with the same element count.
    pub fn reshape(self, shape: impl Into<Vec<usize>>) -> Result<Self> {
        Tensor::new(shape, self.data)
    }

    /// (B, C, H, W) of a rank-4 tensor, or an error naming `what`.
    pub fn dims4(&self, what: &str) -> Result<(usize, usize, usize, usize)> {
        match self.shape[..] {
            [b, c, h, w] => Ok((b, c, h, w)),
            _ => Err(Error::input(
                what,
                format!(
                    "expected a rank-4 [B,C,H,W] tensor, got shape {:?}",
                    self.shape
                ),
            )),
        }
    }

    /// Relative L2 distance ‖self − other‖ / ‖other‖ (NaN anywhere gives NaN).
    pub fn rel_l2(&self, reference: &Tensor) -> f64 {
        assert_eq!(self.shape, reference.shape, "rel_l2 on different shapes");
        let (mut num, mut den) = (0f64, 0f64);
        for (&a, &b) in self.data.iter().zip(&reference.data) {
            let d = a as f64 - b as f64;
            num += d * d;
            den += (b as f64) * (b as f64);
        }
        (num / den).sqrt()
    }
}
