//! The VAE's halves as diffusers' `autoencoders/vae.py` builds them: `Encoder`, `Decoder` and
//! `DiagonalGaussianDistribution`, with the blocks they are made of from `unet_2d_blocks.py`
//! (`DownEncoderBlock2D`, `UpDecoderBlock2D`, and `UNetMidBlock2D` as the VAE configures it: no
//! time embedding, one attention head as wide as the channels, GroupNorm ε = 1e-6).

use super::configuration_autoencoder_kl::AutoencoderKLConfig;
use crate::backend::{Backend, Epilogue};
use crate::config::TimeScaleShift;
use crate::error::{Error, Result};
use crate::models::attention_processor::{Attention, AttentionSpec};
use crate::models::resnet::{Downsample2D, ResnetBlock2D, ResnetOptions, Upsample2D};
use crate::nn::{join, Conv2d, GroupNorm, LayerCtx};
use crate::tensor::Tensor;
use crate::weights::WeightSource;

/// GroupNorm ε of every VAE resnet, attention and output norm (`resnet_eps=1e-6` in diffusers).
pub const VAE_EPS: f32 = 1e-6;

fn resnet_options(cfg: &AutoencoderKLConfig) -> ResnetOptions {
    ResnetOptions {
        temb_channels: None,
        groups: cfg.norm_num_groups,
        eps: VAE_EPS,
        time_scale_shift: TimeScaleShift::Default,
        output_scale_factor: 1.0,
    }
}

fn resnets(
    ws: &mut dyn WeightSource,
    prefix: &str,
    count: usize,
    in_channels: usize,
    out_channels: usize,
    cfg: &AutoencoderKLConfig,
) -> Result<Vec<ResnetBlock2D>> {
    (0..count)
        .map(|i| {
            let cin = if i == 0 { in_channels } else { out_channels };
            ResnetBlock2D::load(
                ws,
                &join(prefix, &format!("resnets.{i}")),
                cin,
                out_channels,
                resnet_options(cfg),
            )
        })
        .collect()
}

fn run_resnets<B: Backend>(
    be: &B,
    resnets: &[ResnetBlock2D],
    x: &B::Tensor,
) -> Result<Option<B::Tensor>> {
    let mut h: Option<B::Tensor> = None;
    for r in resnets {
        h = Some(r.forward(be, h.as_ref().unwrap_or(x), None, LayerCtx::default())?);
    }
    Ok(h)
}

/// diffusers' `DownEncoderBlock2D`: `layers_per_block` resnets, then (but on the innermost
/// level) a 3×3 stride-2 convolution padded right and bottom by one (`downsample_padding=0`).
pub struct DownEncoderBlock2D {
    /// `resnets`: the first takes the previous level's width.
    pub resnets: Vec<ResnetBlock2D>,
    /// `downsamplers.0`; None on the innermost level.
    pub downsampler: Option<Downsample2D>,
}

impl DownEncoderBlock2D {
    /// Takes the block under `prefix` (`encoder.down_blocks.{i}`).
    pub fn load(
        ws: &mut dyn WeightSource,
        prefix: &str,
        in_channels: usize,
        out_channels: usize,
        add_downsample: bool,
        cfg: &AutoencoderKLConfig,
    ) -> Result<Self> {
        let resnets = resnets(
            ws,
            prefix,
            cfg.layers_per_block,
            in_channels,
            out_channels,
            cfg,
        )?;
        let downsampler = if add_downsample {
            Some(Downsample2D::load(
                ws,
                &join(prefix, "downsamplers.0"),
                out_channels,
                0,
            )?)
        } else {
            None
        };
        Ok(DownEncoderBlock2D {
            resnets,
            downsampler,
        })
    }

    /// `x`: [B, Cin, H, W] → [B, C, ⌈H/2⌉, ⌈W/2⌉] (H×W where there is no downsampler).
    pub fn forward<B: Backend>(&self, be: &B, x: &B::Tensor) -> Result<B::Tensor> {
        let h = run_resnets(be, &self.resnets, x)?;
        let h = h.as_ref().unwrap_or(x);
        match &self.downsampler {
            Some(d) => d.forward(be, h, LayerCtx::default()),
            None => Ok(h.clone()),
        }
    }
}

