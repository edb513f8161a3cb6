//! diffusers `config.json` for `UNet2DModel` and `UNet2DConditionModel`, normalised into one
//! description of the network. Every field is either implemented, ignorable at inference
//! (`dropout`, `sample_size`, ...), or rejected with an error naming field and value: a config
//! is never silently approximated.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelClass {
    UNet2DModel,
    UNet2DConditionModel,
}

/// The three families of down/up blocks; one struct implements each pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// DownBlock2D / UpBlock2D: resnets only.
    Plain,
    /// AttnDownBlock2D / AttnUpBlock2D: resnet + spatial self-attention.
    Attn,
    /// CrossAttnDownBlock2D / CrossAttnUpBlock2D: resnet + Transformer2DModel.
    CrossAttn,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MidBlockKind {
    /// UNetMidBlock2D.
    Plain,
    /// UNetMidBlock2DCrossAttn.
    CrossAttn,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeScaleShift {
    Default,
    ScaleShift,
}

/// SDXL's `addition_embed_type: "text_time"`.
#[derive(Clone, Debug, PartialEq)]
pub struct TextTimeConfig {
    pub addition_time_embed_dim: usize,
    pub projection_class_embeddings_input_dim: usize,
}

/// One level of the U-Net (one down block and its mirrored up block share the level's numbers).
#[derive(Clone, Debug, PartialEq)]
pub struct LevelConfig {
    pub out_channels: usize,
    pub layers: usize,
    /// Heads of a Transformer2DModel (UNet2DConditionModel's `num_attention_heads`).
    pub transformer_heads: usize,
    /// Head dim of a spatial Attention (UNet2DModel's `attention_head_dim`).
    pub attn_head_dim: usize,
    pub transformer_depth: usize,
    pub cross_attention_dim: usize,
    pub only_cross_attention: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct UNetConfig {
    pub class: ModelClass,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f32,
    pub down_blocks: Vec<BlockKind>,
    /// In execution order (innermost first), as `up_block_types`.
    pub up_blocks: Vec<BlockKind>,
    pub mid_block: Option<MidBlockKind>,
    /// Per level, outermost first (as `block_out_channels`).
    pub levels: Vec<LevelConfig>,
    /// Head dim of the spatial attention of each up block, in execution order. diffusers indexes
    /// UNet2DConditionModel's `attention_head_dim` list un-reversed here, unlike every other
    /// per-level list, so it cannot be derived from `levels`.
    pub up_attn_head_dim: Vec<usize>,
    pub mid_transformer_depth: usize,
    pub mid_add_attention: bool,
    pub mid_attn_groups: Option<usize>,
    pub mid_block_scale_factor: f32,
    pub downsample_padding: usize,
    pub norm_num_groups: usize,
    pub norm_eps: f32,
    pub use_linear_projection: bool,
    /// Attention scores in f32 under f16/bf16 (no effect on the f32 CPU path).
    pub upcast_attention: bool,
    pub resnet_time_scale_shift: TimeScaleShift,
    pub time_embed_dim: usize,
    pub num_class_embeds: Option<usize>,
    pub text_time: Option<TextTimeConfig>,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    /// The (H, W) the model was trained at (`sample_size`), when the config says.
    pub sample_size: Option<(usize, usize)>,
}

fn sample_size(r: &mut Reader) -> Result<Option<(usize, usize)>> {
    match r.get("sample_size") {
        None => Ok(None),
        Some(serde_json::Value::Array(v)) if v.len() == 2 => {
            let h = r.as_usize("sample_size", &v[0])?;
            let w = r.as_usize("sample_size", &v[1])?;
            Ok(Some((h, w)))
        }
        Some(v) => {
            let s = r.as_usize("sample_size", v)?;
            Ok(Some((s, s)))
        }
    }
}

impl UNetConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    pub fn from_json_str(text: &str, origin: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| Error::Json {
            origin: origin.to_string(),
            msg: e.to_string(),
        })?;
        let map = value.as_object().ok_or_else(|| Error::Config {
            origin: origin.to_string(),
            msg: "top level is not a JSON object".into(),
        })?;
        let mut r = Reader::new(map, origin);
        let class = match r.str_opt("_class_name")?.as_deref() {
            Some("UNet2DModel") => ModelClass::UNet2DModel,
            Some("UNet2DConditionModel") => ModelClass::UNet2DConditionModel,
            Some(other) => return Err(r.unsupported("_class_name", other)),
            None => {
                return Err(Error::Config {
                    origin: origin.into(),
                    msg: "no `_class_name` (expected UNet2DModel or UNet2DConditionModel)".into(),
                })
            }
        };
        let cfg = match class {
            ModelClass::UNet2DModel => parse_unet_2d(&mut r)?,
            ModelClass::UNet2DConditionModel => parse_unet_2d_condition(&mut r)?,
        };
        r.finish()?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    pub fn is_conditional(&self) -> bool {
        self.class == ModelClass::UNet2DConditionModel
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let bad = |msg: String| {
            Err(Error::Config {
                origin: origin.into(),
                msg,
            })
        };
        if self.levels.is_empty() {
            return bad("`block_out_channels` is empty".into());
        }
        if self.up_blocks.len() != self.levels.len() || self.down_blocks.len() != self.levels.len()
        {
            return bad(format!(
                "{} down blocks, {} up blocks and {} block_out_channels: they must be equal",
                self.down_blocks.len(),
                self.up_blocks.len(),
                self.levels.len()
            ));
        }
        let g = self.norm_num_groups;
        if g == 0 {
            return bad("`norm_num_groups` = 0".into());
        }
        for (i, l) in self.levels.iter().enumerate() {
            if l.out_channels == 0 || l.out_channels % g != 0 {
                return bad(format!(
                    "block_out_channels[{i}] = {} is not a positive multiple of norm_num_groups = {g}",
                    l.out_channels
                ));
            }
            if l.layers == 0 {
                return bad(format!("layers_per_block[{i}] = 0"));
            }
            if l.transformer_heads == 0 || l.attn_head_dim == 0 {
                return bad(format!("level {i}: attention heads / head dim of 0"));
            }
        }
        for (what, k) in [
            ("conv_in_kernel", self.conv_in_kernel),
            ("conv_out_kernel", self.conv_out_kernel),
        ] {
            if k % 2 == 0 {
                return Err(Error::Unsupported {
                    field: what.into(),
                    value: k.to_string(),
                });
            }
        }
        if self.time_embed_dim == 0 || self.in_channels == 0 || self.out_channels == 0 {
            return bad("zero channels or embedding size".into());
        }
        Ok(())
    }
}

fn parse_block(r: &Reader, field: &str, name: &str, down: bool) -> Result<BlockKind> {
    let name = name.strip_prefix("UNetRes").unwrap_or(name);
    let kind = match (name, down) {
        ("DownBlock2D", true) | ("UpBlock2D", false) => BlockKind::Plain,
        ("AttnDownBlock2D", true) | ("AttnUpBlock2D", false) => BlockKind::Attn,
        ("CrossAttnDownBlock2D", true) | ("CrossAttnUpBlock2D", false) => BlockKind::CrossAttn,
        _ => return Err(r.unsupported(field, &format!("\"{name}\""))),
    };
    Ok(kind)
}

fn block_list(r: &mut Reader, field: &str, default: &[&str], down: bool) -> Result<Vec<BlockKind>> {
    let names = r.str_list(field, default)?;
    names
        .iter()
        .map(|n| parse_block(r, field, n, down))
        .collect()
}

/// Checks the options both classes share and that this crate implements in one way only.
fn common_checks(r: &mut Reader) -> Result<()> {
    let act = r.str_or("act_fn", "silu")?;
    if act != "silu" && act != "swish" {
        return Err(r.unsupported("act_fn", &format!("\"{act}\"")));
    }
    let tet = r.str_or("time_embedding_type", "positional")?;
    if tet != "positional" {
        return Err(r.unsupported("time_embedding_type", &format!("\"{tet}\"")));
    }
    if let Some(cet) = r.str_opt("class_embed_type")? {
        return Err(r.unsupported("class_embed_type", &format!("\"{cet}\"")));
    }
    for ignored in ["dropout", "num_train_timesteps"] {
        r.ignore(ignored);
    }
    Ok(())
}

fn time_scale_shift(r: &mut Reader) -> Result<TimeScaleShift> {
    match r.str_or("resnet_time_scale_shift", "default")?.as_str() {
        "default" => Ok(TimeScaleShift::Default),
        "scale_shift" => Ok(TimeScaleShift::ScaleShift),
        other => Err(r.unsupported("resnet_time_scale_shift", &format!("\"{other}\""))),
    }
}

fn parse_unet_2d(r: &mut Reader) -> Result<UNetConfig> {
    common_checks(r)?;
    let boc = r.usize_list("block_out_channels", &[224, 448, 672, 896])?;
    if boc.is_empty() {
        return Err(r.unsupported("block_out_channels", "[]"));
    }
    let down = block_list(
        r,
        "down_block_types",
        &[
            "DownBlock2D",
            "AttnDownBlock2D",
            "AttnDownBlock2D",
            "AttnDownBlock2D",
        ],
        true,
    )?;
    let up = block_list(
        r,
        "up_block_types",
        &[
            "AttnUpBlock2D",
            "AttnUpBlock2D",
            "AttnUpBlock2D",
            "UpBlock2D",
        ],
        false,
    )?;
    if down.iter().chain(&up).any(|k| *k == BlockKind::CrossAttn) {
        return Err(Error::Config {
            origin: r.origin.clone(),
            msg: "UNet2DModel has no encoder_hidden_states: cross-attention blocks need UNet2DConditionModel".into(),
        });
    }
    let mid_block = match r
        .str_opt_or("mid_block_type", Some("UNetMidBlock2D"))?
        .as_deref()
    {
        None => None,
        Some("UNetMidBlock2D") => Some(MidBlockKind::Plain),
        Some(other) => return Err(r.unsupported("mid_block_type", &format!("\"{other}\""))),
    };
    for (field, default) in [("downsample_type", "conv"), ("upsample_type", "conv")] {
        let v = r.str_or(field, default)?;
        if v != "conv" {
            return Err(r.unsupported(field, &format!("\"{v}\"")));
        }
    }
    let layers = r.usize_or("layers_per_block", 2)?;
    let head_dim = r.usize_opt_or("attention_head_dim", Some(8))?;
    let norm_num_groups = r.usize_or("norm_num_groups", 32)?;
    // The mid block's head dim follows the same rule with the innermost width, so it is the
    // last level's `attn_head_dim`.
    let levels = boc
        .iter()
        .map(|&c| LevelConfig {
            out_channels: c,
            layers,
            transformer_heads: 1,
            attn_head_dim: head_dim.unwrap_or(c),
            transformer_depth: 1,
            cross_attention_dim: 0,
            only_cross_attention: false,
        })
        .collect::<Vec<_>>();
    let time_embedding_dim = r.usize_opt_or("time_embedding_dim", None)?;
    let shift = time_scale_shift(r)?;
    let attn_norm = r.usize_opt_or("attn_norm_num_groups", None)?;
    let cfg = UNetConfig {
        class: ModelClass::UNet2DModel,
        in_channels: r.usize_or("in_channels", 3)?,
        out_channels: r.usize_or("out_channels", 3)?,
        center_input_sample: r.bool_or("center_input_sample", false)?,
        flip_sin_to_cos: r.bool_or("flip_sin_to_cos", true)?,
        freq_shift: r.f32_or("freq_shift", 0.0)?,
        down_blocks: down,
        up_blocks: up,
        mid_block,
        mid_transformer_depth: 1,
        mid_add_attention: r.bool_or("add_attention", true)?,
        // diffusers: attention groups default to the resnets' only with the default time shift.
        mid_attn_groups: match (attn_norm, shift) {
            (Some(g), _) => Some(g),
            (None, TimeScaleShift::Default) => Some(norm_num_groups),
            (None, TimeScaleShift::ScaleShift) => None,
        },
        mid_block_scale_factor: r.f32_or("mid_block_scale_factor", 1.0)?,
        downsample_padding: r.usize_or("downsample_padding", 1)?,
        norm_num_groups,
        norm_eps: r.f32_or("norm_eps", 1e-5)?,
        use_linear_projection: false,
        upcast_attention: false,
        resnet_time_scale_shift: shift,
        time_embed_dim: time_embedding_dim.unwrap_or(boc[0] * 4),
        num_class_embeds: r.usize_opt_or("num_class_embeds", None)?,
        text_time: None,
        conv_in_kernel: 3,
        conv_out_kernel: 3,
        sample_size: sample_size(r)?,
        up_attn_head_dim: boc.iter().rev().map(|&c| head_dim.unwrap_or(c)).collect(),
        levels,
    };
    Ok(cfg)
}

fn parse_unet_2d_condition(r: &mut Reader) -> Result<UNetConfig> {
    common_checks(r)?;
    let boc = r.usize_list("block_out_channels", &[320, 640, 1280, 1280])?;
    let down = block_list(
        r,
        "down_block_types",
        &[
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ],
        true,
    )?;
    let up = block_list(
        r,
        "up_block_types",
        &[
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ],
        false,
    )?;
    let n = down.len();
    if n == 0 || boc.len() != n {
        return Err(Error::Config {
            origin: r.origin.clone(),
            msg: format!("{} block_out_channels for {n} down blocks", boc.len()),
        });
    }
    let mid_block = match r
        .str_opt_or("mid_block_type", Some("UNetMidBlock2DCrossAttn"))?
        .as_deref()
    {
        None => None,
        Some("UNetMidBlock2DCrossAttn") => Some(MidBlockKind::CrossAttn),
        Some("UNetMidBlock2D") => Some(MidBlockKind::Plain),
        Some(other) => return Err(r.unsupported("mid_block_type", &format!("\"{other}\""))),
    };
    let layers = r.usize_per_level("layers_per_block", 2, n)?;
    let cross = r.usize_per_level("cross_attention_dim", 1280, n)?;
    let depth = r.usize_per_level("transformer_layers_per_block", 1, n)?;
    let head_dim = r.opt_usize_per_level("attention_head_dim", Some(8), n)?;
    // diffusers' historical naming: `attention_head_dim` is the number of heads unless
    // `num_attention_heads` is given.
    let heads = match r.opt_usize_per_level("num_attention_heads", None, n)? {
        v if v.iter().all(Option::is_some) => v,
        _ => head_dim.clone(),
    };
    let only_cross = r.bool_per_level("only_cross_attention", false, n)?;
    // These reach only block types this crate rejects (the Simple* and Resnet*sample blocks);
    // diffusers ignores them for the supported ones, and so do we, after checking their type.
    r.bool_opt("mid_block_only_cross_attention")?;
    r.bool_or("resnet_skip_time_act", false)?;
    r.f32_or("resnet_out_scale_factor", 1.0)?;
    for (field, want) in [
        ("dual_cross_attention", false),
        ("class_embeddings_concat", false),
    ] {
        if r.bool_or(field, want)? != want {
            return Err(r.unsupported(field, &(!want).to_string()));
        }
    }
    for field in [
        "encoder_hid_dim",
        "encoder_hid_dim_type",
        "time_embedding_act_fn",
        "timestep_post_act",
        "time_cond_proj_dim",
        "cross_attention_norm",
        "reverse_transformer_layers_per_block",
    ] {
        r.must_be_null(field)?;
    }
    let attention_type = r.str_or("attention_type", "default")?;
    if attention_type != "default" {
        return Err(r.unsupported("attention_type", &format!("\"{attention_type}\"")));
    }
    r.ignore("addition_embed_type_num_heads");
    let text_time = match r.str_opt("addition_embed_type")?.as_deref() {
        None => None,
        Some("text_time") => {
            let d = r.usize_opt_or("addition_time_embed_dim", None)?;
            let p = r.usize_opt_or("projection_class_embeddings_input_dim", None)?;
            match (d, p) {
                (Some(d), Some(p)) => Some(TextTimeConfig {
                    addition_time_embed_dim: d,
                    projection_class_embeddings_input_dim: p,
                }),
                _ => {
                    return Err(Error::Config {
                        origin: r.origin.clone(),
                        msg: "addition_embed_type \"text_time\" needs addition_time_embed_dim and \
                              projection_class_embeddings_input_dim"
                            .into(),
                    })
                }
            }
        }
        Some(other) => return Err(r.unsupported("addition_embed_type", &format!("\"{other}\""))),
    };
    if text_time.is_none() {
        r.must_be_null("addition_time_embed_dim")?;
        r.must_be_null("projection_class_embeddings_input_dim")?;
    }
    let norm_num_groups = match r.usize_opt_or("norm_num_groups", Some(32))? {
        Some(g) => g,
        None => return Err(r.unsupported("norm_num_groups", "null")),
    };
    let time_embedding_dim = r.usize_opt_or("time_embedding_dim", None)?;
    let mut levels = Vec::with_capacity(n);
    for i in 0..n {
        let c = boc[i];
        levels.push(LevelConfig {
            out_channels: c,
            layers: layers[i],
            transformer_heads: heads[i].unwrap_or(0),
            attn_head_dim: head_dim[i].unwrap_or(c),
            transformer_depth: depth[i],
            cross_attention_dim: cross[i],
            only_cross_attention: only_cross[i],
        });
    }
    Ok(UNetConfig {
        class: ModelClass::UNet2DConditionModel,
        in_channels: r.usize_or("in_channels", 4)?,
        out_channels: r.usize_or("out_channels", 4)?,
        center_input_sample: r.bool_or("center_input_sample", false)?,
        flip_sin_to_cos: r.bool_or("flip_sin_to_cos", true)?,
        freq_shift: r.f32_or("freq_shift", 0.0)?,
        down_blocks: down,
        up_blocks: up,
        mid_block,
        mid_transformer_depth: depth[n - 1],
        mid_add_attention: mid_block == Some(MidBlockKind::CrossAttn),
        mid_attn_groups: Some(norm_num_groups),
        mid_block_scale_factor: r.f32_or("mid_block_scale_factor", 1.0)?,
        downsample_padding: r.usize_or("downsample_padding", 1)?,
        norm_num_groups,
        norm_eps: r.f32_or("norm_eps", 1e-5)?,
        use_linear_projection: r.bool_or("use_linear_projection", false)?,
        upcast_attention: r.bool_or("upcast_attention", false)?,
        resnet_time_scale_shift: time_scale_shift(r)?,
        time_embed_dim: time_embedding_dim.unwrap_or(boc[0] * 4),
        num_class_embeds: r.usize_opt_or("num_class_embeds", None)?,
        text_time,
        conv_in_kernel: r.usize_or("conv_in_kernel", 3)?,
        conv_out_kernel: r.usize_or("conv_out_kernel", 3)?,
        sample_size: sample_size(r)?,
        up_attn_head_dim: (0..n)
            .map(|i| head_dim[i].unwrap_or(boc[n - 1 - i]))
            .collect(),
        levels,
    })
}

/// Typed access to a config object that remembers which fields were read.
struct Reader<'a> {
    map: &'a Map<String, Value>,
    origin: String,
    seen: BTreeSet<String>,
}

