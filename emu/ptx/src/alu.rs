//! Arithmetic, logic, comparison and conversion instructions as whole-warp functions: each takes
//! the 32 lanes of its source registers and fills the 32 lanes of its destination, so that the
//! interpreter dispatches once per warp-instruction and the lane loop vectorises. Inactive lanes
//! are computed too and discarded by the caller's masked write, so nothing here may trap (integer
//! division by zero gives the all-ones quotient; the caller reports it for active lanes).
//!
//! Semantics follow the PTX ISA §9.7.1 (integer), §9.7.3 (floating point), §9.7.7 (logic and
//! shift), §9.7.9.21 (`cvt`); `fp` holds the rounding details.

use crate::fp::{self, Round};

pub type R32 = [u32; 32];
pub type R64 = [u64; 32];
pub type Un32 = fn(&mut R32, &R32);
pub type Bin32 = fn(&mut R32, &R32, &R32);
pub type Tern32 = fn(&mut R32, &R32, &R32, &R32);
pub type Un64 = fn(&mut R64, &R64);
pub type Bin64 = fn(&mut R64, &R64, &R64);
pub type Tern64 = fn(&mut R64, &R64, &R64, &R64);
/// 64-bit value, 32-bit shift amount.
pub type Shift64 = fn(&mut R64, &R64, &R32);
/// 32 × 32 → 64.
pub type Wide = fn(&mut R64, &R32, &R32);
/// 32 × 32 + 64 → 64.
pub type MadWide = fn(&mut R64, &R32, &R32, &R64);
pub type Widen = fn(&mut R64, &R32);
pub type Narrow = fn(&mut R32, &R64);
/// A lane mask of the lanes where the comparison holds.
pub type Cmp32 = fn(&R32, &R32) -> u32;
pub type Cmp64 = fn(&R64, &R64) -> u32;

/// A scalar PTX type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    B8,
    U8,
    S8,
    B16,
    U16,
    S16,
    F16,
    BF16,
    B32,
    U32,
    S32,
    F32,
    F16x2,
    BF16x2,
    B64,
    U64,
    S64,
    F64,
    Pred,
}

impl Ty {
    pub fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "b8" => Ty::B8,
            "u8" => Ty::U8,
            "s8" => Ty::S8,
            "b16" => Ty::B16,
            "u16" => Ty::U16,
            "s16" => Ty::S16,
            "f16" => Ty::F16,
            "bf16" => Ty::BF16,
            "b32" => Ty::B32,
            "u32" => Ty::U32,
            "s32" => Ty::S32,
            "f32" => Ty::F32,
            "f16x2" => Ty::F16x2,
            "bf16x2" => Ty::BF16x2,
            "b64" => Ty::B64,
            "u64" => Ty::U64,
            "s64" => Ty::S64,
            "f64" => Ty::F64,
            "pred" => Ty::Pred,
            _ => return None,
        })
    }

    /// Size in bytes (a predicate counts as 1).
    pub fn bytes(self) -> u32 {
        match self {
            Ty::B8 | Ty::U8 | Ty::S8 | Ty::Pred => 1,
            Ty::B16 | Ty::U16 | Ty::S16 | Ty::F16 | Ty::BF16 => 2,
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 | Ty::F16x2 | Ty::BF16x2 => 4,
            Ty::B64 | Ty::U64 | Ty::S64 | Ty::F64 => 8,
        }
    }

    pub fn is_signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }

    pub fn is_float(self) -> bool {
        matches!(
            self,
            Ty::F16 | Ty::BF16 | Ty::F32 | Ty::F64 | Ty::F16x2 | Ty::BF16x2
        )
    }

    /// Held in the 64-bit register file.
    pub fn is_wide(self) -> bool {
        self.bytes() == 8
    }
}

macro_rules! lanes {
    (|$a:ident: $ta:ty| -> $tr:ty $body:block) => {{
        fn lane_fn(out: &mut [$tr; 32], x: &[$ta; 32]) {
            for l in 0..32 {
                let $a = x[l];
                out[l] = $body;
            }
        }
        lane_fn
    }};
    (|$a:ident: $ta:ty, $b:ident: $tb:ty| -> $tr:ty $body:block) => {{
        fn lane_fn(out: &mut [$tr; 32], x: &[$ta; 32], y: &[$tb; 32]) {
            for l in 0..32 {
                let ($a, $b) = (x[l], y[l]);
                out[l] = $body;
            }
        }
        lane_fn
    }};
    (|$a:ident: $ta:ty, $b:ident: $tb:ty, $c:ident: $tc:ty| -> $tr:ty $body:block) => {{
        fn lane_fn(out: &mut [$tr; 32], x: &[$ta; 32], y: &[$tb; 32], z: &[$tc; 32]) {
            for l in 0..32 {
                let ($a, $b, $c) = (x[l], y[l], z[l]);
                out[l] = $body;
            }
        }
        lane_fn
    }};
}

#[inline(always)]
fn f(x: u32) -> f32 {
    f32::from_bits(x)
}
#[inline(always)]
fn d(x: u64) -> f64 {
    f64::from_bits(x)
}

/// Float operation modifiers: rounding, flush-to-zero, saturation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FMods {
    pub round: Round,
    pub ftz: bool,
    pub sat: bool,
}

#[inline(always)]
const fn round_of(r: u8) -> Round {
    match r {
        0 => Round::Nearest,
        1 => Round::Zero,
        2 => Round::Down,
        _ => Round::Up,
    }
}

#[inline(always)]
fn fin<const FTZ: bool>(x: u32) -> f32 {
    if FTZ {
        fp::ftz(f(x))
    } else {
        f(x)
    }
}

#[inline(always)]
fn fout<const FTZ: bool, const SAT: bool>(v: f32) -> u32 {
    let v = if FTZ { fp::ftz(v) } else { v };
    let v = if SAT { fp::sat(v) } else { v };
    fp::canon(v)
}

/// A binary f32 operation under a rounding mode.
pub trait FOp2 {
    fn op(a: f32, b: f32, r: Round) -> f32;
}
/// A unary f32 operation under a rounding mode.
pub trait FOp1 {
    fn op(a: f32, r: Round) -> f32;
}

