//! Semantics of float and integer arithmetic, comparisons and float-to-integer conversions on
//! the executor (PTX ISA 9.1 §9.7.1 integer, §9.7.3 floating-point, §9.7.6 comparison and
//! selection, §9.7.8 logic and shift, §9.7.9.21 `cvt`), checked against the exact reference of
//! `tests/support` (integer arithmetic on mantissas, rounded in each mode with gradual
//! underflow), against f64 for the approximate functions, and against 128-bit integer arithmetic.
//!
//! A form the executor rejects at load time (`EmuError::Unsupported`) is skipped with a note on
//! stderr (`SKIP ...`).

mod support;

use freelunch_ptx::{pack_params, Device, EmuError, FaultKind, LaunchRequest};
use support::*;

/// What a result may be.
#[derive(Clone, Copy, Debug)]
enum Want {
    Bits(u32),
    /// Any NaN.
    Nan,
    /// Either pattern (used where the ISA leaves a choice, e.g. the sign of a clamped zero).
    Either(u32, u32),
    /// Not NaN and at most this many ulps from the pattern (in value order, so the largest
    /// finite value neighbours infinity).
    Within(u32, u64),
    /// Not checked.
    Any,
}

impl Want {
    fn from_ref(b: u32) -> Want {
        if F32.is_nan(b) {
            Want::Nan
        } else {
            Want::Bits(b)
        }
    }
    fn accepts(self, g: u32) -> bool {
        match self {
            Want::Bits(b) => g == b,
            Want::Nan => F32.is_nan(g),
            Want::Either(a, b) => g == a || g == b,
            Want::Within(b, ulps) => !F32.is_nan(g) && ulp_distance(g, b) <= ulps,
            Want::Any => true,
        }
    }
}