impl<'a> Reader<'a> {
    fn new(map: &'a Map<String, Value>, origin: &str) -> Self {
        Reader {
            map,
            origin: origin.to_string(),
            seen: BTreeSet::new(),
        }
    }

    fn get(&mut self, field: &str) -> Option<&'a Value> {
        self.seen.insert(field.to_string());
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn ignore(&mut self, field: &str) {
        self.seen.insert(field.to_string());
    }

    fn unsupported(&self, field: &str, value: &str) -> Error {
        Error::Unsupported {
            field: field.to_string(),
            value: value.to_string(),
        }
    }

    fn type_error(&self, field: &str, want: &str, v: &Value) -> Error {
        Error::Config {
            origin: self.origin.clone(),
            msg: format!("`{field}` = {v}: expected {want}"),
        }
    }

    fn must_be_null(&mut self, field: &str) -> Result<()> {
        match self.get(field) {
            None => Ok(()),
            Some(v) => Err(self.unsupported(field, &v.to_string())),
        }
    }

    fn str_opt(&mut self, field: &str) -> Result<Option<String>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.type_error(field, "a string", v)),
        }
    }

    /// A string field whose absence means `default` but whose explicit null means None.
    fn str_opt_or(&mut self, field: &str, default: Option<&str>) -> Result<Option<String>> {
        self.seen.insert(field.to_string());
        match self.map.get(field) {
            None => Ok(default.map(str::to_string)),
            Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.type_error(field, "a string or null", v)),
        }
    }

    fn str_or(&mut self, field: &str, default: &str) -> Result<String> {
        Ok(self.str_opt(field)?.unwrap_or_else(|| default.to_string()))
    }

    fn bool_opt(&mut self, field: &str) -> Result<Option<bool>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.type_error(field, "true or false", v)),
        }
    }

    fn bool_or(&mut self, field: &str, default: bool) -> Result<bool> {
        Ok(self.bool_opt(field)?.unwrap_or(default))
    }

    fn as_usize(&self, field: &str, v: &Value) -> Result<usize> {
        v.as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .filter(|&x| x < 1 << 24)
            .ok_or_else(|| self.type_error(field, "a non-negative integer", v))
    }

    fn usize_or(&mut self, field: &str, default: usize) -> Result<usize> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => self.as_usize(field, v),
        }
    }

    /// Absent means `default`; explicit null means None.
    fn usize_opt_or(&mut self, field: &str, default: Option<usize>) -> Result<Option<usize>> {
        self.seen.insert(field.to_string());
        match self.map.get(field) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(v) => self.as_usize(field, v).map(Some),
        }
    }

    fn f32_or(&mut self, field: &str, default: f32) -> Result<f32> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(|x| x as f32)
                .ok_or_else(|| self.type_error(field, "a number", v)),
        }
    }

    fn str_list(&mut self, field: &str, default: &[&str]) -> Result<Vec<String>> {
        match self.get(field) {
            None => Ok(default.iter().map(|s| s.to_string()).collect()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| self.type_error(field, "a list of strings", v))
                })
                .collect(),
            Some(v) => Err(self.type_error(field, "a list of strings", v)),
        }
    }

    fn usize_list(&mut self, field: &str, default: &[usize]) -> Result<Vec<usize>> {
        match self.get(field) {
            None => Ok(default.to_vec()),
            Some(Value::Array(items)) => items.iter().map(|v| self.as_usize(field, v)).collect(),
            Some(v) => Err(self.type_error(field, "a list of integers", v)),
        }
    }

    /// An int or a list of `n` ints (one per level); null entries are None.
    fn opt_usize_per_level(
        &mut self,
        field: &str,
        default: Option<usize>,
        n: usize,
    ) -> Result<Vec<Option<usize>>> {
        self.seen.insert(field.to_string());
        match self.map.get(field) {
            None => Ok(vec![default; n]),
            Some(Value::Null) => Ok(vec![None; n]),
            Some(Value::Array(items)) => {
                if items.len() != n {
                    return Err(Error::Config {
                        origin: self.origin.clone(),
                        msg: format!("`{field}` has {} entries for {n} blocks", items.len()),
                    });
                }
                items
                    .iter()
                    .map(|v| match v {
                        Value::Null => Ok(None),
                        v => self.as_usize(field, v).map(Some),
                    })
                    .collect()
            }
            Some(v) => self.as_usize(field, v).map(|x| vec![Some(x); n]),
        }
    }

    fn usize_per_level(&mut self, field: &str, default: usize, n: usize) -> Result<Vec<usize>> {
        let v = self.opt_usize_per_level(field, Some(default), n)?;
        v.into_iter()
            .map(|x| x.ok_or_else(|| self.unsupported(field, "null")))
            .collect()
    }

    fn bool_per_level(&mut self, field: &str, default: bool, n: usize) -> Result<Vec<bool>> {
        match self.get(field) {
            None => Ok(vec![default; n]),
            Some(Value::Bool(b)) => Ok(vec![*b; n]),
            Some(Value::Array(items)) if items.len() == n => items
                .iter()
                .map(|v| {
                    v.as_bool()
                        .ok_or_else(|| self.type_error(field, "a list of booleans", v))
                })
                .collect(),
            Some(v) => Err(self.type_error(field, &format!("a boolean or {n} booleans"), v)),
        }
    }

    /// Errors on any field this crate did not read, unless it is metadata (`_…`) or null.
    fn finish(self) -> Result<()> {
        for (k, v) in self.map {
            if k.starts_with('_') || v.is_null() || self.seen.contains(k) {
                continue;
            }
            return Err(Error::Unsupported {
                field: k.clone(),
                value: v.to_string(),
            });
        }
        Ok(())
    }
}
