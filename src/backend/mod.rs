//! The backends: the one seam between the model graph and the hardware, and each backend's
//! home. Every module in `models` is written once against [`Backend`]; the CPU backend ([`Cpu`](struct@Cpu),
//! its trait impl in this file, its kernels in [`cpu`]) is the reference, the CUDA backend
//! ([`cuda::Gpu`], host code in [`cuda`], kernels in `kernels/*.cu`) runs the same graph on
//! hand-written kernels. The kernels are public for microbenchmarks and tests against them;
//! a model's user needs none of them.
//!
//! Tensors are opaque to the graph. Shapes are semantic: an image is `[B, C, H, W]` (the CPU
//! stores it NCHW, the GPU NHWC), a token sequence `[B, N, C]`, a vector batch `[B, C]`.
//! Layers carry their CPU parameters; a device backend keeps its own copies keyed by the layer's
//! `uid`, made on first use.

pub mod cpu;
pub mod cuda;

use crate::boosters::freeu::scale_backbone;
use crate::error::{Error, Result};
use crate::nn::{Conv2d, GroupNorm, LayerCtx, LayerNorm, Linear};
use crate::tensor::Tensor;
use cpu::fourier::{try_fourier_filter, FilterForm};
use cpu::profile::{self, Op};

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
        conv: &Conv2d,
        x: &Self::Tensor,
        lc: LayerCtx,
        epi: Epilogue<Self::Tensor>,
    ) -> Result<Self::Tensor>;
    /// `[.., in]` to `[.., out]`.
    fn linear(
        &self,
        lin: &Linear,
        x: &Self::Tensor,
        lc: LayerCtx,
        epi: Epilogue<Self::Tensor>,
    ) -> Result<Self::Tensor>;
    /// GroupNorm of an image; then `x·(1+scale)+shift` from `scale_shift` (`[B, 2C]`) if
    /// given; then SiLU if `silu`.
    fn group_norm(
        &self,
        gn: &GroupNorm,
        x: &Self::Tensor,
        scale_shift: Option<&Self::Tensor>,
        silu: bool,
    ) -> Result<Self::Tensor>;
    /// LayerNorm over the last dimension of `[.., C]`.
    fn layer_norm(&self, ln: &LayerNorm, x: &Self::Tensor) -> Result<Self::Tensor>;
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

/// The multi-threaded CPU reference backend. Its convolutions and linear layers run in f32
/// ([`Cpu`](const@Cpu), the value) or in bf16 on AMX tiles ([`Cpu::BF16`]: operands rounded to bf16, f32
/// accumulation, f32 storage, as PyTorch's CPU autocast); every other op runs in f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cpu {
    precision: cpu::gemm::Precision,
}

/// The f32 CPU backend, named like a unit struct so that `Cpu.conv2d(..)` and `&Cpu` read as
/// before the backend had a precision.
#[allow(non_upper_case_globals)]
pub const Cpu: Cpu = Cpu::F32;

impl Cpu {
    /// Products in f32.
    pub const F32: Cpu = Cpu {
        precision: cpu::gemm::Precision::F32,
    };
    /// Convolutions and linear layers in bf16 (see [`cpu::gemm::Precision::Bf16`]); open it
    /// through `Device::open` (`--device cpu --dtype bf16`), which checks the CPU has AMX.
    pub const BF16: Cpu = Cpu {
        precision: cpu::gemm::Precision::Bf16,
    };

    /// The precision of the products.
    pub fn precision(&self) -> cpu::gemm::Precision {
        self.precision
    }

    /// The type the products compute in.
    pub fn dtype(&self) -> crate::dtype::DType {
        match self.precision {
            cpu::gemm::Precision::F32 => crate::dtype::DType::F32,
            cpu::gemm::Precision::Bf16 => crate::dtype::DType::BF16,
        }
    }
}

