//! The per-op profile of one U-Net's CPU forward (`cpu::profile`), the freelunch half of
//! `tools/profile_cpu.py`, which sets it against PyTorch's profiler on the same config.
//! A bench binary (no criterion): random weights, then FREELUNCH_PROFILE_ITERS forwards
//! (default 3, after one warm-up), each printed as one JSON line
//! `{"wall_ms": …, "ops": {"conv3x3": [ms, calls], …}}`.
//!
//! - FREELUNCH_PROFILE_CONFIG: the diffusers config (default tools/configs/ddpm-cifar10-32.json)
//! - FREELUNCH_PROFILE_SHAPE: the sample, `B,C,H,W` (default 8,3,32,32); conditional models get
//!   77 random text tokens of `cross_attention_dim`
//! - FREELUNCH_THREADS: threads (default all cores)
//! - FREELUNCH_PROFILE_DTYPE: `f32` (default) or `bf16` (the CPU device in bf16, AMX)
//! - FREELUNCH_PROFILE_WORKSPACE: `1` (default: the forwards reuse one workspace, as
//!   `freelunch sample` and the pipelines run them) or `0` (every output allocated afresh)

mod common;

use freelunch::backend::cpu::profile;
use freelunch::device::{DType, Device};
use freelunch::weights::RandomWeights;
use freelunch::{Tensor, UNet, UNetConfig, UNetInputs};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let config_path = common::root().join(env(
        "FREELUNCH_PROFILE_CONFIG",
        "tools/configs/ddpm-cifar10-32.json",
    ));
    let shape: Vec<usize> = env("FREELUNCH_PROFILE_SHAPE", "8,3,32,32")
        .split(',')
        .map(|s| s.trim().parse().expect("FREELUNCH_PROFILE_SHAPE: B,C,H,W"))
        .collect();
    let iters: usize = env("FREELUNCH_PROFILE_ITERS", "3").parse().expect("iters");
    let pool = common::pool();
    let config = UNetConfig::from_file(&config_path).unwrap();
    let conditional = config.is_conditional();
    let cad = config
        .levels
        .iter()
        .map(|l| l.cross_attention_dim)
        .max()
        .unwrap_or(768);
    let unet = UNet::load(config, &mut RandomWeights::new(0)).unwrap();
    let dtype: DType = env("FREELUNCH_PROFILE_DTYPE", "f32").parse().unwrap();
    let unet = unet.on(Device::Cpu.open(dtype).unwrap());
    // As `freelunch sample` and the pipelines run it: repeated calls reuse one workspace's
    // buffers. FREELUNCH_PROFILE_WORKSPACE=0 allocates every output afresh instead.
    let unet = if env("FREELUNCH_PROFILE_WORKSPACE", "1") == "0" {
        unet
    } else {
        unet.with_workspace(freelunch::workspace::Workspace::new())
    };
    let b = shape[0];
    let mut inputs = UNetInputs::new(Tensor::randn(shape.clone(), 1), 0.0);
    inputs.timesteps = (0..b).map(|i| (i * 117 % 1000) as f32).collect();
    if conditional {
        inputs.encoder_hidden_states = Some(Tensor::randn([b, 77, cad], 2));
    }
    profile::enable(true);
    pool.install(|| unet.forward(&inputs).unwrap());
    for _ in 0..iters {
        profile::reset();
        let t0 = std::time::Instant::now();
        pool.install(|| unet.forward(&inputs).unwrap());
        let wall = t0.elapsed().as_secs_f64() * 1e3;
        let ops: Vec<String> = profile::snapshot()
            .iter()
            .map(|e| format!("\"{}\": [{:.3}, {}]", e.op, e.seconds * 1e3, e.calls))
            .collect();
        println!(
            "{{\"wall_ms\": {wall:.3}, \"ops\": {{{}}}}}",
            ops.join(", ")
        );
    }
}
