//! A dense, row-major f32 tensor: the currency of the CPU backend and of the public API
//! (NCHW for images, like diffusers).
//!
//! Sizes come from files, configs and flags, so every element count is computed with checked
//! arithmetic, and the `try_*` constructors allocate fallibly: a shape that overflows, or an
//! allocation the machine cannot satisfy, is an `Error`, never a panic or an abort. Large
//! allocations are compared with the memory still available first (`available_memory`).

use std::cell::RefCell;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};
use crate::shape::Shape;

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
    // Read into a buffer on the stack: every forward asks, and should allocate nothing.
    let mut buf = [0u8; 4096];
    if let Some(kb) = read_small("/proc/meminfo", &mut buf).and_then(|text| {
        text.lines().find_map(|l| {
            l.strip_prefix("MemAvailable:").and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        })
    }) {
        cap(kb.saturating_mul(1024));
    }
    let number = |p: &str, buf: &mut [u8; 4096]| {
        read_small(p, buf).and_then(|t| t.trim().parse::<u64>().ok())
    };
    if let Some(max) = number("/sys/fs/cgroup/memory.max", &mut buf) {
        if let Some(cur) = number("/sys/fs/cgroup/memory.current", &mut buf) {
            cap(max.saturating_sub(cur));
        }
    }
    if let Some(mb) = std::env::var_os("FREELUNCH_HOST_MEMORY_MB")
        .and_then(|v| v.to_str().and_then(|v| v.trim().parse::<u64>().ok()))
    {
        cap(mb.saturating_mul(1 << 20));
    }
    avail
}

/// The text of a small system file (its first 4 KiB), read into `buf` without allocating.
fn read_small<'a>(path: &str, buf: &'a mut [u8; 4096]) -> Option<&'a str> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    // A file cut at the buffer's end may split a character: keep the whole ones.
    match std::str::from_utf8(&buf[..n]) {
        Ok(text) => Some(text),
        Err(e) => std::str::from_utf8(&buf[..e.valid_up_to()]).ok(),
    }
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

/// Asks Linux to back a large buffer with transparent huge pages (where THP is in `madvise`
/// mode, as on most distributions, it otherwise gets 4 KiB pages): filling 10 GB of fresh
/// memory then costs ~5,000 page faults rather than ~2.5 million, which on a VM is seconds of
/// system time. Advisory only: a refusal changes nothing.
fn advise_huge_pages(ptr: *const f32, n: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes = n * 4;
        if bytes < 2 * HUGE {
            return;
        }
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + bytes) / HUGE * HUGE;
        if end > start {
            // SAFETY: madvise only advises the kernel about pages of this allocation, which
            // this process owns; MADV_HUGEPAGE changes no contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, n);
}

/// An empty vector with room for `n` f32, or an error (never an abort) when it cannot be had.
pub fn try_vec_with_capacity(n: usize, what: &str) -> Result<Vec<f32>> {
    if let Some(v) = crate::workspace::take(n) {
        return Ok(v);
    }
    plan_alloc(n, what)?;
    let mut v = Vec::new();
    v.try_reserve_exact(crate::workspace::capacity_for(n))
        .map_err(|_| alloc_error(what, n))?;
    advise_huge_pages(v.as_ptr(), n);
    Ok(v)
}

