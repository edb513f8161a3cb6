//! `mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32` against the fragment layouts
//! of the PTX ISA.
//!
//! Sources: PTX ISA 9.1, §9.7.14.5.8 "Matrix Fragments for `mma.m16n8k16` with floating point
//! type" (the A, B and C/D layouts below are transcribed from its formulas) and §9.7.14.5.14
//! "Multiply-and-Accumulate Instruction: mma" (`.sync`/`.aligned`, and "the behavior of `mma`
//! instruction is undefined if all threads in the same warp do not use the same qualifiers, or if
//! any thread in the warp has exited"). The section has the same title in the 8.5/8.7 PDFs.
//!
//! Cross-checked against CuTe (NVIDIA/cutlass `include/cute/atom/mma_traits_sm80.hpp`,
//! `MMA_Traits<SM80_16x8x16_F16F16F16F16_TN>`, which the F32F16F16F32 and F32BF16BF16F32 traits
//! inherit): there (thread, value) maps to a column-major (M,K) / (N,K) / (M,N) offset with
//! thread = (4,8):(32,1) for A, i.e. `threadID_in_group` selects the column pair `2t`,
//! `groupID` the row; A's values (2,2,2):(16,8,128) are col+1, row+8, col+8; B's thread
//! (4,8):(16,1) and values (2,2):(8,64) are k+1, k+8 with n = groupID; C is `SM80_16x8_Row`,
//! thread (4,8):(32,1), values (2,2):(16,8), i.e. col+1, row+8. All of these agree with the ISA
//! formulas used here.
//!
//! Every test runs the instruction on fragments the host builds from whole matrices with the
//! ISA's layout, and reads every register of every lane back through the same layout, so a
//! layout the executor gets wrong shows up as a value in the wrong place.

mod common;

use common::*;
use freelunch_ptx::FaultKind;
use half::{bf16, f16};

const M: usize = 16;
const N: usize = 8;
const K: usize = 16;

/// `groupID` and `threadID_in_group` of a lane (§9.7.14.5.8).
fn ids(lane: usize) -> (usize, usize) {
    (lane >> 2, lane % 4)
}

/// (row, col) in A (M×K) of element `a_i` of `lane`, i = 0..8.
fn a_pos(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = ids(lane);
    let row = if i < 2 || (4..6).contains(&i) {
        g
    } else {
        g + 8
    };
    let col = if i < 4 {
        t * 2 + (i & 1)
    } else {
        t * 2 + (i & 1) + 8
    };
    (row, col)
}

/// (row, col) in B (K×N) of element `b_i` of `lane`, i = 0..4.
fn b_pos(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = ids(lane);
    let row = if i < 2 {
        t * 2 + (i & 1)
    } else {
        t * 2 + (i & 1) + 8
    };
    (row, g)
}

/// (row, col) in C or D (M×N) of element `c_i` of `lane`, i = 0..4.
fn c_pos(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = ids(lane);
    let row = if i < 2 { g } else { g + 8 };
    (row, t * 2 + (i & 1))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ty {
    F16,
    Bf16,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::F16 => "f16",
            Ty::Bf16 => "bf16",
        }
    }
    fn bits(self, x: f32) -> u32 {
        let b = match self {
            Ty::F16 => f16::from_f32(x).to_bits(),
            Ty::Bf16 => bf16::from_f32(x).to_bits(),
        };
        // Only values the type holds exactly are used.
        let back = match self {
            Ty::F16 => f16::from_bits(b).to_f32(),
            Ty::Bf16 => bf16::from_bits(b).to_f32(),
        };
        assert_eq!(back, x, "{x} is not exact in {self:?}");
        b as u32
    }
}

/// One problem: A is M×K, B is K×N, C is M×N, all row-major.
struct Problem {
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
}

impl Problem {
    fn reference(&self) -> Vec<f32> {
        let mut d = self.c.clone();
        for i in 0..M {
            for j in 0..N {
                for k in 0..K {
                    d[i * N + j] += self.a[i * K + k] * self.b[k * N + j];
                }
            }
        }
        d
    }
}

