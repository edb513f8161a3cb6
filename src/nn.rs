//! The torch.nn layers diffusers builds on, each holding its parameters and loading them by
//! name from a `WeightSource`. A layer hands a backend its parameters as the backend's plain
//! structs (`params`), with the call's mask resolved here, once; `forward` runs it on the CPU.

use crate::backend::cpu::gemm::Precision;
use crate::backend::Padding;
use crate::backend::{Backend, ConvParams, Cpu, Epilogue, LayerMask, LinearParams, NormParams};
use crate::boosters::masks::MaskSet;
use crate::error::Result;
use crate::tensor::Tensor;
pub use crate::uid::fresh_uid;
pub(crate) use crate::uid::taking_uids;
use crate::weights::WeightSource;

/// `prefix.name`, or `name` when the prefix is empty.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// What every layer's forward receives for this call: MaskUNet masks (by weight name) and the
/// sampler step that selects per-step masks. Any linear or convolution named in the masks runs
/// the masked path; the rest run dense.
#[derive(Clone, Copy, Debug, Default)]
pub struct LayerCtx<'a> {
    /// The call's MaskUNet masks, keyed by weight name; None: every layer runs dense.
    pub masks: Option<&'a MaskSet>,
    /// The sampler step, which selects per-step masks.
    pub step: usize,
}

impl<'a> LayerCtx<'a> {
    /// The mask of the weight `name` for this call, if the call masks it: the one lookup by name.
    pub fn mask_of(&self, name: &str) -> Option<LayerMask<'a>> {
        let weights = self.masks?.get(name)?;
        Some(LayerMask {
            weights,
            step: self.step,
        })
    }
}

/// torch.nn.Linear: `y = x·Wᵀ + b` over the last dimension.
pub struct Linear {
    /// Identifies these parameters (see `fresh_uid`).
    pub uid: u64,
    /// The weight's state-dict name, which masks are keyed by.
    pub name: String,
    /// `weight`, `[out_features, in_features]`.
    pub weight: Tensor,
    /// `bias`, `[out_features]`, when the layer has one.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Takes `{prefix}.weight` (`[out_features, in_features]`) and, with `bias`, `{prefix}.bias`
    /// from `ws`.
    pub fn load(
        ws: &mut dyn WeightSource,
        prefix: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Self> {
        let name = join(prefix, "weight");
        let weight = ws.take(&name, &[out_features, in_features])?;
        let bias = if bias {
            Some(ws.take(&join(prefix, "bias"), &[out_features])?)
        } else {
            None
        };
        Ok(Linear {
            uid: fresh_uid(),
            name,
            weight,
            bias,
        })
    }

    /// The input width, `weight.shape[1]`.
    pub fn in_features(&self) -> usize {
        self.weight.shape().get(1).copied().unwrap_or(0)
    }

    /// The layer for one call on a backend, masked as `lc` says.
    pub fn params<'a>(&'a self, lc: LayerCtx<'a>) -> LinearParams<'a> {
        LinearParams {
            uid: self.uid,
            name: &self.name,
            weight: &self.weight,
            bias: self.bias.as_ref(),
            mask: lc.mask_of(&self.name),
        }
    }

    /// Panics where `try_forward` errs.
    pub fn forward(&self, x: &Tensor, lc: LayerCtx) -> Tensor {
        self.try_forward(x, lc)
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    /// `x`: [B, ..., in] on the CPU; shapes that do not agree and memory that cannot be had are
    /// errors naming the layer.
    pub fn try_forward(&self, x: &Tensor, lc: LayerCtx) -> Result<Tensor> {
        self.try_forward_in(x, lc, Precision::F32)
    }

    /// As `try_forward`, the product in `precision`.
    pub fn try_forward_in(&self, x: &Tensor, lc: LayerCtx, precision: Precision) -> Result<Tensor> {
        Cpu::of(precision).linear(self.params(lc), x, Epilogue::default())
    }
}

/// torch.nn.Conv2d (groups = 1) on NCHW images.
pub struct Conv2d {
    /// Identifies these parameters (see `fresh_uid`).
    pub uid: u64,
    /// The weight's state-dict name, which masks are keyed by.
    pub name: String,
    /// `weight`, `[out_channels, in_channels, kh, kw]`.
    pub weight: Tensor,
    /// `bias`, `[out_channels]`, when the layer has one.
    pub bias: Option<Tensor>,
    /// The stride along H and W.
    pub stride: usize,
    /// Zero padding per side (symmetric but for `Downsample2D` with `padding = 0`).
    pub padding: Padding,
}

impl Conv2d {
    /// Takes `{prefix}.weight` (`[out_channels, in_channels, kernel, kernel]`) and, with `bias`,
    /// `{prefix}.bias` from `ws`; `padding` is applied on every side.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        ws: &mut dyn WeightSource,
        prefix: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let name = join(prefix, "weight");
        let weight = ws.take(&name, &[out_channels, in_channels, kernel, kernel])?;
        let bias = if bias {
            Some(ws.take(&join(prefix, "bias"), &[out_channels])?)
        } else {
            None
        };
        Ok(Conv2d {
            uid: fresh_uid(),
            name,
            weight,
            bias,
            stride,
            padding: Padding::same(padding),
        })
    }

    /// The input channels, `weight.shape[1]`.
    pub fn in_channels(&self) -> usize {
        self.weight.shape().get(1).copied().unwrap_or(0)
    }

    /// The layer for one call on a backend, masked as `lc` says.
    pub fn params<'a>(&'a self, lc: LayerCtx<'a>) -> ConvParams<'a> {
        ConvParams {
            uid: self.uid,
            name: &self.name,
            weight: &self.weight,
            bias: self.bias.as_ref(),
            stride: self.stride,
            padding: self.padding,
            mask: lc.mask_of(&self.name),
        }
    }

    /// Panics where `try_forward` errs.
    pub fn forward(&self, x: &Tensor, lc: LayerCtx) -> Tensor {
        self.try_forward(x, lc)
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    /// `x`: [B, Cin, H, W] on the CPU; shapes that do not agree and memory that cannot be had
    /// are errors naming the layer.
    pub fn try_forward(&self, x: &Tensor, lc: LayerCtx) -> Result<Tensor> {
        self.try_forward_in(x, lc, Precision::F32)
    }

    /// As `try_forward`, the products in `precision`.
    pub fn try_forward_in(&self, x: &Tensor, lc: LayerCtx, precision: Precision) -> Result<Tensor> {
        Cpu::of(precision).conv2d(self.params(lc), x, Epilogue::default())
    }
}

/// torch.nn.GroupNorm with a per-channel affine.
pub struct GroupNorm {
    /// Identifies these parameters (see `fresh_uid`).
    pub uid: u64,
    /// `num_groups`: the channels are normalised in this many groups.
    pub groups: usize,
    /// Added to the variance before the inverse square root.
    pub eps: f32,
    /// `weight` (γ), `[channels]`.
    pub weight: Tensor,
    /// `bias` (β), `[channels]`.
    pub bias: Tensor,
}

impl GroupNorm {
    /// Takes `{prefix}.weight` and `{prefix}.bias` (`[channels]`) from `ws`; `channels` must be a
    /// positive multiple of `groups`.
    pub fn load(
        ws: &mut dyn WeightSource,
        prefix: &str,
        groups: usize,
        channels: usize,
        eps: f32,
    ) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(crate::Error::weight(
                prefix,
                format!("GroupNorm of {channels} channels cannot be split into {groups} groups"),
            ));
        }
        Ok(GroupNorm {
            uid: fresh_uid(),
            groups,
            eps,
            weight: ws.take(&join(prefix, "weight"), &[channels])?,
            bias: ws.take(&join(prefix, "bias"), &[channels])?,
        })
    }

