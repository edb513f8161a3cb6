//! Shared pieces of the semantics tests (`conversions.rs`, `arithmetic.rs`): a generator for
//! element-wise PTX kernels, a launcher, a seeded PRNG, and exact floating-point references that
//! do not use the executor's code.
//!
//! The exact reference represents a finite value as `(-1)^neg * m * 2^e` with an integer `m` and
//! rounds it to a binary format in one of the four IEEE 754 directed/nearest modes, with gradual
//! underflow and overflow as IEEE 754 §4.3 and §7.4 define them.

#![allow(dead_code)]

use freelunch_ptx::{
    pack_params, Checks, Device, DeviceConfig, EmuError, LaunchRequest, Module, RunOptions,
};

// ---------------------------------------------------------------------------------------------
// Running kernels
// ---------------------------------------------------------------------------------------------

/// A fresh emulated H200 without the memory checks: these tests are about values, and the
/// initialisation and race tagging of every access makes the bulk runs about 20 times slower.
pub fn device() -> Device {
    Device::new(
        DeviceConfig::h200(1 << 28),
        RunOptions {
            checks: Checks::NONE,
            ..RunOptions::default()
        },
    )
}

/// A fresh emulated H200 with every check on (for the small launches).
pub fn checked_device() -> Device {
    Device::new(DeviceConfig::h200(1 << 28), RunOptions::default())
}

/// The byte width of a PTX type name such as `f32`, `b16`, `u64`.
pub fn type_bytes(ty: &str) -> usize {
    let digits: String = ty.chars().filter(|c| c.is_ascii_digit()).collect();
    digits.parse::<usize>().expect("a sized type") / 8
}

/// An element-wise kernel `k(in0.., out0.., n)`: thread `t` of the grid handles elements
/// `t, t + nthreads, ...` below `n`. Input `j` is loaded with `ld.global.<ins[j]>` into register
/// `%in<j>` (declared `.reg .<ins[j]>`), then `body` runs, then each `%out<j>` is stored with
/// `st.global.<outs[j]>`. `decls` declares the body's scratch registers.
pub fn map_ptx(ins: &[&str], outs: &[&str], decls: &str, body: &str) -> String {
    let mut params = Vec::new();
    for j in 0..ins.len() {
        params.push(format!(".param .u64 pin{j}"));
    }
    for j in 0..outs.len() {
        params.push(format!(".param .u64 pout{j}"));
    }
    params.push(".param .u32 pn".to_string());
    let mut s = String::new();
    s.push_str(".version 8.0\n.target sm_90\n.address_size 64\n\n");
    s.push_str(&format!(
        ".visible .entry k(\n    {}\n)\n{{\n",
        params.join(",\n    ")
    ));
    s.push_str("    .reg .pred %lp;\n    .reg .b32 %li, %ln, %ls, %lt;\n    .reg .b64 %lo, %la;\n");
    for (j, t) in ins.iter().enumerate() {
        s.push_str(&format!("    .reg .b64 %bi{j};\n    .reg .{t} %in{j};\n"));
    }
    for (j, t) in outs.iter().enumerate() {
        s.push_str(&format!("    .reg .b64 %bo{j};\n    .reg .{t} %out{j};\n"));
    }
    for line in decls.lines() {
        s.push_str(&format!("    {}\n", line.trim()));
    }
    for j in 0..ins.len() {
        s.push_str(&format!(
            "    ld.param.u64 %bi{j}, [pin{j}];\n    cvta.to.global.u64 %bi{j}, %bi{j};\n"
        ));
    }
    for j in 0..outs.len() {
        s.push_str(&format!(
            "    ld.param.u64 %bo{j}, [pout{j}];\n    cvta.to.global.u64 %bo{j}, %bo{j};\n"
        ));
    }
    s.push_str(
        "    ld.param.u32 %ln, [pn];\n\
         \x20   mov.u32 %li, %tid.x;\n\
         \x20   mov.u32 %lt, %ctaid.x;\n\
         \x20   mov.u32 %ls, %ntid.x;\n\
         \x20   mad.lo.s32 %li, %lt, %ls, %li;\n\
         \x20   mov.u32 %lt, %nctaid.x;\n\
         \x20   mul.lo.s32 %ls, %ls, %lt;\n\
         \x20   setp.ge.u32 %lp, %li, %ln;\n\
         \x20   @%lp bra $L_end;\n\
         $L_loop:\n",
    );
    for (j, t) in ins.iter().enumerate() {
        s.push_str(&format!(
            "    mul.wide.u32 %lo, %li, {};\n    add.s64 %la, %bi{j}, %lo;\n    ld.global.{t} %in{j}, [%la];\n",
            type_bytes(t)
        ));
    }
    for line in body.lines() {
        let line = line.trim();
        if !line.is_empty() {
            s.push_str(&format!("    {line}\n"));
        }
    }
    for (j, t) in outs.iter().enumerate() {
        s.push_str(&format!(
            "    mul.wide.u32 %lo, %li, {};\n    add.s64 %la, %bo{j}, %lo;\n    st.global.{t} [%la], %out{j};\n",
            type_bytes(t)
        ));
    }
    s.push_str(
        "    add.s32 %li, %li, %ls;\n\
         \x20   setp.lt.u32 %lp, %li, %ln;\n\
         \x20   @%lp bra $L_loop;\n\
         $L_end:\n\
         \x20   ret;\n}\n",
    );
    s
}

