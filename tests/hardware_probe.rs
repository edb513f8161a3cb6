//! The hardware probe: the raw bits a few PTX instructions produce on a real GPU, recorded so that
//! the PTX executor (`emu/`) can be checked against hardware from then on.
//!
//! `tests/probe/probe.ptx` holds one kernel per probe. Each reads deterministic inputs from a
//! global buffer and writes every result register of every lane to the output buffer. The probes
//! cover the places where an emulator most likely misreads the ISA: the `mma.m16n8k16` fragment
//! layouts, `ldmatrix` lane distribution and `.trans`, the half order of `cvt.rn.{f16x2,bf16x2}.f32`,
//! `shfl.sync`'s `c` operand, the NaN bits of conversions and arithmetic, and the approximate
//! functions, whose exact bits the executor cannot know.
//!
//! Where `hardware_probe` runs is chosen by `freelunch::device::Device::from_env()`:
//! - a real GPU (`FREELUNCH_DEVICE=cuda[:N]`, or unset with a GPU present): runs every probe,
//!   writes the results to `$FREELUNCH_PROBE_OUT/<device>.json` (else `target/probe/`), then checks
//!   them against the host-side ISA model below and fails loudly where the hardware disagrees;
//! - the executor (`FREELUNCH_DEVICE=emu[:N]`): runs every probe, checks them against the ISA
//!   model, and compares them with every recorded hardware file `bench/gpu/probe/*.json` (its own
//!   PTX and inputs), bit for bit except for the approximate functions, which must be within the
//!   error bound the ISA documents of the hardware's value; NaNs whose bits differ are reported as
//!   "NaN bits differ" failures;
//! - neither: prints `skipped: no CUDA device`.
//!
//! The host-only tests check the ISA model itself, the recorded files against the model, and
//! (where `ptxas` is installed) that the probe assembles for sm_80 and sm_90.
//!
//! The ISA model is written from PTX ISA 9.1: §9.7.14.5.8 (mma.m16n8k16 fragments), §9.7.14.5.15
//! (ldmatrix), §9.7.9.21 (cvt), §9.7.9.6 (shfl.sync), §9.7.3 (add, sub, mul, fma, min, max, neg,
//! abs, rcp, rsqrt, sin, cos, lg2, ex2). Where the ISA leaves bits unspecified (the bits of most
//! NaN results, the sign of an mma zero, mma's handling of subnormals, sin/cos beyond ±100π) the
//! model accepts any value and only the recorded hardware says what they are.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaModule, CudaStream, LaunchConfig, PushKernelArg};
use freelunch::device::Device;
use serde_json::Value;

/// The probe kernels.
const PTX: &str = include_str!("probe/probe.ptx");
/// The `format` field of a record.
const FORMAT: &str = "freelunch-hardware-probe/1";
/// Where the GPU run writes its record (default: `target/probe/` under the repo root).
const OUT_ENV: &str = "FREELUNCH_PROBE_OUT";
/// The committed hardware records, relative to the repo root.
const RECORDS: &str = "bench/gpu/probe";
/// Output buffers start out as this, so a word no kernel wrote is told apart.
const SENTINEL: u32 = 0xeeee_eeee;

const PINF: u32 = 0x7f80_0000;
const NINF: u32 = 0xff80_0000;
const NEG_ZERO: u32 = 0x8000_0000;
const ONE: u32 = 0x3f80_0000;
const MIN_NORMAL: u32 = 0x0080_0000;

// ------------------------------------------------------------------------------ element formats

/// What an element of an output word is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Raw32,
    Raw16,
    F32,
    F16,
    Bf16,
}

impl Kind {
    fn is_nan(self, v: u32) -> bool {
        match self {
            Kind::Raw32 | Kind::Raw16 => false,
            Kind::F32 => v & 0x7fff_ffff > PINF,
            Kind::F16 => v & 0x7fff > 0x7c00,
            Kind::Bf16 => v & 0x7fff > 0x7f80,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Raw32 => "u32",
            Kind::Raw16 => "u16",
            Kind::F32 => "f32",
            Kind::F16 => "f16",
            Kind::Bf16 => "bf16",
        }
    }

    fn hex(self, v: u32) -> String {
        match self {
            Kind::Raw32 | Kind::F32 => format!("{v:#010x}"),
            _ => format!("{v:#06x}"),
        }
    }
}

/// How an output word is read: one 32-bit element, two 16-bit halves, or a 16-bit value
/// zero-extended (whose upper half must be 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fmt {
    U32,
    F32,
    F16x2,
    Bf16x2,
    F16,
    Bf16,
}

impl Fmt {
    const ALL: [Fmt; 6] = [
        Fmt::U32,
        Fmt::F32,
        Fmt::F16x2,
        Fmt::Bf16x2,
        Fmt::F16,
        Fmt::Bf16,
    ];

    fn name(self) -> &'static str {
        match self {
            Fmt::U32 => "u32",
            Fmt::F32 => "f32",
            Fmt::F16x2 => "f16x2",
            Fmt::Bf16x2 => "bf16x2",
            Fmt::F16 => "f16",
            Fmt::Bf16 => "bf16",
        }
    }

    fn parse(s: &str) -> Option<Fmt> {
        Fmt::ALL.into_iter().find(|f| f.name() == s)
    }

    /// The elements of word `w`, low half first: (which part, kind, bits).
    fn split(self, w: u32) -> Vec<(&'static str, Kind, u32)> {
        let (lo, hi) = (w & 0xffff, w >> 16);
        match self {
            Fmt::U32 => vec![("", Kind::Raw32, w)],
            Fmt::F32 => vec![("", Kind::F32, w)],
            Fmt::F16x2 => vec![("[15:0]", Kind::F16, lo), ("[31:16]", Kind::F16, hi)],
            Fmt::Bf16x2 => vec![("[15:0]", Kind::Bf16, lo), ("[31:16]", Kind::Bf16, hi)],
            Fmt::F16 => vec![("[15:0]", Kind::F16, lo), ("[31:16]", Kind::Raw16, hi)],
            Fmt::Bf16 => vec![("[15:0]", Kind::Bf16, lo), ("[31:16]", Kind::Raw16, hi)],
        }
    }
}

// -------------------------------------------------------------------------------- probe specs

/// One probe: a kernel of the probe PTX, its launch and its raw inputs. Items: one thread's work
/// for `cvt.*`, `approx` and `arith` (`in_per_item` words in, `out_per_item` out, `slots` naming
/// the outputs); one warp's (a block's) for `ldmatrix.*`, `mma.*` and `shfl.*`.
#[derive(Clone, Debug, PartialEq)]
struct Spec {
    name: String,
    kernel: String,
    grid: u32,
    block: u32,
    n: u32,
    in_per_item: usize,
    out_per_item: usize,
    /// Cycled over the output words.
    formats: Vec<Fmt>,
    /// What each output word of an item is, for item-wise probes (else empty).
    slots: Vec<String>,
    inputs: Vec<u32>,
    out_words: usize,
}

impl Spec {
    fn fmt(&self, w: usize) -> Fmt {
        self.formats[w % self.formats.len()]
    }

    fn slot(&self, w: usize) -> &str {
        if self.slots.is_empty() {
            ""
        } else {
            &self.slots[w % self.out_per_item]
        }
    }

    fn elements(&self) -> usize {
        (0..self.out_words)
            .map(|w| self.fmt(w).split(0).len())
            .sum()
    }
}

/// What the ISA model expects of one element.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    /// Exactly these bits.
    Bits(u32),
    /// +0 or -0 (the ISA leaves the sign of an mma zero open).
    Zero,
    /// A NaN of the element's format; the ISA does not say which.
    Nan,
    /// The approximate function of the input, within the ISA's error bound.
    Approx(Fun, u32),
    /// Not specified by the ISA: recorded only.
    Free,
}

/// The approximate functions of the `approx` probe, in its output order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fun {
    Ex2,
    Ex2Ftz,
    Rsqrt,
    Lg2,
    Rcp,
    Sin,
    Cos,
}

impl Fun {
    const ALL: [Fun; 7] = [
        Fun::Ex2,
        Fun::Ex2Ftz,
        Fun::Rsqrt,
        Fun::Lg2,
        Fun::Rcp,
        Fun::Sin,
        Fun::Cos,
    ];

    fn name(self) -> &'static str {
        match self {
            Fun::Ex2 => "ex2.approx.f32",
            Fun::Ex2Ftz => "ex2.approx.ftz.f32",
            Fun::Rsqrt => "rsqrt.approx.f32",
            Fun::Lg2 => "lg2.approx.f32",
            Fun::Rcp => "rcp.approx.f32",
            Fun::Sin => "sin.approx.f32",
            Fun::Cos => "cos.approx.f32",
        }
    }

    fn parse(s: &str) -> Option<Fun> {
        Fun::ALL.into_iter().find(|f| f.name() == s)
    }
}

// ------------------------------------------------------------------------------------ numbers

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn u32(&mut self) -> u32 {
        (self.next() >> 32) as u32
    }

    fn below(&mut self, n: u32) -> u32 {
        ((self.u32() as u64 * n as u64) >> 32) as u32
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn bits(x: f32) -> u32 {
    x.to_bits()
}

/// floor(log2 |x|) of a nonzero finite f64 that is a normal f64 (every f32 value is).
fn exponent(x: f64) -> i32 {
    ((x.to_bits() >> 52) & 0x7ff) as i32 - 1023
}

/// 2^e as an f64, for -1074 <= e <= 1023.
fn pow2(e: i32) -> f64 {
    2f64.powi(e)
}

/// A binary floating-point format: `p` significand bits (with the implicit one), `ebits`
/// exponent bits, smallest normal exponent `emin`, largest `emax`.
#[derive(Clone, Copy)]
struct Format {
    p: i32,
    ebits: u32,
    emin: i32,
    emax: i32,
}

/// IEEE 754 binary16 (`.f16`).
const F16: Format = Format {
    p: 11,
    ebits: 5,
    emin: -14,
    emax: 15,
};
/// bfloat16 (`.bf16`): the upper half of a binary32.
const BF16: Format = Format {
    p: 8,
    ebits: 8,
    emin: -126,
    emax: 127,
};

impl Format {
    /// The value of `h` (NaN for NaN patterns).
    fn value(self, h: u32) -> f64 {
        let fb = (self.p - 1) as u32;
        let sign = if h >> (fb + self.ebits) & 1 != 0 {
            -1.0
        } else {
            1.0
        };
        let e = (h >> fb) & ((1 << self.ebits) - 1);
        let m = (h & ((1 << fb) - 1)) as f64;
        let bias = (1 << (self.ebits - 1)) - 1;
        sign * if e == 0 {
            m * pow2(self.emin - fb as i32)
        } else if e == (1 << self.ebits) - 1 {
            if m == 0.0 {
                f64::INFINITY
            } else {
                f64::NAN
            }
        } else {
            (pow2(fb as i32) + m) * pow2(e as i32 - bias - fb as i32)
        }
    }

    fn is_subnormal(self, h: u32) -> bool {
        let fb = (self.p - 1) as u32;
        (h >> fb) & ((1 << self.ebits) - 1) == 0 && h & ((1 << fb) - 1) != 0
    }

    /// Round-to-nearest-even of `x` (an exact f32 value, or ±inf), to the value in this format;
    /// past the largest finite value it rounds to infinity (cvt.rn without .satfinite).
    fn round(self, x: f64) -> f64 {
        if x == 0.0 || x.is_infinite() {
            return x;
        }
        let a = x.abs();
        let e = exponent(a).max(self.emin);
        let q = pow2(e - (self.p - 1));
        let r = (a / q).round_ties_even() * q;
        let r = if r >= pow2(self.emax + 1) {
            f64::INFINITY
        } else {
            r
        };
        r.copysign(x)
    }

    /// The bits of `r`, a value of this format (as `round` returns).
    fn encode(self, r: f64) -> u32 {
        let fb = (self.p - 1) as u32;
        let sign = if r.is_sign_negative() {
            1 << (fb + self.ebits)
        } else {
            0
        };
        let a = r.abs();
        let emask = (1u32 << self.ebits) - 1;
        if a.is_infinite() {
            return sign | emask << fb;
        }
        if a == 0.0 {
            return sign;
        }
        let e = exponent(a);
        if e < self.emin {
            return sign | (a / pow2(self.emin - fb as i32)) as u32;
        }
        let bias = (1 << (self.ebits - 1)) - 1;
        let frac = (a / pow2(e) - 1.0) * pow2(fb as i32);
        sign | ((e + bias) as u32) << fb | frac as u32
    }

    /// `cvt.rn.{f16,bf16}.f32` of `x`: the bits, or None for NaN (whose bits the ISA leaves open).
    fn cvt_rn(self, x: u32) -> Option<u32> {
        let v = f32::from_bits(x);
        if v.is_nan() {
            None
        } else {
            Some(self.encode(self.round(v as f64)))
        }
    }

    /// The bits of `v`, which must be exactly representable.
    fn exact(self, v: f64) -> u32 {
        let r = self.round(v);
        assert_eq!(r, v, "{v} is not exact in this format");
        self.encode(r)
    }
}

/// f32 bits in an order where adjacent values differ by 1 (±0 both 0, ±inf one past ±max).
fn ordered(b: u32) -> i64 {
    if b & 0x8000_0000 != 0 {
        -((b & 0x7fff_ffff) as i64)
    } else {
        b as i64
    }
}

/// The distance in f32 ulps between two (non-NaN) values.
fn ulps(a: u32, b: u32) -> u64 {
    (ordered(a) - ordered(b)).unsigned_abs()
}

/// The f32 ulp at |x| (subnormal spacing below the smallest normal).
fn ulp_of(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return pow2(-149);
    }
    pow2(exponent(x.abs()).max(-126) - 23)
}

