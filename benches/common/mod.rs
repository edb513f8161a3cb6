//! Shared by the benches: the thread pool they run in (FREELUNCH_THREADS, default all cores),
//! the repo root they read configs from, and MaskUNet masks for a model.
#![allow(dead_code)]

use std::path::PathBuf;

/// The repo root: `FREELUNCH_ROOT` if set (bench binaries carried to another machine and run
/// from a copy of the repo), else the compiled-in manifest dir.
pub fn root() -> PathBuf {
    std::env::var_os("FREELUNCH_ROOT").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
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
            WeightMask::from_bytes(vec![out, inp], None, per_sample.then_some(batch), &bytes);
        set.insert(name, mask);
    }
    set
}