pub struct FAdd;
impl FOp2 for FAdd {
    #[inline(always)]
    fn op(a: f32, b: f32, r: Round) -> f32 {
        fp::add_f32(a, b, r)
    }
}
pub struct FSub;
impl FOp2 for FSub {
    #[inline(always)]
    fn op(a: f32, b: f32, r: Round) -> f32 {
        fp::add_f32(a, -b, r)
    }
}
pub struct FMul;
impl FOp2 for FMul {
    #[inline(always)]
    fn op(a: f32, b: f32, r: Round) -> f32 {
        fp::mul_f32(a, b, r)
    }
}
/// `div.approx.f32` (ISA §9.7.3.8): a·(1/b) within 2 ulp, except that for 2^126 < |b| < 2^128
/// it gives a sign-preserving zero (NaN when a is infinite).
pub struct FDivApprox;
impl FOp2 for FDivApprox {
    #[inline(always)]
    fn op(a: f32, b: f32, _: Round) -> f32 {
        let mb = b.abs();
        if mb > f32::from_bits(0x7e80_0000) && mb < f32::INFINITY && !a.is_nan() {
            if a.is_infinite() {
                return f32::NAN;
            }
            return f32::from_bits((a.to_bits() ^ b.to_bits()) & 0x8000_0000);
        }
        a / b
    }
}
/// `min.NaN/max.NaN .f32`: NaN when either input is NaN.
pub struct FMinNaN;
impl FOp2 for FMinNaN {
    #[inline(always)]
    fn op(a: f32, b: f32, _: Round) -> f32 {
        if a.is_nan() || b.is_nan() {
            f32::NAN
        } else {
            fp::min_f32(a, b)
        }
    }
}
pub struct FMaxNaN;
impl FOp2 for FMaxNaN {
    #[inline(always)]
    fn op(a: f32, b: f32, _: Round) -> f32 {
        if a.is_nan() || b.is_nan() {
            f32::NAN
        } else {
            fp::max_f32(a, b)
        }
    }
}
/// `div.rn.f32` (IEEE), also `div.full.f32` whose documented 2-ulp error this is within.
pub struct FDiv;
impl FOp2 for FDiv {
    #[inline(always)]
    fn op(a: f32, b: f32, _: Round) -> f32 {
        a / b
    }
}
pub struct FMin;
impl FOp2 for FMin {
    #[inline(always)]
    fn op(a: f32, b: f32, _: Round) -> f32 {
        fp::min_f32(a, b)
    }
}
pub struct FMax;
impl FOp2 for FMax {
    #[inline(always)]
    fn op(a: f32, b: f32, _: Round) -> f32 {
        fp::max_f32(a, b)
    }
}

fn f2<O: FOp2, const R: u8, const FTZ: bool, const SAT: bool>(d: &mut R32, x: &R32, y: &R32) {
    for l in 0..32 {
        d[l] = fout::<FTZ, SAT>(O::op(fin::<FTZ>(x[l]), fin::<FTZ>(y[l]), round_of(R)));
    }
}

fn f1<O: FOp1, const R: u8, const FTZ: bool, const SAT: bool>(d: &mut R32, x: &R32) {
    for l in 0..32 {
        d[l] = fout::<FTZ, SAT>(O::op(fin::<FTZ>(x[l]), round_of(R)));
    }
}

fn fma3<const R: u8, const FTZ: bool, const SAT: bool>(d: &mut R32, x: &R32, y: &R32, z: &R32) {
    for l in 0..32 {
        let v = fp::fma_f32(
            fin::<FTZ>(x[l]),
            fin::<FTZ>(y[l]),
            fin::<FTZ>(z[l]),
            round_of(R),
        );
        d[l] = fout::<FTZ, SAT>(v);
    }
}

macro_rules! select_mods {
    ($m:expr, $fun:ident $(, $O:ty)?) => {
        match ($m.round, $m.ftz, $m.sat) {
            (Round::Nearest, false, false) => $fun::<$($O,)? 0, false, false>,
            (Round::Nearest, true, false) => $fun::<$($O,)? 0, true, false>,
            (Round::Nearest, false, true) => $fun::<$($O,)? 0, false, true>,
            (Round::Nearest, true, true) => $fun::<$($O,)? 0, true, true>,
            (Round::Zero, false, false) => $fun::<$($O,)? 1, false, false>,
            (Round::Zero, true, false) => $fun::<$($O,)? 1, true, false>,
            (Round::Zero, false, true) => $fun::<$($O,)? 1, false, true>,
            (Round::Zero, true, true) => $fun::<$($O,)? 1, true, true>,
            (Round::Down, false, false) => $fun::<$($O,)? 2, false, false>,
            (Round::Down, true, false) => $fun::<$($O,)? 2, true, false>,
            (Round::Down, false, true) => $fun::<$($O,)? 2, false, true>,
            (Round::Down, true, true) => $fun::<$($O,)? 2, true, true>,
            (Round::Up, false, false) => $fun::<$($O,)? 3, false, false>,
            (Round::Up, true, false) => $fun::<$($O,)? 3, true, false>,
            (Round::Up, false, true) => $fun::<$($O,)? 3, false, true>,
            (Round::Up, true, true) => $fun::<$($O,)? 3, true, true>,
        }
    };
}

/// `add/sub/mul/div/min/max .f32` with their modifiers; `None` for a combination the ISA
/// does not define.
pub fn bin_f32(op: &str, m: FMods) -> Option<Bin32> {
    let exact_only = m.round == Round::Nearest;
    Some(match op {
        "add" => select_mods!(m, f2, FAdd),
        "sub" => select_mods!(m, f2, FSub),
        "mul" => select_mods!(m, f2, FMul),
        "div" if exact_only => select_mods!(m, f2, FDiv),
        "div.approx" if exact_only => select_mods!(m, f2, FDivApprox),
        "min" if exact_only && !m.sat => select_mods!(m, f2, FMin),
        "max" if exact_only && !m.sat => select_mods!(m, f2, FMax),
        "min.NaN" if exact_only && !m.sat => select_mods!(m, f2, FMinNaN),
        "max.NaN" if exact_only && !m.sat => select_mods!(m, f2, FMaxNaN),
        _ => return None,
    })
}

/// `fma.f32` with its modifiers. Where the host CPU has FMA instructions the lane loop is
/// compiled for them (the portable `mul_add` is a libm call, ~10× slower).
pub fn fma_f32(m: FMods) -> Tern32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("fma") {
        return select_mods!(m, fma3_hw);
    }
    select_mods!(m, fma3)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn fma3_fma<const R: u8, const FTZ: bool, const SAT: bool>(
    d: &mut R32,
    x: &R32,
    y: &R32,
    z: &R32,
) {
    for l in 0..32 {
        let v = fp::fma_f32(
            fin::<FTZ>(x[l]),
            fin::<FTZ>(y[l]),
            fin::<FTZ>(z[l]),
            round_of(R),
        );
        d[l] = fout::<FTZ, SAT>(v);
    }
}

#[cfg(target_arch = "x86_64")]
fn fma3_hw<const R: u8, const FTZ: bool, const SAT: bool>(d: &mut R32, x: &R32, y: &R32, z: &R32) {
    // SAFETY: chosen by `fma_f32` only where the CPU has FMA.
    unsafe { fma3_fma::<R, FTZ, SAT>(d, x, y, z) }
}