/// diffusers' `UpDecoderBlock2D`: `layers_per_block + 1` resnets (no skips), then (but on the
/// outermost level) nearest 2× upsampling and a 3×3 convolution.
pub struct UpDecoderBlock2D {
    /// `resnets`: the first takes the previous level's width.
    pub resnets: Vec<ResnetBlock2D>,
    /// `upsamplers.0`; None on the outermost level.
    pub upsampler: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    /// Takes the block under `prefix` (`decoder.up_blocks.{i}`).
    pub fn load(
        ws: &mut dyn WeightSource,
        prefix: &str,
        in_channels: usize,
        out_channels: usize,
        add_upsample: bool,
        cfg: &AutoencoderKLConfig,
    ) -> Result<Self> {
        let resnets = resnets(
            ws,
            prefix,
            cfg.layers_per_block + 1,
            in_channels,
            out_channels,
            cfg,
        )?;
        let upsampler = if add_upsample {
            Some(Upsample2D::load(
                ws,
                &join(prefix, "upsamplers.0"),
                out_channels,
            )?)
        } else {
            None
        };
        Ok(UpDecoderBlock2D { resnets, upsampler })
    }

    /// `x`: [B, Cin, H, W] → [B, C, 2H, 2W] (H×W where there is no upsampler).
    pub fn forward<B: Backend>(&self, be: &B, x: &B::Tensor) -> Result<B::Tensor> {
        let h = run_resnets(be, &self.resnets, x)?;
        let h = h.as_ref().unwrap_or(x);
        match &self.upsampler {
            Some(u) => u.forward(be, h, None, LayerCtx::default()),
            None => Ok(h.clone()),
        }
    }
}

/// diffusers' `UNetMidBlock2D` as the VAE builds it: a resnet, then (with
/// `mid_block_add_attention`) single-head self-attention with GroupNorm and residual, then a
/// resnet; no time embedding.
pub struct UNetMidBlock2D {
    /// `resnets.0` and `resnets.1`.
    pub resnets: Vec<ResnetBlock2D>,
    /// `attentions.0`, when the config adds attention.
    pub attention: Option<Attention>,
}

impl UNetMidBlock2D {
    /// Takes the block under `prefix` (`encoder.mid_block` or `decoder.mid_block`) for
    /// `channels` channels (`block_out_channels[-1]`).
    pub fn load(
        ws: &mut dyn WeightSource,
        prefix: &str,
        channels: usize,
        cfg: &AutoencoderKLConfig,
    ) -> Result<Self> {
        let first = ResnetBlock2D::load(
            ws,
            &join(prefix, "resnets.0"),
            channels,
            channels,
            resnet_options(cfg),
        )?;
        let attention = if cfg.mid_block_add_attention {
            Some(Attention::load(
                ws,
                &join(prefix, "attentions.0"),
                AttentionSpec {
                    query_dim: channels,
                    context_dim: channels,
                    // `heads = in_channels // attention_head_dim` with the head as wide as the
                    // block.
                    heads: 1,
                    dim_head: channels,
                    qkv_bias: true,
                    group_norm: Some((cfg.norm_num_groups, VAE_EPS)),
                    rescale_output_factor: 1.0,
                },
            )?)
        } else {
            None
        };
        let second = ResnetBlock2D::load(
            ws,
            &join(prefix, "resnets.1"),
            channels,
            channels,
            resnet_options(cfg),
        )?;
        Ok(UNetMidBlock2D {
            resnets: vec![first, second],
            attention,
        })
    }

    /// `x`: [B, C, H, W] → [B, C, H, W].
    pub fn forward<B: Backend>(&self, be: &B, x: &B::Tensor) -> Result<B::Tensor> {
        let lc = LayerCtx::default();
        let mut h = self.resnets[0].forward(be, x, None, lc)?;
        if let Some(a) = &self.attention {
            h = a.forward_spatial(be, &h, lc)?;
        }
        self.resnets[1].forward(be, &h, None, lc)
    }
}

