//! Floating-point semantics of PTX (ISA §9.7.3 "Floating-point instructions", §9.7.9.21 `cvt`):
//! the four IEEE rounding modes for add/mul/fma, `.ftz`, `.sat`, integer rounding, the 16-bit
//! formats and their packed `x2` forms, and the approximate functions.
//!
//! Round-to-nearest arithmetic is the host's (IEEE 754, the same as the GPU's `.rn`). Directed
//! rounding is derived from the exact result: a sum or product of f32 values is held exactly as
//! an unevaluated pair of f64 (`hi + lo`), rounded to nearest, and stepped one ulp where that
//! went the wrong way. NaN results are the canonical NaN `0x7fffffff` (f32) and `0x7fff`
//! (f16/bf16), as NVIDIA GPUs produce; the hardware probe records the real bits.

/// A rounding mode of a floating-point result (`.rn`, `.rz`, `.rm`, `.rp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Round {
    Nearest,
    Zero,
    Down,
    Up,
}

pub const CANONICAL_NAN_F32: u32 = 0x7fff_ffff;
pub const CANONICAL_NAN_16: u16 = 0x7fff;

/// The bits of an f32 result, NaN made canonical.
#[inline(always)]
pub fn canon(x: f32) -> u32 {
    if x.is_nan() {
        CANONICAL_NAN_F32
    } else {
        x.to_bits()
    }
}

#[inline(always)]
pub fn canon64(x: f64) -> u64 {
    if x.is_nan() {
        0x7fff_ffff_ffff_ffff
    } else {
        x.to_bits()
    }
}

/// `.ftz`: a subnormal becomes a zero of the same sign.
#[inline(always)]
pub fn ftz(x: f32) -> f32 {
    if x.is_subnormal() {
        f32::from_bits(x.to_bits() & 0x8000_0000)
    } else {
        x
    }
}

/// `.sat`: clamp to [0, 1], NaN to +0.
#[inline(always)]
pub fn sat(x: f32) -> f32 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

/// The exact sum of two f64 as `(hi, lo)` with `hi = fl(a + b)` (Knuth's TwoSum).
#[inline(always)]
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    let err = (a - (s - bb)) + (b - bb);
    (s, err)
}

/// `hi + lo` (exact, `|lo| <= ulp(hi)/2`) rounded to f32 in `mode`.
fn round_pair(hi: f64, lo: f64, mode: Round) -> f32 {
    let t = hi as f32;
    if mode == Round::Nearest || hi.is_nan() {
        // `hi as f32` is RN(hi); a tie in hi broken by lo needs the exact comparison below.
        if t.is_finite() && lo != 0.0 {
            let below = f32_step(t, false);
            let above = f32_step(t, true);
            let v = |x: f32| (x as f64 - hi) - lo; // x - exact, sign-exact
            let (dt, db, da) = (v(t).abs(), v(below).abs(), v(above).abs());
            if db < dt {
                return below;
            }
            if da < dt {
                return above;
            }
        }
        return t;
    }
    if t.is_infinite() && hi.is_finite() {
        let pos = hi > 0.0;
        return match (mode, pos) {
            (Round::Zero, true) | (Round::Down, true) => f32::MAX,
            (Round::Zero, false) | (Round::Up, false) => f32::MIN,
            (_, true) => f32::INFINITY,
            (_, false) => f32::NEG_INFINITY,
        };
    }
    if !t.is_finite() {
        return t;
    }
    // sign of t - exact: (t - hi) is exact in f64, and subtracting lo keeps the sign.
    let d = (t as f64 - hi) - lo;
    let exact_pos = hi > 0.0 || (hi == 0.0 && lo > 0.0);
    match mode {
        Round::Down if d > 0.0 => f32_step(t, false),
        Round::Up if d < 0.0 => f32_step(t, true),
        Round::Zero if exact_pos && d > 0.0 => f32_step(t, false),
        Round::Zero if !exact_pos && d < 0.0 => f32_step(t, true),
        _ => t,
    }
}

/// The next f32 above (`up`) or below `x`.
fn f32_step(x: f32, up: bool) -> f32 {
    if x.is_nan() || (x.is_infinite() && (x > 0.0) == up) {
        return x;
    }
    if x == 0.0 {
        let tiny = f32::from_bits(1);
        return if up { tiny } else { -tiny };
    }
    let b = x.to_bits();
    let away = (x > 0.0) == up;
    f32::from_bits(if away { b + 1 } else { b - 1 })
}

