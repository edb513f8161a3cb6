//! freelunch: diffusion U-Nets from diffusers checkpoints, run on hand-written kernels, with the
//! training-free quality boosters of recent papers built in.
//!
//! ```no_run
//! use freelunch::{Tensor, UNet, UNetInputs};
//!
//! # fn main() -> freelunch::Result<()> {
//! let unet = UNet::from_dir("tests/fixtures/ddpm_basic".as_ref())?;
//! let sample = Tensor::randn([2, 3, 16, 16], 0);
//! let out = unet.forward(&UNetInputs::new(sample, 500.0))?;
//! assert_eq!(out.shape(), &[2, 3, 16, 16]);
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod cpu;
pub mod device;
pub mod error;
pub mod models;
pub mod nn;
pub mod rng;
pub mod safetensors_io;
pub mod tensor;
pub mod weights;

pub use config::UNetConfig;
pub use error::{Error, Result};
pub use models::unet_2d::{UNet, UNet2DConditionModel, UNetInputs};
pub use tensor::Tensor;
