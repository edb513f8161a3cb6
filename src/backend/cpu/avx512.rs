//! AVX-512 building blocks shared by the CPU's hand-written kernels (`gemm_avx512`,
//! `attention_flash`, `attention_amx`): lane masks and the 16 × 16 register transpose they pack
//! operands with, and the exponential of the attention kernels' softmax.

use std::arch::x86_64::*;

/// The mask of the first `n` of 16 lanes (all of them for n ≥ 16).
pub(crate) fn lane_mask(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// The 16 × 16 transpose: `out[c]` lane i = `r[i]` lane c. Unpacks within 128-bit lanes, then
/// two rounds of 128-bit shuffles (the test checks the index algebra).
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) fn transpose16(r: &[__m512; 16]) -> [__m512; 16] {
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4g + c], 128-bit lane L: rows 4g..4g+4 of column 4L + c.
    let mut u = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        let (a, b, c, d) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
        u[4 * g] = _mm512_shuffle_ps::<0x44>(a, c);
        u[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(a, c);
        u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(b, d);
        u[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(b, d);
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let x = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
        let y = _mm512_shuffle_f32x4::<0xDD>(u[c], u[4 + c]);
        let z = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
        let w = _mm512_shuffle_f32x4::<0xDD>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(x, z);
        out[8 + c] = _mm512_shuffle_f32x4::<0xDD>(x, z);
        out[4 + c] = _mm512_shuffle_f32x4::<0x88>(y, w);
        out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(y, w);
    }
    out
}

/// e^x on 16 lanes: `vector::exp`'s Cephes polynomial (clamp to [−87.34, 88.72], range
/// reduction by ln 2 in two parts, degree-6 polynomial, then 2^n), with FMAs where the
/// scalar code rounds twice. NaN stays NaN.
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) fn exp16(x: __m512) -> __m512 {
    // The clamp's operand order keeps NaN: max/min return their second operand when
    // either is NaN.
    let x = _mm512_min_ps(
        _mm512_set1_ps(88.722_83),
        _mm512_max_ps(_mm512_set1_ps(-87.336_55), x),
    );
    // As the scalar code, x·log2(e) + 0.5 rounded twice, so n is the same integer.
    let n = _mm512_add_ps(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        _mm512_set1_ps(0.5),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(n);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let y = _mm512_add_ps(
        _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r),
        _mm512_set1_ps(1.0),
    );
    // y·2^n in one instruction: the scalar code's two exact power-of-two factors give the
    // same single rounding (only where the result is subnormal).
    _mm512_scalef_ps(y, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose16_transposes_and_masks_count_lanes() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let x: [f32; 256] = std::array::from_fn(|i| i as f32);
        let mut y = [0f32; 256];
        #[target_feature(enable = "avx512f")]
        unsafe fn go(x: &[f32; 256], y: &mut [f32; 256]) {
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, v) in r.iter_mut().enumerate() {
                // SAFETY: 16 floats at 16·i < 256.
                *v = unsafe { _mm512_loadu_ps(x.as_ptr().add(16 * i)) };
            }
            for (i, v) in transpose16(&r).iter().enumerate() {
                // SAFETY: as above.
                unsafe { _mm512_storeu_ps(y.as_mut_ptr().add(16 * i), *v) };
            }
        }
        // SAFETY: AVX-512F was detected above.
        unsafe { go(&x, &mut y) };
        for r in 0..16 {
            for c in 0..16 {
                assert_eq!(y[c * 16 + r], x[r * 16 + c], "row {r} column {c}");
            }
        }
        assert_eq!(
            [0, 1, 5, 15, 16, 40].map(lane_mask),
            [0, 1, 0x1f, 0x7fff, 0xffff, 0xffff]
        );
    }
}
