//! The decoded form of a kernel: instructions over numbered register slots, resolved branch
//! targets, and the tables the interpreter needs (constants, special registers, parameter and
//! shared-memory layout, source positions).
//!
//! Registers live in three files per warp: 32 lanes of u32 (every 16- and 32-bit register), 32
//! lanes of u64, and one 32-bit lane mask per predicate. Immediates and special registers are
//! slots too, filled before a warp runs, so every operand is a slot and no instruction branches
//! on its operands' kinds.

use crate::alu;
use crate::parse::Space;

/// An index into one of a warp's register files.
pub type Slot = u32;
/// No slot (an absent guard or second predicate destination).
pub const NONE: Slot = u32::MAX;

/// A special register (ISA §10), read as a u32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Special {
    Tid(u8),
    Ntid(u8),
    Ctaid(u8),
    Nctaid(u8),
    LaneId,
    WarpId,
    NWarpId,
    LaneMaskEq,
    LaneMaskLt,
    LaneMaskLe,
    LaneMaskGt,
    LaneMaskGe,
}

/// Where a memory instruction goes; `Generic` decides per address (ISA §5.1.7, generic
/// addressing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemSpace {
    Global,
    Shared,
    Local,
    Const,
    Generic,
}

/// A load or a store of 1, 2 or 4 elements.
#[derive(Clone, Debug)]
pub struct MemOp {
    pub space: MemSpace,
    /// Bytes per element: 1, 2, 4 or 8.
    pub width: u8,
    /// Loaded elements narrower than their register are sign-extended.
    pub signed: bool,
    pub n: u8,
    pub regs: [Slot; 4],
    /// Whether each element's register is in the 64-bit file.
    pub wide: [bool; 4],
    pub addr: Slot,
    pub addr_wide: bool,
    pub offset: i64,
    /// `ld.global.nc`: the bytes must not be written during the launch.
    pub nc: bool,
}

/// Predicate combinations (`and/or/xor .pred`, and `setp`'s optional combining operation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PredBool {
    And,
    Or,
    Xor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShflMode {
    Up,
    Down,
    Bfly,
    Idx,
}

#[derive(Clone, Debug)]
pub struct Shfl {
    pub mode: ShflMode,
    pub d: Slot,
    /// The optional predicate destination (`%r|%p`), or `NONE`.
    pub p: Slot,
    pub a: Slot,
    pub b: Slot,
    pub c: Slot,
    pub membermask: Slot,
}

#[derive(Clone, Debug)]
pub struct Ldmatrix {
    /// 1, 2 or 4 matrices.
    pub num: u8,
    pub trans: bool,
    pub d: [Slot; 4],
    pub addr: Slot,
    pub addr_wide: bool,
    pub offset: i64,
    /// The address operand is generic (no `.shared`).
    pub generic: bool,
}

/// The element type of an mma's A and B operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmaType {
    F16,
    BF16,
}

/// `mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32`.
#[derive(Clone, Debug)]
pub struct Mma {
    pub ty: MmaType,
    pub d: [Slot; 4],
    pub a: [Slot; 4],
    pub b: [Slot; 2],
    pub c: [Slot; 4],
}

