//! Shared by the benches: the thread pool they run in (FREELUNCH_THREADS, default all cores).

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
