//! Where a model runs and in which storage type: `--device cpu|cuda[:N]|emu[:N]`, `--dtype
//! f32|f16|bf16`. Opening a CUDA device checks for the driver library and a GPU first and answers
//! with an error, never a panic, where either is missing. `emu` is the CUDA backend on the PTX
//! executor (`emu/` in this workspace): the same host code and kernels, run on the CPU.

use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The first CUDA device if one can be opened, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
    /// The CUDA backend on the PTX executor, which stands in for the driver (never chosen by
    /// `auto`).
    Emu(usize),
}

impl FromStr for Device {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            "emu" => Ok(Device::Emu(0)),
            _ => {
                let ordinal = |prefix: &str| s.strip_prefix(prefix).and_then(|n| n.parse().ok());
                ordinal("cuda:")
                    .map(Device::Cuda)
                    .or_else(|| ordinal("emu:").map(Device::Emu))
                    .ok_or_else(|| Error::DeviceUnavailable {
                        device: s.to_string(),
                        msg: format!(
                            "unknown device `{s}` (expected auto, cpu, cuda, cuda:N, emu or emu:N)"
                        ),
                    })
            }
        }
    }
}

/// The storage type of weights and activations on a device; arithmetic accumulates in f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DType {
    #[default]
    F32,
    F16,
    BF16,
}

impl DType {
    /// The kernel-name suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

impl FromStr for DType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(DType::F32),
            "f16" | "fp16" | "float16" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            _ => Err(Error::Unsupported {
                field: "dtype".into(),
                value: s.into(),
            }),
        }
    }
}

/// An opened device, ready to run models.
#[derive(Clone)]
pub enum Exec {
    Cpu,
    Cuda(Arc<crate::cuda::Gpu>),
}

impl Exec {
    /// The type weights and activations are stored in (always f32 on the CPU).
    pub fn dtype(&self) -> DType {
        match self {
            Exec::Cpu => DType::F32,
            Exec::Cuda(gpu) => gpu.dtype,
        }
    }
}

impl Device {
    /// The device the test and bench binaries use: `FREELUNCH_DEVICE` (`emu`, `emu:N`, `cuda`,
    /// `cuda:N`), or `None` where it is unset and they use a real GPU if there is one.
    pub fn from_env() -> Result<Option<Device>> {
        match std::env::var("FREELUNCH_DEVICE") {
            Ok(v) if !v.is_empty() => match v.parse()? {
                d @ (Device::Emu(_) | Device::Cuda(_)) => Ok(Some(d)),
                d => Err(Error::DeviceUnavailable {
                    device: v.clone(),
                    msg: format!(
                        "FREELUNCH_DEVICE={v}: {d:?} is not a GPU device (emu, emu:N, cuda, \
                         cuda:N)"
                    ),
                }),
            },
            _ => Ok(None),
        }
    }

    /// Opens the device; the CPU only computes in f32.
    pub fn open(self, dtype: DType) -> Result<Exec> {
        match self {
            Device::Auto if crate::cuda::device_count() == 0 => Device::Cpu.open(dtype),
            Device::Auto => Device::Cuda(0).open(dtype).or_else(|e| {
                eprintln!("freelunch: {e}; running on the CPU");
                Device::Cpu.open(dtype)
            }),
            Device::Cpu if dtype != DType::F32 => Err(Error::DeviceUnavailable {
                device: "cpu".into(),
                msg: format!(
                    "the CPU backend computes in f32; --dtype {} needs --device cuda",
                    dtype.suffix()
                ),
            }),
            Device::Cpu => Ok(Exec::Cpu),
            Device::Cuda(n) => Ok(Exec::Cuda(Arc::new(crate::cuda::Gpu::new(n, dtype)?))),
            Device::Emu(n) => Ok(Exec::Cuda(Arc::new(crate::cuda::Gpu::emulated(n, dtype)?))),
        }
    }
}
