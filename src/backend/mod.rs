//! The backends: the one seam between the model graph and the hardware, and each backend's
//! home. Every module in `models` is written once against [`Backend`]; the CPU backend
//! ([`Cpu`](struct@Cpu), its trait impl and kernels in [`cpu`]) is the reference, the CUDA
//! backend ([`cuda::Gpu`], host code in [`cuda`], kernels in `kernels/*.cu`) runs the same graph
//! on hand-written kernels. The trait takes plain structs ([`layer`], [`TimestepParams`],
//! [`Epilogue`]), never the graph's types. The kernels are public for microbenchmarks and tests
//! against them; a model's user needs none of them.
//!
//! Tensors are opaque to the graph. Shapes are semantic: an image is `[B, C, H, W]` (the CPU
//! stores it NCHW, the GPU NHWC), a token sequence `[B, N, C]`, a vector batch `[B, C]`.
//! Layers carry their CPU parameters; a device backend keeps its own copies keyed by the layer's
//! `uid`, made on first use.

pub mod cpu;
pub mod cuda;
pub mod layer;

pub use cpu::Cpu;
pub use layer::{ConvParams, LayerMask, LinearParams, NormParams, Padding};

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use cpu::fourier::FilterForm;

/// The settings of the sinusoidal timestep embedding (diffusers' `Timesteps` module, which
/// `models::embeddings` names so).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimestepParams {
    /// Width of the embedding (`block_out_channels[0]` for `time_proj`).
    pub dim: usize,
    /// `flip_sin_to_cos`: the cosines come first.
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift` (the config's `freq_shift`).
    pub downscale_freq_shift: f32,
}

/// What a linear or convolution adds to its output, fused into the GEMM where the backend can:
/// `y = (x·Wᵀ + bias + add_bc[b, c] + residual) · scale`.
pub struct Epilogue<'a, T> {
    /// Added per sample and output channel (a resnet's time embedding), `[B, C]`.
    pub add_bc: Option<&'a T>,
    /// Added elementwise, same shape as the output.
    pub residual: Option<&'a T>,
    /// Applied last (a resnet's `1 / output_scale_factor`); 1 is exact.
    pub scale: f32,
}

// Manual impls: a derive would demand `T: Copy`, but only references are copied.
impl<T> Clone for Epilogue<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Epilogue<'_, T> {}

impl<T> Default for Epilogue<'_, T> {
    fn default() -> Self {
        Epilogue {
            add_bc: None,
            residual: None,
            scale: 1.0,
        }
    }
}

impl<'a, T> Epilogue<'a, T> {
    /// Adds `r` (of the output's shape) and scales the sum by `scale`.
    pub fn residual(r: &'a T, scale: f32) -> Self {
        Epilogue {
            add_bc: None,
            residual: Some(r),
            scale,
        }
    }
}

/// A pointwise activation of transformers' `ACT2FN` that a text encoder's MLP uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: exact GELU, `x · Φ(x)` with the erf form of Φ.
    Gelu,
    /// `quick_gelu`: `x · sigmoid(1.702 · x)`.
    QuickGelu,
}

/// The ops every model module is written against, over the backend's own tensor type (shapes
/// semantic, see the module docs): the CPU reference (`Cpu`) and the CUDA backend (`cuda::Gpu`)
/// implement it.
pub trait Backend {
    /// Cloning copies on the CPU and shares the buffer on the GPU.
    type Tensor: Clone;

    /// The semantic shape (see the module docs).
    fn shape(&self, x: &Self::Tensor) -> crate::Shape;
    /// From a host tensor with a semantic shape (images NCHW).
    fn upload(&self, x: &Tensor) -> Result<Self::Tensor>;
    /// To a host tensor with the semantic shape (images NCHW), in f32.
    fn download(&self, x: &Self::Tensor) -> Result<Tensor>;

    /// Image `[B, C, H, W]` in, image out.
    fn conv2d(
        &self,
        conv: ConvParams,
        x: &Self::Tensor,
        epi: Epilogue<Self::Tensor>,
    ) -> Result<Self::Tensor>;
    /// `[.., in]` to `[.., out]`.
    fn linear(
        &self,
        lin: LinearParams,
        x: &Self::Tensor,
        epi: Epilogue<Self::Tensor>,
    ) -> Result<Self::Tensor>;
    /// GroupNorm of an image; then `x·(1+scale)+shift` from `scale_shift` (`[B, 2C]`) if
    /// given; then SiLU if `silu`.
    fn group_norm(
        &self,
        gn: NormParams,
        x: &Self::Tensor,
        scale_shift: Option<&Self::Tensor>,
        silu: bool,
    ) -> Result<Self::Tensor>;
    /// LayerNorm over the last dimension of `[.., C]`.
    fn layer_norm(&self, ln: NormParams, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// Multi-head SDPA over token sequences.
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        heads: usize,
        scale: f32,
    ) -> Result<Self::Tensor>;
    /// Self-attention (`q`, `k`, `v` of one shape) under a causal mask: query `i` attends to
    /// keys `0..=i` only (CLIP's text encoder).
    fn causal_attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        heads: usize,
        scale: f32,
    ) -> Result<Self::Tensor>;
    /// `act`, elementwise.
    fn activation(&self, x: &Self::Tensor, act: Activation) -> Result<Self::Tensor>;
    /// diffusers' GEGLU after its projection: `[.., 2d]` → `x[.., :d] · gelu(x[.., d:])`.
    fn geglu(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// diffusers' `GEGLU` module: its projection `lin`, then [`geglu`](Self::geglu). A backend
    /// may gate inside the product rather than store the wide projection.
    fn linear_geglu(&self, lin: LinearParams, x: &Self::Tensor) -> Result<Self::Tensor> {
        self.geglu(&self.linear(lin, x, Epilogue::default())?)
    }
    /// SiLU, `x · sigmoid(x)`, elementwise.
    fn silu(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// `(a + b) · scale`.
    fn add(&self, a: &Self::Tensor, b: &Self::Tensor, scale: f32) -> Result<Self::Tensor>;
    /// `x · s`, elementwise.
    fn scale(&self, x: &Self::Tensor, s: f32) -> Result<Self::Tensor>;
    /// Nearest-neighbour resize of an image to H×W = `h`×`w` (PyTorch's index rule).
    fn upsample_nearest(&self, x: &Self::Tensor, h: usize, w: usize) -> Result<Self::Tensor>;
    /// `[h, skip · skip_scale]` along channels (Skip-Tuning's scale fused): of images
    /// `[B, C, H, W]`, or of token sequences `[B, N, C]` (a U-ViT's long skips).
    fn cat_channels(
        &self,
        h: &Self::Tensor,
        skip: &Self::Tensor,
        skip_scale: f32,
    ) -> Result<Self::Tensor>;
    /// Image to tokens `[B, H·W, C]` (free on an NHWC backend).
    fn to_tokens(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// Tokens `[B, H·W, C]` to an image (free on an NHWC backend).
    fn to_image(&self, x: &Self::Tensor, h: usize, w: usize) -> Result<Self::Tensor>;
    /// FreeU's backbone scaling, in place.
    fn freeu_backbone(&self, h: &mut Self::Tensor, b: f32, v2: bool) -> Result<()>;
    /// FreeU's Fourier filter of every H×W plane of an image.
    fn fourier_filter(
        &self,
        x: &Self::Tensor,
        threshold: usize,
        scale: f32,
        form: FilterForm,
    ) -> Result<Self::Tensor>;
    /// The sinusoidal embedding of `ts` for the batch's timesteps `t` (one per sample),
    /// `[B, ts.dim]`.
    fn timestep_embedding(&self, p: &TimestepParams, t: &[f32]) -> Result<Self::Tensor>;
    /// `[a; b]` along the token axis of `[B, Na, C]` and `[B, Nb, C]`, plus `pos`
    /// (`[1, Na + Nb, C]`, shared by the batch) when given: the U-ViT's extra tokens before its
    /// patches, with the position table added in the same pass.
    fn cat_tokens(
        &self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        pos: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor>;
    /// Tokens `rows` of each sample: `[B, N, C]` → `[B, M, C]` with `y[s, j] = x[s, rows[s·M + j]]`
    /// (`rows` holds B·M indices below N).
    fn gather_tokens(&self, x: &Self::Tensor, rows: &[usize]) -> Result<Self::Tensor>;
    /// Channels `start..start + len` of `[.., C]` (q, k or v out of a fused projection).
    fn slice_channels(&self, x: &Self::Tensor, start: usize, len: usize) -> Result<Self::Tensor>;
    /// Bytes this backend's tensors can still take, for the memory plan a forward makes before
    /// it allocates (`UNetConfig::plan_forward`); None where the backend does not say, and then
    /// only the allocator refuses.
    fn available_memory(&self) -> Option<u64> {
        None
    }
    /// Per-call state of the block-boundary checks (`watch_non_finite`).
    type Watch;
    /// A fresh watch for one forward call.
    fn new_watch(&self) -> Result<Self::Watch>;
    /// The U-Net's block-boundary check of `x`, the next check of the call: the first NaN or
    /// infinity (flat index in the semantic layout, value) when the backend knows it now (the
    /// CPU looks at once); a backend that looks asynchronously (the GPU queues a kernel) answers
    /// `None` here and reports in `first_watched`.
    fn watch_non_finite(
        &self,
        watch: &mut Self::Watch,
        x: &Self::Tensor,
    ) -> Result<Option<(usize, f32)>>;
    /// The first queued check of the call that found a non-finite value: (its number from 0,
    /// flat index in the semantic layout, value).
    fn first_watched(&self, watch: Self::Watch) -> Result<Option<(usize, usize, f32)>>;
}

/// `(B, Na, Nb, C)` of `Backend::cat_tokens`'s operands, or the error naming the mismatch.
pub(crate) fn cat_tokens_dims(
    a: &[usize],
    b: &[usize],
    pos: Option<&[usize]>,
) -> Result<(usize, usize, usize, usize)> {
    match (a, b) {
        ([ba, na, ca], [bb, nb, cb]) if ba == bb && ca == cb => {
            if let Some(p) = pos {
                if p != [1, na + nb, *ca] {
                    return Err(Error::shape(
                        "cat_tokens",
                        format!("position table {p:?} is not [1, {}, {ca}]", na + nb),
                    ));
                }
            }
            Ok((*ba, *na, *nb, *ca))
        }
        _ => Err(Error::shape(
            "cat_tokens",
            format!("cannot join {a:?} and {b:?} along tokens: both must be [B, N, C] with the same B and C"),
        )),
    }
}

/// `(B, N, C, M)` of `Backend::gather_tokens`, with every row index checked.
pub(crate) fn gather_tokens_dims(
    x: &[usize],
    rows: &[usize],
) -> Result<(usize, usize, usize, usize)> {
    let [b, n, c] = x[..] else {
        return Err(Error::shape(
            "gather_tokens",
            format!("{x:?} is not [B, N, C]"),
        ));
    };
    if b == 0 || !rows.len().is_multiple_of(b) {
        return Err(Error::shape(
            "gather_tokens",
            format!(
                "{} row indices do not split over a batch of {b}",
                rows.len()
            ),
        ));
    }
    if let Some(r) = rows.iter().find(|&&r| r >= n) {
        return Err(Error::shape(
            "gather_tokens",
            format!("row {r} is outside the {n} tokens of {x:?}"),
        ));
    }
    Ok((b, n, c, rows.len() / b))
}

/// The channel count of `Backend::slice_channels`'s input, with the range checked.
pub(crate) fn slice_channels_dims(x: &[usize], start: usize, len: usize) -> Result<usize> {
    match x.last() {
        Some(&c) if start.checked_add(len).is_some_and(|e| e <= c) => Ok(c),
        _ => Err(Error::shape(
            "slice_channels",
            format!("channels {start}..{} of {x:?}", start.saturating_add(len)),
        )),
    }
}