/// `n` zeros, or an error (never an abort) when they cannot be allocated. Zeroed pages come
/// from the allocator (calloc), so a large buffer costs no pass over memory until it is used;
/// one from a [`Workspace`](crate::workspace::Workspace) in scope is zeroed here.
pub fn try_zeroed_vec(n: usize, what: &str) -> Result<Vec<f32>> {
    if let Some(mut v) = crate::workspace::take(n) {
        v.resize(n, 0.0);
        return Ok(v);
    }
    plan_alloc(n, what)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let cap = crate::workspace::capacity_for(n);
    let layout = std::alloc::Layout::array::<f32>(cap).map_err(|_| alloc_error(what, n))?;
    // SAFETY: `layout` has a non-zero size (cap ≥ n > 0). A non-null result is a zeroed block
    // of `cap` f32 allocated by the global allocator with exactly the layout `Vec<f32>` uses
    // for capacity `cap`, so the vector may own and free it; its first `n` values are
    // initialised (all-zero bits are 0.0f32).
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout) as *mut f32;
        if ptr.is_null() {
            return Err(alloc_error(what, n));
        }
        advise_huge_pages(ptr, cap);
        Ok(Vec::from_raw_parts(ptr, n, cap))
    }
}

/// A kernel's scratch buffer (an accumulator, a padded copy, score rows): zeroed values like
/// [`try_zeroed_vec`]'s, which go back to the [`Workspace`](crate::workspace::Workspace) in scope
/// when dropped, as a tensor's do.
pub(crate) struct Scratch(Vec<f32>);

