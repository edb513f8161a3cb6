//! Down, mid and up blocks. One struct per role covers diffusers' three families
//! (`DownBlock2D` / `AttnDownBlock2D` / `CrossAttnDownBlock2D` and the up and mid
//! counterparts): they differ only in the layer that follows each resnet.

use super::attention_processor::{Attention, AttentionSpec};
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetOptions, Upsample2D};
use super::transformer_2d::{Transformer2DModel, TransformerSpec};
use crate::backend::Backend;
use crate::boosters::{Boosters, SkipSite};
use crate::config::{BlockKind, LevelConfig, UNetConfig};
use crate::error::Result;
use crate::nn::{join, LayerCtx};
use crate::weights::WeightSource;

/// The encoder's outputs (the skips), innermost last: held inline up to 24 (published U-Nets
/// make at most 12), so a forward does not allocate the list.
pub type Skips<T> = smallvec::SmallVec<[T; 24]>;

/// One down block's outputs, held inline (a block makes at most a few).
pub type BlockOutputs<T> = smallvec::SmallVec<[T; 4]>;

/// What every block call receives besides its input.
pub struct BlockInputs<'a, B: Backend> {
    /// The backend the call runs on.
    pub be: &'a B,
    /// SiLU of the time embedding, [B, temb] (every resnet applies SiLU first; done once).
    pub temb_act: &'a B::Tensor,
    /// `encoder_hidden_states`, [B, M, D]; present whenever the model has transformers.
    pub context: Option<&'a B::Tensor>,
    /// This call's boosters, for the skip hook.
    pub boosters: &'a Boosters,
    /// This call's masks, for every layer.
    pub lc: LayerCtx<'a>,
    /// How many skips the encoder produced.
    pub num_skips: usize,
    /// `block_out_channels[0]`, for FreeU's channel convention.
    pub base_channels: usize,
}

// Manual impls: a derive would demand `B: Clone`, but only references are copied.
impl<B: Backend> Clone for BlockInputs<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for BlockInputs<'_, B> {}

/// The layer after a resnet. (Built once per layer and never moved on the hot path, so the
/// variants' sizes do not matter.)
#[allow(clippy::large_enum_variant)]
pub enum AttnLayer {
    /// Image-space self-attention (Attn*Block2D, UNetMidBlock2D).
    Spatial(Attention),
    /// Transformer2DModel (CrossAttn*Block2D, UNetMidBlock2DCrossAttn).
    Transformer(Transformer2DModel),
}

impl AttnLayer {
    fn load(
        ws: &mut dyn WeightSource,
        prefix: &str,
        kind: BlockKind,
        head_dim: usize,
        attn_groups: Option<usize>,
        level: &LevelConfig,
        cfg: &UNetConfig,
    ) -> Result<Option<Self>> {
        let channels = level.out_channels;
        Ok(match kind {
            BlockKind::Plain => None,
            BlockKind::Attn => Some(AttnLayer::Spatial(Attention::load(
                ws,
                prefix,
                AttentionSpec {
                    query_dim: channels,
                    context_dim: channels,
                    heads: channels / head_dim,
                    dim_head: head_dim,
                    qkv_bias: true,
                    group_norm: attn_groups.map(|g| (g, cfg.norm_eps)),
                    rescale_output_factor: 1.0,
                },
            )?)),
            BlockKind::CrossAttn => Some(AttnLayer::Transformer(Transformer2DModel::load(
                ws,
                prefix,
                TransformerSpec {
                    in_channels: channels,
                    heads: level.transformer_heads,
                    depth: level.transformer_depth,
                    cross_attention_dim: level.cross_attention_dim,
                    norm_groups: cfg.norm_num_groups,
                    use_linear_projection: cfg.use_linear_projection,
                    only_cross_attention: level.only_cross_attention,
                },
            )?)),
        })
    }

    fn forward<B: Backend>(&self, x: &B::Tensor, inputs: &BlockInputs<B>) -> Result<B::Tensor> {
        match self {
            AttnLayer::Spatial(a) => a.forward_spatial(inputs.be, x, inputs.lc),
            AttnLayer::Transformer(t) => t.forward(
                inputs.be,
                x,
                inputs
                    .context
                    .expect("the model checks encoder_hidden_states before running"),
                inputs.lc,
            ),
        }
    }
}

fn resnet_options(cfg: &UNetConfig, output_scale_factor: f32) -> ResnetOptions {
    ResnetOptions {
        temb_channels: Some(cfg.time_embed_dim),
        groups: cfg.norm_num_groups,
        eps: cfg.norm_eps,
        time_scale_shift: cfg.resnet_time_scale_shift,
        output_scale_factor,
    }
}

