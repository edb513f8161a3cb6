//! Where a model runs. The CPU backend is always there; the CUDA backend is the subject of its
//! own issue and, until it lands, asking for it is a clear error rather than a silent fallback.

use std::str::FromStr;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl FromStr for Device {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| {
                    Error::Msg(format!(
                        "unknown device `{s}` (expected cpu, cuda or cuda:N)"
                    ))
                }),
        }
    }
}

impl Device {
    /// Ok when models can run on this device in this build.
    pub fn ensure_available(self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(n) => Err(Error::Msg(format!(
                "device cuda:{n}: this build has no CUDA backend yet; use --device cpu"
            ))),
        }
    }
}
