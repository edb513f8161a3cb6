//! `Backend` on the GPU: each op is one (or, for layout changes and cuFFT, a few) kernel
//! launches on the device's stream. Parameters are copied to the device on a layer's first use,
//! converted to the storage dtype and, for convolutions, reordered to `[Cout, KH, KW, Cin]` so
//! the implicit GEMM reads one contiguous K row per output channel; masks are repacked in that
//! same K order, as 32-bit words, once per (mask, sampler step).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::params::{AttentionParams, ConvGemmParams};
use super::{driver, Gpu, GpuTensor};
use crate::backend::cpu::fourier::{window, FilterForm};
use crate::backend::layer::{self, ConvParams, LayerMask, LinearParams};
use crate::backend::{Activation, Backend, Epilogue, TimestepParams};
use crate::boosters::masks::WeightMask;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{HalfType, Tensor};

/// Device copies of layer parameters, masks and cuFFT plans, made on first use.
#[derive(Default)]
pub struct ParamCache {
    layers: Mutex<HashMap<u64, Arc<LayerParams>>>,
    norms: Mutex<HashMap<u64, Arc<NormParams>>>,
    masks: Mutex<HashMap<(u64, usize), Arc<GpuMask>>>,
    ffts: Mutex<HashMap<(usize, usize, usize), FftPlans>>,
}

impl ParamCache {
    /// Drops the device copies of the layers `uids` (a model being unloaded); they are made
    /// again on their next use.
    pub(crate) fn evict(&self, uids: &[u64]) {
        let uids: std::collections::HashSet<u64> = uids.iter().copied().collect();
        self.layers
            .lock()
            .expect("cache")
            .retain(|k, _| !uids.contains(k));
        self.norms
            .lock()
            .expect("cache")
            .retain(|k, _| !uids.contains(k));
    }

    /// How many layers' parameters are on the device.
    pub(crate) fn resident(&self) -> usize {
        self.layers.lock().expect("cache").len() + self.norms.lock().expect("cache").len()
    }
}

struct LayerParams {
    w: CudaSlice<u8>,
    bias: Option<CudaSlice<f32>>,
}

struct NormParams {
    gamma: CudaSlice<f32>,
    beta: CudaSlice<f32>,
}

/// Masks of one weight at one step: `[samples][N][kwords]` words, GEMM K order.
struct GpuMask {
    words: CudaSlice<u32>,
    samples: usize,
    kwords: usize,
}

struct FftPlans {
    r2c: cudarc::cufft::CudaFft,
    c2r: cudarc::cufft::CudaFft,
}

/// Generated masks (MaskUNet's hyper-network) are new every call: past this many cached mask
/// buffers the cache starts over rather than grow without bound.
const MASK_CACHE_LIMIT: usize = 512;

/// f32 values as `dtype` storage bytes (round to nearest even, as the GPU's `cvt.rn`).
fn to_storage(data: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => bytemuck::cast_slice(data).to_vec(),
        DType::F16 => data
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
        DType::BF16 => data
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
    }
}

/// `[Cout, Cin, KH, KW]` → `[Cout, KH, KW, Cin]`; the index map is shared with the masks.
fn conv_k_order(cin: usize, kh: usize, kw: usize) -> Vec<usize> {
    let mut order = Vec::with_capacity(cin * kh * kw);
    for ky in 0..kh {
        for kx in 0..kw {
            for ci in 0..cin {
                order.push((ci * kh + ky) * kw + kx);
            }
        }
    }
    order
}

/// The K order of a weight's rows in the GEMM: `(ky, kx, ci)` for a convolution, as stored.
fn k_order(shape: &[usize]) -> Vec<usize> {
    match shape {
        [_, cin, kh, kw] => conv_k_order(*cin, *kh, *kw),
        s => (0..s[1..].iter().product()).collect(),
    }
}

/// A weight as the GEMM reads it: `[N, K]` rows in `k_order`.
fn gemm_weight(weight: &Tensor) -> Vec<f32> {
    let order = k_order(weight.shape());
    let mut out = Vec::with_capacity(weight.numel());
    for row in weight.data().chunks(order.len()) {
        out.extend(order.iter().map(|&i| row[i]));
    }
    out
}

/// A weight in the GEMM's layout and the device's storage type. A checkpoint's f16/bf16 weight
/// kept as stored (`Tensor::stored_half`) in the device's own type is reordered as bits, with
/// no f32 copy on the host.
fn gemm_weight_storage(weight: &Tensor, dtype: DType) -> Vec<u8> {
    let stored = weight.stored_half().filter(|(h, _)| {
        matches!(
            (h, dtype),
            (HalfType::F16, DType::F16) | (HalfType::BF16, DType::BF16)
        )
    });
    let Some((_, raw)) = stored else {
        return to_storage(&gemm_weight(weight), dtype);
    };
    let order = k_order(weight.shape());
    let mut out = Vec::with_capacity(raw.len());
    for row in raw.chunks(2 * order.len()) {
        for &i in &order {
            out.extend_from_slice(&row[2 * i..2 * i + 2]);
        }
    }
    out
}

/// A weight's masks at `step` as the GEMM reads them: `[samples][N][kwords]` 32-bit words, bit
/// `kk % 32` of word `kk / 32` keeping element `kk` of the row in `k_order`.
fn gemm_mask_words(mask: &WeightMask, shape: &[usize], step: usize) -> (Vec<u32>, usize, usize) {
    let order = k_order(shape);
    let (n, kwords) = (mask.rows(), order.len().div_ceil(32));
    let samples = mask.batch.unwrap_or(1);
    let mut words = vec![0u32; samples * n * kwords];
    for b in 0..samples {
        let view = mask.view(step, b);
        for r in 0..n {
            let row = &mut words[(b * n + r) * kwords..][..kwords];
            for (kk, &i) in order.iter().enumerate() {
                if view.bit(r, i) {
                    row[kk / 32] |= 1 << (kk % 32);
                }
            }
        }
    }
    (words, samples, kwords)
}

fn launch_1d(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 1 << 20) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::TooLarge {
        what: what.to_string(),
        detail: format!("{v} is too large for the GPU kernels"),
    })
}

/// The GPU kernels put the batch on the grid's z (or y) axis, at most 65535.
fn batch_too_large(b: usize) -> Error {
    Error::TooLarge {
        what: "batch".into(),
        detail: format!("{b} samples exceed the GPU kernels' 65535"),
    }
}

