//! `Transformer2DModel` for continuous image inputs: GroupNorm (eps 1e-6), projection in (1×1
//! conv, or linear with `use_linear_projection`), transformer blocks over the H·W tokens,
//! projection out, residual.

use super::attention::BasicTransformerBlock;
use crate::backend::{Backend, Epilogue};
use crate::error::Result;
use crate::nn::{join, Conv2d, GroupNorm, LayerCtx, Linear};
use crate::weights::WeightSource;

enum Proj {
    Conv(Conv2d),
    Linear(Linear),
}

/// diffusers' `Transformer2DModel` on an image: norm, `proj_in`, `transformer_blocks` over
/// the H·W tokens, `proj_out`, plus the input.
pub struct Transformer2DModel {
    /// `norm`: GroupNorm of the input, eps 1e-6.
    pub norm: GroupNorm,
    proj_in: Proj,
    /// `transformer_blocks`, in order (`transformer_layers_per_block` of them).
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    proj_out: Proj,
}

/// Shapes and flags of one `Transformer2DModel`.
pub struct TransformerSpec {
    /// The image's channels (also the transformer width: heads × head dim).
    pub in_channels: usize,
    /// Attention heads; the head width is `in_channels / heads`.
    pub heads: usize,
    /// How many transformer blocks (`transformer_layers_per_block`).
    pub depth: usize,
    /// Width of `encoder_hidden_states`.
    pub cross_attention_dim: usize,
    /// Groups of `norm` (`norm_num_groups`).
    pub norm_groups: usize,
    /// `use_linear_projection`: `proj_in`/`proj_out` are linear layers, not 1×1 convolutions.
    pub use_linear_projection: bool,
    /// `only_cross_attention`: every block's `attn1` attends to `encoder_hidden_states`.
    pub only_cross_attention: bool,
}

impl Transformer2DModel {
    /// Takes `norm`, `proj_in`, `transformer_blocks.{d}` and `proj_out` under `prefix`.
    pub fn load(ws: &mut dyn WeightSource, prefix: &str, s: TransformerSpec) -> Result<Self> {
        let dim_head = s.in_channels / s.heads;
        let inner = s.heads * dim_head;
        let p = |n: &str| join(prefix, n);
        let proj = |ws: &mut dyn WeightSource, name: &str, i, o| -> Result<Proj> {
            Ok(if s.use_linear_projection {
                Proj::Linear(Linear::load(ws, &p(name), i, o, true)?)
            } else {
                Proj::Conv(Conv2d::load(ws, &p(name), i, o, 1, 1, 0, true)?)
            })
        };
        let norm = GroupNorm::load(ws, &p("norm"), s.norm_groups, s.in_channels, 1e-6)?;
        let proj_in = proj(ws, "proj_in", s.in_channels, inner)?;
        let transformer_blocks = (0..s.depth)
            .map(|d| {
                BasicTransformerBlock::load(
                    ws,
                    &p(&format!("transformer_blocks.{d}")),
                    inner,
                    s.heads,
                    dim_head,
                    s.cross_attention_dim,
                    s.only_cross_attention,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let proj_out = proj(ws, "proj_out", inner, s.in_channels)?;
        Ok(Transformer2DModel {
            norm,
            proj_in,
            transformer_blocks,
            proj_out,
        })
    }

    /// `x`: [B, C, H, W]; `context`: [B, M, cross_attention_dim].
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        x: &B::Tensor,
        context: &B::Tensor,
        lc: LayerCtx,
    ) -> Result<B::Tensor> {
        let s = be.shape(x);
        let (h, w) = (s[2], s[3]);
        let normed = be.group_norm(self.norm.params(), x, None, false)?;
        let mut seq = match &self.proj_in {
            Proj::Conv(c) => {
                be.to_tokens(&be.conv2d(c.params(lc), &normed, Epilogue::default())?)?
            }
            Proj::Linear(l) => {
                be.linear(l.params(lc), &be.to_tokens(&normed)?, Epilogue::default())?
            }
        };
        for block in &self.transformer_blocks {
            seq = block.forward(be, &seq, context, lc)?;
        }
        match &self.proj_out {
            Proj::Conv(c) => be.conv2d(
                c.params(lc),
                &be.to_image(&seq, h, w)?,
                Epilogue::residual(x, 1.0),
            ),
            Proj::Linear(l) => {
                let residual = be.to_tokens(x)?;
                let out = be.linear(l.params(lc), &seq, Epilogue::residual(&residual, 1.0))?;
                be.to_image(&out, h, w)
            }
        }
    }
}
