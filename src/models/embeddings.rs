//! Timestep embeddings: diffusers' `get_timestep_embedding`, `Timesteps` and `TimestepEmbedding`.

use crate::backend::{Backend, Epilogue};
use crate::error::Result;
use crate::nn::{join, LayerCtx, Linear};
use crate::tensor::Tensor;
use crate::weights::WeightSource;

/// Sinusoidal projection of (possibly fractional) timesteps, in diffusers' f32 arithmetic:
/// `freq_i = exp(-ln(10000) * i / (half - shift))`, `[sin(t·freq), cos(t·freq)]`, halves swapped
/// when `flip_sin_to_cos`, a zero column appended for odd `dim`.
pub struct Timesteps {
    /// Width of the embedding (`block_out_channels[0]` for `time_proj`).
    pub dim: usize,
    /// `flip_sin_to_cos`: the cosines come first.
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift` (the config's `freq_shift`).
    pub downscale_freq_shift: f32,
}

impl Timesteps {
    /// `timesteps`: N values → [N, dim].
    pub fn forward(&self, timesteps: &[f32]) -> Tensor {
        let half = self.dim / 2;
        let neg_log = -(10000f64.ln() as f32);
        let denom = half as f32 - self.downscale_freq_shift;
        let freqs: Vec<f32> = (0..half)
            .map(|i| ((neg_log * i as f32) / denom).exp())
            .collect();
        let mut out = vec![0.0f32; timesteps.len() * self.dim];
        for (row, &t) in out.chunks_mut(self.dim).zip(timesteps) {
            let (first, second) = row[..2 * half].split_at_mut(half);
            let (sin_half, cos_half) = if self.flip_sin_to_cos {
                (second, first)
            } else {
                (first, second)
            };
            for ((s, c), &f) in sin_half.iter_mut().zip(cos_half.iter_mut()).zip(&freqs) {
                // The argument is rounded to f32 as torch does; sin/cos of it are taken in f64
                // and rounded once, which is within an ulp of torch's f32 kernels.
                let arg = (t * f) as f64;
                *s = arg.sin() as f32;
                *c = arg.cos() as f32;
            }
        }
        Tensor::from_parts(vec![timesteps.len(), self.dim], out)
    }
}

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
        let h = be.linear(&self.linear_1, x, lc, Epilogue::default())?;
        be.linear(&self.linear_2, &be.silu(&h)?, lc, Epilogue::default())
    }
}
