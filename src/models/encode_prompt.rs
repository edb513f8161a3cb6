//! Prompts to the U-Net's conditioning as diffusers' pipelines make it: `encode_prompt` of
//! `StableDiffusionPipeline` (SD 1.x and 2.x: one encoder, `clip_skip` taking an earlier hidden
//! state through the final LayerNorm) and of `StableDiffusionXLPipeline` (two encoders'
//! penultimate states side by side, the pooled projection of the second, zeros for an absent
//! negative prompt under `force_zeros_for_empty_prompt`). One prompt per row; diffusers'
//! `num_images_per_prompt` is the conditioning's batch-1 repeat (`Conditioning`).

use std::path::Path;

use super::modeling_clip::{CLIPTextModel, CLIPTextOutput};
use super::tokenization_clip::CLIPTokenizer;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::schedulers::conditioning::Conditioning;
use crate::tensor::Tensor;

/// A tokenizer and the text encoder it feeds (a pipeline's `tokenizer/` and `text_encoder/`).
pub struct TextEncoder {
    /// The tokenizer.
    pub tokenizer: CLIPTokenizer,
    /// The encoder.
    pub model: CLIPTextModel,
}

impl TextEncoder {
    /// Loads `pipeline/<tokenizer>` and `pipeline/<encoder>` (e.g. `tokenizer_2` and
    /// `text_encoder_2`); `variant` as `CLIPTextModel::from_pretrained`'s. A tokenizer whose ids
    /// the encoder's vocabulary cannot hold is an `Error::Config`.
    pub fn from_pretrained(
        pipeline: &Path,
        tokenizer: &str,
        encoder: &str,
        variant: Option<&str>,
    ) -> Result<Self> {
        let tok = CLIPTokenizer::from_pretrained(&pipeline.join(tokenizer))?;
        let model = CLIPTextModel::from_pretrained(&pipeline.join(encoder), variant)?;
        Self::new(tok, model)
    }

    /// Pairs `tokenizer` with `model`, checking that every id and the row length fit it.
    pub fn new(tokenizer: CLIPTokenizer, model: CLIPTextModel) -> Result<Self> {
        let c = &model.config;
        if tokenizer.vocab_size > c.vocab_size
            || tokenizer.model_max_length > c.max_position_embeddings
        {
            return Err(Error::Config {
                origin: "text encoder".into(),
                msg: format!(
                    "the tokenizer's {} ids and rows of {} do not fit the encoder's \
                     vocab_size = {} and max_position_embeddings = {}",
                    tokenizer.vocab_size,
                    tokenizer.model_max_length,
                    c.vocab_size,
                    c.max_position_embeddings
                ),
            });
        }
        Ok(TextEncoder { tokenizer, model })
    }

    /// Tokenizes `prompts` and runs the encoder on `be`.
    pub fn encode<B: Backend>(&self, be: &B, prompts: &[&str]) -> Result<CLIPTextOutput> {
        let ids = self.tokenizer.encode_batch(prompts)?;
        self.model.forward(be, &ids)
    }
}

/// What `encode_prompt` returns, diffusers' four tensors (`[B, 77, D]` states, `[B, D']` pooled).
#[derive(Clone, Debug)]
pub struct PromptEmbeds {
    /// `prompt_embeds`.
    pub prompt_embeds: Tensor,
    /// `negative_prompt_embeds`, under classifier-free guidance.
    pub negative_prompt_embeds: Option<Tensor>,
    /// SDXL's `pooled_prompt_embeds` (the U-Net's `text_embeds`).
    pub pooled_prompt_embeds: Option<Tensor>,
    /// SDXL's `negative_pooled_prompt_embeds`, under guidance.
    pub negative_pooled_prompt_embeds: Option<Tensor>,
}

impl PromptEmbeds {
    /// As the sampling loop takes them. SDXL's `time_ids` are left for the caller, which knows
    /// the image sizes (`add_time_ids`).
    pub fn into_conditioning(self) -> Conditioning {
        Conditioning {
            encoder_hidden_states: Some(self.prompt_embeds),
            uncond_hidden_states: self.negative_prompt_embeds,
            text_embeds: self.pooled_prompt_embeds,
            uncond_text_embeds: self.negative_pooled_prompt_embeds,
            ..Conditioning::default()
        }
    }
}

