//! Device global memory: allocations at 256-byte-aligned addresses with exact bounds, never
//! reused (a stale pointer lands in no allocation, and the message can say it was freed), and
//! per-byte tags for the checks: 0 = never written, `HOST` = written by a copy or memset, or the
//! launch and block of the kernel that last wrote it.
//!
//! The generic address space (ISA §5.1.7) is laid out as a GPU's is: global addresses are
//! generic addresses, and the shared and local windows sit below them, so `cvta` is an add.

use std::cell::UnsafeCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{EmuError, Result};

/// Where the first allocation goes; addresses above it are global memory.
pub const GLOBAL_BASE: u64 = 0x7f00_0000_0000;
/// Generic addresses `[SHARED_WINDOW, SHARED_WINDOW + WINDOW)` are shared memory offsets.
pub const SHARED_WINDOW: u64 = 0x6000_0000_0000;
/// Generic addresses `[LOCAL_WINDOW, LOCAL_WINDOW + WINDOW)` are the thread's local memory.
pub const LOCAL_WINDOW: u64 = 0x6100_0000_0000;
pub const WINDOW: u64 = 1 << 32;
/// cudaMalloc's alignment.
pub const ALIGNMENT: u64 = 256;

/// The tag of bytes written by the host (a copy or a memset).
pub const HOST: u64 = u64::MAX;

/// The tag a kernel write leaves: the launch's sequence number and the writing block + 1.
#[inline(always)]
pub fn kernel_tag(launch: u32, block: u32) -> u64 {
    ((launch as u64) << 32) | (block as u64 + 1)
}

/// One allocation. Its bytes are read and written by the blocks of a launch on several host
/// threads at once through raw pointers: the emulated program's own races are what the checks
/// report, and the executor itself never keeps a reference across a block.
pub struct Allocation {
    pub base: u64,
    pub size: u64,
    data: UnsafeCell<Box<[u8]>>,
    tags: Option<UnsafeCell<Box<[u64]>>>,
    /// Per byte, who read it last in which launch: `kernel_tag(launch, block)`, with
    /// `READ_NC` set for `ld.global.nc` and the block `MANY_BLOCKS` once several blocks have
    /// read it. A later write by another block, or any write after an `.nc` read, is a race.
    read_tags: Option<UnsafeCell<Box<[u64]>>>,
}

/// The flag of a read tag for `ld.global.nc`.
pub const READ_NC: u64 = 1 << 31;
/// The block field of a read tag when more than one block read the byte.
pub const MANY_BLOCKS: u32 = 0x7fff_ffff;

// SAFETY: see the type's comment; accesses are bounds-checked against `size` before any
// pointer is formed.
unsafe impl Sync for Allocation {}
unsafe impl Send for Allocation {}

impl Allocation {
    /// A pointer to byte `off`; the caller has checked `off + len <= size`.
    #[inline(always)]
    pub fn ptr(&self, off: u64) -> *mut u8 {
        // SAFETY: off is within the boxed slice (checked by the caller).
        unsafe { (*self.data.get()).as_mut_ptr().add(off as usize) }
    }

    #[inline(always)]
    pub fn tags_ptr(&self, off: u64) -> Option<*mut u64> {
        // SAFETY: as `ptr`.
        self.tags
            .as_ref()
            .map(|t| unsafe { (*t.get()).as_mut_ptr().add(off as usize) })
    }

    #[inline(always)]
    pub fn read_tags_ptr(&self, off: u64) -> Option<*mut u64> {
        // SAFETY: as `ptr`.
        self.read_tags
            .as_ref()
            .map(|t| unsafe { (*t.get()).as_mut_ptr().add(off as usize) })
    }

    pub fn end(&self) -> u64 {
        self.base + self.size
    }
}

/// Every live allocation, and the record of freed ones for messages.
pub struct Memory {
    allocs: BTreeMap<u64, Arc<Allocation>>,
    freed: Vec<(u64, u64)>,
    next: u64,
    used: u64,
    pub capacity: u64,
    /// Whether allocations carry tags (the initialisation and cross-block checks).
    pub tagged: bool,
}

/// Freed ranges remembered for messages, at most.
const FREED_MEMORY: usize = 4096;

