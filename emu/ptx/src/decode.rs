//! Syntax tree to `ir::Kernel`: registers to slots (scoped, as inline assembly's `{ .reg ... }`
//! blocks are), immediates and special registers to pre-filled slots, symbols to addresses,
//! labels to instruction indices, and each opcode with its modifiers to one `ir::Op`.
//!
//! Anything the executor does not implement is an error naming the instruction, raised when the
//! module is loaded, so a kernel never runs with an instruction skipped.

use std::collections::{HashMap, HashSet};

use crate::alu::{self, CmpOp, FMods, Ty};
use crate::error::{EmuError, Result};
use crate::fp::Round;
use crate::ir::*;
use crate::parse::{self, Instruction, Operand, Space, Stmt};

/// Where module-scope variables are: global (and const) addresses by name.
pub type Globals = HashMap<String, u64>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum File {
    R32,
    R64,
    Pred,
}

#[derive(Clone, Copy, Debug)]
struct Reg {
    file: File,
    slot: Slot,
}

/// The opcode split into its base and modifiers, with helpers to read them.
struct Opc<'a> {
    base: &'a str,
    mods: Vec<&'a str>,
}

impl<'a> Opc<'a> {
    fn new(s: &'a str) -> Self {
        let mut it = s.split('.');
        let base = it.next().unwrap_or("");
        Opc {
            base,
            mods: it.collect(),
        }
    }
    fn has(&self, m: &str) -> bool {
        self.mods.contains(&m)
    }
    /// The type modifiers, in order.
    fn types(&self) -> Vec<Ty> {
        self.mods.iter().filter_map(|m| Ty::parse(m)).collect()
    }
    fn round(&self) -> Option<Round> {
        self.mods.iter().find_map(|m| match *m {
            "rn" => Some(Round::Nearest),
            "rz" => Some(Round::Zero),
            "rm" => Some(Round::Down),
            "rp" => Some(Round::Up),
            _ => None,
        })
    }
    fn int_round(&self) -> Option<Round> {
        self.mods.iter().find_map(|m| match *m {
            "rni" => Some(Round::Nearest),
            "rzi" => Some(Round::Zero),
            "rmi" => Some(Round::Down),
            "rpi" => Some(Round::Up),
            _ => None,
        })
    }
    fn fmods(&self) -> FMods {
        FMods {
            round: self.round().unwrap_or(Round::Nearest),
            ftz: self.has("ftz"),
            sat: self.has("sat"),
        }
    }
    /// Every modifier is one of `allowed` or a type.
    fn only(&self, allowed: &[&str]) -> bool {
        self.mods
            .iter()
            .all(|m| allowed.contains(m) || Ty::parse(m).is_some())
    }
}

struct Decoder<'m> {
    module: &'m parse::Module,
    kernel: String,
    globals: &'m Globals,
    scopes: Vec<HashMap<String, Reg>>,
    n32: u32,
    n64: u32,
    npred: u32,
    consts32: HashMap<u32, Slot>,
    consts64: HashMap<u64, Slot>,
    specials: HashMap<Special, Slot>,
    shared: HashMap<String, u32>,
    dynamic_shared: HashSet<String>,
    dynamic_smem_offset: u32,
    local: HashMap<String, u32>,
    params: HashMap<String, (u32, u32)>,
    labels: HashMap<String, u32>,
    fixups: Vec<(usize, String)>,
    code: Vec<Inst>,
    info: Vec<InstInfo>,
    loc: Option<parse::Loc>,
    /// The instruction being decoded: its guard and info index.
    guard: (Slot, bool),
    cur_info: u32,
    cur_text: String,
    cur_line: u32,
    /// Conversions to emit after the instruction (destinations of another width).
    post: Vec<Op>,
}

fn align_up(v: u32, a: u32) -> u32 {
    v.div_ceil(a.max(1)) * a.max(1)
}

fn operand_text(o: &Operand) -> String {
    match o {
        Operand::Name(n) => n.clone(),
        Operand::Int(v) => v.to_string(),
        Operand::F32(b) => format!("0f{b:08X}"),
        Operand::F64(b) => format!("0d{b:016X}"),
        Operand::Vector(v) => format!(
            "{{{}}}",
            v.iter().map(operand_text).collect::<Vec<_>>().join(", ")
        ),
        Operand::Address { base, offset } => match (base, offset) {
            (Some(b), 0) => format!("[{b}]"),
            (Some(b), o) => format!("[{b}+{o}]"),
            (None, o) => format!("[{o}]"),
        },
        Operand::Pair(a, b) => format!("{a}|{b}"),
        Operand::Sink => "_".into(),
    }
}

/// The PTX text of an instruction, for messages.
pub fn instruction_text(i: &Instruction) -> String {
    let mut s = String::new();
    if let Some((p, neg)) = &i.guard {
        s.push('@');
        if *neg {
            s.push('!');
        }
        s.push_str(p);
        s.push(' ');
    }
    s.push_str(&i.opcode);
    let ops: Vec<String> = i.operands.iter().map(operand_text).collect();
    if !ops.is_empty() {
        s.push(' ');
        s.push_str(&ops.join(", "));
    }
    s.push(';');
    s
}

fn special_of(name: &str) -> Option<Special> {
    let dim = |s: &str| match s {
        "x" => Some(0u8),
        "y" => Some(1),
        "z" => Some(2),
        _ => None,
    };
    let (base, d) = match name.split_once('.') {
        Some((b, d)) => (b, dim(d)),
        None => (name, None),
    };
    Some(match (base, d) {
        ("%tid", Some(d)) => Special::Tid(d),
        ("%ntid", Some(d)) => Special::Ntid(d),
        ("%ctaid", Some(d)) => Special::Ctaid(d),
        ("%nctaid", Some(d)) => Special::Nctaid(d),
        ("%laneid", None) => Special::LaneId,
        ("%warpid", None) => Special::WarpId,
        ("%nwarpid", None) => Special::NWarpId,
        ("%lanemask_eq", None) => Special::LaneMaskEq,
        ("%lanemask_lt", None) => Special::LaneMaskLt,
        ("%lanemask_le", None) => Special::LaneMaskLe,
        ("%lanemask_gt", None) => Special::LaneMaskGt,
        ("%lanemask_ge", None) => Special::LaneMaskGe,
        _ => return None,
    })
}

fn type_size(ty: &str) -> Option<u32> {
    Ty::parse(ty).map(|t| t.bytes())
}

impl<'m> Decoder<'m> {
    fn err(&self, msg: impl Into<String>) -> EmuError {
        EmuError::Unsupported {
            kernel: self.kernel.clone(),
            ptx_line: self.cur_line,
            instruction: self.cur_text.clone(),
            msg: msg.into(),
        }
    }

    fn new_slot(&mut self, file: File) -> Slot {
        let n = match file {
            File::R32 => &mut self.n32,
            File::R64 => &mut self.n64,
            File::Pred => &mut self.npred,
        };
        *n += 1;
        *n - 1
    }

