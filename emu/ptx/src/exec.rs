//! Running a launch: blocks spread over host threads, each block's warps run one at a time in
//! lockstep (all 32 lanes per instruction, under an active mask), switching at barriers.
//!
//! Divergence: a warp is a set of lane groups, each with its own program counter. The group with
//! the lowest counter runs; where a branch splits a group, both halves join the set, and groups
//! that arrive at the same leader (a branch target or fall-through) merge again. Lowest-pc-first
//! is the "thread frontier" reconvergence rule: it reconverges at the earliest common point of
//! structured code without a post-dominator analysis, and any schedule is a legal one under
//! independent thread scheduling. Warp collectives (`shfl.sync`, `ldmatrix`, `mma`) wait until
//! every lane they need is in one group at that instruction; `bar.sync` waits for every
//! non-exited thread of the block (ISA §9.7.13.4). A collective that cannot be completed is a
//! fault, not a hang.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::alu::{bfi32, bfi64};
use crate::check::{self, Conflict, Records, Who};
use crate::error::{Fault, FaultKind};
use crate::fp;
use crate::ir::*;
use crate::memory::{self, Allocation, Memory, LOCAL_WINDOW, SHARED_WINDOW, WINDOW};
use crate::parse::Space;

/// Which checks run (bounds and alignment always do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checks {
    /// Reads of global or shared bytes nothing has written.
    pub init: bool,
    /// Races between threads of a block and between blocks; `ld.global.nc` of written bytes.
    pub races: bool,
}

impl Checks {
    pub const ALL: Checks = Checks {
        init: true,
        races: true,
    };
    pub const NONE: Checks = Checks {
        init: false,
        races: false,
    };
}

/// The order blocks are started in and warps are run in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Forward,
    Reverse,
    /// A seeded permutation.
    Shuffled(u64),
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub checks: Checks,
    pub order: Order,
    /// Host threads for the blocks of a launch.
    pub threads: usize,
    /// Warp-instructions a launch may execute before it is stopped as hung.
    pub budget: u64,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            checks: Checks::ALL,
            order: Order::Forward,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            budget: 1 << 40,
        }
    }
}

/// What a launch did.
#[derive(Clone, Copy, Debug, Default)]
pub struct LaunchStats {
    pub warp_instructions: u64,
    pub blocks: u64,
}

pub struct Launch<'a> {
    pub kernel: &'a Kernel,
    pub memory: &'a Memory,
    pub params: &'a [u8],
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_smem: u32,
    /// This launch's sequence number (for the cross-block write tags).
    pub seq: u32,
    pub options: &'a RunOptions,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    No,
    /// At a warp collective, for other lanes.
    Collective,
    Barrier,
}

#[derive(Clone, Copy, Debug)]
struct Group {
    pc: u32,
    mask: u32,
    wait: Wait,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WarpState {
    Running,
    AtBarrier,
    Done,
}

struct Warp {
    r32: Vec<[u32; 32]>,
    r64: Vec<[u64; 32]>,
    pred: Vec<u32>,
    local: Vec<u8>,
    groups: Vec<Group>,
    exited: u32,
    /// `exited` when the collectives waiting in this warp last looked.
    exited_seen: u32,
    state: WarpState,
    clock: u32,
    index: u32,
}

/// Per-host-thread state reused across blocks and launches.
pub struct Worker {
    warps: Vec<Warp>,
    smem: Vec<u8>,
    shared_rec: Records,
    global_rec: GlobalRecords,
    epoch: u32,
    /// The kernel whose constants are in the register files.
    loaded: usize,
}

impl Default for Worker {
    fn default() -> Self {
        Worker {
            warps: Vec::new(),
            smem: Vec::new(),
            shared_rec: Records::new(),
            global_rec: GlobalRecords::default(),
            epoch: 1,
            loaded: 0,
        }
    }
}

/// Race records for the global bytes one block touches, by 4 KiB page of the address space.
/// Only the current block's records matter (earlier ones carry older epochs and read as ordered
/// before it), so at each block start the pages go back to a free list and are reused as they
/// are: memory stays bounded by what one block touches.
#[derive(Default)]
struct GlobalRecords {
    // Boxed so that `last` stays valid when the map rehashes.
    #[allow(clippy::vec_box)]
    pages: std::collections::HashMap<u64, Box<Records>>,
    #[allow(clippy::vec_box)]
    free: Vec<Box<Records>>,
    /// The last page looked up (most accesses of a warp hit it).
    last: Option<(u64, *mut Records)>,
}

// SAFETY: `last` points into a page owned by `pages`, which moves with the struct.
unsafe impl Send for GlobalRecords {}

const PAGE: u64 = 4096;

impl GlobalRecords {
    fn recycle(&mut self) {
        self.last = None;
        self.free.extend(self.pages.drain().map(|(_, p)| p));
    }

    fn page(&mut self, addr: u64) -> &mut Records {
        let key = addr / PAGE;
        if let Some((k, p)) = self.last {
            if k == key {
                // SAFETY: the page is alive in `pages` until the next recycle, which clears `last`.
                return unsafe { &mut *p };
            }
        }
        let free = &mut self.free;
        let page = self.pages.entry(key).or_insert_with(|| {
            free.pop().unwrap_or_else(|| {
                let mut r = Records::new();
                r.ensure(PAGE as usize);
                Box::new(r)
            })
        });
        let p: *mut Records = &mut **page;
        self.last = Some((key, p));
        // SAFETY: as above.
        unsafe { &mut *p }
    }
}

/// A fault found in a block, before its kernel and position are attached.
struct Trap {
    kind: FaultKind,
    lane: u32,
    detail: String,
}

type Step<T> = Result<T, Trap>;

fn trap<T>(kind: FaultKind, lane: u32, detail: String) -> Step<T> {
    Err(Trap { kind, lane, detail })
}

/// Everything a block needs, shared by its warps.
struct BlockCtx<'a> {
    l: &'a Launch<'a>,
    block: [u32; 3],
    block_linear: u32,
    smem_len: usize,
    block_start: u32,
    steps: u64,
    /// Lane group of the current instruction (for `Who`), and its pc.
    pc: u32,
}

#[inline(always)]
fn bit(m: u32, l: usize) -> bool {
    (m >> l) & 1 != 0
}

#[inline(always)]
fn store32(dst: &mut [u32; 32], v: &[u32; 32], m: u32) {
    if m == u32::MAX {
        *dst = *v;
    } else {
        for l in 0..32 {
            dst[l] = if bit(m, l) { v[l] } else { dst[l] };
        }
    }
}

#[inline(always)]
fn store64(dst: &mut [u64; 32], v: &[u64; 32], m: u32) {
    if m == u32::MAX {
        *dst = *v;
    } else {
        for l in 0..32 {
            dst[l] = if bit(m, l) { v[l] } else { dst[l] };
        }
    }
}

/// An integer division's divisors: a zero in an active lane is a fault.
fn nonzero_divisors<T: Copy + Default + PartialEq>(div: &[T; 32], m: u32) -> Step<()> {
    let zero = (0..32).fold(0u32, |z, l| z | (((div[l] == T::default()) as u32) << l)) & m;
    if zero != 0 {
        return trap(
            FaultKind::DivideByZero,
            zero.trailing_zeros(),
            format!("lanes {} divide by zero", lanes_text(zero)),
        );
    }
    Ok(())
}

fn pred_bool(op: PredBool, a: u32, b: u32) -> u32 {
    match op {
        PredBool::And => a & b,
        PredBool::Or => a | b,
        PredBool::Xor => a ^ b,
    }
}

fn lanes_text(m: u32) -> String {
    let mut out = Vec::new();
    let mut l = 0;
    while l < 32 {
        if bit(m, l) {
            let s = l;
            while l + 1 < 32 && bit(m, l + 1) {
                l += 1;
            }
            out.push(if s == l {
                s.to_string()
            } else {
                format!("{s}-{l}")
            });
        }
        l += 1;
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(",")
    }
}

/// The f16 → f32 table the mma uses (65,536 entries, built once).
fn f16_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|b| half::f16::from_bits(b).to_f32())
            .collect()
    })
}