/// Loads a module; `None` (with a note on stderr) when the executor reports the kernel as
/// unsupported, so that a test can skip a form the executor does not implement. Any other error
/// is a test failure.
pub fn load(dev: &Device, what: &str, ptx: &str) -> Option<Module> {
    match dev.load_module(ptx) {
        Ok(m) => Some(m),
        Err(e @ EmuError::Unsupported { .. }) => {
            eprintln!("SKIP {what}: the executor does not support it: {e}");
            None
        }
        Err(e) => panic!("{what}: loading failed: {e}\n{ptx}"),
    }
}

/// Runs kernel `k` of `m` (made by [`map_ptx`]) over `n` elements: writes the inputs, launches a
/// grid of up to 64 blocks of 256 threads (each thread loops over several elements) and returns
/// the outputs, each `out_bytes[j]` long.
pub fn run_map(
    dev: &Device,
    m: &Module,
    inputs: &[&[u8]],
    out_bytes: &[usize],
    n: usize,
) -> Result<Vec<Vec<u8>>, EmuError> {
    let k = &m.kernels["k"];
    let mut bufs = Vec::new();
    for inp in inputs {
        let a = dev.alloc(inp.len().max(1) as u64)?;
        dev.write(a, inp)?;
        bufs.push(a);
    }
    let mut outs = Vec::new();
    for &b in out_bytes {
        let a = dev.alloc(b.max(1) as u64)?;
        outs.push(a);
    }
    let ptrs: Vec<[u8; 8]> = bufs.iter().chain(&outs).map(|a| a.to_le_bytes()).collect();
    let nn = (n as u32).to_le_bytes();
    let mut vals: Vec<&[u8]> = ptrs.iter().map(|p| &p[..]).collect();
    vals.push(&nn);
    let params = pack_params(k, &vals);
    let blocks = n.div_ceil(256).clamp(1, 64) as u32;
    let r = dev.launch(
        k,
        &LaunchRequest {
            grid: [blocks, 1, 1],
            block: [256, 1, 1],
            dynamic_smem: 0,
            max_dynamic_smem: 48 * 1024,
            params: &params,
        },
    );
    let mut results = Vec::new();
    if r.is_ok() {
        for (&a, &b) in outs.iter().zip(out_bytes) {
            let mut v = vec![0u8; b];
            dev.read(a, &mut v)?;
            results.push(v);
        }
    }
    for a in bufs.into_iter().chain(outs) {
        dev.free(a)?;
    }
    r.map(|_| results)
}