    fn declare(&mut self, ty: &str, name: String) -> Result<()> {
        let file = match ty {
            "pred" => File::Pred,
            t => match Ty::parse(t) {
                Some(t) if t.is_wide() => File::R64,
                Some(_) => File::R32,
                None => return Err(self.err(format!("register type `.{ty}`"))),
            },
        };
        let slot = self.new_slot(file);
        self.scopes
            .last_mut()
            .expect("a scope")
            .insert(name, Reg { file, slot });
        Ok(())
    }

    fn reg(&self, name: &str) -> Option<Reg> {
        self.scopes.iter().rev().find_map(|s| s.get(name).copied())
    }

    fn const32(&mut self, v: u32) -> Slot {
        if let Some(&s) = self.consts32.get(&v) {
            return s;
        }
        let s = self.new_slot(File::R32);
        self.consts32.insert(v, s);
        s
    }

    fn const64(&mut self, v: u64) -> Slot {
        if let Some(&s) = self.consts64.get(&v) {
            return s;
        }
        let s = self.new_slot(File::R64);
        self.consts64.insert(v, s);
        s
    }

    /// The address of a variable in its own state space (what `mov r, var` yields).
    fn symbol_address(&self, name: &str) -> Option<u64> {
        if let Some(&o) = self.shared.get(name) {
            return Some(o as u64);
        }
        if self.dynamic_shared.contains(name) {
            return Some(self.dynamic_smem_offset as u64);
        }
        if let Some(&o) = self.local.get(name) {
            return Some(o as u64);
        }
        self.globals.get(name).copied()
    }

    fn emit(&mut self, op: Op) {
        self.code.push(Inst {
            op,
            guard: self.guard.0,
            neg: self.guard.1,
            leader: false,
            info: self.cur_info,
        });
    }

    /// A source operand as a slot of the 32-bit file holding a `ty` value.
    fn src32(&mut self, o: &Operand, ty: Ty) -> Result<Slot> {
        match o {
            Operand::Int(v) => {
                let bits = (*v as u64
                    & if ty.bytes() >= 4 {
                        0xffff_ffff
                    } else {
                        (1u64 << (ty.bytes() * 8)) - 1
                    }) as u32;
                if ty.is_float() {
                    return Err(self.err("an integer literal as a float operand"));
                }
                Ok(self.const32(bits))
            }
            Operand::F32(bits) if ty == Ty::F32 => Ok(self.const32(*bits)),
            Operand::F64(bits) if ty == Ty::F32 => {
                let v = f64::from_bits(*bits) as f32;
                Ok(self.const32(v.to_bits()))
            }
            Operand::F32(bits) if !ty.is_float() => Ok(self.const32(*bits)),
            Operand::Name(n) => {
                if let Some(r) = self.reg(n) {
                    return match r.file {
                        File::R32 => Ok(r.slot),
                        File::R64 => {
                            // A wider register than the type: its low bits (ISA §6.4.2).
                            let t = self.new_slot(File::R32);
                            let save = self.guard;
                            self.guard = (NONE, false);
                            self.emit(Op::Narrow {
                                f: alu::int_narrow(Ty::U32),
                                d: t,
                                a: r.slot,
                            });
                            self.guard = save;
                            Ok(t)
                        }
                        File::Pred => Err(self.err(format!("predicate `{n}` as a value"))),
                    };
                }
                if let Some(sp) = special_of(n) {
                    if let Some(&s) = self.specials.get(&sp) {
                        return Ok(s);
                    }
                    let s = self.new_slot(File::R32);
                    self.specials.insert(sp, s);
                    return Ok(s);
                }
                if let Some(a) = self.symbol_address(n) {
                    return Ok(self.const32(a as u32));
                }
                Err(self.err(format!("unknown operand `{n}`")))
            }
            o => Err(self.err(format!(
                "operand `{}` where a {ty:?} value is needed",
                operand_text(o)
            ))),
        }
    }

    /// A source operand as a slot of the 64-bit file holding a `ty` value.
    fn src64(&mut self, o: &Operand, ty: Ty) -> Result<Slot> {
        match o {
            Operand::Int(v) => {
                if ty.is_float() {
                    return Err(self.err("an integer literal as a float operand"));
                }
                Ok(self.const64(*v as u64))
            }
            Operand::F64(bits) => Ok(self.const64(*bits)),
            Operand::F32(bits) if ty == Ty::F64 => {
                let v = f32::from_bits(*bits) as f64;
                Ok(self.const64(v.to_bits()))
            }
            Operand::Name(n) => {
                if let Some(r) = self.reg(n) {
                    return match r.file {
                        File::R64 => Ok(r.slot),
                        File::R32 => {
                            let t = self.new_slot(File::R64);
                            let f = if ty.is_signed() {
                                alu::int_widen(Ty::S32)
                            } else {
                                alu::int_widen(Ty::U32)
                            };
                            let save = self.guard;
                            self.guard = (NONE, false);
                            self.emit(Op::Widen { f, d: t, a: r.slot });
                            self.guard = save;
                            Ok(t)
                        }
                        File::Pred => Err(self.err(format!("predicate `{n}` as a value"))),
                    };
                }
                if special_of(n).is_some() {
                    let s32 = self.src32(o, Ty::U32)?;
                    let t = self.new_slot(File::R64);
                    self.emit(Op::Widen {
                        f: alu::int_widen(Ty::U32),
                        d: t,
                        a: s32,
                    });
                    return Ok(t);
                }
                if let Some(a) = self.symbol_address(n) {
                    return Ok(self.const64(a));
                }
                Err(self.err(format!("unknown operand `{n}`")))
            }
            o => Err(self.err(format!(
                "operand `{}` where a {ty:?} value is needed",
                operand_text(o)
            ))),
        }
    }

    /// A source of type `ty` in the file its width calls for.
    fn src(&mut self, o: &Operand, ty: Ty) -> Result<Slot> {
        if ty.is_wide() {
            self.src64(o, ty)
        } else {
            self.src32(o, ty)
        }
    }

    fn dst_reg(&self, o: &Operand) -> Result<Reg> {
        match o {
            Operand::Name(n) => self
                .reg(n)
                .ok_or_else(|| self.err(format!("unknown register `{n}`"))),
            o => Err(self.err(format!(
                "`{}` is not a destination register",
                operand_text(o)
            ))),
        }
    }

    /// A destination for a `ty` result; a register of the other width gets a temporary and a
    /// conversion after the instruction (truncation, or sign/zero extension).
    fn dst(&mut self, o: &Operand, ty: Ty) -> Result<Slot> {
        let r = self.dst_reg(o)?;
        match (r.file, ty.is_wide()) {
            (File::R64, true) | (File::R32, false) => Ok(r.slot),
            (File::R64, false) => {
                let t = self.new_slot(File::R32);
                let src = if ty.is_signed() { Ty::S32 } else { Ty::U32 };
                let src = match (ty.bytes(), ty.is_signed()) {
                    (2, true) => Ty::S16,
                    (2, false) => Ty::U16,
                    (1, true) => Ty::S8,
                    (1, false) => Ty::U8,
                    _ => src,
                };
                self.post.push(Op::Widen {
                    f: alu::int_widen(src),
                    d: r.slot,
                    a: t,
                });
                Ok(t)
            }
            (File::R32, true) => {
                let t = self.new_slot(File::R64);
                self.post.push(Op::Narrow {
                    f: alu::int_narrow(Ty::U32),
                    d: r.slot,
                    a: t,
                });
                Ok(t)
            }
            (File::Pred, _) => Err(self.err("a predicate where a value register is needed")),
        }
    }