#[derive(Clone, Debug)]
pub enum Op {
    Mov32 {
        d: Slot,
        a: Slot,
    },
    Mov64 {
        d: Slot,
        a: Slot,
    },
    Un32 {
        f: alu::Un32,
        d: Slot,
        a: Slot,
    },
    Bin32 {
        f: alu::Bin32,
        d: Slot,
        a: Slot,
        b: Slot,
    },
    Tern32 {
        f: alu::Tern32,
        d: Slot,
        a: Slot,
        b: Slot,
        c: Slot,
    },
    Un64 {
        f: alu::Un64,
        d: Slot,
        a: Slot,
    },
    Bin64 {
        f: alu::Bin64,
        d: Slot,
        a: Slot,
        b: Slot,
    },
    Tern64 {
        f: alu::Tern64,
        d: Slot,
        a: Slot,
        b: Slot,
        c: Slot,
    },
    Shift64 {
        f: alu::Shift64,
        d: Slot,
        a: Slot,
        b: Slot,
    },
    Wide {
        f: alu::Wide,
        d: Slot,
        a: Slot,
        b: Slot,
    },
    MadWide {
        f: alu::MadWide,
        d: Slot,
        a: Slot,
        b: Slot,
        c: Slot,
    },
    Widen {
        f: alu::Widen,
        d: Slot,
        a: Slot,
    },
    Narrow {
        f: alu::Narrow,
        d: Slot,
        a: Slot,
    },
    /// `.relu`/`.satfinite` on a 16-bit float result, in place.
    Clamp16 {
        d: Slot,
        bf16: bool,
        relu: bool,
        satfinite: bool,
    },
    /// Integer division or remainder: active lanes with a zero divisor are reported.
    Div32 {
        f: alu::Bin32,
        d: Slot,
        a: Slot,
        b: Slot,
    },
    Div64 {
        f: alu::Bin64,
        d: Slot,
        a: Slot,
        b: Slot,
    },
    Bfi32 {
        d: Slot,
        a: Slot,
        b: Slot,
        pos: Slot,
        len: Slot,
    },
    Bfi64 {
        d: Slot,
        a: Slot,
        b: Slot,
        pos: Slot,
        len: Slot,
    },
    /// `p = cmp(a, b) [bool c]`, `q = !cmp(a, b) [bool c]`.
    Setp32 {
        f: alu::Cmp32,
        p: Slot,
        q: Slot,
        a: Slot,
        b: Slot,
        comb: Option<(PredBool, Slot, bool)>,
    },
    Setp64 {
        f: alu::Cmp64,
        p: Slot,
        q: Slot,
        a: Slot,
        b: Slot,
        comb: Option<(PredBool, Slot, bool)>,
    },
    Selp32 {
        d: Slot,
        a: Slot,
        b: Slot,
        p: Slot,
    },
    Selp64 {
        d: Slot,
        a: Slot,
        b: Slot,
        p: Slot,
    },
    PredMov {
        d: Slot,
        a: Slot,
        neg: bool,
    },
    PredConst {
        d: Slot,
        value: bool,
    },
    PredBin {
        op: PredBool,
        d: Slot,
        a: Slot,
        b: Slot,
    },
    /// `mov.b64 d, {lo, hi}` and `mov.b32 d, {lo, hi}` (16-bit halves).
    Pack64 {
        d: Slot,
        lo: Slot,
        hi: Slot,
    },
    Pack32 {
        d: Slot,
        lo: Slot,
        hi: Slot,
    },
    Unpack64 {
        lo: Slot,
        hi: Slot,
        a: Slot,
    },
    Unpack32 {
        lo: Slot,
        hi: Slot,
        a: Slot,
    },
    Ld(Box<MemOp>),
    St(Box<MemOp>),
    /// A load from the kernel's parameter buffer at a fixed offset (the same for all lanes).
    LdParam {
        regs: [Slot; 4],
        wide: [bool; 4],
        n: u8,
        width: u8,
        signed: bool,
        offset: u32,
    },
    /// Generic ↔ state-space address conversion.
    Cvta {
        to_generic: bool,
        space: Space,
        d: Slot,
        d_wide: bool,
        a: Slot,
        a_wide: bool,
    },
    Bra {
        target: u32,
        uni: bool,
    },
    Exit,
    Bar {
        id: u32,
    },
    /// `bar.warp.sync membermask`: the lanes of the mask meet (and their accesses are ordered).
    WarpSync {
        membermask: Slot,
    },
    Shfl(Box<Shfl>),
    Ldmatrix(Box<Ldmatrix>),
    Mma(Box<Mma>),
}

/// One instruction with its guard predicate.
#[derive(Clone, Debug)]
pub struct Inst {
    pub op: Op,
    /// The guard's predicate slot, or `NONE`.
    pub guard: Slot,
    pub neg: bool,
    /// Where divergent lane groups may meet: a branch target or the instruction after a branch.
    pub leader: bool,
    /// Index into `Kernel::info`.
    pub info: u32,
}

/// Where an instruction came from, for messages.
#[derive(Clone, Debug)]
pub struct InstInfo {
    pub ptx_line: u32,
    pub text: String,
    /// `kernels/gemm.cu:95 (inlined at kernels/gemm.cu:180)`, or empty.
    pub source: String,
}

#[derive(Clone, Copy, Debug)]
pub struct ParamInfo {
    pub offset: u32,
    pub size: u32,
}

/// A decoded entry point.
#[derive(Debug)]
pub struct Kernel {
    pub name: String,
    /// Unique among the kernels of the process (register files are prepared per kernel).
    pub id: usize,
    pub params: Vec<ParamInfo>,
    pub param_bytes: u32,
    pub code: Vec<Inst>,
    pub info: Vec<InstInfo>,
    pub n32: u32,
    pub n64: u32,
    pub npred: u32,
    pub consts32: Vec<(Slot, u32)>,
    pub consts64: Vec<(Slot, u64)>,
    pub specials: Vec<(Slot, Special)>,
    /// Bytes of static shared memory.
    pub static_smem: u32,
    /// Where dynamic shared memory starts (static, aligned).
    pub dynamic_smem_offset: u32,
    pub local_bytes: u32,
    pub maxntid: Option<[u32; 3]>,
    pub reqntid: Option<[u32; 3]>,
}