/// Loads `ptx` and runs it (see [`run_map`]); `None` when the form is unsupported.
pub fn map_run(
    dev: &Device,
    what: &str,
    ptx: &str,
    inputs: &[&[u8]],
    out_bytes: &[usize],
    n: usize,
) -> Option<Vec<Vec<u8>>> {
    let m = load(dev, what, ptx)?;
    let r = run_map(dev, &m, inputs, out_bytes, n).unwrap_or_else(|e| panic!("{what}: {e}"));
    dev.unload(m);
    Some(r)
}

pub fn bytes_u16(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
pub fn bytes_u32(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
pub fn bytes_u64(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
pub fn u16s(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}
pub fn u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}
pub fn u64s(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Collects mismatches and panics with the first few of them.
pub struct Failures {
    what: String,
    count: usize,
    shown: Vec<String>,
}

impl Failures {
    pub fn new(what: impl Into<String>) -> Self {
        Failures {
            what: what.into(),
            count: 0,
            shown: Vec::new(),
        }
    }
    pub fn add(&mut self, msg: impl FnOnce() -> String) {
        self.count += 1;
        if self.shown.len() < 12 {
            self.shown.push(msg());
        }
    }
    pub fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.add(msg);
        }
    }
    pub fn finish(self, total: usize) {
        assert!(
            self.count == 0,
            "{}: {} of {} cases disagree, e.g.:\n  {}",
            self.what,
            self.count,
            total,
            self.shown.join("\n  ")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Random numbers
// ---------------------------------------------------------------------------------------------

/// SplitMix64: small, seeded and good enough to pick test inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn u32(&mut self) -> u32 {
        (self.u64() >> 32) as u32
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.u64() as u128 * n as u128) >> 64) as u64
    }
    pub fn range_i32(&mut self, lo: i32, hi: i32) -> i32 {
        lo + self.below((hi as i64 - lo as i64 + 1) as u64) as i32
    }
    pub fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

/// f32 bit patterns that exercise the corners: zeros, subnormals, the normal boundary, one,
/// the largest values, infinities and NaNs (quiet, signalling, negative).
pub fn f32_specials() -> Vec<u32> {
    let mut v = vec![
        0x0000_0000,
        0x0000_0001,
        0x0000_0002,
        0x0000_0fff,
        0x0040_0000,
        0x007f_ffff,
        0x0080_0000,
        0x0080_0001,
        0x0100_0000,
        0x3380_0000, // 2^-24
        0x33ff_ffff,
        0x3400_0000,
        0x3e80_0000, // 0.25
        0x3eff_ffff,
        0x3f00_0000, // 0.5
        0x3f00_0001,
        0x3f7f_ffff,
        0x3f80_0000, // 1
        0x3f80_0001,
        0x3fc0_0000, // 1.5
        0x4000_0000, // 2
        0x4020_0000, // 2.5
        0x4040_0000, // 3
        0x4b00_0000, // 2^23
        0x4b7f_ffff,
        0x4e80_0000, // 2^30
        0x4eff_ffff,
        0x4f00_0000, // 2^31
        0x4f7f_ffff,
        0x4f80_0000, // 2^32
        0x477f_e000, // 65504
        0x477f_efff,
        0x477f_f000, // 65520
        0x477f_f001,
        0x4780_0000, // 65536
        0x7f7f_ffff,
        0x7f00_0000,
        0x7f80_0000,
        0x7f80_0001,
        0x7fc0_0000,
        0x7fff_ffff,
    ];
    let neg: Vec<u32> = v.iter().map(|b| b | 0x8000_0000).collect();
    v.extend(neg);
    v
}

/// A random f32 bit pattern, drawn so that every exponent (subnormals and specials included) is
/// common: a uniformly random pattern a quarter of the time, otherwise a random exponent field
/// with a random mantissa, sometimes with few mantissa bits set (near ties and exact cases).
pub fn rand_f32_bits(r: &mut Rng) -> u32 {
    match r.below(8) {
        0 | 1 => r.u32(),
        2 => r.pick(&f32_specials()),
        _ => {
            let sign = r.u32() & 0x8000_0000;
            let e = r.below(256) as u32;
            let mut m = r.u32() & 0x7f_ffff;
            if r.below(3) == 0 {
                // a short mantissa: exact results and ties are common
                m &= 0x7f_ffff << r.below(24);
            }
            sign | (e << 23) | m
        }
    }
}

/// A random finite f32 of moderate exponent (|x| in about [2^-30, 2^30]), either sign.
pub fn rand_f32_moderate(r: &mut Rng) -> f32 {
    let sign = r.u32() & 0x8000_0000;
    let e = 97 + r.below(60) as u32;
    let mut m = r.u32() & 0x7f_ffff;
    if r.below(4) == 0 {
        m &= 0x7f_ffff << r.below(24);
    }
    f32::from_bits(sign | (e << 23) | m)
}

// ---------------------------------------------------------------------------------------------
// Exact floating-point reference
// ---------------------------------------------------------------------------------------------

/// A binary interchange format: stored mantissa bits and exponent bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fmt {
    pub man: u32,
    pub exp: u32,
}

