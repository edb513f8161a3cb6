//! Timestep embeddings: diffusers' `Timesteps` (its settings; the op, `get_timestep_embedding`,
//! is the backends') and `TimestepEmbedding`.

use crate::backend::{Backend, Epilogue};
use crate::error::Result;
use crate::nn::{join, LayerCtx, Linear};
use crate::weights::WeightSource;

/// diffusers' `Timesteps` module: the sinusoidal projection's settings (the backend op
/// [`Backend::timestep_embedding`] computes it; [`crate::backend::cpu::timestep_embedding`] on the
/// host).
pub type Timesteps = crate::backend::TimestepParams;

/// `linear_2(silu(linear_1(x)))`.
pub struct TimestepEmbedding {
    /// `linear_1`: `in_channels` → `time_embed_dim`.
    pub linear_1: Linear,
    /// `linear_2`: `time_embed_dim` → `time_embed_dim`.
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    /// Takes `{prefix}.linear_1` and `{prefix}.linear_2`.
    pub fn load(
        ws: &mut dyn WeightSource,
        prefix: &str,
        in_channels: usize,
        time_embed_dim: usize,
    ) -> Result<Self> {
        Ok(TimestepEmbedding {
            linear_1: Linear::load(
                ws,
                &join(prefix, "linear_1"),
                in_channels,
                time_embed_dim,
                true,
            )?,
            linear_2: Linear::load(
                ws,
                &join(prefix, "linear_2"),
                time_embed_dim,
                time_embed_dim,
                true,
            )?,
        })
    }

    /// `x`: [B, in_channels] → [B, time_embed_dim].
    pub fn forward<B: Backend>(&self, be: &B, x: &B::Tensor, lc: LayerCtx) -> Result<B::Tensor> {
        let h = be.linear(self.linear_1.params(lc), x, Epilogue::default())?;
        be.linear(self.linear_2.params(lc), &be.silu(&h)?, Epilogue::default())
    }
}