/// GroupNorm → SiLU → 3×3 convolution: how both halves end.
fn norm_act_conv<B: Backend>(
    be: &B,
    norm: &GroupNorm,
    conv: &Conv2d,
    x: &B::Tensor,
) -> Result<B::Tensor> {
    let h = be.group_norm(norm.params(), x, None, true)?;
    be.conv2d(conv.params(LayerCtx::default()), &h, Epilogue::default())
}

/// diffusers' `Encoder` with `double_z=True`: image [B, in_channels, H, W] → the posterior's
/// mean and log-variance stacked along channels, [B, 2·latent_channels, H/f, W/f].
pub struct Encoder {
    /// `conv_in`: 3×3, `in_channels` → `block_out_channels[0]`.
    pub conv_in: Conv2d,
    /// `down_blocks`, one per level.
    pub down_blocks: Vec<DownEncoderBlock2D>,
    /// `mid_block`.
    pub mid_block: UNetMidBlock2D,
    /// `conv_norm_out`: GroupNorm of `block_out_channels[-1]` channels.
    pub conv_norm_out: GroupNorm,
    /// `conv_out`: 3×3, `block_out_channels[-1]` → 2·`latent_channels`.
    pub conv_out: Conv2d,
}

impl Encoder {
    /// Takes the encoder under `prefix` (`encoder`).
    pub fn load(
        ws: &mut dyn WeightSource,
        prefix: &str,
        cfg: &AutoencoderKLConfig,
    ) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let p = |s: &str| join(prefix, s);
        let conv_in = Conv2d::load(ws, &p("conv_in"), cfg.in_channels, ch[0], 3, 1, 1, true)?;
        let mut down_blocks = Vec::with_capacity(n);
        let mut prev = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            down_blocks.push(DownEncoderBlock2D::load(
                ws,
                &p(&format!("down_blocks.{i}")),
                prev,
                c,
                i + 1 < n,
                cfg,
            )?);
            prev = c;
        }
        let last = ch[n - 1];
        Ok(Encoder {
            conv_in,
            down_blocks,
            mid_block: UNetMidBlock2D::load(ws, &p("mid_block"), last, cfg)?,
            conv_norm_out: GroupNorm::load(
                ws,
                &p("conv_norm_out"),
                cfg.norm_num_groups,
                last,
                VAE_EPS,
            )?,
            conv_out: Conv2d::load(
                ws,
                &p("conv_out"),
                last,
                2 * cfg.latent_channels,
                3,
                1,
                1,
                true,
            )?,
        })
    }

    /// `x`: [B, in_channels, H, W] → [B, 2·latent_channels, H/f, W/f] (f the downsampling
    /// factor; each downsampler rounds up).
    pub fn forward<B: Backend>(&self, be: &B, x: &B::Tensor) -> Result<B::Tensor> {
        let mut h = be.conv2d(
            self.conv_in.params(LayerCtx::default()),
            x,
            Epilogue::default(),
        )?;
        for block in &self.down_blocks {
            h = block.forward(be, &h)?;
        }
        let h = self.mid_block.forward(be, &h)?;
        norm_act_conv(be, &self.conv_norm_out, &self.conv_out, &h)
    }
}

/// diffusers' `Decoder` (GroupNorm variant): latents [B, latent_channels, h, w] → image
/// [B, out_channels, h·f, w·f].
pub struct Decoder {
    /// `conv_in`: 3×3, `latent_channels` → `block_out_channels[-1]`.
    pub conv_in: Conv2d,
    /// `mid_block`.
    pub mid_block: UNetMidBlock2D,
    /// `up_blocks`, innermost level first.
    pub up_blocks: Vec<UpDecoderBlock2D>,
    /// `conv_norm_out`: GroupNorm of `block_out_channels[0]` channels.
    pub conv_norm_out: GroupNorm,
    /// `conv_out`: 3×3, `block_out_channels[0]` → `out_channels`.
    pub conv_out: Conv2d,
}

