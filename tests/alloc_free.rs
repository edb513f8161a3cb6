//! Repeated forward calls of one shape allocate nothing on the CPU backend once a workspace
//! holds their buffers: the engine API's promise of copy-free I/O. A counting global allocator
//! (this test binary's alone) counts every allocation on every thread, so this binary holds a
//! single test, and the model runs on a pool of its own with one thread (with more, which
//! worker drops which tensor varies from call to call, and a worker may take a call or two
//! more to hold what it needs; `cargo bench --bench alloc` measures the two-thread case). On a
//! CPU without AVX-512F the products run in the `gemm` crate, which allocates on every call.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use freelunch::boosters::masks::{MaskSet, WeightMask};
use freelunch::boosters::Boosters;
use freelunch::device::{DType, Device};
use freelunch::workspace::Workspace;
use freelunch::{Tensor, UNet, UNetInputs};

mod common;

struct Counting;

static COUNT: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call goes to the system allocator unchanged; the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        COUNT.fetch_add(1, Relaxed);
        // SAFETY: as the caller's contract with `GlobalAlloc::alloc`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        COUNT.fetch_add(1, Relaxed);
        // SAFETY: as the caller's contract with `GlobalAlloc::alloc_zeroed`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        COUNT.fetch_add(1, Relaxed);
        // SAFETY: as the caller's contract with `GlobalAlloc::realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations made by calls 3 to 5 of `call` (the first two fill the workspace and the
/// threads' buffers).
fn allocations_after_warm_up(mut call: impl FnMut()) -> Vec<u64> {
    call();
    call();
    (0..3)
        .map(|_| {
            let before = COUNT.load(Relaxed);
            call();
            COUNT.load(Relaxed) - before
        })
        .collect()
}

fn pooled(dir: &str) -> (UNet, UNet) {
    let unet = UNet::from_dir(dir.as_ref()).unwrap();
    let one_thread = unet
        .to(Device::Cpu, DType::F32)
        .unwrap()
        .with_threads(1)
        .unwrap()
        .with_workspace(Workspace::new());
    (unet, one_thread)
}

#[test]
fn repeated_forward_calls_allocate_nothing() {
    // An SD-like U-Net (convolutions, GroupNorm, self- and cross-attention, GEGLU), plain and
    // with MaskUNet masks on some of its linear and convolution layers, and a DDPM U-Net.
    let (sd, sd_pooled) = pooled("tests/fixtures/sd15_like");
    let mut inputs = UNetInputs::new(Tensor::randn([2, 4, 16, 16], 1), 400.0);
    let d = sd.config.levels[0].cross_attention_dim;
    inputs.encoder_hidden_states = Some(Tensor::randn([2, 7, d], 2));
    let mut masks = MaskSet::new();
    let layers: Vec<_> = sd.layers().iter().collect();
    let picked = layers.iter().step_by(layers.len() / 8).take(8);
    for (k, (name, shape)) in picked.enumerate() {
        let n: usize = shape.iter().product();
        let bytes = common::random_mask_bytes(2 * n, 0.6, k as u64);
        let m = WeightMask::from_bytes(shape.to_vec(), None, Some(2), &bytes).unwrap();
        masks.insert(name.to_string(), m).unwrap();
    }
    let masked = Boosters {
        masks: Some(Arc::new(masks)),
        ..Boosters::default()
    };
    let (ddpm, ddpm_pooled) = pooled("tests/fixtures/ddpm_basic");
    let ddpm_inputs = UNetInputs::new(Tensor::randn([2, 3, 16, 16], 3), 250.0);

    let cases: [(&str, &UNet, &UNet, &UNetInputs, Boosters); 3] = [
        ("sd15_like", &sd, &sd_pooled, &inputs, Boosters::default()),
        ("sd15_like masked", &sd, &sd_pooled, &inputs, masked),
        (
            "ddpm_basic",
            &ddpm,
            &ddpm_pooled,
            &ddpm_inputs,
            Boosters::default(),
        ),
    ];
    for (what, plain, model, inputs, boosters) in cases {
        let expected = plain.forward_with(inputs, &boosters).unwrap();
        let mut out = vec![f32::NAN; expected.numel()];
        let counts = allocations_after_warm_up(|| {
            model.forward_into(inputs, &boosters, &mut out).unwrap();
        });
        // The calls did the work: their output is the plain forward's, bit for bit.
        assert_eq!(out, expected.data(), "{what}");
        if freelunch::backend::cpu::gemm::own_enabled() {
            assert_eq!(counts, [0, 0, 0], "{what}: allocations per call");
        } else {
            // Without AVX-512F the `gemm` crate runs the products and allocates its bookkeeping
            // on every call (src/workspace.rs says so): the count must hold steady, not grow.
            eprintln!("{what}: no AVX-512F here, {counts:?} allocations per call (the gemm crate)");
            assert!(
                counts.iter().all(|&c| c == counts[0]),
                "{what}: {counts:?} per call"
            );
        }
    }
}
