//! The U-Net, module by module as diffusers lays it out (`embeddings`, `resnet`,
//! `attention_processor`, `attention`, `transformer_2d`, `unet_2d_blocks`, `unet_2d`), so a
//! state-dict key maps to the code that uses it at a glance.

pub mod attention;
pub mod attention_processor;
pub mod embeddings;
pub mod resnet;
pub mod transformer_2d;
pub mod unet_2d;
pub mod unet_2d_blocks;
