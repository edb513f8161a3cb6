//! Every CUDA kernel against the CPU reference backend on random shapes (ragged sizes that do
//! not divide the tiles included), fresh random inputs, poisoned outputs, in f32, f16 and bf16.
//! Where this machine has no CUDA device each test prints `skipped: no CUDA device`; the tests
//! that check the no-device behaviour run everywhere.

mod common;

use common::gpu::{compare, gpus};
use freelunch::backend::cpu::fourier::FilterForm;
use freelunch::backend::cpu::Padding;
use freelunch::backend::{Backend, Cpu, Epilogue};
use freelunch::boosters::masks::WeightMask;
use freelunch::boosters::MaskSet;
use freelunch::device::{DType, Device};
use freelunch::models::embeddings::Timesteps;
use freelunch::nn::{fresh_uid, Conv2d, GroupNorm, LayerCtx, LayerNorm, Linear};
use freelunch::Tensor;
use proptest::prelude::*;

fn cfg() -> ProptestConfig {
    ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    }
}

/// Runs `f` on every test device; a failure names the dtype.
fn on_gpus(
    test: &str,
    mut f: impl FnMut(&freelunch::backend::cuda::Gpu) -> Result<(), String>,
) -> Result<(), TestCaseError> {
    for (_, gpu) in gpus(test) {
        f(gpu).map_err(TestCaseError::fail)?;
    }
    Ok(())
}

