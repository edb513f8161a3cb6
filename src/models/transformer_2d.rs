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

pub struct Transformer2DModel {
    pub norm: GroupNorm,
    proj_in: Proj,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    proj_out: Proj,
}

/// Shapes and flags of one `Transformer2DModel`.
pub struct TransformerSpec {
    pub in_channels: usize,
    pub heads: usize,
    pub depth: usize,
    pub cross_attention_dim: usize,
    pub norm_groups: usize,
    pub use_linear_projection: bool,
    pub only_cross_attention: bool,
}

impl Transformer2DModel {
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
        let normed = be.group_norm(&self.norm, x, None, false)?;
        let mut seq = match &self.proj_in {
            Proj::Conv(c) => be.to_tokens(&be.conv2d(c, &normed, lc, Epilogue::default())?)?,
            Proj::Linear(l) => be.linear(l, &be.to_tokens(&normed)?, lc, Epilogue::default())?,
        };
        for block in &self.transformer_blocks {
            seq = block.forward(be, &seq, context, lc)?;
        }
        match &self.proj_out {
            Proj::Conv(c) => {
                be.conv2d(c, &be.to_image(&seq, h, w)?, lc, Epilogue::residual(x, 1.0))
            }
            Proj::Linear(l) => {
                let residual = be.to_tokens(x)?;
                let out = be.linear(l, &seq, lc, Epilogue::residual(&residual, 1.0))?;
                be.to_image(&out, h, w)
            }
        }
    }
}