/// The per-lane registers of one problem: A as 4 packed `.f16x2`/`.bf16x2` words (a0 in the low
/// half of the first, "Elements (low to high)"), B as 2, C as 4 f32.
fn fragments(ty: Ty, p: &Problem) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
    let mut a = Vec::with_capacity(32 * 4);
    let mut b = Vec::with_capacity(32 * 2);
    let mut c = Vec::with_capacity(32 * 4);
    for lane in 0..32 {
        for r in 0..4 {
            let (r0, c0) = a_pos(lane, 2 * r);
            let (r1, c1) = a_pos(lane, 2 * r + 1);
            a.push(ty.bits(p.a[r0 * K + c0]) | ty.bits(p.a[r1 * K + c1]) << 16);
        }
        for r in 0..2 {
            let (r0, c0) = b_pos(lane, 2 * r);
            let (r1, c1) = b_pos(lane, 2 * r + 1);
            b.push(ty.bits(p.b[r0 * N + c0]) | ty.bits(p.b[r1 * N + c1]) << 16);
        }
        for i in 0..4 {
            let (row, col) = c_pos(lane, i);
            c.push(p.c[row * N + col]);
        }
    }
    (a, b, c)
}

/// Block `ctaid.x` runs problem `ctaid.x`: each lane loads its registers from
/// `a[(block*32+lane)*4..]`, `b[..*2..]`, `c[..*4..]`, runs one mma and stores d0..d3.
fn mma_kernel(ty: Ty) -> String {
    let t = ty.name();
    format!(
        r#"{HEADER}
.visible .entry mma_probe(.param .u64 pa, .param .u64 pb, .param .u64 pc, .param .u64 pd)
{{
    .reg .b32 %r<16>;
    .reg .f32 %f<16>;
    .reg .b64 %rd<16>;
    ld.param.u64 %rd1, [pa];
    ld.param.u64 %rd2, [pb];
    ld.param.u64 %rd3, [pc];
    ld.param.u64 %rd4, [pd];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    cvta.to.global.u64 %rd3, %rd3;
    cvta.to.global.u64 %rd4, %rd4;
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %laneid;
    shl.b32 %r1, %r1, 5;
    add.u32 %r3, %r1, %r2;
    mul.wide.u32 %rd5, %r3, 16;
    mul.wide.u32 %rd6, %r3, 8;
    add.s64 %rd7, %rd1, %rd5;
    ld.global.b32 %r4, [%rd7];
    ld.global.b32 %r5, [%rd7+4];
    ld.global.b32 %r6, [%rd7+8];
    ld.global.b32 %r7, [%rd7+12];
    add.s64 %rd8, %rd2, %rd6;
    ld.global.b32 %r8, [%rd8];
    ld.global.b32 %r9, [%rd8+4];
    add.s64 %rd9, %rd3, %rd5;
    ld.global.f32 %f1, [%rd9];
    ld.global.f32 %f2, [%rd9+4];
    ld.global.f32 %f3, [%rd9+8];
    ld.global.f32 %f4, [%rd9+12];
    mma.sync.aligned.m16n8k16.row.col.f32.{t}.{t}.f32 {{%f5, %f6, %f7, %f8}}, {{%r4, %r5, %r6, %r7}}, {{%r8, %r9}}, {{%f1, %f2, %f3, %f4}};
    add.s64 %rd10, %rd4, %rd5;
    st.global.f32 [%rd10], %f5;
    st.global.f32 [%rd10+4], %f6;
    st.global.f32 [%rd10+8], %f7;
    st.global.f32 [%rd10+12], %f8;
    ret;
}}
"#
    )
}

/// Runs every problem (one block each) and returns each one's D as the executor left it, per
/// lane and register: `d[problem][lane*4 + i]`.
fn run_mma(ty: Ty, problems: &[Problem]) -> Vec<Vec<f32>> {
    let dev = device();
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for p in problems {
        let (fa, fb, fc) = fragments(ty, p);
        a.extend(fa);
        b.extend(fb);
        c.extend(fc);
    }
    let n = problems.len();
    let pa = upload_u32(&dev, &a);
    let pb = upload_u32(&dev, &b);
    let pc = upload_f32(&dev, &c);
    let pd = output(&dev, n * 128, 0xff);
    run(
        &dev,
        &mma_kernel(ty),
        "mma_probe",
        n as u32,
        32,
        &[
            &pa.to_le_bytes(),
            &pb.to_le_bytes(),
            &pc.to_le_bytes(),
            &pd.to_le_bytes(),
        ],
    );
    download_f32(&dev, pd, n * 128)
        .chunks(128)
        .map(|d| d.to_vec())
        .collect()
}

/// Checks every register of every lane of `got` (as `run_mma` returns it) against the M×N
/// matrix `want`, through the C/D layout.
fn check_d(ty: Ty, what: &str, got: &[f32], want: &[f32]) {
    for lane in 0..32 {
        for i in 0..4 {
            let (row, col) = c_pos(lane, i);
            let g = got[lane * 4 + i];
            let w = want[row * N + col];
            assert!(
                g == w,
                "{ty:?} {what}: lane {lane} d{i} holds D[{row}][{col}] = {w}, the executor gave {g}"
            );
        }
    }
}

