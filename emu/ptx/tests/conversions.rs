//! Semantics of the `cvt` conversions to, from and between `.f16` and `.bf16` (PTX ISA 9.1
//! §9.7.9.21 "Data Movement and Conversion Instructions: cvt", rounding modifiers §6.5.2),
//! run on the executor and checked against the `half` crate and the exact rounding reference of
//! `tests/support`. Every 16-bit input pattern is tried where the source is 16 bits wide; f32
//! and f64 sources get over a million random patterns plus every representable value of the
//! destination, every midpoint between neighbours (ties) and the values one ulp either side.
//!
//! A form the executor rejects at load time (`EmuError::Unsupported`) is skipped with a note on
//! stderr (`SKIP ...`), so that the test starts checking it once it is implemented.

mod support;

use half::{bf16, f16};
use support::*;

/// A 16-bit floating-point format under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum H {
    F16,
    Bf16,
}

impl H {
    fn ptx(self) -> &'static str {
        match self {
            H::F16 => "f16",
            H::Bf16 => "bf16",
        }
    }
    fn fmt(self) -> Fmt {
        match self {
            H::F16 => F16,
            H::Bf16 => BF16,
        }
    }
    fn to_f64(self, b: u16) -> f64 {
        match self {
            H::F16 => f16::from_bits(b).to_f64(),
            H::Bf16 => bf16::from_bits(b).to_f64(),
        }
    }
    fn to_f32(self, b: u16) -> f32 {
        match self {
            H::F16 => f16::from_bits(b).to_f32(),
            H::Bf16 => bf16::from_bits(b).to_f32(),
        }
    }
    fn is_nan(self, b: u64) -> bool {
        self.fmt().is_nan(b as u32)
    }
    /// 2^(emax+1): the value past the largest finite one, where rounding overflows.
    fn overflow(self) -> f64 {
        match self {
            H::F16 => 65536.0,
            H::Bf16 => 2f64.powi(128),
        }
    }
    /// Positive finite values and the midpoints between neighbours (including the one between
    /// the largest finite value and the overflow threshold).
    fn values_and_midpoints(self) -> Vec<(f64, f64)> {
        let fmt = self.fmt();
        (0..fmt.inf() as u16)
            .map(|b| {
                let lo = self.to_f64(b);
                let hi = if b as u32 + 1 == fmt.inf() {
                    self.overflow()
                } else {
                    self.to_f64(b + 1)
                };
                (lo, (lo + hi) / 2.0)
            })
            .collect()
    }
}

const HS: [H; 2] = [H::F16, H::Bf16];

fn all_u16() -> Vec<u16> {
    (0..=u16::MAX).collect()
}

fn next_up_f32(x: f32) -> f32 {
    f32::from_bits(F32.next_up(x.to_bits()))
}
fn next_down_f32(x: f32) -> f32 {
    f32::from_bits(F32.next_down(x.to_bits()))
}

/// f32 inputs for conversions to `h`: the specials, every value of `h` with the midpoints to its
/// successor and their f32 neighbours (both signs), and `random` random patterns, half of them
/// with an exponent inside `h`'s range.
fn f32_inputs(h: H, r: &mut Rng, random: usize) -> Vec<u32> {
    let mut v = f32_specials();
    for (lo, mid) in h.values_and_midpoints() {
        let mid = mid as f32; // exact: a midpoint needs one more bit than `h` has
        for x in [lo as f32, mid, next_down_f32(mid), next_up_f32(mid)] {
            v.push(x.to_bits());
            v.push((-x).to_bits());
        }
    }
    for _ in 0..random {
        let b = if r.below(2) == 0 {
            rand_f32_bits(r)
        } else {
            // biased exponent 100..=145: |x| in about [2^-27, 2^18], f16's range and a bit
            let e = 100 + r.below(46) as u32;
            (r.u32() & 0x807f_ffff) | (e << 23)
        };
        v.push(b);
    }
    v
}

