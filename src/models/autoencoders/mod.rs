//! The image autoencoders of latent diffusion, laid out as diffusers' `models/autoencoders`:
//! `autoencoder_kl` (the model, tiled decoding), `configuration_autoencoder_kl` (its config) and `vae` (its `Encoder`, `Decoder`,
//! blocks and posterior). A pipeline turns its sampler's latents into an image with
//! [`AutoencoderKL::decode_latents`] and [`crate::image::postprocess`].

pub mod autoencoder_kl;
pub mod configuration_autoencoder_kl;
pub mod vae;

pub use autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig, Tiling};
pub use vae::{Decoder, DiagonalGaussianDistribution, Encoder};
