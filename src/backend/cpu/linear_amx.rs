//! The bf16 linear layer on AMX tiles, `y = x·Wᵀ + b` for `--dtype bf16`: the 1 × 1 case of
//! `conv_amx`'s tile convolution. A linear layer's input rows are already positions of `in`
//! channels, so the "image" is `x` converted to bf16 row by row (no transpose), the output is
//! the kernel's position-major accumulator itself (no copy out), and the weights
//! (`[out, in]`, a 1 × 1 kernel's layout) are packed once per layer as VNNI tiles and kept in
//! `cpu::pack_cache`. The accumulators start from the bias (a tile load with stride 0), so every
//! output is `b + Σ` in depth order, as the generic bf16 product sums it. MaskUNet masks: each
//! sample's `W ⊙ M_b` is packed for it and its rows run alone (all-ones masks give the dense
//! output bit for bit).
//!
//! Limits: `in` a multiple of 32 and `out` of 16 (`takes`), else the generic bf16 product
//! (`cpu::gemm_bf16`) runs; needs AMX-BF16. Accuracy: operands rounded to bf16, f32
//! accumulation (`cpu::gemm_bf16`'s contract).
//!
//! Tested below against an f64 product of the rounded operands (dense, masked, cached) and
//! through the U-Net goldens of `tests/cpu_bf16.rs`; benched by `benches/gemm_bf16.rs`'s linear
//! rows against the f32 product.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::conv_amx::{aligned_mut, Job, Samples, ALIGN_PAD};
use crate::boosters::masks::MaskFn;
use crate::error::Result;
use crate::tensor::{numel_of, try_zeroed_vec, Scratch, Tensor};

/// Whether a layer of `in_f` inputs and `out_f` outputs runs here (with `geglu`, as GEGLU's
/// projection: halves of whole strips).
pub(crate) fn takes(in_f: usize, out_f: usize, geglu: bool) -> bool {
    super::conv_amx::takes(in_f, out_f, 1) && (!geglu || out_f.is_multiple_of(32))
}

/// `x` [B, ..., in] · `weight`ᵀ [in, out] (+ bias) in bf16, as `[B, ..., out]`, or with `geglu`
/// GEGLU of it (`h · gelu(gate)` of its halves, as `[B, ..., out/2]`, the wide product never
/// stored); `key` keeps the packed weights under the layer's uid, `mask(b)` masks sample b's
/// weights. The caller checked the shapes (`linear::check_linear`, rank ≥ 2) and that `takes`
/// holds.
pub(crate) fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&[f32]>,
    key: Option<u64>,
    mask: Option<MaskFn>,
    geglu: bool,
) -> Result<Tensor> {
    let (out_f, in_f) = (weight.shape()[0], weight.shape()[1]);
    let out_cols = if geglu { out_f / 2 } else { out_f };
    let rows = x.numel() / in_f;
    let samples = x.shape()[0];
    // Whole micro blocks past the last row, and one more for a masked call's last sample,
    // whose blocks start at its own first row.
    let acc_rows = rows.next_multiple_of(32) + 32;
    let image_len = numel_of(&[acc_rows, in_f / 2], "linear bf16 input")?;
    let mut image = Scratch::zeroed(image_len + ALIGN_PAD, "linear bf16 input")?;
    let image = aligned_mut(&mut image, image_len);
    to_bf16_rows(x.data(), in_f, image);
    let mut out = try_zeroed_vec(
        numel_of(&[acc_rows, out_cols], "linear output")?,
        "linear output",
    )?;
    // The accumulators start from the bias, loaded as tiles: aligned, as tile loads want.
    let mut bias_tiles = Scratch::zeroed(out_f + ALIGN_PAD, "linear bias")?;
    let bias_tiles = aligned_mut(&mut bias_tiles, out_f);
    if let Some(b) = bias {
        bias_tiles.copy_from_slice(b);
    }
    let bias_ptr = bias_tiles.as_ptr();
    let acc = out.as_mut_ptr();
    let job = |weights: &[f32]| Job {
        image: image.as_ptr().cast(),
        weights: weights.as_ptr().cast(),
        acc,
        bias: bias_ptr,
        cin: in_f,
        cout: out_f,
        k: 1,
        wp: 1,
        stride: 1,
        depth_tiles: in_f / 32,
        gate: if geglu { out_cols } else { 0 },
    };
    let per_sample = rows.checked_div(samples).unwrap_or(0);
    let split = Samples {
        count: samples,
        stride: per_sample,
        positions: per_sample,
        all: rows.next_multiple_of(32),
    };
    if rows > 0 {
        // SAFETY: AMX is available (`takes`); `image` and `out` hold acc_rows positions, past
        // every sample's padded rows (the last sample's end at most rows + 31 < acc_rows), and
        // the bias `out_f` values.
        unsafe { split.run(weight, (in_f, 1), key, mask, job)? };
    }
    out.truncate(rows * out_cols);
    let mut shape = crate::Shape::from(x.shape());
    *shape.last_mut().expect("rank ≥ 2") = out_cols;
    Ok(Tensor::from_parts(shape, out))
}