/// Checks a narrowing conversion's results: NaN for NaN, otherwise exactly `expect`.
fn check_narrow(
    what: &str,
    inputs: &[u64],
    got: &[u64],
    h: H,
    expect: impl Fn(u64) -> Option<u32>,
    show: impl Fn(u64) -> String,
) {
    let mut f = Failures::new(what);
    for (&x, &g) in inputs.iter().zip(got) {
        match expect(x) {
            None => f.check(h.is_nan(g), || format!("{} -> {g:#06x}, want NaN", show(x))),
            Some(e) => f.check(g == e as u64, || {
                format!("{} -> {g:#06x}, want {e:#06x}", show(x))
            }),
        }
    }
    f.finish(inputs.len());
}

/// `cvt.f32.f16` on all 65,536 patterns: a widening conversion is exact (§9.7.9.21: rounding is
/// only required "for float-to-float conversions that result in loss of precision"), so every
/// non-NaN result must be bit-exact with `half::f16::to_f32`; NaN inputs must give a NaN.
#[test]
fn cvt_f32_f16_all_patterns() {
    let dev = device();
    let input = all_u16();
    let Some(got) = unary(&dev, "cvt.f32.f16", "b16", "f32", &bytes_u16(&input)) else {
        return;
    };
    let mut f = Failures::new("cvt.f32.f16");
    for (&b, &g) in input.iter().zip(&got) {
        let h = f16::from_bits(b);
        if h.is_nan() {
            f.check(f32::from_bits(g as u32).is_nan(), || {
                format!("{b:#06x} -> {g:#010x}, want NaN")
            });
        } else {
            let want = h.to_f32().to_bits();
            f.check(g as u32 == want, || {
                format!("{b:#06x} -> {g:#010x}, want {want:#010x}")
            });
        }
    }
    f.finish(input.len());
}

/// `cvt.f32.bf16` on all 65,536 patterns: exact widening, bit-exact with `half::bf16::to_f32`
/// (bf16 subnormals are f32 subnormals and are supported by default, §9.7.9.21 "Subnormal
/// numbers"); "For cvt.f32.bf16, NaN input yields unspecified NaN".
#[test]
fn cvt_f32_bf16_all_patterns() {
    let dev = device();
    let input = all_u16();
    let Some(got) = unary(&dev, "cvt.f32.bf16", "b16", "f32", &bytes_u16(&input)) else {
        return;
    };
    let mut f = Failures::new("cvt.f32.bf16");
    for (&b, &g) in input.iter().zip(&got) {
        let h = bf16::from_bits(b);
        if h.is_nan() {
            f.check(f32::from_bits(g as u32).is_nan(), || {
                format!("{b:#06x} -> {g:#010x}, want NaN")
            });
        } else {
            let want = h.to_f32().to_bits();
            f.check(g as u32 == want, || {
                format!("{b:#06x} -> {g:#010x}, want {want:#010x}")
            });
        }
    }
    f.finish(input.len());
}

/// `cvt.ftz.f32.bf16` (sm_90) on all patterns: `.ftz` flushes single-precision subnormal
/// results to sign-preserving zero (§9.7.9.21, Floating Point Notes, "Subnormal numbers"); the
/// bf16 subnormals are exactly the patterns whose f32 result is subnormal.
#[test]
fn cvt_ftz_f32_bf16_all_patterns() {
    let dev = device();
    let input = all_u16();
    let Some(got) = unary(&dev, "cvt.ftz.f32.bf16", "b16", "f32", &bytes_u16(&input)) else {
        return;
    };
    let mut f = Failures::new("cvt.ftz.f32.bf16");
    for (&b, &g) in input.iter().zip(&got) {
        let h = bf16::from_bits(b);
        if h.is_nan() {
            f.check(f32::from_bits(g as u32).is_nan(), || {
                format!("{b:#06x} -> {g:#010x}, want NaN")
            });
        } else {
            let want = ftz(h.to_f32().to_bits());
            f.check(g as u32 == want, || {
                format!("{b:#06x} -> {g:#010x}, want {want:#010x}")
            });
        }
    }
    f.finish(input.len());
}