    fn pred(&self, o: &Operand) -> Result<Slot> {
        let r = self.dst_reg(o)?;
        if r.file != File::Pred {
            return Err(self.err(format!("`{}` is not a predicate", operand_text(o))));
        }
        Ok(r.slot)
    }

    fn unsupported<T>(&self, i: &Instruction) -> Result<T> {
        Err(self.err(format!(
            "instruction `{}` is not implemented by the executor",
            i.opcode
        )))
    }

    fn n_ops(&self, i: &Instruction, n: usize) -> Result<()> {
        if i.operands.len() != n {
            return Err(self.err(format!("expected {n} operands, found {}", i.operands.len())));
        }
        Ok(())
    }

    fn one_type(&self, opc: &Opc) -> Result<Ty> {
        match opc.types()[..] {
            [t] => Ok(t),
            _ => Err(self.err("expected exactly one type modifier")),
        }
    }

    fn decode(&mut self, i: &Instruction) -> Result<()> {
        self.cur_text = instruction_text(i);
        self.cur_line = i.line;
        self.info.push(InstInfo {
            ptx_line: i.line,
            text: self.cur_text.clone(),
            source: self.source_text(),
        });
        self.cur_info = (self.info.len() - 1) as u32;
        self.guard = match &i.guard {
            None => (NONE, false),
            Some((p, neg)) => {
                let r = self
                    .reg(p)
                    .ok_or_else(|| self.err(format!("unknown guard `{p}`")))?;
                if r.file != File::Pred {
                    return Err(self.err(format!("guard `{p}` is not a predicate")));
                }
                (r.slot, *neg)
            }
        };
        self.post.clear();
        let opc = Opc::new(&i.opcode);
        let op = self.op(&opc, i)?;
        if let Some(op) = op {
            self.emit(op);
        }
        for op in std::mem::take(&mut self.post) {
            self.emit(op);
        }
        Ok(())
    }

    fn source_text(&self) -> String {
        let Some(loc) = self.loc else {
            return String::new();
        };
        let file = |f: u32| {
            self.module
                .files
                .get(&f)
                .cloned()
                .unwrap_or_else(|| format!("file {f}"))
        };
        let mut s = format!("{}:{}", file(loc.file), loc.line);
        if let Some((f, l)) = loc.inlined_at {
            s.push_str(&format!(" (inlined at {}:{l})", file(f)));
        }
        s
    }

