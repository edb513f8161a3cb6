//! MaskDM's U-ViT (Lei et al., "Masked Diffusion Models Are Fast Distribution Learners";
//! `models/mask_uvit.py` of github.com/jiachenlei/maskdm), module by module under its names:
//! `MaskedUViT` holds the `encoder` (`UViTEncoder`: `patch_embed`, the time token and the
//! optional label token, `encoder_pos_embed`, `in_blocks`, `mid_block`, `out_blocks` whose
//! `skip_linear` joins the long skips, `norm`) and `encoder_to_output`; the output is
//! unpatchified, with no final convolution. Pixel space, ε-prediction.
//!
//! Given a token mask, only the visible tokens run, as mask_uvit.py does when `mask` is passed:
//! the extra tokens are always kept and the output is the visible tokens' patches,
//! `[B, visible, patch·patch·C]` ([`MaskedUViT::forward_masked`]).
//!
//! Boosters: Skip-Tuning scales each long skip before its `skip_linear` (skip `j` is
//! `in_blocks[j]`'s output, so `j = 0` is the outermost); MaskUNet-style weight masks act on
//! any linear layer by its state-dict name (`encoder.in_blocks.0.attn.qkv.weight`, ...).
//!
//! FreeU on a U-ViT is this crate's extension, not the paper's (FreeU is defined on a U-Net's
//! feature maps), and only runs when asked for: before each out-block, the first half of the
//! channels of `h` (every token) are scaled by `b`, and the skip's patch tokens, laid out as their
//! `grid × grid` patch image, go through FreeU's Fourier filter with factor `s` (the extra tokens
//! pass unfiltered). The inner half of the out-blocks (the first to run) take `(b1, s1)`, the outer
//! half `(b2, s2)`, as a U-Net's first and second decoder stages do. v1 only; not with a token
//! mask (the visible tokens are no grid).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::backend::{Activation, Backend, Epilogue};
use crate::boosters::Boosters;
use crate::device::Exec;
use crate::error::{Error, Result};
use crate::models::embeddings::Timesteps;
use crate::models::unet_2d::UNetInputs;
use crate::models::{Denoiser, Placement};
use crate::nn::{join, Conv2d, Embedding, LayerCtx, LayerNorm, Linear};
use crate::tensor::Tensor;
use crate::weights::{Checkpoint, LoadOptions, ModelFiles, WeightSource};

/// `nn.LayerNorm`'s default eps, which mask_uvit.py keeps.
const LAYER_NORM_EPS: f32 = 1e-5;

/// The `_class_name` a converted MaskDM folder's config.json has.
pub const CLASS_NAME: &str = "MaskedUViT";

/// `MaskedUViT`'s constructor arguments (the `network` section of MaskDM's YAML, as
/// `tools/convert_maskdm_checkpoint.py` writes it to config.json).
#[derive(Clone, Debug, PartialEq)]
pub struct MaskedUViTConfig {
    /// `img_size`: the square input's side.
    pub img_size: usize,
    /// `patch_size`: the side of a patch (4 in every MaskDM config).
    pub patch_size: usize,
    /// `in_chans`: image channels in and out.
    pub in_chans: usize,
    /// `encoder_embed_dim`: the token width.
    pub encoder_embed_dim: usize,
    /// `encoder_depth`: `depth / 2` in-blocks, a mid block, `depth / 2` out-blocks.
    pub encoder_depth: usize,
    /// `encoder_heads`: attention heads.
    pub encoder_heads: usize,
    /// `mlp_ratio`: the MLP's hidden width is `int(dim · mlp_ratio)`.
    pub mlp_ratio: f64,
    /// `qkv_bias`: learnt q and v biases (k has none).
    pub qkv_bias: bool,
    /// `qk_scale`: the attention scale; None: `head_dim^-0.5`.
    pub qk_scale: Option<f64>,
    /// `num_classes`: a label token when positive (`label_emb`, `uncond_embed`); None: none.
    pub num_classes: Option<usize>,
    /// `mlp_time_embed`: the time token goes through `Linear, SiLU, Linear`.
    pub mlp_time_embed: bool,
    /// MaskDM's `beta_schedule` (cosine or linear), for the sampler's config.
    pub beta_schedule: String,
}

