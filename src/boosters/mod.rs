//! The training-free boosters, applied through one mechanism each: the decoder's skip hook
//! (Skip-Tuning, FreeU), and (in later modules) the masked GEMM path and weight merging.
//!
//! The skip hook: every resnet of an up block pops one skip from the encoder stack and
//! concatenates `[h, skip]`; just before that, in this order, Skip-Tuning scales the skip, then
//! FreeU scales `h`'s backbone channels and low-pass filters the skip.

pub mod deme;
pub mod freeu;
pub mod mask_generator;
pub mod masks;
pub mod skip_tuning;

pub use freeu::{FreeU, FreeUBlocks};
pub use masks::{MaskSet, WeightMask};
pub use skip_tuning::SkipScales;

use std::sync::Arc;

use crate::backend::Backend;
use crate::error::Result;

/// Per-call booster settings; the default does nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Boosters {
    /// Skip-Tuning's scale of each encoder skip.
    pub skip_scales: Option<SkipScales>,
    /// FreeU's backbone and skip factors.
    pub freeu: Option<FreeU>,
    /// MaskUNet masks, by weight name (shared, per sample, or per step and sample).
    pub masks: Option<Arc<MaskSet>>,
    /// The sampler step that selects per-step masks (and seeds the mask generator's noise).
    pub mask_step: usize,
    /// MaskUNet's hyper-network, computing masks inside each call (instead of `masks`).
    pub mask_generator: Option<Arc<mask_generator::MaskGenerator>>,
}

/// The largest magnitude a booster factor (FreeU's b and s, a skip scale) may have: the published
/// values lie within 0.2–1.6, and a factor much larger overflows the features it scales.
pub const MAX_FACTOR: f32 = 1e4;

/// Refuses a booster factor that is not finite or not within ±`MAX_FACTOR`, naming it.
pub fn check_factor(what: &str, v: f32) -> Result<()> {
    if !v.is_finite() {
        return Err(crate::Error::booster(
            "boosters",
            format!("{what} = {v}: booster factors must be finite numbers"),
        ));
    }
    if v.abs() > MAX_FACTOR {
        return Err(crate::Error::booster(
            "boosters",
            format!(
            "{what} = {v} is outside ±{MAX_FACTOR}: a factor that large overflows the features \
             it scales (published values lie within 0.2–1.6)"
        ),
        ));
    }
    Ok(())
}

/// Where in the decoder a skip is being joined.
#[derive(Clone, Copy, Debug)]
pub struct SkipSite {
    /// Index of the up block (`up_blocks.{i}`), execution order.
    pub up_block: usize,
    /// The skip's index in encoder order: 0 is `conv_in`'s output.
    pub skip_index: usize,
    /// How many skips the encoder produced.
    pub num_skips: usize,
    /// `block_out_channels[0]`, for FreeU's channel convention.
    pub base_channels: usize,
}

impl Boosters {
    /// Checks the settings against a model with `num_skips` skips and a call with batch
    /// `batch` before any work is done.
    pub fn validate(&self, num_skips: usize, batch: usize) -> Result<()> {
        if let Some(m) = &self.masks {
            if self.mask_generator.is_some() {
                return Err(crate::Error::booster(
                    "boosters",
                    "masks from a file and a mask generator are exclusive; give one",
                ));
            }
            m.check_call(batch, self.mask_step)?;
        }
        if let Some(s) = &self.skip_scales {
            s.validate(num_skips)?;
        }
        if let Some(f) = &self.freeu {
            f.validate()?;
        }
        Ok(())
    }

    /// The skip hook: joins `h` and `skip` along channels after, in this order, Skip-Tuning's
    /// scale of the skip and FreeU's backbone scaling of `h` and low-pass filter of the skip.
    /// The filter is linear, so the skip scale rides along in the concatenation kernel.
    pub fn join_skip<B: Backend>(
        &self,
        be: &B,
        site: &SkipSite,
        mut h: B::Tensor,
        skip: B::Tensor,
    ) -> Result<B::Tensor> {
        let rho = match &self.skip_scales {
            Some(scales) => scales.rho(site.skip_index, site.num_skips),
            None => 1.0,
        };
        let selected = self
            .freeu
            .as_ref()
            .and_then(|f| Some((f, f.select(site, be.shape(&h)[1])?)));
        match selected {
            Some((freeu, (b, s))) => {
                be.freeu_backbone(&mut h, b, freeu.v2)?;
                let filtered = be.fourier_filter(&skip, freeu.threshold, s, freeu.filter)?;
                be.cat_channels(&h, &filtered, rho)
            }
            None => be.cat_channels(&h, &skip, rho),
        }
    }
}