    #[allow(clippy::too_many_lines)]
    fn op(&mut self, opc: &Opc, i: &Instruction) -> Result<Option<Op>> {
        let o = &i.operands;
        match opc.base {
            "mov" => {
                self.n_ops(i, 2)?;
                let ty = self.one_type(opc)?;
                if ty == Ty::Pred {
                    let d = self.pred(&o[0])?;
                    return Ok(Some(match &o[1] {
                        Operand::Int(v) => Op::PredConst { d, value: *v != 0 },
                        a => Op::PredMov {
                            d,
                            a: self.pred(a)?,
                            neg: false,
                        },
                    }));
                }
                if let Operand::Vector(parts) = &o[1] {
                    let half = if ty.is_wide() { Ty::U32 } else { Ty::U16 };
                    if parts.len() != 2 || ty.bytes() < 4 {
                        return self.unsupported(i);
                    }
                    let lo = self.src32(&parts[0], half)?;
                    let hi = self.src32(&parts[1], half)?;
                    let d = self.dst(&o[0], ty)?;
                    return Ok(Some(if ty.is_wide() {
                        Op::Pack64 { d, lo, hi }
                    } else {
                        Op::Pack32 { d, lo, hi }
                    }));
                }
                if let Operand::Vector(parts) = &o[0] {
                    if parts.len() != 2 || ty.bytes() < 4 {
                        return self.unsupported(i);
                    }
                    let a = self.src(&o[1], ty)?;
                    let half = if ty.is_wide() { Ty::U32 } else { Ty::U16 };
                    let lo = self.dst(&parts[0], half)?;
                    let hi = self.dst(&parts[1], half)?;
                    return Ok(Some(if ty.is_wide() {
                        Op::Unpack64 { lo, hi, a }
                    } else {
                        Op::Unpack32 { lo, hi, a }
                    }));
                }
                let a = self.src(&o[1], ty)?;
                let d = self.dst(&o[0], ty)?;
                Ok(Some(if ty.is_wide() {
                    Op::Mov64 { d, a }
                } else {
                    Op::Mov32 { d, a }
                }))
            }
            "add" | "sub" | "mul" | "min" | "max" | "div" | "rem" | "and" | "or" | "xor" => {
                self.n_ops(i, 3)?;
                let ty = self.one_type(opc)?;
                if ty == Ty::Pred {
                    let op = match opc.base {
                        "and" => PredBool::And,
                        "or" => PredBool::Or,
                        "xor" => PredBool::Xor,
                        _ => return self.unsupported(i),
                    };
                    let (a, b) = (self.pred(&o[1])?, self.pred(&o[2])?);
                    return Ok(Some(Op::PredBin {
                        op,
                        d: self.pred(&o[0])?,
                        a,
                        b,
                    }));
                }
                if opc.has("cc") || opc.base == "add" && opc.has("sat") && !ty.is_float() {
                    return self.unsupported(i);
                }
                if ty.is_float() {
                    return self.float_bin(opc, i, ty);
                }
                let mut name = opc.base.to_string();
                if opc.base == "mul" {
                    if opc.has("wide") {
                        if ty.is_wide() {
                            return self.unsupported(i);
                        }
                        let (a, b) = (self.src32(&o[1], ty)?, self.src32(&o[2], ty)?);
                        let d = self.dst(&o[0], Ty::U64)?;
                        return Ok(Some(Op::Wide {
                            f: alu::mul_wide(ty.is_signed()),
                            d,
                            a,
                            b,
                        }));
                    }
                    name = if opc.has("hi") {
                        "mul.hi".into()
                    } else if opc.has("lo") {
                        "mul.lo".into()
                    } else {
                        return self.unsupported(i);
                    };
                } else if !opc.only(&[]) {
                    return self.unsupported(i);
                }
                let signed = ty.is_signed();
                let div = matches!(opc.base, "div" | "rem");
                if ty.is_wide() {
                    let f = alu::bin_i64(&name, signed).ok_or_else(|| self.err("operation"))?;
                    let (a, b) = (self.src64(&o[1], ty)?, self.src64(&o[2], ty)?);
                    let d = self.dst(&o[0], ty)?;
                    Ok(Some(if div {
                        Op::Div64 { f, d, a, b }
                    } else {
                        Op::Bin64 { f, d, a, b }
                    }))
                } else {
                    if ty.bytes() < 4 && !matches!(opc.base, "and" | "or" | "xor") {
                        return self.unsupported(i); // 16-bit arithmetic: not yet needed
                    }
                    let f = alu::bin_i32(&name, signed).ok_or_else(|| self.err("operation"))?;
                    let (a, b) = (self.src32(&o[1], ty)?, self.src32(&o[2], ty)?);
                    let d = self.dst(&o[0], ty)?;
                    Ok(Some(if div {
                        Op::Div32 { f, d, a, b }
                    } else {
                        Op::Bin32 { f, d, a, b }
                    }))
                }
            }
            "shl" | "shr" => {
                self.n_ops(i, 3)?;
                let ty = self.one_type(opc)?;
                let signed = opc.base == "shr" && ty.is_signed();
                if ty.is_wide() {
                    let f = alu::shift_i64(opc.base, signed).ok_or_else(|| self.err("shift"))?;
                    let (a, b) = (self.src64(&o[1], ty)?, self.src32(&o[2], Ty::U32)?);
                    let d = self.dst(&o[0], ty)?;
                    Ok(Some(Op::Shift64 { f, d, a, b }))
                } else if ty.bytes() == 2 {
                    let f = alu::shift_i16(opc.base, signed).ok_or_else(|| self.err("shift"))?;
                    let (a, b) = (self.src32(&o[1], ty)?, self.src32(&o[2], Ty::U32)?);
                    let d = self.dst(&o[0], ty)?;
                    Ok(Some(Op::Bin32 { f, d, a, b }))
                } else if ty.bytes() == 4 {
                    let f = alu::bin_i32(opc.base, signed).ok_or_else(|| self.err("shift"))?;
                    let (a, b) = (self.src32(&o[1], ty)?, self.src32(&o[2], Ty::U32)?);
                    let d = self.dst(&o[0], ty)?;
                    Ok(Some(Op::Bin32 { f, d, a, b }))
                } else {
                    self.unsupported(i)
                }
            }
            "not" | "neg" | "abs" | "popc" | "clz" | "brev" => {
                self.n_ops(i, 2)?;
                let ty = self.one_type(opc)?;
                if ty == Ty::Pred {
                    if opc.base != "not" {
                        return self.unsupported(i);
                    }
                    let a = self.pred(&o[1])?;
                    return Ok(Some(Op::PredMov {
                        d: self.pred(&o[0])?,
                        a,
                        neg: true,
                    }));
                }
                if ty == Ty::F32 {
                    let f = alu::un_f32(opc.base, opc.fmods(), false)
                        .ok_or_else(|| self.err("modifiers"))?;
                    let a = self.src32(&o[1], ty)?;
                    let d = self.dst(&o[0], ty)?;
                    return Ok(Some(Op::Un32 { f, d, a }));
                }
                if ty == Ty::F64 {
                    let f = alu::un_f64(opc.base).ok_or_else(|| self.err("f64 operation"))?;
                    let a = self.src64(&o[1], ty)?;
                    let d = self.dst(&o[0], ty)?;
                    return Ok(Some(Op::Un64 { f, d, a }));
                }
                if ty.is_float() || !opc.only(&[]) {
                    return self.unsupported(i);
                }
                if ty.is_wide() {
                    if matches!(opc.base, "popc" | "clz") {
                        return self.unsupported(i);
                    }
                    let f = alu::un_i64(opc.base).ok_or_else(|| self.err("operation"))?;
                    let a = self.src64(&o[1], ty)?;
                    let d = self.dst(&o[0], ty)?;
                    Ok(Some(Op::Un64 { f, d, a }))
                } else if ty.bytes() == 4 {
                    let f = alu::un_i32(opc.base).ok_or_else(|| self.err("operation"))?;
                    let a = self.src32(&o[1], ty)?;
                    let d = self.dst(&o[0], ty)?;
                    Ok(Some(Op::Un32 { f, d, a }))
                } else {
                    self.unsupported(i)
                }
            }
            "mad" | "fma" => {
                self.n_ops(i, 4)?;
                let ty = self.one_type(opc)?;
                if ty == Ty::F32 {
                    if opc.round().is_none() || !opc.only(&["rn", "rz", "rm", "rp", "ftz", "sat"]) {
                        return self.unsupported(i);
                    }
                    let f = alu::fma_f32(opc.fmods());
                    let (a, b, c) = (
                        self.src32(&o[1], ty)?,
                        self.src32(&o[2], ty)?,
                        self.src32(&o[3], ty)?,
                    );
                    let d = self.dst(&o[0], ty)?;
                    return Ok(Some(Op::Tern32 { f, d, a, b, c }));
                }
                if ty == Ty::F64 {
                    if opc.round() != Some(Round::Nearest) || !opc.only(&["rn"]) {
                        return self.unsupported(i);
                    }
                    let (a, b, c) = (
                        self.src64(&o[1], ty)?,
                        self.src64(&o[2], ty)?,
                        self.src64(&o[3], ty)?,
                    );
                    let d = self.dst(&o[0], ty)?;
                    return Ok(Some(Op::Tern64 {
                        f: alu::fma_f64(),
                        d,
                        a,
                        b,
                        c,
                    }));
                }
                if opc.base == "fma" || ty.is_float() {
                    return self.unsupported(i);
                }
                if opc.has("wide") {
                    let (a, b) = (self.src32(&o[1], ty)?, self.src32(&o[2], ty)?);
                    let c = self.src64(&o[3], Ty::U64)?;
                    let d = self.dst(&o[0], Ty::U64)?;
                    return Ok(Some(Op::MadWide {
                        f: alu::mad_wide(ty.is_signed()),
                        d,
                        a,
                        b,
                        c,
                    }));
                }
                let hi = opc.has("hi");
                if !hi && !opc.has("lo") || opc.has("cc") || opc.has("sat") {
                    return self.unsupported(i);
                }
                if ty.is_wide() {
                    if hi {
                        return self.unsupported(i);
                    }
                    let (a, b, c) = (
                        self.src64(&o[1], ty)?,
                        self.src64(&o[2], ty)?,
                        self.src64(&o[3], ty)?,
                    );
                    let d = self.dst(&o[0], ty)?;
                    Ok(Some(Op::Tern64 {
                        f: alu::mad_i64(),
                        d,
                        a,
                        b,
                        c,
                    }))
                } else {
                    let (a, b, c) = (
                        self.src32(&o[1], ty)?,
                        self.src32(&o[2], ty)?,
                        self.src32(&o[3], ty)?,
                    );
                    let d = self.dst(&o[0], ty)?;
                    Ok(Some(Op::Tern32 {
                        f: alu::mad_i32(hi, ty.is_signed()),
                        d,
                        a,
                        b,
                        c,
                    }))
                }
            }
            "rcp" | "rsqrt" | "sqrt" | "ex2" | "lg2" | "sin" | "cos" => {
                self.n_ops(i, 2)?;
                let ty = self.one_type(opc)?;
                let approx = opc.has("approx");
                if ty == Ty::F64 {
                    if approx || opc.round() != Some(Round::Nearest) {
                        return self.unsupported(i);
                    }
                    let f = alu::un_f64(opc.base).ok_or_else(|| self.err("f64 operation"))?;
                    let a = self.src64(&o[1], ty)?;
                    let d = self.dst(&o[0], ty)?;
                    return Ok(Some(Op::Un64 { f, d, a }));
                }
                if ty != Ty::F32 || !opc.only(&["approx", "rn", "ftz", "full"]) {
                    return self.unsupported(i);
                }
                if !approx && opc.round().is_none() {
                    return self.unsupported(i);
                }
                let f = alu::un_f32(opc.base, opc.fmods(), approx)
                    .ok_or_else(|| self.err("modifiers"))?;
                let a = self.src32(&o[1], ty)?;
                let d = self.dst(&o[0], ty)?;
                Ok(Some(Op::Un32 { f, d, a }))
            }
            "bfi" => {
                self.n_ops(i, 5)?;
                let ty = self.one_type(opc)?;
                let (pos, len) = (self.src32(&o[3], Ty::U32)?, self.src32(&o[4], Ty::U32)?);
                match ty {
                    Ty::B32 => {
                        let (a, b) = (self.src32(&o[1], ty)?, self.src32(&o[2], ty)?);
                        let d = self.dst(&o[0], ty)?;
                        Ok(Some(Op::Bfi32 { d, a, b, pos, len }))
                    }
                    Ty::B64 => {
                        let (a, b) = (self.src64(&o[1], ty)?, self.src64(&o[2], ty)?);
                        let d = self.dst(&o[0], ty)?;
                        Ok(Some(Op::Bfi64 { d, a, b, pos, len }))
                    }
                    _ => self.unsupported(i),
                }
            }
            "setp" => self.setp(opc, i),
            "selp" => {
                self.n_ops(i, 4)?;
                let ty = self.one_type(opc)?;
                let p = self.pred(&o[3])?;
                if ty.is_wide() {
                    let (a, b) = (self.src64(&o[1], ty)?, self.src64(&o[2], ty)?);
                    let d = self.dst(&o[0], ty)?;
                    Ok(Some(Op::Selp64 { d, a, b, p }))
                } else {
                    let (a, b) = (self.src32(&o[1], ty)?, self.src32(&o[2], ty)?);
                    let d = self.dst(&o[0], ty)?;
                    Ok(Some(Op::Selp32 { d, a, b, p }))
                }
            }
            "cvt" => self.cvt(opc, i),
            "cvta" => {
                self.n_ops(i, 2)?;
                let ty = self.one_type(opc)?;
                let to_generic = !opc.has("to");
                let space = if opc.has("global") {
                    Space::Global
                } else if opc.has("shared") || opc.mods.iter().any(|m| m.starts_with("shared::")) {
                    Space::Shared
                } else if opc.has("local") {
                    Space::Local
                } else if opc.has("const") {
                    Space::Const
                } else {
                    return self.unsupported(i);
                };
                let a = self.src(&o[1], ty)?;
                let d = self.dst(&o[0], ty)?;
                Ok(Some(Op::Cvta {
                    to_generic,
                    space,
                    d,
                    d_wide: ty.is_wide(),
                    a,
                    a_wide: ty.is_wide(),
                }))
            }
            "ld" | "st" => self.memory(opc, i),
            "bra" => {
                self.n_ops(i, 1)?;
                let Operand::Name(label) = &o[0] else {
                    return self.unsupported(i);
                };
                self.fixups.push((self.code.len(), label.clone()));
                Ok(Some(Op::Bra {
                    target: 0,
                    uni: opc.has("uni"),
                }))
            }
            "ret" | "exit" => Ok(Some(Op::Exit)),
            "bar" | "barrier" if opc.has("warp") => {
                // bar.warp.sync membermask (__syncwarp): a warp collective (ISA §9.7.13.3).
                if !opc.has("sync") || o.len() != 1 {
                    return self.unsupported(i);
                }
                let membermask = self.src32(&o[0], Ty::B32)?;
                Ok(Some(Op::WarpSync { membermask }))
            }
            "bar" | "barrier" => {
                // bar.sync a / barrier.sync[.aligned] a: all threads of the CTA.
                let sync = opc.has("sync") || (opc.base == "barrier" && opc.mods.is_empty());
                if !sync || opc.has("arrive") || opc.has("red") || o.len() != 1 {
                    return Err(self.err(
                        "only `bar.sync id` (every thread of the block) is implemented; thread counts, arrive and red are not",
                    ));
                }
                let Operand::Int(id) = o[0] else {
                    return Err(self.err("a barrier id in a register"));
                };
                if !(0..16).contains(&id) {
                    return Err(self.err("barrier ids are 0..15"));
                }
                Ok(Some(Op::Bar { id: id as u32 }))
            }
            "shfl" => {
                if !opc.has("sync") || opc.types() != [Ty::B32] {
                    return self.unsupported(i);
                }
                self.n_ops(i, 5)?;
                let mode = if opc.has("up") {
                    ShflMode::Up
                } else if opc.has("down") {
                    ShflMode::Down
                } else if opc.has("bfly") {
                    ShflMode::Bfly
                } else if opc.has("idx") {
                    ShflMode::Idx
                } else {
                    return self.unsupported(i);
                };
                let (d, p) = match &o[0] {
                    Operand::Pair(d, p) => {
                        let d = self.dst(&Operand::Name(d.clone()), Ty::B32)?;
                        (d, self.pred(&Operand::Name(p.clone()))?)
                    }
                    d => (self.dst(d, Ty::B32)?, NONE),
                };
                let a = self.src32(&o[1], Ty::B32)?;
                let b = self.src32(&o[2], Ty::U32)?;
                let c = self.src32(&o[3], Ty::U32)?;
                let membermask = self.src32(&o[4], Ty::U32)?;
                Ok(Some(Op::Shfl(Box::new(Shfl {
                    mode,
                    d,
                    p,
                    a,
                    b,
                    c,
                    membermask,
                }))))
            }
            "ldmatrix" => {
                let num = if opc.has("x1") {
                    1
                } else if opc.has("x2") {
                    2
                } else if opc.has("x4") {
                    4
                } else {
                    return self.unsupported(i);
                };
                if !opc.has("sync")
                    || !opc.has("aligned")
                    || !opc.has("m8n8")
                    || opc.types() != [Ty::B16]
                {
                    return self.unsupported(i);
                }
                self.n_ops(i, 2)?;
                let Operand::Vector(regs) = &o[0] else {
                    return self.unsupported(i);
                };
                if regs.len() != num {
                    return Err(
                        self.err("the number of destination registers does not match .x1/.x2/.x4")
                    );
                }
                let mut d = [NONE; 4];
                for (k, r) in regs.iter().enumerate() {
                    d[k] = self.dst(r, Ty::B32)?;
                }
                let generic = !(opc.has("shared") || opc.has("shared::cta"));
                let (addr, addr_wide, offset) = self.address(&o[1])?;
                Ok(Some(Op::Ldmatrix(Box::new(Ldmatrix {
                    num: num as u8,
                    trans: opc.has("trans"),
                    d,
                    addr,
                    addr_wide,
                    offset,
                    generic,
                }))))
            }
            "mma" => {
                let want16 = ["sync", "aligned", "m16n8k16", "row", "col"];
                if !want16.iter().all(|m| opc.has(m)) {
                    return self.unsupported(i);
                }
                let ty = match opc.types()[..] {
                    [Ty::F32, Ty::F16, Ty::F16, Ty::F32] => MmaType::F16,
                    [Ty::F32, Ty::BF16, Ty::BF16, Ty::F32] => MmaType::BF16,
                    _ => return self.unsupported(i),
                };
                self.n_ops(i, 4)?;
                let regs =
                    |dec: &mut Self, o: &Operand, n: usize, dst: bool| -> Result<Vec<Slot>> {
                        let Operand::Vector(v) = o else {
                            return Err(dec.err("mma operands are register vectors"));
                        };
                        if v.len() != n {
                            return Err(dec.err(format!(
                                "an mma operand of {} registers, {n} expected",
                                v.len()
                            )));
                        }
                        v.iter()
                            .map(|r| {
                                if dst {
                                    dec.dst(r, Ty::F32)
                                } else {
                                    dec.src32(r, Ty::B32)
                                }
                            })
                            .collect()
                    };
                let a = regs(self, &o[1], 4, false)?;
                let b = regs(self, &o[2], 2, false)?;
                let c = regs(self, &o[3], 4, false)?;
                let d = regs(self, &o[0], 4, true)?;
                Ok(Some(Op::Mma(Box::new(Mma {
                    ty,
                    d: [d[0], d[1], d[2], d[3]],
                    a: [a[0], a[1], a[2], a[3]],
                    b: [b[0], b[1]],
                    c: [c[0], c[1], c[2], c[3]],
                }))))
            }
            _ => self.unsupported(i),
        }
    }

