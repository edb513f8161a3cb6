//! diffusers `config.json` for `UNet2DModel` and `UNet2DConditionModel`, normalised into one
//! description of the network. Every field is either implemented, ignorable at inference
//! (`dropout`, `sample_size`, ...), or rejected with an error naming field and value: a config
//! is never silently approximated.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The diffusers class a config describes (`_class_name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelClass {
    /// `UNet2DModel`: pixel-space DDPM models, no cross-attention.
    UNet2DModel,
    /// `UNet2DConditionModel`: Stable Diffusion 1.x, 2.x and XL, cross-attending to
    /// `encoder_hidden_states`.
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

/// The mid block (`mid_block_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MidBlockKind {
    /// UNetMidBlock2D.
    Plain,
    /// UNetMidBlock2DCrossAttn.
    CrossAttn,
}

/// How a resnet applies the time embedding (`resnet_time_scale_shift`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeScaleShift {
    /// `"default"`: `time_emb_proj(SiLU(temb))` is added to conv1's output, per channel.
    Default,
    /// `"scale_shift"`: `time_emb_proj(SiLU(temb))` is split into (scale, shift), applied after
    /// norm2 as `x·(1 + scale) + shift`.
    ScaleShift,
}

/// SDXL's `addition_embed_type: "text_time"`.
#[derive(Clone, Debug, PartialEq)]
pub struct TextTimeConfig {
    /// `addition_time_embed_dim`: the sinusoidal width of each `time_ids` entry (256 for SDXL).
    pub addition_time_embed_dim: usize,
    /// `projection_class_embeddings_input_dim`: `add_embedding`'s input width, the width of
    /// `text_embeds` plus `time_ids` entries × `addition_time_embed_dim` (1280 + 6·256 = 2816 for
    /// SDXL).
    pub projection_class_embeddings_input_dim: usize,
}

/// One level of the U-Net (one down block and its mirrored up block share the level's numbers).
#[derive(Clone, Debug, PartialEq)]
pub struct LevelConfig {
    /// `block_out_channels[i]`: the level's width.
    pub out_channels: usize,
    /// `layers_per_block[i]`: resnets of the down block (its up block has one more).
    pub layers: usize,
    /// Heads of a Transformer2DModel (UNet2DConditionModel's `num_attention_heads`).
    pub transformer_heads: usize,
    /// Head dim of a spatial Attention (UNet2DModel's `attention_head_dim`).
    pub attn_head_dim: usize,
    /// `transformer_layers_per_block[i]`: BasicTransformerBlocks per Transformer2DModel.
    pub transformer_depth: usize,
    /// `cross_attention_dim[i]`: the width of `encoder_hidden_states` (0 for UNet2DModel).
    pub cross_attention_dim: usize,
    /// `only_cross_attention[i]`: attn1 attends to `encoder_hidden_states` too.
    pub only_cross_attention: bool,
}

