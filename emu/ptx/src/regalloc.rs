//! Register compaction: NVRTC's PTX names thousands of virtual registers (an unrolled kernel has
//! ~4,800), each a 128- or 256-byte slot per warp. This pass renames them onto as few slots as
//! their live ranges allow, which keeps a warp's register file in cache.
//!
//! Soundness rests on two facts of the interpreter. A masked write touches only active lanes,
//! so each lane's slots change only by that lane's own instructions: per lane, liveness is the
//! plain single-thread liveness of the PTX. And collectives read other lanes' registers only
//! at the instruction all of them execute together, where the value is live in each lane's own
//! program. A guarded instruction's destination keeps its old value in lanes where the guard is
//! false, so a guarded definition does not end the previous value's life.
//!
//! Liveness is the usual backward dataflow over basic blocks; each register then gets the hull
//! of the instructions where it is live or defined, and a linear scan gives slots to hulls that
//! do not overlap. Constants and special registers are live everywhere and keep slots of their
//! own.

use crate::ir::*;

/// The register file of a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum File {
    R32,
    R64,
    Pred,
}

/// How an instruction uses a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    /// Read and written in place: visited once, so renaming maps it once.
    Both,
}

/// Every register slot of `op`, once each, with its file and access. Reads are visited before
/// writes.
pub fn visit(op: &mut Op, f: &mut impl FnMut(File, &mut Slot, Access)) {
    use File::*;
    macro_rules! r {
        ($file:expr, $s:expr) => {
            f($file, $s, Access::Read)
        };
    }
    macro_rules! w {
        ($file:expr, $s:expr) => {
            f($file, $s, Access::Write)
        };
    }
    match op {
        Op::Mov32 { d, a } | Op::Un32 { d, a, .. } => {
            r!(R32, a);
            w!(R32, d);
        }
        Op::Mov64 { d, a } | Op::Un64 { d, a, .. } => {
            r!(R64, a);
            w!(R64, d);
        }
        Op::Bin32 { d, a, b, .. } | Op::Div32 { d, a, b, .. } => {
            r!(R32, a);
            r!(R32, b);
            w!(R32, d);
        }
        Op::Tern32 { d, a, b, c, .. } => {
            r!(R32, a);
            r!(R32, b);
            r!(R32, c);
            w!(R32, d);
        }
        Op::Bin64 { d, a, b, .. } | Op::Div64 { d, a, b, .. } => {
            r!(R64, a);
            r!(R64, b);
            w!(R64, d);
        }
        Op::Tern64 { d, a, b, c, .. } => {
            r!(R64, a);
            r!(R64, b);
            r!(R64, c);
            w!(R64, d);
        }
        Op::Shift64 { d, a, b, .. } => {
            r!(R64, a);
            r!(R32, b);
            w!(R64, d);
        }
        Op::Wide { d, a, b, .. } => {
            r!(R32, a);
            r!(R32, b);
            w!(R64, d);
        }
        Op::MadWide { d, a, b, c, .. } => {
            r!(R32, a);
            r!(R32, b);
            r!(R64, c);
            w!(R64, d);
        }
        Op::Widen { d, a, .. } => {
            r!(R32, a);
            w!(R64, d);
        }
        Op::Narrow { d, a, .. } => {
            r!(R64, a);
            w!(R32, d);
        }
        Op::Clamp16 { d, .. } => f(R32, d, Access::Both),
        Op::Bfi32 { d, a, b, pos, len } => {
            r!(R32, a);
            r!(R32, b);
            r!(R32, pos);
            r!(R32, len);
            w!(R32, d);
        }
        Op::Bfi64 { d, a, b, pos, len } => {
            r!(R64, a);
            r!(R64, b);
            r!(R32, pos);
            r!(R32, len);
            w!(R64, d);
        }
        Op::Setp32 {
            p, q, a, b, comb, ..
        } => {
            r!(R32, a);
            r!(R32, b);
            if let Some((_, c, _)) = comb {
                r!(Pred, c);
            }
            w!(Pred, p);
            if *q != NONE {
                w!(Pred, q);
            }
        }
        Op::Setp64 {
            p, q, a, b, comb, ..
        } => {
            r!(R64, a);
            r!(R64, b);
            if let Some((_, c, _)) = comb {
                r!(Pred, c);
            }
            w!(Pred, p);
            if *q != NONE {
                w!(Pred, q);
            }
        }
        Op::Selp32 { d, a, b, p } => {
            r!(R32, a);
            r!(R32, b);
            r!(Pred, p);
            w!(R32, d);
        }
        Op::Selp64 { d, a, b, p } => {
            r!(R64, a);
            r!(R64, b);
            r!(Pred, p);
            w!(R64, d);
        }
        Op::PredMov { d, a, .. } => {
            r!(Pred, a);
            w!(Pred, d);
        }
        Op::PredConst { d, .. } => w!(Pred, d),
        Op::PredBin { d, a, b, .. } => {
            r!(Pred, a);
            r!(Pred, b);
            w!(Pred, d);
        }
        Op::Pack64 { d, lo, hi } => {
            r!(R32, lo);
            r!(R32, hi);
            w!(R64, d);
        }
        Op::Pack32 { d, lo, hi } => {
            r!(R32, lo);
            r!(R32, hi);
            w!(R32, d);
        }
        Op::Unpack64 { lo, hi, a } => {
            r!(R64, a);
            w!(R32, lo);
            w!(R32, hi);
        }
        Op::Unpack32 { lo, hi, a } => {
            r!(R32, a);
            w!(R32, lo);
            w!(R32, hi);
        }
        Op::Ld(m) => {
            r!(if m.addr_wide { R64 } else { R32 }, &mut m.addr);
            for e in 0..m.n as usize {
                w!(if m.wide[e] { R64 } else { R32 }, &mut m.regs[e]);
            }
        }
        Op::St(m) => {
            r!(if m.addr_wide { R64 } else { R32 }, &mut m.addr);
            for e in 0..m.n as usize {
                r!(if m.wide[e] { R64 } else { R32 }, &mut m.regs[e]);
            }
        }
        Op::LdParam { regs, wide, n, .. } => {
            for e in 0..*n as usize {
                w!(if wide[e] { R64 } else { R32 }, &mut regs[e]);
            }
        }
        Op::Cvta {
            d,
            d_wide,
            a,
            a_wide,
            ..
        } => {
            r!(if *a_wide { R64 } else { R32 }, a);
            w!(if *d_wide { R64 } else { R32 }, d);
        }
        Op::Bra { .. } | Op::Exit | Op::Bar { .. } => {}
        Op::WarpSync { membermask } => r!(R32, membermask),
        Op::Shfl(s) => {
            r!(R32, &mut s.a);
            r!(R32, &mut s.b);
            r!(R32, &mut s.c);
            r!(R32, &mut s.membermask);
            w!(R32, &mut s.d);
            if s.p != NONE {
                w!(Pred, &mut s.p);
            }
        }
        Op::Ldmatrix(x) => {
            r!(if x.addr_wide { R64 } else { R32 }, &mut x.addr);
            for k in 0..x.num as usize {
                w!(R32, &mut x.d[k]);
            }
        }
        Op::Mma(x) => {
            for s in x.a.iter_mut().chain(x.b.iter_mut()).chain(x.c.iter_mut()) {
                r!(R32, s);
            }
            for s in x.d.iter_mut() {
                w!(R32, s);
            }
        }
    }
}