/// An exact zero result's sign: IEEE gives -0 in round-down, else +0, unless both addends are
/// zeros of the same sign.
fn zero_sum(a: f64, b: f64, mode: Round) -> f32 {
    if a == 0.0 && b == 0.0 && a.is_sign_negative() == b.is_sign_negative() {
        return if a.is_sign_negative() { -0.0 } else { 0.0 };
    }
    if mode == Round::Down {
        -0.0
    } else {
        0.0
    }
}

#[inline(always)]
pub fn add_f32(a: f32, b: f32, mode: Round) -> f32 {
    if mode == Round::Nearest {
        return a + b;
    }
    let (x, y) = (a as f64, b as f64);
    let (hi, lo) = two_sum(x, y);
    if hi == 0.0 && lo == 0.0 {
        return zero_sum(x, y, mode);
    }
    round_pair(hi, lo, mode)
}

#[inline(always)]
pub fn mul_f32(a: f32, b: f32, mode: Round) -> f32 {
    if mode == Round::Nearest {
        return a * b;
    }
    // The product of two f32 is exact in f64 (48 significant bits).
    round_pair(a as f64 * b as f64, 0.0, mode)
}

#[inline(always)]
pub fn fma_f32(a: f32, b: f32, c: f32, mode: Round) -> f32 {
    if mode == Round::Nearest {
        return a.mul_add(b, c);
    }
    let p = a as f64 * b as f64;
    if p.is_infinite() || p.is_nan() || c.is_infinite() || c.is_nan() {
        return a.mul_add(b, c);
    }
    let (hi, lo) = two_sum(p, c as f64);
    if hi == 0.0 && lo == 0.0 {
        return zero_sum(p, c as f64, mode);
    }
    round_pair(hi, lo, mode)
}

/// f64 → f32 in `mode`.
pub fn f64_to_f32(x: f64, mode: Round) -> f32 {
    round_pair(x, 0.0, mode)
}

/// PTX `max.f32`: NaN only when both are NaN; +0 is above -0.
#[inline(always)]
pub fn max_f32(a: f32, b: f32) -> f32 {
    if a.is_nan() {
        return b;
    }
    if b.is_nan() {
        return a;
    }
    if a == 0.0 && b == 0.0 {
        return f32::from_bits(a.to_bits() & b.to_bits());
    }
    if a > b {
        a
    } else {
        b
    }
}

/// PTX `min.f32`: NaN only when both are NaN; -0 is below +0.
#[inline(always)]
pub fn min_f32(a: f32, b: f32) -> f32 {
    if a.is_nan() {
        return b;
    }
    if b.is_nan() {
        return a;
    }
    if a == 0.0 && b == 0.0 {
        return f32::from_bits(a.to_bits() | b.to_bits());
    }
    if a < b {
        a
    } else {
        b
    }
}

/// `cvt.rn.f16.f32` (and `.rz/.rm/.rp`) as bits.
pub fn f32_to_f16(x: f32, mode: Round) -> u16 {
    if x.is_nan() {
        return CANONICAL_NAN_16;
    }
    if mode == Round::Nearest {
        return half::f16::from_f32(x).to_bits();
    }
    f64_to_16(x as f64, F16, mode)
}

/// `cvt.rn.bf16.f32` (and directed modes) as bits.
pub fn f32_to_bf16(x: f32, mode: Round) -> u16 {
    if x.is_nan() {
        return CANONICAL_NAN_16;
    }
    if mode == Round::Nearest {
        return half::bf16::from_f32(x).to_bits();
    }
    f64_to_16(x as f64, BF16, mode)
}

/// A binary floating-point format's parameters, for exact rounding into it.
#[derive(Clone, Copy, Debug)]
pub struct Format {
    /// Significand bits including the implicit one (f16: 11, bf16: 8, f32: 24).
    pub precision: u32,
    /// The smallest normal exponent (f16: -14, bf16 and f32: -126).
    pub emin: i32,
    /// The largest finite value.
    pub max: f64,
}

pub const F16: Format = Format {
    precision: 11,
    emin: -14,
    max: 65504.0,
};
pub const BF16: Format = Format {
    precision: 8,
    emin: -126,
    max: 3.3895313892515355e38,
};
pub const F32: Format = Format {
    precision: 24,
    emin: -126,
    max: f32::MAX as f64,
};

