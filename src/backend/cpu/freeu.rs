//! FreeU's backbone scaling on the host (the Fourier half is `fourier.rs`): the first C/2
//! channels of a decoder feature multiplied by `b` (FreeU v1) or by `(b − 1)·m̂ + 1` (v2), m̂ the
//! per-sample min-max normalised mean over channels (diffusers' `apply_freeu`).
//! Tested in this module and through the FreeU goldens (`tests/boosters.rs`).

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Scales `h` ([B, C, H, W]) in place; another rank is an error.
pub fn try_scale_backbone(h: &mut Tensor, b: f32, v2: bool) -> Result<()> {
    let [_, c, hh, ww] = h.shape()[..] else {
        return Err(Error::shape(
            "FreeU backbone",
            format!("{:?} is not an image [B, C, H, W]", h.shape()),
        ));
    };
    let (half, plane) = (c / 2, hh * ww);
    if plane == 0 || c == 0 {
        return Ok(());
    }
    for sample in h.data_mut().chunks_mut(c * plane) {
        let factors: Vec<f32> = if v2 {
            let mut mean = vec![0f32; plane];
            for ch in sample.chunks(plane) {
                mean.iter_mut().zip(ch).for_each(|(m, &v)| *m += v);
            }
            mean.iter_mut().for_each(|m| *m /= c as f32);
            let lo = mean.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = mean.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            mean.iter()
                .map(|&m| {
                    let m_hat = if hi > lo { (m - lo) / (hi - lo) } else { 1.0 };
                    (b - 1.0) * m_hat + 1.0
                })
                .collect()
        } else {
            vec![b; plane]
        };
        for ch in sample[..half * plane].chunks_mut(plane) {
            ch.iter_mut().zip(&factors).for_each(|(v, f)| *v *= f);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_backbone_factor_follows_the_normalised_mean() {
        // One sample, 2 channels, 3 pixels: channel means 0, 1, 2 → m̂ = 0, 0.5, 1.
        let mut h = Tensor::new([1, 2, 1, 3], vec![0.0, 1.0, 2.0, 0.0, 1.0, 2.0]).unwrap();
        try_scale_backbone(&mut h, 3.0, true).unwrap();
        assert_eq!(h.data(), &[0.0, 2.0, 6.0, 0.0, 1.0, 2.0]);
        // Constant mean: m̂ = 1 everywhere, the factor is b.
        let mut h = Tensor::new([1, 2, 1, 2], vec![1.0, 1.0, 5.0, 5.0]).unwrap();
        try_scale_backbone(&mut h, 2.0, true).unwrap();
        assert_eq!(h.data(), &[2.0, 2.0, 5.0, 5.0]);
        // v1 scales the first half by b; a token sequence is refused.
        let mut h = Tensor::new([1, 2, 1, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        try_scale_backbone(&mut h, 1.5, false).unwrap();
        assert_eq!(h.data(), &[1.5, 3.0, 3.0, 4.0]);
        let mut t = Tensor::new([1, 2, 2], vec![1.0; 4]).unwrap();
        assert!(try_scale_backbone(&mut t, 1.5, false).is_err());
    }
}