pub struct FNeg;
impl FOp1 for FNeg {
    #[inline(always)]
    fn op(a: f32, _: Round) -> f32 {
        -a
    }
}
pub struct FAbs;
impl FOp1 for FAbs {
    #[inline(always)]
    fn op(a: f32, _: Round) -> f32 {
        a.abs()
    }
}
pub struct FRcp;
impl FOp1 for FRcp {
    #[inline(always)]
    fn op(a: f32, _: Round) -> f32 {
        1.0 / a
    }
}
pub struct FSqrt;
impl FOp1 for FSqrt {
    #[inline(always)]
    fn op(a: f32, _: Round) -> f32 {
        a.sqrt()
    }
}
pub struct FRsqrt;
impl FOp1 for FRsqrt {
    #[inline(always)]
    fn op(a: f32, _: Round) -> f32 {
        fp::rsqrt(a)
    }
}
pub struct FEx2;
impl FOp1 for FEx2 {
    #[inline(always)]
    fn op(a: f32, _: Round) -> f32 {
        fp::ex2(a)
    }
}
pub struct FLg2;
impl FOp1 for FLg2 {
    #[inline(always)]
    fn op(a: f32, _: Round) -> f32 {
        fp::lg2(a)
    }
}
pub struct FSin;
impl FOp1 for FSin {
    #[inline(always)]
    fn op(a: f32, _: Round) -> f32 {
        (a as f64).sin() as f32
    }
}
pub struct FCos;
impl FOp1 for FCos {
    #[inline(always)]
    fn op(a: f32, _: Round) -> f32 {
        (a as f64).cos() as f32
    }
}
/// `cvt.{rni,rzi,rmi,rpi}.f32.f32`: round to an integral value.
pub struct FRoundInt;
impl FOp1 for FRoundInt {
    #[inline(always)]
    fn op(a: f32, r: Round) -> f32 {
        fp::round_int(a, r)
    }
}
/// `cvt{.ftz}{.sat}.f32.f32` without integer rounding.
pub struct FIdentity;
impl FOp1 for FIdentity {
    #[inline(always)]
    fn op(a: f32, _: Round) -> f32 {
        a
    }
}

/// Unary f32 operations. `approx` says the instruction had `.approx` (required where the ISA
/// has no exact form).
pub fn un_f32(op: &str, m: FMods, approx: bool) -> Option<Un32> {
    let rn = m.round == Round::Nearest;
    Some(match op {
        "neg" if rn && !m.sat => select_mods!(m, f1, FNeg),
        "abs" if rn && !m.sat => select_mods!(m, f1, FAbs),
        // rcp.rn / sqrt.rn are IEEE; the .approx forms are within their documented bounds.
        "rcp" if rn => select_mods!(m, f1, FRcp),
        "sqrt" if rn => select_mods!(m, f1, FSqrt),
        "rsqrt" if approx => select_mods!(m, f1, FRsqrt),
        "ex2" if approx => select_mods!(m, f1, FEx2),
        "lg2" if approx => select_mods!(m, f1, FLg2),
        "sin" if approx => select_mods!(m, f1, FSin),
        "cos" if approx => select_mods!(m, f1, FCos),
        "cvt.int" => select_mods!(m, f1, FRoundInt),
        "cvt" if rn => select_mods!(m, f1, FIdentity),
        _ => return None,
    })
}

// ---- f64 (round to nearest only). ----

pub fn bin_f64(op: &str) -> Option<Bin64> {
    Some(match op {
        "add" => lanes!(|a: u64, b: u64| -> u64 { fp::canon64(d(a) + d(b)) }),
        "sub" => lanes!(|a: u64, b: u64| -> u64 { fp::canon64(d(a) - d(b)) }),
        "mul" => lanes!(|a: u64, b: u64| -> u64 { fp::canon64(d(a) * d(b)) }),
        "div" => lanes!(|a: u64, b: u64| -> u64 { fp::canon64(d(a) / d(b)) }),
        "min" => lanes!(|a: u64, b: u64| -> u64 {
            let (x, y) = (d(a), d(b));
            if x.is_nan() {
                b
            } else if y.is_nan() || x < y || (x == y && x.is_sign_negative()) {
                a
            } else {
                b
            }
        }),
        "max" => lanes!(|a: u64, b: u64| -> u64 {
            let (x, y) = (d(a), d(b));
            if x.is_nan() {
                b
            } else if y.is_nan() || x > y || (x == y && y.is_sign_negative()) {
                a
            } else {
                b
            }
        }),
        _ => return None,
    })
}

pub fn un_f64(op: &str) -> Option<Un64> {
    Some(match op {
        "neg" => lanes!(|a: u64| -> u64 { a ^ (1 << 63) }),
        "abs" => lanes!(|a: u64| -> u64 { a & !(1 << 63) }),
        "sqrt" => lanes!(|a: u64| -> u64 { fp::canon64(d(a).sqrt()) }),
        "rcp" => lanes!(|a: u64| -> u64 { fp::canon64(1.0 / d(a)) }),
        _ => return None,
    })
}

pub fn fma_f64() -> Tern64 {
    lanes!(|a: u64, b: u64, c: u64| -> u64 { fp::canon64(d(a).mul_add(d(b), d(c))) })
}

// ---- Integers. ----

/// 32-bit integer binary operations; `signed` picks the signed forms of mul.hi, div, rem,
/// min, max and shr.
pub fn bin_i32(op: &str, signed: bool) -> Option<Bin32> {
    Some(match (op, signed) {
        ("add", _) => lanes!(|a: u32, b: u32| -> u32 { a.wrapping_add(b) }),
        ("sub", _) => lanes!(|a: u32, b: u32| -> u32 { a.wrapping_sub(b) }),
        ("mul.lo", _) => lanes!(|a: u32, b: u32| -> u32 { a.wrapping_mul(b) }),
        ("mul.hi", false) => {
            lanes!(|a: u32, b: u32| -> u32 { ((a as u64 * b as u64) >> 32) as u32 })
        }
        ("mul.hi", true) => {
            lanes!(|a: u32, b: u32| -> u32 { ((a as i32 as i64 * b as i32 as i64) >> 32) as u32 })
        }
        ("div", false) => lanes!(|a: u32, b: u32| -> u32 { a.checked_div(b).unwrap_or(u32::MAX) }),
        ("div", true) => lanes!(|a: u32, b: u32| -> u32 {
            (a as i32)
                .checked_div(b as i32)
                .map_or(if b == 0 { u32::MAX } else { a }, |q| q as u32)
        }),
        ("rem", false) => lanes!(|a: u32, b: u32| -> u32 { a.checked_rem(b).unwrap_or(a) }),
        ("rem", true) => lanes!(|a: u32, b: u32| -> u32 {
            (a as i32)
                .checked_rem(b as i32)
                .map_or(if b == 0 { a } else { 0 }, |r| r as u32)
        }),
        ("min", false) => lanes!(|a: u32, b: u32| -> u32 { a.min(b) }),
        ("min", true) => lanes!(|a: u32, b: u32| -> u32 { (a as i32).min(b as i32) as u32 }),
        ("max", false) => lanes!(|a: u32, b: u32| -> u32 { a.max(b) }),
        ("max", true) => lanes!(|a: u32, b: u32| -> u32 { (a as i32).max(b as i32) as u32 }),
        ("and", _) => lanes!(|a: u32, b: u32| -> u32 { a & b }),
        ("or", _) => lanes!(|a: u32, b: u32| -> u32 { a | b }),
        ("xor", _) => lanes!(|a: u32, b: u32| -> u32 { a ^ b }),
        // Shift amounts past the width clamp to the width (ISA §9.7.7.7-8).
        ("shl", _) => lanes!(|a: u32, b: u32| -> u32 {
            if b >= 32 {
                0
            } else {
                a << b
            }
        }),
        ("shr", false) => lanes!(|a: u32, b: u32| -> u32 {
            if b >= 32 {
                0
            } else {
                a >> b
            }
        }),
        ("shr", true) => lanes!(|a: u32, b: u32| -> u32 { ((a as i32) >> b.min(31)) as u32 }),
        _ => return None,
    })
}

