//! Properties of the CPU building blocks against naive f64 implementations, on random shapes
//! (ragged, tiny and larger than the blocking sizes) and random values.

use freelunch::backend::cpu::{self, Padding};
use freelunch::Tensor;
use proptest::prelude::*;

fn close(got: &Tensor, want: &[f64], tol: f64) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.numel(), want.len());
    let (mut num, mut den) = (0.0, 0.0);
    for (&g, &w) in got.data().iter().zip(want) {
        prop_assert!(g.is_finite(), "non-finite output");
        num += (g as f64 - w).powi(2);
        den += w * w;
    }
    let rel = (num / den.max(1e-30)).sqrt();
    prop_assert!(rel <= tol, "relative L2 error {rel:.3e} > {tol:.0e}");
    Ok(())
}

fn naive_conv(
    x: &Tensor,
    wt: &Tensor,
    bias: Option<&[f32]>,
    stride: usize,
    pad: Padding,
) -> Vec<f64> {
    let [b, cin, h, w] = x.shape()[..] else {
        unreachable!()
    };
    let [cout, _, k, _] = wt.shape()[..] else {
        unreachable!()
    };
    let ho = (h + pad.top + pad.bottom - k) / stride + 1;
    let wo = (w + pad.left + pad.right - k) / stride + 1;
    let (xs, ws) = (x.data(), wt.data());
    let mut want = vec![0.0f64; b * cout * ho * wo];
    for bi in 0..b {
        for co in 0..cout {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = bias.map_or(0.0, |bv| bv[co] as f64);
                    for ci in 0..cin {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * stride + ky) as isize - pad.top as isize;
                                let ix = (ox * stride + kx) as isize - pad.left as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    acc += xs[((bi * cin + ci) * h + iy as usize) * w + ix as usize]
                                        as f64
                                        * ws[((co * cin + ci) * k + ky) * k + kx] as f64;
                                }
                            }
                        }
                    }
                    want[((bi * cout + co) * ho + oy) * wo + ox] = acc;
                }
            }
        }
    }
    want
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.data().iter().map(|&v| v as f64).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn group_norm_matches_naive(
        b in 1usize..3, groups in 1usize..5, per_group in 1usize..5, hw in 1usize..40,
        silu in any::<bool>(), seed in any::<u64>(),
    ) {
        let c = groups * per_group;
        let x = Tensor::randn([b, c, hw], seed);
        let gamma: Vec<f32> = Tensor::randn([c], seed ^ 1).data().to_vec();
        let beta: Vec<f32> = Tensor::randn([c], seed ^ 2).data().to_vec();
        let eps = 1e-5;
        let got = cpu::group_norm(&x, groups, &gamma, &beta, eps, silu);
        let xs = f64s(&x);
        let mut want = vec![0.0; xs.len()];
        for bi in 0..b {
            for g in 0..groups {
                let range = (bi * c + g * per_group) * hw..(bi * c + (g + 1) * per_group) * hw;
                let n = range.len() as f64;
                let mean = xs[range.clone()].iter().sum::<f64>() / n;
                let var = xs[range.clone()].iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                for i in range {
                    let ch = (i / hw) % c;
                    let y = (xs[i] - mean) / (var + eps as f64).sqrt() * gamma[ch] as f64 + beta[ch] as f64;
                    want[i] = if silu { y / (1.0 + (-y).exp()) } else { y };
                }
            }
        }
        close(&got, &want, 1e-5)?;
    }

    #[test]
    fn layer_norm_matches_naive(rows in 1usize..20, d in 1usize..70, seed in any::<u64>()) {
        let x = Tensor::randn([rows, d], seed);
        let gamma: Vec<f32> = Tensor::randn([d], seed ^ 1).data().to_vec();
        let beta: Vec<f32> = Tensor::randn([d], seed ^ 2).data().to_vec();
        let got = cpu::layer_norm(&x, &gamma, &beta, 1e-5);
        let xs = f64s(&x);
        let mut want = vec![0.0; xs.len()];
        for r in 0..rows {
            let row = &xs[r * d..(r + 1) * d];
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            for j in 0..d {
                want[r * d + j] = (row[j] - mean) / (var + 1e-5).sqrt() * gamma[j] as f64 + beta[j] as f64;
            }
        }
        close(&got, &want, 1e-5)?;
    }

    #[test]
    fn conv2d_matches_naive(
        b in 1usize..3, cin in 1usize..6, cout in 1usize..7, h in 1usize..12, w in 1usize..12,
        k in prop::sample::select(vec![1usize, 3]), stride in 1usize..3,
        pad in (0usize..2, 0usize..2, 0usize..2, 0usize..2), bias in any::<bool>(), seed in any::<u64>(),
    ) {
        let pad = Padding { top: pad.0, bottom: pad.1, left: pad.2, right: pad.3 };
        prop_assume!(h + pad.top + pad.bottom >= k && w + pad.left + pad.right >= k);
        let x = Tensor::randn([b, cin, h, w], seed);
        let wt = Tensor::randn([cout, cin, k, k], seed ^ 1);
        let bias_v: Vec<f32> = Tensor::randn([cout], seed ^ 2).data().to_vec();
        let got = cpu::conv2d(&x, &wt, bias.then_some(&bias_v[..]), stride, pad);
        let ho = (h + pad.top + pad.bottom - k) / stride + 1;
        let wo = (w + pad.left + pad.right - k) / stride + 1;
        prop_assert_eq!(got.shape(), &[b, cout, ho, wo]);
        let want = naive_conv(&x, &wt, bias.then_some(&bias_v[..]), stride, pad);
        close(&got, &want, 1e-5)?;
    }

    /// The batched implicit-GEMM path: stride 1, odd k, "same" padding.
    #[test]
    fn conv2d_same_matches_naive(
        b in 1usize..5, cin in 1usize..9, cout in 1usize..9, h in 1usize..10, w in 1usize..10,
        k in prop::sample::select(vec![3usize, 5]), bias in any::<bool>(), seed in any::<u64>(),
    ) {
        let x = Tensor::randn([b, cin, h, w], seed);
        let wt = Tensor::randn([cout, cin, k, k], seed ^ 1);
        let bias_v: Vec<f32> = Tensor::randn([cout], seed ^ 2).data().to_vec();
        let pad = Padding::same((k - 1) / 2);
        let got = cpu::conv2d(&x, &wt, bias.then_some(&bias_v[..]), 1, pad);
        prop_assert_eq!(got.shape(), &[b, cout, h, w]);
        close(&got, &naive_conv(&x, &wt, bias.then_some(&bias_v[..]), 1, pad), 1e-5)?;
    }

    /// Images beyond the direct path's reach (more than 256 positions): the implicit GEMM, one
    /// product over (channel, tap) depth on the own AVX-512 kernel where the CPU has it (its depth
    /// slices, ragged strips and tiles of output channels), per-tap products elsewhere.
    #[test]
    fn conv2d_same_on_large_images_matches_naive(
        b in 1usize..3, cin in 1usize..70, cout in 1usize..80, h in 17usize..26, w in 17usize..26,
        k in prop::sample::select(vec![3usize, 5]), bias in any::<bool>(), seed in any::<u64>(),
    ) {
        let x = Tensor::randn([b, cin, h, w], seed);
        let wt = Tensor::randn([cout, cin, k, k], seed ^ 1);
        let bias_v: Vec<f32> = Tensor::randn([cout], seed ^ 2).data().to_vec();
        let pad = Padding::same((k - 1) / 2);
        let got = cpu::conv2d(&x, &wt, bias.then_some(&bias_v[..]), 1, pad);
        prop_assert_eq!(got.shape(), &[b, cout, h, w]);
        close(&got, &naive_conv(&x, &wt, bias.then_some(&bias_v[..]), 1, pad), 1e-5)?;
    }

    /// The direct AVX-512 path's blocking (where the CPU has it; the GEMM path elsewhere):
    /// output channels across 16/32-lane blocks and 64-channel tiles with ragged tails, input
    /// channels across the 64-channel reduction blocks, rows across the 14-position register
    /// tile and the chunks of positions, width and batch 1 included.
    #[test]
    fn conv2d_same_blocked_matches_naive(
        b in 1usize..3, cin in 1usize..80, cout in 1usize..100, h in 1usize..9,
        w in prop::sample::select(vec![1usize, 2, 5, 13, 14, 15, 31]),
        k in prop::sample::select(vec![1usize, 3]), bias in any::<bool>(), seed in any::<u64>(),
    ) {
        let x = Tensor::randn([b, cin, h, w], seed);
        let wt = Tensor::randn([cout, cin, k, k], seed ^ 1);
        let bias_v: Vec<f32> = Tensor::randn([cout], seed ^ 2).data().to_vec();
        let pad = Padding::same((k - 1) / 2);
        let got = cpu::conv2d(&x, &wt, bias.then_some(&bias_v[..]), 1, pad);
        prop_assert_eq!(got.shape(), &[b, cout, h, w]);
        close(&got, &naive_conv(&x, &wt, bias.then_some(&bias_v[..]), 1, pad), 1e-5)?;
    }

    #[test]
    fn attention_matches_naive(
        b in 1usize..3, n in 1usize..300, m in 1usize..40, heads in 1usize..4, dh in 1usize..17,
        seed in any::<u64>(),
    ) {
        let q = Tensor::randn([b, n, heads * dh], seed);
        let k = Tensor::randn([b, m, heads * dh], seed ^ 1);
        let v = Tensor::randn([b, m, heads * dh], seed ^ 2);
        let scale = 1.0 / (dh as f32).sqrt();
        let got = cpu::attention(&q, &k, &v, heads, scale);
        let inner = heads * dh;
        let (qs, ks, vs) = (q.data(), k.data(), v.data());
        let mut want = vec![0.0f64; b * n * inner];
        for bi in 0..b { for h in 0..heads { for i in 0..n {
            let s: Vec<f64> = (0..m).map(|j| (0..dh).map(|d| {
                qs[(bi * n + i) * inner + h * dh + d] as f64 * ks[(bi * m + j) * inner + h * dh + d] as f64
            }).sum::<f64>() * scale as f64).collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..dh {
                want[(bi * n + i) * inner + h * dh + d] =
                    (0..m).map(|j| e[j] / z * vs[(bi * m + j) * inner + h * dh + d] as f64).sum();
            }
        }}}
        close(&got, &want, 1e-5)?;
    }

    #[test]
    fn linear_matches_naive(rows in 1usize..40, fin in 1usize..50, fout in 1usize..50, bias in any::<bool>(), seed in any::<u64>()) {
        let x = Tensor::randn([rows, fin], seed);
        let w = Tensor::randn([fout, fin], seed ^ 1);
        let bv: Vec<f32> = Tensor::randn([fout], seed ^ 2).data().to_vec();
        let got = cpu::linear(&x, &w, bias.then_some(&bv[..]));
        let mut want = vec![0.0f64; rows * fout];
        for r in 0..rows { for o in 0..fout {
            want[r * fout + o] = (0..fin).map(|i| x.data()[r * fin + i] as f64 * w.data()[o * fin + i] as f64).sum::<f64>()
                + if bias { bv[o] as f64 } else { 0.0 };
        }}
        close(&got, &want, 1e-5)?;
    }

    #[test]
    fn layout_round_trips(b in 1usize..3, c in 1usize..40, h in 1usize..20, w in 1usize..20, seed in any::<u64>()) {
        let x = Tensor::randn([b, c, h, w], seed);
        let seq = cpu::nchw_to_nlc(&x);
        for bi in 0..b { for ch in 0..c { for p in 0..h * w {
            prop_assert_eq!(seq.data()[(bi * h * w + p) * c + ch], x.data()[(bi * c + ch) * h * w + p]);
        }}}
        prop_assert_eq!(cpu::nlc_to_nchw(&seq, h, w), x);
    }

    #[test]
    fn upsample_nearest_doubles_and_resizes(h in 1usize..10, w in 1usize..10, dh in 0usize..2, dw in 0usize..2, seed in any::<u64>()) {
        let x = Tensor::randn([1, 2, h, w], seed);
        let (oh, ow) = (2 * h - dh.min(2 * h - 1), 2 * w - dw.min(2 * w - 1));
        let y = cpu::upsample_nearest(&x, oh, ow);
        for c in 0..2 { for oy in 0..oh { for ox in 0..ow {
            // PyTorch: exact doubling is o/2; otherwise floor(o * in/out) in f32.
            let sy = if oh == 2 * h { oy / 2 } else { ((oy as f32 * (h as f32 / oh as f32)).floor() as usize).min(h - 1) };
            let sx = if ow == 2 * w { ox / 2 } else { ((ox as f32 * (w as f32 / ow as f32)).floor() as usize).min(w - 1) };
            prop_assert_eq!(y.data()[(c * oh + oy) * ow + ox], x.data()[(c * h + sy) * w + sx]);
        }}}
    }
}