impl Worker {
    fn prepare(&mut self, k: &Kernel, nwarps: usize, smem: usize, kernel_id: usize) {
        let reload = self.loaded != kernel_id || self.warps.len() < nwarps;
        while self.warps.len() < nwarps {
            self.warps.push(Warp {
                r32: Vec::new(),
                r64: Vec::new(),
                pred: Vec::new(),
                local: Vec::new(),
                groups: Vec::new(),
                exited: 0,
                exited_seen: 0,
                state: WarpState::Done,
                clock: 0,
                index: 0,
            });
        }
        if reload {
            for w in &mut self.warps {
                w.r32.clear();
                w.r32.resize(k.n32 as usize, [0; 32]);
                w.r64.clear();
                w.r64.resize(k.n64 as usize, [0; 32]);
                w.pred.clear();
                w.pred.resize(k.npred as usize, 0);
                for &(s, v) in &k.consts32 {
                    w.r32[s as usize] = [v; 32];
                }
                for &(s, v) in &k.consts64 {
                    w.r64[s as usize] = [v; 32];
                }
                w.local.clear();
                w.local.resize(k.local_bytes as usize * 32, 0);
            }
            self.loaded = kernel_id;
        }
        if self.smem.len() < smem {
            self.smem.resize(smem, 0);
            self.shared_rec.ensure(smem);
        }
    }
}

/// Runs every block of a launch. Returns the first fault in block order, if any.
#[allow(clippy::result_large_err)]
pub fn run(
    l: &Launch,
    workers: &Mutex<Vec<Worker>>,
    kernel_id: usize,
) -> Result<LaunchStats, Fault> {
    let nblocks = l.grid.iter().map(|&g| g as u64).product::<u64>();
    let threads = l.options.threads.clamp(1, 64).min(nblocks.max(1) as usize);
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let first: Mutex<Option<(u64, Fault)>> = Mutex::new(None);
    let steps = AtomicU64::new(0);
    let mut pool = std::mem::take(&mut *workers.lock().expect("workers"));
    while pool.len() < threads {
        pool.push(Worker::default());
    }
    let perm = Permutation::new(nblocks, l.options.order);
    let body = |w: &mut Worker| loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let k = next.fetch_add(1, Ordering::Relaxed);
        if k >= nblocks {
            return;
        }
        let b = perm.at(k);
        let block = [
            (b % l.grid[0] as u64) as u32,
            ((b / l.grid[0] as u64) % l.grid[1] as u64) as u32,
            (b / (l.grid[0] as u64 * l.grid[1] as u64)) as u32,
        ];
        match run_block(l, w, block, b as u32, kernel_id) {
            Ok(n) => {
                let total = steps.fetch_add(n, Ordering::Relaxed) + n;
                if total > l.options.budget {
                    let f = Fault {
                            kind: FaultKind::Watchdog,
                            kernel: l.kernel.name.clone(),
                            instruction: String::new(),
                            ptx_line: 0,
                            source: String::new(),
                            block,
                            thread: [0; 3],
                            detail: format!(
                                "the launch executed more than {} warp-instructions (a hang, or raise FREELUNCH_EMU_BUDGET)",
                                l.options.budget
                            ),
                        };
                    let mut g = first.lock().expect("fault");
                    if g.as_ref().is_none_or(|(o, _)| k < *o) {
                        *g = Some((k, f));
                    }
                    stop.store(true, Ordering::Relaxed);
                }
            }
            Err(f) => {
                let mut g = first.lock().expect("fault");
                if g.as_ref().is_none_or(|(o, _)| k < *o) {
                    *g = Some((k, *f));
                }
                stop.store(true, Ordering::Relaxed);
            }
        }
    };
    if threads == 1 {
        body(&mut pool[0]);
    } else {
        std::thread::scope(|s| {
            for w in pool.iter_mut().take(threads) {
                s.spawn(|| body(w));
            }
        });
    }
    *workers.lock().expect("workers") = pool;
    if let Some((_, f)) = first.into_inner().expect("fault") {
        return Err(f);
    }
    Ok(LaunchStats {
        warp_instructions: steps.into_inner(),
        blocks: nblocks,
    })
}

/// Block `k` of the launch order → block linear index: identity, reversed, or an affine
/// bijection `(a·k + c) mod n` with `a` coprime to `n` (a seeded shuffle needing no table).
struct Permutation {
    n: u64,
    order: Order,
    a: u64,
    c: u64,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Permutation {
    fn new(n: u64, order: Order) -> Self {
        let (mut a, mut c) = (1, 0);
        if let Order::Shuffled(seed) = order {
            if n > 1 {
                let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                a = s % n;
                while gcd(a.max(1), n) != 1 || a == 0 {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    a = (s >> 11) % n;
                }
                c = (seed >> 7) % n;
            }
        }
        Permutation { n, order, a, c }
    }
    fn at(&self, k: u64) -> u64 {
        match self.order {
            Order::Forward => k,
            Order::Reverse => self.n - 1 - k,
            Order::Shuffled(_) => {
                ((self.a as u128 * k as u128 + self.c as u128) % self.n as u128) as u64
            }
        }
    }
}

fn run_block(
    l: &Launch,
    w: &mut Worker,
    block: [u32; 3],
    linear: u32,
    kernel_id: usize,
) -> Result<u64, Box<Fault>> {
    let k = l.kernel;
    let nthreads = l.block[0] * l.block[1] * l.block[2];
    let nwarps = nthreads.div_ceil(32) as usize;
    let smem_len = (k.dynamic_smem_offset + l.dynamic_smem).max(k.static_smem) as usize;
    w.prepare(k, nwarps, smem_len, kernel_id);
    w.global_rec.recycle();
    w.epoch += 1;
    let block_start = w.epoch;
    for (i, warp) in w.warps.iter_mut().take(nwarps).enumerate() {
        let first = i as u32 * 32;
        let valid = if first + 32 <= nthreads {
            u32::MAX
        } else {
            (1u32 << (nthreads - first)) - 1
        };
        warp.exited = !valid;
        warp.exited_seen = warp.exited;
        warp.groups.clear();
        warp.groups.push(Group {
            pc: 0,
            mask: valid,
            wait: Wait::No,
        });
        warp.state = WarpState::Running;
        warp.clock = 0;
        warp.index = i as u32;
        for &(s, sp) in &k.specials {
            let mut v = [0u32; 32];
            for (lane, x) in v.iter_mut().enumerate() {
                let t = first + lane as u32;
                let tid = [
                    t % l.block[0],
                    (t / l.block[0]) % l.block[1],
                    t / (l.block[0] * l.block[1]),
                ];
                *x = match sp {
                    Special::Tid(d) => tid[d as usize],
                    Special::Ntid(d) => l.block[d as usize],
                    Special::Ctaid(d) => block[d as usize],
                    Special::Nctaid(d) => l.grid[d as usize],
                    Special::LaneId => lane as u32,
                    Special::WarpId => i as u32,
                    Special::NWarpId => 64,
                    Special::LaneMaskEq => 1 << lane,
                    Special::LaneMaskLt => (1u32 << lane) - 1,
                    Special::LaneMaskLe => ((1u64 << (lane + 1)) - 1) as u32,
                    Special::LaneMaskGt => !(((1u64 << (lane + 1)) - 1) as u32),
                    Special::LaneMaskGe => !((1u32 << lane) - 1),
                };
            }
            warp.r32[s as usize] = v;
        }
    }
    let mut ctx = BlockCtx {
        l,
        block,
        block_linear: linear,
        smem_len,
        block_start,
        steps: 0,
        pc: 0,
    };
    let order: Vec<usize> = match l.options.order {
        Order::Forward => (0..nwarps).collect(),
        Order::Reverse => (0..nwarps).rev().collect(),
        Order::Shuffled(seed) => {
            let p = Permutation::new(nwarps as u64, Order::Shuffled(seed ^ linear as u64));
            (0..nwarps as u64).map(|i| p.at(i) as usize).collect()
        }
    };
    let Worker {
        warps,
        smem,
        shared_rec,
        global_rec,
        epoch,
        ..
    } = w;
    loop {
        let mut ran = false;
        for &i in &order {
            if warps[i].state == WarpState::Running {
                ran = true;
                let mut m = Machine {
                    ctx: &mut ctx,
                    smem,
                    shared_rec,
                    global_rec,
                    epoch: *epoch,
                    last_alloc: None,
                };
                if let Err(t) = m.run_warp(&mut warps[i]) {
                    let lane = t.lane;
                    let pc = m.ctx.pc;
                    return Err(Box::new(fault_at(&ctx, &warps[i], lane, pc, t)));
                }
            }
        }
        let live: Vec<usize> = (0..nwarps)
            .filter(|&i| warps[i].state != WarpState::Done)
            .collect();
        if live.is_empty() {
            return Ok(ctx.steps);
        }
        if live.iter().all(|&i| warps[i].state == WarpState::AtBarrier) {
            // Without a thread count each barrier waits for every thread of the block, so warps
            // waiting at different barrier ids wait for each other forever.
            let id_of = |i: usize| match k.code[warps[i].groups[0].pc as usize].op {
                Op::Bar { id } => id,
                _ => unreachable!("a warp at a barrier is at a bar instruction"),
            };
            if let Some(&j) = live.iter().find(|&&j| id_of(j) != id_of(live[0])) {
                let (i, pc) = (live[0], warps[live[0]].groups[0].pc);
                let other = &k.info[k.code[warps[j].groups[0].pc as usize].info as usize];
                let detail = format!(
                    "warp {} waits at barrier {} while warp {} waits at barrier {} (`{}` {}): each waits for all threads of the block",
                    i,
                    id_of(i),
                    j,
                    id_of(j),
                    other.text,
                    other.source
                );
                let t = Trap {
                    kind: FaultKind::Deadlock,
                    lane: 0,
                    detail,
                };
                return Err(Box::new(fault_at(&ctx, &warps[i], 0, pc, t)));
            }
            *epoch += 1;
            for &i in &live {
                let wp = &mut warps[i];
                wp.state = WarpState::Running;
                wp.clock = 0;
                for g in &mut wp.groups {
                    g.pc += 1;
                    g.wait = Wait::No;
                }
            }
        } else if !ran {
            let i = live[0];
            let pc = warps[i].groups.first().map_or(0, |g| g.pc);
            return Err(Box::new(fault_at(
                &ctx,
                &warps[i],
                0,
                pc,
                Trap {
                    kind: FaultKind::Deadlock,
                    lane: 0,
                    detail: "no warp of the block can make progress".into(),
                },
            )));
        }
    }
}

fn fault_at(ctx: &BlockCtx, warp: &Warp, lane: u32, pc: u32, t: Trap) -> Fault {
    let k = ctx.l.kernel;
    let inst = k.code.get(pc as usize);
    let info = inst.map(|i| &k.info[i.info as usize]);
    let tl = warp.index * 32 + lane;
    let b = ctx.l.block;
    Fault {
        kind: t.kind,
        kernel: k.name.clone(),
        instruction: info.map_or_else(String::new, |i| i.text.clone()),
        ptx_line: info.map_or(0, |i| i.ptx_line),
        source: info.map_or_else(String::new, |i| i.source.clone()),
        block: ctx.block,
        thread: [tl % b[0], (tl / b[0]) % b[1], tl / (b[0] * b[1])],
        detail: t.detail,
    }
}

/// The block-level state a warp runs against.
struct Machine<'c, 'a> {
    ctx: &'c mut BlockCtx<'a>,
    smem: &'c mut Vec<u8>,
    shared_rec: &'c mut Records,
    global_rec: &'c mut GlobalRecords,
    epoch: u32,
    /// The allocation the last global access hit.
    last_alloc: Option<&'a Allocation>,
}

enum Resolved<'m> {
    Global(&'m Allocation),
    Shared(usize),
    Local(usize),
}

impl<'c, 'a> Machine<'c, 'a> {
    fn run_warp(&mut self, w: &mut Warp) -> Step<()> {
        loop {
            // The runnable group with the lowest pc.
            let pick = w
                .groups
                .iter()
                .enumerate()
                .filter(|(_, g)| g.wait == Wait::No)
                .min_by_key(|(_, g)| g.pc)
                .map(|(i, _)| i);
            let Some(gi) = pick else {
                if w.groups.is_empty() {
                    w.state = WarpState::Done;
                    return Ok(());
                }
                // Lanes a collective waited for may have exited since: those groups look again
                // (the collective recomputes the lanes it needs from the non-exited ones).
                if w.exited != w.exited_seen {
                    w.exited_seen = w.exited;
                    let mut retried = false;
                    for g in w.groups.iter_mut().filter(|g| g.wait == Wait::Collective) {
                        g.wait = Wait::No;
                        retried = true;
                    }
                    if retried {
                        continue;
                    }
                }
                return self.blocked(w);
            };
            self.run_group(w, gi)?;
        }
    }