/// `shl/shr` on 16-bit values (held zero-extended in the 32-bit file).
pub fn shift_i16(op: &str, signed: bool) -> Option<Bin32> {
    Some(match (op, signed) {
        ("shl", _) => lanes!(|a: u32, b: u32| -> u32 {
            if b >= 16 {
                0
            } else {
                (a << b) & 0xffff
            }
        }),
        ("shr", false) => lanes!(|a: u32, b: u32| -> u32 {
            if b >= 16 {
                0
            } else {
                (a & 0xffff) >> b
            }
        }),
        ("shr", true) => {
            lanes!(|a: u32, b: u32| -> u32 { (((a as u16 as i16) >> b.min(15)) as u16) as u32 })
        }
        _ => return None,
    })
}

pub fn bin_i64(op: &str, signed: bool) -> Option<Bin64> {
    Some(match (op, signed) {
        ("add", _) => lanes!(|a: u64, b: u64| -> u64 { a.wrapping_add(b) }),
        ("sub", _) => lanes!(|a: u64, b: u64| -> u64 { a.wrapping_sub(b) }),
        ("mul.lo", _) => lanes!(|a: u64, b: u64| -> u64 { a.wrapping_mul(b) }),
        ("mul.hi", false) => {
            lanes!(|a: u64, b: u64| -> u64 { ((a as u128 * b as u128) >> 64) as u64 })
        }
        ("mul.hi", true) => {
            lanes!(|a: u64, b: u64| -> u64 { ((a as i64 as i128 * b as i64 as i128) >> 64) as u64 })
        }
        ("div", false) => lanes!(|a: u64, b: u64| -> u64 { a.checked_div(b).unwrap_or(u64::MAX) }),
        ("div", true) => lanes!(|a: u64, b: u64| -> u64 {
            (a as i64)
                .checked_div(b as i64)
                .map_or(if b == 0 { u64::MAX } else { a }, |q| q as u64)
        }),
        ("rem", false) => lanes!(|a: u64, b: u64| -> u64 { a.checked_rem(b).unwrap_or(a) }),
        ("rem", true) => lanes!(|a: u64, b: u64| -> u64 {
            (a as i64)
                .checked_rem(b as i64)
                .map_or(if b == 0 { a } else { 0 }, |r| r as u64)
        }),
        ("min", false) => lanes!(|a: u64, b: u64| -> u64 { a.min(b) }),
        ("min", true) => lanes!(|a: u64, b: u64| -> u64 { (a as i64).min(b as i64) as u64 }),
        ("max", false) => lanes!(|a: u64, b: u64| -> u64 { a.max(b) }),
        ("max", true) => lanes!(|a: u64, b: u64| -> u64 { (a as i64).max(b as i64) as u64 }),
        ("and", _) => lanes!(|a: u64, b: u64| -> u64 { a & b }),
        ("or", _) => lanes!(|a: u64, b: u64| -> u64 { a | b }),
        ("xor", _) => lanes!(|a: u64, b: u64| -> u64 { a ^ b }),
        _ => return None,
    })
}

pub fn shift_i64(op: &str, signed: bool) -> Option<Shift64> {
    Some(match (op, signed) {
        ("shl", _) => lanes!(|a: u64, b: u32| -> u64 {
            if b >= 64 {
                0
            } else {
                a << b
            }
        }),
        ("shr", false) => lanes!(|a: u64, b: u32| -> u64 {
            if b >= 64 {
                0
            } else {
                a >> b
            }
        }),
        ("shr", true) => lanes!(|a: u64, b: u32| -> u64 { ((a as i64) >> b.min(63)) as u64 }),
        _ => return None,
    })
}

pub fn un_i32(op: &str) -> Option<Un32> {
    Some(match op {
        "not" => lanes!(|a: u32| -> u32 { !a }),
        "neg" => lanes!(|a: u32| -> u32 { a.wrapping_neg() }),
        "abs" => lanes!(|a: u32| -> u32 { (a as i32).wrapping_abs() as u32 }),
        "popc" => lanes!(|a: u32| -> u32 { a.count_ones() }),
        "clz" => lanes!(|a: u32| -> u32 { a.leading_zeros() }),
        "brev" => lanes!(|a: u32| -> u32 { a.reverse_bits() }),
        _ => return None,
    })
}

pub fn un_i64(op: &str) -> Option<Un64> {
    Some(match op {
        "not" => lanes!(|a: u64| -> u64 { !a }),
        "neg" => lanes!(|a: u64| -> u64 { a.wrapping_neg() }),
        "abs" => lanes!(|a: u64| -> u64 { (a as i64).wrapping_abs() as u64 }),
        "brev" => lanes!(|a: u64| -> u64 { a.reverse_bits() }),
        _ => return None,
    })
}

/// `mad.lo` / `mad.hi` (32-bit): d = a·b + c, the low or high half of the product.
pub fn mad_i32(hi: bool, signed: bool) -> Tern32 {
    match (hi, signed) {
        (false, _) => lanes!(|a: u32, b: u32, c: u32| -> u32 { a.wrapping_mul(b).wrapping_add(c) }),
        (true, false) => lanes!(|a: u32, b: u32, c: u32| -> u32 {
            (((a as u64 * b as u64) >> 32) as u32).wrapping_add(c)
        }),
        (true, true) => lanes!(|a: u32, b: u32, c: u32| -> u32 {
            (((a as i32 as i64 * b as i32 as i64) >> 32) as u32).wrapping_add(c)
        }),
    }
}

pub fn mad_i64() -> Tern64 {
    lanes!(|a: u64, b: u64, c: u64| -> u64 { a.wrapping_mul(b).wrapping_add(c) })
}

pub fn mul_wide(signed: bool) -> Wide {
    if signed {
        lanes!(|a: u32, b: u32| -> u64 { (a as i32 as i64 * b as i32 as i64) as u64 })
    } else {
        lanes!(|a: u32, b: u32| -> u64 { a as u64 * b as u64 })
    }
}

pub fn mad_wide(signed: bool) -> MadWide {
    if signed {
        lanes!(|a: u32, b: u32, c: u64| -> u64 {
            ((a as i32 as i64 * b as i32 as i64) as u64).wrapping_add(c)
        })
    } else {
        lanes!(|a: u32, b: u32, c: u64| -> u64 { (a as u64 * b as u64).wrapping_add(c) })
    }
}

