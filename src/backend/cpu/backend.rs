//! `impl Backend for Cpu`: the CPU backend's one home for the graph's ops, each a call into
//! this folder's kernels, timed by `profile` when a profile is on.

use super::fourier::try_fourier_filter;
use super::fourier::FilterForm;
use super::gemm::Precision;
use super::profile::{self, Op};
use crate::backend::layer::in_layer;
use crate::backend::{
    cat_tokens_dims, gather_tokens_dims, slice_channels_dims, Activation, Backend, ConvParams,
    Epilogue, LinearParams, NormParams, TimestepParams,
};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The multi-threaded CPU reference backend. Its convolutions and linear layers run in f32
/// ([`Cpu`](const@Cpu), the value) or in bf16 on AMX tiles ([`Cpu::BF16`]: operands rounded to bf16, f32
/// accumulation, f32 storage, as PyTorch's CPU autocast); every other op runs in f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cpu {
    precision: Precision,
}

/// The f32 CPU backend, named like a unit struct so that `Cpu.conv2d(..)` and `&Cpu` read as
/// before the backend had a precision.
#[allow(non_upper_case_globals)]
pub const Cpu: Cpu = Cpu::F32;

impl Cpu {
    /// Products in f32.
    pub const F32: Cpu = Cpu {
        precision: Precision::F32,
    };
    /// Convolutions and linear layers in bf16 (see [`Precision::Bf16`]); open it
    /// through `Device::open` (`--device cpu --dtype bf16`), which checks the CPU has AMX.
    pub const BF16: Cpu = Cpu {
        precision: Precision::Bf16,
    };

    /// The precision of the products.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The type the products compute in.
    pub fn dtype(&self) -> crate::dtype::DType {
        match self.precision {
            Precision::F32 => crate::dtype::DType::F32,
            Precision::Bf16 => crate::dtype::DType::BF16,
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
        Some(r) => super::try_add_inplace(y, r, epi.scale)?,
        None if epi.scale != 1.0 => y.data_mut().iter_mut().for_each(|v| *v *= epi.scale),
        None => {}
    }
    Ok(())
}

impl Cpu {
    /// The backend of `precision` (see [`Cpu::BF16`] for what bf16 needs).
    pub(crate) fn of(precision: Precision) -> Cpu {
        Cpu { precision }
    }

    /// The convolution without its epilogue: dense layers on the direct or tile path keep their
    /// packed weights (by `uid`); masked ones pack per call.
    fn conv2d_only(&self, conv: &ConvParams, x: &Tensor) -> Result<Tensor> {
        let bias = conv.bias.map(Tensor::data);
        if conv.mask.is_none() {
            if let Some(y) = super::conv::try_conv2d_layer(
                x,
                conv.weight,
                bias,
                conv.stride,
                conv.padding,
                conv.uid,
                self.precision,
            ) {
                return y;
            }
        }
        let view = conv.mask.map(|m| move |b| m.view(b));
        let mask_fn: Option<super::masked::MaskFn> =
            view.as_ref().map(|f| f as super::masked::MaskFn);
        let (stride, pad) = (conv.stride, conv.padding);
        super::conv::try_conv2d_in(x, conv.weight, bias, stride, pad, mask_fn, self.precision)
    }
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

    fn conv2d(&self, conv: ConvParams, x: &Tensor, epi: Epilogue<Tensor>) -> Result<Tensor> {
        let k = conv.weight.shape().get(2).copied().unwrap_or(1);
        let kind = match (conv.stride, k) {
            (1, 1) => Op::Conv1x1,
            (1, _) => Op::Conv3x3,
            _ => Op::ConvStrided,
        };
        let mut y = profile::time(kind, || self.conv2d_only(&conv, x))
            .map_err(|e| in_layer(conv.name, e))?;
        profile::time(Op::Add, || apply_epilogue(&mut y, epi))
            .map_err(|e| in_layer(conv.name, e))?;
        Ok(y)
    }