fn up(gpu: &freelunch::backend::cuda::Gpu, t: &Tensor) -> freelunch::backend::cuda::GpuTensor {
    gpu.upload(t).expect("upload")
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn conv2d_masked_implicit_gemm(
        b in 1usize..=3, cin in prop::sample::select(vec![1usize, 3, 4, 8, 13, 16, 24]),
        cout in 1usize..=150, h in 1usize..=12, w in 1usize..=12,
        k in prop::sample::select(vec![1usize, 3]), stride in 1usize..=2, pad in 0usize..=1,
        mask in 0u8..3, add_bc: bool, residual: bool, seed in any::<u64>(),
    ) {
        prop_assume!(h + 2 * pad >= k && w + 2 * pad >= k);
        let conv = Conv2d {
            uid: fresh_uid(),
            name: "conv.weight".into(),
            weight: Tensor::randn([cout, cin, k, k], seed),
            bias: Some(Tensor::randn([cout], seed + 1)),
            stride,
            padding: Padding { top: pad, bottom: pad, left: pad, right: pad },
        };
        let x = Tensor::randn([b, cin, h, w], seed + 2);
        let mut set = MaskSet::new();
        let n = cout * cin * k * k;
        match mask {
            1 => set.insert("conv.weight".into(), WeightMask::from_bytes(vec![cout, cin, k, k], None, None, &common::random_mask_bytes(n, 0.7, seed + 3)).unwrap()).unwrap(),
            2 => set.insert("conv.weight".into(), WeightMask::from_bytes(vec![cout, cin, k, k], None, Some(b), &common::random_mask_bytes(b * n, 0.7, seed + 3)).unwrap()).unwrap(),
            _ => {}
        }
        let lc = LayerCtx { masks: (mask > 0).then_some(&set), step: 0 };
        let plain = Cpu.conv2d(conv.params(lc), &x, Epilogue::default()).unwrap();
        let t = Tensor::randn([b, cout], seed + 4);
        let r = Tensor::randn(plain.shape().to_vec(), seed + 5);
        let epi = Epilogue { add_bc: add_bc.then_some(&t), residual: residual.then_some(&r), scale: if residual { 0.7 } else { 1.0 } };
        let want = Cpu.conv2d(conv.params(lc), &x, epi).unwrap();
        on_gpus("conv2d", |gpu| {
            let (gt, gr) = (up(gpu, &t), up(gpu, &r));
            let epi = Epilogue { add_bc: add_bc.then_some(&gt), residual: residual.then_some(&gr), scale: epi.scale };
            let got = gpu.conv2d(conv.params(lc), &up(gpu, &x), epi).map_err(|e| e.to_string())?;
            compare(gpu, "conv2d", &got, &want).map(drop)
        })?;
    }

    #[test]
    fn linear_masked_gemm(
        b in 1usize..=3, n in 1usize..=150, k in 1usize..=300, out in 1usize..=200,
        mask in 0u8..3, residual: bool, seed in any::<u64>(),
    ) {
        let lin = Linear {
            uid: fresh_uid(),
            name: "lin.weight".into(),
            weight: Tensor::randn([out, k], seed),
            bias: Some(Tensor::randn([out], seed + 1)),
        };
        let x = Tensor::randn([b, n, k], seed + 2);
        let mut set = MaskSet::new();
        match mask {
            1 => set.insert("lin.weight".into(), WeightMask::from_bytes(vec![out, k], None, None, &common::random_mask_bytes(out * k, 0.7, seed + 3)).unwrap()).unwrap(),
            2 => set.insert("lin.weight".into(), WeightMask::from_bytes(vec![out, k], None, Some(b), &common::random_mask_bytes(b * out * k, 0.7, seed + 3)).unwrap()).unwrap(),
            _ => {}
        }
        let lc = LayerCtx { masks: (mask > 0).then_some(&set), step: 0 };
        let r = Tensor::randn([b, n, out], seed + 4);
        let want = Cpu.linear(lin.params(lc), &x, Epilogue { residual: residual.then_some(&r), ..Epilogue::default() }).unwrap();
        on_gpus("linear", |gpu| {
            let gr = up(gpu, &r);
            let epi = Epilogue { residual: residual.then_some(&gr), ..Epilogue::default() };
            let got = gpu.linear(lin.params(lc), &up(gpu, &x), epi).map_err(|e| e.to_string())?;
            compare(gpu, "linear", &got, &want).map(drop)
        })?;
    }

    #[test]
    fn group_norm_fused(
        b in 1usize..=3, groups in 1usize..=8, per in 1usize..=12, h in 1usize..=16, w in 1usize..=16,
        silu: bool, scale_shift: bool, seed in any::<u64>(),
    ) {
        let c = groups * per;
        let gn = GroupNorm { uid: fresh_uid(), groups, eps: 1e-5, weight: Tensor::randn([c], seed), bias: Tensor::randn([c], seed + 1) };
        let x = Tensor::randn([b, c, h, w], seed + 2);
        let ss = Tensor::randn([b, 2 * c], seed + 3);
        let want = Cpu.group_norm(gn.params(), &x, scale_shift.then_some(&ss), silu).unwrap();
        on_gpus("group_norm", |gpu| {
            let gss = up(gpu, &ss);
            let got = gpu.group_norm(gn.params(), &up(gpu, &x), scale_shift.then_some(&gss), silu).map_err(|e| e.to_string())?;
            compare(gpu, "group_norm", &got, &want).map(drop)
        })?;
    }

    #[test]
    fn layer_norm_rows(rows in 1usize..=40, d in 1usize..=1300, seed in any::<u64>()) {
        let ln = LayerNorm { uid: fresh_uid(), eps: 1e-5, weight: Tensor::randn([d], seed), bias: Tensor::randn([d], seed + 1) };
        let x = Tensor::randn([2, rows, d], seed + 2);
        let want = Cpu.layer_norm(ln.params(), &x).unwrap();
        on_gpus("layer_norm", |gpu| {
            let got = gpu.layer_norm(ln.params(), &up(gpu, &x)).map_err(|e| e.to_string())?;
            compare(gpu, "layer_norm", &got, &want).map(drop)
        })?;
    }

    #[test]
    fn flash_attention(
        b in 1usize..=2, heads in 1usize..=3,
        d in prop::sample::select(vec![8usize, 40, 64, 80, 100, 160, 256]),
        nq in 1usize..=70, nk in 1usize..=90, seed in any::<u64>(),
    ) {
        let q = Tensor::randn([b, nq, heads * d], seed);
        let k = Tensor::randn([b, nk, heads * d], seed + 1);
        let v = Tensor::randn([b, nk, heads * d], seed + 2);
        let scale = 1.0 / (d as f32).sqrt();
        let want = Cpu.attention(&q, &k, &v, heads, scale).unwrap();
        on_gpus("attention", |gpu| {
            let got = gpu.attention(&up(gpu, &q), &up(gpu, &k), &up(gpu, &v), heads, scale).map_err(|e| e.to_string())?;
            compare(gpu, "attention", &got, &want).map(drop)
        })?;
    }

    #[test]
    fn pointwise_and_layout(
        b in 1usize..=3, c in 1usize..=40, c2 in 1usize..=40, h in 1usize..=9, w in 1usize..=9,
        oh in 1usize..=20, ow in 1usize..=20, s in -2.0f32..2.0, seed in any::<u64>(),
    ) {
        let x = Tensor::randn([b, c, h, w], seed);
        let y = Tensor::randn([b, c, h, w], seed + 1);
        let skip = Tensor::randn([b, c2, h, w], seed + 2);
        let g = Tensor::randn([b, h * w, 2 * c], seed + 3);
        on_gpus("pointwise", |gpu| {
            let e = |r: freelunch::Result<_>| r.map_err(|e: freelunch::Error| e.to_string());
            let (gx, gy) = (up(gpu, &x), up(gpu, &y));
            compare(gpu, "round trip", &gx, &x)?;
            compare(gpu, "silu", &e(gpu.silu(&gx))?, &Cpu.silu(&x).unwrap())?;
            compare(gpu, "add", &e(gpu.add(&gx, &gy, s))?, &Cpu.add(&x, &y, s).unwrap())?;
            compare(gpu, "scale", &e(gpu.scale(&gx, s))?, &Cpu.scale(&x, s).unwrap())?;
            compare(gpu, "geglu", &e(gpu.geglu(&up(gpu, &g)))?, &Cpu.geglu(&g).unwrap())?;
            compare(gpu, "upsample 2x", &e(gpu.upsample_nearest(&gx, 2 * h, 2 * w))?, &Cpu.upsample_nearest(&x, 2 * h, 2 * w).unwrap())?;
            compare(gpu, "upsample", &e(gpu.upsample_nearest(&gx, oh, ow))?, &Cpu.upsample_nearest(&x, oh, ow).unwrap())?;
            compare(gpu, "concat", &e(gpu.cat_channels(&gx, &up(gpu, &skip), s))?, &Cpu.cat_channels(&x, &skip, s).unwrap())?;
            let tokens = e(gpu.to_tokens(&gx))?;
            compare(gpu, "tokens", &tokens, &Cpu.to_tokens(&x).unwrap())?;
            compare(gpu, "image", &e(gpu.to_image(&tokens, h, w))?, &x).map(drop)
        })?;
    }

    #[test]
    fn freeu_backbone_and_filters(
        b in 1usize..=2, c in 2usize..=70, h in 1usize..=20, w in 1usize..=20, t in 1usize..=3,
        bscale in 0.5f32..2.0, s in 0.0f32..2.0, v2: bool, seed in any::<u64>(),
    ) {
        let x = Tensor::randn([b, c, h, w], seed);
        let mut want_h = x.clone();
        Cpu.freeu_backbone(&mut want_h, bscale, v2).unwrap();
        let want_f = Cpu.fourier_filter(&x, t, s, FilterForm::Fft).unwrap();
        on_gpus("freeu", |gpu| {
            let mut gh = up(gpu, &x);
            gpu.freeu_backbone(&mut gh, bscale, v2).map_err(|e| e.to_string())?;
            compare(gpu, "backbone", &gh, &want_h)?;
            for form in [FilterForm::Direct, FilterForm::Fft] {
                let got = gpu.fourier_filter(&up(gpu, &x), t, s, form).map_err(|e| e.to_string())?;
                compare(gpu, &format!("filter {form:?} t={t}"), &got, &want_f)?;
            }
            Ok(())
        })?;
    }

    #[test]
    fn timestep_embedding(b in 1usize..=4, dim in 1usize..=400, flip: bool, shift in 0.0f32..=1.0, seed in any::<u64>()) {
        prop_assume!(dim >= 2);
        let ts = Timesteps { dim, flip_sin_to_cos: flip, downscale_freq_shift: shift };
        let t: Vec<f32> = Tensor::randn([b], seed).data().iter().map(|v| (v.abs() * 400.0).floor()).collect();
        let want = Cpu.timestep_embedding(&ts, &t).unwrap();
        on_gpus("timestep_embedding", |gpu| {
            let got = gpu.timestep_embedding(&ts, &t).map_err(|e| e.to_string())?;
            compare(gpu, "timestep embedding", &got, &want).map(drop)
        })?;
    }
}