fn shape_err(what: &str, msg: String) -> Error {
    Error::input(what, msg)
}

/// Where a GEMM reads its A operand: the implicit-im2col geometry of kernels/gemm.cu.
#[derive(Clone, Copy)]
struct Geometry {
    samples: usize,
    h: usize,
    w: usize,
    cin: usize,
    ho: usize,
    wo: usize,
    kw: usize,
    stride: usize,
    pad_top: usize,
    pad_left: usize,
}

impl Gpu {
    fn new_tensor(&self, shape: impl Into<crate::Shape>) -> Result<GpuTensor> {
        let shape = shape.into();
        let bytes = shape.iter().product::<usize>() * self.dtype.size();
        let buf = self.alloc::<u8>(bytes)?;
        if self.poisoned() {
            // SAFETY: the range is the buffer just allocated, on this backend's stream.
            unsafe {
                cudarc::driver::result::memset_d8_async(
                    self.ptr(&buf),
                    0xff,
                    bytes,
                    self.stream.cu_stream(),
                )
            }
            .map_err(driver("poisoning a buffer"))?;
        }
        Ok(GpuTensor {
            buf: Arc::new(buf),
            shape,
            dtype: self.dtype,
        })
    }

    fn kernel(&self, family: &str) -> String {
        format!("{family}_{}", self.dtype.suffix())
    }

    fn check_dtype(&self, t: &GpuTensor) -> Result<()> {
        if t.dtype != self.dtype {
            return Err(Error::shape(
                "gpu",
                format!("a {:?} tensor given to a {:?} device", t.dtype, self.dtype),
            ));
        }
        Ok(())
    }

    fn layer_params(
        &self,
        uid: u64,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<Arc<LayerParams>> {
        if let Some(p) = self.cache.layers.lock().expect("cache").get(&uid) {
            return Ok(p.clone());
        }
        let params = Arc::new(LayerParams {
            w: self.upload_slice(&gemm_weight_storage(weight, self.dtype))?,
            bias: bias.map(|b| self.upload_slice(b.data())).transpose()?,
        });
        self.cache
            .layers
            .lock()
            .expect("cache")
            .insert(uid, params.clone());
        Ok(params)
    }

    fn norm_params(&self, uid: u64, gamma: &Tensor, beta: &Tensor) -> Result<Arc<NormParams>> {
        if let Some(p) = self.cache.norms.lock().expect("cache").get(&uid) {
            return Ok(p.clone());
        }
        let params = Arc::new(NormParams {
            gamma: self.upload_slice(gamma.data())?,
            beta: self.upload_slice(beta.data())?,
        });
        self.cache
            .norms
            .lock()
            .expect("cache")
            .insert(uid, params.clone());
        Ok(params)
    }

    /// The device masks of a layer (its weight `weight`) at the mask's step, if it is masked.
    fn layer_mask(&self, mask: Option<LayerMask>, weight: &Tensor) -> Result<Option<Arc<GpuMask>>> {
        let Some(LayerMask {
            weights: mask,
            step,
        }) = mask
        else {
            return Ok(None);
        };
        let key = (mask.uid(), if mask.steps.is_some() { step } else { 0 });
        if let Some(m) = self.cache.masks.lock().expect("cache").get(&key) {
            return Ok(Some(m.clone()));
        }
        let m = Arc::new(self.pack_mask(mask, weight, step)?);
        let mut cache = self.cache.masks.lock().expect("cache");
        if cache.len() >= MASK_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key, m.clone());
        Ok(Some(m))
    }

    fn pack_mask(&self, mask: &WeightMask, weight: &Tensor, step: usize) -> Result<GpuMask> {
        let (words, samples, kwords) = gemm_mask_words(mask, weight.shape(), step);
        Ok(GpuMask {
            words: self.upload_slice(&words)?,
            samples,
            kwords,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        x: &GpuTensor,
        params: &LayerParams,
        n: usize,
        g: Geometry,
        mask: Option<&GpuMask>,
        epi: Epilogue<GpuTensor>,
        out_shape: crate::Shape,
    ) -> Result<GpuTensor> {
        self.check_dtype(x)?;
        let y = self.new_tensor(out_shape)?;
        if y.numel() == 0 {
            return Ok(y);
        }
        let k = g.cin * (params.w.len() / self.dtype.size() / n / g.cin);
        let m = g.ho * g.wo;
        if let Some(r) = epi.residual {
            self.check_dtype(r)?;
            if r.numel() != y.numel() {
                return Err(shape_err(
                    "residual",
                    format!("{:?} does not match the output {:?}", r.shape, y.shape),
                ));
            }
        }
        if let Some(t) = epi.add_bc {
            if t.numel() != g.samples * n {
                return Err(shape_err(
                    "time embedding",
                    format!("{:?} is not [{}, {n}]", t.shape, g.samples),
                ));
            }
        }
        let p = ConvGemmParams {
            x: self.ptr(&x.buf),
            w: self.ptr(&params.w),
            mask: mask.map_or(0, |m| self.ptr(&m.words)),
            bias: params.bias.as_ref().map_or(0, |b| self.ptr(b)),
            add_bn: epi.add_bc.map_or(0, |t| self.ptr(&t.buf)),
            residual: epi.residual.map_or(0, |r| self.ptr(&r.buf)),
            y: self.ptr(&y.buf),
            mask_sample_stride: mask.map_or(0, |m| {
                if m.samples > 1 {
                    (n * m.kwords) as i64
                } else {
                    0
                }
            }),
            h: i32_of(g.h, "height")?,
            w_in: i32_of(g.w, "width")?,
            cin: i32_of(g.cin, "channels")?,
            ho: i32_of(g.ho, "output height")?,
            wo: i32_of(g.wo, "output width")?,
            n: i32_of(n, "output channels")?,
            k: i32_of(k, "reduction length")?,
            kw: i32_of(g.kw, "kernel width")?,
            stride: i32_of(g.stride, "stride")?,
            pad_top: i32_of(g.pad_top, "padding")?,
            pad_left: i32_of(g.pad_left, "padding")?,
            kwords: i32_of(k.div_ceil(32), "mask words")?,
            out_scale: epi.scale,
        };
        i32_of(m * n, "output elements per sample")?;
        let (name, tile) = match self.dtype {
            DType::F32 => ("gemm_conv_f32".to_string(), 64),
            _ if g.cin.is_multiple_of(8) => (format!("{}_vec", self.kernel("gemm_conv")), 128),
            _ => (self.kernel("gemm_conv"), 128),
        };
        if g.samples > 65535 {
            return Err(batch_too_large(g.samples));
        }
        let cfg = LaunchConfig {
            grid_dim: (
                m.div_ceil(tile) as u32,
                n.div_ceil(tile) as u32,
                g.samples as u32,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let f = self.function(&name)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p);
        // SAFETY: the parameter struct matches the kernel's, and every address in it is a live
        // buffer of the size the geometry implies (checked above or built here).
        unsafe { b.launch(cfg) }.map_err(driver("launching the GEMM"))?;
        Ok(y)
    }

    /// One launch of an elementwise kernel over `n` outputs with the given arguments.
    fn launch(&self, name: &str, n: usize, args: &[&dyn Arg]) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let f = self.function(name)?;
        let mut b = self.stream.launch_builder(&f);
        for a in args {
            a.push(&mut b);
        }
        // SAFETY: callers pass the kernel's parameters in order with live buffers.
        unsafe { b.launch(launch_1d(n)) }.map_err(driver(name))?;
        Ok(())
    }

    fn image_dims(&self, x: &GpuTensor, what: &str) -> Result<[usize; 4]> {
        match x.shape[..] {
            [b, c, h, w] => Ok([b, c, h, w]),
            _ => Err(shape_err(
                what,
                format!("{:?} is not an image [B, C, H, W]", x.shape),
            )),
        }
    }
}

/// A kernel argument of any device-representable type (lets `launch` take a plain list).
trait Arg {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>);
}

impl<T: cudarc::driver::DeviceRepr> Arg for T {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
        b.arg(self);
    }
}