/// One normalised description of a diffusers U-Net, whichever class wrote the `config.json`:
/// per-level values expanded to one entry per level, diffusers' defaults filled in, every value
/// checked (`validate`). Read with `from_file` or `from_json_str`, or built and edited in code.
///
/// ```
/// use freelunch::config::{ModelClass, UNetConfig};
///
/// // diffusers' defaults: Stable Diffusion 1.x's U-Net.
/// let cfg = UNetConfig::from_json_str(r#"{"_class_name": "UNet2DConditionModel"}"#, "inline")?;
/// assert_eq!(cfg.class, ModelClass::UNet2DConditionModel);
/// let widths: Vec<usize> = cfg.levels.iter().map(|l| l.out_channels).collect();
/// assert_eq!(widths, [320, 640, 1280, 1280]);
/// assert_eq!(cfg.time_embed_dim, 1280);
/// // An option this crate does not implement is an error naming it, never approximated.
/// let gelu = r#"{"_class_name": "UNet2DModel", "act_fn": "gelu"}"#;
/// assert!(UNetConfig::from_json_str(gelu, "inline").is_err());
/// # Ok::<(), freelunch::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct UNetConfig {
    /// The diffusers class (`_class_name`).
    pub class: ModelClass,
    /// `in_channels`: the channels of `sample`.
    pub in_channels: usize,
    /// `out_channels`: the channels of the output.
    pub out_channels: usize,
    /// `center_input_sample`: the sample is mapped to `2·x − 1` first.
    pub center_input_sample: bool,
    /// `flip_sin_to_cos`: sinusoidal embeddings put the cosines first.
    pub flip_sin_to_cos: bool,
    /// `freq_shift` (diffusers' `downscale_freq_shift`): embedding frequencies are
    /// `exp(−ln(10000)·i / (dim/2 − freq_shift))`.
    pub freq_shift: f32,
    /// `down_block_types`, outermost first.
    pub down_blocks: Vec<BlockKind>,
    /// In execution order (innermost first), as `up_block_types`.
    pub up_blocks: Vec<BlockKind>,
    /// `mid_block_type`; None where it is null (no mid block).
    pub mid_block: Option<MidBlockKind>,
    /// Per level, outermost first (as `block_out_channels`).
    pub levels: Vec<LevelConfig>,
    /// Head dim of the spatial attention of each up block, in execution order. diffusers indexes
    /// UNet2DConditionModel's `attention_head_dim` list un-reversed here, unlike every other
    /// per-level list, so it cannot be derived from `levels`.
    pub up_attn_head_dim: Vec<usize>,
    /// Transformer blocks of the mid block's Transformer2DModel (the innermost level's
    /// `transformer_layers_per_block`).
    pub mid_transformer_depth: usize,
    /// Whether the mid block has its attention layer: UNet2DModel's `add_attention`; true for a
    /// UNetMidBlock2DCrossAttn.
    pub mid_add_attention: bool,
    /// GroupNorm groups before the mid block's spatial attention: `attn_norm_num_groups`, else
    /// `norm_num_groups` with the default time shift; None: no GroupNorm (diffusers' rule).
    pub mid_attn_groups: Option<usize>,
    /// `mid_block_scale_factor`: the mid block's resnets and spatial attention divide their
    /// output by it.
    pub mid_block_scale_factor: f32,
    /// `downsample_padding` of the downsamplers' 3×3 stride-2 convolutions; 0 pads only the right
    /// and bottom, by one, as diffusers does.
    pub downsample_padding: usize,
    /// `norm_num_groups`: groups of every GroupNorm (resnets, attentions, transformers,
    /// `conv_norm_out`).
    pub norm_num_groups: usize,
    /// `norm_eps`: epsilon of the resnets', spatial attentions' and `conv_norm_out`'s GroupNorms
    /// (Transformer2DModel's `norm` uses 1e-6, its LayerNorms 1e-5).
    pub norm_eps: f32,
    /// `use_linear_projection`: Transformer2DModel's `proj_in`/`proj_out` are linear layers, not
    /// 1×1 convolutions (SD 2.x, SDXL).
    pub use_linear_projection: bool,
    /// Attention scores in f32 under f16/bf16 (no effect on the f32 CPU path).
    pub upcast_attention: bool,
    /// `resnet_time_scale_shift`.
    pub resnet_time_scale_shift: TimeScaleShift,
    /// The time embedding's width: `time_embedding_dim`, by default `4 · block_out_channels[0]`.
    pub time_embed_dim: usize,
    /// `num_class_embeds`: rows of the class embedding added to the time embedding; None: not
    /// class-conditional.
    pub num_class_embeds: Option<usize>,
    /// SDXL's added conditioning (`addition_embed_type: "text_time"`); None without it.
    pub text_time: Option<TextTimeConfig>,
    /// `conv_in_kernel`: the odd kernel size of `conv_in` (padded to keep H×W).
    pub conv_in_kernel: usize,
    /// `conv_out_kernel`: the odd kernel size of `conv_out` (padded to keep H×W).
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
    /// Reads a `config.json`: `from_json_str` on its text, named by its path in errors.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Parses the text of a diffusers `config.json` of a UNet2DModel or UNet2DConditionModel
    /// (`_class_name`) and validates it. A value this crate does not implement, or an unknown field
    /// with a non-null value, is an error naming the field; `origin` names the text in errors.
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

    /// Whether this is a UNet2DConditionModel.
    pub fn is_conditional(&self) -> bool {
        self.class == ModelClass::UNet2DConditionModel
    }

    /// Checks what the maths needs of every value: positive sizes, heads and head dims that
    /// divide the channels they split, groups that divide every normalised width, a positive
    /// `norm_eps`, invertible scale factors, a sinusoidal embedding that does not divide 0 by 0,
    /// and a network whose level count and parameter count do not overflow.
    ///
    /// `from_json_str` runs it on every config it returns; `UNet::load` runs it again, for
    /// configs built or edited in code. `origin` names the config in messages.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |msg: String| {
            Err(Error::Config {
                origin: origin.into(),
                msg,
            })
        };
        if self.levels.is_empty() {
            return bad("`block_out_channels` is empty".into());
        }
        if self.up_blocks.len() != self.levels.len()
            || self.down_blocks.len() != self.levels.len()
            || self.up_attn_head_dim.len() != self.levels.len()
        {
            return bad(format!(
                "{} down blocks, {} up blocks and {} block_out_channels: they must be equal",
                self.down_blocks.len(),
                self.up_blocks.len(),
                self.levels.len()
            ));
        }
        let n = self.levels.len();
        if self.downsample_factor().is_none() {
            return bad(format!(
                "`block_out_channels` has {n} levels: the {} downsamplers' overall factor 2^{} \
                 overflows",
                n - 1,
                n - 1
            ));
        }
        for (field, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("time_embedding_dim", self.time_embed_dim),
        ] {
            if v == 0 {
                return bad(format!("`{field}` = 0: it must be positive"));
            }
        }
        let g = self.norm_num_groups;
        if g == 0 {
            return bad("`norm_num_groups` = 0: it must be positive".into());
        }
        for (i, l) in self.levels.iter().enumerate() {
            if l.out_channels == 0 || l.out_channels % g != 0 {
                return bad(format!(
                    "block_out_channels[{i}] = {} is not a positive multiple of norm_num_groups = {g}",
                    l.out_channels
                ));
            }
            if l.layers == 0 {
                return bad(format!("layers_per_block[{i}] = 0: it must be positive"));
            }
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return bad(format!(
                "`norm_eps` = {}: it must be positive and finite (it keeps GroupNorm's 1/sqrt(var + eps) finite)",
                self.norm_eps
            ));
        }
        let inverse_finite = |x: f32| x != 0.0 && x.is_finite() && (1.0 / x).is_finite();
        if !inverse_finite(self.mid_block_scale_factor) {
            return bad(format!(
                "`mid_block_scale_factor` = {}: the mid block divides by it, so it must be finite \
                 and non-zero with a finite inverse",
                self.mid_block_scale_factor
            ));
        }
        let c0 = self.levels[0].out_channels;
        self.check_sinusoid(origin, "block_out_channels[0]", c0)?;
        if let Some(tt) = &self.text_time {
            for (field, v) in [
                ("addition_time_embed_dim", tt.addition_time_embed_dim),
                (
                    "projection_class_embeddings_input_dim",
                    tt.projection_class_embeddings_input_dim,
                ),
            ] {
                if v == 0 {
                    return bad(format!("`{field}` = 0: it must be positive"));
                }
            }
            self.check_sinusoid(
                origin,
                "addition_time_embed_dim",
                tt.addition_time_embed_dim,
            )?;
        }
        if self.num_class_embeds == Some(0) {
            return bad(
                "`num_class_embeds` = 0: a class embedding needs at least one class".into(),
            );
        }
        if let Some((h, w)) = self.sample_size {
            if h == 0 || w == 0 {
                return bad(format!("`sample_size` = {h}×{w}: it must be positive"));
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
        for site in self.attention_sites() {
            self.check_attention_site(origin, &site)?;
        }
        if self.parameter_count().is_none() {
            return bad(
                "the weights this config describes number more than this machine can address"
                    .into(),
            );
        }
        Ok(())
    }

    /// diffusers' `get_timestep_embedding` divides by `half − freq_shift` (half = dim / 2): it
    /// must be positive, or the frequencies are 0/0 (NaN) or grow past f32.
    fn check_sinusoid(&self, origin: &str, dim_field: &str, dim: usize) -> Result<()> {
        let half = dim / 2;
        let shift = self.freq_shift;
        // The same f32 arithmetic as `Timesteps::forward`.
        let denom = half as f32 - shift;
        if !shift.is_finite()
            || (half > 0 && denom.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater))
        {
            return Err(Error::Config {
                origin: origin.into(),
                msg: format!(
                    "`freq_shift` = {shift} with {dim_field} = {dim}: the sinusoidal embedding \
                     divides by half the width minus freq_shift ({half} − {shift} = {denom}), \
                     which must be positive"
                ),
            });
        }
        Ok(())
    }

    /// Every attention layer the network builds: where it is, its width and how it splits it.
    fn attention_sites(&self) -> Vec<AttentionSite> {
        let n = self.levels.len();
        let mut sites = Vec::new();
        let mut site =
            |block: String, kind: BlockKind, level: &LevelConfig, head_dim: usize| match kind {
                BlockKind::Plain => {}
                BlockKind::Attn => sites.push(AttentionSite {
                    block,
                    channels: level.out_channels,
                    split: Split::HeadDim(head_dim),
                    cross_attention_dim: None,
                }),
                BlockKind::CrossAttn => sites.push(AttentionSite {
                    block,
                    channels: level.out_channels,
                    split: Split::Heads(level.transformer_heads),
                    cross_attention_dim: Some(level.cross_attention_dim),
                }),
            };
        for (i, (&kind, level)) in self.down_blocks.iter().zip(&self.levels).enumerate() {
            site(format!("down_blocks.{i}"), kind, level, level.attn_head_dim);
        }
        let inner = &self.levels[n - 1];
        match (self.mid_block, self.class) {
            (Some(MidBlockKind::CrossAttn), _) => {
                site("mid_block".into(), BlockKind::CrossAttn, inner, 0)
            }
            (Some(MidBlockKind::Plain), ModelClass::UNet2DModel) if self.mid_add_attention => site(
                "mid_block".into(),
                BlockKind::Attn,
                inner,
                inner.attn_head_dim,
            ),
            _ => {}
        }
        for (i, &kind) in self.up_blocks.iter().enumerate() {
            let level = &self.levels[n - 1 - i];
            site(
                format!("up_blocks.{i}"),
                kind,
                level,
                self.up_attn_head_dim[i],
            );
        }
        sites
    }

    fn check_attention_site(&self, origin: &str, s: &AttentionSite) -> Result<()> {
        let bad = |msg: String| {
            Err(Error::Config {
                origin: origin.into(),
                msg: format!("{}: {msg}", s.block),
            })
        };
        let c = s.channels;
        match s.split {
            Split::HeadDim(d) if d == 0 || !c.is_multiple_of(d) => {
                return bad(format!(
                    "`attention_head_dim` = {d} does not divide its {c} channels into heads"
                ))
            }
            Split::Heads(h) if h == 0 || !c.is_multiple_of(h) => {
                return bad(format!(
                    "{h} attention heads (`num_attention_heads`, or `attention_head_dim` when \
                     that is null) do not divide its {c} channels"
                ))
            }
            _ => {}
        }
        if s.cross_attention_dim == Some(0) {
            return bad("`cross_attention_dim` = 0: it must be positive".into());
        }
        if s.block == "mid_block" {
            if let (Split::HeadDim(_), Some(ag)) = (s.split, self.mid_attn_groups) {
                if ag == 0 || !c.is_multiple_of(ag) {
                    return bad(format!(
                        "`attn_norm_num_groups` = {ag} does not divide its {c} channels"
                    ));
                }
            }
        }
        Ok(())
    }

    /// 2^(levels − 1), the factor the down blocks shrink H and W by; None when it overflows.
    pub fn downsample_factor(&self) -> Option<usize> {
        let shift = u32::try_from(self.levels.len().checked_sub(1)?).ok()?;
        1usize.checked_shl(shift).filter(|_| shift < usize::BITS)
    }

    /// How many parameters the network of this config holds (DeMe's optional channel
    /// projections aside), or None when the count overflows. Linear in the number of levels:
    /// a level's identical layers are counted by multiplication.
    pub fn parameter_count(&self) -> Option<u64> {
        let u = |x: usize| N(Some(x as u64));
        let n = self.levels.len();
        if self.up_blocks.len() != n || self.down_blocks.len() != n {
            return None;
        }
        let c0 = u(self.levels.first()?.out_channels);
        let ted = u(self.time_embed_dim);
        let lin = |i: N, o: N| i * o + o;
        let conv = |i: N, o: N, k: usize| i * o * u(k) * u(k) + o;
        let norm = |c: N| u(2) * c;
        let temb_out = |c: N| match self.resnet_time_scale_shift {
            TimeScaleShift::Default => c,
            TimeScaleShift::ScaleShift => u(2) * c,
        };
        let resnet = |i: usize, o: usize| {
            let (ci, co) = (u(i), u(o));
            let shortcut = if i != o { lin(ci, co) } else { u(0) };
            norm(ci)
                + conv(ci, co, 3)
                + lin(ted, temb_out(co))
                + norm(co)
                + conv(co, co, 3)
                + shortcut
        };
        let spatial = |c: usize, groups: bool| {
            let c = u(c);
            let gn = if groups { norm(c) } else { u(0) };
            gn + u(3) * lin(c, c) + lin(c, c)
        };
        let transformer = |l: &LevelConfig| {
            let c = u(l.out_channels);
            let x = u(l.cross_attention_dim);
            let ctx1 = if l.only_cross_attention { x } else { c };
            let block = u(3) * norm(c)
                + c * c
                + u(2) * ctx1 * c
                + lin(c, c)
                + c * c
                + u(2) * x * c
                + lin(c, c)
                + lin(c, u(8) * c)
                + lin(u(4) * c, c);
            norm(c) + u(2) * lin(c, c) + u(l.transformer_depth) * block
        };
        let attn = |kind: BlockKind, l: &LevelConfig, groups: bool| match kind {
            BlockKind::Plain => u(0),
            BlockKind::Attn => spatial(l.out_channels, groups),
            BlockKind::CrossAttn => transformer(l),
        };
        let mut total = lin(c0, ted) + lin(ted, ted);
        if let Some(k) = self.num_class_embeds {
            total = total + u(k) * ted;
        }
        if let Some(tt) = &self.text_time {
            total = total + lin(u(tt.projection_class_embeddings_input_dim), ted) + lin(ted, ted);
        }
        total = total + conv(u(self.in_channels), c0, self.conv_in_kernel);
        let mut prev = self.levels[0].out_channels;
        for (i, (&kind, l)) in self.down_blocks.iter().zip(&self.levels).enumerate() {
            let c = l.out_channels;
            if l.layers > 0 {
                total = total
                    + resnet(prev, c)
                    + u(l.layers - 1) * resnet(c, c)
                    + u(l.layers) * attn(kind, l, true);
            }
            if i + 1 < n {
                total = total + conv(u(c), u(c), 3);
            }
            prev = c;
        }
        let inner = &self.levels[n - 1];
        if let Some(kind) = self.mid_block {
            let c = inner.out_channels;
            total = total + resnet(c, c);
            let layer = match (kind, self.class) {
                (MidBlockKind::CrossAttn, _) => transformer(inner) + resnet(c, c),
                (MidBlockKind::Plain, ModelClass::UNet2DModel) => {
                    let a = if self.mid_add_attention {
                        spatial(c, self.mid_attn_groups.is_some())
                    } else {
                        u(0)
                    };
                    a + resnet(c, c)
                }
                (MidBlockKind::Plain, ModelClass::UNet2DConditionModel) => u(0),
            };
            total = total + layer;
        }
        let mut prev_out = inner.out_channels;
        for (i, &kind) in self.up_blocks.iter().enumerate() {
            let l = &self.levels[n - 1 - i];
            let input = self.levels[(n - 1 - i).saturating_sub(1)].out_channels;
            let out = l.out_channels;
            for (cin, skip, count) in up_resnets(prev_out, out, input, l.layers) {
                total = total + u(count) * resnet(cin.checked_add(skip)?, out);
            }
            total = total + u(l.layers + 1) * attn(kind, l, true);
            if i + 1 < n {
                total = total + conv(u(out), u(out), 3);
            }
            prev_out = out;
        }
        total = total + norm(c0) + conv(c0, u(self.out_channels), self.conv_out_kernel);
        total.0
    }

    /// `plan_forward` for a `[B, C, H, W]` sample and its optional `encoder_hidden_states`
    /// (`[B, M, D]`); a sample of another rank is an error.
    pub fn plan_forward_of(
        &self,
        sample: &crate::tensor::Tensor,
        context: Option<&crate::tensor::Tensor>,
    ) -> Result<ForwardPlan> {
        let (b, _, h, w) = sample.dims4("sample")?;
        let m = context.and_then(|t| t.shape().get(1).copied()).unwrap_or(0);
        self.plan_forward(b, h, w, m)
    }

    /// Bytes of the f32 parameters this config describes.
    pub fn weight_bytes(&self) -> Result<u64> {
        self.parameter_count()
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(|| Error::TooLarge {
                what: "the model's weights".into(),
                detail: "their count overflows".into(),
            })
    }

    /// Refuses, "needs ~X GiB, Y GiB available", before a checkpoint is read whose f32
    /// parameters alone would not fit in the memory available.
    pub fn ensure_weights_fit(&self) -> Result<()> {
        crate::tensor::ensure_fits("loading the model's weights as f32", self.weight_bytes()?)
    }

    /// The forward pass of a `[batch, in_channels, h, w]` sample (with `context_len` tokens of
    /// `encoder_hidden_states`) before it runs: every size it computes, checked. An encoder size
    /// the decoder cannot join (a skip and the upsampled feature of different H×W, as a
    /// `downsample_padding` above 1 makes), or a sample too small for a downsampler, is an error
    /// naming the block and both shapes. Returns what the call will hold in memory. Linear in
    /// the number of levels (a level's skips share one size and are handled as a run).
    pub fn plan_forward(
        &self,
        batch: usize,
        h: usize,
        w: usize,
        context_len: usize,
    ) -> Result<ForwardPlan> {
        let too_large = |what: &str| Error::TooLarge {
            what: format!(
                "the forward of a [{batch}, {}, {h}, {w}] sample",
                self.in_channels
            ),
            detail: format!("{what} overflows"),
        };
        let n = self.levels.len();
        if n == 0 || self.up_blocks.len() != n || self.down_blocks.len() != n {
            return Err(Error::Config {
                origin: "plan_forward".into(),
                msg: "the config's block lists do not match its levels".into(),
            });
        }
        let factor = self
            .downsample_factor()
            .ok_or_else(|| too_large("the downsampling factor"))?;
        let weights = self
            .parameter_count()
            .ok_or_else(|| too_large("the parameter count"))?;
        let threads = rayon::current_num_threads();
        let u = |x: usize| N(Some(x as u64));
        let b = u(batch);
        // Elements of a [B, c, h, w] image.
        let image = |c: usize, (h, w): (usize, usize)| b * u(c) * u(h) * u(w);
        let mut working = N(Some(0));
        let mut scores = N(Some(0));
        let mut peak = |x: N| working = working.max(x);
        let rows = |tokens: usize| {
            N(crate::backend::cpu::attention::scores_per_task(tokens, 1).map(|r| r as u64))
        };
        // What an attention layer of width c at hw holds, and its score rows (all threads).
        let attention = |kind: BlockKind, c: usize, hw: (usize, usize)| -> (N, N) {
            let tokens = hw.0.saturating_mul(hw.1);
            let self_scores = u(threads) * rows(tokens) * u(hw.0) * u(hw.1);
            match kind {
                BlockKind::Plain => (u(0), u(0)),
                BlockKind::Attn => (image(c, hw) * u(10), self_scores),
                BlockKind::CrossAttn => {
                    let cross = u(3) * b * u(context_len) * u(c);
                    let cross_scores = u(threads) * rows(tokens) * u(context_len);
                    (image(c, hw) * u(25) + cross, self_scores.max(cross_scores))
                }
            }
        };
        let resnet = |cin: usize, cout: usize, hw: (usize, usize)| {
            image(cin, hw) * u(2) + image(cout, hw) * u(5)
        };

        let p = self.downsample_padding;
        let pads = if p == 0 { (0, 1) } else { (p, p) };
        let down = |x: usize| -> Option<usize> {
            let padded = x.checked_add(pads.0)?.checked_add(pads.1)?;
            padded.checked_sub(3).map(|v| v / 2 + 1)
        };
        let c0 = self.levels[0].out_channels;
        let mut hw = (h, w);
        let mut skips: smallvec::SmallVec<[SkipRun; 16]> = smallvec::smallvec![SkipRun {
            source: SkipSource::ConvIn,
            channels: c0,
            hw,
            count: 1,
        }];
        peak(image(self.in_channels, hw) + image(c0, hw) * u(3));
        let mut prev = c0;
        for (i, (&kind, l)) in self.down_blocks.iter().zip(&self.levels).enumerate() {
            let c = l.out_channels;
            if l.layers > 0 {
                let (a, sc) = attention(kind, c, hw);
                peak(resnet(prev, c, hw).max(resnet(c, c, hw)).max(a));
                scores = scores.max(sc);
                skips.push(SkipRun {
                    source: SkipSource::Layer { block: i, kind },
                    channels: c,
                    hw,
                    count: l.layers,
                });
            }
            if i + 1 < n {
                let next = match (down(hw.0), down(hw.1)) {
                    (Some(a), Some(b)) => (a, b),
                    _ => {
                        return Err(Error::input(
                            "sample",
                            format!(
                                "[{batch}, {}, {h}, {w}] is too small: \
                                 down_blocks.{i}.downsamplers.0 (a 3×3 stride-2 convolution, \
                                 padding {pads:?} from downsample_padding = {p}) gets a \
                                 [{batch}, {c}, {}, {}] input",
                                self.in_channels, hw.0, hw.1
                            ),
                        ))
                    }
                };
                // im2col of the whole batch (9·c per output pixel) beside input and output.
                peak(image(c, hw) + image(c, next) * u(10));
                hw = next;
                skips.push(SkipRun {
                    source: SkipSource::Downsampler { block: i },
                    channels: c,
                    hw,
                    count: 1,
                });
            }
            prev = c;
        }
        let inner = &self.levels[n - 1];
        if let Some(mid) = self.mid_block {
            let c = inner.out_channels;
            let kind = match (mid, self.class) {
                (MidBlockKind::CrossAttn, _) => BlockKind::CrossAttn,
                (MidBlockKind::Plain, ModelClass::UNet2DModel) if self.mid_add_attention => {
                    BlockKind::Attn
                }
                (MidBlockKind::Plain, _) => BlockKind::Plain,
            };
            let (a, sc) = attention(kind, c, hw);
            scores = scores.max(sc);
            peak(resnet(c, c, hw).max(a));
        }
        let skips_total = skips
            .iter()
            .fold(u(0), |acc, r| acc + image(r.channels, r.hw) * u(r.count));
        // diffusers upsamples to the skip's size when H or W is not a multiple of the factor.
        let forward_upsample_size = !h.is_multiple_of(factor) || !w.is_multiple_of(factor);
        let mut prev_out = inner.out_channels;
        for (i, &kind) in self.up_blocks.iter().enumerate() {
            let l = &self.levels[n - 1 - i];
            let c = l.out_channels;
            let mut j = 0;
            let mut need = l.layers.checked_add(1).ok_or_else(|| too_large("layers"))?;
            while need > 0 {
                let Some(run) = skips.last_mut() else {
                    return Err(Error::Config {
                        origin: "plan_forward".into(),
                        msg: format!(
                            "up_blocks.{i}.resnets.{j}: the encoder produced too few skips"
                        ),
                    });
                };
                let cin = if j == 0 { prev_out } else { c };
                if run.hw != hw {
                    return Err(Error::input(
                        "sample",
                        format!(
                            "[{batch}, {}, {h}, {w}]: up_blocks.{i}.resnets.{j} cannot join the \
                             decoder feature [{batch}, {cin}, {}, {}] with its skip \
                             [{batch}, {}, {}, {}] from {}: their H×W differ (the encoder's \
                             sizes follow from downsample_padding = {p})",
                            self.in_channels,
                            hw.0,
                            hw.1,
                            run.channels,
                            run.hw.0,
                            run.hw.1,
                            run.source.name(run.count - 1)
                        ),
                    ));
                }
                let take = need.min(run.count);
                let joined = |cin: usize| {
                    cin.checked_add(run.channels)
                        .ok_or_else(|| too_large("channels"))
                };
                let first = joined(cin)?;
                let mut work = resnet(first, c, hw) + image(first, hw);
                if take > 1 {
                    let rest = joined(c)?;
                    work = work.max(resnet(rest, c, hw) + image(rest, hw));
                }
                peak(work);
                run.count -= take;
                if run.count == 0 {
                    skips.pop();
                }
                need -= take;
                j += take;
            }
            let (a, sc) = attention(kind, c, hw);
            peak(a);
            scores = scores.max(sc);
            if i + 1 < n {
                let next = if forward_upsample_size {
                    skips.last().map_or(hw, |r| r.hw)
                } else {
                    (
                        hw.0.checked_mul(2).ok_or_else(|| too_large("H"))?,
                        hw.1.checked_mul(2).ok_or_else(|| too_large("W"))?,
                    )
                };
                peak(image(c, hw) + image(c, next) * u(4));
                hw = next;
            }
            prev_out = c;
        }
        peak(image(c0, hw) * u(4) + image(self.out_channels, hw));
        let bytes = |x: N, what: &str| {
            x.0.and_then(|e| e.checked_mul(4))
                .ok_or_else(|| too_large(what))
        };
        Ok(ForwardPlan {
            weight_bytes: weights
                .checked_mul(4)
                .ok_or_else(|| too_large("the weights"))?,
            activation_bytes: bytes(skips_total + working, "the activations")?,
            workspace_bytes: bytes(scores, "the attention workspace")?,
            batch,
            h,
            w,
            in_channels: self.in_channels,
        })
    }
}