    fn float_bin(&mut self, opc: &Opc, i: &Instruction, ty: Ty) -> Result<Option<Op>> {
        let o = &i.operands;
        match ty {
            Ty::F32 => {
                if !opc.only(&[
                    "rn", "rz", "rm", "rp", "ftz", "sat", "approx", "full", "NaN",
                ]) {
                    return self.unsupported(i);
                }
                if opc.base == "div"
                    && opc.round().is_none()
                    && !opc.has("approx")
                    && !opc.has("full")
                {
                    return self.unsupported(i);
                }
                let name = if opc.base == "div" && opc.has("approx") {
                    "div.approx".to_string()
                } else if matches!(opc.base, "min" | "max") && opc.has("NaN") {
                    format!("{}.NaN", opc.base)
                } else {
                    opc.base.to_string()
                };
                let f = alu::bin_f32(&name, opc.fmods())
                    .ok_or_else(|| self.err("this combination of modifiers"))?;
                let (a, b) = (self.src32(&o[1], ty)?, self.src32(&o[2], ty)?);
                let d = self.dst(&o[0], ty)?;
                Ok(Some(Op::Bin32 { f, d, a, b }))
            }
            Ty::F64 => {
                if !opc.only(&["rn"]) {
                    return self.unsupported(i);
                }
                let f = alu::bin_f64(opc.base).ok_or_else(|| self.err("f64 operation"))?;
                let (a, b) = (self.src64(&o[1], ty)?, self.src64(&o[2], ty)?);
                let d = self.dst(&o[0], ty)?;
                Ok(Some(Op::Bin64 { f, d, a, b }))
            }
            _ => self.unsupported(i),
        }
    }

