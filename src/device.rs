//! Where a model runs and in which storage type: `--device cpu|cuda[:N]|emu[:N]`, `--dtype
//! f32|f16|bf16`. Opening a CUDA device checks for the driver library and a GPU first and answers
//! with an error, never a panic, where either is missing. `emu` is the CUDA backend on the PTX
//! executor (`emu/` in this workspace): the same host code and kernels, run on the CPU.

use std::str::FromStr;
use std::sync::Arc;

pub use crate::dtype::DType;
use crate::error::{Error, Result};

/// A device to run on, as `--device` names it (`auto`, `cpu`, `cuda`, `cuda:N`, `emu`, `emu:N`;
/// see `FromStr`); [`Device::open`] turns it into an [`Exec`].
///
/// ```
/// use freelunch::device::{DType, Device};
///
/// let device: Device = "cpu".parse()?;
/// assert_eq!(device, Device::Cpu);
/// let exec = device.open(DType::F32)?;
/// assert_eq!(exec.dtype(), DType::F32);
/// // The CPU backend computes in f32, or in bf16 where it has AMX; never in f16.
/// assert!(Device::Cpu.open(DType::F16).is_err());
/// # Ok::<(), freelunch::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The first CUDA device if one can be opened, else the CPU.
    Auto,
    /// The multi-threaded CPU reference backend (f32; bf16 products on CPUs with AMX-BF16).
    Cpu,
    /// The CUDA device of this ordinal (compute capability 8.0 or newer).
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

/// An opened device, ready to run models: [`UNet::on`](crate::UNet::on) places a model on it
/// (models placed on one `Exec` share its context and stream).
///
/// ```
/// use freelunch::device::{DType, Device};
/// use freelunch::models::Denoiser;
/// use freelunch::{Tensor, UNet, UNetInputs};
///
/// let exec = Device::Cpu.open(DType::F32)?;
/// let unet = UNet::from_dir("tests/fixtures/ddpm_basic".as_ref())?;
/// let placed = unet.on(exec);
/// let inputs = UNetInputs::new(Tensor::randn([1, 3, 16, 16], 0), 250.0);
/// let out = placed.forward_with(&inputs, &Default::default())?;
/// assert_eq!(out.shape(), &[1, 3, 16, 16]);
/// # Ok::<(), freelunch::Error>(())
/// ```
#[derive(Clone)]
pub enum Exec {
    /// The CPU backend, with the precision of its products.
    Cpu(crate::backend::Cpu),
    /// A CUDA device (or the PTX executor standing in for one), shared by every model placed
    /// on it.
    Cuda(Arc<crate::backend::cuda::Gpu>),
}

impl Exec {
    /// The CPU backend in f32.
    pub fn cpu() -> Exec {
        Exec::Cpu(crate::backend::Cpu)
    }

    /// The type weights and activations are stored in; on the CPU, the type its convolutions
    /// and linear layers compute in (storage stays f32 there).
    pub fn dtype(&self) -> DType {
        match self {
            Exec::Cpu(cpu) => cpu.dtype(),
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

    /// Opens the device. The CPU computes in f32, or with `DType::BF16` runs its convolutions
    /// and linear layers in bf16 on AMX tiles (as PyTorch's CPU autocast does), where the CPU
    /// has AMX-BF16 and the OS grants the tile state; f16 is a GPU type.
    pub fn open(self, dtype: DType) -> Result<Exec> {
        match self {
            Device::Auto if crate::backend::cuda::device_count() == 0 => Device::Cpu.open(dtype),
            Device::Auto => Device::Cuda(0).open(dtype).or_else(|e| {
                eprintln!("freelunch: {e}; running on the CPU");
                Device::Cpu.open(dtype)
            }),
            Device::Cpu => match dtype {
                DType::F32 => Ok(Exec::cpu()),
                DType::BF16 if crate::backend::cpu::gemm::bf16_available() => {
                    Ok(Exec::Cpu(crate::backend::Cpu::BF16))
                }
                DType::BF16 => Err(Error::DeviceUnavailable {
                    device: "cpu".into(),
                    msg: "--dtype bf16 on the CPU needs AMX-BF16 (Intel Sapphire Rapids or newer) \
                          and Linux 5.16+ to grant its tile state; this CPU or OS has not: use \
                          --dtype f32, or --device cuda"
                        .into(),
                }),
                DType::F16 => Err(Error::DeviceUnavailable {
                    device: "cpu".into(),
                    msg: "the CPU backend computes in f32 or bf16; --dtype f16 needs --device cuda"
                        .into(),
                }),
            },
            Device::Cuda(n) => Ok(Exec::Cuda(Arc::new(crate::backend::cuda::Gpu::new(
                n, dtype,
            )?))),
            Device::Emu(n) => Ok(Exec::Cuda(Arc::new(crate::backend::cuda::Gpu::emulated(
                n, dtype,
            )?))),
        }
    }
}