impl MaskedUViTConfig {
    /// Parses config.json text; `origin` names it in errors. Unknown keys are errors (a field
    /// this crate would ignore could change the network).
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| Error::Json {
            origin: origin.into(),
            msg: e.to_string(),
        })?;
        let map = value.as_object().ok_or_else(|| Error::Config {
            origin: origin.into(),
            msg: "top level is not a JSON object".into(),
        })?;
        let cfg = parse(map, origin)?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Reads and parses a config.json.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Whether config.json text names this class (how a folder is told from a U-Net's).
    pub fn is_mask_uvit(text: &str) -> bool {
        serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| {
                v.get("_class_name")
                    .and_then(Value::as_str)
                    .map(|s| s == CLASS_NAME)
            })
            .unwrap_or(false)
    }

    /// Checks what the maths needs: positive sizes, a patch that tiles the image, heads that
    /// fit the width, a positive hidden width, a finite positive scale.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |msg: String| {
            Err(Error::Config {
                origin: origin.into(),
                msg,
            })
        };
        for (k, v) in [
            ("img_size", self.img_size),
            ("patch_size", self.patch_size),
            ("in_chans", self.in_chans),
            ("encoder_embed_dim", self.encoder_embed_dim),
            ("encoder_heads", self.encoder_heads),
        ] {
            if v == 0 {
                return bad(format!("`{k}` must be positive"));
            }
        }
        if self.encoder_depth < 2 {
            return bad(format!(
                "`encoder_depth` = {}: a U-ViT needs at least one in-block and one out-block",
                self.encoder_depth
            ));
        }
        if !self.img_size.is_multiple_of(self.patch_size) {
            return bad(format!(
                "`patch_size` = {} does not tile `img_size` = {}",
                self.patch_size, self.img_size
            ));
        }
        if self.encoder_heads > self.encoder_embed_dim {
            return bad(format!(
                "{} heads of a {}-wide token leave no head dimension",
                self.encoder_heads, self.encoder_embed_dim
            ));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_hidden() > 0) {
            return bad(format!(
                "`mlp_ratio` = {} gives no MLP width",
                self.mlp_ratio
            ));
        }
        if let Some(s) = self.qk_scale {
            if !(s.is_finite() && s > 0.0) {
                return bad(format!("`qk_scale` = {s} must be a positive number"));
            }
        }
        // The parameter count must not overflow (a config is untrusted input).
        let d = self.encoder_embed_dim;
        let ok = self
            .num_patches()
            .checked_add(2)
            .and_then(|n| n.checked_mul(d))
            .and_then(|_| d.checked_mul(d)?.checked_mul(4))
            .and_then(|_| d.checked_mul(self.mlp_hidden()))
            .and_then(|x| x.checked_mul(self.encoder_depth + 1))
            .and_then(|_| self.patch_dim().checked_mul(d));
        if ok.is_none() {
            return bad("the network's sizes overflow".into());
        }
        Ok(())
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// `patch_embed.num_patches`.
    pub fn num_patches(&self) -> usize {
        self.grid().saturating_mul(self.grid())
    }

    /// Tokens before the patches: the time token, and the label token when conditional.
    pub fn extras(&self) -> usize {
        if self.num_classes.is_some() {
            2
        } else {
            1
        }
    }

    /// Values per output token, `patch_size² · in_chans`.
    pub fn patch_dim(&self) -> usize {
        self.patch_size
            .saturating_mul(self.patch_size)
            .saturating_mul(self.in_chans)
    }

    /// `int(dim · mlp_ratio)`, Python's truncation.
    pub fn mlp_hidden(&self) -> usize {
        let h = self.encoder_embed_dim as f64 * self.mlp_ratio;
        if h.is_finite() && h >= 0.0 && h < usize::MAX as f64 {
            h as usize
        } else {
            0
        }
    }

    /// `dim // heads`.
    pub fn head_dim(&self) -> usize {
        self.encoder_embed_dim / self.encoder_heads.max(1)
    }
}

fn parse(map: &Map<String, Value>, origin: &str) -> Result<MaskedUViTConfig> {
    let cfg_err = |msg: String| Error::Config {
        origin: origin.into(),
        msg,
    };
    const KNOWN: [&str; 13] = [
        "_class_name",
        "img_size",
        "patch_size",
        "in_chans",
        "encoder_embed_dim",
        "encoder_depth",
        "encoder_heads",
        "mlp_ratio",
        "qkv_bias",
        "qk_scale",
        "num_classes",
        "mlp_time_embed",
        "beta_schedule",
    ];
    if let Some(k) = map
        .keys()
        .find(|k| !KNOWN.contains(&k.as_str()) && !k.starts_with("_"))
    {
        return Err(Error::Unsupported {
            field: k.clone(),
            value: format!("{} (not a MaskedUViT argument this crate reads)", map[k]),
        });
    }
    match map.get("_class_name").and_then(Value::as_str) {
        Some(CLASS_NAME) => {}
        other => {
            return Err(cfg_err(format!(
                "`_class_name` is {other:?}, expected \"{CLASS_NAME}\""
            )))
        }
    }
    let size = |k: &str, default: Option<usize>| -> Result<usize> {
        match map.get(k) {
            None | Some(Value::Null) => default.ok_or_else(|| cfg_err(format!("`{k}` is missing"))),
            Some(v) => v
                .as_u64()
                .and_then(|u| usize::try_from(u).ok())
                .ok_or_else(|| cfg_err(format!("`{k}` = {v} is not a non-negative integer"))),
        }
    };
    let flag = |k: &str| -> Result<bool> {
        match map.get(k) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(cfg_err(format!("`{k}` = {v} is not true or false"))),
        }
    };
    let num = |k: &str| -> Result<Option<f64>> {
        match map.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| cfg_err(format!("`{k}` = {v} is not a number"))),
        }
    };
    let num_classes = match map.get("num_classes") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(n) if n <= 0 => None,
            Some(n) => {
                Some(usize::try_from(n).map_err(|_| cfg_err(format!("`num_classes` = {n}")))?)
            }
            None => return Err(cfg_err(format!("`num_classes` = {v} is not an integer"))),
        },
    };
    let beta_schedule = match map.get("beta_schedule") {
        None | Some(Value::Null) => "cosine".to_string(),
        Some(Value::String(s)) if s == "cosine" || s == "linear" => s.clone(),
        Some(v) => {
            return Err(Error::Unsupported {
                field: "beta_schedule".into(),
                value: format!("{v} (MaskDM's are cosine and linear)"),
            })
        }
    };
    Ok(MaskedUViTConfig {
        img_size: size("img_size", Some(224))?,
        patch_size: size("patch_size", Some(16))?,
        in_chans: size("in_chans", Some(3))?,
        encoder_embed_dim: size("encoder_embed_dim", Some(768))?,
        encoder_depth: size("encoder_depth", Some(12))?,
        encoder_heads: size("encoder_heads", Some(12))?,
        mlp_ratio: num("mlp_ratio")?.unwrap_or(4.0),
        qkv_bias: flag("qkv_bias")?,
        qk_scale: num("qk_scale")?,
        num_classes,
        mlp_time_embed: flag("mlp_time_embed")?,
        beta_schedule,
    })
}