proptest! {
    #[test]
    fn vector_exp_within_2_ulp(x in -87.0f32..88.0) {
        let got = freelunch::backend::cpu::vector::exp(x) as f64;
        let want = (x as f64).exp();
        prop_assert!(((got - want) / want).abs() <= 2.5e-7, "exp({x}) = {got}, want {want}");
    }

    #[test]
    fn vector_silu_and_softmax(xs in prop::collection::vec(-30.0f32..30.0, 1..200)) {
        let mut v = xs.clone();
        freelunch::backend::cpu::vector::silu_slice(&mut v);
        for (&x, &y) in xs.iter().zip(&v) {
            let want = x as f64 / (1.0 + (-(x as f64)).exp());
            prop_assert!((y as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()));
        }
        let mut s = xs.clone();
        freelunch::backend::cpu::vector::softmax_row(&mut s);
        let max = xs.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = xs.iter().map(|&x| (x as f64 - max).exp()).sum();
        for (&x, &y) in xs.iter().zip(&s) {
            prop_assert!((y as f64 - (x as f64 - max).exp() / z).abs() <= 1e-6);
        }
    }
}

/// The vectorised exact GELU against the f64 erf form, over the range activations take.
#[test]
fn vector_gelu_matches_the_f64_erf_form() {
    let mut worst = 0f64;
    for i in -200_000..=200_000 {
        let x = i as f32 * 1e-4 * (1.0 + (i as f32 * 0.37).sin().abs());
        let mut v = [x];
        freelunch::backend::cpu::vector::gelu_slice(&mut v);
        let xd = x as f64;
        let want = 0.5 * xd * (1.0 + libm::erf(xd / std::f64::consts::SQRT_2));
        let err = (v[0] as f64 - want).abs() / (want.abs() + 1e-4);
        assert!(err < 2e-6, "gelu({x}) = {}, want {want}", v[0]);
        worst = worst.max(err);
    }
    assert!(freelunch::backend::cpu::vector::gelu(-30.0).abs() < 1e-30);
    assert_eq!(freelunch::backend::cpu::vector::gelu(30.0), 30.0);
    eprintln!("worst relative error {worst:.2e}");
}