pub const F32: Fmt = Fmt { man: 23, exp: 8 };
pub const F16: Fmt = Fmt { man: 10, exp: 5 };
pub const BF16: Fmt = Fmt { man: 7, exp: 8 };

impl Fmt {
    pub fn bias(self) -> i32 {
        (1 << (self.exp - 1)) - 1
    }
    pub fn sign_bit(self) -> u32 {
        1 << (self.man + self.exp)
    }
    pub fn inf(self) -> u32 {
        ((1 << self.exp) - 1) << self.man
    }
    pub fn max_finite(self) -> u32 {
        self.inf() - 1
    }
    pub fn is_nan(self, b: u32) -> bool {
        let mag = b & (self.sign_bit() - 1);
        mag > self.inf()
    }
    pub fn is_subnormal(self, b: u32) -> bool {
        let mag = b & (self.sign_bit() - 1);
        mag != 0 && mag < (1 << self.man)
    }
    /// The next representable value towards +inf (`b` not NaN, not +inf).
    pub fn next_up(self, b: u32) -> u32 {
        let s = self.sign_bit();
        if b == s {
            1
        } else if b & s == 0 {
            b + 1
        } else {
            b - 1
        }
    }
    /// The next representable value towards -inf (`b` not NaN, not -inf).
    pub fn next_down(self, b: u32) -> u32 {
        let s = self.sign_bit();
        if b == 0 {
            s | 1
        } else if b & s == 0 {
            b - 1
        } else {
            b + 1
        }
    }
    /// Decomposes finite bits into (neg, m, e) with value (-1)^neg * m * 2^e.
    pub fn decompose(self, b: u32) -> Exact {
        let neg = b & self.sign_bit() != 0;
        let ef = (b >> self.man) & ((1 << self.exp) - 1);
        let mf = b & ((1 << self.man) - 1);
        assert!(ef != (1 << self.exp) - 1, "decompose of inf/NaN");
        let emin_q = 1 - self.bias() - self.man as i32;
        if ef == 0 {
            Exact {
                neg,
                m: mf as u128,
                e: emin_q,
            }
        } else {
            Exact {
                neg,
                m: (mf | (1 << self.man)) as u128,
                e: ef as i32 - self.bias() - self.man as i32,
            }
        }
    }
}

/// The four rounding modes (PTX `.rn`, `.rz`, `.rm`, `.rp`; ISA §6.5.2, Table 17).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Rn,
    Rz,
    Rm,
    Rp,
}

pub const MODES: [Mode; 4] = [Mode::Rn, Mode::Rz, Mode::Rm, Mode::Rp];

impl Mode {
    pub fn ptx(self) -> &'static str {
        match self {
            Mode::Rn => "rn",
            Mode::Rz => "rz",
            Mode::Rm => "rm",
            Mode::Rp => "rp",
        }
    }
}

/// An exact value (-1)^neg * m * 2^e (m = 0 is a zero of that sign).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exact {
    pub neg: bool,
    pub m: u128,
    pub e: i32,
}

