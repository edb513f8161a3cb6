//! Prompt-to-image pipelines as diffusers lays them out: `pipeline_stable_diffusion` runs
//! `StableDiffusionPipeline` and `StableDiffusionXLPipeline` folders, and `pipeline_utils` reads a
//! folder's `model_index.json` and holds what they share (SDXL's size conditioning, the default
//! image size).

pub mod pipeline_stable_diffusion;
pub mod pipeline_utils;

pub use pipeline_stable_diffusion::{GenerateOptions, Generated, Prompt, StableDiffusionPipeline};
pub use pipeline_utils::{ModelIndex, PipelineKind};
