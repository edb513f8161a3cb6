//! `BasicTransformerBlock` (LayerNorm'd self-attention, cross-attention and GEGLU feed-forward,
//! each with a residual) and `FeedForward`.

use super::attention_processor::{Attention, AttentionSpec};
use crate::backend::{Backend, Epilogue};
use crate::error::Result;
use crate::nn::{join, LayerCtx, LayerNorm, Linear};
use crate::weights::WeightSource;

/// GEGLU projection to 2·4·dim, gate, then back to dim (`ff.net.0.proj`, `ff.net.2`).
pub struct FeedForward {
    /// `ff.net.0.proj`: GEGLU's projection, `dim` → 2·4·`dim` (value half, then gate half).
    pub proj_in: Linear,
    /// `ff.net.2`: 4·`dim` → `dim`.
    pub proj_out: Linear,
}

impl FeedForward {
    /// Takes `{prefix}.net.0.proj` and `{prefix}.net.2` for width `dim`.
    pub fn load(ws: &mut dyn WeightSource, prefix: &str, dim: usize) -> Result<Self> {
        let inner = 4 * dim;
        Ok(FeedForward {
            proj_in: Linear::load(ws, &join(prefix, "net.0.proj"), dim, 2 * inner, true)?,
            proj_out: Linear::load(ws, &join(prefix, "net.2"), inner, dim, true)?,
        })
    }

    /// `x`: [B, N, dim] → [B, N, dim]; `epi` is fused into `proj_out` (the block's residual).
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        x: &B::Tensor,
        lc: LayerCtx,
        epi: Epilogue<B::Tensor>,
    ) -> Result<B::Tensor> {
        let h = be.linear_geglu(self.proj_in.params(lc), x)?;
        be.linear(self.proj_out.params(lc), &h, epi)
    }
}

/// diffusers' `BasicTransformerBlock` (pre-LayerNorm, GEGLU feed-forward): self-attention,
/// cross-attention to `encoder_hidden_states`, feed-forward, each added to its input.
pub struct BasicTransformerBlock {
    /// `norm1`: LayerNorm before `attn1`, eps 1e-5.
    pub norm1: LayerNorm,
    /// `attn1`: self-attention (or cross-attention with `only_cross_attention`).
    pub attn1: Attention,
    /// `norm2`: LayerNorm before `attn2`, eps 1e-5.
    pub norm2: LayerNorm,
    /// `attn2`: cross-attention to `encoder_hidden_states`.
    pub attn2: Attention,
    /// `norm3`: LayerNorm before `ff`, eps 1e-5.
    pub norm3: LayerNorm,
    /// `ff`: the GEGLU feed-forward.
    pub ff: FeedForward,
    /// `only_cross_attention`: attn1 also attends to the encoder states.
    pub only_cross_attention: bool,
}

impl BasicTransformerBlock {
    /// Takes `norm1`, `attn1`, `norm2`, `attn2`, `norm3` and `ff` under `prefix`, for tokens of
    /// width `dim` split into `heads` heads of `dim_head`.
    pub fn load(
        ws: &mut dyn WeightSource,
        prefix: &str,
        dim: usize,
        heads: usize,
        dim_head: usize,
        cross_attention_dim: usize,
        only_cross_attention: bool,
    ) -> Result<Self> {
        let p = |n: &str| join(prefix, n);
        let spec = |context_dim| AttentionSpec {
            query_dim: dim,
            context_dim,
            heads,
            dim_head,
            qkv_bias: false,
            group_norm: None,
            rescale_output_factor: 1.0,
        };
        let attn1_ctx = if only_cross_attention {
            cross_attention_dim
        } else {
            dim
        };
        Ok(BasicTransformerBlock {
            norm1: LayerNorm::load(ws, &p("norm1"), dim, 1e-5)?,
            attn1: Attention::load(ws, &p("attn1"), spec(attn1_ctx))?,
            norm2: LayerNorm::load(ws, &p("norm2"), dim, 1e-5)?,
            attn2: Attention::load(ws, &p("attn2"), spec(cross_attention_dim))?,
            norm3: LayerNorm::load(ws, &p("norm3"), dim, 1e-5)?,
            ff: FeedForward::load(ws, &p("ff"), dim)?,
            only_cross_attention,
        })
    }

    /// `x`: [B, N, dim]; `context`: [B, M, cross_attention_dim].
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        x: &B::Tensor,
        context: &B::Tensor,
        lc: LayerCtx,
    ) -> Result<B::Tensor> {
        let ctx1 = self.only_cross_attention.then_some(context);
        let n1 = be.layer_norm(self.norm1.params(), x)?;
        let h = self
            .attn1
            .forward(be, &n1, ctx1, lc, Epilogue::residual(x, 1.0))?;
        let n2 = be.layer_norm(self.norm2.params(), &h)?;
        let h2 = self
            .attn2
            .forward(be, &n2, Some(context), lc, Epilogue::residual(&h, 1.0))?;
        let n3 = be.layer_norm(self.norm3.params(), &h2)?;
        self.ff.forward(be, &n3, lc, Epilogue::residual(&h2, 1.0))
    }
}
