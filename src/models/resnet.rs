//! `ResnetBlock2D`, `Downsample2D`, `Upsample2D`.

use crate::backend::cpu;
use crate::backend::{Backend, Epilogue};
use crate::config::TimeScaleShift;
use crate::error::Result;
use crate::nn::{join, Conv2d, GroupNorm, LayerCtx, Linear};
use crate::weights::WeightSource;

/// norm1 → SiLU → conv1 → (+ time embedding, or scale/shift after norm2) → norm2 → SiLU →
/// conv2, plus the (1×1-projected when channels change) input, divided by `output_scale_factor`.
pub struct ResnetBlock2D {
    /// `norm1`: GroupNorm of the input, `[in_channels]`.
    pub norm1: GroupNorm,
    /// `conv1`: 3×3, `in_channels` → `out_channels`.
    pub conv1: Conv2d,
    /// `time_emb_proj`: `temb_channels` → `out_channels` (2·`out_channels` for scale_shift);
    /// None where the block takes no time embedding (the VAE's, `temb_channels=None`).
    pub time_emb_proj: Option<Linear>,
    /// `norm2`: GroupNorm of conv1's output, `[out_channels]`.
    pub norm2: GroupNorm,
    /// `conv2`: 3×3, `out_channels` → `out_channels`.
    pub conv2: Conv2d,
    /// `conv_shortcut`: the 1×1 projection of the input, present when the channels change.
    pub conv_shortcut: Option<Conv2d>,
    /// How the time embedding enters (`resnet_time_scale_shift`).
    pub time_scale_shift: TimeScaleShift,
    /// `output_scale_factor`: the sum of both branches is divided by it (the mid block's
    /// `mid_block_scale_factor`, else 1).
    pub output_scale_factor: f32,
}

/// What every resnet of a U-Net shares.
#[derive(Clone, Copy, Debug)]
pub struct ResnetOptions {
    /// The time embedding's width (`UNetConfig::time_embed_dim`); None: no time embedding
    /// (diffusers' `temb_channels=None`, as in the VAE).
    pub temb_channels: Option<usize>,
    /// GroupNorm groups (`norm_num_groups`).
    pub groups: usize,
    /// GroupNorm epsilon (`norm_eps`).
    pub eps: f32,
    /// `resnet_time_scale_shift`.
    pub time_scale_shift: TimeScaleShift,
    /// What the output is divided by (see `ResnetBlock2D::output_scale_factor`).
    pub output_scale_factor: f32,
}

impl ResnetBlock2D {
    /// Takes the parameters under `prefix`: `norm1`, `conv1`, `time_emb_proj` (with
    /// `o.temb_channels`), `norm2`, `conv2`, and `conv_shortcut` when `in_channels != out_channels`.
    pub fn load(
        ws: &mut dyn WeightSource,
        prefix: &str,
        in_channels: usize,
        out_channels: usize,
        o: ResnetOptions,
    ) -> Result<Self> {
        let temb_out = match o.time_scale_shift {
            TimeScaleShift::Default => out_channels,
            TimeScaleShift::ScaleShift => 2 * out_channels,
        };
        let p = |n: &str| join(prefix, n);
        Ok(ResnetBlock2D {
            norm1: GroupNorm::load(ws, &p("norm1"), o.groups, in_channels, o.eps)?,
            conv1: Conv2d::load(ws, &p("conv1"), in_channels, out_channels, 3, 1, 1, true)?,
            time_emb_proj: match o.temb_channels {
                Some(t) => Some(Linear::load(ws, &p("time_emb_proj"), t, temb_out, true)?),
                None => None,
            },
            norm2: GroupNorm::load(ws, &p("norm2"), o.groups, out_channels, o.eps)?,
            conv2: Conv2d::load(ws, &p("conv2"), out_channels, out_channels, 3, 1, 1, true)?,
            conv_shortcut: if in_channels != out_channels {
                Some(Conv2d::load(
                    ws,
                    &p("conv_shortcut"),
                    in_channels,
                    out_channels,
                    1,
                    1,
                    0,
                    true,
                )?)
            } else {
                None
            },
            time_scale_shift: o.time_scale_shift,
            output_scale_factor: o.output_scale_factor,
        })
    }

    /// The input channels (conv1's).
    pub fn in_channels(&self) -> usize {
        self.conv1.in_channels()
    }