    fn setp(&mut self, opc: &Opc, i: &Instruction) -> Result<Option<Op>> {
        let o = &i.operands;
        let cmp = opc
            .mods
            .first()
            .and_then(|m| CmpOp::parse(m))
            .ok_or_else(|| self.err("setp without a comparison"))?;
        let comb = opc.mods.iter().find_map(|m| match *m {
            "and" => Some(PredBool::And),
            "or" => Some(PredBool::Or),
            "xor" => Some(PredBool::Xor),
            _ => None,
        });
        let ty = self.one_type(opc)?;
        let ftz = opc.has("ftz");
        let (p, q) = match &o[0] {
            Operand::Pair(p, q) => (
                self.pred(&Operand::Name(p.clone()))?,
                self.pred(&Operand::Name(q.clone()))?,
            ),
            p => (self.pred(p)?, NONE),
        };
        let comb = match (comb, o.len()) {
            (None, 3) => None,
            (Some(b), 4) => {
                let (name, neg) = match &o[3] {
                    Operand::Name(n) => match n.strip_prefix('!') {
                        Some(n) => (n.to_string(), true),
                        None => (n.clone(), false),
                    },
                    _ => return Err(self.err("setp's combining operand")),
                };
                Some((b, self.pred(&Operand::Name(name))?, neg))
            }
            _ => return Err(self.err("setp operands")),
        };
        if ty.is_wide() {
            let f = alu::cmp64(cmp, ty).ok_or_else(|| self.err("this comparison for the type"))?;
            let (a, b) = (self.src64(&o[1], ty)?, self.src64(&o[2], ty)?);
            Ok(Some(Op::Setp64 {
                f,
                p,
                q,
                a,
                b,
                comb,
            }))
        } else {
            let f =
                alu::cmp32(cmp, ty, ftz).ok_or_else(|| self.err("this comparison for the type"))?;
            let (a, b) = (self.src32(&o[1], ty)?, self.src32(&o[2], ty)?);
            Ok(Some(Op::Setp32 {
                f,
                p,
                q,
                a,
                b,
                comb,
            }))
        }
    }

