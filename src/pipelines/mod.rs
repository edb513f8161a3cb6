//! Prompt-to-image pipelines as diffusers lays them out: `pipeline_utils` reads a pipeline
//! folder's `model_index.json` and holds what the Stable Diffusion pipelines share (SDXL's size
//! conditioning, the default image size).

pub mod pipeline_utils;

pub use pipeline_utils::{ModelIndex, PipelineKind};