/// `cvt.f64.f16` and `cvt.f64.bf16` on all patterns: exact widening to f64, bit-exact with the
/// `half` crate; NaN gives NaN.
#[test]
fn cvt_f64_f16_bf16_all_patterns() {
    let dev = device();
    let input = all_u16();
    for h in HS {
        let instr = format!("cvt.f64.{}", h.ptx());
        let Some(got) = unary(&dev, &instr, "b16", "f64", &bytes_u16(&input)) else {
            continue;
        };
        let mut f = Failures::new(&instr);
        for (&b, &g) in input.iter().zip(&got) {
            let want = h.to_f64(b);
            if want.is_nan() {
                f.check(f64::from_bits(g).is_nan(), || {
                    format!("{b:#06x} -> {g:#018x}, want NaN")
                });
            } else {
                f.check(g == want.to_bits(), || {
                    format!("{b:#06x} -> {g:#018x}, want {:#018x}", want.to_bits())
                });
            }
        }
        f.finish(input.len());
    }
}

/// `cvt.{rn,rz,rm,rp}.{f16,bf16}.f32` (§9.7.9.21; the `.frnd` modifiers of the generic form
/// `cvt{.frnd}{.ftz}{.sat}.dtype.atype`, `.rn` "rounding to nearest, with ties to even", `.rz`
/// "rounding toward zero", `.rm` "toward negative infinity", `.rp` "toward positive infinity").
/// `.rn` is checked bit-exactly against `half::{f16,bf16}::from_f32`; a directed mode must give
/// the nearest representable value below (`.rm`), above (`.rp`) or toward zero (`.rz`), where
/// the infinities count as representable (so `.rz`/`.rm` of a large positive value is the
/// largest finite value and `.rp` is +inf). Over 1.2 M inputs per format: every value of the
/// format, every tie and its f32 neighbours, 1,000,000 random patterns and the specials.
#[test]
fn cvt_f16_bf16_from_f32_all_modes() {
    let dev = device();
    let mut r = Rng::new(0xf16);
    for h in HS {
        let inputs = f32_inputs(h, &mut r, 1_000_000);
        let bytes = bytes_u32(&inputs);
        let inputs: Vec<u64> = inputs.into_iter().map(u64::from).collect();
        for mode in MODES {
            let instr = format!("cvt.{}.{}.f32", mode.ptx(), h.ptx());
            let Some(got) = unary(&dev, &instr, "f32", "b16", &bytes) else {
                continue;
            };
            check_narrow(
                &instr,
                &inputs,
                &got,
                h,
                |x| narrow_by_half(f32::from_bits(x as u32), h.fmt(), mode),
                |x| format!("{x:#010x} ({:e})", f32::from_bits(x as u32)),
            );
        }
    }
}

/// `cvt.{rn,rz,rm,rp}.ftz.{f16,bf16}.f32`: `.ftz` flushes single-precision subnormal inputs to
/// sign-preserving zero (§9.7.9.21 Floating Point Notes, "Subnormal numbers": "Modifier .ftz may
/// be specified to flush single-precision subnormal inputs and results to sign-preserving
/// zero"), so e.g. `.rp` of the smallest positive f32 gives +0 instead of the smallest f16
/// subnormal (0x0001).
#[test]
fn cvt_f16_bf16_from_f32_ftz() {
    let dev = device();
    let mut r = Rng::new(0xf2);
    let mut inputs = f32_specials();
    for _ in 0..100_000 {
        // mostly f32 subnormals, some normals
        let b = if r.below(4) == 0 {
            rand_f32_bits(&mut r)
        } else {
            r.u32() & 0x807f_ffff
        };
        inputs.push(b);
    }
    let bytes = bytes_u32(&inputs);
    let inputs: Vec<u64> = inputs.into_iter().map(u64::from).collect();
    for h in HS {
        for mode in MODES {
            let instr = format!("cvt.{}.ftz.{}.f32", mode.ptx(), h.ptx());
            let Some(got) = unary(&dev, &instr, "f32", "b16", &bytes) else {
                continue;
            };
            check_narrow(
                &instr,
                &inputs,
                &got,
                h,
                |x| narrow_by_half(f32::from_bits(ftz(x as u32)), h.fmt(), mode),
                |x| format!("{x:#010x}"),
            );
        }
    }
}