    /// Every group waits: at one barrier (the warp arrives), or somewhere that cannot finish.
    fn blocked(&mut self, w: &mut Warp) -> Step<()> {
        let k = self.ctx.l.kernel;
        let at_bar: Vec<&Group> = w
            .groups
            .iter()
            .filter(|g| g.wait == Wait::Barrier)
            .collect();
        if at_bar.len() == w.groups.len() {
            let pc = at_bar[0].pc;
            if at_bar.iter().any(|g| g.pc != pc) {
                self.ctx.pc = pc;
                let other = at_bar.iter().find(|g| g.pc != pc).expect("found");
                let o = &k.info[k.code[other.pc as usize].info as usize];
                return trap(
                    FaultKind::Divergence,
                    at_bar[0].mask.trailing_zeros(),
                    format!(
                        "lanes {} of warp {} wait at this bar.sync while lanes {} wait at another, `{}` ({}): bar.sync is .aligned",
                        lanes_text(at_bar[0].mask),
                        w.index,
                        lanes_text(other.mask),
                        o.text,
                        o.source
                    ),
                );
            }
            let mask = at_bar.iter().fold(0, |m, g| m | g.mask);
            w.groups.clear();
            w.groups.push(Group {
                pc,
                mask,
                wait: Wait::Barrier,
            });
            w.state = WarpState::AtBarrier;
            return Ok(());
        }
        // Some group waits at a collective that no running group will complete.
        let g = w
            .groups
            .iter()
            .find(|g| g.wait == Wait::Collective)
            .copied()
            .expect("a waiting group");
        self.ctx.pc = g.pc;
        let others: Vec<String> = w
            .groups
            .iter()
            .filter(|o| o.pc != g.pc || o.wait != Wait::Collective)
            .map(|o| {
                let i = &k.info[k.code[o.pc as usize].info as usize];
                format!(
                    "lanes {} at `{}` ({})",
                    lanes_text(o.mask),
                    i.text,
                    i.source
                )
            })
            .collect();
        let exited = if w.exited != 0 {
            format!("; lanes {} exited", lanes_text(w.exited))
        } else {
            String::new()
        };
        trap(
            FaultKind::Divergence,
            g.mask.trailing_zeros(),
            format!(
                "lanes {} of warp {} wait at this collective for lanes that never arrive: {}{exited}",
                lanes_text(g.mask),
                w.index,
                if others.is_empty() { "none are running".into() } else { others.join(", ") }
            ),
        )
    }