/// `bfi.b32 d, a, b, c, e`: insert the low `e` bits of a into b at position c (both taken
/// modulo 256, as the ISA's 8-bit fields).
#[inline(always)]
pub fn bfi32(a: u32, b: u32, pos: u32, len: u32) -> u32 {
    let (pos, len) = (pos & 0xff, len & 0xff);
    if len == 0 || pos >= 32 {
        return b;
    }
    let len = len.min(32 - pos);
    let mask = if len == 32 {
        u32::MAX
    } else {
        ((1u32 << len) - 1) << pos
    };
    (b & !mask) | ((a << pos) & mask)
}

#[inline(always)]
pub fn bfi64(a: u64, b: u64, pos: u32, len: u32) -> u64 {
    let (pos, len) = (pos & 0xff, len & 0xff);
    if len == 0 || pos >= 64 {
        return b;
    }
    let len = len.min(64 - pos);
    let mask = if len == 64 {
        u64::MAX
    } else {
        ((1u64 << len) - 1) << pos
    };
    (b & !mask) | ((a << pos) & mask)
}

// ---- Conversions. ----

#[inline(always)]
fn extend<const BITS: u32, const SIGNED: bool>(v: u64) -> u64 {
    if BITS == 64 {
        v
    } else if SIGNED {
        let s = 64 - BITS;
        (((v << s) as i64) >> s) as u64
    } else {
        v & ((1u64 << BITS) - 1)
    }
}

#[inline(always)]
fn truncate<const BITS: u32>(v: u64) -> u64 {
    if BITS == 64 {
        v
    } else {
        v & ((1u64 << BITS) - 1)
    }
}

fn icvt32<const SB: u32, const SS: bool, const DB: u32>(d: &mut R32, x: &R32) {
    for l in 0..32 {
        d[l] = truncate::<DB>(extend::<SB, SS>(x[l] as u64)) as u32;
    }
}
fn icvt_widen<const SB: u32, const SS: bool>(d: &mut R64, x: &R32) {
    for l in 0..32 {
        d[l] = extend::<SB, SS>(x[l] as u64);
    }
}
fn icvt_narrow<const DB: u32>(d: &mut R32, x: &R64) {
    for l in 0..32 {
        d[l] = truncate::<DB>(x[l]) as u32;
    }
}
fn icvt64<const SB: u32, const SS: bool>(d: &mut R64, x: &R64) {
    for l in 0..32 {
        d[l] = extend::<SB, SS>(x[l]);
    }
}

macro_rules! by_bits {
    ($bits:expr, $signed:expr, |$B:ident, $S:ident| $e:expr) => {
        match ($bits, $signed) {
            (8, false) => {
                const $B: u32 = 8;
                const $S: bool = false;
                $e
            }
            (8, true) => {
                const $B: u32 = 8;
                const $S: bool = true;
                $e
            }
            (16, false) => {
                const $B: u32 = 16;
                const $S: bool = false;
                $e
            }
            (16, true) => {
                const $B: u32 = 16;
                const $S: bool = true;
                $e
            }
            (32, false) => {
                const $B: u32 = 32;
                const $S: bool = false;
                $e
            }
            (32, true) => {
                const $B: u32 = 32;
                const $S: bool = true;
                $e
            }
            (_, false) => {
                const $B: u32 = 64;
                const $S: bool = false;
                $e
            }
            (_, true) => {
                const $B: u32 = 64;
                const $S: bool = true;
                $e
            }
        }
    };
}

/// The integer-to-integer conversion between two types held in the 32-bit file.
pub fn int_cvt32(src: Ty, dst: Ty) -> Un32 {
    let db = dst.bytes() * 8;
    by_bits!(src.bytes() * 8, src.is_signed(), |B, S| match db {
        8 => icvt32::<B, S, 8>,
        16 => icvt32::<B, S, 16>,
        _ => icvt32::<B, S, 32>,
    })
}

/// Integer widening from the 32-bit file to the 64-bit one.
pub fn int_widen(src: Ty) -> Widen {
    by_bits!(src.bytes() * 8, src.is_signed(), |B, S| icvt_widen::<B, S>)
}

/// Integer narrowing from the 64-bit file into `dst`.
pub fn int_narrow(dst: Ty) -> Narrow {
    match dst.bytes() {
        1 => icvt_narrow::<8>,
        2 => icvt_narrow::<16>,
        _ => icvt_narrow::<32>,
    }
}

pub fn int_cvt64(src: Ty) -> Un64 {
    by_bits!(src.bytes() * 8, src.is_signed(), |B, S| icvt64::<B, S>)
}

/// A float of type `src` (f16, bf16 or f32, in the 32-bit file) as an f32.
#[inline(always)]
fn float_in<const K: u8>(x: u32) -> f32 {
    match K {
        0 => f(x),
        1 => f(fp::f16_to_f32(x as u16)),
        _ => f(fp::bf16_to_f32(x as u16)),
    }
}

fn kind_of(t: Ty) -> Option<u8> {
    match t {
        Ty::F32 => Some(0),
        Ty::F16 => Some(1),
        Ty::BF16 => Some(2),
        _ => None,
    }
}

fn f2int<const K: u8, const R: u8, const B: u32, const S: bool, const FTZ: bool>(
    d: &mut R32,
    x: &R32,
) {
    for l in 0..32 {
        let v = fp::round_int(fin::<FTZ>(float_in::<K>(x[l]).to_bits()), round_of(R));
        // `as` saturates and maps NaN to 0, as cvt does (ISA §9.7.9.21).
        let i: u32 = match (B, S) {
            (8, false) => v as u8 as u32,
            (8, true) => v as i8 as u8 as u32,
            (16, false) => v as u16 as u32,
            (16, true) => v as i16 as u16 as u32,
            (_, false) => v as u32,
            (_, true) => v as i32 as u32,
        };
        d[l] = i;
    }
}

/// Float to a 64-bit integer: clamped; NaN gives 1 << 63 (ISA §9.7.9.21, Integer Notes).
fn f2int64<const K: u8, const R: u8, const S: bool, const FTZ: bool>(d: &mut R64, x: &R32) {
    for l in 0..32 {
        let v = fp::round_int(fin::<FTZ>(float_in::<K>(x[l]).to_bits()), round_of(R));
        d[l] = if v.is_nan() {
            1 << 63
        } else if S {
            v as i64 as u64
        } else {
            v as u64
        };
    }
}

/// f64 to a 16- or 32-bit integer: clamped; NaN gives 1 << (bits - 1) (ISA §9.7.9.21).
fn d2int<const R: u8, const B: u32, const S: bool>(d: &mut R32, x: &R64) {
    for l in 0..32 {
        let v = fp::round_int64(f64::from_bits(x[l]), round_of(R));
        if v.is_nan() {
            d[l] = 1 << (B - 1);
            continue;
        }
        d[l] = match (B, S) {
            (16, false) => v as u16 as u32,
            (16, true) => v as i16 as u16 as u32,
            (_, false) => v as u32,
            (_, true) => v as i32 as u32,
        };
    }
}

fn d2int64<const R: u8, const S: bool>(d: &mut R64, x: &R64) {
    for l in 0..32 {
        let v = fp::round_int64(f64::from_bits(x[l]), round_of(R));
        d[l] = if v.is_nan() {
            1 << 63
        } else if S {
            v as i64 as u64
        } else {
            v as u64
        };
    }
}