/// The decoder resnets of an up block with `layers` layers, as (input width, skip width, how
/// many): the first takes the block below's output, the last the skip from the level above.
fn up_resnets(
    prev_out: usize,
    out: usize,
    input: usize,
    layers: usize,
) -> smallvec::SmallVec<[(usize, usize, usize); 3]> {
    match layers {
        0 => smallvec::smallvec![(prev_out, input, 1)],
        _ => smallvec::smallvec![(prev_out, out, 1), (out, out, layers - 1), (out, input, 1)],
    }
}

/// Consecutive skips of one size from one encoder module (a level's resnets share a size).
struct SkipRun {
    source: SkipSource,
    channels: usize,
    hw: (usize, usize),
    count: usize,
}

enum SkipSource {
    ConvIn,
    Layer { block: usize, kind: BlockKind },
    Downsampler { block: usize },
}

impl SkipSource {
    /// The module that made skip `j` of the run, diffusers-style.
    fn name(&self, j: usize) -> String {
        match self {
            SkipSource::ConvIn => "conv_in".into(),
            SkipSource::Layer {
                block,
                kind: BlockKind::Plain,
            } => format!("down_blocks.{block}.resnets.{j}"),
            SkipSource::Layer { block, .. } => format!("down_blocks.{block}.attentions.{j}"),
            SkipSource::Downsampler { block } => format!("down_blocks.{block}.downsamplers.0"),
        }
    }
}

