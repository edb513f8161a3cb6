//! FreeU (Si et al. 2023): in selected decoder resnets, amplify the first half of the backbone
//! channels of `h` by `b` (v1: uniformly; v2: modulated by the normalised channel mean) and
//! low-pass filter the skip by scaling its lowest frequencies by `s`.

use crate::backend::cpu::fourier::FilterForm;
use crate::boosters::SkipSite;
use crate::error::{Error, Result};

/// Which decoder resnets FreeU acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeUBlocks {
    /// diffusers: all of `up_blocks[0]` with (b1, s1), all of `up_blocks[1]` with (b2, s2).
    Stage,
    /// Official repo / ComfyUI: by the channels of `h`: 4·C0 → (b1, s1), 2·C0 → (b2, s2).
    Channels,
}

/// The largest FreeU threshold: a window wider than any image covers every frequency.
pub const MAX_THRESHOLD: usize = 1 << 16;

/// FreeU's settings: (b1, s1) for the resnets of the innermost decoder stage, (b2, s2) for the
/// next (which ones: `blocks`). The published values are the `preset`s; `validate` bounds them.
///
/// ```
/// use freelunch::boosters::{FreeU, FreeUBlocks};
///
/// let mut f = FreeU::preset("sdxl")?;
/// assert_eq!((f.b1, f.b2, f.s1, f.s2), (1.3, 1.4, 0.9, 0.2));
/// f.blocks = FreeUBlocks::Channels; // as the official repo and ComfyUI select resnets
/// f.validate()?;
/// # Ok::<(), freelunch::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct FreeU {
    /// Backbone factor of the first stage (`up_blocks[0]`, or `h` of 4·C0 channels).
    pub b1: f32,
    /// Backbone factor of the second stage (`up_blocks[1]`, or `h` of 2·C0 channels).
    pub b2: f32,
    /// Skip factor of the first stage: its skips' low frequencies are scaled by it.
    pub s1: f32,
    /// Skip factor of the second stage.
    pub s2: f32,
    /// Which decoder resnets count as the two stages.
    pub blocks: FreeUBlocks,
    /// FreeU v2: the backbone factor is `(b − 1)·m̂ + 1` per pixel, m̂ the mean over channels
    /// min-max normalised over the sample's pixels (`backend::cpu::freeu`).
    pub v2: bool,
    /// Half-width of the low-frequency window of the skip filter, in frequencies (diffusers: 1).
    pub threshold: usize,
    /// How the skip filter is computed (FFT or the exact direct form; same result).
    pub filter: FilterForm,
}

impl FreeU {
    /// (b1, b2, s1, s2) with diffusers' defaults for the rest: stage convention, v1, threshold 1,
    /// the direct filter.
    pub fn new(b1: f32, b2: f32, s1: f32, s2: f32) -> Self {
        FreeU {
            b1,
            b2,
            s1,
            s2,
            blocks: FreeUBlocks::Stage,
            v2: false,
            threshold: 1,
            filter: FilterForm::Direct,
        }
    }

    /// The published presets (b1, b2, s1, s2): sd14, sd15, sd21, sdxl.
    pub fn preset(name: &str) -> Result<Self> {
        let (b1, b2, s1, s2) = match name {
            "sd14" => (1.3, 1.4, 0.9, 0.2),
            "sd15" => (1.5, 1.6, 0.9, 0.2),
            "sd21" => (1.4, 1.6, 0.9, 0.2),
            "sdxl" => (1.3, 1.4, 0.9, 0.2),
            other => {
                return Err(Error::booster(
                    "freeu",
                    format!("unknown FreeU preset `{other}` (known: sd14, sd15, sd21, sdxl)"),
                ))
            }
        };
        Ok(FreeU::new(b1, b2, s1, s2))
    }

    /// Refuses factors that are not finite or not within ±`MAX_FACTOR` (they would overflow the
    /// features they scale), and a threshold outside 1..=`MAX_THRESHOLD`.
    pub fn validate(&self) -> Result<()> {
        let named = [
            ("b1", self.b1),
            ("b2", self.b2),
            ("s1", self.s1),
            ("s2", self.s2),
        ];
        for (name, v) in named {
            crate::boosters::check_factor(&format!("FreeU {name}"), v)?;
        }
        if self.threshold == 0 || self.threshold > MAX_THRESHOLD {
            return Err(Error::booster(
                "freeu",
                format!(
                    "FreeU threshold {} is outside 1..={MAX_THRESHOLD} (it is the half-width of \
                 the low-frequency window, in frequencies)",
                    self.threshold
                ),
            ));
        }
        Ok(())
    }

    /// (b, s) for the resnet at `site` whose incoming `h` has `channels` channels.
    pub(crate) fn select(&self, site: &SkipSite, channels: usize) -> Option<(f32, f32)> {
        match self.blocks {
            FreeUBlocks::Stage => match site.up_block {
                0 => Some((self.b1, self.s1)),
                1 => Some((self.b2, self.s2)),
                _ => None,
            },
            FreeUBlocks::Channels => {
                if channels == 4 * site.base_channels {
                    Some((self.b1, self.s1))
                } else if channels == 2 * site.base_channels {
                    Some((self.b2, self.s2))
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(up_block: usize) -> SkipSite {
        SkipSite {
            up_block,
            skip_index: 0,
            num_skips: 1,
            base_channels: 16,
        }
    }

    #[test]
    fn channel_convention_selects_by_the_width_of_h() {
        let mut f = FreeU::new(1.1, 1.2, 0.3, 0.4);
        f.blocks = FreeUBlocks::Channels;
        assert_eq!(f.select(&site(3), 64), Some((1.1, 0.3)));
        assert_eq!(f.select(&site(0), 32), Some((1.2, 0.4)));
        assert_eq!(f.select(&site(1), 16), None);
        assert_eq!(f.select(&site(0), 48), None);
        f.blocks = FreeUBlocks::Stage;
        assert_eq!(f.select(&site(0), 48), Some((1.1, 0.3)));
        assert_eq!(f.select(&site(1), 16), Some((1.2, 0.4)));
        assert_eq!(f.select(&site(2), 64), None);
    }
}