/// `(b, c)` of `y` ([B, C, ...]) and the row width of a per-(sample, channel) table `t` that
/// must be `[B, ≥ need·C]`, or an error naming `what` and both shapes.
fn per_channel_table(
    y: &Tensor,
    t: &Tensor,
    need: usize,
    what: &str,
) -> Result<(usize, usize, usize)> {
    match (y.shape(), t.shape()) {
        ([b, c, ..], [tb, tc]) if tb == b && c.checked_mul(need).is_some_and(|n| *tc >= n) => {
            Ok((*b, *c, *tc))
        }
        (ys, ts) => Err(Error::shape(
            what,
            format!(
                "a table of shape {ts:?} does not give {need} value(s) per sample and channel \
                 of {ys:?}"
            ),
        )),
    }
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

fn apply_epilogue(y: &mut Tensor, epi: Epilogue<Tensor>) -> Result<()> {
    if let Some(t) = epi.add_bc {
        let (b, c, tc) = per_channel_table(y, t, 1, "per-channel add")?;
        if y.numel() > 0 {
            let plane = y.numel() / (b * c);
            for (i, p) in y.data_mut().chunks_mut(plane).enumerate() {
                let v = t.data()[(i / c) * tc + i % c];
                p.iter_mut().for_each(|x| *x += v);
            }
        }
    }
    match epi.residual {
        Some(r) => cpu::try_add_inplace(y, r, epi.scale)?,
        None if epi.scale != 1.0 => y.data_mut().iter_mut().for_each(|v| *v *= epi.scale),
        None => {}
    }
    Ok(())
}

impl Backend for Cpu {
    type Tensor = Tensor;

    fn shape(&self, x: &Tensor) -> crate::Shape {
        crate::Shape::from(x.shape())
    }

    fn upload(&self, x: &Tensor) -> Result<Tensor> {
        x.try_clone()
    }

    fn download(&self, x: &Tensor) -> Result<Tensor> {
        x.try_clone()
    }

    fn available_memory(&self) -> Option<u64> {
        crate::tensor::available_memory()
    }

    fn conv2d(
        &self,
        conv: &Conv2d,
        x: &Tensor,
        lc: LayerCtx,
        epi: Epilogue<Tensor>,
    ) -> Result<Tensor> {
        let k = conv.weight.shape().get(2).copied().unwrap_or(1);
        let kind = match (conv.stride, k) {
            (1, 1) => Op::Conv1x1,
            (1, _) => Op::Conv3x3,
            _ => Op::ConvStrided,
        };
        let mut y = profile::time(kind, || {
            // Dense stride-1 "same" layers on the direct path keep their packed weights.
            let masked = lc.masks.and_then(|m| m.get(&conv.name)).is_some();
            if !masked && kind != Op::ConvStrided {
                if let Some(y) = cpu::conv::try_conv2d_layer(
                    x,
                    &conv.weight,
                    conv.bias.as_ref().map(Tensor::data),
                    conv.stride,
                    conv.padding,
                    conv.uid,
                    self.precision,
                ) {
                    return y.map_err(|e| crate::nn::in_layer(&conv.name, e));
                }
            }
            conv.try_forward_in(x, lc, self.precision)
        })?;
        profile::time(Op::Add, || apply_epilogue(&mut y, epi))
            .map_err(|e| crate::nn::in_layer(&conv.name, e))?;
        Ok(y)
    }

    fn linear(
        &self,
        lin: &Linear,
        x: &Tensor,
        lc: LayerCtx,
        epi: Epilogue<Tensor>,
    ) -> Result<Tensor> {
        let mut y = profile::time(Op::Linear, || lin.try_forward_in(x, lc, self.precision))?;
        profile::time(Op::Add, || apply_epilogue(&mut y, epi))
            .map_err(|e| crate::nn::in_layer(&lin.name, e))?;
        Ok(y)
    }

    fn group_norm(
        &self,
        gn: &GroupNorm,
        x: &Tensor,
        scale_shift: Option<&Tensor>,
        silu: bool,
    ) -> Result<Tensor> {
        profile::time(Op::GroupNorm, || {
            let Some(ss) = scale_shift else {
                return gn.try_forward(x, silu);
            };
            let mut n = gn.try_forward(x, false)?;
            let (b, c, tc) = per_channel_table(&n, ss, 2, "GroupNorm scale/shift")?;
            if n.numel() == 0 {
                return Ok(n);
            }
            let plane = n.numel() / (b * c);
            for (i, p) in n.data_mut().chunks_mut(plane).enumerate() {
                let row = &ss.data()[(i / c) * tc..];
                let (scale, shift) = (row[i % c], row[c + i % c]);
                p.iter_mut().for_each(|x| {
                    let v = *x * (1.0 + scale) + shift;
                    *x = if silu {
                        cpu::activation::silu_scalar(v)
                    } else {
                        v
                    }
                });
            }
            Ok(n)
        })
    }

    fn layer_norm(&self, ln: &LayerNorm, x: &Tensor) -> Result<Tensor> {
        profile::time(Op::LayerNorm, || ln.try_forward(x))
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        scale: f32,
    ) -> Result<Tensor> {
        let kind = if q.shape() == k.shape() {
            Op::AttentionSelf
        } else {
            Op::AttentionCross
        };
        profile::time(kind, || {
            cpu::try_attention_in(q, k, v, heads, scale, self.precision)
        })
    }

    fn causal_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        scale: f32,
    ) -> Result<Tensor> {
        profile::time(Op::AttentionCausal, || {
            cpu::try_causal_attention(q, k, v, heads, scale)
        })
    }

    fn activation(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        profile::time(Op::Activation, || cpu::try_activation(x, act))
    }

    fn geglu(&self, x: &Tensor) -> Result<Tensor> {
        profile::time(Op::Geglu, || cpu::try_geglu(x))
    }

    fn silu(&self, x: &Tensor) -> Result<Tensor> {
        profile::time(Op::Silu, || cpu::try_silu(x))
    }

    fn add(&self, a: &Tensor, b: &Tensor, scale: f32) -> Result<Tensor> {
        if a.shape() != b.shape() {
            return Err(Error::shape(
                "elementwise add",
                format!("shapes {:?} and {:?} differ", a.shape(), b.shape()),
            ));
        }
        profile::time(Op::Add, || {
            let mut y = a.try_clone()?;
            cpu::try_add_inplace(&mut y, b, scale)?;
            Ok(y)
        })
    }

    fn scale(&self, x: &Tensor, s: f32) -> Result<Tensor> {
        profile::time(Op::Scale, || {
            let mut y = x.try_clone()?;
            y.data_mut().iter_mut().for_each(|v| *v *= s);
            Ok(y)
        })
    }

    fn upsample_nearest(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        profile::time(Op::Upsample, || cpu::try_upsample_nearest(x, h, w))
    }

    fn cat_channels(&self, h: &Tensor, skip: &Tensor, skip_scale: f32) -> Result<Tensor> {
        if let ([hb, hn, hc], [sb, sn, sc]) = (h.shape(), skip.shape()) {
            if (hb, hn) != (sb, sn) {
                return Err(Error::shape(
                    "cat_channels",
                    format!(
                        "cannot join tokens {:?} and their skip {:?}: B and N differ",
                        h.shape(),
                        skip.shape()
                    ),
                ));
            }
            let (hc, sc) = (*hc, *sc);
            let mut out = Vec::with_capacity(hb * hn * (hc + sc));
            for r in 0..hb * hn {
                out.extend_from_slice(&h.data()[r * hc..(r + 1) * hc]);
                out.extend(
                    skip.data()[r * sc..(r + 1) * sc]
                        .iter()
                        .map(|v| v * skip_scale),
                );
            }
            return Tensor::new(vec![*hb, *hn, hc + sc], out);
        }
        // Check the shapes before scaling the skip, so a mismatch costs no copy.
        match (h.shape(), skip.shape()) {
            ([hb, _, hh, hw], [sb, _, sh, sw]) if (hb, hh, hw) == (sb, sh, sw) => {}
            (hs, ss) => {
                return Err(Error::shape(
                    "cat_channels",
                    format!(
                    "cannot join the decoder feature {hs:?} and its skip {ss:?} along channels: \
                     both must be [B, C, H, W] with the same B, H and W"
                    ),
                ));
            }
        }
        if skip_scale == 1.0 {
            return profile::time(Op::Cat, || cpu::try_cat_channels(h, skip));
        }
        let scaled = self.scale(skip, skip_scale)?;
        profile::time(Op::Cat, || cpu::try_cat_channels(h, &scaled))
    }

    fn to_tokens(&self, x: &Tensor) -> Result<Tensor> {
        profile::time(Op::Layout, || cpu::try_nchw_to_nlc(x))
    }

    fn to_image(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        profile::time(Op::Layout, || cpu::try_nlc_to_nchw(x, h, w))
    }

    fn freeu_backbone(&self, h: &mut Tensor, b: f32, v2: bool) -> Result<()> {
        profile::time(Op::FreeU, || scale_backbone(h, b, v2));
        Ok(())
    }

    fn fourier_filter(
        &self,
        x: &Tensor,
        threshold: usize,
        scale: f32,
        form: FilterForm,
    ) -> Result<Tensor> {
        profile::time(Op::FreeU, || try_fourier_filter(x, threshold, scale, form))
    }

    fn timestep_embedding(&self, p: &TimestepParams, t: &[f32]) -> Result<Tensor> {
        profile::time(Op::Timestep, || cpu::timestep_embedding(p, t))
    }

    fn cat_tokens(&self, a: &Tensor, b: &Tensor, pos: Option<&Tensor>) -> Result<Tensor> {
        let (bs, na, nb, c) = cat_tokens_dims(a.shape(), b.shape(), pos.map(|p| p.shape()))?;
        let n = na + nb;
        let mut out = Vec::with_capacity(bs * n * c);
        for s in 0..bs {
            out.extend_from_slice(&a.data()[s * na * c..(s + 1) * na * c]);
            out.extend_from_slice(&b.data()[s * nb * c..(s + 1) * nb * c]);
        }
        if let Some(p) = pos {
            for row in out.chunks_mut(n * c) {
                row.iter_mut().zip(p.data()).for_each(|(y, &q)| *y += q);
            }
        }
        Tensor::new(vec![bs, n, c], out)
    }

    fn gather_tokens(&self, x: &Tensor, rows: &[usize]) -> Result<Tensor> {
        let (bs, n, c, m) = gather_tokens_dims(x.shape(), rows)?;
        let mut out = Vec::with_capacity(bs * m * c);
        for (i, &r) in rows.iter().enumerate() {
            let at = ((i / m.max(1)) * n + r) * c;
            out.extend_from_slice(&x.data()[at..at + c]);
        }
        Tensor::new(vec![bs, m, c], out)
    }

    fn slice_channels(&self, x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
        let c = slice_channels_dims(x.shape(), start, len)?;
        let mut shape = crate::Shape::from(x.shape());
        *shape.last_mut().expect("checked rank") = len;
        let out = if c == 0 {
            Vec::new()
        } else {
            x.data()
                .chunks(c)
                .flat_map(|r| r[start..start + len].iter().copied())
                .collect()
        };
        Tensor::new(shape, out)
    }

    type Watch = ();

    fn new_watch(&self) -> Result<()> {
        Ok(())
    }

    fn watch_non_finite(&self, _: &mut (), x: &Tensor) -> Result<Option<(usize, f32)>> {
        Ok(crate::safetensors_io::first_non_finite(x.data()))
    }

    fn first_watched(&self, _: ()) -> Result<Option<(usize, usize, f32)>> {
        Ok(None)
    }
}
