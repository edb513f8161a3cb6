//! Race and initialisation records for the bytes one block touches (its shared memory, and the
//! global bytes it reads and writes), in the style of gpuocelot's race detector: for each byte
//! the last write and the reads since it, stamped with when they happened.
//!
//! "When" is a barrier epoch and, within it, a warp clock. Two accesses by different threads are
//! ordered if a `bar.sync` lies between them (the epoch moved on), or if they come from lanes of
//! one warp and a warp collective lies between them (the warp's clock moved on); Volta and later
//! GPUs order nothing else (independent thread scheduling). Epochs count up over every block a
//! worker runs, so records of an earlier block read as ordered-before, and shared bytes whose last
//! write is older than the block were never written by it: uninitialised.
//!
//! A record is a u64: epoch (32 bits) | clock (20) | kind (2) | id (10). For a write, id is the
//! thread; a read record is one thread (`ONE`), several lanes of one warp (`WARP`, id = warp) or
//! threads of several warps (`MIXED`).

/// Who is accessing, and when.
#[derive(Clone, Copy, Debug)]
pub struct Who {
    pub tid: u32,
    pub warp: u32,
    pub epoch: u32,
    pub clock: u32,
}

const ONE: u64 = 1;
const WARP: u64 = 2;
const MIXED: u64 = 3;

#[inline(always)]
fn pack(epoch: u32, clock: u32, kind: u64, id: u32) -> u64 {
    ((epoch as u64) << 32)
        | (((clock & 0xf_ffff) as u64) << 12)
        | (kind << 10)
        | (id as u64 & 0x3ff)
}
#[inline(always)]
fn epoch(r: u64) -> u32 {
    (r >> 32) as u32
}
#[inline(always)]
fn clock(r: u64) -> u32 {
    ((r >> 12) & 0xf_ffff) as u32
}
#[inline(always)]
fn kind(r: u64) -> u64 {
    (r >> 10) & 3
}
#[inline(always)]
fn id(r: u64) -> u32 {
    (r & 0x3ff) as u32
}

/// A conflicting earlier access found by a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conflict {
    /// Read of a byte never written in this block (shared memory only).
    Uninitialised,
    /// An earlier write by this thread, unordered with the access.
    Write { tid: u32 },
    /// An earlier read by this thread (or, with `warp`, by lanes of that warp, or by threads of
    /// several warps when both are `None`), unordered with a write.
    Read { tid: Option<u32>, warp: Option<u32> },
}

impl Conflict {
    pub fn describe(self, warp_of: impl Fn(u32) -> u32) -> String {
        match self {
            Conflict::Uninitialised => "nothing in this block has written these bytes".into(),
            Conflict::Write { tid } => format!(
                "thread {tid} (warp {}) wrote them with no barrier or warp collective between",
                warp_of(tid)
            ),
            Conflict::Read { tid: Some(t), .. } => format!(
                "thread {t} (warp {}) read them with no barrier or warp collective between",
                warp_of(t)
            ),
            Conflict::Read { warp: Some(w), .. } => {
                format!("several lanes of warp {w} read them with no warp collective between")
            }
            Conflict::Read { .. } => {
                "threads of several warps read them with no barrier between".into()
            }
        }
    }
}

/// Whether the access `r` (by `r_tid` of warp `r_warp`) happens before `now` by `who`.
#[inline(always)]
fn ordered(r: u64, r_warp: u32, who: &Who) -> bool {
    epoch(r) < who.epoch || (r_warp == who.warp && clock(r) < who.clock)
}

/// Records for a range of bytes: `w` and `r` hold one record per byte.
pub struct Records {
    pub w: Vec<u64>,
    pub r: Vec<u64>,
}

impl Records {
    pub fn new() -> Self {
        Records {
            w: Vec::new(),
            r: Vec::new(),
        }
    }

