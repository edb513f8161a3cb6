//! Intel AMX (Advanced Matrix Extensions) for the bf16 product (`cpu::gemm_bf16`): detection,
//! the Linux permission to use the tile registers, the tile configuration, and one wrapper per
//! tile instruction. Stable Rust has no AMX intrinsics, so each instruction is one `asm!`
//! statement; this module is the crate's whole unsafe surface for AMX.
//!
//! The product uses one shape for all eight tiles: 16 rows of 64 bytes (16 f32 accumulators, or
//! 32 bf16 values, per row). `tdpbf16ps` multiplies an A tile (16 rows × 32 bf16, row-major) by a
//! B tile in the "VNNI" layout (16 rows of 16 column pairs: row q holds, for each column j,
//! B(2q, j) then B(2q+1, j)) and adds the 16 × 16 f32 result to a C tile. Each pair of products is
//! summed exactly and added to the f32 accumulator (Intel SDM, TDPBF16PS), with denormal inputs
//! and outputs flushed to zero.
//!
//! The tile registers are never touched by compiled Rust, so they keep their values from one
//! `asm!` statement to the next on the same thread; a thread configures them (`configure`)
//! before its first tile instruction and releases them (`release`) when done.
//!
//! Tested below: the permission request, the configuration round trip, and `tdpbf16ps` against a
//! scalar reference on random values; the product through it in `cpu::gemm_bf16`.

use std::arch::asm;
use std::sync::OnceLock;

/// Tile registers: C accumulators (0–3), A operands (4, 5), B operands (6, 7).
pub(crate) const ROWS: usize = 16;
/// Bytes per tile row.
pub(crate) const ROW_BYTES: usize = 64;

/// Whether this CPU has AMX-TILE and AMX-BF16, the OS saves the tile state, and the process
/// may use it (asked of Linux once); false elsewhere.
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| cpu_has_amx_bf16() && os_saves_tiles() && request_permission())
}

/// CPUID.(EAX=7, ECX=0):EDX bit 22 (AMX-BF16) and bit 24 (AMX-TILE), with AVX-512F for the
/// packing around the tiles.
fn cpu_has_amx_bf16() -> bool {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        return false;
    }
    // Leaf 7 exists where AVX-512F does.
    let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

/// XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA): the OS context-switches the tile state.
fn os_saves_tiles() -> bool {
    let osxsave = std::arch::x86_64::__cpuid(1).ecx & (1 << 27) != 0;
    if !osxsave {
        return false;
    }
    // SAFETY: XGETBV with ECX = 0 is available where CPUID reports OSXSAVE.
    let xcr0 = unsafe { std::arch::x86_64::_xgetbv(0) };
    xcr0 & (0b11 << 17) == 0b11 << 17
}

/// Asks Linux for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`,
/// Linux 5.16+); the permission covers every thread of the process. False where refused.
#[cfg(target_os = "linux")]
fn request_permission() -> bool {
    const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these codes reads or writes only the kernel's permission bitmap
    // and the u64 we pass.
    unsafe {
        if libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) != 0
        {
            return false;
        }
        let mut granted: u64 = 0;
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_GET_XCOMP_PERM,
            &mut granted as *mut u64,
        ) == 0
            && granted & (1 << XFEATURE_XTILEDATA) != 0
    }
}

/// Other systems: AMX is not used (no portable way to ask for the tile state).
#[cfg(not(target_os = "linux"))]
fn request_permission() -> bool {
    false
}

/// The 64-byte tile configuration (palette 1): every one of the eight tiles 16 rows × 64 bytes.
#[repr(C, align(64))]
struct Config([u8; 64]);

impl Config {
    fn uniform() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1; // palette
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&(ROW_BYTES as u16).to_le_bytes());
            c[48 + t] = ROWS as u8;
        }
        Config(c)
    }
}

/// Configures this thread's tiles as `Config::uniform` (every tile zeroed).
///
/// # Safety
/// `available()` must be true.
#[inline]
pub(crate) unsafe fn configure() {
    let cfg = Config::uniform();
    // SAFETY: the caller checked AMX and the permission; the configuration is valid.
    unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
}