/// `cvt.rn.sat.f16.f32`: "For floating-point destination types, .sat limits the result to the
/// range [0.0, 1.0]. NaN results are flushed to positive zero. Applies to .f16, .f32, and .f64
/// types." (§9.7.9.21 Floating Point Notes). Clamping commutes with the monotonic rounding
/// because 0 and 1 are representable. Where the result is a zero its sign is not checked.
#[test]
fn cvt_sat_f16_f32() {
    let dev = device();
    let mut r = Rng::new(0x5a7);
    let mut inputs = f32_specials();
    for _ in 0..200_000 {
        let b = if r.below(2) == 0 {
            rand_f32_bits(&mut r)
        } else {
            (r.u32() & 0x807f_ffff) | ((118 + r.below(12) as u32) << 23)
        };
        inputs.push(b);
    }
    let instr = "cvt.rn.sat.f16.f32";
    let Some(got) = unary(&dev, instr, "f32", "b16", &bytes_u32(&inputs)) else {
        return;
    };
    let mut f = Failures::new(instr);
    for (&x, &g) in inputs.iter().zip(&got) {
        let v = f32::from_bits(x);
        let want = if v.is_nan() {
            0
        } else {
            f16::from_f32(v.clamp(0.0, 1.0)).to_bits()
        };
        let ok = g as u16 == want || (want & 0x7fff == 0 && g as u16 & 0x7fff == 0);
        f.check(ok, || {
            format!("{x:#010x} ({v:e}) -> {g:#06x}, want {want:#06x}")
        });
    }
    f.finish(inputs.len());
}

/// `cvt.{rn,rz}.relu.{f16,bf16}.f32`: "`.relu` clamps the result to 0 if negative. NaN results
/// are converted to canonical NaN." (§9.7.9.21 Floating Point Notes; `.frnd2 = { .rn, .rz }`).
/// Where the result is a zero its sign is not checked.
#[test]
fn cvt_relu_f16_bf16_f32() {
    let dev = device();
    let mut r = Rng::new(0x4e1);
    let inputs: Vec<u32> = (0..100_000).map(|_| rand_f32_bits(&mut r)).collect();
    let bytes = bytes_u32(&inputs);
    for h in HS {
        for mode in [Mode::Rn, Mode::Rz] {
            let instr = format!("cvt.{}.relu.{}.f32", mode.ptx(), h.ptx());
            let Some(got) = unary(&dev, &instr, "f32", "b16", &bytes) else {
                continue;
            };
            let mut f = Failures::new(&instr);
            for (&x, &g) in inputs.iter().zip(&got) {
                let v = f32::from_bits(x);
                match narrow_by_half(v, h.fmt(), mode) {
                    None => f.check(h.is_nan(g), || format!("{x:#010x} -> {g:#06x}, want NaN")),
                    Some(e) => {
                        let want = if e & 0x8000 != 0 { 0 } else { e };
                        let ok = g as u32 == want || (want & 0x7fff == 0 && g & 0x7fff == 0);
                        f.check(ok, || format!("{x:#010x} -> {g:#06x}, want {want:#06x}"));
                    }
                }
            }
            f.finish(inputs.len());
        }
    }
}

/// `cvt.{rn,rz}.satfinite.{f16,bf16}.f32` (PTX 8.1): "if the input value is NaN, then the result
/// is NaN in the specified destination format. If the absolute value of input (ignoring sign) is
/// greater than MAX_NORM of the specified destination format, then the result is sign-preserved
/// MAX_NORM of the destination format" (§9.7.9.21, `.satfinite`). So ±inf and 65520 give
/// ±65504 for f16.
#[test]
fn cvt_satfinite_f16_bf16_f32() {
    let dev = device();
    let mut r = Rng::new(0x5f1);
    for h in HS {
        let inputs = f32_inputs(h, &mut r, 100_000);
        let bytes = bytes_u32(&inputs);
        let inputs: Vec<u64> = inputs.into_iter().map(u64::from).collect();
        let max = h.to_f64(h.fmt().max_finite() as u16);
        for mode in [Mode::Rn, Mode::Rz] {
            let instr = format!("cvt.{}.satfinite.{}.f32", mode.ptx(), h.ptx());
            let Some(got) = unary(&dev, &instr, "f32", "b16", &bytes) else {
                continue;
            };
            check_narrow(
                &instr,
                &inputs,
                &got,
                h,
                |x| {
                    let v = f32::from_bits(x as u32);
                    if !v.is_nan() && v.abs() as f64 > max {
                        Some((x as u32 >> 16) & 0x8000 | h.fmt().max_finite())
                    } else {
                        narrow_by_half(v, h.fmt(), mode)
                    }
                },
                |x| format!("{x:#010x}"),
            );
        }
    }
}