fn is_subnormal32(b: u32) -> bool {
    b & PINF == 0 && b & 0x007f_ffff != 0
}

// ------------------------------------------------------------------------------------ ldmatrix

/// Shared memory of the ldmatrix probes: 64 rows of 16 bytes.
const LDM_WORDS: usize = 256;

/// Byte offset of the row lane `l` supplies: the 32 lanes use 32 of the 64 slots, scattered and
/// out of order.
fn ldm_row_offset(lane: usize) -> u32 {
    (((lane * 37 + 11) % 64) * 16) as u32
}

fn ldmatrix_spec(num: usize, trans: bool) -> Spec {
    // Iota: the 16-bit element at byte 2e holds e.
    let mut inputs: Vec<u32> = (0..LDM_WORDS as u32)
        .map(|w| (2 * w) | (2 * w + 1) << 16)
        .collect();
    inputs.extend((0..32).map(ldm_row_offset));
    let t = if trans { ".trans" } else { "" };
    Spec {
        name: format!("ldmatrix.x{num}{t}"),
        kernel: format!("probe_ldmatrix_x{num}{}", if trans { "_trans" } else { "" }),
        grid: 1,
        block: 32,
        n: 1,
        in_per_item: inputs.len(),
        out_per_item: 32 * num,
        formats: vec![Fmt::U32],
        slots: Vec::new(),
        inputs,
        out_words: 32 * num,
    }
}

/// PTX ISA 9.1 §9.7.14.5.15: threads 8m..8m+7 supply the row addresses of matrix m (only
/// matrices < num are loaded); "each thread in a warp loads fragments of a row, with thread 0
/// receiving the first fragment in its register r": thread t gets row t/4, elements 2(t%4)
/// (low half) and 2(t%4)+1 (high), of each matrix in the next register. `.trans` loads the
/// matrix in column-major order: thread t gets, in half h, element t/4 of row 2(t%4)+h.
fn ldmatrix_model(spec: &Spec, num: usize, trans: bool) -> Vec<Want> {
    let mem = &spec.inputs[..LDM_WORDS];
    let rows = &spec.inputs[LDM_WORDS..LDM_WORDS + 32];
    let elem = |byte: usize| -> u32 { (mem[byte / 4] >> (8 * (byte % 4))) & 0xffff };
    let mut want = Vec::new();
    for lane in 0..32 {
        for m in 0..num {
            let half = |h: usize| -> u32 {
                let (row, col) = if trans {
                    (2 * (lane % 4) + h, lane / 4)
                } else {
                    (lane / 4, 2 * (lane % 4) + h)
                };
                elem(rows[m * 8 + row] as usize + 2 * col)
            };
            want.push(Want::Bits(half(0) | half(1) << 16));
        }
    }
    want
}

// ----------------------------------------------------------------------------------------- mma

const MMA_M: usize = 16;
const MMA_N: usize = 8;
const MMA_K: usize = 16;
/// Raw words per lane: a0..a3, b0..b1, c0..c3.
const MMA_LANE_WORDS: usize = 10;

/// PTX ISA 9.1 §9.7.14.5.8: groupID = laneid >> 2, threadID_in_group = laneid % 4.
fn mma_ids(lane: usize) -> (usize, usize) {
    (lane >> 2, lane % 4)
}

/// (row, col) in A (16×16) of element a_i, i = 0..8 (§9.7.14.5.8, `.f16`/`.bf16`).
fn mma_a_pos(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = mma_ids(lane);
    let row = if i < 2 || (4..6).contains(&i) {
        g
    } else {
        g + 8
    };
    let col = t * 2 + (i & 1) + if i < 4 { 0 } else { 8 };
    (row, col)
}

/// (row, col) in B (16×8) of element b_i, i = 0..4.
fn mma_b_pos(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = mma_ids(lane);
    (t * 2 + (i & 1) + if i < 2 { 0 } else { 8 }, g)
}

/// (row, col) in C and D (16×8) of element c_i / d_i, i = 0..4.
fn mma_c_pos(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = mma_ids(lane);
    (if i < 2 { g } else { g + 8 }, t * 2 + (i & 1))
}

/// One problem: raw 16-bit A (row-major 16×16) and B (16×8), raw f32 C (16×8).
struct MmaProblem {
    name: &'static str,
    a: Vec<u32>,
    b: Vec<u32>,
    c: Vec<u32>,
}

fn mma_format(bf16: bool) -> Format {
    if bf16 {
        BF16
    } else {
        F16
    }
}

/// The problems, for `.f16` or `.bf16` inputs. Small integers (and a few dyadic fractions) keep
/// every partial sum exact in f32, so D does not depend on the accumulation order the ISA leaves
/// open.
fn mma_problems(bf16: bool) -> Vec<MmaProblem> {
    let fmt = mma_format(bf16);
    let ab = |f: &dyn Fn(usize, usize) -> f64, rows: usize, cols: usize| -> Vec<u32> {
        (0..rows * cols)
            .map(|x| fmt.exact(f(x / cols, x % cols)))
            .collect()
    };
    let a = |f: &dyn Fn(usize, usize) -> f64| ab(f, MMA_M, MMA_K);
    let b = |f: &dyn Fn(usize, usize) -> f64| ab(f, MMA_K, MMA_N);
    let c = |f: &dyn Fn(usize, usize) -> f32| -> Vec<u32> {
        (0..MMA_M * MMA_N)
            .map(|x| bits(f(x / MMA_N, x % MMA_N)))
            .collect()
    };
    let zero_c = || c(&|_, _| 0.0);
    let iota_a = |i: usize, k: usize| (i * 16 + k + 1) as f64;
    let iota_b = |k: usize, j: usize| (k * 8 + j + 1) as f64;
    let mut v = vec![
        MmaProblem {
            name: "C passes through (A = B = 0)",
            a: a(&|_, _| 0.0),
            b: b(&|_, _| 0.0),
            c: c(&|i, j| (i * 8 + j) as f32 + 0.5),
        },
        MmaProblem {
            name: "D = A[:, 0..8] (B selects k = j)",
            a: a(&iota_a),
            b: b(&|k, j| f64::from(u8::from(k == j))),
            c: zero_c(),
        },
        MmaProblem {
            name: "D = A[:, 8..16] (B selects k = j + 8)",
            a: a(&iota_a),
            b: b(&|k, j| f64::from(u8::from(k == j + 8))),
            c: zero_c(),
        },
        MmaProblem {
            name: "D = B (A selects k = i)",
            a: a(&|i, k| f64::from(u8::from(k == i))),
            b: b(&iota_b),
            c: zero_c(),
        },
        MmaProblem {
            name: "D = B reversed (A selects k = 15 - i)",
            a: a(&|i, k| f64::from(u8::from(k == 15 - i))),
            b: b(&iota_b),
            c: zero_c(),
        },
        MmaProblem {
            name: "small integers",
            a: a(&|i, k| ((i * 16 + k) % 13) as f64 - 6.0),
            b: b(&|k, j| ((k * 8 + j) % 11) as f64 - 5.0),
            c: c(&|i, j| (i * 8 + j) as f32 * 0.25 - 16.0),
        },
        MmaProblem {
            name: "larger integers",
            a: a(&|i, k| ((i * 16 + k) * 37 % 256) as f64 - 128.0),
            b: b(&|k, j| ((k * 8 + j) * 11 % 64) as f64 - 32.0),
            c: c(&|i, j| ((i * 8 + j) * 5 % 17) as f32 - 8.0),
        },
    ];
    for (i, k, j) in [(0, 0, 0), (15, 15, 7), (9, 3, 5), (6, 12, 2)] {
        v.push(MmaProblem {
            name: "one-hot",
            a: a(&|r, s| f64::from(u8::from((r, s) == (i, k)))),
            b: b(&|r, s| f64::from(u8::from((r, s) == (k, j)))),
            c: zero_c(),
        });
    }
    // Infinities and NaNs: A[0][0] = inf meets B[0][0] = 0 (NaN in D[0][0], inf in the rest of
    // row 0), A[1][1] = -inf, A[2][2] and A[3][3] NaNs with payloads, C row 4 NaNs, and row 5
    // -inf + inf in D[5][0].
    let (inf, ninf) = (fmt.encode(f64::INFINITY), fmt.encode(f64::NEG_INFINITY));
    let (qnan, snan) = if bf16 {
        (0x7fc1, 0x7f81)
    } else {
        (0x7e01, 0x7d55)
    };
    let mut sa = a(&|_, _| 0.0);
    sa[0] = inf;
    sa[MMA_K + 1] = ninf;
    sa[2 * MMA_K + 2] = qnan;
    sa[3 * MMA_K + 3] = snan;
    sa[5 * MMA_K + 5] = ninf;
    let mut sb = b(&|_, _| 1.0);
    sb[0] = fmt.exact(0.0);
    let mut sc = c(&|i, j| (i * 8 + j) as f32);
    sc[4 * MMA_N] = 0x7fa0_0001;
    sc[4 * MMA_N + 1] = 0x7fc1_2345;
    sc[4 * MMA_N + 2] = 0xffc0_0000;
    sc[5 * MMA_N] = PINF;
    v.push(MmaProblem {
        name: "infinities and NaNs",
        a: sa,
        b: sb,
        c: sc,
    });
    // Subnormals (their handling is unspecified: recorded only) and -0 in C: row 6 of A holds the
    // smallest subnormal times powers of two in B's row 0; C row 7 f32 subnormals; C row 8 -0.
    let mut ua = a(&|_, _| 0.0);
    ua[6 * MMA_K] = 0x0001;
    ua[9 * MMA_K + 1] = if bf16 { 0x8040 } else { 0x8200 };
    let ub = b(&|k, j| if k < 2 { pow2(j as i32 + 4) } else { 1.0 });
    let uc = c(&|i, j| match i {
        7 => f32::from_bits(j as u32 + 1) * 3.0,
        8 => -0.0,
        _ => 0.0,
    });
    v.push(MmaProblem {
        name: "subnormals and -0",
        a: ua,
        b: ub,
        c: uc,
    });
    v
}

