//! The storage types a device keeps weights and activations in (re-exported as
//! `device::DType`). Apart from `device` so that the backends, which `device` opens, read it
//! without importing the module that opens them.

use std::str::FromStr;

use crate::error::{Error, Result};

/// The storage type of weights and activations on a device; arithmetic accumulates in f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE floats; on the GPU, exact FFMA (no TF32).
    #[default]
    F32,
    /// IEEE half precision (tensor cores, f32 accumulation; GPU only).
    F16,
    /// bfloat16 (tensor cores, f32 accumulation; GPU only).
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

    /// Bytes per element.
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