/// The exact value `±m·2^e` rounded once, in `mode`, to `fmt`: the result as an f64 (exactly
/// representable in `fmt`), ±inf where it overflows in a mode that rounds away from zero.
pub fn round_exact(neg: bool, m: u128, e: i32, fmt: Format, mode: Round) -> f64 {
    if m == 0 {
        return if neg { -0.0 } else { 0.0 };
    }
    let top = 127 - m.leading_zeros() as i32;
    let exp = top + e;
    let qexp = exp.max(fmt.emin) - (fmt.precision as i32 - 1);
    let shift = qexp - e;
    let (n, inexact, above_half, at_half) = if shift <= 0 {
        (m << (-shift) as u32, false, false, false)
    } else if shift > 127 {
        // Everything is below the quantum; m < 2^128 <= half a quantum when shift > 128.
        let half = shift == 128 && m == 1u128 << 127;
        (0, true, false, half)
    } else {
        let rem = m & ((1u128 << shift) - 1);
        let half = 1u128 << (shift - 1);
        (m >> shift, rem != 0, rem > half, rem == half)
    };
    let up = match mode {
        Round::Nearest => above_half || (at_half && n & 1 == 1),
        Round::Zero => false,
        Round::Down => neg && inexact,
        Round::Up => !neg && inexact,
    };
    let n = n + up as u128;
    let scale = if qexp >= -1022 {
        f64::from_bits(((qexp + 1023) as u64) << 52)
    } else {
        2f64.powi(qexp)
    };
    let mag = n as f64 * scale;
    let mag = if mag > fmt.max {
        let away = match mode {
            Round::Nearest => true,
            Round::Zero => false,
            Round::Down => neg,
            Round::Up => !neg,
        };
        if away {
            f64::INFINITY
        } else {
            fmt.max
        }
    } else {
        mag
    };
    if neg {
        -mag
    } else {
        mag
    }
}

/// An f64 as an exact (sign, significand, exponent).
pub fn decompose(x: f64) -> (bool, u128, i32) {
    let b = x.to_bits();
    let neg = b >> 63 != 0;
    let exp = ((b >> 52) & 0x7ff) as i32;
    let frac = b & ((1u64 << 52) - 1);
    if exp == 0 {
        (neg, frac as u128, -1074)
    } else {
        (neg, (frac | (1u64 << 52)) as u128, exp - 1075)
    }
}

/// Rounds an f64 once to f16 or bf16 bits (NaN to the canonical NaN).
pub fn f64_to_16(x: f64, fmt: Format, mode: Round) -> u16 {
    if x.is_nan() {
        return CANONICAL_NAN_16;
    }
    let v = if x.is_infinite() {
        x
    } else {
        let (neg, m, e) = decompose(x);
        round_exact(neg, m, e, fmt, mode)
    };
    // `v` is exactly representable in the target, hence in f32.
    if fmt.precision == F16.precision {
        half::f16::from_f32(v as f32).to_bits()
    } else {
        half::bf16::from_f32(v as f32).to_bits()
    }
}

/// Rounds an integer once to f16, bf16 or f32 (as an f64 of the result).
pub fn int_to_float(v: i128, fmt: Format, mode: Round) -> f64 {
    round_exact(v < 0, v.unsigned_abs(), 0, fmt, mode)
}

/// `cvt.f32.f16`: exact.
#[inline(always)]
pub fn f16_to_f32(bits: u16) -> u32 {
    let v = half::f16::from_bits(bits).to_f32();
    canon(v)
}

/// `cvt.f32.bf16`: exact.
#[inline(always)]
pub fn bf16_to_f32(bits: u16) -> u32 {
    canon(f32::from_bits((bits as u32) << 16))
}

/// Integer rounding of a float to a float (`cvt.rni/rzi/rmi/rpi.f32.f32`).
#[inline(always)]
pub fn round_int(x: f32, mode: Round) -> f32 {
    match mode {
        Round::Nearest => x.round_ties_even(),
        Round::Zero => x.trunc(),
        Round::Down => x.floor(),
        Round::Up => x.ceil(),
    }
}

pub fn round_int64(x: f64, mode: Round) -> f64 {
    match mode {
        Round::Nearest => x.round_ties_even(),
        Round::Zero => x.trunc(),
        Round::Down => x.floor(),
        Round::Up => x.ceil(),
    }
}

/// `ex2.approx.f32`: the ISA bounds the error by 2 ulp; this is the correctly rounded 2^x.
#[inline(always)]
pub fn ex2(x: f32) -> f32 {
    (x as f64).exp2() as f32
}

