//! Writing samples as a PNG grid, post-processed as diffusers' pixel pipelines do:
//! `(x / 2 + 0.5).clamp(0, 1)`, scaled to 0..=255 and rounded.

use std::path::Path;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Writes `samples` ([B, C, H, W] in [-1, 1], C = 1 or 3) as a near-square grid of B tiles.
pub fn save_png_grid(path: &Path, samples: &Tensor) -> Result<()> {
    let (b, c, h, w) = samples.dims4("samples")?;
    let color = match c {
        1 => png::ColorType::Grayscale,
        3 => png::ColorType::Rgb,
        _ => {
            return Err(Error::Msg(format!(
                "a PNG needs 1 or 3 channels; these samples have {c} (latents need a VAE decoder: \
                 write .safetensors instead)"
            )))
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
    let too_large = || {
        Error::Msg(format!(
            "a PNG grid of {b} samples of {h}×{w} is too large (PNG sides are at most 2^31 − 1)"
        ))
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
    pixels.try_reserve_exact(bytes).map_err(|_| {
        Error::Msg(format!(
            "a PNG grid of {gw}×{gh}×{c} bytes cannot be allocated"
        ))
    })?;
    pixels.resize(bytes, 0u8);
    for (i, img) in samples.data().chunks(c * h * w).enumerate() {
        let (r0, c0) = ((i / cols) * h, (i % cols) * w);
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let v = img[(ch * h + y) * w + x];
                    let v = ((v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8;
                    pixels[((r0 + y) * gw + c0 + x) * c + ch] = v;
                }
            }
        }
    }
    crate::output::write_file(path, |w| {
        let mut enc = png::Encoder::new(w, gw as u32, gh as u32);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let png_err = |e: png::EncodingError| Error::Msg(format!("{}: {e}", path.display()));
        let mut writer = enc.write_header().map_err(png_err)?;
        writer.write_image_data(&pixels).map_err(png_err)?;
        writer.finish().map_err(png_err)
    })
}