    /// Makes room for `n` bytes; new records are zero (never accessed).
    pub fn ensure(&mut self, n: usize) {
        if self.w.len() < n {
            self.w.resize(n, 0);
            self.r.resize(n, 0);
        }
    }
}

impl Default for Records {
    fn default() -> Self {
        Self::new()
    }
}

/// Checks and records a read of byte `k`. `block_start` is the first epoch of this block, for
/// the initialisation check (`None` where another mechanism checks initialisation).
#[inline]
pub fn read(
    rec: &mut Records,
    k: usize,
    who: &Who,
    warp_of: impl Fn(u32) -> u32,
    block_start: Option<u32>,
) -> Result<(), Conflict> {
    let w = rec.w[k];
    if let Some(start) = block_start {
        if epoch(w) < start {
            return Err(Conflict::Uninitialised);
        }
    }
    if w != 0 && id(w) != who.tid && !ordered(w, warp_of(id(w)), who) {
        return Err(Conflict::Write { tid: id(w) });
    }
    let r = rec.r[k];
    rec.r[k] = if r == 0 || epoch(r) < who.epoch {
        pack(who.epoch, who.clock, ONE, who.tid)
    } else {
        match kind(r) {
            ONE if id(r) == who.tid => pack(who.epoch, who.clock, ONE, who.tid),
            ONE if warp_of(id(r)) == who.warp => {
                if clock(r) < who.clock {
                    pack(who.epoch, who.clock, ONE, who.tid)
                } else {
                    pack(who.epoch, who.clock, WARP, who.warp)
                }
            }
            WARP if id(r) == who.warp => {
                if clock(r) < who.clock {
                    pack(who.epoch, who.clock, ONE, who.tid)
                } else {
                    r
                }
            }
            _ => pack(who.epoch, 0, MIXED, 0),
        }
    };
    Ok(())
}

/// Checks and records a write of byte `k`.
#[inline]
pub fn write(
    rec: &mut Records,
    k: usize,
    who: &Who,
    warp_of: impl Fn(u32) -> u32,
) -> Result<(), Conflict> {
    let w = rec.w[k];
    if w != 0 && id(w) != who.tid && !ordered(w, warp_of(id(w)), who) {
        return Err(Conflict::Write { tid: id(w) });
    }
    let r = rec.r[k];
    if r != 0 && epoch(r) == who.epoch {
        match kind(r) {
            ONE if id(r) == who.tid => {}
            ONE => {
                let t = id(r);
                if !(warp_of(t) == who.warp && clock(r) < who.clock) {
                    return Err(Conflict::Read {
                        tid: Some(t),
                        warp: None,
                    });
                }
            }
            WARP => {
                if !(id(r) == who.warp && clock(r) < who.clock) {
                    return Err(Conflict::Read {
                        tid: None,
                        warp: Some(id(r)),
                    });
                }
            }
            _ => {
                return Err(Conflict::Read {
                    tid: None,
                    warp: None,
                })
            }
        }
    }
    rec.w[k] = pack(who.epoch, who.clock, 0, who.tid);
    Ok(())
}

/// `read` for the bytes `[off, off + len)`: once for the whole range when its records agree
/// (bytes written and read together, the common case), else byte by byte. The error carries
/// the offending byte.
#[inline]
pub fn read_range(
    rec: &mut Records,
    off: usize,
    len: usize,
    who: &Who,
    warp_of: impl Fn(u32) -> u32 + Copy,
    block_start: Option<u32>,
) -> Result<(), (usize, Conflict)> {
    let (w0, r0) = (rec.w[off], rec.r[off]);
    if rec.w[off..off + len].iter().all(|&x| x == w0)
        && rec.r[off..off + len].iter().all(|&x| x == r0)
    {
        read(rec, off, who, warp_of, block_start).map_err(|c| (off, c))?;
        let r = rec.r[off];
        rec.r[off..off + len].fill(r);
        return Ok(());
    }
    for k in off..off + len {
        read(rec, k, who, warp_of, block_start).map_err(|c| (k, c))?;
    }
    Ok(())
}

