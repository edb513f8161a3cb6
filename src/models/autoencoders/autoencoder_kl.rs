//! diffusers' `AutoencoderKL` (`autoencoders/autoencoder_kl.py`): loading from a model
//! folder or a pipeline's `vae/`, `decode` (`post_quant_conv` → `Decoder`), the tiled decode of
//! `enable_tiling()` (`tiled_decode`, `blend_v`, `blend_h`) and `encode` (`Encoder` →
//! `quant_conv` → `DiagonalGaussianDistribution`), plus the pipelines' latent unscaling
//! (`latents / scaling_factor + shift_factor`) before a decode.
//!
//! Tiles are decoded on the device and blended on the host: a decoded tile has only the image's
//! few channels, and the order of operations is then exactly diffusers' (each tile is blended in
//! place with its already-blended upper and left neighbours, then cropped).

use std::path::Path;

pub use super::configuration_autoencoder_kl::{AutoencoderKLConfig, TILE_OVERLAP_FACTOR};
use super::vae::{Decoder, DiagonalGaussianDistribution, Encoder};
use crate::backend::{Backend, Epilogue};
use crate::device::Exec;
use crate::error::{Error, Result};
use crate::nn::{Conv2d, LayerCtx};
use crate::safetensors_io;
use crate::tensor::Tensor;
use crate::weights::{Checkpoint, LoadOptions, ModelFiles, WeightSource};

/// When a decode tiles (diffusers' `enable_tiling()` → `tiled_decode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tiling {
    /// Tiled when the latents are larger than a tile (`tile_latent_min_size`) on either side,
    /// as diffusers does after `enable_tiling()`, or when the memory plan says the whole decode
    /// does not fit; whole otherwise.
    #[default]
    Auto,
    /// Always tiled: diffusers' `tiled_decode` called directly (a latent no larger than a tile is
    /// one tile, cropped to the tile's row limit).
    Always,
    /// Never tiled: diffusers' default `decode`; a decode that does not fit is an
    /// `Error::OutOfMemory`.
    Never,
    /// Whole, as diffusers' pipelines decode without `enable_tiling()`, unless the memory plan
    /// says the whole decode does not fit (where diffusers would fail): then tiled.
    WhenNeeded,
}

/// diffusers' `AutoencoderKL` with its weights. Load once, then decode from any thread (`Send +
/// Sync`; every method takes `&self`), on the CPU or any [`Exec`].
pub struct AutoencoderKL {
    /// The config the network was built from (validated).
    pub config: AutoencoderKLConfig,
    /// `encoder`.
    pub encoder: Encoder,
    /// `decoder`.
    pub decoder: Decoder,
    /// `quant_conv`: 1×1, 2·latent → 2·latent, with `use_quant_conv`.
    pub quant_conv: Option<Conv2d>,
    /// `post_quant_conv`: 1×1, latent → latent, with `use_post_quant_conv`.
    pub post_quant_conv: Option<Conv2d>,
}

/// The model folder of `arg`: a pipeline folder's `vae/`, else `arg` itself (a VAE folder).
fn vae_folder(arg: &Path, opts: &LoadOptions) -> Result<std::path::PathBuf> {
    let dir = crate::hub::resolve(arg, opts.revision.as_deref())?;
    if dir.join("model_index.json").is_file() {
        let vae = dir.join("vae");
        if !vae.is_dir() {
            return Err(Error::input(
                "vae",
                format!(
                    "{} is a pipeline folder (model_index.json) without vae/",
                    dir.display()
                ),
            ));
        }
        return Ok(vae);
    }
    Ok(dir)
}

impl AutoencoderKL {
    /// The files a load of `arg` reads (config and weights), for refusing to overwrite them.
    pub fn files(arg: &Path, opts: &LoadOptions) -> Result<ModelFiles> {
        let dir = vae_folder(arg, opts)?;
        if !dir.join("config.json").is_file() {
            return Err(Error::input(
                "vae",
                format!(
                    "{}: no config.json (expected an AutoencoderKL folder, or a pipeline folder \
                     with vae/)",
                    dir.display()
                ),
            ));
        }
        ModelFiles::locate_with(&dir, opts.variant.as_deref())
    }