/// The hidden state `back` from the end (1: the last layer's output).
fn hidden_from_end(out: &CLIPTextOutput, back: usize, what: &str) -> Result<Tensor> {
    let n = out.hidden_states.len();
    if back == 0 || back > n {
        return Err(Error::input(
            what,
            format!("asks for hidden state -{back} of an encoder with {n}"),
        ));
    }
    Ok(out.hidden_states[n - back].clone())
}

/// `negative` or `[""; batch]`, of the prompt's batch.
fn negatives<'a>(
    negative: Option<&'a [&'a str]>,
    batch: usize,
    name: &str,
) -> Result<Vec<&'a str>> {
    match negative {
        None => Ok(vec![""; batch]),
        Some(n) if n.len() == batch => Ok(n.to_vec()),
        Some(n) => Err(Error::input(
            name,
            format!("{} prompts, but `prompt` has {batch}", n.len()),
        )),
    }
}

/// `[a, b]` along the last dimension of two `[B, N, Da]`, `[B, N, Db]` tensors.
fn concat_features(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (sa, sb) = (a.shape(), b.shape());
    if sa.len() != 3 || sb.len() != 3 || sa[..2] != sb[..2] {
        return Err(Error::input(
            "prompt_embeds",
            format!("the two encoders' states {sa:?} and {sb:?} do not stack along features"),
        ));
    }
    let (da, db) = (sa[2], sb[2]);
    let rows = sa[0] * sa[1];
    let mut out = crate::tensor::try_vec_with_capacity(rows * (da + db), "prompt_embeds")?;
    for r in 0..rows {
        out.extend_from_slice(&a.data()[r * da..][..da]);
        out.extend_from_slice(&b.data()[r * db..][..db]);
    }
    Tensor::new(vec![sa[0], sa[1], da + db], out)
}

fn check_batch(prompt: &[&str]) -> Result<()> {
    if prompt.is_empty() {
        return Err(Error::input("prompt", "no prompts given"));
    }
    Ok(())
}

/// `StableDiffusionPipeline.encode_prompt` (SD 1.x, 2.x): `prompt_embeds` are the last hidden
/// state, or with `clip_skip` = k `final_layer_norm(hidden_states[-(k + 1)])`; under `guidance`
/// the negative prompts (default `""`, one per prompt) give `negative_prompt_embeds`, always from
/// the last hidden state, as diffusers computes them.
pub fn encode_prompt_sd<B: Backend>(
    be: &B,
    encoder: &TextEncoder,
    prompt: &[&str],
    negative_prompt: Option<&[&str]>,
    guidance: bool,
    clip_skip: Option<usize>,
) -> Result<PromptEmbeds> {
    check_batch(prompt)?;
    let out = encoder.encode(be, prompt)?;
    let prompt_embeds = match clip_skip {
        None => out.last_hidden_state,
        Some(k) => encoder
            .model
            .final_norm(&hidden_from_end(&out, k + 1, "clip_skip")?)?,
    };
    let negative_prompt_embeds = if guidance {
        let neg = negatives(negative_prompt, prompt.len(), "negative_prompt")?;
        Some(encoder.encode(be, &neg)?.last_hidden_state)
    } else if negative_prompt.is_some() {
        return Err(Error::input(
            "negative_prompt",
            "given without guidance, which is the only use of it",
        ));
    } else {
        None
    };
    Ok(PromptEmbeds {
        prompt_embeds,
        negative_prompt_embeds,
        pooled_prompt_embeds: None,
        negative_pooled_prompt_embeds: None,
    })
}

/// The prompts of an SDXL call; `None` is diffusers' default for each.
#[derive(Clone, Copy, Debug, Default)]
pub struct SdxlPrompts<'a> {
    /// `prompt`, for the first encoder (and the second, without `prompt_2`).
    pub prompt: &'a [&'a str],
    /// `prompt_2`, for the second encoder (default: `prompt`).
    pub prompt_2: Option<&'a [&'a str]>,
    /// `negative_prompt` (default: `""`, or zeros under `force_zeros_for_empty_prompt`).
    pub negative_prompt: Option<&'a [&'a str]>,
    /// `negative_prompt_2` (default: `negative_prompt`).
    pub negative_prompt_2: Option<&'a [&'a str]>,
}

