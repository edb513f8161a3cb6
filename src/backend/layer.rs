//! What a backend is told about a layer: plain parameter and geometry structs, borrowed from the
//! graph's layers (`nn::Conv2d::params` and the like) for one call. The graph resolves a
//! layer's MaskUNet mask once, here, so no backend looks masks up by name; a backend keyed by
//! `uid` keeps its own copies of the tensors.

use crate::boosters::masks::{MaskView, WeightMask};
use crate::error::Error;
use crate::tensor::Tensor;

/// Zero padding on each side, as (top, bottom, left, right).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Padding {
    /// Zero rows above the image.
    pub top: usize,
    /// Zero rows below the image.
    pub bottom: usize,
    /// Zero columns left of the image.
    pub left: usize,
    /// Zero columns right of the image.
    pub right: usize,
}

impl Padding {
    /// `p` on every side (PyTorch's `padding=p`).
    pub fn same(p: usize) -> Self {
        Padding {
            top: p,
            bottom: p,
            left: p,
            right: p,
        }
    }
}

/// A layer's MaskUNet mask for this call: the weight's masks and the sampler step that picks
/// among per-step masks.
#[derive(Clone, Copy, Debug)]
pub struct LayerMask<'a> {
    /// The masks of the layer's weight.
    pub weights: &'a WeightMask,
    /// The sampler step.
    pub step: usize,
}

impl<'a> LayerMask<'a> {
    /// Sample `b`'s mask at this step.
    pub fn view(&self, b: usize) -> MaskView<'a> {
        self.weights.view(self.step, b)
    }
}

/// A convolution (groups = 1) for one call.
#[derive(Clone, Copy, Debug)]
pub struct ConvParams<'a> {
    /// Identifies the parameters (a backend's copies are keyed by it).
    pub uid: u64,
    /// The weight's state-dict name, for errors.
    pub name: &'a str,
    /// `[out_channels, in_channels, kh, kw]`.
    pub weight: &'a Tensor,
    /// `[out_channels]`.
    pub bias: Option<&'a Tensor>,
    /// The stride along H and W.
    pub stride: usize,
    /// Zero padding per side.
    pub padding: Padding,
    /// The mask, when the call masks this layer; None: dense.
    pub mask: Option<LayerMask<'a>>,
}

/// A linear layer (`y = x·Wᵀ + b` over the last dimension) for one call.
#[derive(Clone, Copy, Debug)]
pub struct LinearParams<'a> {
    /// Identifies the parameters (a backend's copies are keyed by it).
    pub uid: u64,
    /// The weight's state-dict name, for errors.
    pub name: &'a str,
    /// `[out_features, in_features]`.
    pub weight: &'a Tensor,
    /// `[out_features]`.
    pub bias: Option<&'a Tensor>,
    /// The mask, when the call masks this layer; None: dense.
    pub mask: Option<LayerMask<'a>>,
}

/// A normalisation's affine and settings: GroupNorm over `groups` channel groups of an image,
/// or LayerNorm over the last dimension (`groups` 1).
#[derive(Clone, Copy, Debug)]
pub struct NormParams<'a> {
    /// Identifies the parameters (a backend's copies are keyed by it).
    pub uid: u64,
    /// Channel groups (GroupNorm's `num_groups`; 1 for LayerNorm).
    pub groups: usize,
    /// Added to the variance before the inverse square root.
    pub eps: f32,
    /// γ, `[channels]`.
    pub weight: &'a Tensor,
    /// β, `[channels]`.
    pub bias: &'a Tensor,
}

/// `e` with the layer's weight name in front (shape errors inside a kernel say which layer).
pub(crate) fn in_layer(name: &str, e: Error) -> Error {
    match e {
        Error::Shape { op, msg } => Error::Shape {
            op: format!("layer `{name}` ({op})"),
            msg,
        },
        other => other,
    }
}