/// A weight source that records each linear layer's weight name and shape (what a mask file
/// may name).
struct Recording<'a> {
    inner: &'a mut dyn WeightSource,
    layers: BTreeMap<String, Vec<usize>>,
}

impl Recording<'_> {
    fn linear(&mut self, prefix: &str, inp: usize, out: usize, bias: bool) -> Result<Linear> {
        let lin = Linear::load(self.inner, prefix, inp, out, bias)?;
        self.layers.insert(lin.name.clone(), vec![out, inp]);
        Ok(lin)
    }
}

/// timm's `PatchEmbed`: a `patch × patch` convolution of stride `patch`, flattened to tokens.
pub struct PatchEmbed {
    /// `proj`: `in_chans` → `dim`.
    pub proj: Conv2d,
}

/// mask_uvit.py's `Attention`: one fused `qkv` projection (q and v biases only, from
/// `q_bias` / `v_bias`), softmax attention, `proj`.
pub struct Attention {
    /// `qkv`: `dim` → `3 · heads · head_dim`; its bias is `[q_bias, 0, v_bias]` when the model has
    /// them.
    pub qkv: Linear,
    /// `proj`: `heads · head_dim` → `dim`.
    pub proj: Linear,
    /// `num_heads`.
    pub num_heads: usize,
    /// `heads · head_dim`.
    pub all_head_dim: usize,
    /// `qk_scale or head_dim ** -0.5`.
    pub scale: f32,
}

/// timm's `Mlp`: `fc1`, exact GELU, `fc2`.
pub struct Mlp {
    /// `fc1`: `dim` → hidden.
    pub fc1: Linear,
    /// `fc2`: hidden → `dim`.
    pub fc2: Linear,
}

/// mask_uvit.py's `Block`: pre-LayerNorm attention and MLP, each added back, after
/// `skip_linear(cat(x, skip))` in an out-block.
pub struct Block {
    /// `norm1`.
    pub norm1: LayerNorm,
    /// `attn`.
    pub attn: Attention,
    /// `norm2`.
    pub norm2: LayerNorm,
    /// `mlp`.
    pub mlp: Mlp,
    /// `skip_linear`: `2 · dim` → `dim`, in the out-blocks.
    pub skip_linear: Option<Linear>,
}

/// The time token's MLP (`time_embed` as `nn.Sequential(Linear, SiLU, Linear)`).
pub struct TimeEmbed {
    /// `time_embed.0`: `dim` → `4 · dim`.
    pub linear_0: Linear,
    /// `time_embed.2`: `4 · dim` → `dim`.
    pub linear_2: Linear,
}

/// mask_uvit.py's `UViTEncoder`.
pub struct UViTEncoder {
    /// `patch_embed`.
    pub patch_embed: PatchEmbed,
    /// `time_embed`; None: `nn.Identity` (every MaskDM config).
    pub time_embed: Option<TimeEmbed>,
    /// `label_emb` (conditional models).
    pub label_emb: Option<Embedding>,
    /// `uncond_embed`, `[1, dim]`: the label token without a label (conditional models).
    pub uncond_embed: Option<Tensor>,
    /// `in_blocks`: `depth / 2` blocks, each output kept as a skip.
    pub in_blocks: Vec<Block>,
    /// `mid_block`.
    pub mid_block: Block,
    /// `out_blocks`: `depth / 2` blocks, each joining the latest skip not yet used.
    pub out_blocks: Vec<Block>,
    /// `norm`.
    pub norm: LayerNorm,
    /// `encoder_pos_embed`, `[1, extras + num_patches, dim]`.
    pub encoder_pos_embed: Tensor,
}

