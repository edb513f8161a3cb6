//! What a sampling run is conditioned on, as the user has it, and the model batch the pipelines
//! make of it: each tensor of batch 1 is repeated to the noise's batch (diffusers'
//! `num_images_per_prompt`), and under classifier-free guidance the unconditional and
//! conditional halves are stacked `[uncond, cond]` as `StableDiffusion(XL)Pipeline` does, SDXL's
//! negative time ids defaulting to the positive ones.
//!
//! Everything is checked against the model before the first step (`Denoiser::check`), with each
//! half checked at the user's batch, so an error names the user's tensor and shape, never the
//! stacked one.

use crate::error::{Error, Result};
use crate::models::unet_2d::UNetInputs;
use crate::models::Denoiser;
use crate::tensor::Tensor;

/// Conditioning of a sampling run. Each tensor has batch 1 (one prompt for every sample) or the
/// noise's batch.
#[derive(Clone, Debug, Default)]
pub struct Conditioning {
    /// [B, M, D] text states.
    pub encoder_hidden_states: Option<Tensor>,
    /// [B, M, D] unconditional states, for classifier-free guidance.
    pub uncond_hidden_states: Option<Tensor>,
    /// `[B]` class labels (the same for both halves under guidance).
    pub class_labels: Option<Vec<f32>>,
    /// SDXL: [B, D'] pooled text embedding (`add_text_embeds`).
    pub text_embeds: Option<Tensor>,
    /// SDXL: [B, 6] original size, crop top-left and target size (`add_time_ids`).
    pub time_ids: Option<Tensor>,
    /// SDXL, for guidance: the negative prompt's pooled embedding.
    pub uncond_text_embeds: Option<Tensor>,
    /// SDXL, for guidance: the negative time ids (default: `time_ids`, as the pipeline's).
    pub uncond_time_ids: Option<Tensor>,
}

/// The conditioning of every model call of a run, at the model's batch.
#[derive(Clone, Debug, Default)]
pub(crate) struct ModelConditioning {
    pub encoder_hidden_states: Option<Tensor>,
    pub class_labels: Option<Vec<f32>>,
    pub text_embeds: Option<Tensor>,
    pub time_ids: Option<Tensor>,
}

impl ModelConditioning {
    /// The inputs of one model call on `sample` at `t`.
    pub fn inputs(&self, sample: Tensor, t: f32) -> UNetInputs {
        UNetInputs {
            sample,
            timesteps: vec![t],
            encoder_hidden_states: self.encoder_hidden_states.clone(),
            class_labels: self.class_labels.clone(),
            text_embeds: self.text_embeds.clone(),
            time_ids: self.time_ids.clone(),
        }
    }
}

/// `t` at batch `b`: as it is, or its one row repeated; any other batch is an error naming it.
fn at_batch(name: &str, t: &Tensor, b: usize) -> Result<Tensor> {
    match t.shape().first() {
        Some(&n) if n == b => Ok(t.clone()),
        Some(&1) => {
            let mut shape = crate::Shape::from(t.shape());
            shape[0] = b;
            let data = crate::tensor::try_repeat(t.data(), b, name)?;
            Tensor::new(shape, data)
        }
        _ => Err(Error::input(
            name,
            format!(
                "shape {:?}; the noise has batch {b}: give batch 1 (one for every sample) or {b}",
                t.shape()
            ),
        )),
    }
}

/// Whether `e` is about input `name`, renamed `to` (the unconditional half's checks).
fn renamed(e: Error, to: &[(&str, &str)]) -> Error {
    match e {
        Error::Input { name, msg } => {
            let name = to
                .iter()
                .find(|(from, _)| *from == name)
                .map_or(name, |(_, t)| t.to_string());
            Error::Input { name, msg }
        }
        other => other,
    }
}

