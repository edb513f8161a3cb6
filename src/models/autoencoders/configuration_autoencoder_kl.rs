//! The `config.json` of diffusers' `AutoencoderKL`, validated, and the memory a decode of it
//! plans for. Apart from the model (`autoencoder_kl`) so that its parts (`vae`: `Encoder`,
//! `Decoder`) read it without importing the model that builds them.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Sizes from a config are below this (as the U-Net config's), so products of a few stay far
/// from overflow.
const MAX_SIZE: usize = 1 << 24;

/// diffusers' `tile_overlap_factor`.
pub const TILE_OVERLAP_FACTOR: f64 = 0.25;

/// An `AutoencoderKL` `config.json`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct AutoencoderKLConfig {
    /// Image channels the encoder takes (`in_channels`).
    pub in_channels: usize,
    /// Image channels the decoder makes (`out_channels`).
    pub out_channels: usize,
    /// Width of each level, outermost first (`block_out_channels`).
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block; decoder blocks have one more (`layers_per_block`).
    pub layers_per_block: usize,
    /// Channels of the latents (`latent_channels`).
    pub latent_channels: usize,
    /// GroupNorm groups of every norm (`norm_num_groups`).
    pub norm_num_groups: usize,
    /// The image side a tile covers when tiling (`sample_size`).
    pub sample_size: usize,
    /// Latents are `scaling_factor` times the encoder's (`scaling_factor`).
    pub scaling_factor: f32,
    /// Added after unscaling, before decoding (`shift_factor`; SD3 and Flux have one).
    pub shift_factor: Option<f32>,
    /// Whether diffusers' pipelines run this VAE in f32 even when the rest is 16-bit
    /// (`force_upcast`).
    pub force_upcast: bool,
    /// Whether the encoder's output passes a 1×1 `quant_conv` (`use_quant_conv`).
    pub use_quant_conv: bool,
    /// Whether latents pass a 1×1 `post_quant_conv` before the decoder (`use_post_quant_conv`).
    pub use_post_quant_conv: bool,
    /// Whether both mid blocks have attention (`mid_block_add_attention`).
    pub mid_block_add_attention: bool,
}

fn config_err(origin: &str, msg: impl Into<String>) -> Error {
    Error::Config {
        origin: origin.to_string(),
        msg: msg.into(),
    }
}

/// Typed reads of a config object that remember which fields were read, so that an unknown
/// field with a value is an error rather than silently ignored.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    origin: &'a str,
    seen: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    fn get(&mut self, field: &'static str) -> Option<&'a Value> {
        self.seen.push(field);
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn type_err(&self, field: &str, want: &str, v: &Value) -> Error {
        config_err(self.origin, format!("`{field}` = {v}: expected {want}"))
    }

    fn size(&self, field: &str, v: &Value) -> Result<usize> {
        v.as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .filter(|&x| x < MAX_SIZE)
            .ok_or_else(|| self.type_err(field, "a non-negative integer below 2^24", v))
    }

    fn usize_or(&mut self, field: &'static str, default: usize) -> Result<usize> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => self.size(field, v),
        }
    }

    fn f32_opt(&mut self, field: &'static str) -> Result<Option<f32>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| x as f32)
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| self.type_err(field, "a finite number in f32 range", v)),
        }
    }

    fn bool_or(&mut self, field: &'static str, default: bool) -> Result<bool> {
        match self.get(field) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.type_err(field, "true or false", v)),
        }
    }

    fn list(&mut self, field: &'static str) -> Result<Option<&'a Vec<Value>>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(v) => Err(self.type_err(field, "a list", v)),
        }
    }

    fn str_or(&mut self, field: &'static str, default: &'a str) -> Result<&'a str> {
        match self.get(field) {
            None => Ok(default),
            Some(Value::String(s)) => Ok(s),
            Some(v) => Err(self.type_err(field, "a string", v)),
        }
    }
}