fn int2f<const B: u32, const S: bool, const R: u8, const K: u8>(d: &mut R32, x: &R32) {
    for l in 0..32 {
        let v = extend::<B, S>(x[l] as u64);
        let exact = if S { v as i64 as i128 } else { v as i128 };
        d[l] = int_to_k::<K>(exact, round_of(R));
    }
}

/// An exact integer rounded once to float kind K (0 f32, 1 f16, 2 bf16), as bits.
#[inline(always)]
fn int_to_k<const K: u8>(v: i128, r: Round) -> u32 {
    match K {
        0 => fp::canon(fp::int_to_float(v, fp::F32, r) as f32),
        1 => fp::f64_to_16(fp::int_to_float(v, fp::F16, r), fp::F16, Round::Nearest) as u32,
        _ => fp::f64_to_16(fp::int_to_float(v, fp::BF16, r), fp::BF16, Round::Nearest) as u32,
    }
}

fn int64_to_f<const S: bool, const R: u8, const K: u8>(d: &mut R32, x: &R64) {
    for l in 0..32 {
        let v = if S { x[l] as i64 as i128 } else { x[l] as i128 };
        d[l] = int_to_k::<K>(v, round_of(R));
    }
}

fn float_cvt<const SK: u8, const DK: u8, const R: u8, const FTZ: bool, const SAT: bool>(
    d: &mut R32,
    x: &R32,
) {
    for l in 0..32 {
        let v = fin::<FTZ>(float_in::<SK>(x[l]).to_bits());
        let v = if SAT { fp::sat(v) } else { v };
        d[l] = match DK {
            0 => fout::<FTZ, false>(v),
            1 => fp::f32_to_f16(v, round_of(R)) as u32,
            _ => fp::f32_to_bf16(v, round_of(R)) as u32,
        };
    }
}

fn pack_x2<const DK: u8, const R: u8>(d: &mut R32, x: &R32, y: &R32) {
    for l in 0..32 {
        let cv = |v: u32| match DK {
            1 => fp::f32_to_f16(f(v), round_of(R)) as u32,
            _ => fp::f32_to_bf16(f(v), round_of(R)) as u32,
        };
        // ISA §9.7.9.21: the first source goes to the upper half, the second to the lower.
        d[l] = (cv(x[l]) << 16) | cv(y[l]);
    }
}

const fn rcode(r: Round) -> u8 {
    match r {
        Round::Nearest => 0,
        Round::Zero => 1,
        Round::Down => 2,
        Round::Up => 3,
    }
}

macro_rules! by_round {
    ($r:expr, |$R:ident| $e:expr) => {
        match rcode($r) {
            0 => {
                const $R: u8 = 0;
                $e
            }
            1 => {
                const $R: u8 = 1;
                $e
            }
            2 => {
                const $R: u8 = 2;
                $e
            }
            _ => {
                const $R: u8 = 3;
                $e
            }
        }
    };
}

macro_rules! by_kind {
    ($k:expr, |$K:ident| $e:expr) => {
        match $k {
            0 => {
                const $K: u8 = 0;
                $e
            }
            1 => {
                const $K: u8 = 1;
                $e
            }
            _ => {
                const $K: u8 = 2;
                $e
            }
        }
    };
}

macro_rules! by_bool {
    ($b:expr, |$B:ident| $e:expr) => {
        if $b {
            const $B: bool = true;
            $e
        } else {
            const $B: bool = false;
            $e
        }
    };
}

/// Where a conversion reads and writes: the 32- or 64-bit register file on each side.
pub enum Cvt {
    R32(Un32),
    Widen(Widen),
    Narrow(Narrow),
    R64(Un64),
    /// Two f32 sources packed into one register (`cvt.rn.f16x2.f32 d, a, b`).
    Pack(Bin32),
}

/// `cvt{.rnd}{.ftz}{.sat}.dst.src`: `int_round` is the `.rni/.rzi/...` mode for float results
/// rounded to integers; `round` the float rounding (`.rn/...`, default nearest).
pub fn cvt(
    dst: Ty,
    src: Ty,
    round: Round,
    int_round: Option<Round>,
    ftz: bool,
    sat: bool,
) -> Option<Cvt> {
    let float = |t: Ty| t.is_float();
    let int = |t: Ty| !t.is_float() && t != Ty::Pred;
    if int(dst) && int(src) {
        if sat {
            return None;
        }
        return Some(match (dst.is_wide(), src.is_wide()) {
            (false, false) => Cvt::R32(int_cvt32(src, dst)),
            (true, false) => Cvt::Widen(int_widen(src)),
            (false, true) => Cvt::Narrow(int_narrow(dst)),
            (true, true) => Cvt::R64(int_cvt64(src)),
        });
    }
    if int(dst) && float(src) {
        // `.sat` is redundant: float-to-integer conversions always clamp (ISA §9.7.9.21).
        let r = int_round.unwrap_or(Round::Zero);
        if src == Ty::F64 {
            return Some(by_round!(r, |R| if dst.is_wide() {
                by_bool!(dst.is_signed(), |S| Cvt::R64(d2int64::<R, S>))
            } else {
                by_bool!(dst.is_signed(), |S| match dst.bytes() {
                    2 => Cvt::Narrow(d2int::<R, 16, S>),
                    _ => Cvt::Narrow(d2int::<R, 32, S>),
                })
            }));
        }
        let k = kind_of(src)?;
        return Some(by_kind!(k, |K| by_round!(r, |R| by_bool!(
            ftz,
            |F| if dst.is_wide() {
                by_bool!(dst.is_signed(), |S| Cvt::Widen(f2int64::<K, R, S, F>))
            } else {
                by_bool!(dst.is_signed(), |S| match dst.bytes() {
                    1 => Cvt::R32(f2int::<K, R, 8, S, F>),
                    2 => Cvt::R32(f2int::<K, R, 16, S, F>),
                    _ => Cvt::R32(f2int::<K, R, 32, S, F>),
                })
            }
        ))));
    }
    if float(dst) && int(src) {
        if dst == Ty::F64 {
            if round != Round::Nearest || sat {
                return None;
            }
            return Some(if src.is_wide() {
                if src.is_signed() {
                    Cvt::R64(lanes!(|a: u64| -> u64 { (a as i64 as f64).to_bits() }))
                } else {
                    Cvt::R64(lanes!(|a: u64| -> u64 { (a as f64).to_bits() }))
                }
            } else if src.is_signed() {
                Cvt::Widen(lanes!(|a: u32| -> u64 { (a as i32 as f64).to_bits() }))
            } else {
                Cvt::Widen(lanes!(|a: u32| -> u64 { (a as f64).to_bits() }))
            });
        }
        let k = kind_of(dst)?;
        if sat {
            return None;
        }
        if src.is_wide() {
            return Some(by_bool!(src.is_signed(), |S| by_round!(
                round,
                |R| by_kind!(k, |K| Cvt::Narrow(int64_to_f::<S, R, K>))
            )));
        }
        return Some(by_bits!(
            src.bytes() * 8,
            src.is_signed(),
            |B, S| by_round!(round, |R| by_kind!(k, |K| Cvt::R32(int2f::<B, S, R, K>)))
        ));
    }
    // float to float
    match (dst, src) {
        (Ty::F64, Ty::F32) => {
            if ftz {
                Some(Cvt::Widen(lanes!(|a: u32| -> u64 {
                    fp::canon64(fp::ftz(f(a)) as f64)
                })))
            } else {
                Some(Cvt::Widen(lanes!(|a: u32| -> u64 {
                    fp::canon64(f(a) as f64)
                })))
            }
        }
        (Ty::F32, Ty::F64) => {
            if sat || ftz {
                return None;
            }
            Some(by_round!(round, |R| {
                fn g<const RR: u8>(d: &mut R32, x: &R64) {
                    for l in 0..32 {
                        d[l] = fp::canon(fp::f64_to_f32(f64::from_bits(x[l]), round_of(RR)));
                    }
                }
                Cvt::Narrow(g::<R>)
            }))
        }
        (Ty::F64, Ty::F16 | Ty::BF16) => {
            if ftz || sat {
                return None;
            }
            Some(if src == Ty::F16 {
                Cvt::Widen(lanes!(|a: u32| -> u64 {
                    fp::canon64(f(fp::f16_to_f32(a as u16)) as f64)
                }))
            } else {
                Cvt::Widen(lanes!(|a: u32| -> u64 {
                    fp::canon64(f(fp::bf16_to_f32(a as u16)) as f64)
                }))
            })
        }
        (Ty::F16 | Ty::BF16, Ty::F64) => {
            if ftz || sat || int_round.is_some() {
                return None;
            }
            let k = kind_of(dst)?;
            Some(by_round!(round, |R| by_kind!(k, |K| {
                fn g<const RR: u8, const KK: u8>(d: &mut R32, x: &R64) {
                    let fmt = if KK == 1 { fp::F16 } else { fp::BF16 };
                    for l in 0..32 {
                        d[l] = fp::f64_to_16(f64::from_bits(x[l]), fmt, round_of(RR)) as u32;
                    }
                }
                Cvt::Narrow(g::<R, K>)
            })))
        }
        (Ty::F64, Ty::F64) => {
            let r = int_round?;
            Some(by_round!(r, |R| {
                fn g<const RR: u8>(d: &mut R64, x: &R64) {
                    for l in 0..32 {
                        d[l] = fp::canon64(fp::round_int64(f64::from_bits(x[l]), round_of(RR)));
                    }
                }
                Cvt::R64(g::<R>)
            }))
        }
        (Ty::F32, Ty::F32) => {
            let m = FMods {
                round: int_round.unwrap_or(Round::Nearest),
                ftz,
                sat,
            };
            if int_round.is_some() {
                un_f32("cvt.int", m, false).map(Cvt::R32)
            } else {
                un_f32("cvt", m, false).map(Cvt::R32)
            }
        }
        (d, s) => {
            let (dk, sk) = (kind_of(d)?, kind_of(s)?);
            if int_round.is_some() {
                return None;
            }
            Some(by_kind!(sk, |SK| by_kind!(dk, |DK| by_round!(
                round,
                |R| by_bool!(ftz, |F| by_bool!(sat, |SA| Cvt::R32(
                    float_cvt::<SK, DK, R, F, SA>
                )))
            ))))
        }
    }
}