/// A one-hot at (i,k) times B one-hot at (k,j), C = 0: D is 1 at (i,j) and 0 elsewhere, for all
/// 16·16·8 (i,k,j). Pins the A, B and D layouts of §9.7.14.5.8 independently: a wrong A or B
/// mapping moves or loses the 1, a wrong D mapping reads it back in the wrong lane/register.
fn one_hot(ty: Ty) {
    let mut problems = Vec::new();
    let mut keys = Vec::new();
    for i in 0..M {
        for k in 0..K {
            for j in 0..N {
                let mut a = vec![0.0; M * K];
                let mut b = vec![0.0; K * N];
                a[i * K + k] = 1.0;
                b[k * N + j] = 1.0;
                problems.push(Problem {
                    a,
                    b,
                    c: vec![0.0; M * N],
                });
                keys.push((i, k, j));
            }
        }
    }
    let got = run_mma(ty, &problems);
    for ((i, k, j), d) in keys.into_iter().zip(&got) {
        let mut want = vec![0.0; M * N];
        want[i * N + j] = 1.0;
        check_d(ty, &format!("A=e({i},{k}), B=e({k},{j})"), d, &want);
    }
}

/// PTX ISA 9.1 §9.7.14.5.8 "Matrix Fragments for mma.m16n8k16 with floating point type"
/// (cross-checked with CuTe `SM80_16x8x16_F32F16F16F32_TN`): one-hot A(i,k)·B(k,j) lands at
/// D(i,j) only, for every (i,k,j), `.f16` inputs.
#[test]
fn mma_m16n8k16_f16_one_hot_every_ikj() {
    one_hot(Ty::F16);
}

/// PTX ISA 9.1 §9.7.14.5.8 (the `.bf16` layout is the `.f16` one; CuTe
/// `SM80_16x8x16_F32BF16BF16F32_TN` inherits the F16 traits): one-hot A(i,k)·B(k,j) lands at
/// D(i,j) only, for every (i,k,j), `.bf16` inputs.
#[test]
fn mma_m16n8k16_bf16_one_hot_every_ikj() {
    one_hot(Ty::Bf16);
}

/// Small-integer matrices (exact in f16, bf16 and f32, and so is every partial sum), a few
/// different patterns, including C = iota with A = B = 0 (D must equal C register for register).
fn iota_problems() -> Vec<Problem> {
    let mut v = Vec::new();
    // D = C: the C and D layouts are the same table in §9.7.14.5.8.
    v.push(Problem {
        a: vec![0.0; M * K],
        b: vec![0.0; K * N],
        c: (0..M * N).map(|x| x as f32).collect(),
    });
    // A = iota, B = identity-like selector, C = 0.
    v.push(Problem {
        a: (0..M * K).map(|x| (x % 61) as f32 - 30.0).collect(),
        b: (0..K * N)
            .map(|x| if x / N == (x % N) * 2 { 1.0 } else { 0.0 })
            .collect(),
        c: vec![0.0; M * N],
    });
    for s in 0..4usize {
        v.push(Problem {
            a: (0..M * K)
                .map(|x| ((x * (3 + 2 * s) + s) % 7) as f32 - 3.0)
                .collect(),
            b: (0..K * N)
                .map(|x| ((x * (5 + 2 * s) + 1) % 5) as f32 - 2.0)
                .collect(),
            c: (0..M * N)
                .map(|x| ((x * 11 + s) % 17) as f32 * 0.5 - 4.0)
                .collect(),
        });
    }
    v
}

fn iota(ty: Ty) {
    let problems = iota_problems();
    let got = run_mma(ty, &problems);
    for (n, (p, d)) in problems.iter().zip(&got).enumerate() {
        check_d(ty, &format!("problem {n}"), d, &p.reference());
    }
}

/// PTX ISA 9.1 §9.7.14.5.8 and §9.7.14.5.14 (D = A·B + C): small-integer A, B, C, compared
/// exactly with a plain matrix product plus C, `.f16` inputs.
#[test]
fn mma_m16n8k16_f16_iota_matches_matrix_product() {
    iota(Ty::F16);
}

/// As above with `.bf16` inputs (`mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`).
#[test]
fn mma_m16n8k16_bf16_iota_matches_matrix_product() {
    iota(Ty::Bf16);
}