impl AutoencoderKLConfig {
    /// Reads a `config.json`: `from_json_str` on its text, named by its path in errors.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Parses an AutoencoderKL `config.json` (`_class_name` must be `AutoencoderKL`) with
    /// diffusers' defaults for absent fields, and validates it. A value this crate does not
    /// implement (another block type or activation, `latents_mean`/`latents_std`, a non-square
    /// `sample_size`) or an unknown field with a non-null value is an error naming the field;
    /// `origin` names the text in errors.
    ///
    /// ```
    /// use freelunch::models::autoencoders::AutoencoderKLConfig;
    ///
    /// let c = AutoencoderKLConfig::from_json_str(
    ///     r#"{"_class_name": "AutoencoderKL", "block_out_channels": [32, 64],
    ///         "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    ///         "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    ///         "sample_size": 256, "shift_factor": null}"#,
    ///     "inline",
    /// )?;
    /// assert_eq!((c.scaling_factor, c.shift_factor), (0.18215, None));
    /// assert_eq!(c.tile_latent_min_size(), 128);
    /// // diffusers' block types only: a typo is an error naming the field.
    /// let bad = r#"{"_class_name": "AutoencoderKL", "up_block_types": ["UpBlock2D"]}"#;
    /// assert!(AutoencoderKLConfig::from_json_str(bad, "inline").is_err());
    /// # Ok::<(), freelunch::Error>(())
    /// ```
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| Error::Json {
            origin: origin.to_string(),
            msg: e.to_string(),
        })?;
        let map = value
            .as_object()
            .ok_or_else(|| config_err(origin, "top level is not a JSON object"))?;
        match map.get("_class_name") {
            Some(Value::String(s)) if s == "AutoencoderKL" => {}
            Some(v) => {
                return Err(Error::Unsupported {
                    field: "_class_name".into(),
                    value: format!("{v} (the VAE decoder reads AutoencoderKL)"),
                })
            }
            None => {
                return Err(config_err(
                    origin,
                    "no `_class_name` (expected AutoencoderKL: a pipeline's vae/config.json)",
                ))
            }
        }
        let mut r = Fields {
            map,
            origin,
            seen: Vec::new(),
        };
        let block_out_channels = match r.list("block_out_channels")? {
            None => vec![64],
            Some(items) => items
                .iter()
                .map(|v| r.size("block_out_channels", v))
                .collect::<Result<Vec<_>>>()?,
        };
        let n = block_out_channels.len();
        for (field, want) in [
            ("down_block_types", "DownEncoderBlock2D"),
            ("up_block_types", "UpDecoderBlock2D"),
        ] {
            let names: Vec<&str> = match r.list(field)? {
                None => vec![want],
                Some(items) => items
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .ok_or_else(|| r.type_err(field, "a list of strings", v))
                    })
                    .collect::<Result<_>>()?,
            };
            if let Some(other) = names.iter().find(|s| **s != want) {
                return Err(Error::Unsupported {
                    field: field.into(),
                    value: format!("\"{other}\" (implemented: {want})"),
                });
            }
            if names.len() != n {
                return Err(config_err(
                    origin,
                    format!(
                        "`{field}` has {} entries for {n} block_out_channels",
                        names.len()
                    ),
                ));
            }
        }
        let act = r.str_or("act_fn", "silu")?;
        if act != "silu" && act != "swish" {
            return Err(Error::Unsupported {
                field: "act_fn".into(),
                value: format!("\"{act}\""),
            });
        }
        let sample_size = match r.get("sample_size") {
            None => 32,
            Some(v @ Value::Array(items)) => match &items[..] {
                [a, b] if a == b => r.size("sample_size", a)?,
                _ => {
                    return Err(Error::Unsupported {
                        field: "sample_size".into(),
                        value: format!("{v} (a square tile, one integer, is implemented)"),
                    })
                }
            },
            Some(v) => r.size("sample_size", v)?,
        };
        for field in ["latents_mean", "latents_std"] {
            let field: &'static str = field;
            if let Some(v) = r.get(field) {
                return Err(Error::Unsupported {
                    field: field.into(),
                    value: v.to_string(),
                });
            }
        }
        let cfg = AutoencoderKLConfig {
            in_channels: r.usize_or("in_channels", 3)?,
            out_channels: r.usize_or("out_channels", 3)?,
            block_out_channels,
            layers_per_block: r.usize_or("layers_per_block", 1)?,
            latent_channels: r.usize_or("latent_channels", 4)?,
            norm_num_groups: r.usize_or("norm_num_groups", 32)?,
            sample_size,
            scaling_factor: r.f32_opt("scaling_factor")?.unwrap_or(0.18215),
            shift_factor: r.f32_opt("shift_factor")?,
            force_upcast: r.bool_or("force_upcast", true)?,
            use_quant_conv: r.bool_or("use_quant_conv", true)?,
            use_post_quant_conv: r.bool_or("use_post_quant_conv", true)?,
            mid_block_add_attention: r.bool_or("mid_block_add_attention", true)?,
        };
        for (k, v) in map {
            if k.starts_with('_') || v.is_null() || r.seen.contains(&k.as_str()) {
                continue;
            }
            return Err(Error::Unsupported {
                field: k.clone(),
                value: v.to_string(),
            });
        }
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Checks what the maths needs: at least one level, positive sizes, groups that divide every
    /// normalised width, a non-zero finite `scaling_factor`, a finite `shift_factor`.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let err = |m: String| Err(config_err(origin, m));
        if self.block_out_channels.is_empty() {
            return err("`block_out_channels` is empty".into());
        }
        if self.block_out_channels.len() > 16 {
            return err(format!(
                "{} levels: the factor 2^(levels-1) overflows image sizes",
                self.block_out_channels.len()
            ));
        }
        for (field, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("layers_per_block", self.layers_per_block),
            ("latent_channels", self.latent_channels),
            ("norm_num_groups", self.norm_num_groups),
            ("sample_size", self.sample_size),
        ] {
            if v == 0 {
                return err(format!("`{field}` = 0: must be at least 1"));
            }
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|c| **c == 0 || !c.is_multiple_of(self.norm_num_groups))
        {
            return err(format!(
                "`block_out_channels` has {c}, which GroupNorm cannot split into \
                 `norm_num_groups` = {} groups",
                self.norm_num_groups
            ));
        }
        if !self.scaling_factor.is_finite() || self.scaling_factor == 0.0 {
            return err(format!(
                "`scaling_factor` = {}: latents are divided by it, so it must be a finite \
                 non-zero number",
                self.scaling_factor
            ));
        }
        if self.shift_factor.is_some_and(|s| !s.is_finite()) {
            return err("`shift_factor` must be finite".into());
        }
        Ok(())
    }

    /// How many times the decoder doubles H and W: 2^(levels − 1).
    pub fn upscale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    /// diffusers' `tile_latent_min_size`: `int(sample_size / 2^(levels − 1))`.
    pub fn tile_latent_min_size(&self) -> usize {
        self.sample_size / self.upscale_factor()
    }

    /// Bytes the decoder holds at once for `batch` latents of `h`×`w` (f32 activations, the
    /// largest layer's working set, attention's score rows), or an error when a size overflows.
    pub fn plan_decode(&self, batch: usize, h: usize, w: usize) -> Result<u64> {
        let too_large = || Error::TooLarge {
            what: format!(
                "decoding [{batch}, {}, {h}, {w}] latents",
                self.latent_channels
            ),
            detail: "the activations' size overflows".into(),
        };
        let image = |c: usize, h: u64, w: u64| -> Option<u64> {
            (batch as u64)
                .checked_mul(c as u64)?
                .checked_mul(h)?
                .checked_mul(w)
        };
        let ch = &self.block_out_channels;
        let n = ch.len();
        let (mut hh, mut ww) = (h as u64, w as u64);
        let last = ch[n - 1];
        let tokens = hh.checked_mul(ww).ok_or_else(too_large)?;
        let threads = rayon::current_num_threads() as u64;
        let rows = crate::backend::cpu::attention::scores_per_task(tokens as usize, 1)
            .unwrap_or(usize::MAX);
        let mut peak: u64 = 0;
        let mut note = |x: Option<u64>| -> Result<()> {
            peak = peak.max(x.ok_or_else(too_large)?);
            Ok(())
        };
        // A resnet holds its input twice (norm, shortcut) and ~5 outputs' worth; a 3×3
        // convolution's im2col is 9 values per input channel and pixel.
        note(image(last, hh, ww).and_then(|x| x.checked_mul(12)))?;
        if self.mid_block_add_attention {
            let scores = threads
                .checked_mul(rows as u64)
                .and_then(|x| x.checked_mul(tokens));
            note(
                image(last, hh, ww)
                    .and_then(|x| x.checked_mul(10))
                    .and_then(|x| x.checked_add(scores?)),
            )?;
        }
        let mut prev = last;
        for (i, &c) in ch.iter().rev().enumerate() {
            note(
                image(prev, hh, ww)
                    .and_then(|x| x.checked_mul(11))
                    .and_then(|x| x.checked_add(image(c, hh, ww)?.checked_mul(5)?)),
            )?;
            if i + 1 < n {
                hh = hh.checked_mul(2).ok_or_else(too_large)?;
                ww = ww.checked_mul(2).ok_or_else(too_large)?;
                note(image(c, hh, ww).and_then(|x| x.checked_mul(12)))?;
            }
            prev = c;
        }
        note(image(ch[0], hh, ww).and_then(|x| x.checked_mul(12)))?;
        peak.checked_mul(4).ok_or_else(too_large)
    }
}