fn mma_spec(bf16: bool) -> Spec {
    let problems = mma_problems(bf16);
    let mut inputs = Vec::new();
    for p in &problems {
        for lane in 0..32 {
            for r in 0..4 {
                let (r0, c0) = mma_a_pos(lane, 2 * r);
                let (r1, c1) = mma_a_pos(lane, 2 * r + 1);
                inputs.push(p.a[r0 * MMA_K + c0] | p.a[r1 * MMA_K + c1] << 16);
            }
            for r in 0..2 {
                let (r0, c0) = mma_b_pos(lane, 2 * r);
                let (r1, c1) = mma_b_pos(lane, 2 * r + 1);
                inputs.push(p.b[r0 * MMA_N + c0] | p.b[r1 * MMA_N + c1] << 16);
            }
            for i in 0..4 {
                let (row, col) = mma_c_pos(lane, i);
                inputs.push(p.c[row * MMA_N + col]);
            }
        }
    }
    let t = if bf16 { "bf16" } else { "f16" };
    Spec {
        name: format!("mma.{t}"),
        kernel: format!("probe_mma_{t}"),
        grid: problems.len() as u32,
        block: 32,
        n: problems.len() as u32,
        in_per_item: 32 * MMA_LANE_WORDS,
        out_per_item: 128,
        formats: vec![Fmt::F32],
        slots: Vec::new(),
        inputs,
        out_words: problems.len() * 128,
    }
}

/// The lowest set bit's value of a nonzero finite f64 (every term here is a dyadic rational).
fn quantum(x: f64) -> i32 {
    let b = x.to_bits();
    let e = ((b >> 52) & 0x7ff) as i32;
    let m = (b & ((1u64 << 52) - 1)) | if e == 0 { 0 } else { 1u64 << 52 };
    e.max(1) - 1075 + m.trailing_zeros() as i32
}

/// D = A·B + C from the raw registers, through the fragment layouts of §9.7.14.5.8 (each matrix
/// element is read from the lane and register the layout gives). "The accumulation order,
/// rounding and handling of subnormal inputs are unspecified" (§9.7.14.5.14): elements that
/// involve a subnormal are `Free`, and the rest are only predicted where every partial sum in
/// any order is exact (all terms are multiples of the smallest term's quantum and their
/// magnitudes sum below 2^24 quanta); NaN where IEEE arithmetic gives NaN; a zero may be ±0.
fn mma_model(spec: &Spec, bf16: bool) -> Result<Vec<Want>, String> {
    let fmt = mma_format(bf16);
    let problems = spec.inputs.len() / (32 * MMA_LANE_WORDS);
    let mut want = Vec::new();
    for p in 0..problems {
        let mut a = [[None; MMA_K]; MMA_M];
        let mut b = [[None; MMA_N]; MMA_K];
        let mut c = [[None; MMA_N]; MMA_M];
        for lane in 0..32 {
            let w = &spec.inputs[(p * 32 + lane) * MMA_LANE_WORDS..][..MMA_LANE_WORDS];
            for i in 0..8 {
                let (r, k) = mma_a_pos(lane, i);
                let h = (w[i / 2] >> (16 * (i % 2))) & 0xffff;
                if a[r][k].replace(h).is_some() {
                    return Err(format!("A[{r}][{k}] has two places in the layout"));
                }
            }
            for i in 0..4 {
                let (k, n) = mma_b_pos(lane, i);
                let h = (w[4 + i / 2] >> (16 * (i % 2))) & 0xffff;
                if b[k][n].replace(h).is_some() {
                    return Err(format!("B[{k}][{n}] has two places in the layout"));
                }
            }
            for i in 0..4 {
                let (r, n) = mma_c_pos(lane, i);
                if c[r][n].replace(w[6 + i]).is_some() {
                    return Err(format!("C[{r}][{n}] has two places in the layout"));
                }
            }
        }
        let get = |x: Option<u32>| x.ok_or("an element the layout leaves out");
        let mut d = [[Want::Free; MMA_N]; MMA_M];
        for (m, row) in d.iter_mut().enumerate() {
            for (n, out) in row.iter_mut().enumerate() {
                let cb = get(c[m][n])?;
                let mut subnormal = is_subnormal32(cb);
                let mut terms = vec![f32::from_bits(cb) as f64];
                for k in 0..MMA_K {
                    let (ha, hb) = (get(a[m][k])?, get(b[k][n])?);
                    subnormal |= fmt.is_subnormal(ha) || fmt.is_subnormal(hb);
                    terms.push(fmt.value(ha) * fmt.value(hb));
                }
                let sum: f64 = terms.iter().sum();
                *out = if subnormal {
                    Want::Free
                } else if sum.is_nan() {
                    Want::Nan
                } else if sum.is_infinite() {
                    Want::Bits(bits(sum as f32))
                } else if sum == 0.0 && terms.iter().all(|&t| t == 0.0) {
                    Want::Zero
                } else {
                    let nonzero: Vec<f64> = terms.iter().copied().filter(|&t| t != 0.0).collect();
                    let q = nonzero.iter().map(|&t| quantum(t)).min().unwrap_or(0);
                    let total: f64 = nonzero.iter().map(|t| t.abs()).sum();
                    if total < pow2(q + 24) && q >= -149 {
                        if sum == 0.0 {
                            Want::Zero
                        } else {
                            Want::Bits(bits(sum as f32))
                        }
                    } else {
                        Want::Free
                    }
                };
            }
        }
        for lane in 0..32 {
            for i in 0..4 {
                let (m, n) = mma_c_pos(lane, i);
                want.push(d[m][n]);
            }
        }
    }
    Ok(want)
}

// ----------------------------------------------------------------------------------------- cvt

fn item_spec(
    name: &str,
    kernel: &str,
    in_per_item: usize,
    formats: Vec<Fmt>,
    slots: &[&str],
    inputs: Vec<u32>,
) -> Spec {
    let items = inputs.len() / in_per_item;
    Spec {
        name: name.into(),
        kernel: kernel.into(),
        grid: items.div_ceil(128) as u32,
        block: 128,
        n: items as u32,
        in_per_item,
        out_per_item: slots.len(),
        formats,
        slots: slots.iter().map(|s| s.to_string()).collect(),
        inputs,
        out_words: items * slots.len(),
    }
}

/// (a, b) pairs for the packed conversions: distinct halves, ties to even in f16 and in bf16,
/// f16 overflow (65520 is the tie between 65504 and 2^16, which rounds to infinity), f16 and
/// f32 subnormals, bf16 overflow of f32's largest value, signed zeros, infinities, and NaNs with
/// payloads on either side.
fn cvt_pairs() -> Vec<(u32, u32)> {
    let p = |x: f32, y: f32| (bits(x), bits(y));
    let e = |k: i32| pow2(k) as f32;
    vec![
        p(1.0, 2.0),
        p(2.0, 1.0),
        p(-0.5, 3.25),
        p(65504.0, -65504.0),
        p(65519.0, 65520.0),
        p(70000.0, -1.0e6),
        p(1.0e-6, -3.0e-8),
        p(e(-24), e(-25)),
        p(3.0 * e(-25), -e(-26)),
        (0, NEG_ZERO),
        p(1.0 + e(-11), 1.0 + 3.0 * e(-11)),
        p(1.0 + e(-8), 1.0 + 3.0 * e(-8)),
        p(std::f32::consts::PI, -std::f32::consts::E),
        (PINF, NINF),
        p(3.0e38, -1.0e-40),
        (0x7f7f_ffff, 0xff7f_ffff),
        (MIN_NORMAL, 0x807f_ffff),
        (0x0000_0001, 0x8040_0000),
        (0x0000_8000, 0x0001_8000),
        (0x3f80_8000, 0x3f81_8000),
        (0x7fc0_0000, ONE),
        (ONE, 0x7fc0_0000),
        (0x7f80_0001, 0xffc1_2345),
        (0x7fff_ffff, 0x7fbf_ffff),
        (0xff80_0001, bits(-2.0)),
        (0x7fc0_2000, 0x7fe0_0000),
        (0x7f81_0000, 0xff90_0000),
    ]
}

fn cvt_pack_spec() -> Spec {
    let inputs = cvt_pairs().into_iter().flat_map(|(a, b)| [a, b]).collect();
    item_spec(
        "cvt.pack",
        "probe_cvt_pack",
        2,
        vec![Fmt::F16x2, Fmt::Bf16x2],
        &["cvt.rn.f16x2.f32", "cvt.rn.bf16x2.f32"],
        inputs,
    )
}

fn cvt_narrow_spec() -> Spec {
    let mut inputs: Vec<u32> = cvt_pairs().into_iter().flat_map(|(a, b)| [a, b]).collect();
    inputs.extend([
        0x7fc0_0001,
        0x7f80_0002,
        0xfff0_0000,
        0x7f7f_8000,
        0x477f_f000,
    ]);
    item_spec(
        "cvt.narrow",
        "probe_cvt_narrow",
        1,
        vec![Fmt::F16, Fmt::Bf16],
        &["cvt.rn.f16.f32", "cvt.rn.bf16.f32"],
        inputs,
    )
}

/// 16-bit patterns (in the low half; the high half is junk the 16-bit load must not see): f16
/// and bf16 zeros, subnormals, normals, infinities, and NaNs with payloads (quiet and
/// signalling, both signs), then random patterns.
fn cvt_widen_spec() -> Spec {
    let mut h: Vec<u32> = vec![
        0x0000, 0x8000, 0x0001, 0x8001, 0x03ff, 0x0400, 0x3c00, 0xbc00, 0x3555, 0x7bff, 0xfbff,
        0x7c00, 0xfc00, 0x7c01, 0x7d55, 0x7dff, 0x7e00, 0x7e01, 0x7fff, 0xfe00, 0xffff, 0x0080,
        0x007f, 0x3f80, 0xbf80, 0x4049, 0x7f7f, 0xff7f, 0x7f80, 0xff80, 0x7f81, 0x7fa5, 0x7fc0,
        0x7fc1, 0xffc1, 0x7f00,
    ];
    let mut rng = Rng(0x16);
    h.extend((0..28).map(|_| rng.u32() & 0xffff));
    let inputs = h.into_iter().map(|x| 0x5a5a_0000 | x).collect();
    item_spec(
        "cvt.widen",
        "probe_cvt_widen",
        1,
        vec![Fmt::F32],
        &["cvt.f32.f16", "cvt.f32.bf16"],
        inputs,
    )
}