#[test]
fn vector_exp_edges() {
    use freelunch::backend::cpu::vector::exp;
    assert_eq!(exp(0.0), 1.0);
    assert!(exp(-200.0) < 1e-37 && exp(-200.0) >= 0.0);
    assert!(exp(200.0).is_finite() && exp(200.0) > 1e38);
    assert!((exp(88.5) as f64 / 88.5f64.exp() - 1.0).abs() < 1e-6);
}

#[test]
fn geglu_gates_with_exact_gelu() {
    let x = Tensor::new([1, 4], vec![2.0, -1.0, 0.5, -3.0]).unwrap();
    let y = cpu::geglu(&x);
    let gelu = |v: f64| 0.5 * v * (1.0 + libm::erf(v / 2f64.sqrt()));
    let want = [2.0 * gelu(0.5), -gelu(-3.0)];
    for (g, w) in y.data().iter().zip(want) {
        assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
    }
}

/// `t` rounded to bf16 (nearest even), as the bf16 products round their operands.
fn rounded(t: &Tensor) -> Tensor {
    let v: Vec<f32> = t
        .data()
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect();
    Tensor::new(t.shape(), v).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Every bf16 convolution path (the AMX tile convolution for channels that are multiples of
    /// 32 and 16, the generic bf16 GEMM paths otherwise, strided, masked) computes the f64
    /// convolution of the bf16-rounded operands to f32 accumulation accuracy.
    #[test]
    fn bf16_convolutions_match_the_f32_product_of_rounded_operands(
        b in 1usize..3, cin_blocks in 1usize..4, ragged_cin in any::<bool>(),
        cout_strips in 1usize..5, ragged_cout in any::<bool>(), hw in 1usize..14,
        k in prop::sample::select(vec![1usize, 3]), stride in 1usize..3,
        masked in any::<bool>(), bias in any::<bool>(), seed in any::<u64>(),
        downsample_pad in any::<bool>(),
    ) {
        use cpu::gemm::{bf16_available, Precision};
        if !bf16_available() {
            eprintln!("no AMX-BF16 here: the bf16 convolution is not tested");
            return Ok(());
        }
        let cin = 32 * cin_blocks - 3 * ragged_cin as usize;
        let cout = 16 * cout_strips - 5 * ragged_cout as usize;
        let x = Tensor::randn([b, cin, hw, hw + 1], seed);
        let wt = Tensor::randn([cout, cin, k, k], seed ^ 1);
        let bv: Vec<f32> = Tensor::randn([cout], seed ^ 2).data().to_vec();
        let bias = bias.then_some(&bv[..]);
        // diffusers' Downsample2D with padding 0 pads (0, 1) on each axis.
        let pad = if downsample_pad && stride == 2 && hw >= 2 {
            Padding { top: 0, bottom: 1, left: 0, right: 1 }
        } else {
            Padding::same(k / 2)
        };
        let keep: Vec<Vec<f32>> = (0..b)
            .map(|bi| {
                Tensor::randn([cout * cin * k * k], seed ^ (3 + bi as u64))
                    .data()
                    .iter()
                    .map(|&v| (v > -0.3) as u8 as f32)
                    .collect()
            })
            .collect();
        let bytes: Vec<u8> = keep.iter().flatten().map(|&m| m as u8).collect();
        let set = freelunch::boosters::masks::WeightMask::from_bytes(
            vec![cout, cin, k, k], None, Some(b), &bytes,
        ).unwrap();
        let mask_fn = |bi: usize| set.view(0, bi);
        let mask: Option<cpu::masked::MaskFn> = masked.then_some(&mask_fn);
        let got = cpu::conv::try_conv2d_in(&x, &wt, bias, stride, pad, mask, Precision::Bf16)
            .unwrap();
        let (rx, rw) = (rounded(&x), rounded(&wt));
        let want: Vec<f64> = if masked {
            (0..b)
                .flat_map(|bi| {
                    let xb = Tensor::new(
                        [1, cin, hw, hw + 1],
                        rx.data()[bi * cin * hw * (hw + 1)..][..cin * hw * (hw + 1)].to_vec(),
                    ).unwrap();
                    let wb: Vec<f32> = rw.data().iter().zip(&keep[bi]).map(|(w, m)| w * m).collect();
                    naive_conv(&xb, &Tensor::new(rw.shape(), wb).unwrap(), bias, stride, pad)
                })
                .collect()
        } else {
            naive_conv(&rx, &rw, bias, stride, pad)
        };
        close(&got, &want, 1e-5)?;
    }
}

/// The AMX tile convolution's own shapes (channels multiples of 32 in, 16 out; 3×3 and 1×1;
/// images from 1×1 to wider than a task's positions; odd output strips), against the f64
/// convolution of the rounded operands.
#[test]
fn bf16_tile_convolutions_match_on_every_edge() {
    use cpu::gemm::{bf16_available, Precision};
    if !bf16_available() {
        eprintln!("no AMX-BF16 here: the bf16 convolution is not tested");
        return;
    }
    let cases = [
        (1, 32, 16, 1, 1, 3),
        (2, 64, 48, 5, 7, 3),
        (3, 32, 32, 9, 4, 1),
        (2, 96, 80, 17, 19, 3),
        (1, 128, 64, 24, 24, 1),
    ];
    for (seed, &(b, cin, cout, h, w, k)) in cases.iter().enumerate() {
        let x = Tensor::randn([b, cin, h, w], seed as u64);
        let wt = Tensor::randn([cout, cin, k, k], 100 + seed as u64);
        let bv: Vec<f32> = Tensor::randn([cout], 200 + seed as u64).data().to_vec();
        let pad = Padding::same(k / 2);
        let got =
            cpu::conv::try_conv2d_in(&x, &wt, Some(&bv), 1, pad, None, Precision::Bf16).unwrap();
        let want = naive_conv(&rounded(&x), &rounded(&wt), Some(&bv), 1, pad);
        close(&got, &want, 1e-5).unwrap_or_else(|e| panic!("{b}×{cin}→{cout} {h}×{w} k{k}: {e}"));
        // Masked: each sample its own W ⊙ M_b, on the same kernel.
        let n = cout * cin * k * k;
        let bytes: Vec<u8> = (0..b * n)
            .map(|i| ((i * 7 + seed) % 5 != 0) as u8)
            .collect();
        let set = freelunch::boosters::masks::WeightMask::from_bytes(
            vec![cout, cin, k, k],
            None,
            Some(b),
            &bytes,
        )
        .unwrap();
        let mask_fn = |bi: usize| set.view(0, bi);
        let got =
            cpu::conv::try_conv2d_in(&x, &wt, Some(&bv), 1, pad, Some(&mask_fn), Precision::Bf16)
                .unwrap();
        let (rx, rw) = (rounded(&x), rounded(&wt));
        let plane = cin * h * w;
        let want: Vec<f64> = (0..b)
            .flat_map(|bi| {
                let xb =
                    Tensor::new([1, cin, h, w], rx.data()[bi * plane..][..plane].to_vec()).unwrap();
                let wb: Vec<f32> = rw
                    .data()
                    .iter()
                    .zip(&bytes[bi * n..])
                    .map(|(w, &m)| w * m as f32)
                    .collect();
                naive_conv(
                    &xb,
                    &Tensor::new(rw.shape(), wb).unwrap(),
                    Some(&bv),
                    1,
                    pad,
                )
            })
            .collect();
        close(&got, &want, 1e-5)
            .unwrap_or_else(|e| panic!("masked {b}×{cin}→{cout} {h}×{w} k{k}: {e}"));
    }
}