/// Resnets, each followed by its attention layer if the block has them.
pub struct Layers {
    /// `resnets`, in order.
    pub resnets: Vec<ResnetBlock2D>,
    /// `attentions`: one per resnet (the mid block: one per resnet after the first), or none in a
    /// block without attention.
    pub attentions: Vec<AttnLayer>,
}

impl Layers {
    fn layer<B: Backend>(
        &self,
        i: usize,
        x: &B::Tensor,
        inputs: &BlockInputs<B>,
    ) -> Result<B::Tensor> {
        let h = self.resnets[i].forward(inputs.be, x, Some(inputs.temb_act), inputs.lc)?;
        match self.attentions.get(i) {
            Some(a) => a.forward(&h, inputs),
            None => Ok(h),
        }
    }
}

/// DownBlock2D, AttnDownBlock2D or CrossAttnDownBlock2D: `layers_per_block` resnets (each with
/// its attention layer in the latter two), then a downsampler on every level but the innermost.
pub struct DownBlock2D {
    /// The resnets and their attention layers.
    pub layers: Layers,
    /// `downsamplers.0`; None on the innermost level.
    pub downsampler: Option<Downsample2D>,
}

impl DownBlock2D {
    /// Takes the block's parameters under `prefix` (`down_blocks.{i}`): its first resnet takes
    /// `in_channels`, the rest the level's width.
    pub fn load(
        ws: &mut dyn WeightSource,
        prefix: &str,
        kind: BlockKind,
        in_channels: usize,
        level: &LevelConfig,
        add_downsample: bool,
        cfg: &UNetConfig,
    ) -> Result<Self> {
        let out = level.out_channels;
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..level.layers {
            let cin = if i == 0 { in_channels } else { out };
            resnets.push(ResnetBlock2D::load(
                ws,
                &join(prefix, &format!("resnets.{i}")),
                cin,
                out,
                resnet_options(cfg, 1.0),
            )?);
            attentions.extend(AttnLayer::load(
                ws,
                &join(prefix, &format!("attentions.{i}")),
                kind,
                level.attn_head_dim,
                Some(cfg.norm_num_groups),
                level,
                cfg,
            )?);
        }
        let downsampler = if add_downsample {
            Some(Downsample2D::load(
                ws,
                &join(prefix, "downsamplers.0"),
                out,
                cfg.downsample_padding,
            )?)
        } else {
            None
        };
        Ok(DownBlock2D {
            layers: Layers {
                resnets,
                attentions,
            },
            downsampler,
        })
    }

    /// The block's outputs in order; each is both a skip for the decoder and the next input.
    pub fn forward<B: Backend>(
        &self,
        x: &B::Tensor,
        inputs: &BlockInputs<B>,
    ) -> Result<BlockOutputs<B::Tensor>> {
        let mut outs = BlockOutputs::new();
        for i in 0..self.layers.resnets.len() {
            let h = self.layers.layer(i, outs.last().unwrap_or(x), inputs)?;
            outs.push(h);
        }
        if let Some(d) = &self.downsampler {
            let last = outs.last().expect("a block has at least one layer");
            let h = d.forward(inputs.be, last, inputs.lc)?;
            outs.push(h);
        }
        Ok(outs)
    }

    /// The module that computes output `j` of `forward`, diffusers-style, under `prefix`.
    pub fn output_name(&self, prefix: &str, j: usize) -> String {
        let n = self.layers.resnets.len();
        if j >= n {
            join(prefix, "downsamplers.0")
        } else if j < self.layers.attentions.len() {
            join(prefix, &format!("attentions.{j}"))
        } else {
            join(prefix, &format!("resnets.{j}"))
        }
    }

    /// How many skips this block pushes.
    pub fn num_outputs(&self) -> usize {
        self.layers.resnets.len() + usize::from(self.downsampler.is_some())
    }
}

/// UNetMidBlock2D or UNetMidBlock2DCrossAttn at the innermost level: a resnet, then per
/// attention layer an attention (spatial or Transformer2DModel) and a resnet.
pub struct UNetMidBlock2D {
    /// The resnets (one more than the attention layers) and the attention layers.
    pub layers: Layers,
}