/// `.relu` (negative results become +0, NaN the canonical NaN) and `.satfinite` (±inf become
/// the largest finite value of the sign) on a 16-bit float result (ISA §9.7.9.21).
pub fn clamp16(v: u16, bf16: bool, relu: bool, satfinite: bool) -> u16 {
    let (inf, max) = if bf16 {
        (0x7f80, 0x7f7f)
    } else {
        (0x7c00, 0x7bff)
    };
    let nan = (v & 0x7fff) > inf;
    if nan {
        return fp::CANONICAL_NAN_16;
    }
    let mut v = v;
    if satfinite && v & 0x7fff == inf {
        v = (v & 0x8000) | max;
    }
    if relu && v & 0x8000 != 0 {
        v = 0;
    }
    v
}

/// `cvt.rn.{f16x2,bf16x2}.f32 d, a, b`.
pub fn cvt_pack(dst: Ty, round: Round) -> Option<Bin32> {
    let k = match dst {
        Ty::F16x2 => 1,
        Ty::BF16x2 => 2,
        _ => return None,
    };
    Some(by_round!(round, |R| if k == 1 {
        pack_x2::<1, R>
    } else {
        pack_x2::<2, R>
    }))
}

// ---- Comparisons (setp). ----

/// A comparison operator of `setp` (ISA §9.7.3.x, Table "Floating-point comparison operators").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Lo,
    Ls,
    Hi,
    Hs,
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    Num,
    Nan,
}

impl CmpOp {
    pub fn parse(s: &str) -> Option<CmpOp> {
        Some(match s {
            "eq" => CmpOp::Eq,
            "ne" => CmpOp::Ne,
            "lt" => CmpOp::Lt,
            "le" => CmpOp::Le,
            "gt" => CmpOp::Gt,
            "ge" => CmpOp::Ge,
            "lo" => CmpOp::Lo,
            "ls" => CmpOp::Ls,
            "hi" => CmpOp::Hi,
            "hs" => CmpOp::Hs,
            "equ" => CmpOp::Equ,
            "neu" => CmpOp::Neu,
            "ltu" => CmpOp::Ltu,
            "leu" => CmpOp::Leu,
            "gtu" => CmpOp::Gtu,
            "geu" => CmpOp::Geu,
            "num" => CmpOp::Num,
            "nan" => CmpOp::Nan,
            _ => return None,
        })
    }
}

#[inline(always)]
fn fcmp<const C: u8>(a: f64, b: f64) -> bool {
    let un = a.is_nan() || b.is_nan();
    match C {
        0 => a == b,
        1 => !un && a != b,
        2 => a < b,
        3 => a <= b,
        4 => a > b,
        5 => a >= b,
        10 => un || a == b,
        11 => un || a != b,
        12 => un || a < b,
        13 => un || a <= b,
        14 => un || a > b,
        15 => un || a >= b,
        16 => !un,
        _ => un,
    }
}

#[inline(always)]
fn icmp<const C: u8, T: PartialOrd>(a: T, b: T) -> bool {
    match C {
        0 => a == b,
        1 => a != b,
        2 | 6 => a < b,
        3 | 7 => a <= b,
        4 | 8 => a > b,
        _ => a >= b,
    }
}

fn cmp_f32<const C: u8, const FTZ: bool>(x: &R32, y: &R32) -> u32 {
    let mut m = 0;
    for l in 0..32 {
        let (a, b) = (fin::<FTZ>(x[l]) as f64, fin::<FTZ>(y[l]) as f64);
        m |= (fcmp::<C>(a, b) as u32) << l;
    }
    m
}

fn cmp_f64<const C: u8>(x: &R64, y: &R64) -> u32 {
    let mut m = 0;
    for l in 0..32 {
        m |= (fcmp::<C>(d(x[l]), d(y[l])) as u32) << l;
    }
    m
}

