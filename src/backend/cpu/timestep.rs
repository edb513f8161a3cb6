//! diffusers' `get_timestep_embedding` on the host: the sinusoidal projection of (possibly
//! fractional) timesteps in diffusers' f32 arithmetic. Tested against diffusers through every U-Net
//! golden (tests/golden.rs) and, as the CUDA kernel's reference, in tests/gpu_kernels.rs.

use crate::backend::TimestepParams;
use crate::error::Result;
use crate::tensor::{numel_of, try_zeroed_vec, Tensor};

/// `timesteps`: N values → [N, dim]: `freq_i = exp(-ln(10000) * i / (half - shift))`,
/// `[sin(t·freq), cos(t·freq)]`, halves swapped when `flip_sin_to_cos`, a zero column appended
/// for odd `dim`.
pub fn timestep_embedding(p: &TimestepParams, timesteps: &[f32]) -> Result<Tensor> {
    let half = p.dim / 2;
    let neg_log = -(10000f64.ln() as f32);
    let denom = half as f32 - p.downscale_freq_shift;
    let freq = |i: usize| ((neg_log * i as f32) / denom).exp();
    let n = numel_of(&[timesteps.len(), p.dim], "timestep embedding")?;
    let mut out = try_zeroed_vec(n, "timestep embedding")?;
    if p.dim == 0 {
        return Ok(Tensor::from_parts([timesteps.len(), 0], out));
    }
    for (row, &t) in out.chunks_mut(p.dim).zip(timesteps) {
        let (first, second) = row[..2 * half].split_at_mut(half);
        let (sin_half, cos_half) = if p.flip_sin_to_cos {
            (second, first)
        } else {
            (first, second)
        };
        for (i, (s, c)) in sin_half.iter_mut().zip(cos_half.iter_mut()).enumerate() {
            let f = freq(i);
            // The argument is rounded to f32 as torch does; sin/cos of it are taken in f64
            // and rounded once, which is within an ulp of torch's f32 kernels.
            let arg = (t * f) as f64;
            *s = arg.sin() as f32;
            *c = arg.cos() as f32;
        }
    }
    Ok(Tensor::from_parts([timesteps.len(), p.dim], out))
}