impl Memory {
    pub fn new(capacity: u64, tagged: bool) -> Self {
        Memory {
            allocs: BTreeMap::new(),
            freed: Vec::new(),
            next: GLOBAL_BASE,
            used: 0,
            capacity,
            tagged,
        }
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    /// A new allocation of `size` bytes (one byte at least); its contents are uninitialised
    /// (zero bytes, tagged as never written).
    pub fn alloc(&mut self, size: u64) -> Result<u64> {
        let size = size.max(1);
        let rounded = size.div_ceil(ALIGNMENT) * ALIGNMENT;
        if rounded > self.capacity - self.used {
            return Err(EmuError::OutOfMemory {
                requested: size,
                free: self.capacity - self.used,
            });
        }
        let mut data = Vec::new();
        data.try_reserve_exact(size as usize)
            .map_err(|_| EmuError::OutOfMemory {
                requested: size,
                free: 0,
            })?;
        data.resize(size as usize, 0u8);
        let zeroed = |n: u64| -> Result<UnsafeCell<Box<[u64]>>> {
            let mut t = Vec::new();
            t.try_reserve_exact(n as usize)
                .map_err(|_| EmuError::OutOfMemory {
                    requested: size,
                    free: 0,
                })?;
            t.resize(n as usize, 0u64);
            Ok(UnsafeCell::new(t.into_boxed_slice()))
        };
        let (tags, read_tags) = if self.tagged {
            (Some(zeroed(size)?), Some(zeroed(size)?))
        } else {
            (None, None)
        };
        let base = self.next;
        // A gap of one alignment unit between allocations: an access just past the end of one
        // is never inside the next.
        self.next += rounded + ALIGNMENT;
        self.used += rounded;
        self.allocs.insert(
            base,
            Arc::new(Allocation {
                base,
                size,
                data: UnsafeCell::new(data.into_boxed_slice()),
                tags,
                read_tags,
            }),
        );
        Ok(base)
    }

    pub fn free(&mut self, base: u64) -> Result<()> {
        let a = self.allocs.remove(&base).ok_or_else(|| {
            EmuError::InvalidValue(format!(
                "free of {base:#x}, which is not the start of an allocation"
            ))
        })?;
        self.used -= a.size.div_ceil(ALIGNMENT) * ALIGNMENT;
        if self.freed.len() >= FREED_MEMORY {
            self.freed.remove(0);
        }
        self.freed.push((a.base, a.size));
        Ok(())
    }

    /// The allocation holding `[addr, addr + len)`.
    pub fn find(&self, addr: u64, len: u64) -> Option<&Arc<Allocation>> {
        let (_, a) = self.allocs.range(..=addr).next_back()?;
        (addr.checked_add(len)? <= a.end()).then_some(a)
    }

    /// Words for an address no allocation holds: which allocation it runs past or falls just
    /// before (the nearer), or that it was freed, or that it is in none.
    pub fn describe(&self, addr: u64, len: u64) -> String {
        let prev = self.allocs.range(..=addr).next_back().map(|(_, a)| a);
        if let Some(a) = prev {
            if addr < a.end() {
                return format!(
                    "{len} bytes at {addr:#x} run {} bytes past the end of the {}-byte allocation at {:#x}",
                    addr + len - a.end(),
                    a.size,
                    a.base
                );
            }
        }
        let next = self.allocs.range(addr..).next().map(|(_, a)| a);
        let past = prev.map(|a| addr - a.end()).filter(|&d| d < ALIGNMENT);
        let before = next.map(|a| a.base - addr).filter(|&d| d <= ALIGNMENT);
        match (past, before) {
            (Some(p), Some(b)) if b < p => {
                let a = next.expect("before");
                return format!(
                    "address {addr:#x} is {b} bytes before the {}-byte allocation at {:#x}",
                    a.size, a.base
                );
            }
            (Some(p), _) => {
                let a = prev.expect("past");
                return format!(
                    "address {addr:#x} is {p} bytes past the end of the {}-byte allocation at {:#x}",
                    a.size, a.base
                );
            }
            (None, Some(b)) => {
                let a = next.expect("before");
                return format!(
                    "address {addr:#x} is {b} bytes before the {}-byte allocation at {:#x}",
                    a.size, a.base
                );
            }
            (None, None) => {}
        }
        if let Some(&(b, s)) = self
            .freed
            .iter()
            .rev()
            .find(|&&(b, s)| addr >= b && addr < b + s)
        {
            return format!(
                "address {addr:#x} is in the {s}-byte allocation at {b:#x}, which was freed"
            );
        }
        format!("address {addr:#x} is in no allocation")
    }

    fn range(&self, addr: u64, len: u64, what: &str) -> Result<&Arc<Allocation>> {
        self.find(addr, len)
            .ok_or_else(|| EmuError::InvalidValue(format!("{what}: {}", self.describe(addr, len))))
    }

    /// Host → device.
    pub fn write(&self, addr: u64, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        let a = self.range(addr, src.len() as u64, "copy to the device")?;
        let off = addr - a.base;
        // SAFETY: the range is inside the allocation; no kernel runs during host calls.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), a.ptr(off), src.len());
            if let Some(t) = a.tags_ptr(off) {
                std::slice::from_raw_parts_mut(t, src.len()).fill(HOST);
            }
        }
        Ok(())
    }

    /// Device → host.
    pub fn read(&self, addr: u64, dst: &mut [u8]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        let a = self.range(addr, dst.len() as u64, "copy from the device")?;
        // SAFETY: as `write`.
        unsafe {
            std::ptr::copy_nonoverlapping(a.ptr(addr - a.base), dst.as_mut_ptr(), dst.len());
        }
        Ok(())
    }

    pub fn memset(&self, addr: u64, value: u8, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let a = self.range(addr, len, "memset")?;
        let off = addr - a.base;
        // SAFETY: as `write`.
        unsafe {
            std::ptr::write_bytes(a.ptr(off), value, len as usize);
            if let Some(t) = a.tags_ptr(off) {
                std::slice::from_raw_parts_mut(t, len as usize).fill(HOST);
            }
        }
        Ok(())
    }

    /// Device → device; the destination bytes take the source's initialisation.
    pub fn copy(&self, dst: u64, src: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let s = self.range(src, len, "device copy source")?;
        let d = self.range(dst, len, "device copy destination")?;
        // SAFETY: both ranges are inside their allocations; `copy` handles overlap.
        unsafe {
            std::ptr::copy(s.ptr(src - s.base), d.ptr(dst - d.base), len as usize);
            if let (Some(ts), Some(td)) = (s.tags_ptr(src - s.base), d.tags_ptr(dst - d.base)) {
                for k in 0..len as usize {
                    let t = *ts.add(k);
                    *td.add(k) = if t == 0 { 0 } else { HOST };
                }
            }
        }
        Ok(())
    }

    /// Whether every byte of the range has been written (true when untagged).
    pub fn initialised(&self, addr: u64, len: u64) -> Result<bool> {
        let a = self.range(addr, len, "initialisation query")?;
        Ok(match a.tags_ptr(addr - a.base) {
            // SAFETY: in range, as above.
            Some(t) => unsafe { std::slice::from_raw_parts(t, len as usize) }
                .iter()
                .all(|&t| t != 0),
            None => true,
        })
    }
}
