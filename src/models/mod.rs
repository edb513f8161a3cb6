//! The U-Net, module by module as diffusers lays it out (`embeddings`, `resnet`,
//! `attention_processor`, `attention`, `transformer_2d`, `unet_2d_blocks`, `unet_2d`), so a
//! state-dict key maps to the code that uses it at a glance; and CLIP's tokenizer and text
//! encoders as transformers lays them out (`tokenization_clip`, `modeling_clip`), with diffusers'
//! `encode_prompt` over them (`encode_prompt`).

pub mod attention;
pub mod attention_processor;
pub mod embeddings;
pub mod encode_prompt;
pub mod modeling_clip;
pub mod resnet;
pub mod tokenization_clip;
pub mod transformer_2d;
pub mod unet_2d;
pub mod unet_2d_blocks;

use crate::boosters::Boosters;
use crate::device::Exec;
use crate::error::Result;
use crate::tensor::Tensor;
use unet_2d::UNetInputs;

/// A noise-prediction network: one U-Net, routed DeMe experts, or an engine's own model.
pub trait Denoiser: Send + Sync {
    /// The model output for `inputs` with this call's boosters.
    fn forward_with(&self, inputs: &UNetInputs, boosters: &Boosters) -> Result<Tensor>;

    /// Checks `inputs` against the model without computing anything, so a sampling loop can
    /// refuse conditioning the model cannot take before its first step (default: no checks;
    /// `forward_with` still checks).
    fn check(&self, _inputs: &UNetInputs) -> Result<()> {
        Ok(())
    }
}

/// A model that can run on any execution device.
pub trait Runnable: Send + Sync {
    /// The model output for `inputs` on `exec` with this call's boosters (a host tensor, like
    /// `Denoiser::forward_with`'s).
    fn run(&self, exec: &Exec, inputs: &UNetInputs, boosters: &Boosters) -> Result<Tensor>;

    /// As `Denoiser::check`.
    fn check(&self, _inputs: &UNetInputs) -> Result<()> {
        Ok(())
    }
}

/// A model bound to the device it runs on: what samplers take when the device is not the CPU.
pub struct Placed<M> {
    /// What runs: a `UNet`, DeMe's `Router`, or any other `Runnable`.
    pub model: M,
    /// The device every call of it runs on.
    pub exec: Exec,
}

impl<M: Runnable> Denoiser for Placed<M> {
    fn forward_with(&self, inputs: &UNetInputs, boosters: &Boosters) -> Result<Tensor> {
        self.model.run(&self.exec, inputs, boosters)
    }

    fn check(&self, inputs: &UNetInputs) -> Result<()> {
        self.model.check(inputs)
    }
}
