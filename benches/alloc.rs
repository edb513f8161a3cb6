//! Bytes allocated by one U-Net forward on the CPU, after a warm-up call: the total the
//! allocator hands out per call (every buffer, however short-lived), the number of
//! allocations, and the peak above what was live before the call. The figures BENCHMARKS.md
//! keeps for the engine API's copy-free I/O. A counting global allocator in this binary alone
//! measures them; nothing is timed.
//!
//! Each model is measured twice: plain `forward` calls, and `forward_into` calls of a handle with
//! a `Workspace` (its first call fills it, the later ones reuse it).
//!
//! `cargo bench --bench alloc` runs the SD1.5 architecture (random weights, the issue's
//! `[2, 4, 32, 32]` call with 77 tokens); `FREELUNCH_ALLOC_CONFIG=tools/configs/X.json` and
//! `FREELUNCH_ALLOC_SHAPE=B,C,H,W` change the model and the call; `FREELUNCH_ALLOC_TRACE=1` (or
//! `full`) lists where the third workspace call allocates, by call stack.

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use freelunch::weights::RandomWeights;
use freelunch::{Tensor, UNet, UNetConfig, UNetInputs};

struct Counting;

static TOTAL: AtomicU64 = AtomicU64::new(0);
static COUNT: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);
/// Bytes by allocation size: below 64 KiB, below 1 MiB, from 1 MiB.
static BY_SIZE: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

fn size_class(size: u64) -> usize {
    match size {
        0..65_536 => 0,
        65_536..1_048_576 => 1,
        _ => 2,
    }
}

/// Whether allocations are being traced (`FREELUNCH_ALLOC_TRACE=1`, the last workspace call).
static TRACING: AtomicBool = AtomicBool::new(false);
/// The sizes and call stacks of the allocations traced.
static TRACES: Mutex<Vec<(u64, Backtrace)>> = Mutex::new(Vec::new());

thread_local! {
    /// Set while this thread records a trace (whose own allocations are not traced).
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

fn trace(size: u64) {
    let _ = IN_TRACE.try_with(|busy| {
        if !busy.replace(true) {
            let bt = Backtrace::force_capture();
            TRACES.lock().unwrap().push((size, bt));
            busy.set(false);
        }
    });
}

/// The allocation sites traced, most frequent first: the innermost few crate frames of each
/// (`FREELUNCH_ALLOC_TRACE=full`: the innermost frames of any crate, past the allocator's).
fn report_traces() {
    let full = std::env::var("FREELUNCH_ALLOC_TRACE").is_ok_and(|v| v == "full");
    let traces = std::mem::take(&mut *TRACES.lock().unwrap());
    let mut sites: HashMap<String, (u64, u64)> = HashMap::new();
    for (size, bt) in &traces {
        let text = bt.to_string();
        let frames: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("at "))
            .map(|l| l.split_once(": ").map_or(l, |(_, f)| f))
            .skip_while(|f| {
                full && (f.contains("alloc::")
                    || f.contains("alloc_impl")
                    || f.starts_with("std::backtrace")
                    || f.starts_with("__rust")
                    || f.contains("LocalKey"))
            })
            .filter(|f| full || f.contains("freelunch::"))
            .take(if full { 5 } else { 4 })
            .collect();
        let e = sites.entry(frames.join(" <- ")).or_default();
        e.0 += 1;
        e.1 += size;
    }
    let mut sites: Vec<_> = sites.into_iter().collect();
    sites.sort_by_key(|s| std::cmp::Reverse(s.1 .0));
    for (site, (count, bytes)) in sites.iter().take(40) {
        println!("alloc/trace {count:>5} × ({bytes:>8} B): {site}");
    }
}