/// Where an attention layer sits, its width and how that width is split.
struct AttentionSite {
    block: String,
    channels: usize,
    split: Split,
    cross_attention_dim: Option<usize>,
}

#[derive(Clone, Copy)]
enum Split {
    /// Spatial attention: heads = channels / head dim.
    HeadDim(usize),
    /// Transformer2DModel: head dim = channels / heads.
    Heads(usize),
}

/// A count that is None once any step overflowed (checked arithmetic without `?` at each step).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct N(Option<u64>);

impl std::ops::Add for N {
    type Output = N;
    fn add(self, o: N) -> N {
        N(self.0.zip(o.0).and_then(|(a, b)| a.checked_add(b)))
    }
}

impl std::ops::Mul for N {
    type Output = N;
    fn mul(self, o: N) -> N {
        N(self.0.zip(o.0).and_then(|(a, b)| a.checked_mul(b)))
    }
}

impl N {
    /// The larger count; an overflow on either side stays an overflow.
    fn max(self, o: N) -> N {
        N(self.0.zip(o.0).map(|(a, b)| a.max(b)))
    }
}

/// What one forward call holds in memory, from `UNetConfig::plan_forward`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardPlan {
    /// The parameters, as f32 (resident before the call: not counted against what is free).
    pub weight_bytes: u64,
    /// Every skip the decoder joins, plus the largest set of tensors one layer holds at once.
    pub activation_bytes: u64,
    /// Attention's score rows, one block per thread.
    pub workspace_bytes: u64,
    batch: usize,
    h: usize,
    w: usize,
    in_channels: usize,
}