    /// Runs group `gi` until it exits, waits, or reaches a leader where another group is behind
    /// it. While it runs it is out of `w.groups`, which then holds the other groups only.
    fn run_group(&mut self, w: &mut Warp, gi: usize) -> Step<()> {
        let k = self.ctx.l.kernel;
        let code = &k.code[..];
        let budget = self.ctx.l.options.budget;
        let Group {
            mut pc, mut mask, ..
        } = w.groups.swap_remove(gi);
        let mut steps = 0u64;
        let result = loop {
            let inst = &code[pc as usize];
            if inst.leader && !w.groups.is_empty() {
                // Merge with groups that reached this leader; yield to one further behind.
                w.groups.retain(|g| {
                    let same = g.pc == pc && g.wait == Wait::No;
                    if same {
                        mask |= g.mask;
                    }
                    !same
                });
                if w.groups.iter().any(|g| g.wait == Wait::No && g.pc < pc) {
                    w.groups.push(Group {
                        pc,
                        mask,
                        wait: Wait::No,
                    });
                    break Ok(());
                }
            }
            steps += 1;
            let m = if inst.guard == NONE {
                mask
            } else {
                let p = w.pred[inst.guard as usize];
                mask & if inst.neg { !p } else { p }
            };
            self.ctx.pc = pc;
            match &inst.op {
                Op::Bra { target, uni } => {
                    let (taken, fall) = (m, mask & !m);
                    if *uni && taken != 0 && fall != 0 {
                        break trap(
                            FaultKind::Divergence,
                            fall.trailing_zeros(),
                            format!(
                                "bra.uni diverged: lanes {} take it, lanes {} do not",
                                lanes_text(taken),
                                lanes_text(fall)
                            ),
                        );
                    }
                    if *target <= pc && self.ctx.steps + steps > budget {
                        break trap(
                            FaultKind::Watchdog,
                            mask.trailing_zeros(),
                            format!("the block ran more than {budget} warp-instructions (a hang, or raise FREELUNCH_EMU_BUDGET)"),
                        );
                    }
                    if fall == 0 {
                        pc = *target;
                    } else if taken == 0 {
                        pc += 1;
                    } else {
                        // Split: the half with the lower pc runs on, the other joins the set.
                        let ((lo_pc, lo_m), (hi_pc, hi_m)) = if *target < pc + 1 {
                            ((*target, taken), (pc + 1, fall))
                        } else {
                            ((pc + 1, fall), (*target, taken))
                        };
                        w.groups.push(Group {
                            pc: hi_pc,
                            mask: hi_m,
                            wait: Wait::No,
                        });
                        pc = lo_pc;
                        mask = lo_m;
                    }
                    continue;
                }
                Op::Exit => {
                    w.exited |= m;
                    mask &= !m;
                    if mask == 0 {
                        break Ok(());
                    }
                    pc += 1;
                    continue;
                }
                Op::Bar { .. } => {
                    if m != mask {
                        break trap(
                            FaultKind::Divergence,
                            (mask & !m).trailing_zeros(),
                            format!(
                                "the guard of bar.sync is false for lanes {}: they skip a barrier the others wait at",
                                lanes_text(mask & !m)
                            ),
                        );
                    }
                    w.groups.push(Group {
                        pc,
                        mask,
                        wait: Wait::Barrier,
                    });
                    break Ok(());
                }
                Op::Shfl(_) | Op::Ldmatrix(_) | Op::Mma(_) | Op::WarpSync { .. } => {
                    let need = match &inst.op {
                        Op::WarpSync { membermask } => {
                            w.r32[*membermask as usize][m.max(1).trailing_zeros() as usize]
                        }
                        Op::Shfl(s) => {
                            w.r32[s.membermask as usize][m.max(1).trailing_zeros() as usize]
                        }
                        _ => u32::MAX,
                    } & !w.exited;
                    if need & !mask != 0 {
                        // Take in the lanes already waiting here; wait if some are still missing.
                        w.groups.retain(|g| {
                            let here = g.pc == pc && g.wait == Wait::Collective;
                            if here {
                                mask |= g.mask;
                            }
                            !here
                        });
                        if need & !mask != 0 {
                            w.groups.push(Group {
                                pc,
                                mask,
                                wait: Wait::Collective,
                            });
                            break Ok(());
                        }
                        continue; // re-evaluate the guard with the merged mask
                    }
                    let r = match &inst.op {
                        Op::Shfl(s) => self.shfl(w, s, m),
                        Op::Ldmatrix(x) => self.ldmatrix(w, x, m, mask),
                        Op::Mma(x) => self.mma(w, x, m, mask),
                        Op::WarpSync { membermask } => {
                            let mm =
                                w.r32[*membermask as usize][m.max(1).trailing_zeros() as usize];
                            if m & !mm != 0 {
                                Err(Trap {
                                    kind: FaultKind::Divergence,
                                    lane: (m & !mm).trailing_zeros(),
                                    detail: format!(
                                        "lanes {} execute bar.warp.sync but are not in its membermask {mm:#010x}",
                                        lanes_text(m & !mm)
                                    ),
                                })
                            } else {
                                Ok(())
                            }
                        }
                        _ => unreachable!(),
                    };
                    if let Err(t) = r {
                        break Err(t);
                    }
                    // Only a collective of every live lane orders their accesses for the race
                    // check: the warp has one clock, so a partial one must not advance it.
                    if m == !w.exited {
                        w.clock += 1;
                    }
                    pc += 1;
                    continue;
                }
                _ => {}
            }
            if m != 0 {
                if let Err(t) = self.exec(w, &inst.op, m) {
                    break Err(t);
                }
            }
            pc += 1;
        };
        if result.is_err() {
            // Keep the group for the message's lane numbers.
            w.groups.push(Group {
                pc,
                mask,
                wait: Wait::No,
            });
        }
        self.ctx.steps += steps;
        result
    }