/// Returns the tiles to their initial state (so that context switches save nothing more).
///
/// # Safety
/// `available()` must be true.
#[inline]
pub(crate) unsafe fn release() {
    // SAFETY: as for `configure`.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// Zeroes tile `T`.
///
/// # Safety
/// The thread's tiles are configured.
#[inline(always)]
pub(crate) unsafe fn zero<const T: u8>() {
    // SAFETY: the caller configured the tiles.
    unsafe { asm!("tilezero tmm{t}", t = const T, options(nostack, nomem)) };
}

/// Loads tile `T` from 16 rows of 64 bytes at `src`, `stride` bytes apart.
///
/// # Safety
/// The thread's tiles are configured; the 16 rows lie in readable memory.
#[inline(always)]
pub(crate) unsafe fn load<const T: u8>(src: *const u8, stride: usize) {
    // SAFETY: the caller vouches for the memory.
    unsafe {
        asm!("tileloadd tmm{t}, [{p} + {s}*1]", t = const T, p = in(reg) src, s = in(reg) stride,
             options(nostack, readonly))
    };
}

/// Stores tile `T` as 16 rows of 64 bytes at `dst`, `stride` bytes apart.
///
/// # Safety
/// The thread's tiles are configured; the 16 rows lie in writable memory no reference holds.
#[inline(always)]
pub(crate) unsafe fn store<const T: u8>(dst: *mut u8, stride: usize) {
    // SAFETY: the caller vouches for the memory.
    unsafe {
        asm!("tilestored [{p} + {s}*1], tmm{t}", t = const T, p = in(reg) dst, s = in(reg) stride,
             options(nostack))
    };
}

/// `tile C += tile A · tile B` (bf16 pairs, f32 accumulation).
///
/// # Safety
/// The thread's tiles are configured.
#[inline(always)]
pub(crate) unsafe fn dot<const C: u8, const A: u8, const B: u8>() {
    // SAFETY: the caller configured the tiles; the instruction touches no memory.
    unsafe {
        asm!("tdpbf16ps tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B,
             options(nostack, nomem))
    };
}

/// Runs `iters` rounds of four `tdpbf16ps` on tiles already in the registers (no memory
/// operands): the tile unit's peak, the upper bound of every bf16 kernel here, for benches.
/// Returns the flops done.
///
/// # Safety
/// `available()` must be true.
pub(crate) unsafe fn peak_loop(iters: usize) -> f64 {
    // SAFETY: the caller checked AMX; the tiles are configured before use and released.
    unsafe {
        configure();
        for _ in 0..iters {
            dot::<0, 4, 6>();
            dot::<1, 4, 7>();
            dot::<2, 5, 6>();
            dot::<3, 5, 7>();
        }
        release();
    }
    (iters * 4 * ROWS * ROWS * 32 * 2) as f64
}

/// f32 → bf16 bits, rounding to nearest even; NaN stays NaN (quieted), as PyTorch converts.
pub(crate) fn bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if x.is_nan() {
        return ((u >> 16) | 0x40) as u16;
    }
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// bf16 bits → f32 (exact).
#[cfg(test)]
fn bf16_value(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn bf16_rounds_to_nearest_even_like_half() {
        for x in values(4096, 3).into_iter().chain([
            0.0,
            -0.0,
            1.0,
            f32::INFINITY,
            f32::MIN_POSITIVE,
            3.0e38,
        ]) {
            assert_eq!(bf16_bits(x), half::bf16::from_f32(x).to_bits(), "{x:e}");
        }
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
        // Ties go to even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7.
        assert_eq!(bf16_value(bf16_bits(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(bf16_value(bf16_bits(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
    }

    /// One tile product against a scalar reference: tile C (preloaded with values) += A · B,
    /// with A 16 × 32 and B 32 × 16 in bf16.
    #[test]
    fn tdpbf16ps_matches_a_scalar_product() {
        if !available() {
            eprintln!("no AMX-BF16 on this CPU (or the OS refused the tile state): skipped");
            assert!(!cpu_has_amx_bf16() || !os_saves_tiles() || !request_permission());
            return;
        }
        let a: Vec<u16> = values(16 * 32, 1).into_iter().map(bf16_bits).collect();
        let bmat: Vec<u16> = values(32 * 16, 2).into_iter().map(bf16_bits).collect();
        let c0 = values(16 * 16, 3);
        // VNNI: row q, column j holds B(2q, j), B(2q+1, j).
        let mut b = vec![0u16; 32 * 16];
        for q in 0..16 {
            for j in 0..16 {
                b[q * 32 + 2 * j] = bmat[(2 * q) * 16 + j];
                b[q * 32 + 2 * j + 1] = bmat[(2 * q + 1) * 16 + j];
            }
        }
        let mut c = c0.clone();
        // SAFETY: AMX is available; each buffer is 16 rows of 64 bytes.
        unsafe {
            configure();
            load::<0>(c.as_ptr().cast(), 64);
            load::<4>(a.as_ptr().cast(), 64);
            load::<6>(b.as_ptr().cast(), 64);
            dot::<0, 4, 6>();
            store::<0>(c.as_mut_ptr().cast(), 64);
            release();
        }
        for i in 0..16 {
            for j in 0..16 {
                let want: f64 = c0[i * 16 + j] as f64
                    + (0..32)
                        .map(|p| {
                            bf16_value(a[i * 32 + p]) as f64 * bf16_value(bmat[p * 16 + j]) as f64
                        })
                        .sum::<f64>();
                let got = c[i * 16 + j] as f64;
                assert!(
                    (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                    "({i}, {j}): {got} vs {want}"
                );
            }
        }
        // A second product on the same configuration, from a zeroed tile.
        let mut d = vec![1.0f32; 256];
        // SAFETY: as above.
        unsafe {
            configure();
            zero::<1>();
            load::<5>(a.as_ptr().cast(), 64);
            load::<7>(b.as_ptr().cast(), 64);
            dot::<1, 5, 7>();
            store::<1>(d.as_mut_ptr().cast(), 64);
            release();
        }
        for (i, (&dv, &cv)) in d.iter().zip(&c).enumerate() {
            assert!(
                (dv - (cv - c0[i])).abs() < 1e-4,
                "{i}: {dv} vs {}",
                cv - c0[i]
            );
        }
    }
}