fn cmp_i32<const C: u8, const B: u32, const S: bool>(x: &R32, y: &R32) -> u32 {
    let mut m = 0;
    for l in 0..32 {
        let (a, b) = (extend::<B, S>(x[l] as u64), extend::<B, S>(y[l] as u64));
        let r = if S && C < 6 {
            icmp::<C, i64>(a as i64, b as i64)
        } else {
            icmp::<C, u64>(a, b)
        };
        m |= (r as u32) << l;
    }
    m
}

fn cmp_i64<const C: u8, const S: bool>(x: &R64, y: &R64) -> u32 {
    let mut m = 0;
    for l in 0..32 {
        let r = if S && C < 6 {
            icmp::<C, i64>(x[l] as i64, y[l] as i64)
        } else {
            icmp::<C, u64>(x[l], y[l])
        };
        m |= (r as u32) << l;
    }
    m
}

macro_rules! by_cmp {
    ($c:expr, [$($code:literal),*], |$C:ident| $e:expr) => {
        match $c {
            $( $code => { const $C: u8 = $code; $e } )*
            _ => return None,
        }
    };
}

fn cmp_code(c: CmpOp) -> u8 {
    match c {
        CmpOp::Eq => 0,
        CmpOp::Ne => 1,
        CmpOp::Lt => 2,
        CmpOp::Le => 3,
        CmpOp::Gt => 4,
        CmpOp::Ge => 5,
        CmpOp::Lo => 6,
        CmpOp::Ls => 7,
        CmpOp::Hi => 8,
        CmpOp::Hs => 9,
        CmpOp::Equ => 10,
        CmpOp::Neu => 11,
        CmpOp::Ltu => 12,
        CmpOp::Leu => 13,
        CmpOp::Gtu => 14,
        CmpOp::Geu => 15,
        CmpOp::Num => 16,
        CmpOp::Nan => 17,
    }
}

/// A comparison in the 32-bit file.
pub fn cmp32(c: CmpOp, ty: Ty, ftz: bool) -> Option<Cmp32> {
    let code = cmp_code(c);
    match ty {
        Ty::F32 => Some(by_bool!(ftz, |F| by_cmp!(
            code,
            [0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15, 16, 17],
            |C| cmp_f32::<C, F>
        ))),
        Ty::F16 | Ty::BF16 | Ty::F16x2 | Ty::BF16x2 | Ty::F64 | Ty::Pred => None,
        _ if code >= 10 => None,
        _ if !ty.is_signed() || code < 6 => {
            if matches!(ty, Ty::B8 | Ty::B16 | Ty::B32) && code > 1 {
                return None;
            }
            Some(by_bits!(ty.bytes() * 8, ty.is_signed(), |B, S| by_cmp!(
                code,
                [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                |C| cmp_i32::<C, B, S>
            )))
        }
        _ => None,
    }
}

pub fn cmp64(c: CmpOp, ty: Ty) -> Option<Cmp64> {
    let code = cmp_code(c);
    match ty {
        Ty::F64 => Some(by_cmp!(
            code,
            [0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15, 16, 17],
            |C| cmp_f64::<C>
        )),
        _ if code >= 10 => None,
        Ty::B64 if code > 1 => None,
        Ty::S64 if code >= 6 => None,
        _ => Some(by_bool!(ty.is_signed(), |S| by_cmp!(
            code,
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            |C| cmp_i64::<C, S>
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_bin(f: Bin32, a: u32, b: u32) -> u32 {
        let mut d = [0; 32];
        f(&mut d, &[a; 32], &[b; 32]);
        d[0]
    }

    #[test]
    fn integer_semantics() {
        let div = bin_i32("div", true).unwrap();
        assert_eq!(run_bin(div, (-7i32) as u32, 2) as i32, -3);
        assert_eq!(run_bin(div, 5, 0), u32::MAX);
        assert_eq!(run_bin(div, i32::MIN as u32, u32::MAX), i32::MIN as u32);
        let rem = bin_i32("rem", true).unwrap();
        assert_eq!(run_bin(rem, (-7i32) as u32, 2) as i32, -1);
        let shr = bin_i32("shr", true).unwrap();
        assert_eq!(run_bin(shr, 0x8000_0000, 40), u32::MAX);
        let shl = bin_i32("shl", false).unwrap();
        assert_eq!(run_bin(shl, 1, 32), 0);
        let hi = bin_i32("mul.hi", true).unwrap();
        assert_eq!(run_bin(hi, (-2i32) as u32, 3) as i32, -1);
        assert_eq!(bfi32(0b101, 0xffff_0000, 4, 3), 0xffff_0050);
        assert_eq!(bfi32(0xff, 0, 30, 8), 0xc000_0000);
    }

    #[test]
    fn comparisons_order_and_nan() {
        let lt = cmp32(CmpOp::Lt, Ty::F32, false).unwrap();
        let ltu = cmp32(CmpOp::Ltu, Ty::F32, false).unwrap();
        let mut a = [0u32; 32];
        let mut b = [0u32; 32];
        a[0] = f32::NAN.to_bits();
        b[0] = 1f32.to_bits();
        a[1] = 0.5f32.to_bits();
        b[1] = 1f32.to_bits();
        assert_eq!(lt(&a, &b) & 3, 0b10);
        assert_eq!(ltu(&a, &b) & 3, 0b11);
        let lts = cmp32(CmpOp::Lt, Ty::S32, false).unwrap();
        let ltu32 = cmp32(CmpOp::Lt, Ty::U32, false).unwrap();
        let x = [u32::MAX; 32];
        let y = [1u32; 32];
        assert_eq!(lts(&x, &y), u32::MAX);
        assert_eq!(ltu32(&x, &y), 0);
        assert!(cmp32(CmpOp::Lt, Ty::B32, false).is_none());
    }

    #[test]
    fn conversions() {
        let Some(Cvt::R32(rzi)) = cvt(
            Ty::S32,
            Ty::F32,
            Round::Nearest,
            Some(Round::Zero),
            false,
            false,
        ) else {
            panic!()
        };
        let mut d = [0u32; 32];
        let mut x = [0u32; 32];
        x[0] = (-2.7f32).to_bits();
        x[1] = f32::NAN.to_bits();
        x[2] = 3e10f32.to_bits();
        rzi(&mut d, &x);
        assert_eq!(d[0] as i32, -2);
        assert_eq!(d[1], 0);
        assert_eq!(d[2] as i32, i32::MAX);
        let Some(Cvt::Widen(sx)) = cvt(Ty::S64, Ty::S32, Round::Nearest, None, false, false) else {
            panic!()
        };
        let mut w = [0u64; 32];
        sx(&mut w, &[(-5i32) as u32; 32]);
        assert_eq!(w[0] as i64, -5);
        let pack = cvt_pack(Ty::F16x2, Round::Nearest).unwrap();
        let mut p = [0u32; 32];
        pack(&mut p, &[1f32.to_bits(); 32], &[2f32.to_bits(); 32]);
        assert_eq!(p[0], 0x3c00_4000, "first source in the upper half");
    }
}