    /// The layer's parameters for a backend.
    pub fn params(&self) -> NormParams<'_> {
        NormParams {
            uid: self.uid,
            groups: self.groups,
            eps: self.eps,
            weight: &self.weight,
            bias: &self.bias,
        }
    }

    /// GroupNorm, then SiLU when `silu` (fused: one pass). Panics where `try_forward` errs.
    pub fn forward(&self, x: &Tensor, silu: bool) -> Tensor {
        self.try_forward(x, silu).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As `forward`; shapes that do not agree and memory that cannot be had are errors.
    pub fn try_forward(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        Cpu.group_norm(self.params(), x, None, silu)
    }
}

/// torch.nn.LayerNorm over the last dimension, with an affine.
pub struct LayerNorm {
    /// Identifies these parameters (see `fresh_uid`).
    pub uid: u64,
    /// Added to the variance before the inverse square root.
    pub eps: f32,
    /// `weight` (γ), `[dim]`.
    pub weight: Tensor,
    /// `bias` (β), `[dim]`.
    pub bias: Tensor,
}

impl LayerNorm {
    /// Takes `{prefix}.weight` and `{prefix}.bias` (`[dim]`) from `ws`.
    pub fn load(ws: &mut dyn WeightSource, prefix: &str, dim: usize, eps: f32) -> Result<Self> {
        Ok(LayerNorm {
            uid: fresh_uid(),
            eps,
            weight: ws.take(&join(prefix, "weight"), &[dim])?,
            bias: ws.take(&join(prefix, "bias"), &[dim])?,
        })
    }

    /// The layer's parameters for a backend (`groups` 1).
    pub fn params(&self) -> NormParams<'_> {
        NormParams {
            uid: self.uid,
            groups: 1,
            eps: self.eps,
            weight: &self.weight,
            bias: &self.bias,
        }
    }

    /// Panics where `try_forward` errs.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.try_forward(x).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As `forward`; shapes that do not agree and memory that cannot be had are errors.
    pub fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        Cpu.layer_norm(self.params(), x)
    }
}

/// torch.nn.Embedding: a lookup table of rows.
pub struct Embedding {
    /// `weight`, `[num_embeddings, dim]`: row i is the embedding of index i.
    pub weight: Tensor,
}

impl Embedding {
    /// Takes `{prefix}.weight` (`[num, dim]`) from `ws`.
    pub fn load(ws: &mut dyn WeightSource, prefix: &str, num: usize, dim: usize) -> Result<Self> {
        Ok(Embedding {
            weight: ws.take(&join(prefix, "weight"), &[num, dim])?,
        })
    }

    /// Rows for `indices`; an index outside the table is an error naming `what`.
    pub fn forward(&self, indices: &[f32], what: &str) -> Result<Tensor> {
        let [num, dim] = self.weight.shape()[..] else {
            return Err(crate::Error::weight(
                "class_embedding.weight",
                format!(
                    "expected a rank-2 table, got shape {:?}",
                    self.weight.shape()
                ),
            ));
        };
        let n = crate::tensor::numel_of(&[indices.len(), dim], what)?;
        let mut out = crate::tensor::try_vec_with_capacity(n, what)?;
        for &i in indices {
            if i < 0.0 || i.fract() != 0.0 || i as usize >= num {
                return Err(crate::Error::input(
                    what,
                    format!("label {i} is not an integer in 0..{num}"),
                ));
            }
            out.extend_from_slice(&self.weight.data()[i as usize * dim..][..dim]);
        }
        Ok(Tensor::from_parts([indices.len(), dim], out))
    }
}