struct Modules {
    encoder: UViTEncoder,
    encoder_to_output: Linear,
    /// Linear weights by name, with their shapes: what a mask file may name.
    layers: BTreeMap<String, Vec<usize>>,
    /// Every layer's uid (the keys of a device's parameter copies).
    uids: Vec<u64>,
    /// The GPUs this model was placed on, whose copies go when the last handle does.
    gpus: super::PlacedOn,
}

impl Drop for Modules {
    fn drop(&mut self) {
        self.gpus.evict(&self.uids);
    }
}

/// mask_uvit.py's `MaskedUViT`: the encoder and `encoder_to_output`, loaded from a folder that
/// `tools/convert_maskdm_checkpoint.py` wrote. A handle: clones share the weights.
#[derive(Clone)]
pub struct MaskedUViT {
    /// The network's arguments.
    pub config: MaskedUViTConfig,
    modules: Arc<Modules>,
    placement: Placement,
}

/// Which tokens a masked call keeps: per sample, the indices (into the extras and patches)
/// that run, the extras first, then the visible patches in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenMask {
    /// `[B, num_patches]`: true where a patch is dropped.
    pub dropped: Vec<Vec<bool>>,
}

impl TokenMask {
    /// From a `[B, num_patches]` tensor, non-zero meaning dropped (how a u8 or bool mask reads
    /// as f32).
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let [b, n] = t.shape()[..] else {
            return Err(Error::input(
                "token_mask",
                format!("shape {:?}; expected [B, num_patches]", t.shape()),
            ));
        };
        let dropped = (0..b)
            .map(|i| {
                t.data()[i * n..(i + 1) * n]
                    .iter()
                    .map(|&v| v != 0.0)
                    .collect()
            })
            .collect();
        Ok(TokenMask { dropped })
    }

    /// Tensor `token_mask` of a safetensors file, which must be u8 or bool.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let st = crate::safetensors_io::deserialize(&bytes, &path.display().to_string())?;
        let Ok(view) = st.tensor("token_mask") else {
            return Ok(None);
        };
        use safetensors::tensor::Dtype;
        if !matches!(view.dtype(), Dtype::U8 | Dtype::BOOL) {
            return Err(Error::input(
                "token_mask",
                format!("dtype {:?}; a token mask is u8 or bool", view.dtype()),
            ));
        }
        let shape = crate::Shape::from(view.shape());
        let data = view.data().iter().map(|&v| f32::from(v)).collect();
        Ok(Some(Self::from_tensor(&Tensor::new(shape, data)?)?))
    }

    /// Visible patches per sample: the same for every sample, or an error.
    pub fn visible(&self, num_patches: usize, batch: usize) -> Result<usize> {
        if self.dropped.len() != batch {
            return Err(Error::input(
                "token_mask",
                format!("{} rows for a batch of {batch}", self.dropped.len()),
            ));
        }
        let mut visible = None;
        for (i, row) in self.dropped.iter().enumerate() {
            if row.len() != num_patches {
                return Err(Error::input(
                    "token_mask",
                    format!(
                        "row {i} has {} entries; the model has {num_patches} patches",
                        row.len()
                    ),
                ));
            }
            let v = row.iter().filter(|&&d| !d).count();
            match visible {
                None => visible = Some(v),
                Some(w) if w != v => {
                    return Err(Error::input(
                        "token_mask",
                        format!(
                            "sample {i} keeps {v} patches, sample 0 keeps {w}: every sample must \
                             drop as many (the visible tokens form one [B, visible, C] batch)"
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(visible.unwrap_or(0))
    }

    /// The rows `gather_tokens` takes, for a sequence of `extras` tokens then the patches.
    fn rows(&self, extras: usize) -> Vec<usize> {
        self.dropped
            .iter()
            .flat_map(|row| {
                (0..extras).chain(
                    row.iter()
                        .enumerate()
                        .filter(|(_, &d)| !d)
                        .map(move |(j, _)| extras + j),
                )
            })
            .collect()
    }
}

impl MaskedUViT {
    /// Loads a converted MaskDM folder (config.json + diffusion_pytorch_model.safetensors).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_pretrained(dir, &LoadOptions::default())
    }

    /// As `from_dir`, with a variant and revision, from any place `ModelFiles::find` accepts.
    /// A tensor in the weights that the network does not take is an error.
    pub fn from_pretrained(arg: &Path, opts: &LoadOptions) -> Result<Self> {
        let files = ModelFiles::find(arg, opts)?;
        let config = MaskedUViTConfig::from_file(&files.config)?;
        let mut ckpt = Checkpoint::load_keeping(&files.weights, opts.keep)?;
        let model = Self::load(config, &mut ckpt)?;
        if let Some(extra) = ckpt.remaining().first() {
            return Err(Error::weight(
                extra.clone(),
                "in the checkpoint but not a parameter of this MaskedUViT (a config that does \
                 not match the weights?)",
            ));
        }
        Ok(model)
    }

    /// Builds the network of `config`, taking every parameter from `ws`.
    pub fn load(config: MaskedUViTConfig, ws: &mut dyn WeightSource) -> Result<Self> {
        config.validate("config")?;
        let mut rec = Recording {
            inner: ws,
            layers: BTreeMap::new(),
        };
        let (built, uids) = crate::nn::taking_uids(|| Self::build(&config, &mut rec));
        let (encoder, encoder_to_output) = built?;
        Ok(MaskedUViT {
            config,
            modules: Arc::new(Modules {
                encoder,
                encoder_to_output,
                layers: rec.layers,
                uids,
                gpus: super::PlacedOn::default(),
            }),
            placement: Placement::default(),
        })
    }

    fn build(cfg: &MaskedUViTConfig, ws: &mut Recording) -> Result<(UViTEncoder, Linear)> {
        let d = cfg.encoder_embed_dim;
        let block = |ws: &mut Recording, prefix: &str, skip: bool| -> Result<Block> {
            let p = |n: &str| join(prefix, n);
            let inner = cfg.head_dim() * cfg.encoder_heads;
            let mut qkv = ws.linear(&p("attn.qkv"), d, 3 * inner, false)?;
            if cfg.qkv_bias {
                let q = ws.inner.take(&p("attn.q_bias"), &[inner])?;
                let v = ws.inner.take(&p("attn.v_bias"), &[inner])?;
                let mut b = Vec::with_capacity(3 * inner);
                b.extend_from_slice(q.data());
                b.extend(std::iter::repeat_n(0.0, inner));
                b.extend_from_slice(v.data());
                qkv.bias = Some(Tensor::new(vec![3 * inner], b)?);
            }
            let scale = match cfg.qk_scale {
                Some(s) => s as f32,
                None => (cfg.head_dim() as f32).powf(-0.5),
            };
            Ok(Block {
                norm1: LayerNorm::load(ws.inner, &p("norm1"), d, LAYER_NORM_EPS)?,
                attn: Attention {
                    qkv,
                    proj: ws.linear(&p("attn.proj"), inner, d, true)?,
                    num_heads: cfg.encoder_heads,
                    all_head_dim: inner,
                    scale,
                },
                norm2: LayerNorm::load(ws.inner, &p("norm2"), d, LAYER_NORM_EPS)?,
                mlp: Mlp {
                    fc1: ws.linear(&p("mlp.fc1"), d, cfg.mlp_hidden(), true)?,
                    fc2: ws.linear(&p("mlp.fc2"), cfg.mlp_hidden(), d, true)?,
                },
                skip_linear: if skip {
                    Some(ws.linear(&p("skip_linear"), 2 * d, d, true)?)
                } else {
                    None
                },
            })
        };
        let half = cfg.encoder_depth / 2;
        let proj = Conv2d::load(
            ws.inner,
            "encoder.patch_embed.proj",
            cfg.in_chans,
            d,
            cfg.patch_size,
            cfg.patch_size,
            0,
            true,
        )?;
        let time_embed = if cfg.mlp_time_embed {
            Some(TimeEmbed {
                linear_0: ws.linear("encoder.time_embed.0", d, 4 * d, true)?,
                linear_2: ws.linear("encoder.time_embed.2", 4 * d, d, true)?,
            })
        } else {
            None
        };
        let (label_emb, uncond_embed) = match cfg.num_classes {
            Some(k) => (
                Some(Embedding::load(ws.inner, "encoder.label_emb", k, d)?),
                Some(ws.inner.take("encoder.uncond_embed", &[1, d])?),
            ),
            None => (None, None),
        };
        let in_blocks = (0..half)
            .map(|i| block(ws, &format!("encoder.in_blocks.{i}"), false))
            .collect::<Result<_>>()?;
        let mid_block = block(ws, "encoder.mid_block", false)?;
        let out_blocks = (0..half)
            .map(|i| block(ws, &format!("encoder.out_blocks.{i}"), true))
            .collect::<Result<_>>()?;
        let encoder = UViTEncoder {
            patch_embed: PatchEmbed { proj },
            time_embed,
            label_emb,
            uncond_embed,
            in_blocks,
            mid_block,
            out_blocks,
            norm: LayerNorm::load(ws.inner, "encoder.norm", d, LAYER_NORM_EPS)?,
            encoder_pos_embed: ws.inner.take(
                "encoder.encoder_pos_embed",
                &[1, cfg.extras() + cfg.num_patches(), d],
            )?,
        };
        let out = ws.linear("encoder_to_output", d, cfg.patch_dim(), true)?;
        Ok((encoder, out))
    }

    /// Linear weights by name, with their shapes: what a mask file may name.
    pub fn layers(&self) -> &BTreeMap<String, Vec<usize>> {
        &self.modules.layers
    }

    /// The long skips (one per in-block), for Skip-Tuning's factors.
    pub fn num_skips(&self) -> usize {
        self.modules.encoder.in_blocks.len()
    }

    /// This model (sharing its weights) placed on an opened device.
    pub fn on(&self, exec: Exec) -> Self {
        self.modules.gpus.note(&exec);
        MaskedUViT {
            placement: Placement {
                exec,
                ..self.placement.clone()
            },
            ..self.clone()
        }
    }

    /// This handle with its CPU work on a pool of `threads` threads of its own (0: the
    /// caller's).
    pub fn with_threads(self, threads: usize) -> Result<Self> {
        Ok(MaskedUViT {
            placement: self.placement.clone().with_threads(threads)?,
            ..self
        })
    }

    /// mask_uvit.py's forward with `mask = None`: ε for `inputs.sample`, `[B, C, H, W]`.
    pub fn forward(&self, inputs: &UNetInputs) -> Result<Tensor> {
        self.forward_with(inputs, &Boosters::default())
    }

    /// mask_uvit.py's forward with a mask: only the visible tokens run (the extra tokens are
    /// always kept), and the output is their patches, `[B, visible, patch² · C]` in
    /// mask_uvit.py's order (`(p1 p2 C)` within a patch, patches in raster order).
    pub fn forward_masked(
        &self,
        inputs: &UNetInputs,
        mask: &TokenMask,
        boosters: &Boosters,
    ) -> Result<Tensor> {
        self.placement
            .install(|| self.run(inputs, Some(mask), boosters))
    }

    fn run(
        &self,
        inputs: &UNetInputs,
        mask: Option<&TokenMask>,
        boosters: &Boosters,
    ) -> Result<Tensor> {
        let tokens = match &self.placement.exec {
            Exec::Cpu(cpu) => self.tokens_on(cpu, inputs, mask, boosters)?,
            Exec::Cuda(gpu) => {
                let y = self.tokens_on(gpu.as_ref(), inputs, mask, boosters)?;
                gpu.download(&y)?
            }
        };
        if let Some((at, v)) = crate::safetensors_io::first_non_finite(tokens.data()) {
            return Err(Error::NonFinite {
                at: "sample".into(),
                msg: format!("the MaskedUViT's output holds {v} at element {at}"),
            });
        }
        let c = &self.config;
        let [b, m, pd] = tokens.shape()[..] else {
            return Err(Error::shape(
                "encoder_to_output",
                format!("{:?}", tokens.shape()),
            ));
        };
        // `noise[:, extras:, :]`, then unpatchify when every patch ran.
        let e = c.extras();
        let mut kept = Vec::with_capacity(b * (m - e) * pd);
        for row in tokens.data().chunks(m * pd) {
            kept.extend_from_slice(&row[e * pd..]);
        }
        if mask.is_some() {
            return Tensor::new(vec![b, m - e, pd], kept);
        }
        Ok(unpatchify(&kept, b, c.grid(), c.patch_size, c.in_chans))
    }

    /// Checks the inputs against the model: `sample` `[B, in_chans, img_size, img_size]`
    /// (the position table fixes the size), one timestep or one per sample, class labels for
    /// a conditional model only.
    pub fn check_inputs(&self, inputs: &UNetInputs) -> Result<()> {
        let c = &self.config;
        let want = [c.in_chans, c.img_size, c.img_size];
        match inputs.sample.shape() {
            [b, rest @ ..] if *b > 0 && rest == want => {}
            s => {
                return Err(Error::input(
                    "sample",
                    format!(
                        "shape {s:?}; this MaskedUViT takes [B, {}, {}, {}] (its position table \
                         fixes the size)",
                        c.in_chans, c.img_size, c.img_size
                    ),
                ))
            }
        }
        let b = inputs.sample.shape()[0];
        if inputs.timesteps.len() != 1 && inputs.timesteps.len() != b {
            return Err(Error::input(
                "timestep",
                format!("{} values for a batch of {b}", inputs.timesteps.len()),
            ));
        }
        if inputs.encoder_hidden_states.is_some()
            || inputs.text_embeds.is_some()
            || inputs.time_ids.is_some()
        {
            return Err(Error::input(
                "encoder_hidden_states",
                "a MaskedUViT takes no text conditioning",
            ));
        }
        if let Some(labels) = &inputs.class_labels {
            if c.num_classes.is_none() {
                return Err(Error::input(
                    "class_labels",
                    "this MaskedUViT is unconditional (num_classes <= 0)",
                ));
            }
            if labels.len() != b {
                return Err(Error::input(
                    "class_labels",
                    format!("{} labels for a batch of {b}", labels.len()),
                ));
            }
        }
        Ok(())
    }

    /// The forward on backend `be` up to `encoder_to_output`: `[B, extras + kept, patch_dim]`
    /// (kept: every patch, or the mask's visible ones).
    pub fn tokens_on<B: Backend>(
        &self,
        be: &B,
        inputs: &UNetInputs,
        mask: Option<&TokenMask>,
        boosters: &Boosters,
    ) -> Result<B::Tensor> {
        self.check_inputs(inputs)?;
        let c = &self.config;
        let b = inputs.sample.shape()[0];
        let rows = match mask {
            Some(m) => {
                m.visible(c.num_patches(), b)?;
                Some(m.rows(c.extras()))
            }
            None => None,
        };
        if let Some(f) = &boosters.freeu {
            if f.v2 {
                return Err(Error::booster(
                    "freeu",
                    "FreeU v2 on a MaskedUViT is not defined here (this crate's U-ViT extension \
                     is v1's: see `mask_uvit`'s module docs)",
                ));
            }
            if mask.is_some() {
                return Err(Error::booster(
                    "freeu",
                    "FreeU filters the skip's patch grid, which a token mask breaks up: give \
                     one or the other",
                ));
            }
        }
        if boosters.mask_generator.is_some() {
            return Err(Error::booster(
                "mask_generator",
                "MaskUNet's generator is built for a U-Net's layers; give masks from a file",
            ));
        }
        boosters.validate(self.num_skips(), b)?;
        if let Some(m) = &boosters.masks {
            m.check_layers(&self.modules.layers)?;
        }
        let lc = LayerCtx {
            masks: boosters.masks.as_deref(),
            step: boosters.mask_step,
        };
        let enc = &self.modules.encoder;
        let d = c.encoder_embed_dim;

        let sample = be.upload(&inputs.sample)?;
        let patches = be.conv2d(
            enc.patch_embed.proj.params(lc),
            &sample,
            Epilogue::default(),
        )?;
        let patches = be.to_tokens(&patches)?;

        // The time token: sinusoids on the host (cos first, no shift: mask_uvit.py's
        // timestep_embedding), as [B, 1, dim] so the MLP's linears keep the token axis.
        let timesteps: Vec<f32> = if inputs.timesteps.len() == 1 {
            vec![inputs.timesteps[0]; b]
        } else {
            inputs.timesteps.clone()
        };
        let ts = Timesteps {
            dim: d,
            flip_sin_to_cos: true,
            downscale_freq_shift: 0.0,
        };
        let t = crate::backend::cpu::timestep_embedding(&ts, &timesteps)?;
        let mut time_token = be.upload(&Tensor::new(vec![b, 1, d], t.data().to_vec())?)?;
        if let Some(te) = &enc.time_embed {
            let h = be.linear(te.linear_0.params(lc), &time_token, Epilogue::default())?;
            let h = be.silu(&h)?;
            time_token = be.linear(te.linear_2.params(lc), &h, Epilogue::default())?;
        }
        let extras = match (&enc.label_emb, &enc.uncond_embed) {
            (Some(table), Some(uncond)) => {
                let label = match &inputs.class_labels {
                    Some(y) => table.forward(y, "class_labels")?,
                    None => {
                        let mut rows = Vec::with_capacity(b * d);
                        (0..b).for_each(|_| rows.extend_from_slice(uncond.data()));
                        Tensor::new(vec![b, d], rows)?
                    }
                };
                let label = be.upload(&Tensor::new(vec![b, 1, d], label.data().to_vec())?)?;
                be.cat_tokens(&label, &time_token, None)?
            }
            _ => time_token,
        };
        let pos = be.upload(&enc.encoder_pos_embed)?;
        let mut x = be.cat_tokens(&extras, &patches, Some(&pos))?;
        if let Some(rows) = &rows {
            x = be.gather_tokens(&x, rows)?;
        }

        let mut skips = Vec::with_capacity(enc.in_blocks.len());
        for blk in &enc.in_blocks {
            x = blk.forward(be, &x, None, lc)?;
            skips.push(x.clone());
        }
        x = enc.mid_block.forward(be, &x, None, lc)?;
        let n = skips.len();
        for blk in &enc.out_blocks {
            let skip = skips
                .pop()
                .ok_or_else(|| Error::Msg("a MaskedUViT with more out-blocks than skips".into()))?;
            let rho = match &boosters.skip_scales {
                Some(s) => s.rho(skips.len(), n),
                None => 1.0,
            };
            if let Some(f) = &boosters.freeu {
                // Ours, not the paper's: the inner half of the out-blocks take (b1, s1), the
                // outer half (b2, s2), as a U-Net's first and second decoder stages do.
                let j = n - 1 - skips.len();
                let (b, s) = if 2 * j < n {
                    (f.b1, f.s1)
                } else {
                    (f.b2, f.s2)
                };
                let (h, skip) = self.freeu(be, x, skip, b, s, f)?;
                x = blk.forward(be, &h, Some((&skip, rho)), lc)?;
                continue;
            }
            x = blk.forward(be, &x, Some((&skip, rho)), lc)?;
        }
        let x = be.layer_norm(enc.norm.params(), &x)?;
        be.linear(
            self.modules.encoder_to_output.params(lc),
            &x,
            Epilogue::default(),
        )
    }
}

impl MaskedUViT {
    /// This crate's FreeU for a U-ViT: the first half of `h`'s channels (every token) times `b`,
    /// and the skip's patch tokens, as their `grid × grid` image, through FreeU's low-pass
    /// filter with factor `s`; the extra tokens of the skip pass unfiltered.
    fn freeu<B: Backend>(
        &self,
        be: &B,
        h: B::Tensor,
        skip: B::Tensor,
        b: f32,
        s: f32,
        f: &crate::boosters::FreeU,
    ) -> Result<(B::Tensor, B::Tensor)> {
        let c = &self.config;
        let shape = be.shape(&h);
        let [bs, m, _] = shape[..] else {
            return Err(Error::shape("freeu", format!("{shape:?} is not [B, N, C]")));
        };
        let mut img = be.to_image(&h, m, 1)?;
        be.freeu_backbone(&mut img, b, false)?;
        let h = be.to_tokens(&img)?;
        let (e, g) = (c.extras(), c.grid());
        let rows =
            |from: usize, to: usize| -> Vec<usize> { (0..bs).flat_map(|_| from..to).collect() };
        let extras = be.gather_tokens(&skip, &rows(0, e))?;
        let patches = be.gather_tokens(&skip, &rows(e, e + g * g))?;
        let grid = be.to_image(&patches, g, g)?;
        let filtered = be.fourier_filter(&grid, f.threshold, s, f.filter)?;
        let skip = be.cat_tokens(&extras, &be.to_tokens(&filtered)?, None)?;
        Ok((h, skip))
    }
}

impl Block {
    /// The block on tokens `x`; an out-block joins `skip`, scaled by its factor first.
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        x: &B::Tensor,
        skip: Option<(&B::Tensor, f32)>,
        lc: LayerCtx,
    ) -> Result<B::Tensor> {
        let joined;
        let x = match (&self.skip_linear, skip) {
            (Some(lin), Some((s, rho))) => {
                let cat = be.cat_channels(x, s, rho)?;
                joined = be.linear(lin.params(lc), &cat, Epilogue::default())?;
                &joined
            }
            (None, None) => x,
            _ => {
                return Err(Error::Msg(
                    "a U-ViT block's skip and its skip_linear must come together".into(),
                ))
            }
        };
        let h = be.layer_norm(self.norm1.params(), x)?;
        let x = self.attn.forward(be, &h, x, lc)?;
        let h = be.layer_norm(self.norm2.params(), &x)?;
        let h = be.linear(self.mlp.fc1.params(lc), &h, Epilogue::default())?;
        let h = be.activation(&h, Activation::Gelu)?;
        be.linear(self.mlp.fc2.params(lc), &h, Epilogue::residual(&x, 1.0))
    }
}

impl Attention {
    /// `residual + proj(attention(qkv(h)))`, the residual fused into `proj`'s GEMM.
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        h: &B::Tensor,
        residual: &B::Tensor,
        lc: LayerCtx,
    ) -> Result<B::Tensor> {
        let qkv = be.linear(self.qkv.params(lc), h, Epilogue::default())?;
        let inner = self.all_head_dim;
        let q = be.slice_channels(&qkv, 0, inner)?;
        let k = be.slice_channels(&qkv, inner, inner)?;
        let v = be.slice_channels(&qkv, 2 * inner, inner)?;
        let a = be.attention(&q, &k, &v, self.num_heads, self.scale)?;
        be.linear(self.proj.params(lc), &a, Epilogue::residual(residual, 1.0))
    }
}

/// `'B (h w) (p1 p2 C) -> B C (h p1) (w p2)'` of `tokens` (`[B, grid², p²·C]`, flat).
fn unpatchify(tokens: &[f32], b: usize, grid: usize, p: usize, c: usize) -> Tensor {
    let side = grid * p;
    let mut out = vec![0.0f32; b * c * side * side];
    for s in 0..b {
        for gy in 0..grid {
            for gx in 0..grid {
                let tok = &tokens[((s * grid + gy) * grid + gx) * p * p * c..][..p * p * c];
                for p1 in 0..p {
                    for p2 in 0..p {
                        for ch in 0..c {
                            let y = gy * p + p1;
                            let x = gx * p + p2;
                            out[((s * c + ch) * side + y) * side + x] = tok[(p1 * p + p2) * c + ch];
                        }
                    }
                }
            }
        }
    }
    Tensor::from_parts([b, c, side, side], out)
}

impl Denoiser for MaskedUViT {
    fn forward_with(&self, inputs: &UNetInputs, boosters: &Boosters) -> Result<Tensor> {
        self.placement.install(|| self.run(inputs, None, boosters))
    }

    fn check(&self, inputs: &UNetInputs) -> Result<()> {
        self.check_inputs(inputs)
    }

    fn warm_up(&self) -> Result<()> {
        let c = &self.config;
        let mut inputs =
            UNetInputs::new(Tensor::zeros([1, c.in_chans, c.img_size, c.img_size]), 1.0);
        if c.num_classes.is_some() {
            inputs.class_labels = Some(vec![0.0]);
        }
        self.forward(&inputs).map(drop)
    }
}
