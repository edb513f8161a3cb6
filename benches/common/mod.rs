//! Shared by the benches: the thread pool they run in (FREELUNCH_THREADS, default all cores) and
//! the repo root they read configs from.
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
