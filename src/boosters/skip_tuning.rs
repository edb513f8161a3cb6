//! Skip-Tuning (Ma et al. 2024): every encoder→decoder skip `j` is scaled by `rho[j]`, varying
//! linearly from the outermost skip (`conv_in`'s output, j = 0) to the innermost (j = n−1).

use crate::error::{Error, Result};

/// Skip-Tuning's factors, one per encoder skip.
#[derive(Clone, Debug, PartialEq)]
pub enum SkipScales {
    /// `rho[j] = top + (bottom − top)·j/(n−1)`.
    Linear {
        /// `rho[0]`: the outermost skip's factor (`conv_in`'s output).
        top: f32,
        /// `rho[n−1]`: the innermost skip's factor.
        bottom: f32,
    },
    /// One factor per skip, in encoder order.
    Explicit(Vec<f32>),
}

impl SkipScales {
    /// The factor of skip `j` of `n` (encoder order).
    pub fn rho(&self, j: usize, n: usize) -> f32 {
        match self {
            SkipScales::Linear { top, bottom } if n > 1 => {
                top + (bottom - top) * j as f32 / (n - 1) as f32
            }
            SkipScales::Linear { top, .. } => *top,
            SkipScales::Explicit(v) => v[j],
        }
    }

    /// Checks the factors against a model with `num_skips` skips: finite, within ±`MAX_FACTOR`,
    /// and one per skip when explicit.
    pub fn validate(&self, num_skips: usize) -> Result<()> {
        let values: Vec<f32> = match self {
            SkipScales::Linear { top, bottom } => vec![*top, *bottom],
            SkipScales::Explicit(v) => {
                if v.len() != num_skips {
                    return Err(Error::booster(
                        "skip_scales",
                        format!(
                            "skip scales: {} values given; this model has {num_skips} skips",
                            v.len()
                        ),
                    ));
                }
                v.clone()
            }
        };
        for (j, &v) in values.iter().enumerate() {
            let what = match self {
                SkipScales::Linear { .. } => {
                    ["Skip-Tuning rho_top", "Skip-Tuning rho_bottom"][j].into()
                }
                SkipScales::Explicit(_) => format!("skip scale {j}"),
            };
            crate::boosters::check_factor(&what, v)?;
        }
        Ok(())
    }
}
