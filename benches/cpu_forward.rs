//! CPU forward of the google/ddpm-cifar10-32 architecture (random weights, batch 8), the figure
//! BENCHMARKS.md sets against `tools/bench_diffusers_cpu.py` on the same config and threads.
//! Threads: FREELUNCH_THREADS (default: all cores).

mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use freelunch::weights::RandomWeights;
use freelunch::{Tensor, UNet, UNetConfig, UNetInputs};

fn ddpm_cifar10(c: &mut Criterion) {
    let threads = common::threads();
    let pool = common::pool();
    let config_path = common::root().join("tools/configs/ddpm-cifar10-32.json");
    let config = UNetConfig::from_file(&config_path).unwrap();
    let unet = UNet::load(config, &mut RandomWeights::new(0)).unwrap();
    let mut inputs = UNetInputs::new(Tensor::randn([8, 3, 32, 32], 1), 0.0);
    inputs.timesteps = (0..8).map(|i| (i * 117 % 1000) as f32).collect();
    let mut group = c.benchmark_group("cpu_forward");
    group.sample_size(10);
    group.bench_function(format!("ddpm_cifar10_32_b8_t{threads}"), |b| {
        b.iter(|| pool.install(|| unet.forward(&inputs).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, ddpm_cifar10);
criterion_main!(benches);