impl UNetMidBlock2D {
    /// `num_attention_layers` attention+resnet pairs after the first resnet.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        ws: &mut dyn WeightSource,
        prefix: &str,
        kind: BlockKind,
        num_attention_layers: usize,
        add_attention: bool,
        level: &LevelConfig,
        cfg: &UNetConfig,
    ) -> Result<Self> {
        let c = level.out_channels;
        let opts = resnet_options(cfg, cfg.mid_block_scale_factor);
        let mut resnets = vec![ResnetBlock2D::load(
            ws,
            &join(prefix, "resnets.0"),
            c,
            c,
            opts,
        )?];
        let mut attentions = Vec::new();
        for i in 0..num_attention_layers {
            if add_attention {
                let mut layer = AttnLayer::load(
                    ws,
                    &join(prefix, &format!("attentions.{i}")),
                    kind,
                    level.attn_head_dim,
                    cfg.mid_attn_groups,
                    level,
                    cfg,
                )?;
                if let Some(AttnLayer::Spatial(a)) = &mut layer {
                    a.rescale_output_factor = cfg.mid_block_scale_factor;
                }
                attentions.extend(layer);
            }
            resnets.push(ResnetBlock2D::load(
                ws,
                &join(prefix, &format!("resnets.{}", i + 1)),
                c,
                c,
                opts,
            )?);
        }
        Ok(UNetMidBlock2D {
            layers: Layers {
                resnets,
                attentions,
            },
        })
    }

    /// `x`: [B, C, H, W] → [B, C, H, W].
    pub fn forward<B: Backend>(&self, x: &B::Tensor, inputs: &BlockInputs<B>) -> Result<B::Tensor> {
        let l = &self.layers;
        let be = inputs.be;
        let mut h = l.resnets[0].forward(be, x, Some(inputs.temb_act), inputs.lc)?;
        for i in 1..l.resnets.len() {
            if let Some(a) = l.attentions.get(i - 1) {
                h = a.forward(&h, inputs)?;
            }
            h = l.resnets[i].forward(be, &h, Some(inputs.temb_act), inputs.lc)?;
        }
        Ok(h)
    }
}

/// UpBlock2D, AttnUpBlock2D or CrossAttnUpBlock2D: `layers_per_block + 1` resnets, each taking
/// `[h, skip]` (with its attention layer in the latter two), then an upsampler on every level but
/// the outermost.
pub struct UpBlock2D {
    /// The resnets and their attention layers.
    pub layers: Layers,
    /// `upsamplers.0`; None on the outermost level.
    pub upsampler: Option<Upsample2D>,
}

impl UpBlock2D {
    /// Takes the block's parameters under `prefix` (`up_blocks.{i}`): resnet i takes the running
    /// feature (`prev_output_channels` wide for the first, the level's width after) joined with its
    /// skip (the level's width, `in_channels` for the last).
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        ws: &mut dyn WeightSource,
        prefix: &str,
        kind: BlockKind,
        in_channels: usize,
        prev_output_channels: usize,
        level: &LevelConfig,
        attn_head_dim: usize,
        add_upsample: bool,
        cfg: &UNetConfig,
    ) -> Result<Self> {
        let out = level.out_channels;
        let num_layers = level.layers + 1;
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..num_layers {
            let skip = if i == num_layers - 1 {
                in_channels
            } else {
                out
            };
            let cin = if i == 0 { prev_output_channels } else { out };
            resnets.push(ResnetBlock2D::load(
                ws,
                &join(prefix, &format!("resnets.{i}")),
                cin + skip,
                out,
                resnet_options(cfg, 1.0),
            )?);
            attentions.extend(AttnLayer::load(
                ws,
                &join(prefix, &format!("attentions.{i}")),
                kind,
                attn_head_dim,
                Some(cfg.norm_num_groups),
                level,
                cfg,
            )?);
        }
        let upsampler = if add_upsample {
            Some(Upsample2D::load(ws, &join(prefix, "upsamplers.0"), out)?)
        } else {
            None
        };
        Ok(UpBlock2D {
            layers: Layers {
                resnets,
                attentions,
            },
            upsampler,
        })
    }

    /// Consumes one skip per resnet from the top of `skips` (innermost first); the boosters'
    /// skip hook sees each pair just before it is joined.
    pub fn forward<B: Backend>(
        &self,
        index: usize,
        x: B::Tensor,
        skips: &mut Skips<B::Tensor>,
        inputs: &BlockInputs<B>,
        upsample_size: Option<(usize, usize)>,
    ) -> Result<B::Tensor> {
        let mut h = x;
        for i in 0..self.layers.resnets.len() {
            let site = SkipSite {
                up_block: index,
                skip_index: skips.len() - 1,
                num_skips: inputs.num_skips,
                base_channels: inputs.base_channels,
            };
            let skip = skips
                .pop()
                .expect("the U-Net pushes one skip per up-block resnet");
            let joined = inputs.boosters.join_skip(inputs.be, &site, h, skip)?;
            h = self.layers.layer(i, &joined, inputs)?;
        }
        match &self.upsampler {
            Some(u) => u.forward(inputs.be, &h, upsample_size, inputs.lc),
            None => Ok(h),
        }
    }

    /// How many skips this block pops: one per resnet.
    pub fn num_skips(&self) -> usize {
        self.layers.resnets.len()
    }
}