/// `cvt.{rn,rz}.{f16x2,bf16x2}.f32 d, a, b`: "the value converted from input a is stored in the
/// upper half of d and the value converted from input b is stored in the lower half of d"
/// (§9.7.9.21 Description; Semantics `d[31:16] = convert(a); d[15:0] = convert(b);`). Each half
/// is checked like the scalar conversion, on 300,000 random pairs.
#[test]
fn cvt_f16x2_bf16x2_from_f32_pairs() {
    let dev = device();
    let mut r = Rng::new(0x2f16);
    for h in HS {
        let pool = f32_inputs(h, &mut r, 200_000);
        let n = 300_000;
        let a: Vec<u32> = (0..n).map(|_| r.pick(&pool)).collect();
        let b: Vec<u32> = (0..n).map(|_| r.pick(&pool)).collect();
        for mode in [Mode::Rn, Mode::Rz] {
            let instr = format!("cvt.{}.{}x2.f32", mode.ptx(), h.ptx());
            let ptx = map_ptx(
                &["f32", "f32"],
                &["b32"],
                "",
                &format!("{instr} %out0, %in0, %in1;"),
            );
            let Some(out) = map_run(
                &dev,
                &instr,
                &ptx,
                &[&bytes_u32(&a), &bytes_u32(&b)],
                &[4 * n],
                n,
            ) else {
                continue;
            };
            let got = u32s(&out[0]);
            let mut f = Failures::new(&instr);
            for i in 0..n {
                let (hi, lo) = (got[i] >> 16, got[i] & 0xffff);
                for (half_name, x, g) in [("upper", a[i], hi), ("lower", b[i], lo)] {
                    match narrow_by_half(f32::from_bits(x), h.fmt(), mode) {
                        None => f.check(h.is_nan(g as u64), || {
                            format!("a={:#010x} b={:#010x}: {half_name} half {g:#06x}, want NaN", a[i], b[i])
                        }),
                        Some(e) => f.check(g == e, || {
                            format!(
                                "a={:#010x} b={:#010x} -> {:#010x}: {half_name} half {g:#06x}, want {e:#06x}",
                                a[i], b[i], got[i]
                            )
                        }),
                    }
                }
            }
            f.finish(2 * n);
        }
    }
}

/// f64 inputs for conversions to `h`: every value of `h`, every midpoint and the f64 values one
/// ulp and 2^-30 relative either side of it (a double rounding through f32 gets these wrong),
/// random patterns in and around `h`'s range, and the specials.
fn f64_inputs(h: H, r: &mut Rng, random: usize) -> Vec<u64> {
    let mut v: Vec<u64> = vec![
        0,
        1,
        0x000f_ffff_ffff_ffff,
        0x0010_0000_0000_0000,
        0x3ff0_0000_0000_0000,
        0x7fef_ffff_ffff_ffff,
        0x7ff0_0000_0000_0000,
        0x7ff0_0000_0000_0001,
        0x7ff8_0000_0000_0000,
        0x47ef_ffff_e000_0000, // f32 max
        0x47f0_0000_0000_0000, // 2^128
        0x40ef_fe00_0000_0000, // 65520
    ];
    for (lo, mid) in h.values_and_midpoints() {
        for x in [
            lo,
            mid,
            f64::from_bits(mid.to_bits() - 1),
            f64::from_bits(mid.to_bits() + 1),
            mid * (1.0 - 2f64.powi(-30)),
            mid * (1.0 + 2f64.powi(-30)),
        ] {
            v.push(x.to_bits());
        }
    }
    for _ in 0..random {
        let b = match r.below(3) {
            0 => r.u64(),
            _ => {
                // biased f64 exponent around h's range
                let (lo, span) = if h == H::F16 {
                    (1023 - 27, 46)
                } else {
                    (1023 - 136, 266)
                };
                let e = lo + r.below(span);
                (r.u64() & 0x800f_ffff_ffff_ffff) | (e << 52)
            }
        };
        v.push(b);
    }
    let neg: Vec<u64> = v.iter().map(|b| b ^ (1 << 63)).collect();
    v.extend(neg);
    v
}