    /// `x`: [B, Cin, H, W]; `temb_act`: SiLU(time embedding), [B, temb_channels], for a block
    /// with `time_emb_proj` (one without ignores it, as diffusers does).
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        x: &B::Tensor,
        temb_act: Option<&B::Tensor>,
        lc: LayerCtx,
    ) -> Result<B::Tensor> {
        let h = be.group_norm(self.norm1.params(), x, None, true)?;
        let t = match (&self.time_emb_proj, temb_act) {
            (Some(proj), Some(temb)) => {
                Some(be.linear(proj.params(lc), temb, Epilogue::default())?)
            }
            (Some(_), None) => {
                return Err(crate::Error::input(
                    "temb",
                    "missing; this resnet has a time embedding projection",
                ))
            }
            (None, _) => None,
        };
        let h = match (self.time_scale_shift, &t) {
            (TimeScaleShift::Default, _) | (TimeScaleShift::ScaleShift, None) => {
                let epi = Epilogue {
                    add_bc: t.as_ref(),
                    ..Epilogue::default()
                };
                let h = be.conv2d(self.conv1.params(lc), &h, epi)?;
                be.group_norm(self.norm2.params(), &h, None, true)?
            }
            (TimeScaleShift::ScaleShift, Some(t)) => {
                let h = be.conv2d(self.conv1.params(lc), &h, Epilogue::default())?;
                be.group_norm(self.norm2.params(), &h, Some(t), true)?
            }
        };
        let shortcut = match &self.conv_shortcut {
            Some(conv) => Some(be.conv2d(conv.params(lc), x, Epilogue::default())?),
            None => None,
        };
        let residual = shortcut.as_ref().unwrap_or(x);
        let epi = Epilogue::residual(residual, 1.0 / self.output_scale_factor);
        be.conv2d(self.conv2.params(lc), &h, epi)
    }
}

/// A 3×3 stride-2 convolution; with `padding = 0`, diffusers pads right and bottom by one first.
pub struct Downsample2D {
    /// `conv`: 3×3 stride 2, channels → channels.
    pub conv: Conv2d,
}

impl Downsample2D {
    /// Takes `{prefix}.conv` for `channels` channels with diffusers' `padding`.
    pub fn load(
        ws: &mut dyn WeightSource,
        prefix: &str,
        channels: usize,
        padding: usize,
    ) -> Result<Self> {
        let mut conv = Conv2d::load(
            ws,
            &join(prefix, "conv"),
            channels,
            channels,
            3,
            2,
            padding,
            true,
        )?;
        if padding == 0 {
            conv.padding = cpu::Padding {
                top: 0,
                bottom: 1,
                left: 0,
                right: 1,
            };
        }
        Ok(Downsample2D { conv })
    }

    /// `x`: [B, C, H, W] → [B, C, ⌊(H + pads − 3)/2⌋ + 1, ⌊(W + pads − 3)/2⌋ + 1].
    pub fn forward<B: Backend>(&self, be: &B, x: &B::Tensor, lc: LayerCtx) -> Result<B::Tensor> {
        be.conv2d(self.conv.params(lc), x, Epilogue::default())
    }
}

/// Nearest 2× (or to an explicit size) then a 3×3 convolution.
pub struct Upsample2D {
    /// `conv`: 3×3 stride 1 padding 1, channels → channels.
    pub conv: Conv2d,
}

impl Upsample2D {
    /// Takes `{prefix}.conv` for `channels` channels.
    pub fn load(ws: &mut dyn WeightSource, prefix: &str, channels: usize) -> Result<Self> {
        Ok(Upsample2D {
            conv: Conv2d::load(ws, &join(prefix, "conv"), channels, channels, 3, 1, 1, true)?,
        })
    }

    /// `x`: [B, C, H, W] → [B, C, 2H, 2W], or to `size` (diffusers' `upsample_size`, given when
    /// the encoder's sizes were not exact halves).
    pub fn forward<B: Backend>(
        &self,
        be: &B,
        x: &B::Tensor,
        size: Option<(usize, usize)>,
        lc: LayerCtx,
    ) -> Result<B::Tensor> {
        let s = be.shape(x);
        let (oh, ow) = size.unwrap_or((2 * s[2], 2 * s[3]));
        let up = be.upsample_nearest(x, oh, ow)?;
        be.conv2d(self.conv.params(lc), &up, Epilogue::default())
    }
}