/// `x`'s rows of `in_f` f32 to bf16 (nearest even) at the start of `image`, in parallel.
fn to_bf16_rows(x: &[f32], in_f: usize, image: &mut [f32]) {
    const ROWS: usize = 64;
    let dst: &mut [u16] = bytemuck::cast_slice_mut(image);
    dst[..x.len()]
        .par_chunks_mut(ROWS * in_f)
        .zip(x.par_chunks(ROWS * in_f))
        .for_each(|(d, s)| {
            // SAFETY: AVX-512F comes with AMX (`takes`); both chunks hold the same count, a
            // multiple of 16 (in_f is a multiple of 32).
            unsafe { convert(s, d) }
        });
}

/// `src` to bf16 in `dst`, 16 values at a time.
///
/// # Safety
/// AVX-512F; `src` and `dst` have the same length, a multiple of 16.
#[target_feature(enable = "avx512f")]
unsafe fn convert(src: &[f32], dst: &mut [u16]) {
    for (s, d) in src.chunks_exact(16).zip(dst.chunks_exact_mut(16)) {
        // SAFETY: 16 values each side.
        unsafe {
            let v = _mm512_loadu_ps(s.as_ptr());
            let half = _mm512_cvtepi32_epi16(super::gemm_bf16::round_bf16(v));
            _mm256_storeu_si256(d.as_mut_ptr().cast(), half);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boosters::masks::WeightMask;

    fn rounded(x: &[f32]) -> Vec<f64> {
        x.iter()
            .map(|&v| f32::from_bits((super::super::amx::bf16_bits(v) as u32) << 16) as f64)
            .collect()
    }

    /// y = x·Wᵀ + b in f64 on the bf16-rounded x and W (W ⊙ mask(b) per sample).
    fn reference(
        x: &Tensor,
        w: &Tensor,
        bias: Option<&[f32]>,
        keep: impl Fn(usize, usize, usize) -> bool,
    ) -> Vec<f64> {
        let (out_f, in_f) = (w.shape()[0], w.shape()[1]);
        let rows = x.numel() / in_f;
        let per = rows / x.shape()[0];
        let (xr, wr) = (rounded(x.data()), rounded(w.data()));
        let mut y = vec![0f64; rows * out_f];
        for r in 0..rows {
            for o in 0..out_f {
                let mut acc = bias.map_or(0.0, |b| b[o] as f64);
                for i in 0..in_f {
                    if keep(r / per, o, i) {
                        acc += xr[r * in_f + i] * wr[o * in_f + i];
                    }
                }
                y[r * out_f + o] = acc;
            }
        }
        y
    }

    fn close(got: &Tensor, want: &[f64], what: &str) {
        let scale = want.iter().fold(1f64, |a, &v| a.max(v.abs()));
        for (i, (&g, &w)) in got.data().iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-5 * scale,
                "{what}: element {i}: {g} vs {w}"
            );
        }
    }

    /// Dense (with and without bias, cached and not) and masked products over ragged row
    /// counts, against the f64 product of the rounded operands; the cached packing gives the
    /// uncached result bit for bit, and an all-ones mask the dense one.
    #[test]
    fn tiles_match_the_f64_product_of_rounded_operands() {
        if !super::super::amx::available() {
            eprintln!("no AMX-BF16 here: the tile linear layer does not run");
            return;
        }
        for (b, rows, in_f, out_f) in [(1, 1, 32, 16), (2, 77, 64, 48), (3, 40, 96, 80)] {
            let x = Tensor::randn([b, rows, in_f], 1);
            let w = Tensor::randn([out_f, in_f], 2);
            let bias: Vec<f32> = Tensor::randn([out_f], 3).data().to_vec();
            let want = reference(&x, &w, Some(&bias), |_, _, _| true);
            let plain = linear(&x, &w, Some(&bias), None, None, false).unwrap();
            assert_eq!(plain.shape(), &[b, rows, out_f]);
            close(&plain, &want, "dense");
            let none = linear(&x, &w, None, None, None, false).unwrap();
            close(&none, &reference(&x, &w, None, |_, _, _| true), "no bias");
            let uid = crate::nn::fresh_uid();
            for _ in 0..2 {
                assert_eq!(
                    linear(&x, &w, Some(&bias), Some(uid), None, false).unwrap(),
                    plain
                );
            }
            super::super::pack_cache::evict(&[uid]);

            let bits: Vec<u8> = (0..b * out_f * in_f)
                .map(|j| (j * 7 % 5 != 0) as u8)
                .collect();
            let set = WeightMask::from_bytes(vec![out_f, in_f], None, Some(b), &bits).unwrap();
            let all_ones = vec![1u8; out_f * in_f];
            let ones = WeightMask::from_bytes(vec![out_f, in_f], None, None, &all_ones).unwrap();
            let view = |s: usize| set.view(0, s);
            let masked = linear(&x, &w, Some(&bias), None, Some(&view), false).unwrap();
            let keep = |s: usize, o: usize, i: usize| bits[(s * out_f + o) * in_f + i] != 0;
            close(&masked, &reference(&x, &w, Some(&bias), keep), "masked");
            let all = linear(&x, &w, Some(&bias), None, Some(&|_| ones.view(0, 0)), false).unwrap();
            assert_eq!(all, plain);
        }
    }

    /// The fused GEGLU projection gives the unfused one (the product, then `activation::geglu`)
    /// bit for bit, dense and masked.
    #[test]
    fn fused_geglu_is_the_product_then_geglu() {
        if !super::super::amx::available() {
            eprintln!("no AMX-BF16 here: the tile linear layer does not run");
            return;
        }
        for (b, rows, in_f, out_f) in [(1, 3, 32, 32), (2, 77, 64, 96), (2, 40, 96, 64)] {
            let x = Tensor::randn([b, rows, in_f], 4);
            let w = Tensor::randn([out_f, in_f], 5);
            let bias: Vec<f32> = Tensor::randn([out_f], 6).data().to_vec();
            let wide = linear(&x, &w, Some(&bias), None, None, false).unwrap();
            let want = super::super::activation::geglu(&wide);
            let got = linear(&x, &w, Some(&bias), None, None, true).unwrap();
            assert_eq!(got.shape(), &[b, rows, out_f / 2]);
            assert_eq!(got, want);
            let bits: Vec<u8> = (0..b * out_f * in_f).map(|j| (j % 3 != 0) as u8).collect();
            let set = WeightMask::from_bytes(vec![out_f, in_f], None, Some(b), &bits).unwrap();
            let view = |s: usize| set.view(0, s);
            let wide = linear(&x, &w, None, None, Some(&view), false).unwrap();
            let got = linear(&x, &w, None, None, Some(&view), true).unwrap();
            assert_eq!(got, super::super::activation::geglu(&wide));
        }
    }
}