/// `cvt.{rn,rz,rm,rp}.{f16,bf16}.f64` (§9.7.9.21): one rounding of the f64 value, checked against
/// the exact reference (`tests/support`), on about 600,000 inputs per format.
#[test]
fn cvt_f16_bf16_from_f64_all_modes() {
    let dev = device();
    let mut r = Rng::new(0xf64);
    for h in HS {
        let inputs = f64_inputs(h, &mut r, 150_000);
        let bytes = bytes_u64(&inputs);
        for mode in MODES {
            let instr = format!("cvt.{}.{}.f64", mode.ptx(), h.ptx());
            let Some(got) = unary(&dev, &instr, "f64", "b16", &bytes) else {
                continue;
            };
            check_narrow(
                &instr,
                &inputs,
                &got,
                h,
                |x| {
                    let v = f64::from_bits(x);
                    if v.is_nan() {
                        None
                    } else if v.is_infinite() {
                        Some((x >> 48) as u32 & 0x8000 | h.fmt().inf())
                    } else {
                        Some(round_value(decompose_f64(x), h.fmt(), mode))
                    }
                },
                |x| format!("{x:#018x} ({:e})", f64::from_bits(x)),
            );
        }
    }
}

/// `cvt.{rn,rz,rm,rp}.bf16.f16` and `cvt.{rn,rz,rm,rp}.f16.bf16` (sm_90, PTX 7.8) on all
/// 65,536 patterns: f16 has more precision and bf16 more range than the other, so both
/// directions round (and f16 overflows and underflows), checked against the exact reference.
#[test]
fn cvt_between_f16_and_bf16_all_patterns() {
    let dev = device();
    let input = all_u16();
    let bytes = bytes_u16(&input);
    for (src, dst) in [(H::F16, H::Bf16), (H::Bf16, H::F16)] {
        for mode in MODES {
            let instr = format!("cvt.{}.{}.{}", mode.ptx(), dst.ptx(), src.ptx());
            let Some(got) = unary(&dev, &instr, "b16", "b16", &bytes) else {
                continue;
            };
            let inputs: Vec<u64> = input.iter().map(|&b| b as u64).collect();
            let sf = src.fmt();
            check_narrow(
                &instr,
                &inputs,
                &got,
                dst,
                |x| {
                    let x = x as u32;
                    if sf.is_nan(x) {
                        None
                    } else if x & (sf.sign_bit() - 1) == sf.inf() {
                        Some(x & sf.sign_bit() | dst.fmt().inf())
                    } else {
                        Some(round_value(sf.decompose(x), dst.fmt(), mode))
                    }
                },
                |x| format!("{x:#06x} ({})", src.to_f32(x as u16)),
            );
        }
    }
}

/// Integer inputs for conversions to a 16-bit float: every integer in [-70000, 70000], powers of
/// two and their neighbours, and random 32-bit patterns.
fn int_inputs(r: &mut Rng) -> Vec<u32> {
    let mut v: Vec<u32> = (-70000i32..=70000).map(|x| x as u32).collect();
    for k in 0..32 {
        for d in -3i64..=3 {
            let x = (1i64 << k) + d;
            v.push(x as u32);
            v.push((-x) as u32);
        }
    }
    for _ in 0..200_000 {
        v.push(r.u32() >> r.below(32));
    }
    v.extend([0x8000_0000, 0x7fff_ffff, 0xffff_ffff]);
    v
}