/// A growable bitset.
#[derive(Clone)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
    /// self |= other; whether anything changed.
    fn union(&mut self, other: &Bits) -> bool {
        let mut changed = false;
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            let n = *a | b;
            changed |= n != *a;
            *a = n;
        }
        changed
    }
    fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &bits)| {
            let mut b = bits;
            std::iter::from_fn(move || {
                if b == 0 {
                    return None;
                }
                let t = b.trailing_zeros() as usize;
                b &= b - 1;
                Some(w * 64 + t)
            })
        })
    }
}

/// Renames the registers of `k` onto few slots.
pub fn compact(k: &mut Kernel) {
    let n = k.code.len();
    if n == 0 {
        return;
    }
    let files = [File::R32, File::R64, File::Pred];
    let count = |f: File| match f {
        File::R32 => k.n32 as usize,
        File::R64 => k.n64 as usize,
        File::Pred => k.npred as usize,
    };
    // A global numbering of (file, slot): R32 first, then R64, then Pred.
    let base = [0, k.n32 as usize, (k.n32 + k.n64) as usize];
    let total = (k.n32 + k.n64 + k.npred) as usize;
    let index = |f: File, s: Slot| -> usize {
        base[match f {
            File::R32 => 0,
            File::R64 => 1,
            File::Pred => 2,
        }] + s as usize
    };

    // Uses and definitions of every instruction (a guarded definition also reads its slot).
    let mut uses: Vec<Vec<usize>> = Vec::with_capacity(n);
    let mut defs: Vec<Vec<usize>> = Vec::with_capacity(n);
    for inst in &mut k.code {
        let (mut u, mut d) = (Vec::new(), Vec::new());
        let guarded = inst.guard != NONE;
        if guarded {
            u.push(index(File::Pred, inst.guard));
        }
        visit(&mut inst.op, &mut |f, s, access| {
            let i = index(f, *s);
            if access != Access::Write || guarded {
                u.push(i);
            }
            if access != Access::Read {
                d.push(i);
            }
        });
        uses.push(u);
        defs.push(d);
    }

    // Basic blocks and their successors.
    let mut starts: Vec<usize> = (0..n).filter(|&i| k.code[i].leader).collect();
    if starts.first() != Some(&0) {
        starts.insert(0, 0);
    }
    let block_of = {
        let mut b = vec![0usize; n];
        for (bi, w) in starts.iter().enumerate() {
            let end = starts.get(bi + 1).copied().unwrap_or(n);
            b[*w..end].fill(bi);
        }
        b
    };
    let nb = starts.len();
    let end_of = |bi: usize| starts.get(bi + 1).copied().unwrap_or(n);
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); nb];
    for bi in 0..nb {
        // Branches may sit inside a block only at its end (the next instruction is a leader);
        // a mid-block exit or branch still falls through when guarded.
        for i in starts[bi]..end_of(bi) {
            let inst = &k.code[i];
            let unconditional = inst.guard == NONE;
            match inst.op {
                Op::Bra { target, .. } => {
                    succ[bi].push(block_of[target as usize]);
                    if !unconditional && i + 1 < n {
                        succ[bi].push(block_of[i + 1]);
                    }
                }
                Op::Exit if unconditional => {}
                _ if i + 1 == end_of(bi) && i + 1 < n => succ[bi].push(block_of[i + 1]),
                _ => {}
            }
        }
        succ[bi].sort_unstable();
        succ[bi].dedup();
    }

    // Block-level gen/kill, then live-in/out to a fixed point.
    let mut gen = vec![Bits::new(total); nb];
    let mut kill = vec![Bits::new(total); nb];
    for bi in 0..nb {
        let (g, kl) = (&mut gen[bi], &mut kill[bi]);
        for i in (starts[bi]..end_of(bi)).rev() {
            for &d in &defs[i] {
                g.clear(d);
                kl.set(d);
            }
            for &u in &uses[i] {
                g.set(u);
            }
        }
    }
    let mut live_in = gen.clone();
    let mut live_out = vec![Bits::new(total); nb];
    let mut changed = true;
    while changed {
        changed = false;
        for bi in (0..nb).rev() {
            let mut out = Bits::new(total);
            for &s in &succ[bi] {
                out.union(&live_in[s]);
            }
            let mut inn = out.clone();
            for (x, kl) in inn.0.iter_mut().zip(&kill[bi].0) {
                *x &= !kl;
            }
            inn.union(&gen[bi]);
            live_out[bi] = out;
            if live_in[bi].union(&inn) {
                changed = true;
            }
        }
    }

    // Hull of positions where each register is live or defined.
    let mut lo = vec![usize::MAX; total];
    let mut hi = vec![0usize; total];
    let touch = |r: usize, p: usize, lo: &mut Vec<usize>, hi: &mut Vec<usize>| {
        lo[r] = lo[r].min(p);
        hi[r] = hi[r].max(p);
    };
    for bi in 0..nb {
        let mut live = live_out[bi].clone();
        let end = end_of(bi);
        for r in live.ones() {
            touch(r, end - 1, &mut lo, &mut hi);
        }
        for i in (starts[bi]..end).rev() {
            for &d in &defs[i] {
                touch(d, i, &mut lo, &mut hi);
                live.clear(d);
            }
            for &u in &uses[i] {
                touch(u, i, &mut lo, &mut hi);
                live.set(u);
            }
            for r in live.ones() {
                touch(r, i, &mut lo, &mut hi);
            }
        }
    }
    // Constants and special registers are filled before the warp runs: live everywhere.
    let mut pinned = vec![false; total];
    for &(s, _) in &k.consts32 {
        pinned[index(File::R32, s)] = true;
    }
    for &(s, _) in &k.specials {
        pinned[index(File::R32, s)] = true;
    }
    for &(s, _) in &k.consts64 {
        pinned[index(File::R64, s)] = true;
    }

    // Linear scan per file.
    let mut map = vec![NONE; total];
    let mut sizes = [0u32; 3];
    for (fi, &f) in files.iter().enumerate() {
        let regs: Vec<usize> = (0..count(f)).map(|s| base[fi] + s).collect();
        let mut next = 0u32;
        for &r in regs.iter().filter(|&&r| pinned[r]) {
            map[r] = next;
            next += 1;
        }
        let mut order: Vec<usize> = regs
            .iter()
            .copied()
            .filter(|&r| !pinned[r] && lo[r] != usize::MAX)
            .collect();
        order.sort_unstable_by_key(|&r| (lo[r], r));
        // (end, slot) of the intervals holding a slot, and the free slots.
        let mut active: std::collections::BinaryHeap<std::cmp::Reverse<(usize, u32)>> =
            Default::default();
        let mut free: std::collections::BinaryHeap<std::cmp::Reverse<u32>> = Default::default();
        for r in order {
            while let Some(&std::cmp::Reverse((end, slot))) = active.peek() {
                if end < lo[r] {
                    active.pop();
                    free.push(std::cmp::Reverse(slot));
                } else {
                    break;
                }
            }
            let slot = free.pop().map(|std::cmp::Reverse(s)| s).unwrap_or_else(|| {
                next += 1;
                next - 1
            });
            map[r] = slot;
            active.push(std::cmp::Reverse((hi[r], slot)));
        }
        sizes[fi] = next.max(1);
    }

    // Rename. Registers never touched keep NONE, which no instruction mentions.
    for inst in &mut k.code {
        if inst.guard != NONE {
            inst.guard = map[index(File::Pred, inst.guard)];
        }
        visit(&mut inst.op, &mut |f, s, _| {
            *s = map[index(f, *s)];
        });
    }
    for (s, _) in &mut k.consts32 {
        *s = map[index(File::R32, *s)];
    }
    for (s, _) in &mut k.specials {
        *s = map[index(File::R32, *s)];
    }
    for (s, _) in &mut k.consts64 {
        *s = map[index(File::R64, *s)];
    }
    k.n32 = sizes[0];
    k.n64 = sizes[1];
    k.npred = sizes[2];
}