    fn linear(&self, lin: LinearParams, x: &Tensor, epi: Epilogue<Tensor>) -> Result<Tensor> {
        let bias = lin.bias.map(Tensor::data);
        let view = lin.mask.map(|m| move |b| m.view(b));
        let mask_fn: Option<super::masked::MaskFn> =
            view.as_ref().map(|f| f as super::masked::MaskFn);
        let mut y = profile::time(Op::Linear, || {
            super::masked::try_linear_layer(x, lin.weight, bias, mask_fn, self.precision, lin.uid)
        })
        .map_err(|e| in_layer(lin.name, e))?;
        profile::time(Op::Add, || apply_epilogue(&mut y, epi))
            .map_err(|e| in_layer(lin.name, e))?;
        Ok(y)
    }

    fn linear_geglu(&self, lin: LinearParams, x: &Tensor) -> Result<Tensor> {
        if self.precision == Precision::F32 {
            return self.geglu(&self.linear(lin, x, Epilogue::default())?);
        }
        let bias = lin.bias.map(Tensor::data);
        let view = lin.mask.map(|m| move |b| m.view(b));
        let mask_fn: Option<super::masked::MaskFn> =
            view.as_ref().map(|f| f as super::masked::MaskFn);
        // Timed as GEGLU: the gate and its projection are one op here.
        profile::time(Op::Geglu, || {
            let (w, p) = (lin.weight, self.precision);
            super::masked::try_linear_geglu_layer(x, w, bias, mask_fn, p, lin.uid)
        })
        .map_err(|e| in_layer(lin.name, e))
    }

    fn group_norm(
        &self,
        gn: NormParams,
        x: &Tensor,
        scale_shift: Option<&Tensor>,
        silu: bool,
    ) -> Result<Tensor> {
        let norm = |silu| {
            super::try_group_norm(x, gn.groups, gn.weight.data(), gn.bias.data(), gn.eps, silu)
        };
        profile::time(Op::GroupNorm, || {
            let Some(ss) = scale_shift else {
                return norm(silu);
            };
            let mut n = norm(false)?;
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
                        super::activation::silu_scalar(v)
                    } else {
                        v
                    }
                });
            }
            Ok(n)
        })
    }

    fn layer_norm(&self, ln: NormParams, x: &Tensor) -> Result<Tensor> {
        profile::time(Op::LayerNorm, || {
            super::try_layer_norm(x, ln.weight.data(), ln.bias.data(), ln.eps)
        })
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
            super::try_attention_in(q, k, v, heads, scale, self.precision)
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
            super::try_causal_attention(q, k, v, heads, scale)
        })
    }

    fn activation(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        profile::time(Op::Activation, || super::try_activation(x, act))
    }

    fn geglu(&self, x: &Tensor) -> Result<Tensor> {
        profile::time(Op::Geglu, || super::try_geglu(x))
    }

    fn silu(&self, x: &Tensor) -> Result<Tensor> {
        profile::time(Op::Silu, || super::try_silu(x))
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
            super::try_add_inplace(&mut y, b, scale)?;
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
        profile::time(Op::Upsample, || super::try_upsample_nearest(x, h, w))
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
            return profile::time(Op::Cat, || super::try_cat_channels(h, skip));
        }
        let scaled = self.scale(skip, skip_scale)?;
        profile::time(Op::Cat, || super::try_cat_channels(h, &scaled))
    }

    fn to_tokens(&self, x: &Tensor) -> Result<Tensor> {
        profile::time(Op::Layout, || super::try_nchw_to_nlc(x))
    }

    fn to_image(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        profile::time(Op::Layout, || super::try_nlc_to_nchw(x, h, w))
    }

    fn freeu_backbone(&self, h: &mut Tensor, b: f32, v2: bool) -> Result<()> {
        profile::time(Op::FreeU, || super::freeu::try_scale_backbone(h, b, v2))
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
        profile::time(Op::Timestep, || super::timestep_embedding(p, t))
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
