//! Writing samples as PNGs (one image, or a grid), post-processed as diffusers' pipelines do
//! (`VaeImageProcessor.postprocess(output_type="pil")`, and the pixel pipelines alike):
//! `(x / 2 + 0.5).clamp(0, 1)`, times 255 in f32, rounded half to even (numpy's `round`).

use std::path::Path;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// One value in [-1, 1] as diffusers makes it a byte: `(x * 0.5 + 0.5).clamp(0, 1)`, then
/// `(v * 255).round()` in f32, ties to even as numpy rounds, then `astype("uint8")`.
pub fn to_u8(x: f32) -> u8 {
    ((x * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0).round_ties_even() as u8
}

/// An 8-bit image, rows of pixels of interleaved channels (HWC): what `postprocess` makes of one
/// sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image8 {
    /// Rows.
    pub height: usize,
    /// Pixels per row.
    pub width: usize,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// `height · width · channels` bytes, HWC.
    pub data: Vec<u8>,
}

/// diffusers' `VaeImageProcessor.postprocess(images, output_type="pil")` as arrays: each sample of
/// `images` ([B, C, H, W] in [-1, 1], C = 1 or 3, finite) to bytes with `to_u8`, NCHW → HWC.
pub fn postprocess(images: &Tensor) -> Result<Vec<Image8>> {
    let (b, c, h, w) = images.dims4("images")?;
    if c != 1 && c != 3 {
        return Err(Error::input(
            "images",
            format!("shape {:?}: an image has 1 or 3 channels", images.shape()),
        ));
    }
    if let Some(i) = images.data().iter().position(|v| !v.is_finite()) {
        return Err(Error::input(
            "images",
            format!(
                "sample {} holds a non-finite value ({} at element {i})",
                i / (c * h * w).max(1),
                images.data()[i]
            ),
        ));
    }
    Ok(images
        .data()
        .chunks((c * h * w).max(1))
        .take(b)
        .map(|img| {
            let mut data = vec![0u8; h * w * c];
            for ch in 0..c {
                for (p, v) in img[ch * h * w..][..h * w].iter().enumerate() {
                    data[p * c + ch] = to_u8(*v);
                }
            }
            Image8 {
                height: h,
                width: w,
                channels: c,
                data,
            }
        })
        .collect())
}

/// Writes one 8-bit image as a PNG, atomically (`output::write_file`).
pub fn save_png(path: &Path, image: &Image8) -> Result<()> {
    let color = match image.channels {
        1 => png::ColorType::Grayscale,
        3 => png::ColorType::Rgb,
        c => {
            return Err(Error::input(
                "image",
                format!("{c} channels: a PNG is written from 1 or 3"),
            ))
        }
    };
    let (w, h) = (
        u32::try_from(image.width)
            .ok()
            .filter(|&v| v > 0 && v < 1 << 31),
        u32::try_from(image.height)
            .ok()
            .filter(|&v| v > 0 && v < 1 << 31),
    );
    let (Some(w), Some(h)) = (w, h) else {
        return Err(Error::input(
            "image",
            format!(
                "{}×{}: PNG sides are 1 to 2^31 − 1",
                image.width, image.height
            ),
        ));
    };
    if image.data.len() != image.width * image.height * image.channels {
        return Err(Error::input(
            "image",
            format!(
                "{} bytes for {}×{}×{}",
                image.data.len(),
                image.height,
                image.width,
                image.channels
            ),
        ));
    }
    crate::output::write_file(path, |out| {
        let mut enc = png::Encoder::new(out, w, h);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let png_err = |e: png::EncodingError| Error::io(path, std::io::Error::other(e));
        let mut writer = enc.write_header().map_err(png_err)?;
        writer.write_image_data(&image.data).map_err(png_err)?;
        writer.finish().map_err(png_err)
    })
}

/// Writes `samples` ([B, C, H, W] in [-1, 1], C = 1 or 3) as a near-square grid of B tiles.
pub fn save_png_grid(path: &Path, samples: &Tensor) -> Result<()> {
    let (b, c, h, w) = samples.dims4("samples")?;
    let color = match c {
        1 => png::ColorType::Grayscale,
        3 => png::ColorType::Rgb,
        _ => {
            return Err(Error::input(
                "samples",
                format!(
                "a PNG needs 1 or 3 channels; these samples have {c} (latents need a VAE decoder: \
                 write .safetensors instead)"
            ),
            ))
        }
    };
    if b == 0 || h == 0 || w == 0 {
        return Err(Error::input(
            "samples",
            format!(
                "shape {:?}: a PNG grid needs at least one non-empty sample",
                samples.shape()
            ),
        ));
    }
    if let Some(i) = samples.data().iter().position(|v| !v.is_finite()) {
        return Err(Error::input(
            "samples",
            format!(
                "sample {} holds a non-finite value ({} at element {i}); not written",
                i / (c * h * w),
                samples.data()[i]
            ),
        ));
    }
    let cols = (b as f64).sqrt().ceil() as usize;
    let rows = b.div_ceil(cols);
    let too_large = || Error::TooLarge {
        what: "a PNG grid".into(),
        detail: format!("{b} samples of {h}×{w}: PNG sides are at most 2^31 − 1"),
    };
    let (gw, gh) = (
        cols.checked_mul(w)
            .filter(|&v| v < 1 << 31)
            .ok_or_else(too_large)?,
        rows.checked_mul(h)
            .filter(|&v| v < 1 << 31)
            .ok_or_else(too_large)?,
    );
    let bytes = gw
        .checked_mul(gh)
        .and_then(|v| v.checked_mul(c))
        .ok_or_else(too_large)?;
    let mut pixels = Vec::new();
    pixels
        .try_reserve_exact(bytes)
        .map_err(|_| Error::OutOfMemory {
            what: format!("a PNG grid of {gw}×{gh}×{c} bytes"),
            needed: bytes as u64,
            available: crate::tensor::available_memory().unwrap_or(0),
        })?;
    pixels.resize(bytes, 0u8);
    for (i, img) in samples.data().chunks(c * h * w).enumerate() {
        let (r0, c0) = ((i / cols) * h, (i % cols) * w);
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    pixels[((r0 + y) * gw + c0 + x) * c + ch] = to_u8(img[(ch * h + y) * w + x]);
                }
            }
        }
    }
    crate::output::write_file(path, |w| {
        let mut enc = png::Encoder::new(w, gw as u32, gh as u32);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let png_err = |e: png::EncodingError| match e {
            png::EncodingError::IoError(e) => Error::io(path, e),
            other => Error::io(path, std::io::Error::other(other)),
        };
        let mut writer = enc.write_header().map_err(png_err)?;
        writer.write_image_data(&pixels).map_err(png_err)?;
        writer.finish().map_err(png_err)
    })
}