/// Checks `cvt.<mode>.<h>.<src>` for every mode on `inputs` (as u64 words of type `src`)
/// against the exact reference: the integer rounded once to the format.
fn check_int_to_half(dev: &freelunch_ptx::Device, h: H, src: &str, inputs: &[u64]) {
    let bytes = match type_bytes(src) {
        2 => bytes_u16(&inputs.iter().map(|&x| x as u16).collect::<Vec<_>>()),
        4 => bytes_u32(&inputs.iter().map(|&x| x as u32).collect::<Vec<_>>()),
        _ => bytes_u64(inputs),
    };
    let value = |x: u64| -> i128 {
        match src {
            "s16" => x as u16 as i16 as i128,
            "s32" => x as u32 as i32 as i128,
            "s64" => x as i64 as i128,
            _ => x as i128,
        }
    };
    for mode in MODES {
        let instr = format!("cvt.{}.{}.{src}", mode.ptx(), h.ptx());
        let Some(got) = unary(dev, &instr, src, "b16", &bytes) else {
            continue;
        };
        check_narrow(
            &instr,
            inputs,
            &got,
            h,
            |x| {
                let v = value(x);
                Some(round_exact(
                    v < 0,
                    v.unsigned_abs(),
                    0,
                    false,
                    h.fmt(),
                    mode,
                ))
            },
            |x| format!("{}", value(x)),
        );
    }
}

/// `cvt.{rn,rz,rm,rp}.f16.{s32,u32,s16,u16}` and `cvt.{rn,rz,rm,rp}.bf16.{s16,u16}`
/// (§9.7.9.21: "Floating-point rounding is required ... for integer-to-float conversions"): the
/// integer rounded once to the format, overflowing f16 above 65504 as the mode says (to inf or
/// to 65504); checked against the exact reference. The 16-bit sources are tried on all 65,536
/// patterns, the 32-bit ones on about 340,000 values.
#[test]
fn cvt_f16_bf16_from_integers() {
    let dev = device();
    let mut r = Rng::new(0x1a7);
    let ints32: Vec<u64> = int_inputs(&mut r).into_iter().map(u64::from).collect();
    let ints16: Vec<u64> = all_u16().into_iter().map(u64::from).collect();
    for src in ["s32", "u32"] {
        check_int_to_half(&dev, H::F16, src, &ints32);
    }
    for h in HS {
        for src in ["s16", "u16"] {
            check_int_to_half(&dev, h, src, &ints16);
        }
    }
}

/// `cvt.{rn,rz,rm,rp}.bf16.{s32,u32}`: a 32-bit integer has more bits than f32 holds, and the
/// ISA conversion rounds the integer once to bf16 (§9.7.9.21, `d = convert(a)` with the
/// `.frnd` modifier; §6.5.2 Table 17). Rounding to f32 first and then to bf16 gives e.g.
/// `cvt.rz.bf16.s32` of 33554431 (2^25-1) = 0x4c00 (2^25) instead of 0x4bff, and
/// `cvt.rn.bf16.u32` of 4286578687 (0xff7fffff, just below the midpoint 0xff800000 of 0x4f7f
/// and 0x4f80) = 0x4f80 instead of 0x4f7f.
#[test]

fn cvt_bf16_from_32bit_integers() {
    let dev = device();
    let mut r = Rng::new(0x1a8);
    let ints32: Vec<u64> = int_inputs(&mut r).into_iter().map(u64::from).collect();
    for src in ["s32", "u32"] {
        check_int_to_half(&dev, H::Bf16, src, &ints32);
    }
}

/// `cvt.{rn,rz,rm,rp}.{f16,bf16}.{s64,u64}`: 64-bit integers rounded once to the format
/// (§9.7.9.21), checked against the exact reference on 200,000 values.
#[test]
fn cvt_f16_bf16_from_64bit_integers() {
    let dev = device();
    let mut r = Rng::new(0x64);
    let mut inputs: Vec<u64> = (0..200_000).map(|_| r.u64() >> r.below(64)).collect();
    inputs.extend([
        0,
        1,
        u64::MAX,
        1 << 63,
        (1 << 63) - 1,
        65504,
        65519,
        65520,
        2049,
    ]);
    for h in HS {
        for src in ["s64", "u64"] {
            check_int_to_half(&dev, h, src, &inputs);
        }
    }
}