/// §9.7.9.21: `.rn` rounds to nearest even; `.f16x2`/`.bf16x2` put the conversion of `a` in
/// d[31:16] and of `b` in d[15:0]; NaN inputs give NaN ("For cvt.f32.bf16, NaN input yields
/// unspecified NaN"; the ISA promises canonical NaN only under `.relu`), so NaN bits are recorded
/// only. Widening is exact; a 16-bit result is zero-extended by `cvt.u32.u16`.
fn cvt_model(spec: &Spec) -> Result<Vec<Want>, String> {
    let half = |fmt: Format, x: u32| fmt.cvt_rn(x).map_or(Want::Nan, Want::Bits);
    let mut want = Vec::new();
    let inp = &spec.inputs;
    match spec.name.as_str() {
        "cvt.pack" => {
            for pair in inp.chunks_exact(2) {
                let (a, b) = (pair[0], pair[1]);
                want.extend([half(F16, b), half(F16, a), half(BF16, b), half(BF16, a)]);
            }
        }
        "cvt.narrow" => {
            for &x in inp {
                want.extend([half(F16, x), Want::Bits(0), half(BF16, x), Want::Bits(0)]);
            }
        }
        "cvt.widen" => {
            for &w in inp {
                let h = w & 0xffff;
                for fmt in [F16, BF16] {
                    let v = fmt.value(h);
                    want.push(if v.is_nan() {
                        Want::Nan
                    } else {
                        Want::Bits(bits(v as f32))
                    });
                }
            }
        }
        other => return Err(format!("no model for {other}")),
    }
    Ok(want)
}

// ---------------------------------------------------------------------------------------- shfl

const SHFL_CASE_WORDS: usize = 65;
const SHFL_MODES: [&str; 4] = ["up", "down", "bfly", "idx"];

/// The cases of one mode: c for CUDA's widths 32..1 (`((32 - width) << 8)`, `| 0x1f` except for
/// up), raw encodings the widths never produce, and one with junk in the bits the ISA ignores;
/// b uniform (in range, at the ends, past 31) and per lane.
fn shfl_cases(mode: &str) -> Vec<(u32, [u32; 32])> {
    let clamp = if mode == "up" { 0 } else { 0x1f };
    let mut cs: Vec<u32> = [32u32, 16, 8, 4, 2, 1]
        .iter()
        .map(|w| ((32 - w) << 8) | clamp)
        .collect();
    if mode == "up" {
        cs.extend([0x05, 0x1f05, 0x101f]);
    } else {
        cs.extend([0x0f, 0x1803, 0x0000]);
    }
    // Junk in every bit the pseudocode ignores (c[7:5], c[31:13]).
    cs.push(0xa5a5_e0e0 | clamp);
    let mut bs: Vec<[u32; 32]> = [0u32, 1, 3, 8, 16, 31, 33]
        .iter()
        .map(|&b| [b; 32])
        .collect();
    bs.push(std::array::from_fn(|l| ((l * 7 + 3) % 32) as u32));
    bs.push(std::array::from_fn(|l| (31 - l) as u32));
    bs.push(std::array::from_fn(|l| {
        (l % 5) as u32 + 32 * (l as u32 % 3)
    }));
    let mut v = Vec::new();
    for &c in &cs {
        for b in &bs {
            v.push((c, *b));
        }
    }
    v
}

fn shfl_spec(mode: &str) -> Spec {
    let cases = shfl_cases(mode);
    let mut inputs = Vec::new();
    for (k, (c, b)) in cases.iter().enumerate() {
        inputs.push(*c);
        inputs.extend(b);
        inputs.extend((0..32u32).map(|l| 0xa500_0000 | (k as u32) << 8 | l));
    }
    Spec {
        name: format!("shfl.{mode}"),
        kernel: format!("probe_shfl_{mode}"),
        grid: cases.len() as u32,
        block: 32,
        n: cases.len() as u32,
        in_per_item: SHFL_CASE_WORDS,
        out_per_item: 64,
        formats: vec![Fmt::U32],
        slots: Vec::new(),
        inputs,
        out_words: cases.len() * 64,
    }
}

/// §9.7.9.6, the Semantics pseudocode: the lane `lane` reads from, and `pval`.
///
/// ```text
/// lane[4:0] = laneid; bval[4:0] = b[4:0]; cval[4:0] = c[4:0]; segmask[4:0] = c[12:8];
/// maxLane = (lane & segmask) | (cval & ~segmask); minLane = lane & segmask;
/// up: j = lane - bval; pval = (j >= maxLane)     down: j = lane + bval; pval = (j <= maxLane)
/// bfly: j = lane ^ bval; pval = (j <= maxLane)   idx: j = minLane | (bval & ~segmask); pval = (j <= maxLane)
/// if (!pval) j = lane; d = SourceA[j]; p = pval
/// ```
fn shfl_source(mode: &str, lane: u32, b: u32, c: u32) -> (u32, bool) {
    let bval = (b & 0x1f) as i32;
    let cval = (c & 0x1f) as i32;
    let segmask = ((c >> 8) & 0x1f) as i32;
    let lane = lane as i32;
    let max_lane = (lane & segmask) | (cval & !segmask);
    let min_lane = lane & segmask;
    let (j, pval) = match mode {
        "up" => (lane - bval, lane - bval >= max_lane),
        "down" => (lane + bval, lane + bval <= max_lane),
        "bfly" => (lane ^ bval, (lane ^ bval) <= max_lane),
        _ => {
            let j = min_lane | (bval & !segmask);
            (j, j <= max_lane)
        }
    };
    (if pval { j as u32 } else { lane as u32 }, pval)
}

fn shfl_model(spec: &Spec, mode: &str) -> Vec<Want> {
    let mut want = Vec::new();
    for case in spec.inputs.chunks_exact(SHFL_CASE_WORDS) {
        let c = case[0];
        for lane in 0..32u32 {
            let (src, p) = shfl_source(mode, lane, case[1 + lane as usize], c);
            want.push(Want::Bits(case[33 + src as usize]));
            want.push(Want::Bits(u32::from(p)));
        }
    }
    want
}

// ------------------------------------------------------------------------------ approximations

/// A few thousand inputs: specials (zeros, infinities, NaNs, subnormals, the ends of the ranges
/// each function's bound or table names), then random values over every exponent, subnormals,
/// ex2's range, sin/cos's [-2π, 2π] and [-100π, 100π], and lg2's (0.5, 2).
fn approx_inputs() -> Vec<u32> {
    const N: usize = 3072;
    let pi = std::f32::consts::PI;
    let mut v: Vec<u32> = vec![
        0,
        NEG_ZERO,
        PINF,
        NINF,
        0x7fc0_0000,
        0xffc0_0000,
        0x7fc0_0001,
        0x7f80_0001,
        0x7fbf_ffff,
        0xffff_ffff,
        0x7fff_ffff,
        0x0000_0001,
        0x8000_0001,
        0x007f_ffff,
        0x807f_ffff,
        0x0040_0000,
        MIN_NORMAL,
        0x8080_0000,
        0x7f7f_ffff,
        0xff7f_ffff,
    ];
    for x in [
        1.0f32,
        -1.0,
        0.5,
        2.0,
        1.5,
        0.75,
        3.0,
        4.0,
        0.25,
        1.0 / 3.0,
        0.999_999,
        1.000_001,
        10.0,
        -10.0,
        127.0,
        127.999_99,
        128.0,
        129.0,
        -125.0,
        -126.0,
        -126.5,
        -127.0,
        -140.0,
        -149.0,
        -149.5,
        -150.0,
        -151.0,
        1.0e-10,
        pi / 2.0,
        pi,
        2.0 * pi,
        -2.0 * pi,
        100.0 * pi,
        -100.0 * pi,
        1000.0,
        1.0e4,
        1.0e6,
        1.0e20,
        -1.0e20,
        pow2(126) as f32,
        pow2(127) as f32,
        1.7e38,
        pow2(-127) as f32,
    ] {
        v.push(bits(x));
    }
    v.push(bits(2.0 * pi) + 1);
    v.push(bits(100.0 * pi) + 1);
    let mut rng = Rng(0xa7);
    let uniform = |rng: &mut Rng, lo: f64, hi: f64| bits((lo + (hi - lo) * rng.unit()) as f32);
    let tau = 2.0 * std::f64::consts::PI;
    for _ in 0..640 {
        let e = 1 + rng.below(254);
        v.push((rng.u32() & 0x8000_0000) | e << 23 | (rng.u32() & 0x007f_ffff));
    }
    for _ in 0..256 {
        v.push((rng.u32() & 0x8000_0000) | (rng.u32() & 0x007f_ffff).max(1));
    }
    for _ in 0..768 {
        v.push(uniform(&mut rng, -160.0, 160.0));
    }
    for _ in 0..512 {
        v.push(uniform(&mut rng, -tau, tau));
    }
    for _ in 0..384 {
        v.push(uniform(&mut rng, -50.0 * tau, 50.0 * tau));
    }
    while v.len() < N {
        let x = uniform(&mut rng, 0.5, 2.0);
        if x != bits(0.5) {
            v.push(x);
        }
    }
    v
}

fn approx_spec() -> Spec {
    let slots: Vec<&str> = Fun::ALL.iter().map(|f| f.name()).collect();
    item_spec(
        "approx",
        "probe_approx",
        1,
        vec![Fmt::F32],
        &slots,
        approx_inputs(),
    )
}

/// The exact results the §9.7.3 tables give (and NaN for NaN inputs); `Approx` otherwise.
fn approx_want(f: Fun, xb: u32) -> Want {
    let x = f32::from_bits(xb);
    if x.is_nan() {
        return Want::Nan;
    }
    let zero = x == 0.0;
    match f {
        // -Inf → +0.0, ±0.0 → +1.0, +Inf → +Inf. `.ftz` flushes a subnormal input to ±0 first.
        Fun::Ex2 | Fun::Ex2Ftz => match xb {
            PINF => Want::Bits(PINF),
            NINF => Want::Bits(0),
            _ if zero || (f == Fun::Ex2Ftz && is_subnormal32(xb)) => Want::Bits(ONE),
            _ => Want::Approx(f, xb),
        },
        // -Inf, -normal → NaN; -0.0 → -Inf; +0.0 → +Inf; +Inf → +0.0.
        Fun::Rsqrt => match xb {
            0 => Want::Bits(PINF),
            NEG_ZERO => Want::Bits(NINF),
            PINF => Want::Bits(0),
            _ if x < 0.0 => Want::Nan,
            _ => Want::Approx(f, xb),
        },
        // -Inf, -normal → NaN; ±0.0 → -Inf; +Inf → +Inf.
        Fun::Lg2 => match xb {
            PINF => Want::Bits(PINF),
            _ if zero => Want::Bits(NINF),
            _ if x < 0.0 => Want::Nan,
            _ => Want::Approx(f, xb),
        },
        // -Inf → -0.0, -0.0 → -Inf, +0.0 → +Inf, +Inf → +0.0.
        Fun::Rcp => match xb {
            NINF => Want::Bits(NEG_ZERO),
            NEG_ZERO => Want::Bits(NINF),
            0 => Want::Bits(PINF),
            PINF => Want::Bits(0),
            _ => Want::Approx(f, xb),
        },
        // ±Inf → NaN; ±0.0 → ±0.0.
        Fun::Sin => match xb {
            PINF | NINF => Want::Nan,
            _ if zero => Want::Bits(xb),
            _ => Want::Approx(f, xb),
        },
        // ±Inf → NaN; ±0.0 → +1.0.
        Fun::Cos => match xb {
            PINF | NINF => Want::Nan,
            _ if zero => Want::Bits(ONE),
            _ => Want::Approx(f, xb),
        },
    }
}