fn bitlen(m: u128) -> i32 {
    128 - m.leading_zeros() as i32
}

/// Rounds (-1)^neg * (m + d) * 2^e to `fmt` in `mode`, where d = 0 if `!sticky` and 0 < d < 1
/// otherwise. With `sticky` the rounding point must lie at least one bit above bit 0 of `m`
/// (the callers give `m` many more significant bits than the format has). An exact zero
/// (m = 0, !sticky) returns a zero with sign `neg`.
pub fn round_exact(neg: bool, m: u128, e: i32, sticky: bool, fmt: Fmt, mode: Mode) -> u32 {
    let sign = if neg { fmt.sign_bit() } else { 0 };
    if m == 0 {
        assert!(!sticky);
        return sign;
    }
    let p = fmt.man as i32 + 1;
    let emin = 1 - fmt.bias();
    let emax = fmt.bias();
    let top = e + bitlen(m) - 1;
    let mut q = top.max(emin) - (p - 1);
    let shift = q - e;
    // k = floor(value / 2^q); class of the remainder against half a quantum.
    #[derive(PartialEq)]
    enum Rem {
        Exact,
        Below,
        Tie,
        Above,
    }
    let (mut k, rem) = if shift <= 0 {
        assert!(!sticky, "round_exact: too few bits for a sticky value");
        (m << (-shift), Rem::Exact)
    } else if shift >= 129 {
        (0u128, Rem::Below)
    } else {
        let k = if shift == 128 { 0 } else { m >> shift };
        let r = if shift == 128 {
            m
        } else {
            m & ((1u128 << shift) - 1)
        };
        let half = 1u128 << (shift - 1);
        let rem = if r == 0 && !sticky {
            Rem::Exact
        } else if r < half {
            Rem::Below
        } else if r == half && !sticky {
            Rem::Tie
        } else {
            Rem::Above
        };
        (k, rem)
    };
    let inexact = rem != Rem::Exact;
    let up = match mode {
        Mode::Rn => rem == Rem::Above || (rem == Rem::Tie && k & 1 == 1),
        Mode::Rz => false,
        Mode::Rm => neg && inexact,
        Mode::Rp => !neg && inexact,
    };
    if up {
        k += 1;
        if k == 1u128 << p {
            k >>= 1;
            q += 1;
        }
    }
    let normal = k >= 1u128 << (p - 1);
    if normal && q + p - 1 > emax {
        let to_inf = match mode {
            Mode::Rn => true,
            Mode::Rz => false,
            Mode::Rm => neg,
            Mode::Rp => !neg,
        };
        return sign | if to_inf { fmt.inf() } else { fmt.max_finite() };
    }
    if !normal {
        return sign | k as u32;
    }
    let biased = (q + p - 1 + fmt.bias()) as u32;
    sign | (biased << fmt.man) | (k as u32 - (1 << fmt.man))
}

/// Rounds an exact value; a zero result of a sum takes `zero_neg` as its sign.
pub fn round_value(x: Exact, fmt: Fmt, mode: Mode) -> u32 {
    round_exact(x.neg, x.m, x.e, false, fmt, mode)
}

/// The exact sum x + y of two exact values, except that a term far below the other's last bit
/// is replaced by a smaller one of the same sign, which changes no rounding to 24 or fewer bits:
/// the larger term is a multiple of 2^E (its `e`), every rounding boundary near it is a multiple
/// of min(2^E, q/2) for the result's quantum q >= 2^(E-24), and both the true and the
/// replacement term are nonzero, of one sign and below 2^(E-26).
/// The sign of an exact zero sum is not decided here (see [`sum_zero_sign`]).
pub fn add_exact(x: Exact, y: Exact) -> Exact {
    if x.m == 0 {
        return y;
    }
    if y.m == 0 {
        return x;
    }
    let (mut x, mut y) = (x, y);
    if y.e + bitlen(y.m) < x.e - 30 {
        y = Exact {
            neg: y.neg,
            m: 1,
            e: x.e - 40,
        };
    } else if x.e + bitlen(x.m) < y.e - 30 {
        x = Exact {
            neg: x.neg,
            m: 1,
            e: y.e - 40,
        };
    }
    let e = x.e.min(y.e);
    assert!(bitlen(x.m) + (x.e - e) <= 126 && bitlen(y.m) + (y.e - e) <= 126);
    let mx = x.m << (x.e - e);
    let my = y.m << (y.e - e);
    if x.neg == y.neg {
        Exact {
            neg: x.neg,
            m: mx + my,
            e,
        }
    } else if mx >= my {
        Exact {
            neg: x.neg,
            m: mx - my,
            e,
        }
    } else {
        Exact {
            neg: y.neg,
            m: my - mx,
            e,
        }
    }
}

