//! Elementwise loops the compiler can vectorise: a branch-free `exp`, SiLU, mean/variance,
//! per-channel affine (+SiLU) and softmax rows. The crate is built for baseline x86-64, so each
//! entry point is compiled three times (AVX-512, AVX2+FMA, baseline) and picks one at run time.
//!
//! `exp` is Cephes' `expf`: range reduction by ln 2 and a degree-6 polynomial, within 2 ulp of
//! the correctly rounded result over the float range (PyTorch's vectorised kernels are within
//! 1 ulp), flushing below e^-87.3 to 0 and saturating above e^88.7.
//!
//! The multiversioned loops:
//! - `silu_slice(xs)`: SiLU of every value, in place.
//! - `sum(xs)`: the sum, in f32 lanes folded into f64 per block of 4096.
//! - `sum_sq_dev(xs, mean)`: `Σ (x − mean)²`, accumulated the same way.
//! - `normalize(src, dst, mean, scale, shift, then_silu)`: `dst = (src − mean)·scale + shift`,
//!   then SiLU when `then_silu` (GroupNorm's per-channel affine).
//! - `softmax_row(row)`: softmax in place, the row's maximum subtracted first.

/// Runs `$body` with the best instruction set this CPU has; the body is inlined into each
/// `#[target_feature]` copy so that its loops are vectorised for that set.
macro_rules! multiversion {
    (fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        /// One of this module's multiversioned loops (listed in the module docs), run in its
        /// AVX-512, AVX2+FMA or baseline copy, whichever this CPU has.
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                {
                    // SAFETY: the CPU has the features `v4` was compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above, for `v3`.
                    return unsafe { v3($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// `e^x` by Cephes' `expf` (see the module docs): within 2 ulp, 0 below e^-87.3, saturating
/// above e^88.7; branch-free, so loops over it vectorise.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.336_55, 88.722_83);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * C1 - n * C2;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n by building the exponent bits; n is in [-126, 128] after the clamp, and 2^128 is
    // reached only together with a mantissa below 1, so split it into two factors. n to an
    // integer by adding 1.5·2^23, which leaves n in the low mantissa bits: `n as i32` would be
    // the same numbers, but its saturating cast is scalarised (16 conversions per vector).
    // NaN gives some exponent, and y stays NaN.
    let ni = (n + 12_582_912.0).to_bits().wrapping_sub(0x4B40_0000) as i32;
    let half = ni / 2;
    let a = f32::from_bits((half.wrapping_add(127) as u32) << 23);
    let b = f32::from_bits((ni.wrapping_sub(half).wrapping_add(127) as u32) << 23);
    y * a * b
}

/// SiLU, `x / (1 + e^−x)`, with this module's `exp`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// Exact (erf-form) GELU, `x · Φ(x) = ½·x·erfc(−x/√2)`, branch-free so loops vectorise: erfc by
/// Numerical Recipes' Chebyshev fit `t·e^(−z² + P(t))`, t = 1/(1 + z/2) (fractional error below
/// 1.2e-7 for every z ≥ 0), with this module's `exp`; erfc(−z) = 2 − erfc(z).
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = 0.170_872_77;
    let p = p * t - 0.822_152_23;
    let p = p * t + 1.488_515_9;
    let p = p * t - 1.135_204;
    let p = p * t + 0.278_868_07;
    let p = p * t - 0.186_288_06;
    let p = p * t + 0.096_784_18;
    let p = p * t + 0.374_091_96;
    let p = p * t + 1.000_023_7;
    let p = p * t - 1.265_512_2;
    let erfc_z = t * exp(p - z * z);
    let erfc_neg = if x >= 0.0 { 2.0 - erfc_z } else { erfc_z };
    0.5 * x * erfc_neg
}

multiversion! {
    fn gelu_slice(xs: &mut [f32]) {
        for v in xs.iter_mut() {
            *v = gelu(*v);
        }
    }
}

multiversion! {
    fn geglu_row(out: &mut [f32], h: &[f32], gate: &[f32]) {
        for ((o, &h), &g) in out.iter_mut().zip(h).zip(gate) {
            *o = h * gelu(g);
        }
    }
}

multiversion! {
    fn silu_slice(xs: &mut [f32]) {
        for v in xs.iter_mut() {
            *v = silu(*v);
        }
    }
}

multiversion! {
    fn sum(xs: &[f32]) -> f64 {
        // 16 f32 lanes per block, folded into f64 per block: vectorised, and accurate to far
        // below the tolerances downstream.
        let mut total = 0f64;
        for block in xs.chunks(4096) {
            let mut lanes = [0f32; 16];
            let mut it = block.chunks_exact(16);
            for c in &mut it {
                for (l, v) in lanes.iter_mut().zip(c) {
                    *l += v;
                }
            }
            total += lanes.iter().map(|&l| l as f64).sum::<f64>()
                + it.remainder().iter().map(|&v| v as f64).sum::<f64>();
        }
        total
    }
}

multiversion! {
    fn sum_sq_dev(xs: &[f32], mean: f32) -> f64 {
        let mut total = 0f64;
        for block in xs.chunks(4096) {
            let mut lanes = [0f32; 16];
            let mut it = block.chunks_exact(16);
            for c in &mut it {
                for (l, v) in lanes.iter_mut().zip(c) {
                    let d = v - mean;
                    *l += d * d;
                }
            }
            total += lanes.iter().map(|&l| l as f64).sum::<f64>()
                + it
                    .remainder()
                    .iter()
                    .map(|&v| ((v - mean) as f64).powi(2))
                    .sum::<f64>();
        }
        total
    }
}

/// Mean and biased variance (two passes).
pub fn mean_var(xs: &[f32]) -> (f32, f32) {
    let n = xs.len() as f64;
    let mean = (sum(xs) / n) as f32;
    (mean, (sum_sq_dev(xs, mean) / n) as f32)
}

multiversion! {
    fn normalize(src: &[f32], dst: &mut [f32], mean: f32, scale: f32, shift: f32, then_silu: bool) {
        if then_silu {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = silu((s - mean) * scale + shift);
            }
        } else {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = (s - mean) * scale + shift;
            }
        }
    }
}

multiversion! {
    fn softmax_row(row: &mut [f32]) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for v in row.iter_mut() {
            *v = exp(*v - max);
            sum += *v;
        }
        let inv = 1.0 / sum;
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}