// SAFETY: every call goes to the system allocator unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = layout.size() as u64;
        // What tracing allocates for itself is not counted (only its bytes live are).
        if !IN_TRACE.try_with(Cell::get).unwrap_or(true) {
            TOTAL.fetch_add(size, Relaxed);
            COUNT.fetch_add(1, Relaxed);
            BY_SIZE[size_class(size)].fetch_add(size, Relaxed);
            if TRACING.load(Relaxed) {
                trace(size);
            }
        }
        let live = LIVE.fetch_add(size, Relaxed) + size;
        PEAK.fetch_max(live, Relaxed);
        // SAFETY: as the caller's contract with `GlobalAlloc::alloc`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as u64, Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and wants no run.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config_path = std::env::var("FREELUNCH_ALLOC_CONFIG")
        .map_or_else(|_| root.join("tools/configs/sd15.json"), Into::into);
    let config = UNetConfig::from_file(&config_path).unwrap();
    let shape: Vec<usize> = std::env::var("FREELUNCH_ALLOC_SHAPE")
        .unwrap_or_else(|_| format!("2,{},32,32", config.in_channels))
        .split(',')
        .map(|d| d.trim().parse().expect("FREELUNCH_ALLOC_SHAPE: B,C,H,W"))
        .collect();
    // One single-threaded product of the shape of an SD 3×3 convolution's weight tile against
    // its patch rows, operands allocated beforehand, twice: the first call on a thread grows that
    // thread's packing buffers (where the own AVX-512 kernel runs); later calls should allocate
    // nothing (the `gemm` crate, where it runs instead, allocates its panels on every call).
    {
        use freelunch::backend::cpu::gemm::{sgemm, Mat, Precision, Threads};
        let (m, n, k) = (64, 1024, 2880);
        let (a, b, mut c) = (
            vec![1.0f32; m * k],
            vec![1.0f32; k * n],
            vec![0.0f32; m * n],
        );
        for call in 1..=2 {
            let before = TOTAL.load(Relaxed);
            let calls = COUNT.load(Relaxed);
            sgemm(
                m,
                n,
                k,
                &a,
                Mat::row_major(0, k),
                &b,
                Mat::row_major(0, n),
                &mut c,
                Mat::row_major(0, n),
                false,
                1.0,
                Threads::Single,
                Precision::F32,
            );
            println!(
                "alloc/sgemm {m}x{n}x{k} call {call}: {:.2} MiB in {} allocations (operands {:.2} MiB)",
                mib(TOTAL.load(Relaxed) - before),
                COUNT.load(Relaxed) - calls,
                mib(((m * k + k * n + m * n) * 4) as u64)
            );
        }
    }
    let unet = UNet::load(config.clone(), &mut RandomWeights::new(0)).unwrap();
    let mut inputs = UNetInputs::new(Tensor::randn(shape.clone(), 1), 500.0);
    if config.is_conditional() {
        let d = config.levels[0].cross_attention_dim;
        inputs.encoder_hidden_states = Some(Tensor::randn([shape[0], 77, d], 2));
    }
    let ws = freelunch::workspace::Workspace::new();
    let pooled = unet.clone().with_workspace(ws.clone());
    let mut out = vec![0.0; unet.forward(&inputs).unwrap().numel()];
    let trace = std::env::var_os("FREELUNCH_ALLOC_TRACE").is_some();
    for (model, label) in [(&unet, "forward"), (&pooled, "forward_into, workspace")] {
        for call in 1..=3 {
            let (total, count) = (TOTAL.load(Relaxed), COUNT.load(Relaxed));
            let live = LIVE.load(Relaxed);
            let by_size = BY_SIZE.each_ref().map(|b| b.load(Relaxed));
            PEAK.store(live, Relaxed);
            TRACING.store(label != "forward" && call == 3 && trace, Relaxed);
            if label == "forward" {
                drop(model.forward(&inputs).unwrap());
            } else {
                model
                    .forward_into(&inputs, &Default::default(), &mut out)
                    .unwrap();
            }
            TRACING.store(false, Relaxed);
            // Read before anything below allocates.
            let (total, count) = (TOTAL.load(Relaxed) - total, COUNT.load(Relaxed) - count);
            let peak = PEAK.load(Relaxed) - live;
            let by_size: [u64; 3] = std::array::from_fn(|i| BY_SIZE[i].load(Relaxed) - by_size[i]);
            if label != "forward" && call == 3 && trace {
                report_traces();
            }
            let by_size: Vec<String> = by_size.iter().map(|&b| format!("{:.1}", mib(b))).collect();
            println!(
                "alloc/{} {shape:?} {label} call {call}: {:.1} MiB in {count} allocations, peak \
                 +{:.1} MiB (MiB in blocks < 64 KiB / < 1 MiB / larger: {})",
                config_path.file_stem().unwrap().to_string_lossy(),
                mib(total),
                mib(peak),
                by_size.join(" / "),
            );
        }
    }
    println!("alloc/workspace after the calls: {:?}", ws.stats());
}