impl Scratch {
    /// `n` zeros, or an error when they cannot be allocated.
    pub(crate) fn zeroed(n: usize, what: &str) -> Result<Self> {
        try_zeroed_vec(n, what).map(Scratch)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Vec<f32>;
    fn deref(&self) -> &Vec<f32> {
        &self.0
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut Vec<f32> {
        &mut self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        crate::workspace::give(std::mem::take(&mut self.0));
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

/// A tensor's values: its own, or a checkpoint's in place in a memory-mapped file (an f32 tensor
/// stored little-endian and aligned is read where it lies; a 16-bit one is widened the first
/// time f32 values are asked for, so a device that computes in its stored type can take the
/// stored bits without an f32 copy ever existing). Mapped values are read-only: the first
/// `data_mut` copies them.
#[derive(Clone)]
enum Storage {
    /// Values in memory, shared by clones of the tensor and copied on the first write to a
    /// shared one (`data_mut`).
    Owned(Arc<Vec<f32>>),
    Mapped(Arc<Mapping>, Range<usize>),
    Half(Arc<HalfValues>),
    /// No values: what a tensor holds only while it is being dropped or taken apart.
    Taken,
}

/// Most unshared value holders (`Arc`s emptied of their values) a thread keeps for the next
/// tensors it makes.
const MAX_HOLDERS: usize = 64;

thread_local! {
    /// Emptied, unshared value holders: every op makes a tensor and drops others, so reusing
    /// their `Arc`s saves an allocation per op.
    static HOLDERS: RefCell<Vec<Arc<Vec<f32>>>> = const { RefCell::new(Vec::new()) };
}

/// `values` in a shareable holder, reusing one this thread emptied where it has one.
fn hold(values: Vec<f32>) -> Arc<Vec<f32>> {
    match HOLDERS.try_with(|h| h.borrow_mut().pop()).ok().flatten() {
        Some(mut holder) => match Arc::get_mut(&mut holder) {
            Some(slot) => {
                *slot = values;
                holder
            }
            None => Arc::new(values),
        },
        None => Arc::new(values),
    }
}

/// The values of `holder` when it is their only owner (its `Arc` kept for [`hold`]); `None`,
/// with the holder dropped, when they are shared.
fn release(mut holder: Arc<Vec<f32>>) -> Option<Vec<f32>> {
    let values = std::mem::take(Arc::get_mut(&mut holder)?);
    let _ = HOLDERS.try_with(|h| {
        let mut h = h.borrow_mut();
        if h.len() < MAX_HOLDERS {
            h.push(holder);
        }
    });
    Some(values)
}

/// 16-bit values in a mapping, and their f32 widening once made.
struct HalfValues {
    map: Arc<Mapping>,
    bytes: Range<usize>,
    dtype: HalfType,
    widened: OnceLock<Vec<f32>>,
}

/// A stored 16-bit float type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HalfType {
    /// IEEE half precision (safetensors `F16`).
    F16,
    /// bfloat16 (safetensors `BF16`).
    BF16,
}

impl HalfType {
    /// The f32 value of the stored bits `bits` (exact: both widen without rounding).
    pub fn to_f32(self, bits: u16) -> f32 {
        match self {
            HalfType::F16 => half::f16::from_bits(bits).to_f32(),
            HalfType::BF16 => half::bf16::from_bits(bits).to_f32(),
        }
    }

    /// Whether `bits` is a NaN or an infinity (all exponent bits set).
    pub fn is_non_finite(self, bits: u16) -> bool {
        let exp = match self {
            HalfType::F16 => 0x7c00,
            HalfType::BF16 => 0x7f80,
        };
        bits & exp == exp
    }
}

/// Bytes a checkpoint's tensors can borrow: a read-only memory map of a file, or (for buffers
/// built in memory) an owned byte vector.
pub enum Mapping {
    /// A read-only map of a safetensors file.
    File(memmap2::Mmap),
    /// Bytes held in memory (a buffer parsed without a file).
    Bytes(Vec<u8>),
}

impl std::ops::Deref for Mapping {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Mapping::File(m) => m,
            Mapping::Bytes(b) => b,
        }
    }
}

impl Mapping {
    /// Tells the kernel these bytes will not be read again soon, so their pages leave this
    /// process's resident set (a file's stay in the page cache; reading them again faults them
    /// back in from there, so nothing is lost). Called after a tensor was copied out.
    pub fn release(&self, bytes: Range<usize>) {
        if let Mapping::File(m) = self {
            const PAGE: usize = 4096;
            let start = bytes.start / PAGE * PAGE;
            let end = bytes.end.min(m.len());
            if end > start {
                // SAFETY: the map is read-only and never written, so dropping its pages loses
                // nothing: a later read refaults the file's bytes. The range lies in the map.
                let _ = unsafe {
                    m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
                };
            }
        }
    }
}

/// Little-endian 16-bit floats `raw` widened into `out` (as long): with the half crate's SIMD
/// conversion (F16C on x86) over chunks spread across threads when the bytes are aligned, element
/// by element otherwise.
fn widen_half(raw: &[u8], dtype: HalfType, out: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let aligned = cfg!(target_endian = "little") && raw.as_ptr().align_offset(2) == 0;
    if !aligned {
        for (o, b) in out.iter_mut().zip(raw.chunks_exact(2)) {
            *o = dtype.to_f32(u16::from_le_bytes([b[0], b[1]]));
        }
        return;
    }
    match dtype {
        HalfType::F16 => {
            let src: &[half::f16] = bytemuck::cast_slice(raw);
            out.par_chunks_mut(CHUNK)
                .zip(src.par_chunks(CHUNK))
                .for_each(|(o, s)| s.convert_to_f32_slice(o));
        }
        HalfType::BF16 => {
            let src: &[half::bf16] = bytemuck::cast_slice(raw);
            out.par_chunks_mut(CHUNK)
                .zip(src.par_chunks(CHUNK))
                .for_each(|(o, s)| s.convert_to_f32_slice(o));
        }
    }
}

impl Storage {
    fn as_slice(&self) -> &[f32] {
        match self {
            Storage::Owned(v) => v,
            Storage::Mapped(map, bytes) => bytemuck::cast_slice(&map[bytes.clone()]),
            Storage::Half(h) => h.widened.get_or_init(|| {
                let raw = &h.map[h.bytes.clone()];
                let mut v = vec![0.0; raw.len() / 2];
                widen_half(raw, h.dtype, &mut v);
                v
            }),
            Storage::Taken => &[],
        }
    }