/// `rsqrt.approx.f32` (error bound 2^-22.9 relative): here 1/√x correctly rounded.
#[inline(always)]
pub fn rsqrt(x: f32) -> f32 {
    (1.0 / (x as f64).sqrt()) as f32
}

/// `lg2.approx.f32`.
#[inline(always)]
pub fn lg2(x: f32) -> f32 {
    (x as f64).log2() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: exact rational arithmetic is overkill; f64 is exact for these operations on
    /// f32 inputs with moderate exponents, and directed rounding from it checks round_pair.
    fn reference(v: f64, mode: Round) -> f32 {
        let t = v as f32;
        let tv = t as f64;
        match mode {
            Round::Nearest => t,
            Round::Down if tv > v => f32_step(t, false),
            Round::Up if tv < v => f32_step(t, true),
            Round::Zero if v > 0.0 && tv > v => f32_step(t, false),
            Round::Zero if v < 0.0 && tv < v => f32_step(t, true),
            _ => t,
        }
    }

    fn lcg(s: &mut u64) -> u32 {
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*s >> 32) as u32
    }

    #[test]
    fn directed_products_match_the_exact_product() {
        let mut s = 1;
        for _ in 0..100_000 {
            let a = f32::from_bits(lcg(&mut s) & 0xbfff_ffff | 0x3000_0000);
            let b = f32::from_bits(lcg(&mut s) & 0xbfff_ffff | 0x3000_0000);
            let exact = a as f64 * b as f64;
            for mode in [Round::Nearest, Round::Zero, Round::Down, Round::Up] {
                assert_eq!(
                    mul_f32(a, b, mode).to_bits(),
                    reference(exact, mode).to_bits(),
                    "{a:e} * {b:e} {mode:?}"
                );
            }
        }
    }

    #[test]
    fn directed_fma_brackets_the_exact_value() {
        let mut s = 7;
        for _ in 0..100_000 {
            let f = |s: &mut u64| f32::from_bits(lcg(s) & 0xbfff_ffff | 0x3000_0000);
            let (a, b, c) = (f(&mut s), f(&mut s), f(&mut s));
            let down = fma_f32(a, b, c, Round::Down);
            let up = fma_f32(a, b, c, Round::Up);
            let rn = fma_f32(a, b, c, Round::Nearest);
            assert!(down <= rn && rn <= up, "{a} {b} {c}");
            assert!(
                f32_step(down, true) >= up,
                "down and up are neighbours or equal"
            );
            let z = fma_f32(a, b, c, Round::Zero);
            assert!(z.abs() <= rn.abs());
        }
    }

    #[test]
    fn sixteen_bit_directed_rounding_brackets() {
        let mut s = 3;
        for _ in 0..100_000 {
            let x = f32::from_bits(lcg(&mut s) & 0xbfff_ffff | 0x2000_0000);
            if x.abs() > 60000.0 {
                continue;
            }
            let d = half::f16::from_bits(f32_to_f16(x, Round::Down)).to_f32();
            let u = half::f16::from_bits(f32_to_f16(x, Round::Up)).to_f32();
            assert!(d <= x && x <= u, "{x}: {d} {u}");
        }
    }

    #[test]
    fn exact_rounding_of_wide_integers() {
        // 2^25 - 1 toward zero in bf16 is the value below 2^25, not 2^25.
        let v = int_to_float((1 << 25) - 1, BF16, Round::Zero);
        assert_eq!(half::bf16::from_f32(v as f32).to_bits(), 0x4bff);
        assert_eq!(
            int_to_float((1 << 25) - 1, BF16, Round::Nearest),
            33554432.0
        );
        assert_eq!(int_to_float(-16777217, BF16, Round::Down), -16908288.0);
        assert_eq!(f64_to_16(1e6, F16, Round::Nearest), 0x7c00);
        assert_eq!(f64_to_16(1e6, F16, Round::Zero), 0x7bff);
        assert_eq!(f64_to_16(-1e-10, F16, Round::Down), 0x8001);
        assert_eq!(f64_to_16(1e-10, F16, Round::Nearest), 0);
    }

    #[test]
    fn max_min_zero_and_nan() {
        assert_eq!(max_f32(-0.0, 0.0).to_bits(), 0);
        assert_eq!(min_f32(0.0, -0.0).to_bits(), 0x8000_0000);
        assert_eq!(max_f32(f32::NAN, 1.0), 1.0);
        assert!(max_f32(f32::NAN, f32::NAN).is_nan());
    }
}