impl ForwardPlan {
    /// What the call allocates beyond the resident weights.
    pub fn call_bytes(&self) -> u64 {
        self.activation_bytes.saturating_add(self.workspace_bytes)
    }

    /// Refuses, "needs ~X GiB, Y GiB available", when the call will not fit in `available`
    /// bytes (a backend's `available_memory`; None skips the check).
    pub fn ensure_fits(&self, available: Option<u64>) -> Result<()> {
        let needed = self.call_bytes();
        match available {
            Some(available) if needed > available => Err(Error::OutOfMemory {
                what: format!(
                    "the forward of a [{}, {}, {}, {}] sample (activations and attention \
                     workspace; the weights, {} GiB, are already loaded)",
                    self.batch,
                    self.in_channels,
                    self.h,
                    self.w,
                    crate::error::gib(self.weight_bytes)
                ),
                needed,
                available,
            }),
            _ => Ok(()),
        }
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
        time_embed_dim: match time_embedding_dim {
            Some(d) => d,
            None => default_time_embed_dim(r, &boc)?,
        },
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
        time_embed_dim: match time_embedding_dim {
            Some(d) => d,
            None => default_time_embed_dim(r, &boc)?,
        },
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

/// Every size a config gives is below this.
const MAX_SIZE: usize = 1 << 24;

/// `block_out_channels[0] · 4`, diffusers' default time embedding width.
fn default_time_embed_dim(r: &Reader, boc: &[usize]) -> Result<usize> {
    boc.first()
        .and_then(|c| c.checked_mul(4))
        .ok_or_else(|| Error::Config {
            origin: r.origin.clone(),
            msg: "`block_out_channels` is empty: no default time_embedding_dim".into(),
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

    /// A JSON integer in 0..2^24 (no config size comes near; the bound keeps every product of
    /// a few sizes far from overflow). A fraction, a float like `2.0`, a string or a negative
    /// number is an error naming the field: never rounded.
    fn as_usize(&self, field: &str, v: &Value) -> Result<usize> {
        v.as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .filter(|&x| x < MAX_SIZE)
            .ok_or_else(|| self.type_error(field, "a non-negative integer below 2^24", v))
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
            // Finite as the f32 it becomes (1e39 is a finite f64 but an infinite f32).
            Some(v) => v
                .as_f64()
                .map(|x| x as f32)
                .filter(|x| x.is_finite())
                .ok_or_else(|| self.type_error(field, "a finite number in f32 range", v)),
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