    fn cvt(&mut self, opc: &Opc, i: &Instruction) -> Result<Option<Op>> {
        let o = &i.operands;
        let types = opc.types();
        let [dst, src] = types[..] else {
            return Err(self.err("cvt needs a destination and a source type"));
        };
        if !opc.only(&[
            "rn",
            "rz",
            "rm",
            "rp",
            "rni",
            "rzi",
            "rmi",
            "rpi",
            "ftz",
            "sat",
            "relu",
            "satfinite",
        ]) {
            return Err(self.err(format!(
                "cvt modifiers of `{}` are not implemented",
                i.opcode
            )));
        }
        let round = opc.round().unwrap_or(Round::Nearest);
        if matches!(dst, Ty::F16x2 | Ty::BF16x2) {
            self.n_ops(i, 3)?;
            if src != Ty::F32 || opc.has("ftz") || opc.has("sat") {
                return Err(self.err("packed conversions are implemented from f32 only"));
            }
            if opc.has("relu") || opc.has("satfinite") {
                return Err(
                    self.err("packed conversions with .relu/.satfinite are not implemented")
                );
            }
            let f = alu::cvt_pack(dst, round).ok_or_else(|| self.err("packed conversion"))?;
            let (a, b) = (self.src32(&o[1], Ty::F32)?, self.src32(&o[2], Ty::F32)?);
            let d = self.dst(&o[0], Ty::B32)?;
            return Ok(Some(Op::Bin32 { f, d, a, b }));
        }
        let (relu, satfinite) = (opc.has("relu"), opc.has("satfinite"));
        if relu || satfinite {
            // cvt.frnd{.relu}{.satfinite}.{f16,bf16}.f32 (ISA §9.7.9.21): the conversion, then the
            // clamp on its 16-bit result.
            self.n_ops(i, 2)?;
            if !matches!(dst, Ty::F16 | Ty::BF16)
                || src != Ty::F32
                || opc.has("ftz")
                || opc.has("sat")
            {
                return Err(self.err(".relu/.satfinite are implemented for f32 to f16/bf16"));
            }
            let Some(alu::Cvt::R32(f)) = alu::cvt(dst, src, round, None, false, false) else {
                return Err(self.err("conversion"));
            };
            let a = self.src32(&o[1], src)?;
            let d = self.dst(&o[0], dst)?;
            self.post.insert(
                0,
                Op::Clamp16 {
                    d,
                    bf16: dst == Ty::BF16,
                    relu,
                    satfinite,
                },
            );
            return Ok(Some(Op::Un32 { f, d, a }));
        }
        self.n_ops(i, 2)?;
        let c = alu::cvt(
            dst,
            src,
            round,
            opc.int_round(),
            opc.has("ftz"),
            opc.has("sat"),
        )
        .ok_or_else(|| self.err(format!("conversion `{}`", i.opcode)))?;
        Ok(Some(match c {
            alu::Cvt::R32(f) => {
                let a = self.src32(&o[1], src)?;
                Op::Un32 {
                    f,
                    d: self.dst(&o[0], dst)?,
                    a,
                }
            }
            alu::Cvt::R64(f) => {
                let a = self.src64(&o[1], src)?;
                Op::Un64 {
                    f,
                    d: self.dst(&o[0], dst)?,
                    a,
                }
            }
            alu::Cvt::Widen(f) => {
                let a = self.src32(&o[1], src)?;
                Op::Widen {
                    f,
                    d: self.dst(&o[0], dst)?,
                    a,
                }
            }
            alu::Cvt::Narrow(f) => {
                let a = self.src64(&o[1], src)?;
                Op::Narrow {
                    f,
                    d: self.dst(&o[0], dst)?,
                    a,
                }
            }
            alu::Cvt::Pack(_) => unreachable!("packing is handled above"),
        }))
    }

    /// `[reg+off]` or `[sym+off]` or `[imm]`: (address slot, in the 64-bit file, offset).
    fn address(&mut self, o: &Operand) -> Result<(Slot, bool, i64)> {
        let Operand::Address { base, offset } = o else {
            return Err(self.err(format!("`{}` is not an address", operand_text(o))));
        };
        match base {
            None => Ok((self.const64(*offset as u64), true, 0)),
            Some(name) => {
                if let Some(r) = self.reg(name) {
                    return match r.file {
                        File::R64 => Ok((r.slot, true, *offset)),
                        File::R32 => Ok((r.slot, false, *offset)),
                        File::Pred => Err(self.err("a predicate as an address")),
                    };
                }
                if let Some(a) = self.symbol_address(name) {
                    return Ok((self.const64(a), true, *offset));
                }
                Err(self.err(format!("unknown address base `{name}`")))
            }
        }
    }

    fn memory(&mut self, opc: &Opc, i: &Instruction) -> Result<Option<Op>> {
        let o = &i.operands;
        self.n_ops(i, 2)?;
        let load = opc.base == "ld";
        let ty = self.one_type(opc)?;
        if ty == Ty::Pred {
            return Err(self.err("predicate loads and stores"));
        }
        let known = [
            "global",
            "shared",
            "local",
            "param",
            "const",
            "nc",
            "v2",
            "v4",
            "volatile",
            "relaxed",
            "weak",
            "ca",
            "cg",
            "cs",
            "lu",
            "cv",
            "wb",
            "wt",
            "shared::cta",
        ];
        if !opc.only(&known) || opc.has("relaxed") || opc.has("volatile") {
            return Err(self.err(format!(
                "memory modifiers of `{}` are not implemented",
                i.opcode
            )));
        }
        let n = if opc.has("v4") {
            4
        } else if opc.has("v2") {
            2
        } else {
            1
        };
        let (value, addr) = if load { (&o[0], &o[1]) } else { (&o[1], &o[0]) };
        let elems: Vec<Operand> = match value {
            Operand::Vector(v) => v.clone(),
            v => vec![v.clone()],
        };
        if elems.len() != n {
            return Err(self.err("the vector size does not match .v2/.v4"));
        }
        let mut regs = [NONE; 4];
        let mut wide = [false; 4];
        for (k, e) in elems.iter().enumerate() {
            if load {
                let r = self.dst_reg(e)?;
                if r.file == File::Pred {
                    return Err(self.err("a predicate destination"));
                }
                regs[k] = r.slot;
                wide[k] = r.file == File::R64;
            } else {
                match e {
                    Operand::Name(n) if self.reg(n).is_some() => {
                        let r = self.reg(n).expect("checked");
                        if r.file == File::Pred {
                            return Err(self.err("a predicate source"));
                        }
                        regs[k] = r.slot;
                        wide[k] = r.file == File::R64;
                    }
                    e => {
                        wide[k] = ty.is_wide();
                        regs[k] = self.src(e, ty)?;
                    }
                }
            }
        }
        let width = ty.bytes() as u8;
        if opc.has("param") {
            if !load {
                return Err(self.err("stores to kernel parameters"));
            }
            let Operand::Address {
                base: Some(name),
                offset,
            } = addr
            else {
                return Err(self.err("a parameter access must name the parameter"));
            };
            let &(start, size) = self
                .params
                .get(name)
                .ok_or_else(|| self.err(format!("`{name}` is not a parameter of this kernel")))?;
            let end = *offset + (width as i64) * n as i64;
            if *offset < 0 || end > size as i64 {
                return Err(self.err(format!(
                    "bytes {offset}..{end} of parameter `{name}`, which has {size}"
                )));
            }
            if (start as i64 + offset) % (width as i64 * n as i64) != 0 {
                return Err(self.err("a misaligned parameter access"));
            }
            return Ok(Some(Op::LdParam {
                regs,
                wide,
                n: n as u8,
                width,
                signed: ty.is_signed(),
                offset: (start as i64 + offset) as u32,
            }));
        }
        let space = if opc.has("global") {
            MemSpace::Global
        } else if opc.has("shared") || opc.has("shared::cta") {
            MemSpace::Shared
        } else if opc.has("local") {
            MemSpace::Local
        } else if opc.has("const") {
            MemSpace::Const
        } else {
            MemSpace::Generic
        };
        let nc = opc.has("nc");
        if nc && (!load || space != MemSpace::Global) {
            return Err(self.err(".nc is for global loads"));
        }
        let (a, addr_wide, offset) = self.address(addr)?;
        let m = Box::new(MemOp {
            space,
            width,
            signed: ty.is_signed(),
            n: n as u8,
            regs,
            wide,
            addr: a,
            addr_wide,
            offset,
            nc,
        });
        Ok(Some(if load { Op::Ld(m) } else { Op::St(m) }))
    }
}