    /// A non-control instruction for the lanes in `m`.
    #[inline(always)]
    fn exec(&mut self, w: &mut Warp, op: &Op, m: u32) -> Step<()> {
        match op {
            Op::Mov32 { d, a } => {
                let v = w.r32[*a as usize];
                store32(&mut w.r32[*d as usize], &v, m);
            }
            Op::Mov64 { d, a } => {
                let v = w.r64[*a as usize];
                store64(&mut w.r64[*d as usize], &v, m);
            }
            Op::Un32 { f, d, a } => {
                let mut o = [0u32; 32];
                f(&mut o, &w.r32[*a as usize]);
                store32(&mut w.r32[*d as usize], &o, m);
            }
            Op::Bin32 { f, d, a, b } => {
                let mut o = [0u32; 32];
                f(&mut o, &w.r32[*a as usize], &w.r32[*b as usize]);
                store32(&mut w.r32[*d as usize], &o, m);
            }
            Op::Tern32 { f, d, a, b, c } => {
                let mut o = [0u32; 32];
                f(
                    &mut o,
                    &w.r32[*a as usize],
                    &w.r32[*b as usize],
                    &w.r32[*c as usize],
                );
                store32(&mut w.r32[*d as usize], &o, m);
            }
            Op::Un64 { f, d, a } => {
                let mut o = [0u64; 32];
                f(&mut o, &w.r64[*a as usize]);
                store64(&mut w.r64[*d as usize], &o, m);
            }
            Op::Bin64 { f, d, a, b } => {
                let mut o = [0u64; 32];
                f(&mut o, &w.r64[*a as usize], &w.r64[*b as usize]);
                store64(&mut w.r64[*d as usize], &o, m);
            }
            Op::Tern64 { f, d, a, b, c } => {
                let mut o = [0u64; 32];
                f(
                    &mut o,
                    &w.r64[*a as usize],
                    &w.r64[*b as usize],
                    &w.r64[*c as usize],
                );
                store64(&mut w.r64[*d as usize], &o, m);
            }
            Op::Shift64 { f, d, a, b } => {
                let mut o = [0u64; 32];
                f(&mut o, &w.r64[*a as usize], &w.r32[*b as usize]);
                store64(&mut w.r64[*d as usize], &o, m);
            }
            Op::Wide { f, d, a, b } => {
                let mut o = [0u64; 32];
                f(&mut o, &w.r32[*a as usize], &w.r32[*b as usize]);
                store64(&mut w.r64[*d as usize], &o, m);
            }
            Op::MadWide { f, d, a, b, c } => {
                let mut o = [0u64; 32];
                f(
                    &mut o,
                    &w.r32[*a as usize],
                    &w.r32[*b as usize],
                    &w.r64[*c as usize],
                );
                store64(&mut w.r64[*d as usize], &o, m);
            }
            Op::Widen { f, d, a } => {
                let mut o = [0u64; 32];
                f(&mut o, &w.r32[*a as usize]);
                store64(&mut w.r64[*d as usize], &o, m);
            }
            Op::Narrow { f, d, a } => {
                let mut o = [0u32; 32];
                f(&mut o, &w.r64[*a as usize]);
                store32(&mut w.r32[*d as usize], &o, m);
            }
            Op::Clamp16 {
                d,
                bf16,
                relu,
                satfinite,
            } => {
                let mut o = w.r32[*d as usize];
                for v in o.iter_mut() {
                    *v = crate::alu::clamp16(*v as u16, *bf16, *relu, *satfinite) as u32;
                }
                store32(&mut w.r32[*d as usize], &o, m);
            }
            Op::Div32 { f, d, a, b } => {
                let div = &w.r32[*b as usize];
                nonzero_divisors(div, m)?;
                let mut o = [0u32; 32];
                f(&mut o, &w.r32[*a as usize], div);
                store32(&mut w.r32[*d as usize], &o, m);
            }
            Op::Div64 { f, d, a, b } => {
                let div = &w.r64[*b as usize];
                nonzero_divisors(div, m)?;
                let mut o = [0u64; 32];
                f(&mut o, &w.r64[*a as usize], div);
                store64(&mut w.r64[*d as usize], &o, m);
            }
            Op::Bfi32 { d, a, b, pos, len } => {
                let mut o = [0u32; 32];
                let (x, y, p, n) = (
                    &w.r32[*a as usize],
                    &w.r32[*b as usize],
                    &w.r32[*pos as usize],
                    &w.r32[*len as usize],
                );
                for l in 0..32 {
                    o[l] = bfi32(x[l], y[l], p[l], n[l]);
                }
                store32(&mut w.r32[*d as usize], &o, m);
            }
            Op::Bfi64 { d, a, b, pos, len } => {
                let mut o = [0u64; 32];
                let (x, y, p, n) = (
                    &w.r64[*a as usize],
                    &w.r64[*b as usize],
                    &w.r32[*pos as usize],
                    &w.r32[*len as usize],
                );
                for l in 0..32 {
                    o[l] = bfi64(x[l], y[l], p[l], n[l]);
                }
                store64(&mut w.r64[*d as usize], &o, m);
            }
            Op::Setp32 {
                f,
                p,
                q,
                a,
                b,
                comb,
            } => {
                let r = f(&w.r32[*a as usize], &w.r32[*b as usize]);
                self.setp(w, r, *p, *q, *comb, m);
            }
            Op::Setp64 {
                f,
                p,
                q,
                a,
                b,
                comb,
            } => {
                let r = f(&w.r64[*a as usize], &w.r64[*b as usize]);
                self.setp(w, r, *p, *q, *comb, m);
            }
            Op::Selp32 { d, a, b, p } => {
                let pm = w.pred[*p as usize];
                let (x, y) = (&w.r32[*a as usize], &w.r32[*b as usize]);
                let mut o = [0u32; 32];
                for l in 0..32 {
                    o[l] = if bit(pm, l) { x[l] } else { y[l] };
                }
                store32(&mut w.r32[*d as usize], &o, m);
            }
            Op::Selp64 { d, a, b, p } => {
                let pm = w.pred[*p as usize];
                let (x, y) = (&w.r64[*a as usize], &w.r64[*b as usize]);
                let mut o = [0u64; 32];
                for l in 0..32 {
                    o[l] = if bit(pm, l) { x[l] } else { y[l] };
                }
                store64(&mut w.r64[*d as usize], &o, m);
            }
            Op::PredMov { d, a, neg } => {
                let v = if *neg {
                    !w.pred[*a as usize]
                } else {
                    w.pred[*a as usize]
                };
                let dp = &mut w.pred[*d as usize];
                *dp = (*dp & !m) | (v & m);
            }
            Op::PredConst { d, value } => {
                let dp = &mut w.pred[*d as usize];
                *dp = if *value { *dp | m } else { *dp & !m };
            }
            Op::PredBin { op, d, a, b } => {
                let v = pred_bool(*op, w.pred[*a as usize], w.pred[*b as usize]);
                let dp = &mut w.pred[*d as usize];
                *dp = (*dp & !m) | (v & m);
            }
            Op::Pack64 { d, lo, hi } => {
                let (x, y) = (&w.r32[*lo as usize], &w.r32[*hi as usize]);
                let mut o = [0u64; 32];
                for l in 0..32 {
                    o[l] = x[l] as u64 | ((y[l] as u64) << 32);
                }
                store64(&mut w.r64[*d as usize], &o, m);
            }
            Op::Pack32 { d, lo, hi } => {
                let (x, y) = (&w.r32[*lo as usize], &w.r32[*hi as usize]);
                let mut o = [0u32; 32];
                for l in 0..32 {
                    o[l] = (x[l] & 0xffff) | (y[l] << 16);
                }
                store32(&mut w.r32[*d as usize], &o, m);
            }
            Op::Unpack64 { lo, hi, a } => {
                let x = w.r64[*a as usize];
                let (mut o1, mut o2) = ([0u32; 32], [0u32; 32]);
                for l in 0..32 {
                    o1[l] = x[l] as u32;
                    o2[l] = (x[l] >> 32) as u32;
                }
                store32(&mut w.r32[*lo as usize], &o1, m);
                store32(&mut w.r32[*hi as usize], &o2, m);
            }
            Op::Unpack32 { lo, hi, a } => {
                let x = w.r32[*a as usize];
                let (mut o1, mut o2) = ([0u32; 32], [0u32; 32]);
                for l in 0..32 {
                    o1[l] = x[l] & 0xffff;
                    o2[l] = x[l] >> 16;
                }
                store32(&mut w.r32[*lo as usize], &o1, m);
                store32(&mut w.r32[*hi as usize], &o2, m);
            }
            Op::LdParam {
                regs,
                wide,
                n,
                width,
                signed,
                offset,
            } => {
                let p = self.ctx.l.params;
                for e in 0..*n as usize {
                    let at = *offset as usize + e * *width as usize;
                    let mut v = 0u64;
                    for (i, byte) in p[at..at + *width as usize].iter().enumerate() {
                        v |= (*byte as u64) << (8 * i);
                    }
                    let v = extend(v, *width, *signed);
                    if wide[e] {
                        store64(&mut w.r64[regs[e] as usize], &[v; 32], m);
                    } else {
                        store32(&mut w.r32[regs[e] as usize], &[v as u32; 32], m);
                    }
                }
            }
            Op::Cvta {
                to_generic,
                space,
                d,
                d_wide,
                a,
                a_wide,
            } => {
                let base = match space {
                    Space::Shared => SHARED_WINDOW,
                    Space::Local => LOCAL_WINDOW,
                    _ => 0,
                };
                let mut o = [0u64; 32];
                for (l, out) in o.iter_mut().enumerate() {
                    let x = if *a_wide {
                        w.r64[*a as usize][l]
                    } else {
                        w.r32[*a as usize][l] as u64
                    };
                    *out = if *to_generic {
                        x.wrapping_add(base)
                    } else {
                        x.wrapping_sub(base)
                    };
                }
                if *d_wide {
                    store64(&mut w.r64[*d as usize], &o, m);
                } else {
                    let o32 = o.map(|x| x as u32);
                    store32(&mut w.r32[*d as usize], &o32, m);
                }
            }
            Op::Ld(mo) => self.load(w, mo, m)?,
            Op::St(mo) => self.store(w, mo, m)?,
            Op::Bra { .. }
            | Op::Exit
            | Op::Bar { .. }
            | Op::WarpSync { .. }
            | Op::Shfl(_)
            | Op::Ldmatrix(_)
            | Op::Mma(_) => {
                unreachable!("control and collectives are handled by run_group")
            }
        }
        Ok(())
    }

    fn setp(
        &self,
        w: &mut Warp,
        r: u32,
        p: Slot,
        q: Slot,
        comb: Option<(PredBool, Slot, bool)>,
        m: u32,
    ) {
        let (mut t, mut f) = (r, !r);
        if let Some((op, c, neg)) = comb {
            let cv = if neg {
                !w.pred[c as usize]
            } else {
                w.pred[c as usize]
            };
            t = pred_bool(op, t, cv);
            f = pred_bool(op, f, cv);
        }
        let dp = &mut w.pred[p as usize];
        *dp = (*dp & !m) | (t & m);
        if q != NONE {
            let dq = &mut w.pred[q as usize];
            *dq = (*dq & !m) | (f & m);
        }
    }

    fn who(&self, w: &Warp, lane: usize) -> Who {
        Who {
            tid: w.index * 32 + lane as u32,
            warp: w.index,
            epoch: self.epoch,
            clock: w.clock,
        }
    }

    fn lane_addr(w: &Warp, slot: Slot, wide: bool, offset: i64, lane: usize) -> u64 {
        let base = if wide {
            w.r64[slot as usize][lane]
        } else {
            w.r32[slot as usize][lane] as u64
        };
        base.wrapping_add(offset as u64)
    }