/// Blocks of the block-boundary check kernel (`first_non_finite_*`, kernels/elementwise.cu):
/// enough to keep the memory busy on a tensor of a U-Net block, few enough that the host's final
/// minimum over them is nothing.
const FIRST_NON_FINITE_BLOCKS: usize = 64;

/// Checks one device buffer of results holds.
const WATCH_SLOTS: usize = 128;

/// The block-boundary checks of one GPU forward: each launches `first_non_finite_*` into its
/// slot of a device buffer, and `first_watched` downloads the buffers once, at the call's end.
pub struct GpuWatch {
    /// (first index, its f32 bits) per block, `WATCH_SLOTS` checks per buffer pair.
    buffers: Vec<(CudaSlice<i64>, CudaSlice<u32>)>,
    /// Checks launched so far.
    checks: usize,
}

impl Backend for Gpu {
    type Tensor = GpuTensor;
    type Watch = GpuWatch;

    fn new_watch(&self) -> Result<GpuWatch> {
        Ok(GpuWatch {
            buffers: Vec::new(),
            checks: 0,
        })
    }

    fn watch_non_finite(
        &self,
        watch: &mut GpuWatch,
        x: &GpuTensor,
    ) -> Result<Option<(usize, f32)>> {
        self.check_dtype(x)?;
        let slot = watch.checks;
        if slot.is_multiple_of(WATCH_SLOTS) {
            let n = WATCH_SLOTS * FIRST_NON_FINITE_BLOCKS;
            watch
                .buffers
                .push((self.alloc::<i64>(n)?, self.alloc::<u32>(n)?));
        }
        let (idx, bits) = watch.buffers.last().expect("pushed above");
        let at = ((slot % WATCH_SLOTS) * FIRST_NON_FINITE_BLOCKS) as u64;
        let (px, pidx, pbits) = (
            self.ptr(&x.buf),
            self.ptr(idx) + at * 8,
            self.ptr(bits) + at * 4,
        );
        let n = x.numel() as i64;
        // Rank-4 tensors are stored NHWC; the kernel reports semantic (NCHW) indices.
        let (c, hw) = match x.shape[..] {
            [_, c, h, w] => (i32_of(c, "channels")?, (h * w) as i64),
            _ => (0, 0),
        };
        let f = self.function(&self.kernel("first_non_finite"))?;
        let mut l = self.stream.launch_builder(&f);
        l.arg(&px).arg(&n).arg(&c).arg(&hw).arg(&pidx).arg(&pbits);
        let cfg = LaunchConfig {
            grid_dim: (FIRST_NON_FINITE_BLOCKS as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the kernel's parameters in order; its slot lies in the buffers just sized.
        unsafe { l.launch(cfg) }.map_err(driver("first_non_finite"))?;
        watch.checks += 1;
        Ok(None)
    }

    fn first_watched(&self, watch: GpuWatch) -> Result<Option<(usize, usize, f32)>> {
        for (k, (idx, bits)) in watch.buffers.iter().enumerate() {
            let checks = (watch.checks - k * WATCH_SLOTS).min(WATCH_SLOTS);
            let n = checks * FIRST_NON_FINITE_BLOCKS;
            let (idx, bits) = (self.download_slice(idx, n)?, self.download_slice(bits, n)?);
            for s in 0..checks {
                let blocks = s * FIRST_NON_FINITE_BLOCKS..(s + 1) * FIRST_NON_FINITE_BLOCKS;
                let first = blocks.min_by_key(|&j| idx[j]).expect("blocks");
                if idx[first] != i64::MAX {
                    let slot = k * WATCH_SLOTS + s;
                    return Ok(Some((
                        slot,
                        idx[first] as usize,
                        f32::from_bits(bits[first]),
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Device memory the next call can have, for the memory plan: what the driver has free plus
    /// what the stream-ordered pool holds unused (it keeps freed memory, which the driver counts
    /// as taken). The plan counts activations as f32, so a 16-bit device holds twice as many.
    fn available_memory(&self) -> Option<u64> {
        let (free, _total) = self.stream.context().mem_get_info().ok()?;
        let pooled = super::pool_unused(self.stream.context().cu_device()).unwrap_or(0);
        Some((free as u64 + pooled) * 4 / self.dtype.size() as u64)
    }

    fn shape(&self, x: &GpuTensor) -> crate::Shape {
        x.shape.clone()
    }

    fn upload(&self, x: &Tensor) -> Result<GpuTensor> {
        let n = x.numel();
        if self.dtype == DType::F32 && x.rank() != 4 {
            // Already the storage layout and type: one copy.
            let buf = self.upload_slice(bytemuck::cast_slice::<f32, u8>(x.data()))?;
            return Ok(GpuTensor {
                buf: Arc::new(buf),
                shape: crate::Shape::from(x.shape()),
                dtype: DType::F32,
            });
        }
        let y = self.new_tensor(x.shape())?;
        let tmp = self.upload_slice(x.data())?;
        let (pt, py) = (self.ptr(&tmp), self.ptr(&y.buf));
        if let [b, c, h, w] = x.shape()[..] {
            let (b, c, hw) = (
                i32_of(b, "batch")?,
                i32_of(c, "channels")?,
                i32_of(h * w, "pixels")?,
            );
            let name = format!("nchw_f32_to_nhwc_{}", self.dtype.suffix());
            self.launch(&name, n, &[&pt, &py, &b, &c, &hw])?;
        } else {
            let nn = n as i64;
            self.launch(&self.kernel("cast_f32_to"), n, &[&pt, &py, &nn])?;
        }
        Ok(y)
    }

    fn download(&self, x: &GpuTensor) -> Result<Tensor> {
        let n = x.numel();
        let data = if let [b, c, h, w] = x.shape[..] {
            let tmp = self.alloc::<f32>(n)?;
            let (px, pt) = (self.ptr(&x.buf), self.ptr(&tmp));
            let (b, c, hw) = (
                i32_of(b, "batch")?,
                i32_of(c, "channels")?,
                i32_of(h * w, "pixels")?,
            );
            let name = format!("nhwc_{}_to_nchw_f32", x.dtype.suffix());
            self.launch(&name, n, &[&px, &pt, &b, &c, &hw])?;
            self.download_slice(&tmp, n)?
        } else if x.dtype == DType::F32 {
            let bytes = self.download_slice(&x.buf, n * 4)?;
            bytemuck::pod_collect_to_vec(&bytes)
        } else {
            let tmp = self.alloc::<f32>(n)?;
            let (px, pt, nn) = (self.ptr(&x.buf), self.ptr(&tmp), n as i64);
            self.launch(
                &format!("cast_{}_to_f32", x.dtype.suffix()),
                n,
                &[&px, &pt, &nn],
            )?;
            self.download_slice(&tmp, n)?
        };
        Tensor::new(x.shape.clone(), data)
    }

    fn conv2d(
        &self,
        conv: ConvParams,
        x: &GpuTensor,
        epi: Epilogue<GpuTensor>,
    ) -> Result<GpuTensor> {
        let [b, c, h, w] = self.image_dims(x, conv.name)?;
        let [cout, cin, kh, kw] = conv.weight.shape()[..] else {
            return Err(shape_err(
                conv.name,
                format!(
                    "weight {:?} is not [Cout, Cin, KH, KW]",
                    conv.weight.shape()
                ),
            ));
        };
        if c != cin {
            return Err(shape_err(
                conv.name,
                format!("input has {c} channels, the layer takes {cin}"),
            ));
        }
        let p = conv.padding;
        let (hp, wp) = (h + p.top + p.bottom, w + p.left + p.right);
        if hp < kh || wp < kw {
            return Err(shape_err(
                conv.name,
                format!("input {h}×{w} is smaller than the kernel"),
            ));
        }
        let (ho, wo) = ((hp - kh) / conv.stride + 1, (wp - kw) / conv.stride + 1);
        let params = self.layer_params(conv.uid, conv.weight, conv.bias)?;
        let mask = self.layer_mask(conv.mask, conv.weight)?;
        let g = Geometry {
            samples: b,
            h,
            w,
            cin,
            ho,
            wo,
            kw,
            stride: conv.stride,
            pad_top: p.top,
            pad_left: p.left,
        };
        self.gemm(
            x,
            &params,
            cout,
            g,
            mask.as_deref(),
            epi,
            crate::Shape::from([b, cout, ho, wo]),
        )
    }

    fn linear(
        &self,
        lin: LinearParams,
        x: &GpuTensor,
        epi: Epilogue<GpuTensor>,
    ) -> Result<GpuTensor> {
        let [n, k] = lin.weight.shape()[..] else {
            return Err(shape_err(
                lin.name,
                format!("weight {:?} is not [out, in]", lin.weight.shape()),
            ));
        };
        let last = *x.shape.last().unwrap_or(&0);
        if x.shape.len() < 2 || last != k {
            return Err(shape_err(
                lin.name,
                format!("input {:?} does not end in {k}", x.shape),
            ));
        }
        let params = self.layer_params(lin.uid, lin.weight, lin.bias)?;
        let mask = self.layer_mask(lin.mask, lin.weight)?;
        let rows = x.numel() / k;
        // One GEMM over all rows unless something differs per sample.
        let per_sample = mask.as_ref().is_some_and(|m| m.samples > 1) || epi.add_bc.is_some();
        let samples = if per_sample { x.shape[0] } else { 1 };
        let m = rows / samples;
        let g = Geometry {
            samples,
            h: 1,
            w: m,
            cin: k,
            ho: 1,
            wo: m,
            kw: 1,
            stride: 1,
            pad_top: 0,
            pad_left: 0,
        };
        let mut out_shape = x.shape.clone();
        *out_shape.last_mut().expect("rank ≥ 2") = n;
        self.gemm(x, &params, n, g, mask.as_deref(), epi, out_shape)
    }

    fn group_norm(
        &self,
        gn: layer::NormParams,
        x: &GpuTensor,
        scale_shift: Option<&GpuTensor>,
        silu: bool,
    ) -> Result<GpuTensor> {
        let [b, c, h, w] = self.image_dims(x, "group_norm")?;
        if c != gn.weight.numel() {
            return Err(shape_err(
                "group_norm",
                format!("{c} channels, the layer has {}", gn.weight.numel()),
            ));
        }
        let params = self.norm_params(gn.uid, gn.weight, gn.bias)?;
        let y = self.new_tensor(x.shape.clone())?;
        if y.numel() == 0 {
            return Ok(y);
        }
        if b > 65535 {
            return Err(batch_too_large(b));
        }
        let f = self.function(&self.kernel("group_norm"))?;
        let (px, pg, pb, py) = (
            self.ptr(&x.buf),
            self.ptr(&params.gamma),
            self.ptr(&params.beta),
            self.ptr(&y.buf),
        );
        let pss = scale_shift.map_or(0u64, |t| self.ptr(&t.buf));
        let (hw, ci, gi) = (i32_of(h * w, "pixels")?, c as i32, gn.groups as i32);
        let silu = i32::from(silu);
        let mut l = self.stream.launch_builder(&f);
        l.arg(&px).arg(&pg).arg(&pb).arg(&pss).arg(&py);
        l.arg(&hw).arg(&ci).arg(&gi).arg(&gn.eps).arg(&silu);
        let cfg = LaunchConfig {
            grid_dim: (gn.groups as u32, b as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments in the kernel's order; buffers sized by the checked shape.
        unsafe { l.launch(cfg) }.map_err(driver("launching group_norm"))?;
        Ok(y)
    }

    fn layer_norm(&self, ln: layer::NormParams, x: &GpuTensor) -> Result<GpuTensor> {
        let d = ln.weight.numel();
        if d == 0 || x.shape.last() != Some(&d) {
            return Err(shape_err(
                "layer_norm",
                format!("{:?} does not end in {d}", x.shape),
            ));
        }
        let params = self.norm_params(ln.uid, ln.weight, ln.bias)?;
        let y = self.new_tensor(x.shape.clone())?;
        if y.numel() == 0 {
            return Ok(y);
        }
        let f = self.function(&self.kernel("layer_norm"))?;
        let (px, pg, pb, py) = (
            self.ptr(&x.buf),
            self.ptr(&params.gamma),
            self.ptr(&params.beta),
            self.ptr(&y.buf),
        );
        let di = d as i32;
        let mut l = self.stream.launch_builder(&f);
        l.arg(&px).arg(&pg).arg(&pb).arg(&py).arg(&di).arg(&ln.eps);
        let cfg = LaunchConfig {
            grid_dim: ((x.numel() / d) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: as above.
        unsafe { l.launch(cfg) }.map_err(driver("launching layer_norm"))?;
        Ok(y)
    }

    fn attention(
        &self,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        heads: usize,
        scale: f32,
    ) -> Result<GpuTensor> {
        self.attention_masked(q, k, v, heads, scale, false)
    }

    fn causal_attention(
        &self,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        heads: usize,
        scale: f32,
    ) -> Result<GpuTensor> {
        self.attention_masked(q, k, v, heads, scale, true)
    }

    fn activation(&self, x: &GpuTensor, act: Activation) -> Result<GpuTensor> {
        let family = match act {
            Activation::Gelu => "gelu",
            Activation::QuickGelu => "quick_gelu",
        };
        let y = self.new_tensor(x.shape.clone())?;
        let (px, py, n) = (self.ptr(&x.buf), self.ptr(&y.buf), x.numel() as i64);
        self.launch(&self.kernel(family), x.numel(), &[&px, &py, &n])?;
        Ok(y)
    }

    fn geglu(&self, x: &GpuTensor) -> Result<GpuTensor> {
        let last = *x.shape.last().unwrap_or(&0);
        if !last.is_multiple_of(2) {
            return Err(shape_err(
                "geglu",
                format!("{:?} has an odd last dimension", x.shape),
            ));
        }
        let inner = last / 2;
        let mut shape = x.shape.clone();
        *shape.last_mut().expect("checked") = inner;
        let y = self.new_tensor(shape)?;
        let (px, py) = (self.ptr(&x.buf), self.ptr(&y.buf));
        let (m, i) = ((x.numel() / last) as i64, inner as i32);
        self.launch(&self.kernel("geglu"), y.numel(), &[&px, &py, &m, &i])?;
        Ok(y)
    }

    fn silu(&self, x: &GpuTensor) -> Result<GpuTensor> {
        let y = self.new_tensor(x.shape.clone())?;
        let (px, py, n) = (self.ptr(&x.buf), self.ptr(&y.buf), x.numel() as i64);
        self.launch(&self.kernel("silu"), x.numel(), &[&px, &py, &n])?;
        Ok(y)
    }

    fn add(&self, a: &GpuTensor, b: &GpuTensor, scale: f32) -> Result<GpuTensor> {
        if a.shape != b.shape {
            return Err(shape_err("add", format!("{:?} and {:?}", a.shape, b.shape)));
        }
        let y = self.new_tensor(a.shape.clone())?;
        let (pa, pb, py, n) = (
            self.ptr(&a.buf),
            self.ptr(&b.buf),
            self.ptr(&y.buf),
            a.numel() as i64,
        );
        self.launch(&self.kernel("add"), a.numel(), &[&pa, &pb, &py, &n, &scale])?;
        Ok(y)
    }

    fn scale(&self, x: &GpuTensor, s: f32) -> Result<GpuTensor> {
        let y = self.new_tensor(x.shape.clone())?;
        let (px, py, n) = (self.ptr(&x.buf), self.ptr(&y.buf), x.numel() as i64);
        self.launch(&self.kernel("scale"), x.numel(), &[&px, &py, &n, &s])?;
        Ok(y)
    }

    fn upsample_nearest(&self, x: &GpuTensor, oh: usize, ow: usize) -> Result<GpuTensor> {
        let [b, c, h, w] = self.image_dims(x, "upsample")?;
        let y = self.new_tensor([b, c, oh, ow])?;
        let (px, py) = (self.ptr(&x.buf), self.ptr(&y.buf));
        let dims = [b, h, w, c, oh, ow].map(|v| v as i32);
        let [bi, hi, wi, ci, ohi, owi] = dims;
        self.launch(
            &self.kernel("upsample_nearest"),
            y.numel(),
            &[&px, &py, &bi, &hi, &wi, &ci, &ohi, &owi],
        )?;
        Ok(y)
    }

    fn cat_channels(&self, h: &GpuTensor, skip: &GpuTensor, skip_scale: f32) -> Result<GpuTensor> {
        // Tokens [B, N, C] are rows of channels as an NHWC image is: the same kernel joins them.
        if let (&[b, n, c], &[bs, ns, cs]) = (&h.shape[..], &skip.shape[..]) {
            let y = self.cat_images(
                &h.view([b, c, n, 1]),
                &skip.view([bs, cs, ns, 1]),
                skip_scale,
            )?;
            let [yb, yc, yn, _] = self.image_dims(&y, "cat_channels")?;
            return Ok(y.view([yb, yn, yc]));
        }
        self.cat_images(h, skip, skip_scale)
    }

    fn to_tokens(&self, x: &GpuTensor) -> Result<GpuTensor> {
        let [b, c, h, w] = self.image_dims(x, "to_tokens")?;
        Ok(x.view([b, h * w, c]))
    }

    fn to_image(&self, x: &GpuTensor, h: usize, w: usize) -> Result<GpuTensor> {
        match x.shape[..] {
            [b, n, c] if n == h * w => Ok(x.view([b, c, h, w])),
            _ => Err(shape_err(
                "to_image",
                format!("{:?} is not [B, {}, C]", x.shape, h * w),
            )),
        }
    }

    fn freeu_backbone(&self, h: &mut GpuTensor, b: f32, v2: bool) -> Result<()> {
        let [batch, c, hh, ww] = self.image_dims(h, "h")?;
        if h.numel() == 0 {
            return Ok(());
        }
        if Arc::strong_count(&h.buf) > 1 {
            // Another view shares the buffer: scale a private copy.
            *h = self.scale(h, 1.0)?;
        }
        let f = self.function(&self.kernel("freeu_backbone"))?;
        let (ph, hw, ci, v2) = (self.ptr(&h.buf), (hh * ww) as i32, c as i32, i32::from(v2));
        let mut l = self.stream.launch_builder(&f);
        l.arg(&ph).arg(&hw).arg(&ci).arg(&b).arg(&v2);
        let cfg = LaunchConfig {
            grid_dim: (batch as u32, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments in the kernel's order; the buffer holds the checked shape.
        unsafe { l.launch(cfg) }.map_err(driver("launching freeu_backbone"))?;
        Ok(())
    }

    fn fourier_filter(
        &self,
        x: &GpuTensor,
        threshold: usize,
        scale: f32,
        form: FilterForm,
    ) -> Result<GpuTensor> {
        let [b, c, h, w] = self.image_dims(x, "skip")?;
        let (rows, cols) = (window(h, threshold), window(w, threshold));
        if rows.is_empty() || cols.is_empty() || scale == 1.0 || x.numel() == 0 {
            return Ok(x.clone());
        }
        if b > 65535 {
            return Err(batch_too_large(b));
        }
        let (u0, nu, v0, nv) = (
            rows[0] as i32,
            rows.len() as i32,
            cols[0] as i32,
            cols.len() as i32,
        );
        let few = rows.len() * cols.len() <= 16;
        // cuFFT needs both extents above 1; the direct form is exact, so it serves those too.
        let direct = few && (form == FilterForm::Direct || h == 1 || w == 1);
        let y = self.new_tensor(x.shape.clone())?;
        let (px, py) = (self.ptr(&x.buf), self.ptr(&y.buf));
        let (hi, wi, ci) = (h as i32, w as i32, c as i32);
        if direct {
            let f = self.function(&self.kernel("freeu_filter_direct"))?;
            let mut l = self.stream.launch_builder(&f);
            l.arg(&px).arg(&py).arg(&hi).arg(&wi).arg(&ci);
            l.arg(&u0).arg(&nu).arg(&v0).arg(&nv).arg(&scale);
            let cfg = LaunchConfig {
                grid_dim: (c.div_ceil(32) as u32, b as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: arguments in the kernel's order.
            unsafe { l.launch(cfg) }.map_err(driver("launching freeu_filter_direct"))?;
            return Ok(y);
        }
        if h == 1 || w == 1 {
            return Err(Error::Unsupported {
                field: "FreeU threshold on a 1-pixel-wide skip".into(),
                value: threshold.to_string(),
            });
        }
        // SAFETY: only tries to dlopen the library.
        if !unsafe { cudarc::cufft::sys::is_culib_present() } {
            return Err(Error::DeviceUnavailable {
                device: "cufft".into(),
                msg: "cuFFT (libcufft) is not installed; the direct FreeU filter \
                 (--freeu-filter direct) is exact and needs no cuFFT for thresholds up to 2"
                    .into(),
            });
        }
        let planes = b * c;
        let (hw, wh) = (h * w, w / 2 + 1);
        let mut real = self.alloc::<f32>(planes * hw)?;
        let mut spec = self.alloc::<cudarc::cufft::sys::float2>(planes * h * wh)?;
        let (pr, bi, hwi) = (self.ptr(&real), b as i32, hw as i32);
        self.launch(
            &self.kernel("freeu_to_planes"),
            planes * hw,
            &[&px, &pr, &bi, &hwi, &ci],
        )?;
        {
            let mut plans = self.cache.ffts.lock().expect("cache");
            let p = match plans.entry((planes, h, w)) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    let make = |kind| {
                        cudarc::cufft::CudaFft::plan_many(
                            &[h as i32, w as i32],
                            None,
                            1,
                            0,
                            None,
                            1,
                            0,
                            kind,
                            planes as i32,
                            self.stream.clone(),
                        )
                        .map_err(|e| Error::Cuda {
                            during: format!("making a cuFFT plan for {planes}×{h}×{w}"),
                            code: format!("{e:?}"),
                        })
                    };
                    use cudarc::cufft::sys::cufftType as K;
                    let p = FftPlans {
                        r2c: make(K::CUFFT_R2C)?,
                        c2r: make(K::CUFFT_C2R)?,
                    };
                    slot.insert(p)
                }
            };
            p.r2c.exec_r2c(&real, &mut spec).map_err(|e| Error::Cuda {
                during: "running cuFFT R2C".into(),
                code: format!("{e:?}"),
            })?;
            let ps = self.ptr(&spec);
            let n = planes as i64;
            self.launch(
                "freeu_spectrum_scale",
                planes * h * wh,
                &[&ps, &n, &hi, &wi, &u0, &nu, &v0, &nv, &scale],
            )?;
            p.c2r
                .exec_c2r(&mut spec, &mut real)
                .map_err(|e| Error::Cuda {
                    during: "running cuFFT C2R".into(),
                    code: format!("{e:?}"),
                })?;
        }
        let (pr, inv) = (self.ptr(&real), 1.0f32 / hw as f32);
        self.launch(
            &self.kernel("freeu_from_planes"),
            planes * hw,
            &[&pr, &py, &bi, &hwi, &ci, &inv],
        )?;
        Ok(y)
    }

    fn cat_tokens(
        &self,
        a: &GpuTensor,
        b: &GpuTensor,
        pos: Option<&GpuTensor>,
    ) -> Result<GpuTensor> {
        let (bs, na, nb, c) =
            crate::backend::cat_tokens_dims(&a.shape, &b.shape, pos.map(|p| &p.shape[..]))?;
        let y = self.new_tensor([bs, na + nb, c])?;
        let (pa, pb, py) = (self.ptr(&a.buf), self.ptr(&b.buf), self.ptr(&y.buf));
        // Without a table the kernel never reads `pos`; any live pointer fills the slot.
        let pp = pos.map_or(pa, |p| self.ptr(&p.buf));
        let dims = [
            i32_of(bs, "batch")?,
            i32_of(na, "tokens")?,
            i32_of(nb, "tokens")?,
            i32_of(c, "channels")?,
            i32::from(pos.is_some()),
        ];
        let [bi, nai, nbi, ci, has] = dims;
        self.launch(
            &self.kernel("cat_tokens"),
            y.numel(),
            &[&pa, &pb, &pp, &py, &bi, &nai, &nbi, &ci, &has],
        )?;
        Ok(y)
    }

    fn gather_tokens(&self, x: &GpuTensor, rows: &[usize]) -> Result<GpuTensor> {
        let (bs, n, c, m) = crate::backend::gather_tokens_dims(&x.shape, rows)?;
        let y = self.new_tensor([bs, m, c])?;
        if y.numel() == 0 {
            return Ok(y);
        }
        let idx: Vec<i32> = rows
            .iter()
            .map(|&r| i32_of(r, "token index"))
            .collect::<Result<_>>()?;
        let ib = self.upload_slice(&idx)?;
        let (px, pi, py) = (self.ptr(&x.buf), self.ptr(&ib), self.ptr(&y.buf));
        let (ni, mi, ci, total) = (
            i32_of(n, "tokens")?,
            i32_of(m, "tokens")?,
            i32_of(c, "channels")?,
            y.numel() as i64,
        );
        self.launch(
            &self.kernel("gather_tokens"),
            y.numel(),
            &[&px, &pi, &py, &ni, &mi, &ci, &total],
        )?;
        Ok(y)
    }

    fn slice_channels(&self, x: &GpuTensor, start: usize, len: usize) -> Result<GpuTensor> {
        let c = crate::backend::slice_channels_dims(&x.shape, start, len)?;
        let mut shape = x.shape.clone();
        if let Some(last) = shape.last_mut() {
            *last = len;
        }
        let y = self.new_tensor(shape)?;
        if y.numel() == 0 {
            return Ok(y);
        }
        let (px, py) = (self.ptr(&x.buf), self.ptr(&y.buf));
        let (rows, cx, st, cy) = (
            (x.numel() / c) as i64,
            i32_of(c, "channels")?,
            i32_of(start, "channel")?,
            i32_of(len, "channels")?,
        );
        self.launch(
            &self.kernel("slice_channels"),
            y.numel(),
            &[&px, &py, &rows, &cx, &st, &cy],
        )?;
        Ok(y)
    }

    fn timestep_embedding(&self, ts: &TimestepParams, t: &[f32]) -> Result<GpuTensor> {
        let y = self.new_tensor([t.len(), ts.dim])?;
        let tb = self.upload_slice(t)?;
        let (pt, py) = (self.ptr(&tb), self.ptr(&y.buf));
        let (b, dim, flip) = (t.len() as i32, ts.dim as i32, i32::from(ts.flip_sin_to_cos));
        self.launch(
            &self.kernel("timestep_embedding"),
            y.numel(),
            &[&pt, &py, &b, &dim, &flip, &ts.downscale_freq_shift],
        )?;
        Ok(y)
    }
}

impl Gpu {
    /// `Backend::cat_channels` of images.
    fn cat_images(&self, h: &GpuTensor, skip: &GpuTensor, skip_scale: f32) -> Result<GpuTensor> {
        let [b, ch, hh, ww] = self.image_dims(h, "h")?;
        let [bs, cs, hs, ws] = self.image_dims(skip, "skip")?;
        if (b, hh, ww) != (bs, hs, ws) {
            return Err(shape_err(
                "skip",
                format!("{:?} does not match h {:?}", skip.shape, h.shape),
            ));
        }
        let y = self.new_tensor([b, ch + cs, hh, ww])?;
        let (ph, ps, py) = (self.ptr(&h.buf), self.ptr(&skip.buf), self.ptr(&y.buf));
        let (rows, chi, csi) = ((b * hh * ww) as i64, ch as i32, cs as i32);
        self.launch(
            &self.kernel("concat_channels"),
            y.numel(),
            &[&ph, &ps, &py, &rows, &chi, &csi, &skip_scale],
        )?;
        Ok(y)
    }

    /// `Backend::attention`, or with `causal` `Backend::causal_attention`.
    fn attention_masked(
        &self,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        heads: usize,
        scale: f32,
        causal: bool,
    ) -> Result<GpuTensor> {
        let ([b, nq, inner], [bk, nk, ik], [bv, nv, iv]) = (
            q.shape[..]
                .try_into()
                .map_err(|_| shape_err("q", format!("{:?}", q.shape)))?,
            k.shape[..]
                .try_into()
                .map_err(|_| shape_err("k", format!("{:?}", k.shape)))?,
            v.shape[..]
                .try_into()
                .map_err(|_| shape_err("v", format!("{:?}", v.shape)))?,
        );
        let bad = heads == 0 || nk == 0 || b > 65535 || heads > 65535;
        if bad || (bk, bv) != (b, b) || ik != inner || iv != inner || nv != nk || inner % heads != 0
        {
            return Err(shape_err(
                "attention",
                format!(
                    "q {:?}, k {:?}, v {:?}, {heads} heads",
                    q.shape, k.shape, v.shape
                ),
            ));
        }
        let d = inner / heads;
        // Tensor cores for 16-bit storage at the head dims SD uses; the SIMT form otherwise.
        let tc_dp = [48, 64, 80, 96, 128, 160]
            .into_iter()
            .find(|&dp| d <= dp)
            .filter(|_| self.dtype != DType::F32 && d.is_multiple_of(8));
        let simt_dpl = match d {
            0..=64 => 2,
            65..=96 => 3,
            97..=160 => 5,
            161..=256 => 8,
            257..=512 => 16,
            _ => {
                return Err(Error::Unsupported {
                    field: "attention head dim".into(),
                    value: d.to_string(),
                })
            }
        };
        let o = self.new_tensor(q.shape.clone())?;
        if o.numel() == 0 {
            return Ok(o);
        }
        let p = AttentionParams {
            q: self.ptr(&q.buf),
            k: self.ptr(&k.buf),
            v: self.ptr(&v.buf),
            o: self.ptr(&o.buf),
            q_batch: (nq * inner) as i64,
            k_batch: (nk * inner) as i64,
            v_batch: (nk * inner) as i64,
            o_batch: (nq * inner) as i64,
            q_row: inner as i32,
            k_row: inner as i32,
            v_row: inner as i32,
            o_row: inner as i32,
            nq: i32_of(nq, "query tokens")?,
            nk: i32_of(nk, "key tokens")?,
            heads: heads as i32,
            d: d as i32,
            scale,
            causal: causal as i32,
        };
        let suffix = self.dtype.suffix();
        let (f, smem, rows) = match tc_dp {
            Some(dp) => {
                let f = self.function(&format!("attention_tc_{suffix}_d{dp}"))?;
                (f, (2 * 64 * (dp + 8) * 2) as u32, 64)
            }
            None => {
                let f = self.function(&format!("attention_{suffix}_d{simt_dpl}"))?;
                (f, ((80 * d + 32) * 4) as u32, 16)
            }
        };
        if smem > 48 * 1024 {
            use cudarc::driver::sys::CUfunction_attribute_enum as A;
            f.set_attribute(
                A::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .map_err(driver("raising attention's shared memory limit"))?;
        }
        let cfg = LaunchConfig {
            grid_dim: (nq.div_ceil(rows) as u32, heads as u32, b as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: smem,
        };
        let mut l = self.stream.launch_builder(&f);
        l.arg(&p);
        // SAFETY: the struct matches the kernel's; buffers are sized by the checked shapes.
        unsafe { l.launch(cfg) }.map_err(driver("launching attention"))?;
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Cpu, Padding};
    use crate::nn::fresh_uid;

    /// The kernel's addressing (`a_offset`, the mask-bit test and the row layout of
    /// kernels/gemm.cu), run on the host over the data this module prepares for it.
    #[allow(clippy::too_many_arguments)]
    fn mirror(
        x_nhwc: &[f32],
        w: &[f32],
        words: &[u32],
        kwords: usize,
        per_sample: bool,
        [b, cin, h, wd]: [usize; 4],
        (n, kw, k): (usize, usize, usize),
        (ho, wo, stride, top, left): (usize, usize, usize, usize, usize),
    ) -> Vec<f32> {
        let mut y = vec![0f32; b * n * ho * wo]; // NCHW, to compare with the CPU
        for s in 0..b {
            let mask = &words[if per_sample { s * n * kwords } else { 0 }..];
            for m in 0..ho * wo {
                let (oy, ox) = (m / wo, m % wo);
                for nn in 0..n {
                    let mut acc = 0f64;
                    for kk in 0..k {
                        let (tap, ci) = (kk / cin, kk % cin);
                        let (ky, kx) = (tap / kw, tap % kw);
                        let iy = (oy * stride + ky) as isize - top as isize;
                        let ix = (ox * stride + kx) as isize - left as isize;
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                            continue;
                        }
                        if mask[nn * kwords + kk / 32] >> (kk % 32) & 1 == 0 {
                            continue;
                        }
                        let a = x_nhwc[((s * h + iy as usize) * wd + ix as usize) * cin + ci];
                        acc += a as f64 * w[nn * k + kk] as f64;
                    }
                    y[((s * n + nn) * ho + oy) * wo + ox] = acc as f32;
                }
            }
        }
        y
    }

    /// Weight reordering, mask packing and the implicit-im2col addressing together give the CPU's
    /// masked convolution (stride 2, asymmetric padding, per-sample masks, ragged sizes).
    #[test]
    fn gemm_operands_reproduce_the_cpu_masked_conv() {
        for (seed, (cin, cout, k, stride, pad)) in [
            (
                3usize,
                5usize,
                3usize,
                2usize,
                Padding {
                    top: 0,
                    bottom: 1,
                    left: 0,
                    right: 1,
                },
            ),
            (4, 7, 3, 1, Padding::same(1)),
            (6, 3, 1, 1, Padding::same(0)),
            (5, 9, 3, 2, Padding::same(1)),
        ]
        .into_iter()
        .enumerate()
        {
            let (b, h, wd) = (2, 7, 6);
            let seed = seed as u64 * 10;
            let weight = Tensor::randn([cout, cin, k, k], seed);
            let x = Tensor::randn([b, cin, h, wd], seed + 1);
            let bytes: Vec<u8> = Tensor::randn([b * cout * cin * k * k], seed + 2)
                .data()
                .iter()
                .map(|&v| u8::from(v > -0.3))
                .collect();
            let mask =
                WeightMask::from_bytes(vec![cout, cin, k, k], None, Some(b), &bytes).unwrap();
            let (words, samples, kwords) = gemm_mask_words(&mask, weight.shape(), 0);
            assert_eq!(samples, b);
            let conv = ConvParams {
                uid: fresh_uid(),
                name: "c.weight",
                weight: &weight,
                bias: None,
                stride,
                padding: pad,
                mask: Some(LayerMask {
                    weights: &mask,
                    step: 0,
                }),
            };
            let want = Cpu.conv2d(conv, &x, Epilogue::default()).unwrap();
            let x_nhwc = crate::backend::cpu::nchw_to_nlc(&x);
            let (ho, wo) = (want.shape()[2], want.shape()[3]);
            let got = mirror(
                x_nhwc.data(),
                &gemm_weight(&weight),
                &words,
                kwords,
                true,
                [b, cin, h, wd],
                (cout, k, cin * k * k),
                (ho, wo, stride, pad.top, pad.left),
            );
            let got = Tensor::new(want.shape(), got).unwrap();
            assert!(
                got.rel_l2(&want) < 1e-6,
                "case {seed}: {}",
                got.rel_l2(&want)
            );
        }
    }
}