/// IEEE 754 §6.3: the sign of an exact zero sum x + y: the common sign when both terms have it,
/// otherwise +0, except -0 when rounding towards -inf.
pub fn sum_zero_sign(x_neg: bool, y_neg: bool, mode: Mode) -> bool {
    if x_neg == y_neg {
        x_neg
    } else {
        mode == Mode::Rm
    }
}

fn is_special32(b: u32) -> bool {
    b & 0x7f80_0000 == 0x7f80_0000
}

/// Rounds an exact sum to f32 with the zero-sign rule.
fn round_sum(s: Exact, x_neg: bool, y_neg: bool, mode: Mode) -> u32 {
    if s.m == 0 {
        if sum_zero_sign(x_neg, y_neg, mode) {
            0x8000_0000
        } else {
            0
        }
    } else {
        round_value(s, F32, mode)
    }
}

/// a + b rounded in `mode` (IEEE 754 addition; NaN results are returned as 0x7fc00000 and must
/// only be compared for NaN-ness).
pub fn add_f32(a: u32, b: u32, mode: Mode) -> u32 {
    if is_special32(a) || is_special32(b) {
        return special(f32::from_bits(a) as f64 + f32::from_bits(b) as f64);
    }
    let (x, y) = (F32.decompose(a), F32.decompose(b));
    round_sum(add_exact(x, y), x.neg, y.neg, mode)
}

pub fn sub_f32(a: u32, b: u32, mode: Mode) -> u32 {
    if b & 0x7f80_0000 == 0x7f80_0000 && b & 0x7f_ffff != 0 {
        return 0x7fc0_0000; // NaN stays NaN whatever its sign
    }
    add_f32(a, b ^ 0x8000_0000, mode)
}

pub fn mul_f32(a: u32, b: u32, mode: Mode) -> u32 {
    if is_special32(a) || is_special32(b) {
        return special(f32::from_bits(a) as f64 * f32::from_bits(b) as f64);
    }
    let (x, y) = (F32.decompose(a), F32.decompose(b));
    round_exact(x.neg != y.neg, x.m * y.m, x.e + y.e, false, F32, mode)
}

/// a * b + c with a single rounding (ISA §9.7.3.6: "computes the product of a and b to infinite
/// precision and then adds c to this product, again in infinite precision").
pub fn fma_f32(a: u32, b: u32, c: u32, mode: Mode) -> u32 {
    if is_special32(a) || is_special32(b) || is_special32(c) {
        let (fa, fb, fc) = (
            f32::from_bits(a) as f64,
            f32::from_bits(b) as f64,
            f32::from_bits(c) as f64,
        );
        return special(fa * fb + fc);
    }
    let (x, y, z) = (F32.decompose(a), F32.decompose(b), F32.decompose(c));
    let p = Exact {
        neg: x.neg != y.neg,
        m: x.m * y.m,
        e: x.e + y.e,
    };
    round_sum(add_exact(p, z), p.neg, z.neg, mode)
}

