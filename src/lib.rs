#![doc = include_str!("../README.md")]

pub mod backend;
pub mod boosters;
pub mod builtin;
pub mod config;
pub mod device;
pub mod dtype;
pub mod error;
pub mod eval;
pub mod hub;
pub mod image;
pub mod models;
pub mod nn;
pub mod output;
pub mod pipelines;
pub mod rng;
pub mod safetensors_io;
pub mod schedulers;
pub mod shape;
pub mod tensor;
pub mod uid;
pub mod weights;
pub mod workspace;

pub use config::UNetConfig;
pub use error::{Error, Result};
pub use models::unet_2d::{UNet, UNet2DConditionModel, UNet2DModel, UNetInputs};
pub use shape::Shape;
pub use tensor::Tensor;