/// The outcome of an error-bound check: within the bound (with the error in ulps of the
/// reference), past it (why), or outside every range the ISA bounds.
enum Bound {
    Within(f64),
    Beyond(String),
    Unbounded(f64),
}

/// sin/cos: the absolute error bound of §9.7.3.18/19 for |x|: 2^-20.5 in [-2π, 2π], 2^-14.7 in
/// [-100π, 100π], none beyond.
fn trig_bound(x: f64) -> Option<f64> {
    let pi = std::f64::consts::PI;
    if x.abs() <= 2.0 * pi {
        Some(2f64.powf(-20.5))
    } else if x.abs() <= 100.0 * pi {
        Some(2f64.powf(-14.7))
    } else {
        None
    }
}

/// `got` (non-NaN here) against the exact value, with the bounds of §9.7.3: ex2 "2 ulp from the
/// correctly rounded result across the full range"; rcp "maximum ulp error is 1" (so within 1 of
/// the correctly rounded result); rsqrt relative 2^-22.9; lg2 absolute 2^-22 in (0.5, 2),
/// relative 2^-22 elsewhere; sin/cos as `trig_bound`. `.ftz` flushes subnormal inputs and
/// results to sign-preserving zero.
fn approx_vs_exact(f: Fun, xb: u32, got: u32) -> Bound {
    let x = f32::from_bits(xb) as f64;
    let g = f32::from_bits(got) as f64;
    let ulp_err = |cr: f32| ulps(got, bits(cr)) as f64;
    let within = |ok: bool, err: f64, what: String| {
        if ok {
            Bound::Within(err)
        } else {
            Bound::Beyond(what)
        }
    };
    match f {
        Fun::Ex2 => {
            let cr = x.exp2() as f32;
            let d = ulp_err(cr);
            within(d <= 2.0, d, format!("{d} ulp from 2^x = {cr:e}, at most 2"))
        }
        Fun::Ex2Ftz => {
            let xf = if is_subnormal32(xb) { 0.0 } else { x };
            let cr = xf.exp2() as f32;
            if is_subnormal32(got) {
                return Bound::Beyond("a subnormal result under .ftz".into());
            }
            let d = ulp_err(cr);
            // A result that would be subnormal is flushed to +0, also one within 2 ulp of the
            // smallest normal.
            let tiny = ulps(bits(cr), MIN_NORMAL) <= 2 || (cr as f64) < pow2(-126);
            if got == 0 && tiny {
                Bound::Within(0.0)
            } else {
                within(d <= 2.0, d, format!("{d} ulp from 2^x = {cr:e}, at most 2"))
            }
        }
        Fun::Rcp => {
            let cr = (1.0 / x) as f32;
            let d = ulp_err(cr);
            within(d <= 1.0, d, format!("{d} ulp from 1/x = {cr:e}, at most 1"))
        }
        Fun::Rsqrt => {
            let r = 1.0 / x.sqrt();
            let rel = (g - r).abs() / r;
            within(
                rel <= 2f64.powf(-22.9),
                ulp_err(r as f32),
                format!(
                    "relative error 2^{:.2} from {r:e}, at most 2^-22.9",
                    rel.log2()
                ),
            )
        }
        Fun::Lg2 => {
            let r = x.log2();
            let (err, bound, what) = if x > 0.5 && x < 2.0 {
                ((g - r).abs(), pow2(-22), "absolute")
            } else {
                ((g - r).abs() / r.abs(), pow2(-22), "relative")
            };
            within(
                err <= bound,
                ulp_err(r as f32),
                format!("{what} error 2^{:.2} from {r:e}, at most 2^-22", err.log2()),
            )
        }
        Fun::Sin | Fun::Cos => {
            let r = if f == Fun::Sin { x.sin() } else { x.cos() };
            let err = (g - r).abs();
            let d = ulp_err(r as f32);
            match trig_bound(x) {
                Some(bound) => within(
                    err <= bound,
                    d,
                    format!(
                        "absolute error 2^{:.2} from {r:e}, at most 2^{:.1}",
                        err.log2(),
                        bound.log2()
                    ),
                ),
                None => Bound::Unbounded(d),
            }
        }
    }
}

/// The executor's value `emu` against the hardware's `hw` (both non-NaN, different bits): within
/// the ISA's bound of the hardware value, plus the half ulp the executor's own rounding may add
/// (it computes the correctly rounded result, and the hardware's bound is from the exact one).
fn approx_vs_hardware(f: Fun, xb: u32, hw: u32, emu: u32) -> Bound {
    let x = f32::from_bits(xb) as f64;
    let (h, e) = (f32::from_bits(hw) as f64, f32::from_bits(emu) as f64);
    let d = ulps(hw, emu) as f64;
    let half_ulp = ulp_of(h) / 2.0;
    let within = |ok: bool, what: String| {
        if ok {
            Bound::Within(d)
        } else {
            Bound::Beyond(format!("{d} ulp apart: {what}"))
        }
    };
    match f {
        Fun::Ex2 => within(d <= 2.0, "at most 2".into()),
        Fun::Ex2Ftz => {
            // One side flushed what the other kept, right at the smallest normal.
            let boundary =
                (hw == 0 && ulps(emu, MIN_NORMAL) <= 2) || (emu == 0 && ulps(hw, MIN_NORMAL) <= 2);
            within(d <= 2.0 || boundary, "at most 2".into())
        }
        Fun::Rcp => within(d <= 1.0, "at most 1".into()),
        Fun::Rsqrt => within(
            (e - h).abs() <= 2f64.powf(-22.9) * h.abs() + half_ulp,
            "relative bound 2^-22.9".into(),
        ),
        Fun::Lg2 => {
            let bound = if x > 0.5 && x < 2.0 {
                pow2(-22)
            } else {
                pow2(-22) * h.abs()
            };
            within((e - h).abs() <= bound + half_ulp, "bound 2^-22".into())
        }
        Fun::Sin | Fun::Cos => match trig_bound(x) {
            Some(bound) => within(
                (e - h).abs() <= bound + half_ulp,
                format!("absolute bound 2^{:.1}", bound.log2()),
            ),
            None => Bound::Unbounded(d),
        },
    }
}

// ---------------------------------------------------------------------------------- arithmetic

const ARITH_SLOTS: [&str; 8] = [
    "add.rn.f32",
    "sub.rn.f32",
    "mul.rn.f32",
    "fma.rn.f32",
    "min.f32",
    "max.f32",
    "neg.f32",
    "abs.f32",
];

/// (a, b, c) triples: NaN payloads (quiet, signalling, both signs) in each operand with ordinary
/// values in the others, NaNs meeting NaNs (which payload wins), invalid operations that make a
/// NaN (inf - inf, 0 · inf), and a few ordinary cases (signed zeros, subnormals).
fn arith_spec() -> Spec {
    let nans = [
        0x7fc0_0000,
        0xffc0_0000,
        0x7fc0_0001,
        0x7fd2_3456,
        0x7f80_0001,
        0x7f91_2345,
        0xff80_0001,
        0x7fff_ffff,
        0xffff_ffff,
    ];
    let (one, two) = (bits(1.0), bits(2.0));
    let mut t: Vec<[u32; 3]> = Vec::new();
    for &n in &nans {
        t.push([n, one, two]);
        t.push([one, n, two]);
        t.push([one, two, n]);
    }
    t.extend([
        [0x7fc0_0001, 0x7fd2_3456, 0x7f91_2345],
        [0x7fd2_3456, 0x7fc0_0001, 0xffc0_0000],
        [0x7f80_0001, 0x7fc0_0001, one],
        [0x7fc0_0001, 0x7f80_0001, one],
        [0xffc0_0000, 0x7fc0_0000, 0x7fc0_0001],
        [0x7f91_2345, 0xff80_0001, 0x7fd2_3456],
        [PINF, NINF, 0],
        [PINF, PINF, 0],
        [0, PINF, one],
        [NINF, 0, one],
        [one, PINF, NINF],
        [PINF, one, NINF],
        [0x7fc0_0001, PINF, NINF],
        [bits(1.5), bits(2.25), bits(-0.5)],
        [NEG_ZERO, 0, NEG_ZERO],
        [0, NEG_ZERO, 0],
        [0x0000_0a00, 0x0000_0a00, 0],
        [MIN_NORMAL, bits(0.5), 0x8000_0001],
        [0x7f7f_ffff, two, NINF],
    ]);
    let inputs = t.into_iter().flatten().collect();
    item_spec(
        "arith",
        "probe_arith",
        3,
        vec![Fmt::F32],
        &ARITH_SLOTS,
        inputs,
    )
}

/// IEEE 754 round-to-nearest for add/sub/mul/fma (fma rounds once: §9.7.3.6), NaN out for NaN
/// (bits unspecified); min/max return the non-NaN operand when only one is NaN, NaN when both
/// are, and order -0 below +0 (§9.7.3.11/12); neg/abs flip or clear the sign, "NaN inputs yield
/// an unspecified NaN" (§9.7.3.10, §9.7.3.9).
fn arith_model(spec: &Spec) -> Vec<Want> {
    let val = |x: f32| {
        if x.is_nan() {
            Want::Nan
        } else {
            Want::Bits(bits(x))
        }
    };
    let mut want = Vec::new();
    for t in spec.inputs.chunks_exact(3) {
        let (a, b, c) = (
            f32::from_bits(t[0]),
            f32::from_bits(t[1]),
            f32::from_bits(t[2]),
        );
        let pick = |min: bool| -> Want {
            match (a.is_nan(), b.is_nan()) {
                (true, true) => Want::Nan,
                (true, false) => Want::Bits(t[1]),
                (false, true) => Want::Bits(t[0]),
                _ if a == 0.0 && b == 0.0 => {
                    let either_neg = (t[0] | t[1]) & NEG_ZERO != 0;
                    let both_neg = t[0] & t[1] & NEG_ZERO != 0;
                    Want::Bits(if (min && either_neg) || (!min && both_neg) {
                        NEG_ZERO
                    } else {
                        0
                    })
                }
                _ => Want::Bits(if (a < b) == min { t[0] } else { t[1] }),
            }
        };
        want.extend([
            val(a + b),
            val(a - b),
            val(a * b),
            val(a.mul_add(b, c)),
            pick(true),
            pick(false),
            if a.is_nan() {
                Want::Nan
            } else {
                Want::Bits(t[0] ^ NEG_ZERO)
            },
            if a.is_nan() {
                Want::Nan
            } else {
                Want::Bits(t[0] & !NEG_ZERO)
            },
        ]);
    }
    want
}

// ------------------------------------------------------------------------------- all the probes

fn all_specs() -> Vec<Spec> {
    let mut v = Vec::new();
    for trans in [false, true] {
        for num in [1, 2, 4] {
            v.push(ldmatrix_spec(num, trans));
        }
    }
    v.push(mma_spec(false));
    v.push(mma_spec(true));
    v.push(cvt_pack_spec());
    v.push(cvt_narrow_spec());
    v.push(cvt_widen_spec());
    for mode in SHFL_MODES {
        v.push(shfl_spec(mode));
    }
    v.push(approx_spec());
    v.push(arith_spec());
    v
}