/// a / b correctly rounded (IEEE 754 division).
pub fn div_f32(a: u32, b: u32, mode: Mode) -> u32 {
    let (fa, fb) = (f32::from_bits(a), f32::from_bits(b));
    if is_special32(a) || is_special32(b) || fa == 0.0 || fb == 0.0 {
        return special(fa as f64 / fb as f64);
    }
    let (x, y) = (F32.decompose(a), F32.decompose(b));
    let sh = 100 - bitlen(x.m);
    let num = x.m << sh;
    let qm = num / y.m;
    let sticky = !num.is_multiple_of(y.m);
    round_exact(x.neg != y.neg, qm, x.e - sh - y.e, sticky, F32, mode)
}

/// An infinite, zero or NaN result computed in f64 (exact for these cases).
fn special(v: f64) -> u32 {
    if v.is_nan() {
        0x7fc0_0000
    } else {
        assert!(
            v.is_infinite() || v == 0.0 || v.abs() < 1e30,
            "special: {v}"
        );
        (v as f32).to_bits()
    }
}

/// Directed rounding of an f32 to f16/bf16 built on the `half` crate's round-to-nearest: the
/// nearest-even result is one of the two representable neighbours of x; the other is its
/// successor or predecessor. `None` for NaN inputs.
pub fn narrow_by_half(x: f32, fmt: Fmt, mode: Mode) -> Option<u32> {
    if x.is_nan() {
        return None;
    }
    let (rn, back): (u32, f32) = if fmt == F16 {
        let h = half::f16::from_f32(x);
        (h.to_bits() as u32, h.to_f32())
    } else {
        assert_eq!(fmt, BF16);
        let h = half::bf16::from_f32(x);
        (h.to_bits() as u32, h.to_f32())
    };
    if back == x || mode == Mode::Rn {
        // exact (zeros keep their sign, infinities stay), or nearest-even wanted
        return Some(rn);
    }
    let (down, up) = if back < x {
        (rn, fmt.next_up(rn))
    } else {
        (fmt.next_down(rn), rn)
    };
    Some(match mode {
        Mode::Rm => down,
        Mode::Rp => up,
        Mode::Rz => {
            if x > 0.0 {
                down
            } else {
                up
            }
        }
        Mode::Rn => unreachable!(),
    })
}

/// Orders f32 bit patterns as integers in value order (for ulp distances).
pub fn ordered(b: u32) -> i64 {
    if b & 0x8000_0000 != 0 {
        -((b & 0x7fff_ffff) as i64)
    } else {
        b as i64
    }
}

pub fn ulp_distance(a: u32, b: u32) -> u64 {
    (ordered(a) - ordered(b)).unsigned_abs()
}

/// Flushes an f32 subnormal to a zero of its sign.
pub fn ftz(b: u32) -> u32 {
    if F32.is_subnormal(b) {
        b & 0x8000_0000
    } else {
        b
    }
}

// ---------------------------------------------------------------------------------------------
// Self-tests of the reference (no executor involved)
// ---------------------------------------------------------------------------------------------