    /// Loads a VAE folder or a pipeline folder's `vae/` with its full-precision weights, else its
    /// only variant.
    ///
    /// ```
    /// use freelunch::models::autoencoders::AutoencoderKL;
    ///
    /// let vae = AutoencoderKL::from_dir("tests/fixtures/vae_sd_like".as_ref())?;
    /// assert_eq!(vae.config.latent_channels, 4);
    /// # Ok::<(), freelunch::Error>(())
    /// ```
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_pretrained(dir, &LoadOptions::default())
    }

    /// Loads the VAE `arg` names (a VAE or pipeline folder, a Hugging Face cache repo folder or
    /// repo id) with the variant and revision of `opts`, as diffusers'
    /// `AutoencoderKL.from_pretrained(..., subfolder="vae")` reads it from disk.
    pub fn from_pretrained(arg: &Path, opts: &LoadOptions) -> Result<Self> {
        let files = Self::files(arg, opts)?;
        let config = AutoencoderKLConfig::from_file(&files.config)?;
        let mut ckpt = Checkpoint::load_keeping(&files.weights, opts.keep)?;
        Self::load(config, &mut ckpt)
    }

    /// Builds the network of `config`, taking every parameter from `ws`.
    pub fn load(config: AutoencoderKLConfig, ws: &mut dyn WeightSource) -> Result<Self> {
        config.validate("config")?;
        let l = config.latent_channels;
        let encoder = Encoder::load(ws, "encoder", &config)?;
        let decoder = Decoder::load(ws, "decoder", &config)?;
        let quant_conv = if config.use_quant_conv {
            Some(Conv2d::load(ws, "quant_conv", 2 * l, 2 * l, 1, 1, 0, true)?)
        } else {
            None
        };
        let post_quant_conv = if config.use_post_quant_conv {
            Some(Conv2d::load(ws, "post_quant_conv", l, l, 1, 1, 0, true)?)
        } else {
            None
        };
        Ok(AutoencoderKL {
            config,
            encoder,
            decoder,
            quant_conv,
            post_quant_conv,
        })
    }

    /// Checks `x` ([B, `channels`, H, W], non-empty, finite) as the input `name`.
    fn check_image_like(name: &str, x: &Tensor, channels: usize) -> Result<()> {
        let (b, c, h, w) = match x.shape() {
            [b, c, h, w] => (*b, *c, *h, *w),
            s => {
                return Err(Error::input(
                    name,
                    format!("shape {s:?}: expected rank 4, [B, {channels}, H, W]"),
                ))
            }
        };
        if c != channels {
            return Err(Error::input(
                name,
                format!(
                    "shape {:?}: has {c} channels, the VAE takes {channels}",
                    x.shape()
                ),
            ));
        }
        if b == 0 || h == 0 || w == 0 {
            return Err(Error::input(name, format!("empty shape {:?}", x.shape())));
        }
        if let Some(bad) = safetensors_io::first_non_finite(x.data()) {
            return Err(Error::input(
                name,
                format!(
                    "holds {}; inputs must be finite numbers",
                    safetensors_io::non_finite_words(x.shape(), bad)
                ),
            ));
        }
        Ok(())
    }

    /// What the pipelines hand `vae.decode`: `latents / scaling_factor + shift_factor` (no
    /// shift where the config has none), checked as the input `latents`.
    pub fn unscale_latents(&self, latents: &Tensor) -> Result<Tensor> {
        Self::check_image_like("latents", latents, self.config.latent_channels)?;
        let (s, shift) = (
            self.config.scaling_factor,
            self.config.shift_factor.unwrap_or(0.0),
        );
        let data: Vec<f32> = latents
            .data()
            .iter()
            .map(|v| match self.config.shift_factor {
                Some(_) => v / s + shift,
                None => v / s,
            })
            .collect();
        if let Some(bad) = safetensors_io::first_non_finite(&data) {
            return Err(Error::input(
                "latents",
                format!(
                    "divided by scaling_factor = {s} they overflow f32 ({})",
                    safetensors_io::non_finite_words(latents.shape(), bad)
                ),
            ));
        }
        Tensor::new(latents.shape(), data)
    }

    /// The inverse of `unscale_latents`, what img2img pipelines do to an encoded image's latents:
    /// `(z − shift_factor) · scaling_factor`.
    pub fn scale_latents(&self, z: &Tensor) -> Result<Tensor> {
        Self::check_image_like("latents", z, self.config.latent_channels)?;
        let (s, shift) = (
            self.config.scaling_factor,
            self.config.shift_factor.unwrap_or(0.0),
        );
        let data: Vec<f32> = z
            .data()
            .iter()
            .map(|v| match self.config.shift_factor {
                Some(_) => (v - shift) * s,
                None => v * s,
            })
            .collect();
        if let Some(bad) = safetensors_io::first_non_finite(&data) {
            return Err(Error::input(
                "latents",
                format!(
                    "times scaling_factor = {s} they overflow f32 ({})",
                    safetensors_io::non_finite_words(z.shape(), bad)
                ),
            ));
        }
        Tensor::new(z.shape(), data)
    }

    /// A pipeline's decode: `unscale_latents`, then `decode` (tiling as `tiling` says).
    ///
    /// ```
    /// use freelunch::device::Exec;
    /// use freelunch::models::autoencoders::{AutoencoderKL, Tiling};
    /// use freelunch::Tensor;
    ///
    /// let vae = AutoencoderKL::from_dir("tests/fixtures/vae_sd_like".as_ref())?;
    /// let latents = Tensor::randn([1, 4, 6, 5], 0);
    /// let image = vae.decode_latents(&Exec::cpu(), &latents, Tiling::Auto)?;
    /// assert_eq!(image.shape(), &[1, 3, 12, 10]);
    /// // A latent of the wrong channel count is an input error naming it.
    /// assert!(vae.decode_latents(&Exec::cpu(), &Tensor::randn([1, 3, 6, 5], 0), Tiling::Auto).is_err());
    /// # Ok::<(), freelunch::Error>(())
    /// ```
    pub fn decode_latents(&self, exec: &Exec, latents: &Tensor, tiling: Tiling) -> Result<Tensor> {
        let z = self.unscale_latents(latents)?;
        self.decode(exec, &z, tiling)
    }

    /// Whether `tiling` makes the decode of `z` ([B, C, h, w]) tiled on a backend with
    /// `available` bytes free.
    pub fn decode_is_tiled(
        &self,
        z_shape: &[usize],
        tiling: Tiling,
        available: Option<u64>,
    ) -> Result<bool> {
        let [b, _, h, w] = z_shape[..] else {
            return Err(Error::input(
                "latents",
                format!("shape {z_shape:?}: expected rank 4"),
            ));
        };
        Ok(match tiling {
            Tiling::Always => true,
            Tiling::Never => false,
            Tiling::WhenNeeded => {
                let t = self.config.tile_latent_min_size();
                let fits = available
                    .is_none_or(|a| self.config.plan_decode(b, h, w).is_ok_and(|need| need <= a));
                !fits && t >= 2
            }
            Tiling::Auto => {
                let t = self.config.tile_latent_min_size();
                let larger = h > t || w > t;
                let fits = available
                    .is_none_or(|a| self.config.plan_decode(b, h, w).is_ok_and(|need| need <= a));
                // A tile must itself be more than one latent pixel for the tiles to advance.
                (larger || !fits) && t >= 2
            }
        })
    }

    /// diffusers' `vae.decode(z).sample`: `post_quant_conv` then the decoder, for `z` as the
    /// decoder takes it (unscaled: see `unscale_latents`), on `exec`; tiled as `tiling` says.
    /// Returns [B, out_channels, h·f, w·f] on the host, unclamped. The memory the call needs is
    /// checked first: `Error::OutOfMemory` names it.
    pub fn decode(&self, exec: &Exec, z: &Tensor, tiling: Tiling) -> Result<Tensor> {
        Self::check_image_like("latents", z, self.config.latent_channels)?;
        let available = match exec {
            Exec::Cpu(cpu) => cpu.available_memory(),
            Exec::Cuda(gpu) => gpu.available_memory(),
        };
        if self.decode_is_tiled(z.shape(), tiling, available)? {
            return self.tiled_decode(exec, z);
        }
        let (b, _, h, w) = z.dims4("latents")?;
        self.ensure_decode_fits(b, h, w, available, "tiling decodes in parts")?;
        self.decode_tile(exec, z)
    }

    fn ensure_decode_fits(
        &self,
        b: usize,
        h: usize,
        w: usize,
        available: Option<u64>,
        hint: &str,
    ) -> Result<()> {
        crate::tensor::ensure_fits_in(
            &format!(
                "decoding [{b}, {}, {h}, {w}] latents (activations; {hint})",
                self.config.latent_channels
            ),
            self.config.plan_decode(b, h, w)?,
            available,
        )
    }

    /// One whole (untiled) decode on `exec`, downloaded and checked finite.
    fn decode_tile(&self, exec: &Exec, z: &Tensor) -> Result<Tensor> {
        let y = match exec {
            Exec::Cpu(cpu) => self.decode_on(cpu, z)?,
            Exec::Cuda(gpu) => {
                let y = self.decode_on(gpu.as_ref(), z)?;
                gpu.download(&y)?
            }
        };
        match safetensors_io::first_non_finite(y.data()) {
            None => Ok(y),
            Some(bad) => Err(Error::NonFinite {
                at: "decoder".into(),
                msg: format!(
                    "non-finite value in the VAE: the decoder's output holds {} although the \
                     latents were finite ({}); latents far outside the range the VAE was \
                     trained on, or 16-bit overflow (--dtype f32 avoids it), cause this",
                    safetensors_io::non_finite_words(y.shape(), bad),
                    match exec {
                        Exec::Cpu(_) => "on the CPU".to_string(),
                        Exec::Cuda(gpu) => format!("on the GPU in {}", gpu.dtype().suffix()),
                    }
                ),
            }),
        }
    }

    /// `post_quant_conv` and the decoder on backend `be` (input checks: `decode` makes them).
    /// Each block's output is watched for NaN and infinity where the backend looks (at once on
    /// the CPU, queued on the GPU), so the error names the first module that made one.
    pub fn decode_on<B: Backend>(&self, be: &B, z: &Tensor) -> Result<B::Tensor> {
        let lc = LayerCtx::default();
        let mut watch = be.new_watch()?;
        let mut watched: Vec<(String, Vec<usize>)> = Vec::new();
        let mut check = |name: &str, x: &B::Tensor| -> Result<()> {
            let shape = be.shape(x);
            watched.push((name.to_string(), shape.to_vec()));
            match be.watch_non_finite(&mut watch, x)? {
                None => Ok(()),
                Some(bad) => Err(non_finite_in(name, &shape, bad)),
            }
        };
        let mut h = be.upload(z)?;
        if let Some(pq) = &self.post_quant_conv {
            h = be.conv2d(pq.params(lc), &h, Epilogue::default())?;
            check("post_quant_conv", &h)?;
        }
        let d = &self.decoder;
        h = be.conv2d(d.conv_in.params(lc), &h, Epilogue::default())?;
        check("decoder.conv_in", &h)?;
        h = d.mid_block.forward(be, &h)?;
        check("decoder.mid_block", &h)?;
        for (i, block) in d.up_blocks.iter().enumerate() {
            h = block.forward(be, &h)?;
            check(&format!("decoder.up_blocks.{i}"), &h)?;
        }
        h = be.group_norm(d.conv_norm_out.params(), &h, None, true)?;
        check("decoder.conv_norm_out", &h)?;
        h = be.conv2d(d.conv_out.params(lc), &h, Epilogue::default())?;
        check("decoder.conv_out", &h)?;
        if let Some((k, i, v)) = be.first_watched(watch)? {
            let (name, shape) = &watched[k];
            return Err(non_finite_in(name, shape, (i, v)));
        }
        Ok(h)
    }

    /// diffusers' `tiled_decode(z).sample`: overlapping tiles of `tile_latent_min_size` latents
    /// (stride ¾ of a tile) decoded one by one, each blended with its upper and left neighbours
    /// over ¼ of a decoded tile (`blend_v`, `blend_h`) and cropped to `sample_size − blend`.
    pub fn tiled_decode(&self, exec: &Exec, z: &Tensor) -> Result<Tensor> {
        Self::check_image_like("latents", z, self.config.latent_channels)?;
        let (b, _, h, w) = z.dims4("latents")?;
        let tile = self.config.tile_latent_min_size();
        let overlap = (tile as f64 * (1.0 - TILE_OVERLAP_FACTOR)) as usize;
        if overlap == 0 {
            return Err(Error::Config {
                origin: "vae".into(),
                msg: format!(
                    "tiled decoding needs tiles of at least 2 latents; sample_size = {} over \
                     2^{} gives {tile}",
                    self.config.sample_size,
                    self.config.block_out_channels.len() - 1
                ),
            });
        }
        let sample = self.config.sample_size;
        let blend_extent = (sample as f64 * TILE_OVERLAP_FACTOR) as usize;
        let row_limit = sample - blend_extent;
        let available = match exec {
            Exec::Cpu(cpu) => cpu.available_memory(),
            Exec::Cuda(gpu) => gpu.available_memory(),
        };
        self.ensure_decode_fits(
            b,
            tile.min(h),
            tile.min(w),
            available,
            "one tile of a tiled decode, at the config's sample_size",
        )?;
        let starts = |n: usize| (0..n).step_by(overlap).collect::<Vec<_>>();
        let (row_starts, col_starts) = (starts(h), starts(w));
        let mut rows: Vec<Vec<Tensor>> = Vec::with_capacity(row_starts.len());
        for &i in &row_starts {
            let mut row = Vec::with_capacity(col_starts.len());
            for &j in &col_starts {
                let part = crop(z, i, (i + tile).min(h), j, (j + tile).min(w))?;
                row.push(self.decode_tile(exec, &part)?);
            }
            rows.push(row);
        }
        // In place and in order, as diffusers: a tile is blended with neighbours that were
        // themselves blended already.
        for i in 0..rows.len() {
            for j in 0..rows[i].len() {
                if i > 0 {
                    let (above, here) = rows.split_at_mut(i);
                    blend_v(&above[i - 1][j], &mut here[0][j], blend_extent);
                }
                if j > 0 {
                    let (left, here) = rows[i].split_at_mut(j);
                    blend_h(&left[j - 1], &mut here[0], blend_extent);
                }
            }
        }
        let cropped: Vec<Vec<Tensor>> = rows
            .iter()
            .map(|row| {
                row.iter()
                    .map(|t| {
                        let s = t.shape();
                        crop(t, 0, row_limit.min(s[2]), 0, row_limit.min(s[3]))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        assemble(&cropped)
    }

    /// diffusers' `encode(x).latent_dist`: the encoder and `quant_conv` on `exec` for an image
    /// `x` ([B, in_channels, H, W] in [-1, 1]), as the posterior (`mean` is the latents before
    /// `scaling_factor`; pipelines multiply by it, after subtracting `shift_factor` where there
    /// is one).
    pub fn encode(&self, exec: &Exec, x: &Tensor) -> Result<DiagonalGaussianDistribution> {
        Self::check_image_like("image", x, self.config.in_channels)?;
        let params = match exec {
            Exec::Cpu(cpu) => self.encode_on(cpu, x)?,
            Exec::Cuda(gpu) => {
                let y = self.encode_on(gpu.as_ref(), x)?;
                gpu.download(&y)?
            }
        };
        if let Some(bad) = safetensors_io::first_non_finite(params.data()) {
            return Err(Error::NonFinite {
                at: "encoder".into(),
                msg: format!(
                    "non-finite value in the VAE: the encoder's output holds {} although the \
                     image was finite",
                    safetensors_io::non_finite_words(params.shape(), bad)
                ),
            });
        }
        DiagonalGaussianDistribution::new(&params)
    }

    /// The encoder and `quant_conv` on backend `be`: [B, 2·latent_channels, h, w].
    pub fn encode_on<B: Backend>(&self, be: &B, x: &Tensor) -> Result<B::Tensor> {
        let x = be.upload(x)?;
        let h = self.encoder.forward(be, &x)?;
        match &self.quant_conv {
            Some(q) => be.conv2d(q.params(LayerCtx::default()), &h, Epilogue::default()),
            None => Ok(h),
        }
    }
}

fn non_finite_in(layer: &str, shape: &[usize], bad: (usize, f32)) -> Error {
    Error::NonFinite {
        at: layer.to_string(),
        msg: format!(
            "non-finite value in the VAE: the output of `{layer}` holds {} although everything \
             before it was finite; latents far outside the range the VAE was trained on, or \
             16-bit overflow (--dtype f32 avoids it), cause this",
            safetensors_io::non_finite_words(shape, bad)
        ),
    }
}

/// Rows `r0..r1` and columns `c0..c1` of every plane of `x` ([B, C, H, W]).
fn crop(x: &Tensor, r0: usize, r1: usize, c0: usize, c1: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4("tile")?;
    let (oh, ow) = (r1 - r0, c1 - c0);
    let mut out = crate::tensor::try_vec_with_capacity(b * c * oh * ow, "a tile")?;
    for plane in x.data().chunks(h * w).take(b * c) {
        for y in r0..r1 {
            out.extend_from_slice(&plane[y * w + c0..y * w + c1]);
        }
    }
    Tensor::new(vec![b, c, oh, ow], out)
}

/// diffusers' `blend_v`: the first `extent` rows of `b` fade in from the last of `a`.
fn blend_v(a: &Tensor, b: &mut Tensor, extent: usize) {
    let (ah, bh, w) = (a.shape()[2], b.shape()[2], b.shape()[3]);
    let extent = extent.min(ah).min(bh);
    let planes = b.shape()[0] * b.shape()[1];
    let (ad, bd) = (a.data(), b.data_mut());
    for p in 0..planes {
        for y in 0..extent {
            let t = y as f64 / extent as f64;
            let (wa, wb) = ((1.0 - t) as f32, t as f32);
            let ar = &ad[(p * ah + ah - extent + y) * w..][..w];
            let br = &mut bd[(p * bh + y) * w..][..w];
            for (bv, av) in br.iter_mut().zip(ar) {
                *bv = *av * wa + *bv * wb;
            }
        }
    }
}

/// diffusers' `blend_h`: the first `extent` columns of `b` fade in from the last of `a`.
fn blend_h(a: &Tensor, b: &mut Tensor, extent: usize) {
    let (aw, bw, h) = (a.shape()[3], b.shape()[3], b.shape()[2]);
    let extent = extent.min(aw).min(bw);
    let planes = b.shape()[0] * b.shape()[1];
    let (ad, bd) = (a.data(), b.data_mut());
    for p in 0..planes {
        for y in 0..h {
            let ar = &ad[(p * h + y) * aw..][..aw];
            let br = &mut bd[(p * h + y) * bw..][..bw];
            for x in 0..extent {
                let t = x as f64 / extent as f64;
                br[x] = ar[aw - extent + x] * (1.0 - t) as f32 + br[x] * t as f32;
            }
        }
    }
}

/// The cropped tiles, joined: each row along W, the rows along H.
fn assemble(rows: &[Vec<Tensor>]) -> Result<Tensor> {
    let first = &rows[0][0];
    let (b, c) = (first.shape()[0], first.shape()[1]);
    let height: usize = rows.iter().map(|r| r[0].shape()[2]).sum();
    let width: usize = rows[0].iter().map(|t| t.shape()[3]).sum();
    let n = crate::tensor::numel_of(&[b, c, height, width], "the decoded image")?;
    let mut out = crate::tensor::try_vec_with_capacity(n, "the decoded image")?;
    out.resize(n, 0.0);
    let mut y0 = 0;
    for row in rows {
        let th = row[0].shape()[2];
        let mut x0 = 0;
        for t in row {
            let tw = t.shape()[3];
            for p in 0..b * c {
                for y in 0..th {
                    let src = &t.data()[(p * th + y) * tw..][..tw];
                    out[(p * height + y0 + y) * width + x0..][..tw].copy_from_slice(src);
                }
            }
            x0 += tw;
        }
        y0 += th;
    }
    Tensor::new(vec![b, c, height, width], out)
}
