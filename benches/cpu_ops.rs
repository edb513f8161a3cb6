//! CPU building blocks at the shapes of the DDPM-CIFAR10 and SD1.5 U-Nets: 3×3 convolution
//! (dense and MaskUNet-masked), linear, attention, GroupNorm+SiLU and FreeU's skip filter in both
//! forms. Threads: FREELUNCH_THREADS (default: all cores).
//!
//! Units: criterion can only print "elem/s" or "B/s". Groups named `*_flop` count one element
//! per floating-point operation (multiply and add counted apart), so their `Gelem/s` are
//! GFLOP/s; groups named `*_bytes` count the bytes read and written once, so theirs are the
//! effective memory bandwidth.
//!
//! Shapes: each group takes its list from an environment variable (`;` between shapes, `,`
//! between dimensions), as its doc line says; unset, the model shapes below.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use freelunch::backend::cpu::fourier::FilterForm;
use freelunch::backend::cpu::{self, Padding};
use freelunch::boosters::masks::WeightMask;
use freelunch::Tensor;

/// The shapes of `var` (`a,b,c;d,e,f`), or `default`; every shape has `dims` dimensions.
fn shapes(var: &str, dims: usize, default: &[&[usize]]) -> Vec<Vec<usize>> {
    let Ok(spec) = std::env::var(var) else {
        return default.iter().map(|s| s.to_vec()).collect();
    };
    spec.split(';')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let shape: Vec<usize> = s
                .split(',')
                .map(|d| d.trim().parse().unwrap_or_else(|_| panic!("{var}: `{s}`")))
                .collect();
            assert_eq!(shape.len(), dims, "{var}: `{s}` needs {dims} dimensions");
            shape
        })
        .collect()
}

/// `FREELUNCH_BENCH_CONV=B,Cin,Cout,HW;...`: 3×3 same-padding convolutions, dense and with a
/// per-sample MaskUNet mask (keep probability 0.9).
fn conv(c: &mut Criterion) {
    let pool = common::pool();
    let mut g = c.benchmark_group("cpu_conv3x3_flop");
    g.sample_size(10);
    let default: &[&[usize]] = &[&[8, 128, 128, 32], &[8, 256, 256, 16], &[8, 384, 128, 32]];
    for s in shapes("FREELUNCH_BENCH_CONV", 4, default) {
        let (b, cin, cout, hw) = (s[0], s[1], s[2], s[3]);
        let x = Tensor::randn([b, cin, hw, hw], 0);
        let w = Tensor::randn([cout, cin, 3, 3], 1);
        let bias = vec![0.1f32; cout];
        let n = cout * cin * 9;
        let mut rng = freelunch::rng::Rng::new(2);
        let bytes: Vec<u8> = (0..b * n).map(|_| u8::from(rng.uniform() < 0.9)).collect();
        let mask = WeightMask::from_bytes(vec![cout, cin, 3, 3], None, Some(b), &bytes).unwrap();
        g.throughput(Throughput::Elements(
            (2 * b * cout * hw * hw * cin * 9) as u64,
        ));
        let id = format!("b{b}_{cin}to{cout}_{hw}x{hw}");
        g.bench_function(format!("{id}_dense"), |bch| {
            bch.iter(|| pool.install(|| cpu::conv2d(&x, &w, Some(&bias), 1, Padding::same(1))))
        });
        g.bench_function(format!("{id}_masked"), |bch| {
            bch.iter(|| {
                pool.install(|| {
                    let m = |s| mask.view(0, s);
                    cpu::conv::conv2d_masked(&x, &w, Some(&bias), 1, Padding::same(1), Some(&m))
                })
            })
        });
    }
    g.finish();
}

/// `FREELUNCH_BENCH_LINEAR=rows,in,out;...`.
fn linear(c: &mut Criterion) {
    let pool = common::pool();
    let mut g = c.benchmark_group("cpu_linear_flop");
    g.sample_size(10);
    let default: &[&[usize]] = &[&[8192, 320, 320], &[8192, 320, 2560], &[1024, 1024, 1024]];
    for s in shapes("FREELUNCH_BENCH_LINEAR", 3, default) {
        let (rows, fin, fout) = (s[0], s[1], s[2]);
        let x = Tensor::randn([rows, fin], 0);
        let w = Tensor::randn([fout, fin], 1);
        g.throughput(Throughput::Elements((2 * rows * fin * fout) as u64));
        g.bench_function(format!("{rows}x{fin}to{fout}"), |bch| {
            bch.iter(|| pool.install(|| cpu::linear(&x, &w, None)))
        });
    }
    g.finish();
}