/// The ISA model's expectation for every element of `spec`'s outputs, computed from its inputs.
fn model(spec: &Spec) -> Result<Vec<Want>, String> {
    let name = spec.name.as_str();
    let want = if let Some(rest) = name.strip_prefix("ldmatrix.x") {
        let (num, trans) = match rest {
            "1" | "2" | "4" => (rest.parse().unwrap(), false),
            "1.trans" | "2.trans" | "4.trans" => (rest[..1].parse().unwrap(), true),
            _ => return Err(format!("no model for {name}")),
        };
        ldmatrix_model(spec, num, trans)
    } else if name == "mma.f16" || name == "mma.bf16" {
        mma_model(spec, name == "mma.bf16")?
    } else if name.starts_with("cvt.") {
        cvt_model(spec)?
    } else if let Some(mode) = name.strip_prefix("shfl.") {
        if !SHFL_MODES.contains(&mode) {
            return Err(format!("no model for {name}"));
        }
        shfl_model(spec, mode)
    } else if name == "approx" {
        let funs: Vec<Fun> = spec
            .slots
            .iter()
            .map(|s| Fun::parse(s).ok_or_else(|| format!("approx: unknown function {s}")))
            .collect::<Result<_, _>>()?;
        spec.inputs
            .iter()
            .flat_map(|&x| funs.iter().map(move |&f| approx_want(f, x)))
            .collect()
    } else if name == "arith" {
        if spec.slots != ARITH_SLOTS {
            return Err("arith: the slots are not the ones modelled".into());
        }
        arith_model(spec)
    } else {
        return Err(format!("no model for {name}"));
    };
    if want.len() != spec.elements() {
        return Err(format!(
            "{name}: the model gives {} elements for {} output elements",
            want.len(),
            spec.elements()
        ));
    }
    Ok(want)
}

/// Where output word `w` of `spec` comes from, for messages.
fn locate(spec: &Spec, w: usize) -> String {
    let name = spec.name.as_str();
    let inp = |i: usize| spec.inputs.get(i).copied().unwrap_or(0);
    if let Some(rest) = name.strip_prefix("ldmatrix.x") {
        let num: usize = rest[..1].parse().unwrap_or(1);
        format!("lane {} register {}", w / num, w % num)
    } else if name.starts_with("mma.") {
        let (p, lane, i) = (w / 128, (w % 128) / 4, w % 4);
        let (r, c) = mma_c_pos(lane, i);
        let names = mma_problems(name == "mma.bf16");
        let what = names.get(p).map_or("", |x| x.name);
        format!("problem {p} ({what}) lane {lane} d{i} = D[{r}][{c}]")
    } else if name.starts_with("shfl.") {
        let (k, lane) = (w / 64, (w % 64) / 2);
        let base = k * SHFL_CASE_WORDS;
        format!(
            "case {k} lane {lane} {}: b = {:#x}, c = {:#x}",
            ["d", "p"][w % 2],
            inp(base + 1 + lane),
            inp(base)
        )
    } else {
        let item = w / spec.out_per_item.max(1);
        let ins: Vec<String> = (0..spec.in_per_item)
            .map(|j| {
                let x = inp(item * spec.in_per_item + j);
                format!("{x:#010x} ({:e})", f32::from_bits(x))
            })
            .collect();
        format!("item {item}: {} of {}", spec.slot(w), ins.join(", "))
    }
}

// -------------------------------------------------------------------------------- the checks

/// Failures, grouped by probe and category, the first few of each kept in full.
#[derive(Default)]
struct Failures {
    /// Put before every key (which record a failure is about).
    prefix: String,
    shown: Vec<String>,
    counts: BTreeMap<String, usize>,
}

impl Failures {
    const SHOW: usize = 12;

    fn add(&mut self, probe: &str, category: &str, message: String) {
        let key = format!("{}{probe}: {category}", self.prefix);
        let n = self.counts.entry(key.clone()).or_default();
        *n += 1;
        if *n <= Self::SHOW {
            self.shown.push(format!("  {key}: {message}"));
        }
    }

    fn total(&self) -> usize {
        self.counts.values().sum()
    }

    fn report(&self) -> String {
        let mut s = String::new();
        for line in &self.shown {
            s.push_str(line);
            s.push('\n');
        }
        for (key, n) in &self.counts {
            s.push_str(&format!("  {key}: {n} in all\n"));
        }
        s
    }
}

/// Per-function error statistics (in ulps).
#[derive(Default)]
struct UlpStats {
    max: BTreeMap<Fun, (f64, usize)>,
    unbounded: BTreeMap<Fun, (f64, usize)>,
}

impl UlpStats {
    fn add(&mut self, f: Fun, d: f64, bounded: bool) {
        let e = if bounded {
            self.max.entry(f).or_default()
        } else {
            self.unbounded.entry(f).or_default()
        };
        e.0 = e.0.max(d);
        e.1 += 1;
    }

    fn report(&self, what: &str) -> String {
        let mut s = String::new();
        for f in Fun::ALL {
            let (m, n) = self.max.get(&f).copied().unwrap_or_default();
            let mut line = format!("  {:<20} max {m} ulp {what} over {n} values", f.name());
            if let Some(&(u, k)) = self.unbounded.get(&f) {
                line += &format!("; {k} beyond the ISA's bounded range, max {u} ulp");
            }
            s.push_str(&line);
            s.push('\n');
        }
        s
    }
}

/// Every word written (none still holds the sentinel) and as many as the probe makes.
fn check_written(spec: &Spec, out: &[u32], f: &mut Failures) {
    if out.len() != spec.out_words {
        f.add(
            &spec.name,
            "output count",
            format!("{} words, want {}", out.len(), spec.out_words),
        );
    }
    for (w, &x) in out.iter().enumerate() {
        if x == SENTINEL {
            f.add(
                &spec.name,
                "not written",
                format!("{} still holds {SENTINEL:#x}", locate(spec, w)),
            );
        }
    }
}