/// Masks and dtypes must not change which kernel writes what: an all-ones mask gives the dense
/// result exactly (the mask only zeroes weights while they are staged).
#[test]
fn all_ones_mask_is_the_dense_gemm_exactly() {
    let lin = Linear {
        uid: fresh_uid(),
        name: "lin.weight".into(),
        weight: Tensor::randn([77, 131], 1),
        bias: None,
    };
    let x = Tensor::randn([2, 45, 131], 2);
    let mut set = MaskSet::new();
    set.insert(
        "lin.weight".into(),
        WeightMask::from_bytes(vec![77, 131], None, Some(2), &vec![1u8; 2 * 77 * 131]).unwrap(),
    )
    .unwrap();
    for (_, gpu) in gpus("all_ones_mask") {
        let gx = gpu.upload(&x).unwrap();
        let dense = gpu
            .linear(lin.params(LayerCtx::default()), &gx, Epilogue::default())
            .unwrap();
        let lc = LayerCtx {
            masks: Some(&set),
            step: 0,
        };
        let masked = gpu
            .linear(lin.params(lc), &gx, Epilogue::default())
            .unwrap();
        assert_eq!(
            gpu.download(&dense).unwrap(),
            gpu.download(&masked).unwrap()
        );
    }
}

/// Without a GPU (or driver), asking for one is an error that says so; nothing panics.
#[test]
fn no_device_is_an_error_not_a_panic() {
    if freelunch::backend::cuda::device_count() > 0 {
        println!("a CUDA device is present; nothing to check here");
        return;
    }
    for dt in common::gpu::DTYPES {
        let err = match Device::Cuda(0).open(dt) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("opened a CUDA device on a machine that reports none"),
        };
        assert!(err.contains("CUDA") || err.contains("cuda"), "{err}");
    }
    // `auto` falls back to the CPU.
    assert!(matches!(
        Device::Auto.open(DType::F32),
        Ok(freelunch::device::Exec::Cpu(_))
    ));
    let err = match Device::Cpu.open(DType::F16) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("the CPU accepted f16"),
    };
    assert!(err.contains("f32"), "{err}");
}