fn show(v: &[u32]) -> String {
    v.iter()
        .map(|b| format!("{b:#010x} ({:e})", f32::from_bits(*b)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `<instr> %out0, %in0, ...;` on f32 columns and checks each result against `want`.
/// Returns false when the form is unsupported.
fn check_f32(dev: &Device, instr: &str, cols: &[Vec<u32>], want: impl Fn(&[u32]) -> Want) -> bool {
    let n = cols[0].len();
    let ins = vec!["f32"; cols.len()];
    let args: Vec<String> = (0..cols.len()).map(|j| format!("%in{j}")).collect();
    let ptx = map_ptx(
        &ins,
        &["f32"],
        "",
        &format!("{instr} %out0, {};", args.join(", ")),
    );
    let bytes: Vec<Vec<u8>> = cols.iter().map(|c| bytes_u32(c)).collect();
    let inputs: Vec<&[u8]> = bytes.iter().map(|b| &b[..]).collect();
    let Some(out) = map_run(dev, instr, &ptx, &inputs, &[4 * n], n) else {
        return false;
    };
    let got = u32s(&out[0]);
    let mut f = Failures::new(instr);
    let mut row = vec![0u32; cols.len()];
    for i in 0..n {
        for (j, c) in cols.iter().enumerate() {
            row[j] = c[i];
        }
        let w = want(&row);
        f.check(w.accepts(got[i]), || {
            format!("{} -> {:#010x}, want {w:x?}", show(&row), got[i])
        });
    }
    f.finish(n);
    true
}

/// Random operand triples: random patterns; close magnitudes with cancellation (b near -a,
/// c near -a*b); subnormals and tiny normals; values near overflow.
fn arith_inputs(r: &mut Rng, n: usize) -> Vec<Vec<u32>> {
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    let specials = f32_specials();
    for i in 0..n {
        let (x, y, z) = match i % 6 {
            0 => (rand_f32_bits(r), rand_f32_bits(r), rand_f32_bits(r)),
            1 => {
                let x = rand_f32_moderate(r);
                let k = r.below(9) as f32 - 4.0;
                let y = -x * (1.0 + k * f32::EPSILON) * 2f32.powi(r.range_i32(-30, 30));
                let z = rand_f32_moderate(r);
                (x.to_bits(), y.to_bits(), z.to_bits())
            }
            2 => {
                let x = rand_f32_moderate(r);
                let y = rand_f32_moderate(r);
                let k = r.below(9) as f32 - 4.0;
                let z = -(x * y) * (1.0 + k * f32::EPSILON);
                (x.to_bits(), y.to_bits(), z.to_bits())
            }
            3 => {
                // subnormals and tiny normals, against subnormals or values near 2^-63
                let tiny = |r: &mut Rng| {
                    let sign = r.u32() & 0x8000_0000;
                    sign | (r.u32() & 0x01ff_ffff) >> r.below(8)
                };
                let x = if r.below(2) == 0 {
                    tiny(r)
                } else {
                    (r.u32() & 0x807f_ffff) | ((64 + r.below(3) as u32) << 23)
                };
                (x, tiny(r), tiny(r))
            }
            4 => {
                let big = |r: &mut Rng| (r.u32() & 0x807f_ffff) | ((250 + r.below(5) as u32) << 23);
                (big(r), big(r), rand_f32_bits(r))
            }
            _ => (r.pick(&specials), rand_f32_bits(r), r.pick(&specials)),
        };
        a.push(x);
        b.push(y);
        c.push(z);
    }
    vec![a, b, c]
}

/// The exact reference (integer arithmetic on mantissas, `tests/support`) agrees with the host's
/// IEEE 754 arithmetic in round-to-nearest-even (add, sub, mul, div, fused multiply-add), with an
/// independent directed rounding of values that are exact in f64, and with the `half` crate's
/// f16/bf16 rounding. No executor involved: this validates the oracle of the other tests.
#[test]
fn exact_reference_agrees_with_host_ieee() {
    self_test_reference();
}

/// `add`, `sub`, `mul`, `fma`, `mad` `.{rn,rz,rm,rp}.f32` (§9.7.3.3-7): `.rn` "mantissa LSB rounds
/// to nearest even", `.rz` "towards zero", `.rm` "towards negative infinity", `.rp` "towards
/// positive infinity"; "fma.f32 computes the product of a and b to infinite precision and then
/// adds c to this product, again in infinite precision. The resulting value is then rounded to
/// single precision using the rounding mode"; "mad.f32 and fma.f32 are the same" (Table 29).
/// Subnormals are supported by default (sm_20+). Results must be bit-exact with the exact
/// reference, which also gives IEEE 754's signs of exact zeros; single-precision NaN results
/// are unspecified NaNs (§9.7.3), so a NaN is only checked to be a NaN. 250,000 operand
/// triples per form (20 forms).
#[test]
fn float_add_sub_mul_fma_all_rounding_modes() {
    let dev = device();
    let mut r = Rng::new(0xadd);
    let cols = arith_inputs(&mut r, 250_000);
    for mode in MODES {
        let m = mode.ptx();
        check_f32(&dev, &format!("add.{m}.f32"), &cols[..2], |v| {
            Want::from_ref(add_f32(v[0], v[1], mode))
        });
        check_f32(&dev, &format!("sub.{m}.f32"), &cols[..2], |v| {
            Want::from_ref(sub_f32(v[0], v[1], mode))
        });
        check_f32(&dev, &format!("mul.{m}.f32"), &cols[..2], |v| {
            Want::from_ref(mul_f32(v[0], v[1], mode))
        });
        for op in ["fma", "mad"] {
            check_f32(&dev, &format!("{op}.{m}.f32"), &cols, |v| {
                Want::from_ref(fma_f32(v[0], v[1], v[2], mode))
            });
        }
    }
}

/// What `.ftz` allows for a result computed from flushed inputs: a subnormal result becomes a
/// zero of its sign. Whether a value below 2^-126 that rounds up to 2^-126 counts as subnormal
/// (tininess before or after rounding) the ISA does not say, so both are accepted there.
fn ftz_want(res: u32, res_rz: u32) -> Want {
    if F32.is_nan(res) {
        Want::Nan
    } else if F32.is_subnormal(res) {
        Want::Bits(res & 0x8000_0000)
    } else if res & 0x7fff_ffff == 0x0080_0000 && res_rz & 0x7fff_ffff < 0x0080_0000 {
        Want::Either(res, res & 0x8000_0000)
    } else {
        Want::Bits(res)
    }
}

/// `.ftz` on `add`, `sub`, `mul`, `fma`, `div`, `rcp` `.{rn,rz,rm,rp}.ftz.f32`: "flushes subnormal
/// inputs and results to sign-preserving zero" (§9.7.3.3-8, 9.7.3.13, "Subnormal numbers"), on
/// 100,000 subnormal-heavy operand triples per form.
#[test]
fn float_ftz_flushes_inputs_and_results() {
    let dev = device();
    let mut r = Rng::new(0xf7a);
    let n = 100_000;
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    let sub = |r: &mut Rng| r.u32() & 0x807f_ffff;
    let small = |r: &mut Rng| (r.u32() & 0x807f_ffff) | ((1 + r.below(4) as u32) << 23);
    let half_exp = |r: &mut Rng| (r.u32() & 0x807f_ffff) | ((63 + r.below(3) as u32) << 23);
    for i in 0..n {
        let (x, y, z) = match i % 4 {
            0 => (sub(&mut r), sub(&mut r), sub(&mut r)),
            1 => (small(&mut r), sub(&mut r), small(&mut r)),
            2 => (half_exp(&mut r), half_exp(&mut r), sub(&mut r)),
            _ => (rand_f32_bits(&mut r), sub(&mut r), rand_f32_bits(&mut r)),
        };
        a.push(x);
        b.push(y);
        c.push(z);
    }
    let cols = [a, b, c];
    for mode in MODES {
        let m = mode.ptx();
        type Op = fn(u32, u32, u32, Mode) -> u32;
        let ops: [(&str, usize, Op); 6] = [
            ("add", 2, |a, b, _, m| add_f32(a, b, m)),
            ("sub", 2, |a, b, _, m| sub_f32(a, b, m)),
            ("mul", 2, |a, b, _, m| mul_f32(a, b, m)),
            ("fma", 3, fma_f32),
            ("div", 2, |a, b, _, m| div_f32(a, b, m)),
            ("rcp", 1, |a, _, _, m| div_f32(0x3f80_0000, a, m)),
        ];
        for (name, arity, op) in ops {
            check_f32(&dev, &format!("{name}.{m}.ftz.f32"), &cols[..arity], |v| {
                let f = |j: usize| v.get(j).map_or(0, |&x| ftz(x));
                ftz_want(op(f(0), f(1), f(2), mode), op(f(0), f(1), f(2), Mode::Rz))
            });
        }
    }
}

/// What `.sat` allows: "clamps the result to [0.0, 1.0]. NaN results are flushed to +0.0f"
/// (§9.7.3.3-6). A negative result clamps to +0.0; a -0.0 result may keep its sign.
fn sat_want(res: u32) -> Want {
    if F32.is_nan(res) {
        Want::Bits(0)
    } else if res == 0x8000_0000 {
        Want::Either(0, res)
    } else if res & 0x8000_0000 != 0 {
        Want::Bits(0)
    } else if f32::from_bits(res) > 1.0 {
        Want::Bits(0x3f80_0000)
    } else {
        Want::Bits(res)
    }
}

/// `.sat` on `add`, `sub`, `mul`, `fma` `.{rn,rz,rm,rp}.sat.f32` (§9.7.3.3-6 "Saturation
/// modifier"): the rounded result clamped to [0, 1] (clamping commutes with the monotonic
/// rounding, 0 and 1 being representable), NaN to +0. 50,000 triples per form.
#[test]
fn float_sat_clamps_to_unit_interval() {
    let dev = device();
    let mut r = Rng::new(0x5a7);
    let n = 50_000;
    let specials = f32_specials();
    let pick = |r: &mut Rng| -> u32 {
        if r.below(8) == 0 {
            r.pick(&specials)
        } else {
            ((r.below(1 << 24) as f32 / (1 << 22) as f32 - 2.0)
                * if r.below(2) == 0 { 1.0 } else { 0.5 })
            .to_bits()
        }
    };
    let cols: Vec<Vec<u32>> = (0..3)
        .map(|_| (0..n).map(|_| pick(&mut r)).collect())
        .collect();
    for mode in MODES {
        let m = mode.ptx();
        check_f32(&dev, &format!("add.{m}.sat.f32"), &cols[..2], |v| {
            sat_want(add_f32(v[0], v[1], mode))
        });
        check_f32(&dev, &format!("sub.{m}.sat.f32"), &cols[..2], |v| {
            sat_want(sub_f32(v[0], v[1], mode))
        });
        check_f32(&dev, &format!("mul.{m}.sat.f32"), &cols[..2], |v| {
            sat_want(mul_f32(v[0], v[1], mode))
        });
        check_f32(&dev, &format!("fma.{m}.sat.f32"), &cols, |v| {
            sat_want(fma_f32(v[0], v[1], v[2], mode))
        });
    }
}

/// `div.{rn,rz,rm,rp}.f32` and `rcp.{rn,rz,rm,rp}.f32`: "Divide with IEEE 754 compliant
/// rounding" (§9.7.3.8), "Reciprocal with IEEE 754 compliant rounding" (§9.7.3.13): the
/// correctly rounded quotient (x/0 = ±inf, 0/0 and inf/inf = NaN), checked against the exact
/// reference (a 100-bit integer quotient with a sticky remainder) on 300,000 pairs per form.
#[test]
fn float_div_and_rcp_correctly_rounded() {
    let dev = device();
    let mut r = Rng::new(0xd1f);
    let n = 300_000;
    let mut cols = arith_inputs(&mut r, n);
    cols.truncate(2);
    let (a, b) = cols.split_at_mut(1);
    for (i, (x, y)) in a[0].iter_mut().zip(b[0].iter_mut()).take(n / 4).enumerate() {
        // quotients near the subnormal boundary and near overflow
        *x = rand_f32_moderate(&mut r).to_bits() ^ (r.u32() & 0x8000_0000);
        *y = if i % 2 == 0 {
            (r.u32() & 0x807f_ffff) | ((220 + r.below(35) as u32) << 23)
        } else {
            r.u32() & 0x80ff_ffff
        };
    }
    for mode in MODES {
        let m = mode.ptx();
        check_f32(&dev, &format!("div.{m}.f32"), &cols, |v| {
            Want::from_ref(div_f32(v[0], v[1], mode))
        });
        check_f32(&dev, &format!("rcp.{m}.f32"), &cols[1..], |v| {
            Want::from_ref(div_f32(0x3f80_0000, v[0], mode))
        });
    }
}

fn is_nan32(b: u32) -> bool {
    F32.is_nan(b)
}

/// `min.f32`/`max.f32` per the ISA's `min_num`/`max_num` (§9.7.3.11-12): "if (isNaN(x) &&
/// isNaN(y)) z = NaN; else if (isNaN(x)) z = y; else if (isNaN(y)) z = x; else // note: -0.0 <
/// +0.0 here z = (x < y) ? x : y;" and "If values of both inputs are 0.0, then +0.0 > -0.0".
/// `.NaN` (sm_80): "the result is canonical NaN if any of the inputs is NaN". All 6,724 pairs of
/// the special values and 100,000 random pairs.
#[test]
fn float_min_max_nan_and_signed_zero() {
    let dev = device();
    let mut r = Rng::new(0x313);
    let sp = f32_specials();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for &x in &sp {
        for &y in &sp {
            a.push(x);
            b.push(y);
        }
    }
    for _ in 0..100_000 {
        a.push(rand_f32_bits(&mut r));
        b.push(if r.below(4) == 0 {
            a[a.len() - 1] ^ 0x8000_0000
        } else {
            rand_f32_bits(&mut r)
        });
    }
    let cols = vec![a, b];
    // x < y with -0 < +0
    let less = |x: u32, y: u32| -> bool {
        let (fx, fy) = (f32::from_bits(x), f32::from_bits(y));
        fx < fy || (fx == 0.0 && fy == 0.0 && x == 0x8000_0000 && y == 0)
    };
    let num = |v: &[u32], pick_min: bool| -> Want {
        let (x, y) = (v[0], v[1]);
        match (is_nan32(x), is_nan32(y)) {
            (true, true) => Want::Nan,
            (true, false) => Want::Bits(y),
            (false, true) => Want::Bits(x),
            _ => Want::Bits(if less(x, y) == pick_min { x } else { y }),
        }
    };
    let nan = |v: &[u32], pick_min: bool| -> Want {
        if is_nan32(v[0]) || is_nan32(v[1]) {
            Want::Nan
        } else {
            num(v, pick_min)
        }
    };
    check_f32(&dev, "min.f32", &cols, |v| num(v, true));
    check_f32(&dev, "max.f32", &cols, |v| num(v, false));
    check_f32(&dev, "min.NaN.f32", &cols, |v| nan(v, true));
    check_f32(&dev, "max.NaN.f32", &cols, |v| nan(v, false));
}

/// `setp.CmpOp.f32 p|q, a, b` for all 14 float comparisons (§9.7.6.2, §9.3.1.2 Tables 23-25):
/// ordered `eq ne lt le gt ge` are false if either operand is NaN; unordered `equ neu ltu leu gtu
/// geu` are true if either is NaN and otherwise equal their ordered counterparts; `num` is
/// "!isNaN(a) && !isNaN(b)", `nan` "isNaN(a) || isNaN(b)"; -0 == +0. "A related value computed
/// using the complement of the compare result is written to the second destination operand"
/// (q = !t without a BoolOp). `.ftz` "flushes subnormal inputs to sign-preserving zero".
#[test]
fn setp_float_ordered_and_unordered() {
    let dev = device();
    let mut r = Rng::new(0x5e7);
    let sp = f32_specials();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for &x in &sp {
        for &y in &sp {
            a.push(x);
            b.push(y);
        }
    }
    for _ in 0..50_000 {
        let x = rand_f32_bits(&mut r);
        a.push(x);
        b.push(match r.below(3) {
            0 => x,
            1 => x ^ 0x8000_0000,
            _ => rand_f32_bits(&mut r),
        });
    }
    let n = a.len();
    type Cmp = fn(f32, f32) -> bool;
    let ops: [(&str, Cmp); 14] = [
        ("eq", |x, y| x == y),
        ("ne", |x, y| x != y && !x.is_nan() && !y.is_nan()),
        ("lt", |x, y| x < y),
        ("le", |x, y| x <= y),
        ("gt", |x, y| x > y),
        ("ge", |x, y| x >= y),
        ("equ", |x, y| x == y || x.is_nan() || y.is_nan()),
        ("neu", |x, y| x != y),
        ("ltu", |x, y| x < y || x.is_nan() || y.is_nan()),
        ("leu", |x, y| x <= y || x.is_nan() || y.is_nan()),
        ("gtu", |x, y| x > y || x.is_nan() || y.is_nan()),
        ("geu", |x, y| x >= y || x.is_nan() || y.is_nan()),
        ("num", |x, y| !x.is_nan() && !y.is_nan()),
        ("nan", |x, y| x.is_nan() || y.is_nan()),
    ];
    let (ba, bb) = (bytes_u32(&a), bytes_u32(&b));
    for ftz_mod in ["", ".ftz"] {
        for (name, f) in ops {
            let instr = format!("setp.{name}{ftz_mod}.f32");
            let ptx = map_ptx(
                &["f32", "f32"],
                &["u32", "u32"],
                ".reg .pred %p, %q;",
                &format!(
                    "{instr} %p|%q, %in0, %in1;\nselp.u32 %out0, 1, 0, %p;\nselp.u32 %out1, 1, 0, %q;"
                ),
            );
            let Some(out) = map_run(&dev, &instr, &ptx, &[&ba, &bb], &[4 * n, 4 * n], n) else {
                continue;
            };
            let (p, q) = (u32s(&out[0]), u32s(&out[1]));
            let mut fails = Failures::new(&instr);
            for i in 0..n {
                let (x, y) = if ftz_mod.is_empty() {
                    (a[i], b[i])
                } else {
                    (ftz(a[i]), ftz(b[i]))
                };
                let t = f(f32::from_bits(x), f32::from_bits(y)) as u32;
                fails.check(p[i] == t && q[i] == 1 - t, || {
                    format!(
                        "{} -> p={} q={}, want p={t} q={}",
                        show(&[a[i], b[i]]),
                        p[i],
                        q[i],
                        1 - t
                    )
                });
            }
            fails.finish(n);
        }
    }
}

/// `setp.CmpOp.BoolOp.f32 p|q, a, b, {!}c` (§9.7.6.2: "t = (a CmpOp b) ? 1 : 0; p = BoolOp(t,
/// c); q = BoolOp(!t, c);"), `and/or/xor/not.pred` (§9.7.8.1-4), and `selp.{b32,b64,f32}`
/// (§9.7.6.3: "d = (c == 1) ? a : b;"), all packed into one bit mask per element, on 100,000
/// random elements.
#[test]
fn setp_bool_ops_predicate_logic_and_selp() {
    let dev = checked_device();
    let mut r = Rng::new(0xb001);
    let n = 100_000;
    let a: Vec<u32> = (0..n).map(|_| rand_f32_bits(&mut r)).collect();
    let b: Vec<u32> = (0..n)
        .map(|i| {
            if i % 3 == 0 {
                a[i]
            } else {
                rand_f32_bits(&mut r)
            }
        })
        .collect();
    let c: Vec<u32> = (0..n).map(|_| r.u32() & 1).collect();
    let d: Vec<u32> = (0..n).map(|_| r.u32() & 1).collect();
    let e: Vec<u64> = (0..n).map(|_| r.u64()).collect();
    let g: Vec<u64> = (0..n).map(|_| r.u64()).collect();
    // (instruction producing %p|%q or %p, number of result bits)
    let steps = [
        "setp.lt.and.f32 %p|%q, %in0, %in1, %c;",
        "setp.lt.and.f32 %p|%q, %in0, %in1, !%c;",
        "setp.geu.or.f32 %p|%q, %in0, %in1, %c;",
        "setp.geu.or.f32 %p|%q, %in0, %in1, !%d;",
        "setp.eq.xor.f32 %p|%q, %in0, %in1, %d;",
        "setp.nan.xor.f32 %p|%q, %in0, %in1, !%c;",
        "and.pred %p, %c, %d;\nnot.pred %q, %p;",
        "or.pred %p, %c, %d;\nxor.pred %q, %c, %d;",
        "not.pred %p, %c;\nand.pred %q, %p, %d;",
    ];
    let mut body =
        String::from("setp.ne.u32 %c, %in2, 0;\nsetp.ne.u32 %d, %in3, 0;\nmov.u32 %out0, 0;\n");
    for (k, s) in steps.iter().enumerate() {
        body.push_str(s);
        body.push('\n');
        body.push_str(&format!(
            "selp.u32 %t, {}, 0, %p;\nor.b32 %out0, %out0, %t;\nselp.u32 %t, {}, 0, %q;\nor.b32 %out0, %out0, %t;\n",
            1u32 << (2 * k),
            1u32 << (2 * k + 1)
        ));
    }
    body.push_str(
        "selp.b32 %out1, %in0, %in1, %c;\nselp.f32 %fs, %in0, %in1, %d;\nmov.b32 %t, %fs;\nxor.b32 %out1, %out1, %t;\nselp.b64 %out2, %in4, %in5, %d;",
    );
    let ptx = map_ptx(
        &["f32", "f32", "u32", "u32", "b64", "b64"],
        &["u32", "b32", "b64"],
        ".reg .pred %p, %q, %c, %d;\n.reg .b32 %t;\n.reg .f32 %fs;",
        &body,
    );
    let inputs = [
        bytes_u32(&a),
        bytes_u32(&b),
        bytes_u32(&c),
        bytes_u32(&d),
        bytes_u64(&e),
        bytes_u64(&g),
    ];
    let ins: Vec<&[u8]> = inputs.iter().map(|v| &v[..]).collect();
    let Some(out) = map_run(
        &dev,
        "setp.BoolOp / pred logic / selp",
        &ptx,
        &ins,
        &[4 * n, 4 * n, 8 * n],
        n,
    ) else {
        return;
    };
    let (mask, sel32, sel64) = (u32s(&out[0]), u32s(&out[1]), u64s(&out[2]));
    let mut f = Failures::new("setp.BoolOp / pred logic / selp");
    for i in 0..n {
        let (x, y) = (f32::from_bits(a[i]), f32::from_bits(b[i]));
        let (pc, pd) = (c[i] == 1, d[i] == 1);
        let lt = x < y;
        let geu = x >= y || x.is_nan() || y.is_nan();
        let eq = x == y;
        let nan = x.is_nan() || y.is_nan();
        let pairs = [
            (lt & pc, !lt & pc),
            (lt & !pc, !lt & !pc),
            (geu | pc, !geu | pc),
            (geu | !pd, !geu | !pd),
            (eq ^ pd, !eq ^ pd),
            (nan ^ !pc, !nan ^ !pc),
            (pc & pd, !(pc & pd)),
            (pc | pd, pc ^ pd),
            (!pc, !pc & pd),
        ];
        let mut want = 0u32;
        for (k, (p, q)) in pairs.iter().enumerate() {
            want |= (*p as u32) << (2 * k) | (*q as u32) << (2 * k + 1);
        }
        let s32 = (if pc { a[i] } else { b[i] }) ^ (if pd { a[i] } else { b[i] });
        let s64 = if pd { e[i] } else { g[i] };
        f.check(mask[i] == want && sel32[i] == s32 && sel64[i] == s64, || {
            format!(
                "a={:#010x} b={:#010x} c={pc} d={pd}: mask {:#x} want {want:#x}, selp {:#x}/{:#x} want {s32:#x}/{s64:#x}",
                a[i], b[i], mask[i], sel32[i], sel64[i]
            )
        });
    }
    f.finish(n);
}

/// Integer `setp` comparisons (§9.7.6.2 Integer Notes, §9.3.1.1): signed `eq ne lt le gt ge`,
/// unsigned `lo ls hi hs` (and `lt..ge` on unsigned types), for `.s32/.u32/.s64/.u64`, as a bit
/// mask per element on 50,000 random pairs (a third of them equal, a third differing in sign).
#[test]
fn setp_integer_comparisons() {
    let dev = checked_device();
    let mut r = Rng::new(0x1c);
    let n = 50_000;
    let a: Vec<u64> = (0..n).map(|_| r.u64() >> r.below(64)).collect();
    let b: Vec<u64> = (0..n)
        .map(|i| match i % 3 {
            0 => a[i],
            1 => a[i] ^ (1 << 63) ^ (1 << 31),
            _ => r.u64() >> r.below(64),
        })
        .collect();
    let cmps = ["eq", "ne", "lt", "le", "gt", "ge"];
    let ucmps = ["lo", "ls", "hi", "hs"];
    for ty in ["s32", "u32", "s64", "u64"] {
        let unsigned = ty.starts_with('u');
        let names: Vec<&str> = cmps
            .iter()
            .chain(if unsigned { &ucmps[..] } else { &[] })
            .copied()
            .collect();
        let mut body = String::from("mov.u32 %out0, 0;\n");
        for (k, c) in names.iter().enumerate() {
            body.push_str(&format!(
                "setp.{c}.{ty} %p, %in0, %in1;\nselp.u32 %t, {}, 0, %p;\nor.b32 %out0, %out0, %t;\n",
                1u32 << k
            ));
        }
        let what = format!("setp.*.{ty}");
        let ptx = map_ptx(&[ty, ty], &["u32"], ".reg .pred %p;\n.reg .b32 %t;", &body);
        let (ba, bb) = if ty.ends_with("32") {
            let a32: Vec<u32> = a.iter().map(|&x| x as u32).collect();
            let b32: Vec<u32> = b.iter().map(|&x| x as u32).collect();
            (bytes_u32(&a32), bytes_u32(&b32))
        } else {
            (bytes_u64(&a), bytes_u64(&b))
        };
        let Some(out) = map_run(&dev, &what, &ptx, &[&ba, &bb], &[4 * n], n) else {
            continue;
        };
        let got = u32s(&out[0]);
        let mut f = Failures::new(&what);
        for i in 0..n {
            let (x, y): (i128, i128) = match ty {
                "s32" => (a[i] as u32 as i32 as i128, b[i] as u32 as i32 as i128),
                "u32" => (a[i] as u32 as i128, b[i] as u32 as i128),
                "s64" => (a[i] as i64 as i128, b[i] as i64 as i128),
                _ => (a[i] as i128, b[i] as i128),
            };
            let mut want = 0u32;
            for (k, c) in names.iter().enumerate() {
                let t = match *c {
                    "eq" => x == y,
                    "ne" => x != y,
                    "lt" | "lo" => x < y,
                    "le" | "ls" => x <= y,
                    "gt" | "hi" => x > y,
                    _ => x >= y,
                };
                want |= (t as u32) << k;
            }
            f.check(got[i] == want, || {
                format!("{x} {y}: {:#x}, want {want:#x}", got[i])
            });
        }
        f.finish(n);
    }
}

/// `cvt.{rni,rzi,rmi,rpi}{.ftz}.f32.f32` (§9.7.9.21: "A floating-point value may be rounded to an
/// integral value using the integer rounding modifiers ... The result is an integral value,
/// stored in floating-point format"; `.rni` ties to even): IEEE roundToIntegral, which keeps the
/// sign of zero (rmi(-0.5) = -1, rpi(-0.5) = -0, rni(0.5) = +0). With `.ftz` "subnormal inputs
/// are flushed to sign-preserving zero" (so `.rpi.ftz` of the smallest subnormal is +0, not 1).
#[test]
fn cvt_round_to_integral_f32() {
    let dev = device();
    let mut r = Rng::new(0x1a1);
    let mut a = f32_specials();
    for _ in 0..100_000 {
        a.push(if r.below(2) == 0 {
            rand_f32_bits(&mut r)
        } else {
            // |x| in [2^-2, 2^25): where the fraction bits are
            let e = 125 + r.below(26) as u32;
            (r.u32() & 0x807f_ffff) | (e << 23)
        });
    }
    for k in -20i32..=20 {
        for frac in [0.0f32, 0.25, 0.5, 0.75] {
            a.push((k as f32 + frac).to_bits());
        }
    }
    let cols = vec![a];
    type Round = fn(f32) -> f32;
    let rounds: [(&str, Round); 4] = [
        ("rni", f32::round_ties_even),
        ("rzi", f32::trunc),
        ("rmi", f32::floor),
        ("rpi", f32::ceil),
    ];
    for (name, f) in rounds {
        for ftz_mod in ["", ".ftz"] {
            check_f32(&dev, &format!("cvt.{name}{ftz_mod}.f32.f32"), &cols, |v| {
                let x = if ftz_mod.is_empty() { v[0] } else { ftz(v[0]) };
                Want::from_ref(f(f32::from_bits(x)).to_bits())
            });
        }
    }
}

/// `cvt.sat.f32.f32` and `cvt.{rni,rzi}.sat.f32.f32`: ".sat limits the result to the range
/// [0.0, 1.0]. NaN results are flushed to positive zero" (§9.7.9.21 Floating Point Notes).
/// A -0.0 result may keep its sign; a negative one clamps to +0.0.
#[test]
fn cvt_sat_f32_f32() {
    let dev = device();
    let mut r = Rng::new(0x5a8);
    let mut a = f32_specials();
    for _ in 0..50_000 {
        a.push(if r.below(2) == 0 {
            rand_f32_bits(&mut r)
        } else {
            (r.below(1 << 24) as f32 / (1 << 22) as f32 - 2.0).to_bits()
        });
    }
    let cols = vec![a];
    check_f32(&dev, "cvt.sat.f32.f32", &cols, |v| sat_want(v[0]));
    check_f32(&dev, "cvt.rni.sat.f32.f32", &cols, |v| {
        sat_want(f32::from_bits(v[0]).round_ties_even().to_bits())
    });
    check_f32(&dev, "cvt.rzi.sat.f32.f32", &cols, |v| {
        sat_want(f32::from_bits(v[0]).trunc().to_bits())
    });
}

/// Checks `cvt.<irnd>{.ftz}.<dst>.f32` on `a`; `nan64` is the expected result of a NaN into a
/// 64-bit destination.
fn check_f32_to_int(dev: &Device, a: &[u32], include_nan: bool) {
    let inputs: Vec<u32> = a
        .iter()
        .copied()
        .filter(|&b| include_nan || !is_nan32(b))
        .collect();
    let bytes = bytes_u32(&inputs);
    type Round = fn(f64) -> f64;
    let rounds: [(&str, Round); 4] = [
        ("rni", f64::round_ties_even),
        ("rzi", f64::trunc),
        ("rmi", f64::floor),
        ("rpi", f64::ceil),
    ];
    for dst in ["s32", "u32", "s64", "u64"] {
        let (lo, hi): (i128, i128) = match dst {
            "s32" => (i32::MIN as i128, i32::MAX as i128),
            "u32" => (0, u32::MAX as i128),
            "s64" => (i64::MIN as i128, i64::MAX as i128),
            _ => (0, u64::MAX as i128),
        };
        let width = type_bytes(dst);
        for (name, f) in rounds {
            for ftz_mod in ["", ".ftz"] {
                let instr = format!("cvt.{name}{ftz_mod}.{dst}.f32");
                let Some(got) = unary(dev, &instr, "f32", dst, &bytes) else {
                    continue;
                };
                let mut fails = Failures::new(&instr);
                for (&x, &g) in inputs.iter().zip(&got) {
                    let xf = if ftz_mod.is_empty() { x } else { ftz(x) };
                    let v = f32::from_bits(xf) as f64;
                    let want: u64 = if v.is_nan() {
                        if width == 8 {
                            1 << 63
                        } else {
                            0
                        }
                    } else {
                        let i = f(v);
                        let c = if i >= hi as f64 {
                            hi
                        } else if i <= lo as f64 {
                            lo
                        } else {
                            i as i128
                        };
                        if width == 8 {
                            c as u64
                        } else {
                            c as u64 & 0xffff_ffff
                        }
                    };
                    fails.check(g == want, || {
                        format!(
                            "{x:#010x} ({:e}) -> {g:#x}, want {want:#x}",
                            f32::from_bits(x)
                        )
                    });
                }
                fails.finish(inputs.len());
            }
        }
    }
}

fn f32_to_int_inputs() -> Vec<u32> {
    let mut r = Rng::new(0xc1);
    let mut a = f32_specials();
    for _ in 0..60_000 {
        a.push(if r.below(2) == 0 {
            rand_f32_bits(&mut r)
        } else {
            // 2^-2 .. 2^65: every integer range boundary
            (r.u32() & 0x807f_ffff) | ((125 + r.below(68) as u32) << 23)
        });
    }
    // 2^31 and 2^32 and their f32 neighbours, ±2^63, 2^64 and their neighbours
    for b in [
        0x4eff_ffffu32,
        0x4f00_0000,
        0xcf00_0000,
        0xcf00_0001,
        0x4f7f_ffff,
        0x4f80_0000,
        0x5eff_ffff,
        0x5f00_0000,
        0xdf00_0000,
        0xdf00_0001,
        0x5f7f_ffff,
        0x5f80_0000,
    ] {
        a.push(b);
    }
    for x in [-0.5f32, -1.0, 0.5, 1.5, 2.5, -2.5] {
        a.push(x.to_bits());
    }
    a
}

/// `cvt.{rni,rzi,rmi,rpi}{.ftz}.{s32,u32,s64,u64}.f32` on non-NaN inputs (§9.7.9.21 Integer
/// Notes): rounded to an integer in the mode, then "the result is clamped to the destination
/// range by default" (±inf and out-of-range values saturate, negatives give 0 in unsigned
/// types); `.ftz` flushes subnormal inputs to zero (so `.rpi.ftz` of a positive subnormal is 0).
/// NaN into 32-bit destinations gives 0 ("Zero if source is not .f64 and destination is not
/// .s64, .u64").
#[test]
fn cvt_f32_to_integers_round_and_saturate() {
    let dev = device();
    let a = f32_to_int_inputs();
    check_f32_to_int(&dev, &a, false);
    // NaN into 32-bit destinations
    let nans: Vec<u32> = f32_specials()
        .into_iter()
        .filter(|&b| is_nan32(b))
        .collect();
    for dst in ["s32", "u32"] {
        for irnd in ["rni", "rzi", "rmi", "rpi"] {
            let instr = format!("cvt.{irnd}.{dst}.f32");
            if let Some(got) = unary(&dev, &instr, "f32", dst, &bytes_u32(&nans)) {
                assert!(
                    got.iter().all(|&g| g == 0),
                    "{instr} of NaN: {got:x?}, want 0"
                );
            }
        }
    }
}

/// `cvt.{rni,rzi,rmi,rpi}.{s64,u64}.f32` of NaN: "NaN input results in following value: 1. Zero
/// if source is not .f64 and destination is not .s64, .u64. 2. Otherwise 1 << (BitWidth(dst) -
/// 1)" (§9.7.9.21 Integer Notes), i.e. 0x8000000000000000.
#[test]

fn cvt_f32_to_64bit_integers_nan() {
    let dev = device();
    let nans: Vec<u32> = f32_specials()
        .into_iter()
        .filter(|&b| is_nan32(b))
        .collect();
    for dst in ["s64", "u64"] {
        for irnd in ["rni", "rzi", "rmi", "rpi"] {
            let instr = format!("cvt.{irnd}.{dst}.f32");
            if let Some(got) = unary(&dev, &instr, "f32", dst, &bytes_u32(&nans)) {
                assert!(
                    got.iter().all(|&g| g == 1 << 63),
                    "{instr} of NaN: {got:x?}, want 0x8000000000000000"
                );
            }
        }
    }
}

/// `cvt.rzi.sat.s32.f32` / `cvt.rni.sat.s32.f32`: `.sat` is legal where "the destination type's
/// value range is not a superset of the source type's value range", and "For float-to-integer
/// conversions, the result is clamped to the destination range by default; i.e, .sat is
/// redundant" (§9.7.9.21 Integer Notes), so the results equal the unsaturated forms.
#[test]
fn cvt_sat_f32_to_s32_is_redundant() {
    let dev = device();
    let a: Vec<u32> = f32_to_int_inputs()
        .into_iter()
        .filter(|&b| !is_nan32(b))
        .collect();
    for (name, f) in [
        ("rzi", f64::trunc as fn(f64) -> f64),
        ("rni", f64::round_ties_even),
    ] {
        let instr = format!("cvt.{name}.sat.s32.f32");
        let Some(got) = unary(&dev, &instr, "f32", "s32", &bytes_u32(&a)) else {
            continue;
        };
        let mut fails = Failures::new(&instr);
        for (&x, &g) in a.iter().zip(&got) {
            let v = f(f32::from_bits(x) as f64);
            let want = v.clamp(i32::MIN as f64, i32::MAX as f64) as i32 as u32 as u64;
            fails.check(g == want, || format!("{x:#010x} -> {g:#x}, want {want:#x}"));
        }
        fails.finish(a.len());
    }
}

/// Runs a one-input f32 function and returns (inputs, outputs); `None` if unsupported.
fn run_unary_f32(dev: &Device, instr: &str, a: &[u32]) -> Option<Vec<u32>> {
    unary(dev, instr, "f32", "f32", &bytes_u32(a))
        .map(|v| v.into_iter().map(|x| x as u32).collect())
}

/// `ex2.approx{.ftz}.f32` (§9.7.3.21): "The maximum ulp error is 2 ulp from correctly rounded
/// result across the full range of inputs"; the corner cases -Inf -> +0.0, -0.0 -> +1.0,
/// +0.0 -> +1.0, +Inf -> +Inf, NaN -> NaN are exact; subnormal results are supported by default
/// and `.ftz` "flushes subnormal inputs and results to sign-preserving zero". The correctly
/// rounded reference is f64 `exp2` rounded to f32; 500,000 inputs over [-160, 130] and all
/// patterns.
#[test]
fn ex2_approx_within_two_ulp() {
    let dev = device();
    let mut r = Rng::new(0xe2);
    let mut a = f32_specials();
    for _ in 0..500_000 {
        a.push(match r.below(4) {
            0 => rand_f32_bits(&mut r),
            1 => (r.u32() & 0x807f_ffff) | ((100 + r.below(27) as u32) << 23), // |x| < 1
            _ => {
                let t = r.below(1 << 30) as f64 / (1u64 << 30) as f64;
                ((-160.0 + 290.0 * t) as f32).to_bits()
            }
        });
    }
    for ftz_mod in ["", ".ftz"] {
        let instr = format!("ex2.approx{ftz_mod}.f32");
        let Some(got) = run_unary_f32(&dev, &instr, &a) else {
            continue;
        };
        let mut f = Failures::new(&instr);
        for (&x, &g) in a.iter().zip(&got) {
            let xin = if ftz_mod.is_empty() { x } else { ftz(x) };
            let v = f32::from_bits(xin);
            let ok = if v.is_nan() {
                is_nan32(g)
            } else if v == f32::NEG_INFINITY {
                g == 0
            } else if v == f32::INFINITY || v == 0.0 {
                g == v.exp2().to_bits()
            } else {
                let cr = ((v as f64).exp2() as f32).to_bits();
                let close = ulp_distance(g, cr) <= 2 && !is_nan32(g);
                if cr == 0x7f80_0000 {
                    // overflow: inf, or within 2 ulp of the largest finite value
                    g == cr || (v < 128.01 && close)
                } else if ftz_mod.is_empty() {
                    close
                } else if g == 0 {
                    // flushed: the result is subnormal, or within 2 ulp of the smallest normal
                    cr <= 0x0080_0002
                } else {
                    close && g >= 0x0080_0000
                }
            };
            f.check(ok, || {
                format!(
                    "{x:#010x} ({:e}) -> {g:#010x} ({:e}), 2^x = {:e}",
                    f32::from_bits(x),
                    f32::from_bits(g),
                    (v as f64).exp2()
                )
            });
        }
        f.finish(a.len());
    }
}

/// `rsqrt.approx{.ftz}.f32` (§9.7.3.16): "The maximum relative error for rsqrt.f32 over the
/// entire positive finite floating-point range is 2^-22.9"; corner cases -Inf -> NaN, -normal ->
/// NaN, -0.0 -> -Inf, +0.0 -> +Inf, +Inf -> +0.0, NaN -> NaN; subnormal inputs are supported by
/// default, `.ftz` flushes them to sign-preserving zero (so they give ±Inf). Reference: f64.
#[test]
fn rsqrt_approx_relative_error() {
    let dev = device();
    let mut r = Rng::new(0x125);
    let mut a = f32_specials();
    for _ in 0..500_000 {
        a.push(if r.below(8) == 0 {
            rand_f32_bits(&mut r)
        } else {
            r.u32() & 0x7fff_ffff
        });
    }
    let bound = 2f64.powf(-22.9);
    for ftz_mod in ["", ".ftz"] {
        let instr = format!("rsqrt.approx{ftz_mod}.f32");
        let Some(got) = run_unary_f32(&dev, &instr, &a) else {
            continue;
        };
        let mut f = Failures::new(&instr);
        for (&x, &g) in a.iter().zip(&got) {
            let xin = if ftz_mod.is_empty() { x } else { ftz(x) };
            let v = f32::from_bits(xin);
            let gf = f32::from_bits(g) as f64;
            let ok = if v.is_nan() {
                is_nan32(g)
            } else if v == 0.0 {
                g == (1.0 / v).to_bits()
            } else if v < 0.0 {
                // -Inf and -normal give NaN; so does a negative subnormal (IEEE 754 §9.2.1:
                // rSqrt of x < 0 is invalid), which the table does not list
                is_nan32(g)
            } else if v == f32::INFINITY {
                g == 0
            } else {
                let want = 1.0 / (v as f64).sqrt();
                ((gf - want) / want).abs() <= bound
            };
            f.check(ok, || {
                format!(
                    "{x:#010x} ({:e}) -> {g:#010x} ({gf:e}), want {:e}",
                    f32::from_bits(x),
                    1.0 / (v as f64).sqrt()
                )
            });
        }
        f.finish(a.len());
    }
}

/// `lg2.approx{.ftz}.f32` (§9.7.3.20): "The maximum absolute error is 2^-22 when the input
/// operand is in the range (0.5, 2). For positive finite inputs outside of this interval,
/// maximum relative error is 2^-22"; corner cases -Inf -> NaN, -normal -> NaN, ±0.0 -> -Inf,
/// +Inf -> +Inf, NaN -> NaN; `.ftz` flushes subnormal inputs to zero (giving -Inf). Reference:
/// f64 `log2`.
#[test]
fn lg2_approx_error_bounds() {
    let dev = device();
    let mut r = Rng::new(0x192);
    let mut a = f32_specials();
    for _ in 0..500_000 {
        a.push(match r.below(4) {
            0 => rand_f32_bits(&mut r),
            1 => (r.u32() & 0x007f_ffff) | ((126 + r.below(2) as u32) << 23), // [0.5, 2)
            _ => r.u32() & 0x7fff_ffff,
        });
    }
    let bound = 2f64.powi(-22);
    for ftz_mod in ["", ".ftz"] {
        let instr = format!("lg2.approx{ftz_mod}.f32");
        let Some(got) = run_unary_f32(&dev, &instr, &a) else {
            continue;
        };
        let mut f = Failures::new(&instr);
        for (&x, &g) in a.iter().zip(&got) {
            let xin = if ftz_mod.is_empty() { x } else { ftz(x) };
            let v = f32::from_bits(xin);
            let gf = f32::from_bits(g) as f64;
            let want = (v as f64).log2();
            let ok = if v.is_nan() || v < 0.0 {
                is_nan32(g)
            } else if v == 0.0 {
                g == 0xff80_0000
            } else if v == f32::INFINITY {
                g == 0x7f80_0000
            } else if v > 0.5 && v < 2.0 {
                (gf - want).abs() <= bound
            } else {
                ((gf - want) / want).abs() <= bound
            };
            f.check(ok, || {
                format!(
                    "{x:#010x} ({:e}) -> {g:#010x} ({gf:e}), want {want:e}",
                    f32::from_bits(x)
                )
            });
        }
        f.finish(a.len());
    }
}

/// Operands for the approximate division tests: the mixes of [`arith_inputs`], with a fifth of
/// the divisors above 2^126 (and some infinite dividends among them).
fn approx_div_inputs() -> Vec<Vec<u32>> {
    let mut r = Rng::new(0xa99);
    let n = 100_000;
    let mut cols = arith_inputs(&mut r, n);
    cols.truncate(2);
    let (a, b) = cols.split_at_mut(1);
    for (i, (x, y)) in a[0].iter_mut().zip(b[0].iter_mut()).take(n / 5).enumerate() {
        *y = (r.u32() & 0x807f_ffff) | ((253 + r.below(2) as u32) << 23);
        if i % 7 == 0 {
            *x = 0x7f80_0000 | (r.u32() & 0x8000_0000);
        }
    }
    cols
}

/// The f32 nearest a / b (f64 division rounded to f32 is correctly rounded).
fn cr_div(a: u32, b: u32) -> u32 {
    ((f32::from_bits(a) as f64 / f32::from_bits(b) as f64) as f32).to_bits()
}

/// `rcp.approx.f32` (§9.7.3.13): "The maximum ulp error is 1 across the full range of inputs",
/// with the table -Inf -> -0.0, -0.0 -> -Inf, +0.0 -> +Inf, +Inf -> +0.0, NaN -> NaN.
#[test]
fn rcp_approx_within_one_ulp() {
    let dev = device();
    let cols = approx_div_inputs();
    check_f32(&dev, "rcp.approx.f32", &cols[1..], |v| {
        let x = f32::from_bits(v[0]);
        if x.is_nan() || x.is_infinite() || x == 0.0 {
            Want::from_ref((1.0 / x).to_bits())
        } else {
            Want::Within(cr_div(0x3f80_0000, v[0]), 1)
        }
    });
}

/// `div.full.f32` (§9.7.3.8): "a relatively fast, full-range approximation ... The maximum ulp
/// error is 2 across the full range of inputs" (checked where both operands are finite and
/// nonzero and the correctly rounded quotient is a finite normal number; NaN gives NaN).
#[test]
fn div_full_within_two_ulp() {
    let dev = device();
    let cols = approx_div_inputs();
    check_f32(&dev, "div.full.f32", &cols, |v| {
        let (fa, fb) = (f32::from_bits(v[0]), f32::from_bits(v[1]));
        let cr = cr_div(v[0], v[1]);
        if fa.is_nan() || fb.is_nan() {
            Want::Nan
        } else if fa.is_finite() && fb.is_finite() && fa != 0.0 && fb != 0.0 && is_normal32(cr) {
            Want::Within(cr, 2)
        } else {
            Want::Any
        }
    });
}

fn is_normal32(b: u32) -> bool {
    let e = b & 0x7f80_0000;
    e != 0 && e != 0x7f80_0000
}

/// `div.approx.f32` for |b| in [2^-126, 2^126] (§9.7.3.8): "the maximum ulp error is 2"
/// (checked where the correctly rounded quotient of finite operands is a finite normal number;
/// NaN gives NaN).
#[test]
fn div_approx_within_two_ulp() {
    let dev = device();
    let cols = approx_div_inputs();
    check_f32(&dev, "div.approx.f32", &cols, |v| {
        let (fa, fb) = (f32::from_bits(v[0]), f32::from_bits(v[1]));
        let cr = cr_div(v[0], v[1]);
        let in_range = fb.abs() >= 2f32.powi(-126) && fb.abs() <= 2f32.powi(126);
        if fa.is_nan() || fb.is_nan() {
            Want::Nan
        } else if in_range && fa.is_finite() && fa != 0.0 && is_normal32(cr) {
            Want::Within(cr, 2)
        } else {
            Want::Any
        }
    });
}

/// `div.approx.f32` for 2^126 < |b| < 2^128 (§9.7.3.8): "if a is infinity, div.approx.f32
/// returns NaN, otherwise it returns a sign-preserving zero" (the sign of a * (1/b)). E.g.
/// 1.5 / 1.5600971e38 (0x3fc00000 / 0x7eeabcc1) must be +0; the executor returns the quotient
/// 0x0068b21d, and inf / -1.9072726e38 gives -inf instead of NaN.
#[test]

fn div_approx_large_divisor_gives_zero() {
    let dev = device();
    let cols = approx_div_inputs();
    check_f32(&dev, "div.approx.f32", &cols, |v| {
        let (fa, fb) = (f32::from_bits(v[0]), f32::from_bits(v[1]));
        if fa.is_nan() || fb.is_nan() {
            Want::Nan
        } else if fb.is_finite() && fb.abs() > 2f32.powi(126) {
            if fa.is_infinite() {
                Want::Nan
            } else {
                Want::Bits((v[0] ^ v[1]) & 0x8000_0000)
            }
        } else {
            Want::Any
        }
    });
}

/// `sqrt.rn.f32` (§9.7.3.15, IEEE 754 compliant rounding): the correctly rounded square root
/// (sqrt(-0) = -0, negative -> NaN, +inf -> +inf). The f64 square root rounded to f32 is the
/// correctly rounded f32 result (53 >= 2*24 + 2 makes the double rounding innocuous).
#[test]
fn sqrt_rn_correctly_rounded() {
    let dev = device();
    let mut r = Rng::new(0x5c1);
    let mut a = f32_specials();
    for _ in 0..150_000 {
        a.push(if r.below(4) == 0 {
            rand_f32_bits(&mut r)
        } else {
            r.u32() & 0x7fff_ffff
        });
    }
    let cols = vec![a];
    for ftz_mod in ["", ".ftz"] {
        check_f32(&dev, &format!("sqrt.rn{ftz_mod}.f32"), &cols, |v| {
            let x = if ftz_mod.is_empty() { v[0] } else { ftz(v[0]) };
            Want::from_ref(((f32::from_bits(x) as f64).sqrt() as f32).to_bits())
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Integers
// ---------------------------------------------------------------------------------------------

/// Interesting 32-bit integers: 0, ±1, the extremes and their neighbours, powers of two.
fn int_edges32() -> Vec<u32> {
    let mut v = vec![
        0,
        1,
        2,
        3,
        0x7fff_ffff,
        0x8000_0000,
        0x8000_0001,
        0xffff_ffff,
        0xffff_fffe,
    ];
    for k in 0..32 {
        v.push(1 << k);
        v.push((1u32 << k).wrapping_neg());
    }
    v
}

/// Random 32-bit integers of every magnitude, with the edges mixed in.
fn rand_u32s(r: &mut Rng, n: usize) -> Vec<u32> {
    let edges = int_edges32();
    (0..n)
        .map(|i| {
            if i % 5 == 0 {
                r.pick(&edges)
            } else {
                let x = r.u32() >> r.below(32);
                if r.below(2) == 0 {
                    x
                } else {
                    x.wrapping_neg()
                }
            }
        })
        .collect()
}

fn rand_u64s(r: &mut Rng, n: usize) -> Vec<u64> {
    let edges = [
        0u64,
        1,
        u64::MAX,
        1 << 63,
        (1 << 63) - 1,
        (1 << 63) + 1,
        1 << 32,
        u32::MAX as u64,
    ];
    (0..n)
        .map(|i| {
            if i % 5 == 0 {
                r.pick(&edges)
            } else {
                let x = r.u64() >> r.below(64);
                if r.below(2) == 0 {
                    x
                } else {
                    x.wrapping_neg()
                }
            }
        })
        .collect()
}

/// Runs `<instr> %out0, <args>` with the given typed integer columns (u64 words), returning the
/// outputs as u64 words; `None` when unsupported.
fn run_int(dev: &Device, instr: &str, ins: &[(&str, &[u64])], out: &str) -> Option<Vec<u64>> {
    let n = ins[0].1.len();
    let types: Vec<&str> = ins.iter().map(|(t, _)| *t).collect();
    let bytes: Vec<Vec<u8>> = ins
        .iter()
        .map(|(t, v)| match type_bytes(t) {
            2 => bytes_u16(&v.iter().map(|&x| x as u16).collect::<Vec<_>>()),
            4 => bytes_u32(&v.iter().map(|&x| x as u32).collect::<Vec<_>>()),
            _ => bytes_u64(v),
        })
        .collect();
    let args: Vec<String> = (0..ins.len()).map(|j| format!("%in{j}")).collect();
    let ptx = map_ptx(
        &types,
        &[out],
        "",
        &format!("{instr} %out0, {};", args.join(", ")),
    );
    let refs: Vec<&[u8]> = bytes.iter().map(|b| &b[..]).collect();
    let w = type_bytes(out);
    map_run(dev, instr, &ptx, &refs, &[w * n], n).map(|v| words(&v[0], w))
}

fn check_words(
    what: &str,
    got: &[u64],
    want: impl Fn(usize) -> u64,
    show: impl Fn(usize) -> String,
) {
    let mut f = Failures::new(what);
    for (i, &g) in got.iter().enumerate() {
        let w = want(i);
        f.check(g == w, || format!("{} -> {g:#x}, want {w:#x}", show(i)));
    }
    f.finish(got.len());
}

/// `mul.{wide,hi,lo}.{s32,u32}`, `mul.{hi,lo}.{s64,u64}`, `mad.{lo,hi}.{s32,u32}`,
/// `mad.wide.{s32,u32}`, `mad.lo.{s64,u64}` (§9.7.1.3-4): "t = a * b; n = bitwidth of type; d = t;
/// // for .wide  d = t<2n-1..n>; // for .hi variant  d = t<n-1..0>; // for .lo variant", and
/// for mad "d = t + c" / "d = t<2n-1..n> + c" / "d = t<n-1..0> + c" (wrapping in the destination
/// width), with the product of the signed or unsigned operands in full; 30,000 random triples.
#[test]
fn integer_mul_and_mad() {
    let dev = checked_device();
    let mut r = Rng::new(0x3a1);
    let n = 30_000;
    let a: Vec<u64> = rand_u32s(&mut r, n).into_iter().map(u64::from).collect();
    let b: Vec<u64> = rand_u32s(&mut r, n).into_iter().map(u64::from).collect();
    let c: Vec<u64> = rand_u32s(&mut r, n).into_iter().map(u64::from).collect();
    let c64 = rand_u64s(&mut r, n);
    // 32-bit operands: (instruction, operand type, result type, third operand)
    let forms = [
        ("mul.wide.s32", "s32", "s64", None),
        ("mul.wide.u32", "u32", "u64", None),
        ("mul.hi.s32", "s32", "s32", None),
        ("mul.hi.u32", "u32", "u32", None),
        ("mul.lo.s32", "s32", "s32", None),
        ("mul.lo.u32", "u32", "u32", None),
        ("mad.lo.s32", "s32", "s32", Some(&c)),
        ("mad.lo.u32", "u32", "u32", Some(&c)),
        ("mad.hi.s32", "s32", "s32", Some(&c)),
        ("mad.hi.u32", "u32", "u32", Some(&c)),
        ("mad.wide.s32", "s32", "s64", Some(&c64)),
        ("mad.wide.u32", "u32", "u64", Some(&c64)),
    ];
    for (instr, ty, out, third) in forms {
        let signed = ty == "s32";
        let val = |x: u64| -> i128 {
            if signed {
                x as u32 as i32 as i128
            } else {
                x as u32 as i128
            }
        };
        let mut ins: Vec<(&str, &[u64])> = vec![(ty, &a), (ty, &b)];
        if let Some(t) = third {
            ins.push((if out.ends_with("64") { out } else { ty }, t));
        }
        let Some(got) = run_int(&dev, instr, &ins, out) else {
            continue;
        };
        let want = |i: usize| -> u64 {
            let t = val(a[i]) * val(b[i]);
            let d: i128 = if instr.contains(".wide") {
                t
            } else if instr.contains(".hi") {
                t >> 32
            } else {
                t & 0xffff_ffff
            };
            let d = match third {
                None => d,
                Some(_) if out.ends_with("64") => {
                    d + if signed {
                        c64[i] as i64 as i128
                    } else {
                        c64[i] as i128
                    }
                }
                Some(_) => d + val(c[i]),
            };
            if out.ends_with("64") {
                d as u64
            } else {
                d as u64 & 0xffff_ffff
            }
        };
        check_words(instr, &got, want, |i| {
            format!(
                "a={:#x} b={:#x} c={:#x} c64={:#x}",
                a[i], b[i], c[i], c64[i]
            )
        });
    }
    // 64-bit operands
    let (a64, b64) = (rand_u64s(&mut r, n), rand_u64s(&mut r, n));
    for instr in [
        "mul.lo.s64",
        "mul.lo.u64",
        "mul.hi.s64",
        "mul.hi.u64",
        "mad.lo.s64",
        "mad.lo.u64",
    ] {
        let ty = &instr[instr.len() - 3..];
        let signed = ty == "s64";
        let val = |x: u64| -> i128 {
            if signed {
                x as i64 as i128
            } else {
                x as i128
            }
        };
        let mad = instr.starts_with("mad");
        let mut ins: Vec<(&str, &[u64])> = vec![(ty, &a64), (ty, &b64)];
        if mad {
            ins.push((ty, &c64));
        }
        let Some(got) = run_int(&dev, instr, &ins, ty) else {
            continue;
        };
        check_words(
            instr,
            &got,
            |i| {
                // the full 128-bit product, as two's complement bits
                let t = (val(a64[i]) as u128).wrapping_mul(val(b64[i]) as u128);
                let hi = if signed {
                    // |a|, |b| <= 2^63, so the signed product fits in i128
                    ((val(a64[i]) * val(b64[i])) >> 64) as u64
                } else {
                    (t >> 64) as u64
                };
                if instr.contains(".hi") {
                    hi
                } else if mad {
                    (t as u64).wrapping_add(c64[i])
                } else {
                    t as u64
                }
            },
            |i| format!("a={:#x} b={:#x} c={:#x}", a64[i], b64[i], c64[i]),
        );
    }
}

/// `div` and `rem` `.{s32,u32,s64,u64}` with nonzero divisors (§9.7.1.8-9): `d = a / b` and
/// `d = a % b`. The quotient is checked to truncate toward zero (the C semantics of the ISA's
/// pseudo-code); since "The behavior for negative numbers is machine-dependent and depends on
/// whether divide rounds towards zero or negative infinity", the remainder is checked to be
/// `a - b * q` for the executor's own quotient q (which, q truncating, is C's `%`). MIN / -1
/// overflows and is left out. 40,000 random pairs per type.
#[test]
fn integer_div_rem_nonzero_divisors() {
    let dev = checked_device();
    let mut r = Rng::new(0xd17);
    let n = 40_000;
    for ty in ["s32", "u32", "s64", "u64"] {
        let wide = ty.ends_with("64");
        let signed = ty.starts_with('s');
        let (mut a, mut b): (Vec<u64>, Vec<u64>) = if wide {
            (rand_u64s(&mut r, n), rand_u64s(&mut r, n))
        } else {
            (
                rand_u32s(&mut r, n).into_iter().map(u64::from).collect(),
                rand_u32s(&mut r, n).into_iter().map(u64::from).collect(),
            )
        };
        let val = |x: u64| -> i128 {
            match ty {
                "s32" => x as u32 as i32 as i128,
                "u32" => x as u32 as i128,
                "s64" => x as i64 as i128,
                _ => x as i128,
            }
        };
        let (min, mask) = if wide {
            (i64::MIN as i128, u64::MAX as u128)
        } else {
            (i32::MIN as i128, u32::MAX as u128)
        };
        for i in 0..n {
            if val(b[i]) == 0 || signed && val(a[i]) == min && val(b[i]) == -1 {
                b[i] = 7;
            }
            if i % 7 == 0 {
                a[i] = b[i].wrapping_mul(r.below(1000)) & mask as u64; // exact quotients
            }
        }
        let ptx = map_ptx(
            &[ty, ty],
            &[ty, ty],
            "",
            &format!("div.{ty} %out0, %in0, %in1;\nrem.{ty} %out1, %in0, %in1;"),
        );
        let (ba, bb) = if wide {
            (bytes_u64(&a), bytes_u64(&b))
        } else {
            (
                bytes_u32(&a.iter().map(|&x| x as u32).collect::<Vec<_>>()),
                bytes_u32(&b.iter().map(|&x| x as u32).collect::<Vec<_>>()),
            )
        };
        let w = type_bytes(ty);
        let what = format!("div.{ty}/rem.{ty}");
        let Some(out) = map_run(&dev, &what, &ptx, &[&ba, &bb], &[w * n, w * n], n) else {
            continue;
        };
        let (q, rm) = (words(&out[0], w), words(&out[1], w));
        let mut f = Failures::new(&what);
        for i in 0..n {
            let (x, y) = (val(a[i]), val(b[i]));
            let tq = x / y; // Rust's `/` truncates toward zero
            let want_q = (tq as u128 & mask) as u64;
            let want_r = ((x - y * val(q[i])) as u128 & mask) as u64;
            f.check(q[i] == want_q && rm[i] == want_r, || {
                format!(
                    "{x} / {y}: q={} r={}, want q={tq} r={}",
                    val(q[i]),
                    val(rm[i]),
                    x % y
                )
            });
        }
        f.finish(n);
    }
}

/// Launches `k(a, b, out, n)` over one warp-sized block with every check on.
fn launch_div(dev: &Device, ptx: &str, a: &[u64], b: &[u64], wide: bool) -> Result<(), EmuError> {
    let m = dev
        .load_module(ptx)
        .unwrap_or_else(|e| panic!("load: {e}\n{ptx}"));
    let k = &m.kernels["k"];
    let enc = |v: &[u64]| -> Vec<u8> {
        if wide {
            bytes_u64(v)
        } else {
            bytes_u32(&v.iter().map(|&x| x as u32).collect::<Vec<_>>())
        }
    };
    let w = if wide { 8 } else { 4 };
    let n = a.len();
    let (pa, pb, po) = (
        dev.alloc((w * n) as u64)?,
        dev.alloc((w * n) as u64)?,
        dev.alloc((w * n) as u64)?,
    );
    dev.write(pa, &enc(a))?;
    dev.write(pb, &enc(b))?;
    let nn = (n as u32).to_le_bytes();
    let params = pack_params(
        k,
        &[&pa.to_le_bytes(), &pb.to_le_bytes(), &po.to_le_bytes(), &nn],
    );
    let r = dev.launch(
        k,
        &LaunchRequest {
            grid: [1, 1, 1],
            block: [32, 1, 1],
            dynamic_smem: 0,
            max_dynamic_smem: 48 * 1024,
            params: &params,
        },
    );
    for p in [pa, pb, po] {
        dev.free(p)?;
    }
    dev.unload(m);
    r.map(|_| ())
}

/// Integer division by zero: the ISA says "Division by zero yields an unspecified,
/// machine-specific value" (§9.7.1.8-9); the executor's documented contract is to report it as
/// `EmuError::Fault` with `FaultKind::DivideByZero` when the dividing lane is active. A lane
/// whose `div`/`rem` is predicated off (§9.3 predicated execution: the instruction is not
/// executed) must not fault.
#[test]
fn integer_divide_by_zero_faults_only_in_active_lanes() {
    let dev = checked_device();
    let a: Vec<u64> = (0..32).map(|i| 1000 + i).collect();
    let mut b: Vec<u64> = (0..32).map(|i| i + 1).collect();
    b[13] = 0;
    for ty in ["s32", "u32", "s64", "u64"] {
        let wide = ty.ends_with("64");
        for op in ["div", "rem"] {
            let ptx = map_ptx(
                &[ty, ty],
                &[ty],
                "",
                &format!("{op}.{ty} %out0, %in0, %in1;"),
            );
            let e = launch_div(&dev, &ptx, &a, &b, wide).expect_err("a zero divisor must fault");
            let fault = e
                .fault()
                .unwrap_or_else(|| panic!("{op}.{ty}: not a fault: {e}"));
            assert_eq!(fault.kind, FaultKind::DivideByZero, "{op}.{ty}: {e}");
            assert_eq!(fault.thread, [13, 0, 0], "{op}.{ty}: {e}");
            // the same instruction predicated off where the divisor is zero
            let ptx = map_ptx(
                &[ty, ty],
                &[ty],
                ".reg .pred %z;",
                &format!(
                    "mov.{ty} %out0, 0;\nsetp.ne.{ty} %z, %in1, 0;\n@%z {op}.{ty} %out0, %in0, %in1;"
                ),
            );
            launch_div(&dev, &ptx, &a, &b, wide)
                .unwrap_or_else(|e| panic!("{op}.{ty} predicated off: {e}"));
        }
    }
}

/// `shl` and `shr` `.{b32,u32,s32,b64,u64,s64}` (§9.7.8.8-9): "Shift amounts greater than the
/// register width N are clamped to N" (so `shl` and unsigned/untyped `shr` by >= N give 0 and
/// `shr.s*` gives the sign fill); "Signed shifts fill with the sign bit, unsigned and untyped
/// shifts fill with 0"; the amount is an unsigned 32-bit value. Amounts 0..=70, 100, 255, 256,
/// 2^31 and 2^32-1, with random values, plus the `.b16/.u16/.s16` forms.
#[test]
fn integer_shifts_clamp_large_amounts() {
    let dev = checked_device();
    let mut r = Rng::new(0x5f7);
    let mut amounts: Vec<u32> = (0..=70).collect();
    amounts.extend([100, 255, 256, 1 << 31, u32::MAX]);
    let n = amounts.len() * 64;
    let amt: Vec<u64> = (0..n).map(|i| amounts[i % amounts.len()] as u64).collect();
    let vals: Vec<u64> = (0..n)
        .map(|i| {
            if i % 3 == 0 {
                r.u64() | 1 << 63
            } else {
                r.u64()
            }
        })
        .collect();
    for ty in [
        "b16", "u16", "s16", "b32", "u32", "s32", "b64", "u64", "s64",
    ] {
        let bits = 8 * type_bytes(ty) as u32;
        let signed = ty.starts_with('s');
        let mask = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        let ops: &[&str] = if ty.starts_with('b') {
            &["shl", "shr"]
        } else {
            &["shr"]
        };
        for op in ops {
            let instr = format!("{op}.{ty}");
            let Some(got) = run_int(&dev, &instr, &[(ty, &vals), ("u32", &amt)], ty) else {
                continue;
            };
            check_words(
                &instr,
                &got,
                |i| {
                    let x = vals[i] & mask;
                    let s = (amt[i] as u32).min(bits);
                    let w = if *op == "shl" {
                        if s >= bits {
                            0
                        } else {
                            x << s
                        }
                    } else if signed {
                        let sx = ((x << (64 - bits)) as i64) >> (64 - bits);
                        (sx >> s.min(63)) as u64
                    } else if s >= bits {
                        0
                    } else {
                        x >> s
                    };
                    w & mask
                },
                |i| format!("{:#x} by {}", vals[i] & mask, amt[i]),
            );
        }
    }
}

/// `bfi.{b32,b64} f, a, b, c, d` (§9.7.1.20): "msb = (.type==.b32) ? 31 : 63; pos = c & 0xff;
/// len = d & 0xff; f = b; for (i=0; i<len && pos+i<=msb; i++) { f[pos+i] = a[i]; }" -- so a zero
/// length or a start beyond the msb gives b, and a field running past the msb is cut there.
/// Positions and lengths over 0..=70, 255, and values above 255 (only the low byte counts).
#[test]
fn bfi_bit_field_insert() {
    let dev = checked_device();
    let mut r = Rng::new(0xbf1);
    let mut small: Vec<u64> = (0..=70).collect();
    small.extend([
        255,
        256,
        257,
        256 + 5,
        0x1_00 + 31,
        0xffff_ff00,
        0xffff_ffff,
        1 << 31,
    ]);
    let n = 40_000;
    let a = rand_u64s(&mut r, n);
    let b = rand_u64s(&mut r, n);
    let pos: Vec<u64> = (0..n)
        .map(|i| {
            if i % 4 == 0 {
                r.u32() as u64
            } else {
                r.pick(&small)
            }
        })
        .collect();
    let len: Vec<u64> = (0..n)
        .map(|i| {
            if i % 5 == 0 {
                r.u32() as u64
            } else {
                r.pick(&small)
            }
        })
        .collect();
    for (ty, msb) in [("b32", 31u32), ("b64", 63)] {
        let instr = format!("bfi.{ty}");
        let Some(got) = run_int(
            &dev,
            &instr,
            &[(ty, &a), (ty, &b), ("u32", &pos), ("u32", &len)],
            ty,
        ) else {
            continue;
        };
        let mask = if msb == 31 { 0xffff_ffff } else { u64::MAX };
        check_words(
            &instr,
            &got,
            |i| {
                let p = pos[i] as u32 & 0xff;
                let l = len[i] as u32 & 0xff;
                let mut f = b[i] & mask;
                let mut k = 0;
                while k < l && p + k <= msb {
                    let bit = (a[i] >> k) & 1;
                    f = (f & !(1 << (p + k))) | (bit << (p + k));
                    k += 1;
                }
                f
            },
            |i| {
                format!(
                    "a={:#x} b={:#x} pos={} len={}",
                    a[i] & mask,
                    b[i] & mask,
                    pos[i],
                    len[i]
                )
            },
        );
    }
}
