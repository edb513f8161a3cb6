//! GPU kernel benches at Stable Diffusion 1.5's shapes (64×64 latents, batch 2): the masked and
//! dense GEMM against cuBLAS (the ceiling), the implicit-GEMM convolutions, flash attention, and
//! FreeU's filter on cuFFT against the direct form. Prints `skipped: no CUDA device` and exits
//! where there is no GPU. `FREELUNCH_DTYPE` = f16 (default), bf16 or f32; `FREELUNCH_DEVICE=emu`
//! runs them on the PTX executor (its speed, not a GPU's; no cuBLAS there). Groups named
//! `*_flop` count one criterion element per floating-point operation, so their `Gelem/s` are
//! GFLOP/s.

use std::hint::black_box;

mod common;

use common::gpu;

use criterion::{criterion_group, criterion_main, Criterion};
use freelunch::backend::cpu::fourier::FilterForm;
use freelunch::backend::cpu::Padding;
use freelunch::backend::cuda::{Gpu, GpuTensor};
use freelunch::backend::{Backend, Epilogue};
use freelunch::boosters::masks::WeightMask;
use freelunch::boosters::MaskSet;
use freelunch::device::DType;
use freelunch::nn::{fresh_uid, Conv2d, LayerCtx, Linear};
use freelunch::Tensor;

fn timed<'a>(gpu: &'a Gpu, f: impl Fn() -> GpuTensor + 'a) -> impl FnMut() + 'a {
    move || {
        black_box(f());
        gpu.synchronize().unwrap();
    }
}

/// `y = x · Wᵀ` by cuBLAS GemmEx (f32 accumulation), the same row-major operands as ours.
fn cublas(gpu: &Gpu, blas: &cudarc::cublas::CudaBlas, x: &GpuTensor, w: &GpuTensor, y: &GpuTensor) {
    use cudarc::cublas::sys::{
        cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType,
    };
    let (m, k) = (
        x.numel() / x.shape().last().unwrap(),
        *x.shape().last().unwrap(),
    );
    let n = w.shape()[0];
    let ty = match gpu.dtype() {
        DType::F32 => cudaDataType::CUDA_R_32F,
        DType::F16 => cudaDataType::CUDA_R_16F,
        DType::BF16 => cudaDataType::CUDA_R_16BF,
    };
    let (alpha, beta) = (1.0f32, 0.0f32);
    // SAFETY: the three buffers hold m×k, n×k and m×n elements of `ty`.
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *blas.handle(),
            cublasOperation_t::CUBLAS_OP_T,
            cublasOperation_t::CUBLAS_OP_N,
            n as i32,
            m as i32,
            k as i32,
            &alpha as *const f32 as *const _,
            gpu.device_ptr(w) as *const _,
            ty,
            k as i32,
            gpu.device_ptr(x) as *const _,
            ty,
            k as i32,
            &beta as *const f32 as *const _,
            gpu.device_ptr(y) as *mut _,
            ty,
            n as i32,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .expect("cublasGemmEx");
}

fn gemm(c: &mut Criterion) {
    let Some(gpu) = gpu() else { return };
    // SAFETY: only tries to dlopen the library (the PTX executor has no cuBLAS).
    let blas = unsafe { cudarc::cublas::sys::is_culib_present() }
        .then(|| cudarc::cublas::CudaBlas::new(gpu.stream().clone()).expect("cuBLAS"));
    if blas.is_none() {
        println!("cuBLAS is not installed here: the cuBLAS rows are left out");
    }
    // (name, tokens per sample, in, out): attention projections and feed-forward at each level.
    let shapes = [
        ("attn_l0_320", 4096, 320, 320),
        ("ff_in_l0_320x2560", 4096, 320, 2560),
        ("ff_out_l0_1280x320", 4096, 1280, 320),
        ("attn_l1_640", 1024, 640, 640),
        ("attn_l2_1280", 256, 1280, 1280),
        ("cross_kv_768x320", 77, 768, 320),
    ];
    let mut g = c.benchmark_group("gemm_flop");
    for (name, tokens, k, n) in shapes {
        let lin = Linear {
            uid: fresh_uid(),
            name: "w".into(),
            weight: Tensor::randn([n, k], 1),
            bias: None,
        };
        let x = gpu.upload(&Tensor::randn([2, tokens, k], 2)).unwrap();
        let mut set = MaskSet::new();
        let bytes: Vec<u8> = (0..2 * n * k).map(|i| u8::from(i % 7 != 0)).collect();
        set.insert(
            "w".into(),
            WeightMask::from_bytes(vec![n, k], None, Some(2), &bytes).unwrap(),
        )
        .unwrap();
        let masked = LayerCtx {
            masks: Some(&set),
            step: 0,
        };
        g.throughput(criterion::Throughput::Elements(
            (2 * 2 * tokens * k * n) as u64,
        ));
        g.bench_function(format!("{name}/dense"), |b| {
            b.iter(timed(&gpu, || {
                gpu.linear(lin.params(LayerCtx::default()), &x, Epilogue::default())
                    .unwrap()
            }))
        });
        g.bench_function(format!("{name}/masked_per_sample"), |b| {
            b.iter(timed(&gpu, || {
                gpu.linear(lin.params(masked), &x, Epilogue::default())
                    .unwrap()
            }))
        });
        if let Some(blas) = &blas {
            let w = gpu.upload(&lin.weight).unwrap();
            let y = gpu.upload(&Tensor::randn([2, tokens, n], 3)).unwrap();
            g.bench_function(format!("{name}/cublas"), |b| {
                b.iter(|| {
                    cublas(&gpu, blas, &x, &w, &y);
                    gpu.synchronize().unwrap();
                })
            });
        }
    }
    g.finish();
}