impl Decoder {
    /// Takes the decoder under `prefix` (`decoder`).
    pub fn load(
        ws: &mut dyn WeightSource,
        prefix: &str,
        cfg: &AutoencoderKLConfig,
    ) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let p = |s: &str| join(prefix, s);
        let last = ch[n - 1];
        let conv_in = Conv2d::load(ws, &p("conv_in"), cfg.latent_channels, last, 3, 1, 1, true)?;
        let mid_block = UNetMidBlock2D::load(ws, &p("mid_block"), last, cfg)?;
        let mut up_blocks = Vec::with_capacity(n);
        let mut prev = last;
        for (i, &c) in ch.iter().rev().enumerate() {
            up_blocks.push(UpDecoderBlock2D::load(
                ws,
                &p(&format!("up_blocks.{i}")),
                prev,
                c,
                i + 1 < n,
                cfg,
            )?);
            prev = c;
        }
        Ok(Decoder {
            conv_in,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(
                ws,
                &p("conv_norm_out"),
                cfg.norm_num_groups,
                ch[0],
                VAE_EPS,
            )?,
            conv_out: Conv2d::load(ws, &p("conv_out"), ch[0], cfg.out_channels, 3, 1, 1, true)?,
        })
    }

    /// `z`: [B, latent_channels, h, w] → [B, out_channels, h·f, w·f].
    pub fn forward<B: Backend>(&self, be: &B, z: &B::Tensor) -> Result<B::Tensor> {
        let h = be.conv2d(
            self.conv_in.params(LayerCtx::default()),
            z,
            Epilogue::default(),
        )?;
        let mut h = self.mid_block.forward(be, &h)?;
        for block in &self.up_blocks {
            h = block.forward(be, &h)?;
        }
        norm_act_conv(be, &self.conv_norm_out, &self.conv_out, &h)
    }
}

/// diffusers' `DiagonalGaussianDistribution`: the posterior an `Encoder` (and `quant_conv`)
/// computes, from its mean and log-variance halves.
#[derive(Clone, Debug)]
pub struct DiagonalGaussianDistribution {
    /// The first `latent_channels` channels, [B, C, h, w]: also the distribution's mode.
    pub mean: Tensor,
    /// The second half, clamped to [-30, 20] as diffusers does, [B, C, h, w].
    pub logvar: Tensor,
}

impl DiagonalGaussianDistribution {
    /// Splits `parameters` ([B, 2C, h, w]) into mean and log-variance along channels.
    pub fn new(parameters: &Tensor) -> Result<Self> {
        let (b, c2, h, w) = parameters.dims4("parameters")?;
        if c2 % 2 != 0 {
            return Err(Error::input(
                "parameters",
                format!("{c2} channels cannot be split into mean and log-variance"),
            ));
        }
        let c = c2 / 2;
        let plane = c * h * w;
        let mut mean = Vec::with_capacity(b * plane);
        let mut logvar = Vec::with_capacity(b * plane);
        for s in parameters.data().chunks(2 * plane.max(1)).take(b) {
            mean.extend_from_slice(&s[..plane]);
            logvar.extend(s[plane..].iter().map(|v| v.clamp(-30.0, 20.0)));
        }
        Ok(DiagonalGaussianDistribution {
            mean: Tensor::new(vec![b, c, h, w], mean)?,
            logvar: Tensor::new(vec![b, c, h, w], logvar)?,
        })
    }

    /// `exp(0.5 · logvar)`.
    pub fn std(&self) -> Tensor {
        let data = self.logvar.data().iter().map(|v| (0.5 * v).exp()).collect();
        Tensor::from_parts(self.logvar.shape(), data)
    }

    /// `mean + std · noise` for standard-normal `noise` of the mean's shape (diffusers'
    /// `sample(generator)` with the noise drawn by the caller).
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        if noise.shape() != self.mean.shape() {
            return Err(Error::input(
                "noise",
                format!(
                    "shape {:?}; the posterior's mean is {:?}",
                    noise.shape(),
                    self.mean.shape()
                ),
            ));
        }
        let data = self
            .mean
            .data()
            .iter()
            .zip(self.logvar.data())
            .zip(noise.data())
            .map(|((m, lv), n)| m + (0.5 * lv).exp() * n)
            .collect();
        Tensor::new(self.mean.shape(), data)
    }

    /// The mode: the mean (diffusers' `mode()`).
    pub fn mode(&self) -> &Tensor {
        &self.mean
    }
}
