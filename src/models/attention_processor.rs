//! diffusers' `Attention` module with the default processor: projections, multi-head scaled
//! dot-product attention, output projection; for image inputs also the GroupNorm, residual and
//! rescale of the old `AttentionBlock` that `AttnDownBlock2D` & co. use.

use crate::backend::{Backend, Epilogue};
use crate::error::Result;
use crate::nn::{join, GroupNorm, LayerCtx, Linear};
use crate::weights::WeightSource;

/// diffusers' `Attention` with the default processor: per head `softmax(q·kᵀ/√dim_head)·v`
/// over the projections, then `to_out`.
pub struct Attention {
    /// `group_norm`: GroupNorm of image inputs (spatial attention); None in transformers.
    pub group_norm: Option<GroupNorm>,
    /// `to_q`: `query_dim` → `heads · dim_head`.
    pub to_q: Linear,
    /// `to_k`: `context_dim` → `heads · dim_head`.
    pub to_k: Linear,
    /// `to_v`: `context_dim` → `heads · dim_head`.
    pub to_v: Linear,
    /// `to_out.0`: `heads · dim_head` → `query_dim`, with bias.
    pub to_out: Linear,
    /// Attention heads; the head width is `to_q`'s output width over it.
    pub heads: usize,
    /// `rescale_output_factor`: `forward_spatial` divides output plus residual by it.
    pub rescale_output_factor: f32,
}

/// Shapes and flags of one `Attention`.
pub struct AttentionSpec {
    /// Width of the queries' source, and of the output.
    pub query_dim: usize,
    /// Width of the keys' source: `query_dim` for self-attention.
    pub context_dim: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of each head.
    pub dim_head: usize,
    /// Whether `to_q`, `to_k` and `to_v` have biases (spatial attention: yes; transformers: no).
    pub qkv_bias: bool,
    /// `(groups, eps)` of the input GroupNorm, for image-space attention blocks.
    pub group_norm: Option<(usize, f32)>,
    /// See `Attention::rescale_output_factor` (1 but in UNetMidBlock2D).
    pub rescale_output_factor: f32,
}

impl Attention {
    /// Takes `to_q`, `to_k`, `to_v`, `to_out.0` and, with `s.group_norm`, `group_norm` under
    /// `prefix`.
    pub fn load(ws: &mut dyn WeightSource, prefix: &str, s: AttentionSpec) -> Result<Self> {
        let inner = s.heads * s.dim_head;
        let p = |n: &str| join(prefix, n);
        Ok(Attention {
            group_norm: match s.group_norm {
                Some((g, eps)) => Some(GroupNorm::load(ws, &p("group_norm"), g, s.query_dim, eps)?),
                None => None,
            },
            to_q: Linear::load(ws, &p("to_q"), s.query_dim, inner, s.qkv_bias)?,
            to_k: Linear::load(ws, &p("to_k"), s.context_dim, inner, s.qkv_bias)?,
            to_v: Linear::load(ws, &p("to_v"), s.context_dim, inner, s.qkv_bias)?,
            to_out: Linear::load(ws, &p("to_out.0"), inner, s.query_dim, true)?,
            heads: s.heads,
            rescale_output_factor: s.rescale_output_factor,
        })
    }

    /// Width the keys are projected from (the context's last dimension).
    pub fn context_dim(&self) -> usize {
        self.to_k.in_features()
    }

    /// `x`: [B, N, query_dim]; `context`: [B, M, context_dim], or None for self-attention;
    /// `epi` is fused into the output projection.
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        x: &B::Tensor,
        context: Option<&B::Tensor>,
        lc: LayerCtx,
        epi: Epilogue<B::Tensor>,
    ) -> Result<B::Tensor> {
        let ctx = context.unwrap_or(x);
        let q = be.linear(self.to_q.params(lc), x, Epilogue::default())?;
        let k = be.linear(self.to_k.params(lc), ctx, Epilogue::default())?;
        let v = be.linear(self.to_v.params(lc), ctx, Epilogue::default())?;
        let dim_head = self.to_q.weight.shape()[0] / self.heads;
        let o = be.attention(&q, &k, &v, self.heads, 1.0 / (dim_head as f32).sqrt())?;
        be.linear(self.to_out.params(lc), &o, epi)
    }

    /// Image-space self-attention with residual: `x`: [B, C, H, W].
    pub fn forward_spatial<B: Backend>(
        &self,
        be: &B,
        x: &B::Tensor,
        lc: LayerCtx,
    ) -> Result<B::Tensor> {
        let s = be.shape(x);
        let (h, w) = (s[2], s[3]);
        let seq = match &self.group_norm {
            Some(gn) => be.to_tokens(&be.group_norm(gn.params(), x, None, false)?)?,
            None => be.to_tokens(x)?,
        };
        let residual = be.to_tokens(x)?;
        let epi = Epilogue::residual(&residual, 1.0 / self.rescale_output_factor);
        let out = self.forward(be, &seq, None, lc, epi)?;
        be.to_image(&out, h, w)
    }
}