/// `FREELUNCH_BENCH_ATTENTION=B,N,M,C,heads;...`: self-attention of SD1.5's first level (4096
/// tokens of 320, 8 heads) and cross-attention to 77 prompt tokens.
fn attention(c: &mut Criterion) {
    let pool = common::pool();
    let mut g = c.benchmark_group("cpu_attention_flop");
    g.sample_size(10);
    let default: &[&[usize]] = &[
        &[2, 4096, 4096, 320, 8],
        &[2, 4096, 77, 320, 8],
        &[2, 1024, 1024, 640, 8],
    ];
    for s in shapes("FREELUNCH_BENCH_ATTENTION", 5, default) {
        let (b, n, m, ch, heads) = (s[0], s[1], s[2], s[3], s[4]);
        let q = Tensor::randn([b, n, ch], 0);
        let k = Tensor::randn([b, m, ch], 1);
        let v = Tensor::randn([b, m, ch], 2);
        let scale = 1.0 / ((ch / heads) as f32).sqrt();
        // Q·Kᵀ and P·V: 2·N·M·C each.
        g.throughput(Throughput::Elements((4 * b * n * m * ch) as u64));
        g.bench_function(format!("b{b}_{n}x{m}_c{ch}_h{heads}"), |bch| {
            bch.iter(|| pool.install(|| cpu::attention(&q, &k, &v, heads, scale)))
        });
    }
    g.finish();
}

/// `FREELUNCH_BENCH_GROUPNORM=B,C,HW,groups;...`: GroupNorm then SiLU, as the resnets run it.
fn group_norm(c: &mut Criterion) {
    let pool = common::pool();
    let mut g = c.benchmark_group("cpu_group_norm_silu_bytes");
    g.sample_size(10);
    let default: &[&[usize]] = &[&[2, 320, 64, 32], &[8, 128, 32, 32], &[2, 1280, 8, 32]];
    for s in shapes("FREELUNCH_BENCH_GROUPNORM", 4, default) {
        let (b, ch, hw, groups) = (s[0], s[1], s[2], s[3]);
        let x = Tensor::randn([b, ch, hw, hw], 0);
        let (gamma, beta) = (vec![1.1f32; ch], vec![0.1f32; ch]);
        // One read and one write of the image.
        g.throughput(Throughput::Bytes((2 * 4 * x.numel()) as u64));
        g.bench_function(format!("b{b}_c{ch}_{hw}x{hw}_g{groups}"), |bch| {
            bch.iter(|| pool.install(|| cpu::group_norm(&x, groups, &gamma, &beta, 1e-5, true)))
        });
    }
    g.finish();
}

/// `FREELUNCH_BENCH_FREEU=B,C,HW,threshold;...`: FreeU's skip filter, by FFT (as diffusers) and
/// in its exact FFT-free form, on SD1.5's two filtered skip levels.
fn freeu_filter(c: &mut Criterion) {
    let pool = common::pool();
    let mut g = c.benchmark_group("cpu_freeu_filter_bytes");
    g.sample_size(10);
    let default: &[&[usize]] = &[&[2, 1280, 8, 1], &[2, 640, 16, 1], &[2, 640, 16, 4]];
    for s in shapes("FREELUNCH_BENCH_FREEU", 4, default) {
        let (b, ch, hw, threshold) = (s[0], s[1], s[2], s[3]);
        let x = Tensor::randn([b, ch, hw, hw], 0);
        g.throughput(Throughput::Bytes((2 * 4 * x.numel()) as u64));
        for (name, form) in [("fft", FilterForm::Fft), ("direct", FilterForm::Direct)] {
            g.bench_function(format!("b{b}_c{ch}_{hw}x{hw}_t{threshold}_{name}"), |bch| {
                bch.iter(|| pool.install(|| cpu::fourier::fourier_filter(&x, threshold, 0.9, form)))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, conv, linear, attention, group_norm, freeu_filter);
criterion_main!(benches);