/// `write` for the bytes `[off, off + len)`, as `read_range`.
#[inline]
pub fn write_range(
    rec: &mut Records,
    off: usize,
    len: usize,
    who: &Who,
    warp_of: impl Fn(u32) -> u32 + Copy,
) -> Result<(), (usize, Conflict)> {
    let (w0, r0) = (rec.w[off], rec.r[off]);
    if rec.w[off..off + len].iter().all(|&x| x == w0)
        && rec.r[off..off + len].iter().all(|&x| x == r0)
    {
        write(rec, off, who, warp_of).map_err(|c| (off, c))?;
        let w = rec.w[off];
        rec.w[off..off + len].fill(w);
        return Ok(());
    }
    for k in off..off + len {
        write(rec, k, who, warp_of).map_err(|c| (k, c))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(tid: u32, epoch: u32, clock: u32) -> Who {
        Who {
            tid,
            warp: tid / 32,
            epoch,
            clock,
        }
    }
    fn warp_of(t: u32) -> u32 {
        t / 32
    }

    #[test]
    fn unordered_write_write_between_warps_is_a_race() {
        let mut r = Records::new();
        r.ensure(4);
        write(&mut r, 0, &who(0, 5, 0), warp_of).unwrap();
        assert_eq!(
            write(&mut r, 0, &who(40, 5, 0), warp_of),
            Err(Conflict::Write { tid: 0 })
        );
        // After a barrier, it is ordered.
        write(&mut r, 0, &who(40, 6, 0), warp_of).unwrap();
    }

    #[test]
    fn lanes_of_one_warp_are_ordered_by_collectives_only() {
        let mut r = Records::new();
        r.ensure(4);
        write(&mut r, 1, &who(3, 5, 7), warp_of).unwrap();
        assert!(read(&mut r, 1, &who(4, 5, 7), warp_of, None).is_err());
        read(&mut r, 1, &who(4, 5, 8), warp_of, None).unwrap();
    }

    #[test]
    fn reads_then_a_write() {
        let mut r = Records::new();
        r.ensure(4);
        read(&mut r, 2, &who(1, 5, 0), warp_of, None).unwrap();
        read(&mut r, 2, &who(2, 5, 0), warp_of, None).unwrap();
        // Two lanes of warp 0 read; lane 1 writing in the same clock races with lane 2's read.
        assert_eq!(
            write(&mut r, 2, &who(1, 5, 0), warp_of),
            Err(Conflict::Read {
                tid: None,
                warp: Some(0)
            })
        );
        // A read by another warp makes it mixed: only a barrier orders it.
        read(&mut r, 2, &who(64, 5, 0), warp_of, None).unwrap();
        assert!(write(&mut r, 2, &who(1, 5, 3), warp_of).is_err());
        write(&mut r, 2, &who(1, 6, 0), warp_of).unwrap();
        // A thread reading then writing its own byte is fine.
        read(&mut r, 3, &who(9, 6, 0), warp_of, None).unwrap();
        write(&mut r, 3, &who(9, 6, 0), warp_of).unwrap();
    }

    #[test]
    fn uninitialised_shared_bytes() {
        let mut r = Records::new();
        r.ensure(4);
        assert_eq!(
            read(&mut r, 0, &who(0, 5, 0), warp_of, Some(5)),
            Err(Conflict::Uninitialised)
        );
        write(&mut r, 0, &who(0, 5, 0), warp_of).unwrap();
        read(&mut r, 0, &who(0, 5, 0), warp_of, Some(5)).unwrap();
        // A later block (start epoch 9) sees the byte as unwritten again.
        assert_eq!(
            read(&mut r, 0, &who(0, 9, 0), warp_of, Some(9)),
            Err(Conflict::Uninitialised)
        );
    }
}