    /// Resolves `len` bytes at `addr` in `space` for `lane`.
    fn resolve(&mut self, space: MemSpace, addr: u64, len: u64, lane: usize) -> Step<Resolved<'a>> {
        let l = self.ctx.l;
        let (space, addr) = match space {
            MemSpace::Generic => {
                if (SHARED_WINDOW..SHARED_WINDOW + WINDOW).contains(&addr) {
                    (MemSpace::Shared, addr - SHARED_WINDOW)
                } else if (LOCAL_WINDOW..LOCAL_WINDOW + WINDOW).contains(&addr) {
                    (MemSpace::Local, addr - LOCAL_WINDOW)
                } else {
                    (MemSpace::Global, addr)
                }
            }
            s => (s, addr),
        };
        match space {
            MemSpace::Global | MemSpace::Const => {
                if let Some(a) = self.last_alloc {
                    if addr >= a.base
                        && addr.wrapping_add(len) <= a.end()
                        && addr.wrapping_add(len) >= addr
                    {
                        return Ok(Resolved::Global(a));
                    }
                }
                match l.memory.find(addr, len) {
                    Some(a) => {
                        self.last_alloc = Some(a);
                        Ok(Resolved::Global(a))
                    }
                    None => trap(
                        FaultKind::OutOfBounds,
                        lane as u32,
                        format!("global access: {}", l.memory.describe(addr, len)),
                    ),
                }
            }
            MemSpace::Shared => {
                if addr
                    .checked_add(len)
                    .is_none_or(|e| e > self.ctx.smem_len as u64)
                {
                    return trap(
                        FaultKind::OutOfBounds,
                        lane as u32,
                        format!(
                            "shared access of {len} bytes at offset {addr:#x}; the block has {} bytes of shared memory ({} static, {} dynamic)",
                            self.ctx.smem_len,
                            l.kernel.static_smem,
                            l.dynamic_smem
                        ),
                    );
                }
                Ok(Resolved::Shared(addr as usize))
            }
            MemSpace::Local => {
                if addr
                    .checked_add(len)
                    .is_none_or(|e| e > l.kernel.local_bytes as u64)
                {
                    return trap(
                        FaultKind::OutOfBounds,
                        lane as u32,
                        format!("local access of {len} bytes at offset {addr:#x}; each thread has {} bytes", l.kernel.local_bytes),
                    );
                }
                Ok(Resolved::Local(addr as usize))
            }
            MemSpace::Generic => unreachable!(),
        }
    }

    fn conflict(&self, c: Conflict, lane: usize, what: &str, addr: u64) -> Trap {
        let kind = if c == Conflict::Uninitialised {
            FaultKind::Uninitialised
        } else {
            FaultKind::Race
        };
        Trap {
            kind,
            lane: lane as u32,
            detail: format!("{what} at {addr:#x}: {}", c.describe(|t| t / 32)),
        }
    }

    /// Checks and records a read of global bytes (initialisation, other blocks' writes, this
    /// block's unordered writes).
    fn check_global_read(
        &mut self,
        w: &Warp,
        a: &Allocation,
        off: u64,
        len: u64,
        lane: usize,
        nc: bool,
    ) -> Step<()> {
        let checks = self.ctx.l.options.checks;
        let addr = a.base + off;
        if let Some(t) = a.tags_ptr(off) {
            // SAFETY: off + len is within the allocation (resolved above).
            let tags = unsafe { std::slice::from_raw_parts(t, len as usize) };
            let t0 = tags[0];
            let uniform = tags.iter().all(|&x| x == t0);
            let list: &[u64] = if uniform { &tags[..1] } else { tags };
            for (k, &tag) in list.iter().enumerate() {
                if tag == 0 && checks.init {
                    return trap(
                        FaultKind::Uninitialised,
                        lane as u32,
                        format!(
                            "read of {len} bytes at {addr:#x}: byte {} was never written (allocation at {:#x}, {} bytes)",
                            if uniform { 0 } else { k },
                            a.base,
                            a.size
                        ),
                    );
                }
                if checks.races && tag != memory::HOST && (tag >> 32) as u32 == self.ctx.l.seq {
                    let writer = (tag as u32).wrapping_sub(1);
                    if nc {
                        return trap(
                            FaultKind::Race,
                            lane as u32,
                            format!(
                                "ld.global.nc of {addr:#x}, which this launch wrote (block {})",
                                self.block_name(writer)
                            ),
                        );
                    }
                    if writer != self.ctx.block_linear {
                        return trap(
                            FaultKind::BlockRace,
                            lane as u32,
                            format!("read of {addr:#x}, which block {} of this launch wrote (blocks are not ordered)", self.block_name(writer)),
                        );
                    }
                }
            }
        }
        if checks.races {
            if let Some(rt) = a.read_tags_ptr(off) {
                // SAFETY: in range, as above.
                let rtags = unsafe { std::slice::from_raw_parts_mut(rt, len as usize) };
                let seq = self.ctx.l.seq;
                let nc_flag = if nc { memory::READ_NC } else { 0 };
                let mine = memory::kernel_tag(seq, self.ctx.block_linear) | nc_flag;
                for r in rtags.iter_mut() {
                    *r = if (*r >> 32) as u32 != seq {
                        mine
                    } else {
                        let block = (*r as u32 & !(memory::READ_NC as u32)).wrapping_sub(1);
                        let many = if block == self.ctx.block_linear {
                            self.ctx.block_linear
                        } else {
                            memory::MANY_BLOCKS - 1
                        };
                        memory::kernel_tag(seq, many) | (*r & memory::READ_NC) | nc_flag
                    };
                }
            }
            let who = self.who(w, lane);
            let rec = self.global_rec.page(addr);
            if let Err((k, c)) = check::read_range(
                rec,
                (addr % PAGE) as usize,
                len as usize,
                &who,
                |t| t / 32,
                None,
            ) {
                let at = addr - addr % PAGE + k as u64;
                return Err(self.conflict(c, lane, "global read", at));
            }
        }
        Ok(())
    }

    fn check_global_write(
        &mut self,
        w: &Warp,
        a: &Allocation,
        off: u64,
        len: u64,
        lane: usize,
    ) -> Step<()> {
        let checks = self.ctx.l.options.checks;
        let addr = a.base + off;
        let mine = memory::kernel_tag(self.ctx.l.seq, self.ctx.block_linear);
        if let Some(t) = a.tags_ptr(off) {
            // SAFETY: in range, as above.
            let tags = unsafe { std::slice::from_raw_parts_mut(t, len as usize) };
            if checks.races {
                for &tag in tags.iter() {
                    if tag != memory::HOST && tag != mine && (tag >> 32) as u32 == self.ctx.l.seq {
                        let writer = (tag as u32).wrapping_sub(1);
                        return trap(
                            FaultKind::BlockRace,
                            lane as u32,
                            format!(
                                "write of {addr:#x}, which block {} of this launch also wrote",
                                self.block_name(writer)
                            ),
                        );
                    }
                }
            }
            tags.fill(mine);
        }
        if checks.races {
            if let Some(rt) = a.read_tags_ptr(off) {
                // SAFETY: in range, as above.
                let rtags = unsafe { std::slice::from_raw_parts(rt, len as usize) };
                for &r in rtags {
                    if (r >> 32) as u32 != self.ctx.l.seq {
                        continue;
                    }
                    if r & memory::READ_NC != 0 {
                        return trap(
                            FaultKind::Race,
                            lane as u32,
                            format!("write of {addr:#x}, which this launch read with ld.global.nc (the data must not change while the kernel runs)"),
                        );
                    }
                    let reader = (r as u32).wrapping_sub(1);
                    if reader != self.ctx.block_linear {
                        let who = if reader == memory::MANY_BLOCKS - 1 {
                            "several blocks".to_string()
                        } else {
                            format!("block {}", self.block_name(reader))
                        };
                        return trap(
                            FaultKind::BlockRace,
                            lane as u32,
                            format!("write of {addr:#x}, which {who} of this launch read (blocks are not ordered)"),
                        );
                    }
                }
            }
            let who = self.who(w, lane);
            let rec = self.global_rec.page(addr);
            if let Err((k, c)) =
                check::write_range(rec, (addr % PAGE) as usize, len as usize, &who, |t| t / 32)
            {
                let at = addr - addr % PAGE + k as u64;
                return Err(self.conflict(c, lane, "global write", at));
            }
        }
        Ok(())
    }

    fn block_name(&self, linear: u32) -> String {
        let g = self.ctx.l.grid;
        format!(
            "({},{},{})",
            linear % g[0],
            (linear / g[0]) % g[1],
            linear / (g[0] * g[1])
        )
    }

    fn check_shared_read(&mut self, w: &Warp, off: usize, len: usize, lane: usize) -> Step<()> {
        let checks = self.ctx.l.options.checks;
        if !checks.init && !checks.races {
            return Ok(());
        }
        let who = self.who(w, lane);
        let start = checks.init.then_some(self.ctx.block_start);
        if checks.races {
            if let Err((k, c)) =
                check::read_range(self.shared_rec, off, len, &who, |t| t / 32, start)
            {
                return Err(self.conflict(c, lane, "shared read", k as u64));
            }
        } else if let Some(s) = start {
            // Initialisation only: was every byte written in this block?
            if let Some(k) = (off..off + len).find(|&k| (self.shared_rec.w[k] >> 32) < s as u64) {
                return Err(self.conflict(Conflict::Uninitialised, lane, "shared read", k as u64));
            }
        }
        Ok(())
    }