    fn len(&self) -> usize {
        match self {
            Storage::Owned(v) => v.len(),
            Storage::Mapped(_, bytes) => bytes.len() / 4,
            Storage::Half(h) => h.bytes.len() / 2,
            Storage::Taken => 0,
        }
    }
}

/// A dense row-major f32 tensor: a shape and its values (images `[B, C, H, W]`, NCHW). Cloning
/// never copies values: clones share them until one writes (copy on write); equality compares
/// shapes and values.
///
/// ```
/// use freelunch::Tensor;
///
/// let t = Tensor::new([2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0])?;
/// assert_eq!((t.shape(), t.rank(), t.numel()), (&[2, 3][..], 2, 6));
/// assert_eq!(t.data()[4], 4.0);
/// let t = t.reshape([3, 2])?;
/// assert_eq!(t.shape(), &[3, 2]);
/// // A shape and a value count that disagree are an error, not a panic.
/// assert!(Tensor::new([2, 2], vec![0.0; 3]).is_err());
/// # Ok::<(), freelunch::Error>(())
/// ```
#[derive(Clone)]
pub struct Tensor {
    shape: Shape,
    data: Storage,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tensor")
            .field("shape", &self.shape)
            .field("data", &self.data())
            .finish()
    }
}

/// Inside a [`Workspace`](crate::workspace::Workspace)'s scope, values this tensor alone owns go
/// back to the workspace for the next buffer of their size.
impl Drop for Tensor {
    fn drop(&mut self) {
        if let Storage::Owned(holder) = std::mem::replace(&mut self.data, Storage::Taken) {
            if let Some(values) = release(holder) {
                crate::workspace::give(values);
            }
        }
    }
}

/// `e` (an allocation's error) naming the tensor of `shape` it was for: the name is formatted
/// only when something failed.
fn for_tensor(e: Error, shape: &[usize]) -> Error {
    let what = || format!("a tensor of shape {shape:?}");
    match e {
        Error::OutOfMemory {
            needed, available, ..
        } => Error::OutOfMemory {
            what: what(),
            needed,
            available,
        },
        Error::TooLarge { detail, .. } => Error::TooLarge {
            what: what(),
            detail,
        },
        e => e,
    }
}

impl PartialEq for Tensor {
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape && self.data() == other.data()
    }
}

impl Tensor {
    /// A tensor over `data`; fails when the element count does not match the shape.
    pub fn new(shape: impl Into<Shape>, data: Vec<f32>) -> Result<Self> {
        let shape = shape.into();
        let numel = numel_of(&shape, "tensor")?;
        if numel != data.len() {
            return Err(Error::shape(
                "tensor",
                format!(
                    "tensor of shape {shape:?} needs {numel} elements, got {}",
                    data.len()
                ),
            ));
        }
        Ok(Tensor {
            shape,
            data: Storage::Owned(hold(data)),
        })
    }

    /// A tensor of `shape` holding a copy of `values` (one allocation, made fallibly).
    pub fn from_slice(shape: impl Into<Shape>, values: &[f32]) -> Result<Self> {
        let shape = shape.into();
        let v = try_copy(values, "a tensor").map_err(|e| for_tensor(e, &shape))?;
        Self::new(shape, v)
    }

    /// A tensor of `shape` over `values` without a copy: an engine's buffer, shared. Reading
    /// never copies; the first write to values still shared (`data_mut`) copies them first,
    /// so the caller's buffer is never changed behind its back.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use freelunch::Tensor;
    ///
    /// let buffer = Arc::new(vec![1.0f32; 6]);
    /// let t = Tensor::from_shared([2, 3], buffer.clone())?;
    /// assert!(std::ptr::eq(t.data().as_ptr(), buffer.as_ptr()));
    /// let mut u = t.clone();
    /// u.data_mut()[0] = 5.0;
    /// assert_eq!((buffer[0], t.data()[0], u.data()[0]), (1.0, 1.0, 5.0));
    /// # Ok::<(), freelunch::Error>(())
    /// ```
    pub fn from_shared(shape: impl Into<Shape>, values: Arc<Vec<f32>>) -> Result<Self> {
        let shape = shape.into();
        let numel = numel_of(&shape, "tensor")?;
        if numel != values.len() {
            return Err(Error::shape(
                "tensor",
                format!(
                    "tensor of shape {shape:?} needs {numel} elements, got {}",
                    values.len()
                ),
            ));
        }
        Ok(Tensor {
            shape,
            data: Storage::Owned(values),
        })
    }

