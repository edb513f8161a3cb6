//! Shared by the benches: the thread pool they run in (FREELUNCH_THREADS, default all cores),
//! the repo root they read configs from, the GPU they run on, MaskUNet masks for a model, and
//! the timing benches' medians and shape lists.
#![allow(dead_code)]

use std::path::PathBuf;

/// The repo root: `FREELUNCH_ROOT` if set (bench binaries carried to another machine and run
/// from a copy of the repo), else the compiled-in manifest dir.
pub fn root() -> PathBuf {
    std::env::var_os("FREELUNCH_ROOT").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}

/// The GPU benches' device in `FREELUNCH_DTYPE` (f16 by default): `FREELUNCH_DEVICE` (`emu` for
/// the PTX executor, where the figures are the executor's speed, not a GPU's; or `cuda`), else
/// the first GPU; None (after printing `skipped: no CUDA device`) where there is none.
pub fn gpu() -> Option<std::sync::Arc<freelunch::backend::cuda::Gpu>> {
    use freelunch::device::{DType, Device};
    let dtype: DType = std::env::var("FREELUNCH_DTYPE")
        .unwrap_or_else(|_| "f16".into())
        .parse()
        .expect("FREELUNCH_DTYPE");
    let gpu = match Device::from_env().expect("FREELUNCH_DEVICE") {
        Some(Device::Emu(n)) => freelunch::backend::cuda::Gpu::emulated(n, dtype),
        Some(Device::Cuda(n)) => freelunch::backend::cuda::Gpu::new(n, dtype),
        _ if freelunch::backend::cuda::device_count() == 0 => {
            println!("skipped: no CUDA device");
            return None;
        }
        _ => freelunch::backend::cuda::Gpu::new(0, dtype),
    }
    .expect("opening the GPU");
    println!(
        "device: {} ({dtype:?}){}",
        gpu.name(),
        if gpu.is_emulated() {
            " — the PTX executor: these are its speeds, not a GPU's"
        } else {
            ""
        }
    );
    Some(std::sync::Arc::new(gpu))
}

pub fn threads() -> usize {
    std::env::var("FREELUNCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

pub fn pool() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads())
        .build()
        .expect("thread pool")
}

/// Random MaskUNet masks (keep probability 0.9) on the official layer selection of `unet`:
/// one per sample of `batch` if `per_sample`, else one shared.
pub fn official_masks(
    unet: &freelunch::UNet,
    per_sample: bool,
    batch: usize,
) -> freelunch::boosters::MaskSet {
    use freelunch::boosters::mask_generator::maskunet_layers;
    use freelunch::boosters::masks::WeightMask;
    let mut set = freelunch::boosters::MaskSet::new();
    let mut rng = freelunch::rng::Rng::new(7);
    for (name, [out, inp]) in maskunet_layers(unet).into_values().flatten() {
        let n = if per_sample { batch } else { 1 };
        let bytes: Vec<u8> = (0..n * out * inp)
            .map(|_| u8::from(rng.uniform() < 0.9))
            .collect();
        let mask =
            WeightMask::from_bytes(vec![out, inp], None, per_sample.then_some(batch), &bytes)
                .unwrap();
        set.insert(name, mask).unwrap();
    }
    set
}

/// The median of `v` (non-empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Shapes from the environment variable `var` (else `default`): `a,b,c;d,e,f;...`.
pub fn spec(var: &str, default: &str) -> Vec<Vec<usize>> {
    std::env::var(var)
        .unwrap_or_else(|_| default.to_string())
        .split(';')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.split(',').map(|v| v.trim().parse().expect(var)).collect())
        .collect()
}