    fn check_shared_write(&mut self, w: &Warp, off: usize, len: usize, lane: usize) -> Step<()> {
        let checks = self.ctx.l.options.checks;
        if !checks.init && !checks.races {
            return Ok(());
        }
        let who = self.who(w, lane);
        if checks.races {
            if let Err((k, c)) = check::write_range(self.shared_rec, off, len, &who, |t| t / 32) {
                return Err(self.conflict(c, lane, "shared write", k as u64));
            }
        } else {
            self.shared_rec.w[off..off + len].fill(((who.epoch as u64) << 32) | who.tid as u64);
        }
        Ok(())
    }

    #[inline(never)]
    fn load(&mut self, w: &mut Warp, mo: &MemOp, m: u32) -> Step<()> {
        // A power of two (1, 2, 4 or 8 bytes, times 1, 2 or 4 elements).
        let total = mo.width as u64 * mo.n as u64;
        let local_bytes = self.ctx.l.kernel.local_bytes as usize;
        let checks = self.ctx.l.options.checks;
        let checking = checks.init || checks.races;
        // Consecutive lanes reading one address (a broadcast): checking the first two of the
        // run is the same as checking all. At most one of them can be the byte's writer, and
        // whether an access is ordered depends on the warp and its clock, not the lane; from
        // the second reader on, the read record says "several lanes of this warp".
        let (mut run_addr, mut run_len) = (u64::MAX, 0u32);
        for lane in 0..32 {
            if !bit(m, lane) {
                continue;
            }
            let addr = Self::lane_addr(w, mo.addr, mo.addr_wide, mo.offset, lane);
            if addr & (total - 1) != 0 {
                return trap(
                    FaultKind::Misaligned,
                    lane as u32,
                    format!("a {total}-byte load at {addr:#x}"),
                );
            }
            if addr == run_addr {
                run_len += 1;
            } else {
                (run_addr, run_len) = (addr, 1);
            }
            let check = checking && run_len <= 2;
            if mo.space == MemSpace::Shared
                && addr.wrapping_add(total) <= self.ctx.smem_len as u64
                && addr < addr.wrapping_add(total)
            {
                let off = addr as usize;
                if check {
                    self.check_shared_read(w, off, total as usize, lane)?;
                }
                for e in 0..mo.n as usize {
                    let at = off + e * mo.width as usize;
                    // SAFETY: at + width <= off + total <= smem_len, checked above.
                    let v =
                        unsafe { read_element(self.smem.as_ptr().add(at), mo.width, mo.signed) };
                    if mo.wide[e] {
                        w.r64[mo.regs[e] as usize][lane] = v;
                    } else {
                        w.r32[mo.regs[e] as usize][lane] = v as u32;
                    }
                }
                continue;
            }
            let p: *const u8 = match self.resolve(mo.space, addr, total, lane)? {
                Resolved::Global(a) => {
                    let off = addr - a.base;
                    if check {
                        self.check_global_read(w, a, off, total, lane, mo.nc)?;
                    }
                    a.ptr(off)
                }
                Resolved::Shared(off) => {
                    if check {
                        self.check_shared_read(w, off, total as usize, lane)?;
                    }
                    // SAFETY: resolve checked off + total against the block's shared memory.
                    unsafe { self.smem.as_ptr().add(off) }
                }
                // SAFETY: resolve checked off + total against the thread's local memory.
                Resolved::Local(off) => unsafe { w.local.as_ptr().add(lane * local_bytes + off) },
            };
            // Each lane's registers take its own value as it goes (a masked write, lane by
            // lane); the lane's address was read above, so `ld r, [r]` is fine.
            for e in 0..mo.n as usize {
                // SAFETY: p points at `total` readable bytes.
                let v = unsafe { read_element(p.add(e * mo.width as usize), mo.width, mo.signed) };
                if mo.wide[e] {
                    w.r64[mo.regs[e] as usize][lane] = v;
                } else {
                    w.r32[mo.regs[e] as usize][lane] = v as u32;
                }
            }
        }
        Ok(())
    }

    #[inline(never)]
    fn store(&mut self, w: &mut Warp, mo: &MemOp, m: u32) -> Step<()> {
        let total = mo.width as u64 * mo.n as u64;
        let local_bytes = self.ctx.l.kernel.local_bytes as usize;
        for lane in 0..32 {
            if !bit(m, lane) {
                continue;
            }
            let addr = Self::lane_addr(w, mo.addr, mo.addr_wide, mo.offset, lane);
            if addr & (total - 1) != 0 {
                return trap(
                    FaultKind::Misaligned,
                    lane as u32,
                    format!("a {total}-byte store at {addr:#x}"),
                );
            }
            let p: *mut u8 = match self.resolve(mo.space, addr, total, lane)? {
                Resolved::Global(a) => {
                    let off = addr - a.base;
                    self.check_global_write(w, a, off, total, lane)?;
                    a.ptr(off)
                }
                Resolved::Shared(off) => {
                    self.check_shared_write(w, off, total as usize, lane)?;
                    // SAFETY: resolve checked the range.
                    unsafe { self.smem.as_mut_ptr().add(off) }
                }
                // SAFETY: resolve checked the range.
                Resolved::Local(off) => unsafe {
                    w.local.as_mut_ptr().add(lane * local_bytes + off)
                },
            };
            for e in 0..mo.n as usize {
                let v = if mo.wide[e] {
                    w.r64[mo.regs[e] as usize][lane]
                } else {
                    w.r32[mo.regs[e] as usize][lane] as u64
                };
                // SAFETY: p points at `total` writable bytes.
                unsafe { write_element(p.add(e * mo.width as usize), mo.width, v) };
            }
        }
        Ok(())
    }

    /// `shfl.sync` (ISA §9.7.8.6): lane j's `a` to each lane, by mode, with the clamp and
    /// segment mask of `c`.
    #[inline(never)]
    fn shfl(&mut self, w: &mut Warp, s: &Shfl, m: u32) -> Step<()> {
        let mm = &w.r32[s.membermask as usize];
        let member = mm[m.trailing_zeros() as usize];
        let differ = (0..32).fold(0u32, |acc, l| acc | (((mm[l] != member) as u32) << l)) & m;
        if differ != 0 {
            return trap(
                FaultKind::Divergence,
                differ.trailing_zeros(),
                "shfl.sync lanes disagree on membermask".into(),
            );
        }
        if m & !member != 0 {
            return trap(
                FaultKind::Divergence,
                (m & !member).trailing_zeros(),
                format!(
                    "lanes {} execute shfl.sync but are not in its membermask {member:#010x}",
                    lanes_text(m & !member)
                ),
            );
        }
        let (b, c) = (&w.r32[s.b as usize], &w.r32[s.c as usize]);
        // Source lane j and predicate of every lane, per the ISA's pseudocode; a lane whose
        // predicate is false reads itself.
        let mut j = [0u32; 32];
        let mut p = 0u32;
        macro_rules! sources {
            (|$l:ident, $bval:ident, $max:ident, $min:ident, $seg:ident| $calc:expr) => {
                for lane in 0..32usize {
                    let $l = lane as i32;
                    let $bval = (b[lane] & 0x1f) as i32;
                    let cval = (c[lane] & 0x1f) as i32;
                    let $seg = ((c[lane] >> 8) & 0x1f) as i32;
                    let $max = ($l & $seg) | (cval & !$seg);
                    let $min = $l & $seg;
                    let (src, pval): (i32, bool) = $calc;
                    j[lane] = if pval { src as u32 } else { lane as u32 };
                    p |= (pval as u32) << lane;
                }
            };
        }
        match s.mode {
            ShflMode::Up => sources!(|l, bval, max, _min, _seg| (l - bval, l - bval >= max)),
            ShflMode::Down => sources!(|l, bval, max, _min, _seg| (l + bval, l + bval <= max)),
            ShflMode::Bfly => sources!(|l, bval, max, _min, _seg| (l ^ bval, (l ^ bval) <= max)),
            ShflMode::Idx => sources!(|_l, bval, max, min, seg| {
                let src = min | (bval & !seg);
                (src, src <= max)
            }),
        }
        let read = (0..32).fold(0u32, |acc, l| acc | if bit(m, l) { 1 << j[l] } else { 0 });
        if read & !m != 0 {
            let bad = (0..32)
                .find(|&l| bit(m, l) && !bit(m, j[l] as usize))
                .unwrap_or(0);
            return trap(
                FaultKind::Divergence,
                bad as u32,
                format!(
                    "shfl.sync reads lane {}, which does not execute it (exited or inactive): the value is undefined",
                    j[bad]
                ),
            );
        }
        let a = &w.r32[s.a as usize];
        let d: [u32; 32] = std::array::from_fn(|l| a[j[l] as usize & 31]);
        store32(&mut w.r32[s.d as usize], &d, m);
        if s.p != NONE {
            let dp = &mut w.pred[s.p as usize];
            *dp = (*dp & !m) | (p & m);
        }
        Ok(())
    }

