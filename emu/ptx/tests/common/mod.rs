//! Shared helpers for the ISA conformance tests: a small device, buffers in and out, launches
//! and fault matching. Nothing here knows any instruction's semantics; those live in the tests,
//! transcribed from the PTX ISA.

#![allow(dead_code)]

use freelunch_ptx::{
    pack_params, Device, DeviceConfig, EmuError, Fault, FaultKind, LaunchRequest, Order, RunOptions,
};

/// The module header every test kernel starts with.
pub const HEADER: &str = ".version 8.0\n.target sm_80\n.address_size 64\n";

/// A device with all checks on, one host thread, and an instruction budget small enough that a
/// hang becomes a `Watchdog` fault in well under a second instead of a stuck test.
pub fn device() -> Device {
    device_with(Order::Forward)
}

pub fn device_with(order: Order) -> Device {
    Device::new(
        DeviceConfig::h200(1 << 26),
        RunOptions {
            threads: 1,
            order,
            budget: 1 << 24,
            ..Default::default()
        },
    )
}

/// Allocates and fills a buffer with `bytes`.
pub fn upload(dev: &Device, bytes: &[u8]) -> u64 {
    let addr = dev.alloc(bytes.len().max(1) as u64).expect("alloc");
    dev.write(addr, bytes).expect("write");
    addr
}

pub fn upload_u32(dev: &Device, words: &[u32]) -> u64 {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    upload(dev, &bytes)
}

pub fn upload_f32(dev: &Device, values: &[f32]) -> u64 {
    let words: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
    upload_u32(dev, &words)
}

/// An output buffer of `words` u32s, every byte set to `fill` so that slots a kernel leaves
/// alone read back as a known value.
pub fn output(dev: &Device, words: usize, fill: u8) -> u64 {
    let bytes = (words * 4) as u64;
    let addr = dev.alloc(bytes).expect("alloc");
    dev.memset(addr, fill, bytes).expect("memset");
    addr
}

pub fn download_u32(dev: &Device, addr: u64, words: usize) -> Vec<u32> {
    let mut bytes = vec![0u8; words * 4];
    dev.read(addr, &mut bytes).expect("read");
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn download_f32(dev: &Device, addr: u64, words: usize) -> Vec<f32> {
    download_u32(dev, addr, words)
        .into_iter()
        .map(f32::from_bits)
        .collect()
}

/// Loads `ptx` (which must parse and decode) and launches `kernel` on a 1-D grid and block.
pub fn launch(
    dev: &Device,
    ptx: &str,
    kernel: &str,
    grid: u32,
    block: u32,
    args: &[&[u8]],
) -> Result<(), EmuError> {
    let m = dev
        .load_module(ptx)
        .unwrap_or_else(|e| panic!("the test kernel does not load: {e}\n{ptx}"));
    let k = &m.kernels[kernel];
    let params = pack_params(k, args);
    let r = dev.launch(
        k,
        &LaunchRequest {
            grid: [grid, 1, 1],
            block: [block, 1, 1],
            dynamic_smem: 0,
            max_dynamic_smem: 48 * 1024,
            params: &params,
        },
    );
    dev.unload(m);
    r.map(|_| ())
}

/// Like `launch`, panicking with the fault if the kernel does not run cleanly.
pub fn run(dev: &Device, ptx: &str, kernel: &str, grid: u32, block: u32, args: &[&[u8]]) {
    if let Err(e) = launch(dev, ptx, kernel, grid, block, args) {
        panic!("kernel `{kernel}` failed: {e}");
    }
}

/// Asserts that a launch ended in a fault of one of `kinds` on an instruction whose text
/// contains `opcode`, and returns the fault.
pub fn expect_fault(r: Result<(), EmuError>, kinds: &[FaultKind], opcode: &str) -> Fault {
    match r {
        Ok(()) => panic!("expected a {kinds:?} fault at `{opcode}`, the launch succeeded"),
        Err(EmuError::Fault(f)) => {
            assert!(
                kinds.contains(&f.kind),
                "expected a {kinds:?} fault at `{opcode}`, got {:?}: {f}",
                f.kind
            );
            assert!(
                f.instruction.contains(opcode),
                "the fault should name the `{opcode}` instruction: {f}"
            );
            *f
        }
        Err(e) => panic!("expected a {kinds:?} fault at `{opcode}`, got {e}"),
    }
}