/// Checks the exact reference against the host's IEEE arithmetic (round-to-nearest-even) and
/// against a second, independent directed rounding of values that are exact in f64.
pub fn self_test_reference() {
    let mut r = Rng::new(0x5eed);
    // directed rounding of an f64-exact value, by the neighbours of the nearest f32
    let directed64 = |v: f64, mode: Mode| -> u32 {
        let rn = (v as f32).to_bits();
        let back = f32::from_bits(rn) as f64;
        if back == v || mode == Mode::Rn {
            return rn;
        }
        let (down, up) = if back < v {
            (rn, F32.next_up(rn))
        } else {
            (F32.next_down(rn), rn)
        };
        match mode {
            Mode::Rm => down,
            Mode::Rp => up,
            Mode::Rz => {
                if v > 0.0 {
                    down
                } else {
                    up
                }
            }
            Mode::Rn => unreachable!(),
        }
    };
    let same = |x: u32, y: u32| x == y || (F32.is_nan(x) && F32.is_nan(y));
    for i in 0..200_000 {
        let (a, b, c) = if i % 2 == 0 {
            (
                rand_f32_bits(&mut r),
                rand_f32_bits(&mut r),
                rand_f32_bits(&mut r),
            )
        } else {
            let a = rand_f32_moderate(&mut r);
            let b = rand_f32_moderate(&mut r);
            let c = -(a * b) * (1.0 + (r.below(5) as f32 - 2.0) * f32::EPSILON);
            (a.to_bits(), b.to_bits(), c.to_bits())
        };
        let (fa, fb, fc) = (f32::from_bits(a), f32::from_bits(b), f32::from_bits(c));
        assert!(
            same(add_f32(a, b, Mode::Rn), (fa + fb).to_bits()),
            "add {a:08x} {b:08x}"
        );
        assert!(
            same(sub_f32(a, b, Mode::Rn), (fa - fb).to_bits()),
            "sub {a:08x} {b:08x}"
        );
        assert!(
            same(mul_f32(a, b, Mode::Rn), (fa * fb).to_bits()),
            "mul {a:08x} {b:08x}"
        );
        assert!(
            same(div_f32(a, b, Mode::Rn), (fa / fb).to_bits()),
            "div {a:08x} {b:08x}"
        );
        assert!(
            same(fma_f32(a, b, c, Mode::Rn), fa.mul_add(fb, fc).to_bits()),
            "fma {a:08x} {b:08x} {c:08x}"
        );
        if !is_special32(a) && !is_special32(b) {
            // products of two f32 are exact in f64
            let p = fa as f64 * fb as f64;
            for mode in MODES {
                assert_eq!(
                    mul_f32(a, b, mode),
                    directed64(p, mode),
                    "mul {mode:?} {a:08x} {b:08x}"
                );
            }
            // sums are exact in f64 when the exponents are close
            // (Knuth's TwoSum: the rounding error of the f64 sum, exactly)
            let (da, db) = (fa as f64, fb as f64);
            let s = da + db;
            let bb = s - da;
            let err = (da - (s - bb)) + (db - bb);
            if err == 0.0 && s != 0.0 {
                for mode in MODES {
                    assert_eq!(
                        add_f32(a, b, mode),
                        directed64(s, mode),
                        "add {mode:?} {a:08x} {b:08x}"
                    );
                }
            }
        }
        // conversions: the exact rounder against the `half` crate's
        if !is_special32(a) {
            let x = F32.decompose(a);
            for fmt in [F16, BF16] {
                for mode in MODES {
                    assert_eq!(
                        Some(round_value(x, fmt, mode)),
                        narrow_by_half(fa, fmt, mode),
                        "narrow {fmt:?} {mode:?} {a:08x}"
                    );
                }
            }
        }
    }
}

/// Decomposes a finite f64 into an exact value.
pub fn decompose_f64(b: u64) -> Exact {
    let neg = b >> 63 != 0;
    let ef = ((b >> 52) & 0x7ff) as i32;
    let mf = b & ((1 << 52) - 1);
    assert!(ef != 0x7ff, "decompose of inf/NaN");
    if ef == 0 {
        Exact {
            neg,
            m: mf as u128,
            e: -1074,
        }
    } else {
        Exact {
            neg,
            m: (mf | (1 << 52)) as u128,
            e: ef - 1075,
        }
    }
}

/// Little-endian words of `width` bytes (2, 4 or 8), widened to u64.
pub fn words(b: &[u8], width: usize) -> Vec<u64> {
    match width {
        2 => u16s(b).into_iter().map(u64::from).collect(),
        4 => u32s(b).into_iter().map(u64::from).collect(),
        8 => u64s(b),
        _ => panic!("width {width}"),
    }
}

/// Runs the one-instruction kernel `<instr> %out0, %in0;` over `n` elements of type `src`,
/// giving `n` results of type `dst` as u64 words; `None` when the form is unsupported.
pub fn unary(dev: &Device, instr: &str, src: &str, dst: &str, input: &[u8]) -> Option<Vec<u64>> {
    let n = input.len() / type_bytes(src);
    let ptx = map_ptx(&[src], &[dst], "", &format!("{instr} %out0, %in0;"));
    let w = type_bytes(dst);
    map_run(dev, instr, &ptx, &[input], &[n * w], n).map(|v| words(&v[0], w))
}
