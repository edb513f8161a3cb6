//! A pipeline folder as diffusers' `DiffusionPipeline.from_pretrained` reads it: its
//! `model_index.json` names the pipeline class and, per component folder (`unet`, `vae`,
//! `text_encoder`, `tokenizer`, `scheduler`, ...), the library and class that loads it; the other
//! keys are the pipeline's own config (`force_zeros_for_empty_prompt` for SDXL).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The pipeline classes this crate runs from a prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipelineKind {
    /// `StableDiffusionPipeline` (SD 1.x, 2.x): one CLIP text encoder.
    StableDiffusion,
    /// `StableDiffusionXLPipeline`: two text encoders, pooled embeddings and size conditioning.
    StableDiffusionXL,
}

impl PipelineKind {
    /// diffusers' class name.
    pub fn class_name(self) -> &'static str {
        match self {
            PipelineKind::StableDiffusion => "StableDiffusionPipeline",
            PipelineKind::StableDiffusionXL => "StableDiffusionXLPipeline",
        }
    }

    /// The component folders a prompt-to-image run needs.
    pub fn required_components(self) -> &'static [&'static str] {
        match self {
            PipelineKind::StableDiffusion => {
                &["unet", "vae", "text_encoder", "tokenizer", "scheduler"]
            }
            PipelineKind::StableDiffusionXL => &[
                "unet",
                "vae",
                "text_encoder",
                "tokenizer",
                "text_encoder_2",
                "tokenizer_2",
                "scheduler",
            ],
        }
    }
}

/// A component entry of `model_index.json`: `[library, class]`, both null for a component the
/// pipeline was saved without (a removed safety checker).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Component {
    /// `diffusers` or `transformers`.
    pub library: String,
    /// The class that loads it (`UNet2DConditionModel`, `CLIPTextModel`, ...).
    pub class: String,
}

/// A parsed `model_index.json` and the folder it is in.
#[derive(Clone, Debug)]
pub struct ModelIndex {
    /// The pipeline folder.
    pub dir: PathBuf,
    /// `_class_name`.
    pub class_name: String,
    /// The components present, by folder name.
    pub components: BTreeMap<String, Component>,
    /// SDXL's `force_zeros_for_empty_prompt` (diffusers' default for the class: true for SDXL,
    /// which the SD pipeline does not have).
    pub force_zeros_for_empty_prompt: bool,
}

impl ModelIndex {
    /// Reads `dir/model_index.json`; a folder without one is `Error::NotFound`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("model_index.json");
        if !path.is_file() {
            return Err(Error::not_found(
                dir.display().to_string(),
                format!(
                    "{}: no model_index.json (a prompt needs a diffusers pipeline folder, with \
                     unet/, vae/, text_encoder/, tokenizer/ and scheduler/)",
                    dir.display()
                ),
            ));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Self::parse(&text, dir)
    }

    /// As `from_dir`, from the text of `dir`'s `model_index.json`.
    pub fn parse(text: &str, dir: &Path) -> Result<Self> {
        let origin = dir.join("model_index.json").display().to_string();
        let json = |msg: String| Error::Json {
            origin: origin.clone(),
            msg,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| json(e.to_string()))?;
        let obj = value
            .as_object()
            .ok_or_else(|| json("expected a JSON object".into()))?;
        let class_name = obj
            .get("_class_name")
            .and_then(|v| v.as_str())
            .ok_or_else(|| json("no `_class_name` string".into()))?
            .to_string();
        let mut components = BTreeMap::new();
        for (key, v) in obj {
            let Some(pair) = v.as_array() else { continue };
            match &pair[..] {
                [serde_json::Value::String(library), serde_json::Value::String(class)] => {
                    components.insert(
                        key.clone(),
                        Component {
                            library: library.clone(),
                            class: class.clone(),
                        },
                    );
                }
                [serde_json::Value::Null, serde_json::Value::Null] => {}
                _ => {
                    return Err(json(format!(
                        "`{key}`: a component is [library, class] (or [null, null]), got {v}"
                    )))
                }
            }
        }
        let force_zeros = match obj.get("force_zeros_for_empty_prompt") {
            None => class_name == PipelineKind::StableDiffusionXL.class_name(),
            Some(serde_json::Value::Bool(b)) => *b,
            Some(other) => {
                return Err(json(format!(
                    "`force_zeros_for_empty_prompt` must be true or false, got {other}"
                )))
            }
        };
        Ok(ModelIndex {
            dir: dir.to_path_buf(),
            class_name,
            components,
            force_zeros_for_empty_prompt: force_zeros,
        })
    }