    /// Internal constructor for shapes the caller has already checked.
    pub(crate) fn from_parts(shape: impl Into<Shape>, data: Vec<f32>) -> Self {
        let shape = shape.into();
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor {
            shape,
            data: Storage::Owned(hold(data)),
        }
    }

    /// Zeros of `shape`. Panics where `try_zeros` errs: for shapes from untrusted input use that.
    pub fn zeros(shape: impl Into<Shape>) -> Self {
        Self::try_zeros(shape).unwrap_or_else(|e| panic!("Tensor::zeros: {e}"))
    }

    /// Zeros of `shape`; an error when the shape overflows or the memory cannot be had.
    pub fn try_zeros(shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        let n = numel_of(&shape, "tensor")?;
        let data = try_zeroed_vec(n, "a tensor").map_err(|e| for_tensor(e, &shape))?;
        Ok(Tensor {
            shape,
            data: Storage::Owned(hold(data)),
        })
    }

    /// Standard-normal entries from a fixed seed (tests, benches, random-weight models).
    /// Panics where `try_randn` errs: for shapes from untrusted input use that.
    pub fn randn(shape: impl Into<Shape>, seed: u64) -> Self {
        Self::try_randn(shape, seed).unwrap_or_else(|e| panic!("Tensor::randn: {e}"))
    }

    /// As `randn`; an error when the shape overflows or the memory cannot be had.
    pub fn try_randn(shape: impl Into<Shape>, seed: u64) -> Result<Self> {
        let shape = shape.into();
        let n = numel_of(&shape, "tensor")?;
        let mut data = try_vec_with_capacity(n, "a tensor").map_err(|e| for_tensor(e, &shape))?;
        let mut rng = crate::rng::Rng::new(seed);
        data.extend((0..n).map(|_| rng.normal()));
        Ok(Tensor {
            shape,
            data: Storage::Owned(hold(data)),
        })
    }