/// `StableDiffusionXLPipeline.encode_prompt`: each encoder's `hidden_states[-(clip_skip + 2)]`
/// (the penultimate without `clip_skip`), not final-normed, side by side along features; the
/// pooled embedding is the projection of the first encoder that has one (SDXL's second). Under
/// `guidance`, an absent negative prompt with `force_zeros_for_empty_prompt` gives zeros, as the
/// SDXL base config asks; else the negatives are encoded from their penultimate states (diffusers
/// ignores `clip_skip` there). `encoder_1` is None for a pipeline with the second encoder only
/// (the SDXL refiner), which diffusers then feeds `prompt` and `negative_prompt`.
pub fn encode_prompt_sdxl<B: Backend>(
    be: &B,
    encoder_1: Option<&TextEncoder>,
    encoder_2: &TextEncoder,
    prompts: &SdxlPrompts,
    guidance: bool,
    clip_skip: Option<usize>,
    force_zeros_for_empty_prompt: bool,
) -> Result<PromptEmbeds> {
    let prompt = prompts.prompt;
    check_batch(prompt)?;
    let prompt_2 = prompts.prompt_2.unwrap_or(prompt);
    if prompt_2.len() != prompt.len() {
        return Err(Error::input(
            "prompt_2",
            format!(
                "{} prompts, but `prompt` has {}",
                prompt_2.len(),
                prompt.len()
            ),
        ));
    }
    let pairs: Vec<(&TextEncoder, &[&str])> = match encoder_1 {
        Some(e1) => vec![(e1, prompt), (encoder_2, prompt_2)],
        // diffusers zips `[prompt, prompt_2]` with its one tokenizer: `prompt` goes to it.
        None => vec![(encoder_2, prompt)],
    };
    let run = |texts: &[(&TextEncoder, Vec<&str>)], back: usize, what: &str| {
        let mut states: Option<Tensor> = None;
        let mut pooled = None;
        for (enc, t) in texts {
            let out = enc.encode(be, t)?;
            let h = hidden_from_end(&out, back, what)?;
            if pooled.is_none() {
                pooled = out.text_embeds.clone();
            }
            states = Some(match states {
                None => h,
                Some(s) => concat_features(&s, &h)?,
            });
        }
        let pooled = pooled.ok_or_else(|| Error::Config {
            origin: "text_encoder_2/config.json".into(),
            msg: "SDXL needs a CLIPTextModelWithProjection for the pooled embedding".into(),
        })?;
        Ok::<_, Error>((states.expect("at least one encoder"), pooled))
    };
    let cond: Vec<_> = pairs.iter().map(|(e, t)| (*e, t.to_vec())).collect();
    let (prompt_embeds, pooled) = run(&cond, clip_skip.map_or(2, |k| k + 2), "clip_skip")?;
    let zero_out = prompts.negative_prompt.is_none() && force_zeros_for_empty_prompt;
    let (neg, neg_pooled) = if !guidance {
        if prompts.negative_prompt.is_some() || prompts.negative_prompt_2.is_some() {
            return Err(Error::input(
                "negative_prompt",
                "given without guidance, which is the only use of it",
            ));
        }
        (None, None)
    } else if zero_out {
        (
            Some(Tensor::zeros(prompt_embeds.shape())),
            Some(Tensor::zeros(pooled.shape())),
        )
    } else {
        let n1 = negatives(prompts.negative_prompt, prompt.len(), "negative_prompt")?;
        let n2 = match prompts.negative_prompt_2 {
            Some(_) => negatives(prompts.negative_prompt_2, prompt.len(), "negative_prompt_2")?,
            None => n1.clone(),
        };
        let uncond: Vec<_> = match encoder_1 {
            Some(e1) => vec![(e1, n1), (encoder_2, n2)],
            None => vec![(encoder_2, n1)],
        };
        let (s, p) = run(&uncond, 2, "negative_prompt")?;
        (Some(s), Some(p))
    };
    Ok(PromptEmbeds {
        prompt_embeds,
        negative_prompt_embeds: neg,
        pooled_prompt_embeds: Some(pooled),
        negative_pooled_prompt_embeds: neg_pooled,
    })
}