fn conv(c: &mut Criterion) {
    let Some(gpu) = gpu() else { return };
    let mut g = c.benchmark_group("conv3x3_flop");
    for (hw, cin, cout) in [
        (64, 320, 320),
        (32, 640, 640),
        (16, 1280, 1280),
        (8, 1280, 1280),
        (64, 4, 320),
    ] {
        let conv = Conv2d {
            uid: fresh_uid(),
            name: "c".into(),
            weight: Tensor::randn([cout, cin, 3, 3], 1),
            bias: Some(Tensor::randn([cout], 2)),
            stride: 1,
            padding: Padding::same(1),
        };
        let x = gpu.upload(&Tensor::randn([2, cin, hw, hw], 3)).unwrap();
        g.throughput(criterion::Throughput::Elements(
            (2 * 2 * hw * hw * 9 * cin * cout) as u64,
        ));
        g.bench_function(format!("{hw}x{hw}x{cin}->{cout}"), |b| {
            b.iter(timed(&gpu, || {
                gpu.conv2d(conv.params(LayerCtx::default()), &x, Epilogue::default())
                    .unwrap()
            }))
        });
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    let Some(gpu) = gpu() else { return };
    let mut g = c.benchmark_group("attention");
    // (name, query tokens, key tokens, heads, head dim)
    for (name, nq, nk, heads, d) in [
        ("self_l0", 4096, 4096, 8, 40),
        ("cross_l0", 4096, 77, 8, 40),
        ("self_l1", 1024, 1024, 8, 80),
        ("self_l2", 256, 256, 8, 160),
        ("sd2_self_l0", 4096, 4096, 5, 64),
    ] {
        let q = gpu.upload(&Tensor::randn([2, nq, heads * d], 1)).unwrap();
        let k = gpu.upload(&Tensor::randn([2, nk, heads * d], 2)).unwrap();
        let v = gpu.upload(&Tensor::randn([2, nk, heads * d], 3)).unwrap();
        let scale = 1.0 / (d as f32).sqrt();
        g.bench_function(name, |b| {
            b.iter(timed(&gpu, || {
                gpu.attention(&q, &k, &v, heads, scale).unwrap()
            }))
        });
    }
    g.finish();
}

fn freeu(c: &mut Criterion) {
    let Some(gpu) = gpu() else { return };
    let mut g = c.benchmark_group("freeu_filter");
    for (hw, ch) in [(8, 1280), (16, 640), (32, 640)] {
        let x = gpu.upload(&Tensor::randn([2, ch, hw, hw], 1)).unwrap();
        for form in [FilterForm::Fft, FilterForm::Direct] {
            g.bench_function(format!("{hw}x{hw}x{ch}/{form:?}"), |b| {
                b.iter(timed(&gpu, || {
                    gpu.fourier_filter(&x, 1, 0.9, form).unwrap()
                }))
            });
        }
        g.bench_function(format!("{hw}x{hw}x{ch}/backbone_v2"), |b| {
            let mut h = gpu.upload(&Tensor::randn([2, 2 * ch, hw, hw], 2)).unwrap();
            b.iter(|| {
                gpu.freeu_backbone(&mut h, 1.0, true).unwrap();
                gpu.synchronize().unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, gemm, conv, attention, freeu);
criterion_main!(benches);
