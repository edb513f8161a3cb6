//! `cvt.rn.f16x2.f32 d, a, b` and `cvt.rn.bf16x2.f32 d, a, b` against the PTX ISA.
//!
//! Source: PTX ISA 9.1 §9.7.9.21 "Data Movement and Conversion Instructions: cvt" (same title in
//! 8.5/8.7): "For `.f16x2` and `.bf16x2` instruction type, two inputs `a` and `b` of `.f32` type
//! are converted into `.f16` or `.bf16` type and the converted values are packed in the
//! destination register `d`, such that the value converted from input `a` is stored in the upper
//! half of `d` and the value converted from input `b` is stored in the lower half of `d`", with
//! `.rn` "mantissa LSB rounds to nearest even". Without `.satfinite`, values past the largest
//! finite value round to infinity under `.rn`.
//!
//! Expected halves come from the `half` crate (round to nearest even), and a few are also
//! written out as bit patterns so the test does not lean on `half` alone.

mod common;

use common::*;
use half::{bf16, f16};

const KERNEL: &str = r#"
.visible .entry cvt_probe(.param .u64 pa, .param .u64 pb, .param .u64 pout)
{
    .reg .b32 %r<16>;
    .reg .f32 %f<8>;
    .reg .b64 %rd<16>;
    ld.param.u64 %rd1, [pa];
    ld.param.u64 %rd2, [pb];
    ld.param.u64 %rd3, [pout];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    cvta.to.global.u64 %rd3, %rd3;
    mov.u32 %r1, %tid.x;
    mul.wide.u32 %rd4, %r1, 4;
    add.s64 %rd5, %rd1, %rd4;
    ld.global.f32 %f1, [%rd5];
    add.s64 %rd6, %rd2, %rd4;
    ld.global.f32 %f2, [%rd6];
    cvt.rn.f16x2.f32 %r2, %f1, %f2;
    cvt.rn.bf16x2.f32 %r3, %f1, %f2;
    mul.wide.u32 %rd7, %r1, 8;
    add.s64 %rd8, %rd3, %rd7;
    st.global.b32 [%rd8], %r2;
    st.global.b32 [%rd8+4], %r3;
    ret;
}
"#;

/// (a, b) pairs: distinct values in the two halves, ties that round to even in f16 (2^-11 steps
/// at 1.0) and in bf16 (2^-8 steps), f16 overflow to infinity, subnormals, signed zero.
fn pairs() -> Vec<(f32, f32)> {
    let u = |x: f32, y: f32| (x, y);
    vec![
        u(1.0, 2.0),
        u(2.0, 1.0),
        u(-0.5, 3.25),
        u(65504.0, -65504.0),
        u(70000.0, -1.0e6),
        u(1.0e-6, -3.0e-8),
        u(0.0, -0.0),
        u(1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11)),
        u(1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8)),
        u(std::f32::consts::PI, -std::f32::consts::E),
        u(f32::INFINITY, f32::NEG_INFINITY),
        u(3.0e38, -1.0e-40),
        u(123.456, 0.1),
    ]
}

fn run_cvt(pairs: &[(f32, f32)]) -> Vec<(u32, u32)> {
    let dev = device();
    let a: Vec<f32> = pairs.iter().map(|p| p.0).collect();
    let b: Vec<f32> = pairs.iter().map(|p| p.1).collect();
    let pa = upload_f32(&dev, &a);
    let pb = upload_f32(&dev, &b);
    let n = pairs.len();
    let pout = output(&dev, 2 * n, 0xee);
    run(
        &dev,
        &format!("{HEADER}{KERNEL}"),
        "cvt_probe",
        1,
        n as u32,
        &[&pa.to_le_bytes(), &pb.to_le_bytes(), &pout.to_le_bytes()],
    );
    download_u32(&dev, pout, 2 * n)
        .chunks(2)
        .map(|c| (c[0], c[1]))
        .collect()
}

/// PTX ISA 9.1 §9.7.9.21 cvt: `cvt.rn.f16x2.f32 d, a, b` puts f16(a) in d[31:16] and f16(b) in
/// d[15:0], rounding to nearest even.
#[test]
fn cvt_rn_f16x2_f32_a_is_upper_b_is_lower() {
    let p = pairs();
    let got = run_cvt(&p);
    for (&(a, b), &(h, _)) in p.iter().zip(&got) {
        let want = (f16::from_f32(a).to_bits() as u32) << 16 | f16::from_f32(b).to_bits() as u32;
        assert_eq!(
            h, want,
            "cvt.rn.f16x2.f32 d, {a:e}, {b:e}: want {want:#010x}, got {h:#010x}"
        );
    }
    // The same, spelled out.
    assert_eq!(got[0].0, 0x3c00_4000, "a = 1.0 upper, b = 2.0 lower");
    assert_eq!(got[1].0, 0x4000_3c00, "a = 2.0 upper, b = 1.0 lower");
    assert_eq!(got[4].0, 0x7c00_fc00, "70000 -> +inf, -1e6 -> -inf");
    assert_eq!(got[6].0, 0x0000_8000, "+0 upper, -0 lower");
    assert_eq!(
        got[7].0, 0x3c00_3c02,
        "ties to even: 1+2^-11 -> 1.0, 1+3*2^-11 -> 1+2^-9"
    );
}

/// PTX ISA 9.1 §9.7.9.21 cvt: `cvt.rn.bf16x2.f32 d, a, b` puts bf16(a) in d[31:16] and bf16(b)
/// in d[15:0], rounding to nearest even.
#[test]
fn cvt_rn_bf16x2_f32_a_is_upper_b_is_lower() {
    let p = pairs();
    let got = run_cvt(&p);
    for (&(a, b), &(_, w)) in p.iter().zip(&got) {
        let want = (bf16::from_f32(a).to_bits() as u32) << 16 | bf16::from_f32(b).to_bits() as u32;
        assert_eq!(
            w, want,
            "cvt.rn.bf16x2.f32 d, {a:e}, {b:e}: want {want:#010x}, got {w:#010x}"
        );
    }
    assert_eq!(got[0].1, 0x3f80_4000, "a = 1.0 upper, b = 2.0 lower");
    assert_eq!(got[1].1, 0x4000_3f80, "a = 2.0 upper, b = 1.0 lower");
    assert_eq!(got[6].1, 0x0000_8000, "+0 upper, -0 lower");
    assert_eq!(
        got[8].1, 0x3f80_3f82,
        "ties to even: 1+2^-8 -> 1.0, 1+3*2^-8 -> 1+2^-6"
    );
    assert_eq!(got[10].1, 0x7f80_ff80, "+inf upper, -inf lower");
}