/// The packed halves are read as the instruction's type, not the other one: 1.5 and -2.0 in
/// bf16 bits are quite different numbers in f16 bits. §9.7.14.5.8: "containing two `.f16` /
/// `.bf16` elements".
#[test]
fn mma_m16n8k16_bf16_is_not_read_as_f16() {
    let mut a = vec![0.0; M * K];
    let mut b = vec![0.0; K * N];
    a[3 * K + 9] = 1.5;
    b[9 * N + 5] = -2.0;
    let p = Problem {
        a,
        b,
        c: vec![0.25; M * N],
    };
    let want = p.reference();
    let got = run_mma(Ty::Bf16, std::slice::from_ref(&p));
    check_d(Ty::Bf16, "bf16 bits", &got[0], &want);
    assert_eq!(want[3 * N + 5], -2.75);
}

/// A kernel in which lanes 16..31 branch around the mma and rejoin after it.
fn partial_mma_kernel(exit_instead: bool) -> String {
    let skip = if exit_instead {
        "@%p1 exit;"
    } else {
        "@%p1 bra SKIP;"
    };
    format!(
        r#"{HEADER}
.visible .entry mma_partial(.param .u64 pd)
{{
    .reg .pred %p<4>;
    .reg .b32 %r<16>;
    .reg .f32 %f<16>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [pd];
    cvta.to.global.u64 %rd1, %rd1;
    mov.u32 %r1, %laneid;
    mul.wide.u32 %rd2, %r1, 16;
    add.s64 %rd3, %rd1, %rd2;
    mov.b32 %r4, 0x3c003c00;
    mov.b32 %r5, 0x3c003c00;
    mov.b32 %r6, 0x3c003c00;
    mov.b32 %r7, 0x3c003c00;
    mov.b32 %r8, 0x3c003c00;
    mov.b32 %r9, 0x3c003c00;
    mov.f32 %f1, 0f00000000;
    mov.f32 %f2, 0f00000000;
    mov.f32 %f3, 0f00000000;
    mov.f32 %f4, 0f00000000;
    mov.f32 %f5, 0f00000000;
    mov.f32 %f6, 0f00000000;
    mov.f32 %f7, 0f00000000;
    mov.f32 %f8, 0f00000000;
    setp.ge.u32 %p1, %r1, 16;
    {skip}
    mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {{%f5, %f6, %f7, %f8}}, {{%r4, %r5, %r6, %r7}}, {{%r8, %r9}}, {{%f1, %f2, %f3, %f4}};
SKIP:
    st.global.f32 [%rd3], %f5;
    st.global.f32 [%rd3+4], %f6;
    st.global.f32 [%rd3+8], %f7;
    st.global.f32 [%rd3+12], %f8;
    ret;
}}
"#
    )
}

/// PTX ISA 9.1 §9.7.14.5.14: "The mandatory `.aligned` qualifier indicates that all threads in
/// the warp must execute the same `mma` instruction. In conditionally executed code, a `mma`
/// instruction should only be used if it is known that all threads in the warp evaluate the
/// condition identically, otherwise behavior is undefined." Half the warp branches around the
/// mma; the executor must report it rather than compute with half a warp.
#[test]
fn mma_reached_by_half_a_warp_is_reported() {
    let dev = device();
    let pd = output(&dev, 128, 0);
    let r = launch(
        &dev,
        &partial_mma_kernel(false),
        "mma_partial",
        1,
        32,
        &[&pd.to_le_bytes()],
    );
    expect_fault(r, &[FaultKind::Divergence, FaultKind::Deadlock], "mma");
}

/// PTX ISA 9.1 §9.7.14.5.14: "The behavior of `mma` instruction is undefined if ... any thread
/// in the warp has exited." Lanes 16..31 exit before the mma.
#[test]
fn mma_after_part_of_the_warp_exited_is_reported() {
    let dev = device();
    let pd = output(&dev, 128, 0);
    let r = launch(
        &dev,
        &partial_mma_kernel(true),
        "mma_partial",
        1,
        32,
        &[&pd.to_le_bytes()],
    );
    expect_fault(r, &[FaultKind::Divergence, FaultKind::Deadlock], "mma");
}

/// The same kernel with no lane skipping runs cleanly (a control for the two tests above):
/// all-ones f16 A and B, so every D element is K = 16.
#[test]
fn mma_partial_kernel_control_whole_warp() {
    let dev = device();
    let pd = output(&dev, 128, 0);
    // The skip condition `%laneid >= 32` is never true: the whole warp runs the mma.
    let ptx =
        partial_mma_kernel(false).replace("setp.ge.u32 %p1, %r1, 16;", "setp.ge.u32 %p1, %r1, 32;");
    run(&dev, &ptx, "mma_partial", 1, 32, &[&pd.to_le_bytes()]);
    let d = download_f32(&dev, pd, 128);
    assert!(d.iter().all(|&x| x == 16.0), "{d:?}");
}