impl Conditioning {
    /// Every tensor that is present, by name.
    fn named(&self) -> [(&'static str, &Option<Tensor>); 6] {
        [
            ("encoder_hidden_states", &self.encoder_hidden_states),
            ("uncond_hidden_states", &self.uncond_hidden_states),
            ("text_embeds", &self.text_embeds),
            ("time_ids", &self.time_ids),
            ("uncond_text_embeds", &self.uncond_text_embeds),
            ("uncond_time_ids", &self.uncond_time_ids),
        ]
    }

    /// The model batch for noise of batch `b`, checked against `model` on `sample` (the first
    /// call's input, of batch `b`): each half at batch `b` with the user's names, then stacked.
    pub(crate) fn for_model(
        &self,
        model: &dyn Denoiser,
        sample: &Tensor,
        guided: bool,
    ) -> Result<ModelConditioning> {
        let b = sample.shape().first().copied().unwrap_or(0);
        for (name, t) in self.named() {
            if let Some(t) = t {
                super::check_finite(name, t.data())?;
            }
        }
        if let Some(l) = &self.class_labels {
            super::check_finite("class_labels", l)?;
        }
        let pairs = [
            (
                "uncond_hidden_states",
                &self.uncond_hidden_states,
                "encoder_hidden_states",
                &self.encoder_hidden_states,
            ),
            (
                "uncond_text_embeds",
                &self.uncond_text_embeds,
                "text_embeds",
                &self.text_embeds,
            ),
        ];
        for (uname, u, cname, c) in pairs {
            match (guided, u.is_some(), c.is_some()) {
                (false, true, _) => {
                    return Err(Error::input(
                        uname,
                        "given without guidance, which is the only use of it",
                    ))
                }
                (true, false, true) => {
                    return Err(Error::input(
                        uname,
                        format!("missing: guidance needs the unconditional pair of `{cname}`"),
                    ))
                }
                (true, true, false) => {
                    return Err(Error::input(
                        cname,
                        format!("missing: `{uname}` is given, but not the conditional half"),
                    ))
                }
                _ => {}
            }
        }
        if guided && self.encoder_hidden_states.is_none() {
            return Err(Error::input(
                "uncond_hidden_states",
                "guidance needs both encoder_hidden_states and uncond_hidden_states",
            ));
        }
        if self.uncond_time_ids.is_some() && !guided {
            return Err(Error::input(
                "uncond_time_ids",
                "given without guidance, which is the only use of it",
            ));
        }
        if self.uncond_time_ids.is_some() && self.time_ids.is_none() {
            return Err(Error::input(
                "time_ids",
                "missing: `uncond_time_ids` is given, but not the conditional half",
            ));
        }
        let batch =
            |name: &str, t: &Option<Tensor>| t.as_ref().map(|t| at_batch(name, t, b)).transpose();
        let labels = match &self.class_labels {
            Some(l) if l.len() == b => Some(l.clone()),
            Some(l) if l.len() == 1 => Some(vec![l[0]; b]),
            Some(l) => {
                return Err(Error::input(
                    "class_labels",
                    format!(
                        "{} labels; the noise has batch {b}: give 1 (one for every sample) or {b}",
                        l.len()
                    ),
                ))
            }
            None => None,
        };
        let cond = ModelConditioning {
            encoder_hidden_states: batch("encoder_hidden_states", &self.encoder_hidden_states)?,
            class_labels: labels,
            text_embeds: batch("text_embeds", &self.text_embeds)?,
            time_ids: batch("time_ids", &self.time_ids)?,
        };
        model.check(&cond.inputs(sample.clone(), 0.0))?;
        if !guided {
            return Ok(cond);
        }
        let uncond = ModelConditioning {
            encoder_hidden_states: batch("uncond_hidden_states", &self.uncond_hidden_states)?,
            class_labels: cond.class_labels.clone(),
            text_embeds: batch("uncond_text_embeds", &self.uncond_text_embeds)?,
            time_ids: match &self.uncond_time_ids {
                Some(t) => Some(at_batch("uncond_time_ids", t, b)?),
                None => cond.time_ids.clone(),
            },
        };
        model
            .check(&uncond.inputs(sample.clone(), 0.0))
            .map_err(|e| {
                renamed(
                    e,
                    &[
                        ("encoder_hidden_states", "uncond_hidden_states"),
                        ("text_embeds", "uncond_text_embeds"),
                        ("time_ids", "uncond_time_ids"),
                    ],
                )
            })?;
        let both = |u: &Option<Tensor>, c: &Option<Tensor>| match (u, c) {
            (Some(u), Some(c)) => super::concat_batch(u, c).map(Some),
            _ => Ok(None),
        };
        Ok(ModelConditioning {
            encoder_hidden_states: both(
                &uncond.encoder_hidden_states,
                &cond.encoder_hidden_states,
            )?,
            class_labels: cond
                .class_labels
                .as_ref()
                .map(|l| [l.clone(), l.clone()].concat()),
            text_embeds: both(&uncond.text_embeds, &cond.text_embeds)?,
            time_ids: both(&uncond.time_ids, &cond.time_ids)?,
        })
    }
}