    /// The pipeline class, if it is one this crate runs, with every component it needs present
    /// as a folder; else an error naming what is missing or unsupported.
    pub fn kind(&self) -> Result<PipelineKind> {
        let kind = [
            PipelineKind::StableDiffusion,
            PipelineKind::StableDiffusionXL,
        ]
        .into_iter()
        .find(|k| k.class_name() == self.class_name)
        .ok_or_else(|| Error::Unsupported {
            field: "_class_name".into(),
            value: format!(
                "\"{}\" in {} (a prompt runs StableDiffusionPipeline and \
                     StableDiffusionXLPipeline folders)",
                self.class_name,
                self.dir.join("model_index.json").display()
            ),
        })?;
        for name in kind.required_components() {
            if !self.components.contains_key(*name) || !self.dir.join(name).is_dir() {
                return Err(Error::not_found(
                    self.dir.join(name).display().to_string(),
                    format!(
                        "{}: the {} has no `{name}` component (model_index.json lists {}; \
                         the folder needs {name}/)",
                        self.dir.display(),
                        kind.class_name(),
                        self.components
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        Ok(kind)
    }

    /// The folder of component `name`.
    pub fn component_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// SDXL's size conditioning, `StableDiffusionXLPipeline._get_add_time_ids`: `original_size +
/// crops_coords_top_left + target_size`, each (height, width), as one row `[1, 6]`.
pub fn add_time_ids(
    original_size: (usize, usize),
    crops_coords_top_left: (usize, usize),
    target_size: (usize, usize),
) -> crate::tensor::Tensor {
    let ids = [
        original_size.0,
        original_size.1,
        crops_coords_top_left.0,
        crops_coords_top_left.1,
        target_size.0,
        target_size.1,
    ];
    crate::tensor::Tensor::from_parts([1, 6], ids.iter().map(|&v| v as f32).collect())
}

/// The image size a pipeline makes by default, `unet.config.sample_size × vae_scale_factor` on
/// each side (`sample_size` as (height, width)), and the checks diffusers' `check_inputs` makes
/// of a given one (both sides positive multiples of 8, the latent sides `size /
/// vae_scale_factor`).
pub fn image_size(
    height: Option<usize>,
    width: Option<usize>,
    sample_size: Option<(usize, usize)>,
    vae_scale_factor: usize,
) -> Result<(usize, usize)> {
    let default = |side: usize, name: &str| {
        sample_size
            .map(|s| [s.0, s.1][side] * vae_scale_factor)
            .ok_or_else(|| {
                Error::input(
                    name,
                    "not given, and the U-Net's config has no sample_size to default to",
                )
            })
    };
    let h = match height {
        Some(h) => h,
        None => default(0, "height")?,
    };
    let w = match width {
        Some(w) => w,
        None => default(1, "width")?,
    };
    for (name, v) in [("height", h), ("width", w)] {
        if v == 0 || v % 8 != 0 || v % vae_scale_factor != 0 {
            return Err(Error::input(
                name,
                format!(
                    "{v}: height and width must be positive multiples of 8 (and of the VAE's \
                     scale factor {vae_scale_factor})"
                ),
            ));
        }
    }
    Ok((h, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_index_names_its_pipeline_and_components() {
        let dir = Path::new("/nowhere");
        let text = r#"{"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.42.1",
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
            "image_encoder": [null, null], "force_zeros_for_empty_prompt": false}"#;
        let m = ModelIndex::parse(text, dir).unwrap();
        assert_eq!(m.class_name, "StableDiffusionXLPipeline");
        assert_eq!(m.components.len(), 2);
        assert_eq!(m.components["vae"].class, "AutoencoderKL");
        assert!(!m.force_zeros_for_empty_prompt);
        // The class's default where the file does not say.
        let text = r#"{"_class_name": "StableDiffusionXLPipeline"}"#;
        assert!(
            ModelIndex::parse(text, dir)
                .unwrap()
                .force_zeros_for_empty_prompt
        );
        // Components the folder lacks, unknown classes and malformed entries are errors.
        assert!(matches!(
            ModelIndex::parse(text, dir).unwrap().kind(),
            Err(Error::NotFound { .. })
        ));
        let ddpm = ModelIndex::parse(r#"{"_class_name": "DDPMPipeline"}"#, dir).unwrap();
        assert!(matches!(ddpm.kind(), Err(Error::Unsupported { .. })));
        for bad in [
            "[]",
            r#"{"unet": ["diffusers", "UNet2DModel"]}"#,
            r#"{"_class_name": "X", "unet": ["diffusers"]}"#,
            r#"{"_class_name": "X", "force_zeros_for_empty_prompt": 1}"#,
        ] {
            assert!(
                matches!(ModelIndex::parse(bad, dir), Err(Error::Json { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn time_ids_and_sizes_follow_the_pipelines() {
        assert_eq!(
            add_time_ids((1024, 768), (0, 16), (512, 512)).data(),
            &[1024.0, 768.0, 0.0, 16.0, 512.0, 512.0]
        );
        assert_eq!(
            image_size(None, None, Some((128, 128)), 8).unwrap(),
            (1024, 1024)
        );
        assert_eq!(
            image_size(Some(768), None, Some((64, 64)), 8).unwrap(),
            (768, 512)
        );
        assert!(matches!(
            image_size(Some(100), None, Some((64, 64)), 8),
            Err(Error::Input { name, .. }) if name == "height"
        ));
        assert!(image_size(None, Some(0), Some((64, 64)), 8).is_err());
        assert!(image_size(None, Some(64), None, 8).is_err());
    }
}