/// Checks `cvt.{rni,rzi,rmi,rpi}.<dst>.<h>` on the 16-bit patterns `input`.
fn check_half_to_int(dev: &freelunch_ptx::Device, h: H, dst: &str, input: &[u16]) {
    let (lo, hi): (i128, i128) = match dst {
        "s16" => (i16::MIN as i128, i16::MAX as i128),
        "u16" => (0, u16::MAX as i128),
        "s32" => (i32::MIN as i128, i32::MAX as i128),
        "u32" => (0, u32::MAX as i128),
        "s64" => (i64::MIN as i128, i64::MAX as i128),
        _ => (0, u64::MAX as i128),
    };
    let width = type_bytes(dst);
    let mask: u64 = if width == 8 {
        u64::MAX
    } else {
        (1 << (8 * width)) - 1
    };
    let bytes = bytes_u16(input);
    for (name, mode) in [
        ("rni", Mode::Rn),
        ("rzi", Mode::Rz),
        ("rmi", Mode::Rm),
        ("rpi", Mode::Rp),
    ] {
        let instr = format!("cvt.{name}.{dst}.{}", h.ptx());
        let Some(got) = unary(dev, &instr, "b16", dst, &bytes) else {
            continue;
        };
        let mut f = Failures::new(&instr);
        for (&b, &g) in input.iter().zip(&got) {
            let v = h.to_f64(b);
            let want: u64 = if v.is_nan() {
                if width == 8 {
                    1 << 63
                } else {
                    0
                }
            } else {
                let i = match mode {
                    Mode::Rn => v.round_ties_even(),
                    Mode::Rz => v.trunc(),
                    Mode::Rm => v.floor(),
                    Mode::Rp => v.ceil(),
                };
                let c = if i >= hi as f64 {
                    hi
                } else if i <= lo as f64 {
                    lo
                } else {
                    i as i128
                };
                (c as u64) & mask
            };
            f.check(g == want, || {
                format!("{b:#06x} ({v}) -> {g:#x}, want {want:#x}")
            });
        }
        f.finish(input.len());
    }
}

/// `cvt.{rni,rzi,rmi,rpi}.{s16,u16,s32,u32,s64,u64}.{f16,bf16}` on all 65,536 patterns (all
/// but the NaNs for the 64-bit destinations, see below) (§9.7.9.21 Integer Notes): `.rni` rounds
/// to the nearest integer, ties to even, `.rzi` toward zero, `.rmi` toward -inf, `.rpi` toward
/// +inf; "For float-to-integer conversions, the result is clamped to the destination range by
/// default" (so f16 65504 gives 32767 in s16, and negative values give 0 in unsigned types);
/// NaN gives "Zero if source is not .f64 and destination is not .s64, .u64".
#[test]
fn cvt_integers_from_f16_bf16_all_patterns() {
    let dev = device();
    for h in HS {
        let input: Vec<u16> = all_u16();
        let not_nan: Vec<u16> = input
            .iter()
            .copied()
            .filter(|&b| !h.is_nan(b as u64))
            .collect();
        for dst in ["s16", "u16", "s32", "u32"] {
            check_half_to_int(&dev, h, dst, &input);
        }
        for dst in ["s64", "u64"] {
            check_half_to_int(&dev, h, dst, &not_nan);
        }
    }
}

/// `cvt.{rni,rzi,rmi,rpi}.{s64,u64}.{f16,bf16}` of NaN: §9.7.9.21 Integer Notes, "In
/// float-to-integer conversions, depending upon conversion types, NaN input results in
/// following value: 1. Zero if source is not .f64 and destination is not .s64, .u64.
/// 2. Otherwise 1 << (BitWidth(dst) - 1)", so a 64-bit destination gets 0x8000000000000000.
#[test]

fn cvt_64bit_integers_from_f16_bf16_nan() {
    let dev = device();
    for h in HS {
        let nans: Vec<u16> = all_u16()
            .into_iter()
            .filter(|&b| h.is_nan(b as u64))
            .collect();
        for dst in ["s64", "u64"] {
            check_half_to_int(&dev, h, dst, &nans);
        }
    }
}
