//! CPU building blocks at the shapes of the DDPM-CIFAR10 and SD1.5 U-Nets. Threads:
//! FREELUNCH_THREADS (default: all cores).

mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use freelunch::cpu::{self, Padding};
use freelunch::Tensor;

fn conv(c: &mut Criterion) {
    let pool = common::pool();
    let mut g = c.benchmark_group("cpu_conv3x3");
    g.sample_size(10);
    for (b, cin, cout, hw) in [(8, 128, 128, 32), (8, 256, 256, 16), (8, 384, 128, 32)] {
        let x = Tensor::randn([b, cin, hw, hw], 0);
        let w = Tensor::randn([cout, cin, 3, 3], 1);
        let bias = vec![0.1f32; cout];
        let flops = 2.0 * (b * cout * hw * hw * cin * 9) as f64;
        g.throughput(criterion::Throughput::Elements(flops as u64));
        g.bench_function(format!("b{b}_{cin}to{cout}_{hw}x{hw}"), |bch| {
            bch.iter(|| pool.install(|| cpu::conv2d(&x, &w, Some(&bias), 1, Padding::same(1))))
        });
    }
    g.finish();
}

fn gemm(c: &mut Criterion) {
    let pool = common::pool();
    let mut g = c.benchmark_group("cpu_linear");
    g.sample_size(10);
    for (rows, fin, fout) in [(8192, 320, 320), (8192, 320, 2560), (1024, 1024, 1024)] {
        let x = Tensor::randn([rows, fin], 0);
        let w = Tensor::randn([fout, fin], 1);
        g.throughput(criterion::Throughput::Elements(
            (2 * rows * fin * fout) as u64,
        ));
        g.bench_function(format!("{rows}x{fin}to{fout}"), |bch| {
            bch.iter(|| pool.install(|| cpu::linear(&x, &w, None)))
        });
    }
    g.finish();
}

criterion_group!(benches, conv, gemm);
criterion_main!(benches);