    /// A copy of the values, allocated now and fallibly (`clone` shares them instead, and a
    /// later write to a shared tensor copies them, aborting if memory runs out).
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Tensor {
            shape: self.shape.clone(),
            data: Storage::Owned(hold(
                try_copy(self.data(), "a tensor").map_err(|e| for_tensor(e, &self.shape))?,
            )),
        })
    }

    /// The dimensions, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values, row-major (a 16-bit mapped tensor is widened to f32 on the first call).
    pub fn data(&self) -> &[f32] {
        self.data.as_slice()
    }

    /// The values to change in place; a mapped tensor's are copied first (once).
    pub fn data_mut(&mut self) -> &mut [f32] {
        if !matches!(self.data, Storage::Owned(_)) {
            self.data = Storage::Owned(hold(self.data.as_slice().to_vec()));
        }
        match &mut self.data {
            // Clones share their values until one of them writes.
            Storage::Owned(v) => Arc::make_mut(v).as_mut_slice(),
            _ => unreachable!("made owned above"),
        }
    }

    /// The values as an owned vector (copied when they are mapped or shared).
    pub fn into_data(mut self) -> Vec<f32> {
        match std::mem::replace(&mut self.data, Storage::Taken) {
            Storage::Owned(mut holder) => {
                if Arc::get_mut(&mut holder).is_some() {
                    release(holder).unwrap_or_default()
                } else {
                    (*holder).clone()
                }
            }
            other => other.as_slice().to_vec(),
        }
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The same values under `shape` (same element count, checked by the caller), without a
    /// copy whatever their storage.
    pub(crate) fn with_shape(mut self, shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        debug_assert_eq!(shape.iter().product::<usize>(), self.numel());
        self.shape = shape;
        self
    }

    /// A tensor over f32 values stored in `map` at `bytes` (little-endian), read in place when
    /// they are aligned and copied once otherwise. The caller has checked the byte count.
    pub(crate) fn from_mapped_f32(
        shape: Shape,
        map: &Arc<Mapping>,
        bytes: Range<usize>,
    ) -> Result<Self> {
        let raw = &map[bytes.clone()];
        let in_place =
            cfg!(target_endian = "little") && bytemuck::try_cast_slice::<u8, f32>(raw).is_ok();
        let data = if in_place {
            Storage::Mapped(map.clone(), bytes)
        } else {
            let what = format!("a tensor of shape {shape:?}");
            let mut v = try_vec_with_capacity(raw.len() / 4, &what)?;
            v.extend(
                raw.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            map.release(bytes);
            Storage::Owned(hold(v))
        };
        Ok(Tensor { shape, data })
    }

    /// A tensor over 16-bit values stored in `map` at `bytes`: kept as stored (`stored_half`)
    /// and widened on the first `data`, or widened now (and the mapped pages released) unless
    /// `keep`.
    pub(crate) fn from_mapped_half(
        shape: Shape,
        map: &Arc<Mapping>,
        bytes: Range<usize>,
        dtype: HalfType,
        keep: bool,
    ) -> Result<Self> {
        if keep {
            let h = HalfValues {
                map: map.clone(),
                bytes,
                dtype,
                widened: OnceLock::new(),
            };
            return Ok(Tensor {
                shape,
                data: Storage::Half(Arc::new(h)),
            });
        }
        let raw = &map[bytes.clone()];
        let what = format!("a tensor of shape {shape:?}");
        let mut v = try_zeroed_vec(raw.len() / 2, &what)?;
        widen_half(raw, dtype, &mut v);
        map.release(bytes);
        Ok(Tensor {
            shape,
            data: Storage::Owned(hold(v)),
        })
    }

    /// The stored 16-bit values, when this tensor holds a checkpoint's f16 or bf16 parameter as
    /// stored (a device computing in that type uploads them as they are).
    pub fn stored_half(&self) -> Option<(HalfType, &[u8])> {
        match &self.data {
            Storage::Half(h) => Some((h.dtype, &h.map[h.bytes.clone()])),
            _ => None,
        }
    }

    /// The mapped checkpoint bytes this tensor reads its values from (f32 in place, or 16-bit
    /// kept as stored), for releasing their pages once they are no longer needed on the host.
    pub(crate) fn mapped_bytes(&self) -> Option<(Arc<Mapping>, Range<usize>)> {
        match &self.data {
            Storage::Mapped(map, bytes) => Some((map.clone(), bytes.clone())),
            Storage::Half(h) => Some((h.map.clone(), h.bytes.clone())),
            Storage::Owned(_) | Storage::Taken => None,
        }
    }

    /// Whether the values are read in place from a mapped file (no copy of them exists).
    pub fn is_mapped(&self) -> bool {
        matches!(&self.data, Storage::Mapped(..))
            || matches!(&self.data, Storage::Half(h) if h.widened.get().is_none())
    }

    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Same data, new shape with the same element count.
    pub fn reshape(self, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        let numel = numel_of(&shape, "tensor")?;
        if numel != self.numel() {
            return Err(Error::shape(
                "tensor",
                format!(
                    "tensor of shape {shape:?} needs {numel} elements, got {}",
                    self.numel()
                ),
            ));
        }
        Ok(self.with_shape(shape))
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
        for (&a, &b) in self.data().iter().zip(reference.data()) {
            let d = a as f64 - b as f64;
            num += d * d;
            den += (b as f64) * (b as f64);
        }
        (num / den).sqrt()
    }
}
