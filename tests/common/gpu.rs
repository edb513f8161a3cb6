//! The GPU test harness: one opened device per dtype (or none, reported as skipped), and the
//! comparison every GPU test makes against the CPU reference.

use std::sync::{Arc, OnceLock};

use freelunch::backend::cuda::{Gpu, GpuTensor};
use freelunch::backend::Backend;
use freelunch::device::{DType, Device};
use freelunch::Tensor;

pub const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// The GPU tolerances: f32 within 1e-4 of the CPU (no TF32), f16 with f32 accumulation within 1e-2.
///
/// bf16 is held to 2e-2, not f16's 1e-2: no bf16 implementation reaches 1e-2 on these
/// random-weight goldens. diffusers itself, in bf16, is 1.02e-2 to 1.71e-2 from its own f32
/// output on them (`tools/half_precision_error.py`), and rounding only the weights to bf16
/// (computing in f32) already costs 7-9e-3. This backend measures 1.0e-2 to 1.5e-2 (the same
/// range; f16 is 1.3e-3 to 2.2e-3, exactly 8x less, the 3 bits of significand between them).
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-4,
        DType::F16 => 1e-2,
        DType::BF16 => 2e-2,
    }
}

/// The devices to test on, one per dtype, with poisoned allocations. `FREELUNCH_DEVICE` (`emu`
/// for the PTX executor, or `cuda`) names the device, and then opening it must succeed; unset,
/// the first GPU is used where there is one, and where there is none the list is empty (each
/// test then prints `skipped: no CUDA device` and passes).
pub fn gpus(test: &str) -> &'static [(DType, Arc<Gpu>)] {
    static GPUS: OnceLock<Vec<(DType, Arc<Gpu>)>> = OnceLock::new();
    let gpus = GPUS.get_or_init(|| {
        let device = Device::from_env().unwrap_or_else(|e| panic!("{e}"));
        let device = match device {
            Some(d) => d,
            None if freelunch::backend::cuda::device_count() == 0 => return Vec::new(),
            None => Device::Cuda(0),
        };
        DTYPES
            .iter()
            .map(|&dt| {
                let gpu = match device {
                    Device::Emu(n) => Gpu::emulated(n, dt),
                    Device::Cuda(n) => Gpu::new(n, dt),
                    _ => unreachable!("from_env gives GPU devices"),
                }
                .unwrap_or_else(|e| panic!("opening {device:?} ({dt:?}): {e}"));
                gpu.set_poison(true);
                (dt, Arc::new(gpu))
            })
            .collect()
    });
    if gpus.is_empty() {
        println!("{test}: skipped: no CUDA device");
    }
    gpus
}

/// `got` (downloaded) against the CPU's `want`: same shape, no NaN (poisoned memory that a
/// kernel never wrote reads as NaN), relative L2 within the dtype's tolerance. The reference
/// must not be all zeros.
pub fn compare(gpu: &Gpu, what: &str, got: &GpuTensor, want: &Tensor) -> Result<f64, String> {
    let got = gpu.download(got).map_err(|e| format!("{what}: {e}"))?;
    if got.shape() != want.shape() {
        return Err(format!(
            "{what}: shape {:?}, want {:?}",
            got.shape(),
            want.shape()
        ));
    }
    if want.data().iter().all(|&v| v == 0.0) {
        return Err(format!("{what}: the reference is all zeros"));
    }
    if let Some(i) = got.data().iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "{what}: element {i} is {} ({:?})",
            got.data()[i],
            gpu.dtype()
        ));
    }
    let err = got.rel_l2(want);
    if err > tolerance(gpu.dtype()) {
        return Err(format!("{what} ({:?}): rel L2 {err:.3e}", gpu.dtype()));
    }
    Ok(err)
}

/// The GPU device a test opens itself (a fresh context, not the shared `gpus`): as `gpus`
/// chooses it, or None (printing `skipped: no CUDA device`) where there is none.
pub fn device(test: &str) -> Option<Device> {
    match Device::from_env().unwrap_or_else(|e| panic!("{e}")) {
        Some(d) => Some(d),
        None if freelunch::backend::cuda::device_count() == 0 => {
            println!("{test}: skipped: no CUDA device");
            None
        }
        None => Some(Device::Cuda(0)),
    }
}