/// Every name an operand mentions.
fn names<'a>(o: &'a Operand, out: &mut HashSet<&'a str>) {
    match o {
        Operand::Name(n) => {
            out.insert(n);
        }
        Operand::Address { base: Some(b), .. } => {
            out.insert(b);
        }
        Operand::Vector(v) => v.iter().for_each(|o| names(o, out)),
        Operand::Pair(a, b) => {
            out.insert(a);
            out.insert(b);
        }
        _ => {}
    }
}

/// Decodes one entry point. `globals` holds the addresses of the module's `.global` and `.const`
/// variables.
pub fn decode_entry(module: &parse::Module, e: &parse::Entry, globals: &Globals) -> Result<Kernel> {
    let mut d = Decoder {
        module,
        kernel: e.name.clone(),
        globals,
        scopes: vec![HashMap::new()],
        n32: 0,
        n64: 0,
        npred: 0,
        consts32: HashMap::new(),
        consts64: HashMap::new(),
        specials: HashMap::new(),
        shared: HashMap::new(),
        dynamic_shared: HashSet::new(),
        dynamic_smem_offset: 0,
        local: HashMap::new(),
        params: HashMap::new(),
        labels: HashMap::new(),
        fixups: Vec::new(),
        code: Vec::new(),
        info: Vec::new(),
        loc: None,
        guard: (NONE, false),
        cur_info: 0,
        cur_text: String::new(),
        cur_line: e.line,
        post: Vec::new(),
    };
    let var_err = |line: u32, msg: String| EmuError::Unsupported {
        kernel: e.name.clone(),
        ptx_line: line,
        instruction: String::new(),
        msg,
    };

    // Parameters, each at its alignment.
    let mut params = Vec::new();
    let mut off = 0u32;
    for p in &e.params {
        let elem = type_size(&p.ty)
            .ok_or_else(|| var_err(e.line, format!("parameter type `.{}`", p.ty)))?;
        let size = elem * p.array.unwrap_or(1).max(1) as u32;
        let align = p.align.unwrap_or(elem).max(1);
        off = align_up(off, align);
        d.params.insert(p.name.clone(), (off, size));
        params.push(ParamInfo { offset: off, size });
        off += size;
    }
    let param_bytes = off;

    // Shared and local variables: the kernel's own, and the module's shared ones it names.
    let mut used = HashSet::new();
    for s in &e.body {
        if let Stmt::Inst(i) = s {
            i.operands.iter().for_each(|o| names(o, &mut used));
        }
    }
    let mut smem = 0u32;
    let mut local = 0u32;
    let var_size = |v: &parse::Variable| -> Result<u32> {
        let elem = type_size(&v.ty)
            .ok_or_else(|| var_err(v.line, format!("variable type `.{}`", v.ty)))?;
        Ok(elem * v.array.map_or(1, |a| a.unwrap_or(0)) as u32)
    };
    let mut dyn_align = 16u32;
    let module_shared = module
        .variables
        .iter()
        .filter(|v| v.space == Space::Shared && used.contains(v.name.as_str()));
    let own: Vec<&parse::Variable> = e
        .body
        .iter()
        .filter_map(|s| match s {
            Stmt::Var(v) => Some(v),
            _ => None,
        })
        .collect();
    for v in module_shared.chain(own.iter().copied().filter(|v| v.space == Space::Shared)) {
        let align = v.align.unwrap_or(type_size(&v.ty).unwrap_or(1)).max(1);
        if v.array == Some(None) {
            d.dynamic_shared.insert(v.name.clone());
            dyn_align = dyn_align.max(align);
            continue;
        }
        smem = align_up(smem, align);
        d.shared.insert(v.name.clone(), smem);
        smem += var_size(v)?;
    }
    for v in own.iter().filter(|v| v.space == Space::Local) {
        let align = v.align.unwrap_or(type_size(&v.ty).unwrap_or(1)).max(1);
        local = align_up(local, align);
        d.local.insert(v.name.clone(), local);
        local += var_size(v)?;
    }
    if let Some(v) = own
        .iter()
        .find(|v| !matches!(v.space, Space::Shared | Space::Local))
    {
        return Err(var_err(
            v.line,
            format!("a {:?} variable inside a kernel", v.space),
        ));
    }
    d.dynamic_smem_offset = align_up(smem, dyn_align);

    // Registers and instructions, in order.
    for s in &e.body {
        match s {
            Stmt::Reg(r) => {
                for (base, count) in &r.names {
                    match count {
                        Some(n) => {
                            for k in 0..*n {
                                d.declare(&r.ty, format!("{base}{k}"))?;
                            }
                        }
                        None => d.declare(&r.ty, base.clone())?,
                    }
                }
            }
            Stmt::Var(_) => {}
            Stmt::Loc(l) => d.loc = Some(*l),
            Stmt::Label(l) => {
                if d.labels.insert(l.clone(), d.code.len() as u32).is_some() {
                    return Err(var_err(0, format!("label `{l}` defined twice")));
                }
            }
            Stmt::Open => d.scopes.push(HashMap::new()),
            Stmt::Close => {
                d.scopes.pop();
                if d.scopes.is_empty() {
                    return Err(var_err(0, "unbalanced `}`".into()));
                }
            }
            Stmt::Inst(i) => d.decode(i)?,
        }
    }
    // A kernel that falls off its end exits.
    d.guard = (NONE, false);
    d.emit(Op::Exit);

    for (at, label) in std::mem::take(&mut d.fixups) {
        let target = *d.labels.get(&label).ok_or_else(|| {
            let info = &d.info[d.code[at].info as usize];
            EmuError::Unsupported {
                kernel: e.name.clone(),
                ptx_line: info.ptx_line,
                instruction: info.text.clone(),
                msg: format!("branch to unknown label `{label}`"),
            }
        })?;
        if let Op::Bra { target: t, .. } = &mut d.code[at].op {
            *t = target;
        }
    }
    let n = d.code.len();
    for k in 0..n {
        if let Op::Bra { target, .. } = d.code[k].op {
            d.code[target as usize].leader = true;
            if k + 1 < n {
                d.code[k + 1].leader = true;
            }
        }
    }
    d.code[0].leader = true;

    let mut consts32: Vec<(Slot, u32)> = d.consts32.iter().map(|(&v, &s)| (s, v)).collect();
    consts32.sort_unstable();
    let mut consts64: Vec<(Slot, u64)> = d.consts64.iter().map(|(&v, &s)| (s, v)).collect();
    consts64.sort_unstable();
    let mut specials: Vec<(Slot, Special)> = d.specials.iter().map(|(&sp, &s)| (s, sp)).collect();
    specials.sort_unstable_by_key(|&(s, _)| s);
    let mut kernel = Kernel {
        name: e.name.clone(),
        id: 0,
        params,
        param_bytes,
        code: d.code,
        info: d.info,
        n32: d.n32,
        n64: d.n64,
        npred: d.npred,
        consts32,
        consts64,
        specials,
        static_smem: smem,
        dynamic_smem_offset: d.dynamic_smem_offset,
        local_bytes: local,
        maxntid: e.maxntid,
        reqntid: e.reqntid,
    };
    crate::regalloc::compact(&mut kernel);
    Ok(kernel)
}