    fn aligned_full(&self, w: &Warp, what: &str, m: u32, mask: u32) -> Step<()> {
        let live = !w.exited;
        if m != live || mask != live {
            let missing = live & !m;
            return trap(
                FaultKind::Divergence,
                missing.trailing_zeros().min(31),
                format!(
                    "{what} is .sync.aligned: every non-exited lane of the warp must execute it, but lanes {} do not{}",
                    lanes_text(missing),
                    if w.exited != 0 { format!(" (lanes {} exited)", lanes_text(w.exited)) } else { String::new() }
                ),
            );
        }
        if w.exited != 0 {
            return trap(
                FaultKind::Divergence,
                w.exited.trailing_zeros(),
                format!(
                    "{what} with lanes {} exited: the ISA leaves it undefined",
                    lanes_text(w.exited)
                ),
            );
        }
        Ok(())
    }

    /// `ldmatrix.sync.aligned.m8n8.{x1,x2,x4}[.trans].shared.b16` (ISA §9.7.14.5.15): lane L of
    /// the first 8·num lanes gives the address of row L%8 of matrix L/8; register i of lane L
    /// receives matrix i's elements (L/4, 2(L%4)) and (L/4, 2(L%4)+1), or with `.trans` the
    /// elements (2(L%4), L/4) and (2(L%4)+1, L/4).
    #[inline(never)]
    fn ldmatrix(&mut self, w: &mut Warp, x: &Ldmatrix, m: u32, mask: u32) -> Step<()> {
        self.aligned_full(w, "ldmatrix", m, mask)?;
        let mut rows = [[0u16; 8]; 32];
        #[allow(clippy::needless_range_loop)]
        for lane in 0..8 * x.num as usize {
            let addr = Self::lane_addr(w, x.addr, x.addr_wide, x.offset, lane);
            if addr % 16 != 0 {
                return trap(
                    FaultKind::Misaligned,
                    lane as u32,
                    format!("ldmatrix row address {addr:#x} is not 16-byte aligned"),
                );
            }
            let space = if x.generic {
                MemSpace::Generic
            } else {
                MemSpace::Shared
            };
            let off = match self.resolve(space, addr, 16, lane)? {
                Resolved::Shared(off) => off,
                _ => {
                    return trap(
                        FaultKind::OutOfBounds,
                        lane as u32,
                        format!("ldmatrix address {addr:#x} is not in shared memory"),
                    )
                }
            };
            self.check_shared_read(w, off, 16, lane)?;
            for (e, v) in rows[lane].iter_mut().enumerate() {
                *v = u16::from_le_bytes([self.smem[off + 2 * e], self.smem[off + 2 * e + 1]]);
            }
        }
        for i in 0..x.num as usize {
            let mut o = [0u32; 32];
            for (lane, out) in o.iter_mut().enumerate() {
                let (r, c) = (lane / 4, 2 * (lane % 4));
                let (lo, hi) = if x.trans {
                    (rows[i * 8 + c][r], rows[i * 8 + c + 1][r])
                } else {
                    (rows[i * 8 + r][c], rows[i * 8 + r][c + 1])
                };
                *out = lo as u32 | ((hi as u32) << 16);
            }
            store32(&mut w.r32[x.d[i] as usize], &o, m);
        }
        Ok(())
    }

    /// `mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}` (ISA §9.7.14.5.8, "Matrix fragments
    /// for mma.m16n8k16 with floating point type"): with g = lane/4 and t = lane%4, A's registers
    /// hold (g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..); B's (k = 2t..2t+1, n = g) and
    /// (k = 2t+8.., n = g); C and D (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1). Products of
    /// 16-bit values are exact in f32; each dot product is summed in f64 and rounded once.
    #[inline(never)]
    fn mma(&mut self, w: &mut Warp, x: &Mma, m: u32, mask: u32) -> Step<()> {
        self.aligned_full(w, "mma", m, mask)?;
        let table = f16_table();
        let cv = |h: u32| -> f32 {
            match x.ty {
                MmaType::F16 => table[(h & 0xffff) as usize],
                MmaType::BF16 => f32::from_bits((h & 0xffff) << 16),
            }
        };
        let mut a = [[0f64; 16]; 16];
        let mut b = [[0f64; 8]; 16]; // b[k][n]
        let mut c = [[0f64; 8]; 16];
        for lane in 0..32 {
            let (g, t) = (lane / 4, lane % 4);
            for (r, &slot) in x.a.iter().enumerate() {
                let v = w.r32[slot as usize][lane];
                let row = g + 8 * (r & 1);
                let col = 2 * t + 8 * (r >> 1);
                a[row][col] = cv(v) as f64;
                a[row][col + 1] = cv(v >> 16) as f64;
            }
            for (r, &slot) in x.b.iter().enumerate() {
                let v = w.r32[slot as usize][lane];
                let k = 2 * t + 8 * r;
                b[k][g] = cv(v) as f64;
                b[k + 1][g] = cv(v >> 16) as f64;
            }
            for (r, &slot) in x.c.iter().enumerate() {
                let v = f32::from_bits(w.r32[slot as usize][lane]);
                c[g + 8 * (r >> 1)][2 * t + (r & 1)] = v as f64;
            }
        }
        // D = C + A·B, each sum in k order (products are exact); the 8 columns of a row go
        // together so the loop vectorises without reordering any sum.
        let mut acc = c;
        for row in 0..16 {
            let out = &mut acc[row];
            for k in 0..16 {
                let av = a[row][k];
                let bk = &b[k];
                for col in 0..8 {
                    out[col] += av * bk[col];
                }
            }
        }
        let mut d = [[0u32; 32]; 4];
        for lane in 0..32 {
            let (g, t) = (lane / 4, lane % 4);
            for (r, out) in d.iter_mut().enumerate() {
                out[lane] = fp::canon(acc[g + 8 * (r >> 1)][2 * t + (r & 1)] as f32);
            }
        }
        for (r, &slot) in x.d.iter().enumerate() {
            store32(&mut w.r32[slot as usize], &d[r], m);
        }
        Ok(())
    }
}

/// One little-endian element of `width` bytes at `p`, sign- or zero-extended.
///
/// # Safety
/// `p` must point at `width` readable bytes.
#[inline(always)]
unsafe fn read_element(p: *const u8, width: u8, signed: bool) -> u64 {
    // SAFETY: the caller's pointer; unaligned reads are allowed here (alignment was checked
    // against the emulated address, not the host's).
    unsafe {
        match width {
            1 => extend(*p as u64, 1, signed),
            2 => extend(
                u16::from_le(std::ptr::read_unaligned(p as *const u16)) as u64,
                2,
                signed,
            ),
            4 => extend(
                u32::from_le(std::ptr::read_unaligned(p as *const u32)) as u64,
                4,
                signed,
            ),
            _ => u64::from_le(std::ptr::read_unaligned(p as *const u64)),
        }
    }
}

/// Writes the low `width` bytes of `v` at `p`, little-endian.
///
/// # Safety
/// `p` must point at `width` writable bytes.
#[inline(always)]
unsafe fn write_element(p: *mut u8, width: u8, v: u64) {
    // SAFETY: the caller's pointer.
    unsafe {
        match width {
            1 => *p = v as u8,
            2 => std::ptr::write_unaligned(p as *mut u16, (v as u16).to_le()),
            4 => std::ptr::write_unaligned(p as *mut u32, (v as u32).to_le()),
            _ => std::ptr::write_unaligned(p as *mut u64, v.to_le()),
        }
    }
}

#[inline(always)]
fn extend(v: u64, width: u8, signed: bool) -> u64 {
    if width >= 8 {
        return v;
    }
    let bits = width as u32 * 8;
    if signed {
        let s = 64 - bits;
        (((v << s) as i64) >> s) as u64
    } else {
        v & ((1u64 << bits) - 1)
    }
}