/// `out` against the ISA model, element by element.
fn check_model(spec: &Spec, want: &[Want], out: &[u32], f: &mut Failures, stats: &mut UlpStats) {
    let mut k = 0;
    for (w, &word) in out.iter().enumerate() {
        for (part, kind, v) in spec.fmt(w).split(word) {
            let Some(&wanted) = want.get(k) else {
                return;
            };
            k += 1;
            let at = || {
                format!(
                    "{}{}{part}",
                    locate(spec, w),
                    if part.is_empty() { "" } else { " " }
                )
            };
            match wanted {
                Want::Bits(b) if v != b => f.add(
                    &spec.name,
                    "differs from the ISA model",
                    format!(
                        "{}: got {} ({}), the ISA gives {} ({})",
                        at(),
                        kind.hex(v),
                        show(kind, v),
                        kind.hex(b),
                        show(kind, b)
                    ),
                ),
                Want::Zero if v & 0x7fff_ffff != 0 => f.add(
                    &spec.name,
                    "differs from the ISA model",
                    format!(
                        "{}: got {} ({}), the ISA gives ±0",
                        at(),
                        kind.hex(v),
                        show(kind, v)
                    ),
                ),
                Want::Nan if !kind.is_nan(v) => f.add(
                    &spec.name,
                    "differs from the ISA model",
                    format!(
                        "{}: got {} ({}), the ISA gives NaN",
                        at(),
                        kind.hex(v),
                        show(kind, v)
                    ),
                ),
                Want::Approx(fun, x) => {
                    if Kind::F32.is_nan(v) {
                        f.add(
                            &spec.name,
                            "approximation beyond the ISA bound",
                            format!("{}: got NaN {v:#010x}", at()),
                        );
                    } else {
                        match approx_vs_exact(fun, x, v) {
                            Bound::Within(d) => stats.add(fun, d, true),
                            Bound::Unbounded(d) => stats.add(fun, d, false),
                            Bound::Beyond(why) => f.add(
                                &spec.name,
                                "approximation beyond the ISA bound",
                                format!("{}: got {v:#010x} ({:e}): {why}", at(), f32::from_bits(v)),
                            ),
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

fn show(kind: Kind, v: u32) -> String {
    match kind {
        Kind::Raw32 | Kind::Raw16 => format!("{v}"),
        Kind::F32 => format!("{:e}", f32::from_bits(v)),
        Kind::F16 => format!("{:e}", F16.value(v)),
        Kind::Bf16 => format!("{:e}", BF16.value(v)),
    }
}

/// The executor's outputs `emu` against the hardware's `hw` for the same spec: bit for bit, NaNs
/// whose bits differ in their own category, approximations within the ISA's bound of the
/// hardware value.
fn compare(spec: &Spec, hw: &[u32], emu: &[u32], f: &mut Failures, stats: &mut UlpStats) -> usize {
    if hw.len() != emu.len() {
        f.add(
            &spec.name,
            "output count",
            format!(
                "the record has {} words, the executor made {}",
                hw.len(),
                emu.len()
            ),
        );
    }
    let mut compared = 0;
    for (w, (&h, &e)) in hw.iter().zip(emu).enumerate() {
        for ((part, kind, hv), (_, _, ev)) in
            spec.fmt(w).split(h).into_iter().zip(spec.fmt(w).split(e))
        {
            compared += 1;
            let fun = if spec.name == "approx" {
                Fun::parse(spec.slot(w))
            } else {
                None
            };
            let at = || {
                format!(
                    "{}{}{part}",
                    locate(spec, w),
                    if part.is_empty() { "" } else { " " }
                )
            };
            if hv == ev {
                if let Some(fun) = fun {
                    stats.add(fun, 0.0, true);
                }
                continue;
            }
            let (hn, en) = (kind.is_nan(hv), kind.is_nan(ev));
            if hn && en {
                f.add(
                    &spec.name,
                    "NaN bits differ",
                    format!(
                        "{}: hardware {}, executor {}",
                        at(),
                        kind.hex(hv),
                        kind.hex(ev)
                    ),
                );
                continue;
            }
            if let (Some(fun), false, false) = (fun, hn, en) {
                let x = spec.inputs[(w / spec.out_per_item) * spec.in_per_item];
                match approx_vs_hardware(fun, x, hv, ev) {
                    Bound::Within(d) => stats.add(fun, d, true),
                    Bound::Unbounded(d) => stats.add(fun, d, false),
                    Bound::Beyond(why) => f.add(
                        &spec.name,
                        "approximation beyond the ISA bound of the hardware value",
                        format!(
                            "{}: hardware {hv:#010x} ({:e}), executor {ev:#010x} ({:e}): {why}",
                            at(),
                            f32::from_bits(hv),
                            f32::from_bits(ev)
                        ),
                    ),
                }
                continue;
            }
            f.add(
                &spec.name,
                "differs from the hardware",
                format!(
                    "{}: hardware {} ({}), executor {} ({})",
                    at(),
                    kind.hex(hv),
                    show(kind, hv),
                    kind.hex(ev),
                    show(kind, ev)
                ),
            );
        }
    }
    compared
}

/// The NaN bit patterns among `out`, by slot and format: what a reader of the log wants to know
/// first about a device.
fn nan_summary(spec: &Spec, out: &[u32]) -> Option<String> {
    let mut counts: BTreeMap<(String, Kind, u32), usize> = BTreeMap::new();
    for (w, &word) in out.iter().enumerate() {
        for (_, kind, v) in spec.fmt(w).split(word) {
            if kind.is_nan(v) {
                let slot = spec.slot(w).to_string();
                *counts.entry((slot, kind, v)).or_default() += 1;
            }
        }
    }
    if counts.is_empty() {
        return None;
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|((slot, kind, v), n)| {
            let slot = if slot.is_empty() {
                String::new()
            } else {
                format!("{slot} ")
            };
            format!("{slot}{} {} ×{n}", kind.name(), kind.hex(*v))
        })
        .collect();
    Some(format!(
        "  {}: NaN results: {}",
        spec.name,
        parts.join(", ")
    ))
}

// ------------------------------------------------------------------------------- running them

/// The device's description in a record.
struct DeviceInfo {
    name: String,
    compute_capability: (i32, i32),
    driver_version: i32,
    ordinal: usize,
}

/// One opened device (a GPU, or the executor standing in for the driver) and its stream.
struct Runner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    ordinal: usize,
}

fn driver_err(what: &str) -> impl FnOnce(cudarc::driver::DriverError) -> String + '_ {
    move |e| format!("{what}: {e:?}")
}

impl Runner {
    fn open(ordinal: usize) -> Result<Runner, String> {
        let ctx = CudaContext::new(ordinal).map_err(driver_err("opening the device"))?;
        let stream = ctx.default_stream();
        Ok(Runner {
            ctx,
            stream,
            ordinal,
        })
    }

    fn info(&self) -> DeviceInfo {
        let mut v = 0;
        // SAFETY: writes one int; the driver is initialised (the context is open).
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
        DeviceInfo {
            name: self
                .ctx
                .name()
                .unwrap_or_else(|e| format!("unknown ({e:?})")),
            compute_capability: self.ctx.compute_capability().unwrap_or((0, 0)),
            driver_version: v,
            ordinal: self.ordinal,
        }
    }

    fn load(&self, ptx: &str) -> Result<Arc<CudaModule>, String> {
        self.ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(driver_err("loading the probe PTX"))
    }

    fn run(&self, module: &Arc<CudaModule>, spec: &Spec) -> Result<Vec<u32>, String> {
        let f = module
            .load_function(&spec.kernel)
            .map_err(driver_err(&spec.kernel))?;
        let input = self
            .stream
            .clone_htod(&spec.inputs)
            .map_err(driver_err("copying the inputs"))?;
        let mut out = self
            .stream
            .clone_htod(&vec![SENTINEL; spec.out_words.max(1)])
            .map_err(driver_err("making the output buffer"))?;
        let cfg = LaunchConfig {
            grid_dim: (spec.grid, 1, 1),
            block_dim: (spec.block, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&f);
        launch.arg(&input).arg(&mut out).arg(&spec.n);
        // SAFETY: the kernel takes (u64 in, u64 out, u32 n) and stays within the buffers sized
        // for its spec.
        unsafe { launch.launch(cfg) }.map_err(driver_err(&format!("launching {}", spec.kernel)))?;
        self.stream
            .synchronize()
            .map_err(driver_err(&format!("running {}", spec.kernel)))?;
        let mut v = self
            .stream
            .clone_dtoh(&out)
            .map_err(driver_err("copying the outputs back"))?;
        v.truncate(spec.out_words);
        Ok(v)
    }

    /// Every spec, each with its outputs or why it did not run.
    fn run_all(&self, ptx: &str, specs: &[Spec]) -> Vec<Result<Vec<u32>, String>> {
        match self.load(ptx) {
            Ok(module) => specs.iter().map(|s| self.run(&module, s)).collect(),
            Err(e) => specs.iter().map(|_| Err(e.clone())).collect(),
        }
    }
}

// ------------------------------------------------------------------------------------- records

/// A recorded run: the device, the PTX it ran and each probe with its outputs.
struct Record {
    path: PathBuf,
    device: String,
    ptx: String,
    probes: Vec<(Spec, Result<Vec<u32>, String>)>,
}

fn hex_block(words: &[u32], indent: &str) -> String {
    words
        .chunks(8)
        .map(|c| {
            let line: Vec<String> = c.iter().map(|w| format!("\"{w:08x}\"")).collect();
            format!("{indent}{}", line.join(", "))
        })
        .collect::<Vec<_>>()
        .join(",\n")
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// The record as JSON: one probe per object, words as 8-digit hex strings, 8 to a line.
fn record_json(
    info: &DeviceInfo,
    ptx: &str,
    probes: &[(Spec, Result<Vec<u32>, String>)],
) -> String {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut s = String::from("{\n");
    s += &format!("  \"format\": {},\n", json_str(FORMAT));
    s += &format!(
        "  \"about\": {},\n",
        json_str(
            "Raw output words of the probe kernels (tests/probe/probe.ptx) on this device, \
             written by tests/hardware_probe.rs; see bench/gpu/README.md"
        )
    );
    s += &format!(
        "  \"device\": {{\"name\": {}, \"ordinal\": {}, \"compute_capability\": [{}, {}], \"driver_version\": {}}},\n",
        json_str(&info.name),
        info.ordinal,
        info.compute_capability.0,
        info.compute_capability.1,
        info.driver_version
    );
    s += &format!("  \"unix_time\": {unix},\n");
    s += &format!("  \"ptx\": {},\n", json_str(ptx));
    s += "  \"probes\": [\n";
    let objects: Vec<String> = probes
        .iter()
        .map(|(spec, out)| {
            let formats: Vec<String> = spec.formats.iter().map(|f| json_str(f.name())).collect();
            let slots: Vec<String> = spec.slots.iter().map(|x| json_str(x)).collect();
            let (error, words) = match out {
                Ok(w) => ("null".to_string(), w.as_slice()),
                Err(e) => (json_str(e), &[][..]),
            };
            format!(
                "    {{\n      \"name\": {}, \"kernel\": {}, \"grid\": {}, \"block\": {}, \"n\": {},\n      \
                 \"in_per_item\": {}, \"out_per_item\": {}, \"out_words\": {},\n      \
                 \"word_formats\": [{}],\n      \"slots\": [{}],\n      \"error\": {},\n      \
                 \"inputs\": [\n{}\n      ],\n      \"outputs\": [\n{}\n      ]\n    }}",
                json_str(&spec.name),
                json_str(&spec.kernel),
                spec.grid,
                spec.block,
                spec.n,
                spec.in_per_item,
                spec.out_per_item,
                spec.out_words,
                formats.join(", "),
                slots.join(", "),
                error,
                hex_block(&spec.inputs, "        "),
                hex_block(words, "        "),
            )
        })
        .collect();
    s += &objects.join(",\n");
    s += "\n  ]\n}\n";
    s
}

fn parse_words(v: &Value, what: &str) -> Result<Vec<u32>, String> {
    v.as_array()
        .ok_or_else(|| format!("{what} is not an array"))?
        .iter()
        .map(|x| match x {
            Value::String(s) => u32::from_str_radix(s.trim_start_matches("0x"), 16)
                .map_err(|e| format!("{what}: {s:?}: {e}")),
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("{what}: {n} is not a u32")),
            other => Err(format!("{what}: {other} is not a word")),
        })
        .collect()
}

fn read_record(path: &Path) -> Result<Record, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    if v["format"] != FORMAT {
        return Err(format!("format {}, want {FORMAT:?}", v["format"]));
    }
    let ptx = v["ptx"].as_str().ok_or("no ptx")?.to_string();
    let device = v["device"]["name"]
        .as_str()
        .unwrap_or("unknown")
        .to_string();
    let mut probes = Vec::new();
    for (i, p) in v["probes"]
        .as_array()
        .ok_or("no probes")?
        .iter()
        .enumerate()
    {
        let s = |k: &str| -> Result<String, String> {
            p[k].as_str()
                .map(String::from)
                .ok_or_else(|| format!("probe {i}: no {k}"))
        };
        let n = |k: &str| -> Result<u64, String> {
            p[k].as_u64().ok_or_else(|| format!("probe {i}: no {k}"))
        };
        let name = s("name")?;
        let formats = p["word_formats"]
            .as_array()
            .ok_or_else(|| format!("{name}: no word_formats"))?
            .iter()
            .map(|f| {
                f.as_str()
                    .and_then(Fmt::parse)
                    .ok_or_else(|| format!("{name}: unknown word format {f}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if formats.is_empty() {
            return Err(format!("{name}: no word_formats"));
        }
        let slots = p["slots"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let spec = Spec {
            kernel: s("kernel")?,
            grid: n("grid")? as u32,
            block: n("block")? as u32,
            n: n("n")? as u32,
            in_per_item: n("in_per_item")? as usize,
            out_per_item: n("out_per_item")? as usize,
            out_words: n("out_words")? as usize,
            formats,
            slots,
            inputs: parse_words(&p["inputs"], &format!("{name} inputs"))?,
            name: name.clone(),
        };
        if spec.in_per_item == 0
            || spec.out_per_item == 0
            || spec.inputs.len() < spec.in_per_item
            || !(spec.slots.is_empty() || spec.slots.len() == spec.out_per_item)
        {
            return Err(format!("{name}: inconsistent item sizes or slots"));
        }
        let out = match p["error"].as_str() {
            Some(e) => Err(e.to_string()),
            None => Ok(parse_words(&p["outputs"], &format!("{name} outputs"))?),
        };
        probes.push((spec, out));
    }
    Ok(Record {
        path: path.to_path_buf(),
        device,
        ptx,
        probes,
    })
}

/// Every `bench/gpu/probe/*.json`, sorted.
fn record_paths() -> Vec<PathBuf> {
    let dir = common::root().join(RECORDS);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// "NVIDIA H200" → "h200": lower case, runs of other characters to '-', without the vendor.
fn slug(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') {
            s.push('-');
        }
    }
    let s = s.trim_matches('-');
    let s = s.strip_prefix("nvidia-").unwrap_or(s);
    if s.is_empty() {
        "gpu".into()
    } else {
        s.into()
    }
}

// ---------------------------------------------------------------------------------- the tests

/// Writes the record of a run to `dir/<device slug>.json` and returns its path.
fn write_record(
    dir: &Path,
    info: &DeviceInfo,
    specs: &[Spec],
    outs: &[Result<Vec<u32>, String>],
) -> Result<PathBuf, String> {
    let path = dir.join(format!("{}.json", slug(&info.name)));
    let probes: Vec<(Spec, Result<Vec<u32>, String>)> =
        specs.iter().cloned().zip(outs.iter().cloned()).collect();
    std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&path, record_json(info, PTX, &probes)))
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

/// Runs every probe, checks each output against the ISA model; returns the outputs.
fn run_and_check(
    runner: &Runner,
    specs: &[Spec],
    f: &mut Failures,
    stats: &mut UlpStats,
) -> Vec<Result<Vec<u32>, String>> {
    let outs = runner.run_all(PTX, specs);
    for (spec, out) in specs.iter().zip(&outs) {
        match out {
            Err(e) => f.add(&spec.name, "did not run", e.clone()),
            Ok(out) => {
                check_written(spec, out, f);
                match model(spec) {
                    Ok(want) => check_model(spec, &want, out, f, stats),
                    Err(e) => f.add(&spec.name, "no model", e),
                }
                if let Some(line) = nan_summary(spec, out) {
                    println!("{line}");
                }
            }
        }
    }
    outs
}

fn on_hardware(ordinal: usize) {
    let runner =
        Runner::open(ordinal).unwrap_or_else(|e| panic!("hardware_probe: cuda:{ordinal}: {e}"));
    let info = runner.info();
    println!(
        "hardware_probe: {} (compute capability {}.{}, driver {}.{})",
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        info.driver_version / 1000,
        info.driver_version % 1000 / 10
    );
    let specs = all_specs();
    let (mut f, mut stats) = (Failures::default(), UlpStats::default());
    let t0 = std::time::Instant::now();
    let outs = run_and_check(&runner, &specs, &mut f, &mut stats);
    let dir = std::env::var_os(OUT_ENV)
        .map_or_else(|| common::root().join("target/probe"), PathBuf::from);
    match write_record(&dir, &info, &specs, &outs) {
        Ok(path) => println!(
            "hardware_probe: {} probes in {:.2} s; record written to {} (commit it as \
             {RECORDS}/h200.json for an H200)",
            specs.len(),
            t0.elapsed().as_secs_f64(),
            path.display()
        ),
        Err(e) => f.add("record", "not written", e),
    }
    println!(
        "hardware_probe: the approximations against the exact values:\n{}",
        stats.report("from the correctly rounded value")
    );
    if f.total() > 0 {
        panic!(
            "\n\n!!!!! hardware_probe: THE HARDWARE DISAGREES WITH THE ISA MODEL of tests/hardware_probe.rs \
             in {} elements (the record is written anyway):\n{}",
            f.total(),
            f.report()
        );
    }
    println!("hardware_probe: the hardware agrees with the ISA model");
}

fn on_executor(ordinal: usize) {
    freelunch::backend::cuda::emu::load().unwrap_or_else(|e| panic!("hardware_probe: {e}"));
    let runner =
        Runner::open(ordinal).unwrap_or_else(|e| panic!("hardware_probe: emu:{ordinal}: {e}"));
    let specs = all_specs();
    let (mut f, mut stats) = (Failures::default(), UlpStats::default());
    let t0 = std::time::Instant::now();
    let outs = run_and_check(&runner, &specs, &mut f, &mut stats);
    let words: usize = outs.iter().flatten().map(Vec::len).sum();
    println!(
        "hardware_probe: the executor ran {} probes ({words} output words) in {:.2} s; against the ISA model:\n{}",
        specs.len(),
        t0.elapsed().as_secs_f64(),
        stats.report("from the correctly rounded value")
    );
    if let Some(dir) = std::env::var_os(OUT_ENV) {
        // The executor's own record: the same format, for trying the comparison without a GPU.
        match write_record(Path::new(&dir), &runner.info(), &specs, &outs) {
            Ok(path) => println!(
                "hardware_probe: the executor's record written to {}",
                path.display()
            ),
            Err(e) => f.add("record", "not written", e),
        }
    }
    let records = record_paths();
    if records.is_empty() {
        println!(
            "hardware_probe: no hardware record exists yet ({RECORDS}/*.json): the executor was \
             checked against the ISA model only"
        );
    }
    for path in records {
        let record = match read_record(&path) {
            Ok(r) => r,
            Err(e) => {
                f.add(&path.display().to_string(), "unreadable record", e);
                continue;
            }
        };
        let tag = format!(
            "{} ({})",
            record
                .path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy(),
            record.device
        );
        let module = match runner.load(&record.ptx) {
            Ok(m) => m,
            Err(e) => {
                f.add(&tag, "the recorded PTX does not load", e);
                continue;
            }
        };
        let mut rf = Failures {
            prefix: format!("{tag}: "),
            ..Failures::default()
        };
        let mut rstats = UlpStats::default();
        let mut compared = 0;
        for (spec, hw) in &record.probes {
            let Ok(hw) = hw else {
                println!("  {tag}: {}: not run on the hardware", spec.name);
                continue;
            };
            match runner.run(&module, spec) {
                Ok(emu) => compared += compare(spec, hw, &emu, &mut rf, &mut rstats),
                Err(e) => rf.add(&spec.name, "did not run", e),
            }
        }
        println!(
            "hardware_probe: against the hardware record {tag}: {compared} elements, {} differ; \
             approximations, executor against hardware:\n{}",
            rf.total(),
            rstats.report("apart")
        );
        f.counts.extend(rf.counts);
        f.shown.extend(rf.shown);
    }
    assert!(
        f.total() == 0,
        "hardware_probe: the executor fails {} checks:\n{}",
        f.total(),
        f.report()
    );
}

/// On a GPU: record and check against the ISA model. On the executor: check against the model
/// and every hardware record. Neither: skipped.
#[test]
fn hardware_probe() {
    let device = Device::from_env().unwrap_or_else(|e| panic!("{e}"));
    match device {
        Some(Device::Emu(n)) => on_executor(n),
        Some(Device::Cuda(n)) => on_hardware(n),
        Some(other) => unreachable!("from_env gives GPU devices, not {other:?}"),
        None if freelunch::backend::cuda::device_count() > 0 => on_hardware(0),
        None => println!("hardware_probe: skipped: no CUDA device"),
    }
}

/// The committed hardware records against the ISA model (no device needed): a record that
/// disagrees means the model, and likely the executor, misreads the ISA.
#[test]
fn recorded_hardware_agrees_with_the_isa_model() {
    let paths = record_paths();
    if paths.is_empty() {
        println!("no hardware record exists yet ({RECORDS}/*.json)");
        return;
    }
    let mut f = Failures::default();
    for path in paths {
        let record = read_record(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut rf = Failures {
            prefix: format!(
                "{} ({}): ",
                path.file_name().unwrap_or_default().to_string_lossy(),
                record.device
            ),
            ..Failures::default()
        };
        let mut stats = UlpStats::default();
        for (spec, out) in &record.probes {
            match out {
                Err(e) => rf.add(&spec.name, "not run on the hardware", e.clone()),
                Ok(out) => {
                    check_written(spec, out, &mut rf);
                    match model(spec) {
                        Ok(want) => check_model(spec, &want, out, &mut rf, &mut stats),
                        Err(e) => println!("{}{}: {e}; not checked", rf.prefix, spec.name),
                    }
                }
            }
        }
        f.counts.extend(rf.counts);
        f.shown.extend(rf.shown);
        println!(
            "{}: the approximations against the exact values:\n{}",
            path.display(),
            stats.report("from the correctly rounded value")
        );
    }
    assert!(
        f.total() == 0,
        "the hardware records disagree with the ISA model:\n{}",
        f.report()
    );
}

/// The model itself: its f16/bf16 rounding agrees with the `half` crate (an independent
/// implementation) on every probe input and a million random patterns; every spec's model has
/// one expectation per output element; no expectation is the sentinel; the layouts are
/// bijections (mma_model checks this); a few hand-worked values.
#[test]
fn the_isa_model_is_consistent() {
    let mut rng = Rng(1);
    let mut xs: Vec<u32> = (0..1_000_000).map(|_| rng.u32()).collect();
    xs.extend(cvt_pairs().into_iter().flat_map(|(a, b)| [a, b]));
    for x in xs {
        let v = f32::from_bits(x);
        if v.is_nan() {
            assert!(F16.cvt_rn(x).is_none() && BF16.cvt_rn(x).is_none());
            continue;
        }
        assert_eq!(
            F16.cvt_rn(x),
            Some(half::f16::from_f32(v).to_bits() as u32),
            "f16 of {x:#x}"
        );
        assert_eq!(
            BF16.cvt_rn(x),
            Some(half::bf16::from_f32(v).to_bits() as u32),
            "bf16 of {x:#x}"
        );
    }
    for h in 0..=0xffffu32 {
        let (a, b) = (F16.value(h), half::f16::from_bits(h as u16).to_f64());
        assert!(
            a == b && a.is_sign_negative() == b.is_sign_negative() || a.is_nan() && b.is_nan(),
            "f16 {h:#x}"
        );
        let (a, b) = (BF16.value(h), half::bf16::from_bits(h as u16).to_f64());
        assert!(
            a == b && a.is_sign_negative() == b.is_sign_negative() || a.is_nan() && b.is_nan(),
            "bf16 {h:#x}"
        );
    }
    // Hand-worked: cvt.rn.f16x2.f32 d, 1.0, 2.0 is 0x3c00_4000 (a upper); ties to even.
    let pack = cvt_pack_spec();
    let want = model(&pack).unwrap();
    assert_eq!(
        &want[..4],
        &[
            Want::Bits(0x4000),
            Want::Bits(0x3c00),
            Want::Bits(0x4000),
            Want::Bits(0x3f80)
        ]
    );
    assert_eq!(F16.cvt_rn(bits(65520.0)), Some(0x7c00));
    assert_eq!(F16.cvt_rn(bits(65519.0)), Some(0x7bff));
    assert_eq!(BF16.cvt_rn(0x7f7f_ffff), Some(0x7f80));
    assert_eq!(BF16.cvt_rn(0x0001_8000), Some(0x0002));
    // shfl: CUDA's __shfl_xor_sync(v, 1) swaps neighbours; __shfl_up_sync(v, 1, 8) keeps lane 8.
    assert_eq!(shfl_source("bfly", 6, 1, 0x1f), (7, true));
    assert_eq!(shfl_source("up", 8, 1, 24 << 8), (8, false));
    assert_eq!(shfl_source("down", 7, 1, (24 << 8) | 0x1f), (7, false));
    assert_eq!(shfl_source("idx", 13, 2, (24 << 8) | 0x1f), (10, true));
    // mma: lane 5 holds A[1][2..4] and A[9][2..4] in a0..a3 (groupID 1, threadID_in_group 1).
    assert_eq!(
        (0..4).map(|i| mma_a_pos(5, i)).collect::<Vec<_>>(),
        [(1, 2), (1, 3), (9, 2), (9, 3)]
    );
    for spec in all_specs() {
        let want = model(&spec).unwrap_or_else(|e| panic!("{}: {e}", spec.name));
        assert_eq!(want.len(), spec.elements(), "{}", spec.name);
        assert!(spec.inputs.len() >= spec.in_per_item, "{}", spec.name);
        for w in &want {
            assert_ne!(*w, Want::Bits(SENTINEL), "{}", spec.name);
        }
        if spec.name.starts_with("mma.") {
            let free = want.iter().filter(|w| **w == Want::Free).count();
            assert!(
                free < 32,
                "{}: {free} elements the model cannot predict",
                spec.name
            );
        }
    }
}

fn find_ptxas() -> Option<PathBuf> {
    let runs = |p: &Path| {
        std::process::Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let candidates = [
        std::env::var_os("FREELUNCH_PTXAS").map(PathBuf::from),
        Some(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(".cache/cuda/site/nvidia/cuda_nvcc/bin/ptxas"),
        ),
        Some(PathBuf::from("ptxas")),
    ];
    candidates.into_iter().flatten().find(|p| runs(p))
}

/// The probe assembles for sm_80 and sm_90 (what the driver's JIT does with it on an A100 or an
/// H200), with no warnings. Needs ptxas (tools/cuda_toolchain.sh installs it).
#[test]
fn the_probe_assembles_with_ptxas() {
    let required =
        std::env::var("FREELUNCH_REQUIRE_CUDA_TOOLS").is_ok_and(|v| !v.is_empty() && v != "0");
    let Some(ptxas) = find_ptxas() else {
        assert!(
            !required,
            "ptxas not found and FREELUNCH_REQUIRE_CUDA_TOOLS is set"
        );
        println!("the_probe_assembles_with_ptxas: ptxas not found; not checked");
        return;
    };
    let dir = common::scratch("probe-ptxas");
    let src = dir.join("probe.ptx");
    std::fs::write(&src, PTX).unwrap();
    for arch in ["sm_80", "sm_90"] {
        let out = std::process::Command::new(&ptxas)
            .arg(format!("-arch={arch}"))
            .arg("-o")
            .arg(dir.join(format!("probe.{arch}.cubin")))
            .arg(&src)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "ptxas -arch={arch}: {log}");
        assert!(!log.contains("warning"), "ptxas -arch={arch}: {log}");
    }
}
