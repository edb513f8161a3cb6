//! FreeU's Fourier skip filter, `real(ifft2(ifftshift(fftshift(fft2(x)) ⊙ M)))` per H×W plane,
//! where M is `scale` on the shifted-spectrum window `[H/2−t : H/2+t, W/2−t : W/2+t]` (Python
//! slice semantics, negative starts counting from the end) and 1 elsewhere. Two exact forms:
//!
//! - `Fft`: the definition, with rustfft in f32 (as diffusers computes it).
//! - `Direct`: since M − 1 is non-zero only on a K×L window of at most 2t×2t frequencies,
//!   `y = x + (scale − 1)/(HW) · Re(Σ_{k∈K, l∈L} X[k,l] e^{2πi(km/H + ln/W)})`, with the few
//!   `X[k,l]` taken as separable DFT sums. O(HW·|L|) per plane in f64, no FFT; for t = 1 and
//!   H, W ≥ 3 this is the filter's closed form (DC × s, the ±(1,0), ±(0,1), ±(1,1) pairs × (1+s)/2).

use std::ops::Range;

use rayon::prelude::*;
use rustfft::num_complex::Complex;
use rustfft::FftPlanner;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Which form computes the filter; both give the same result to f32 rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterForm {
    /// The definition, with rustfft in f32, as diffusers computes it.
    Fft,
    /// The exact FFT-free form over the window's frequencies, in f64 (on the CPU the FFT form
    /// is faster at these sizes: `cargo bench --bench cpu_ops -- freeu`).
    Direct,
}

/// Python's `range(len)[start:stop]` for a step of 1.
pub fn py_slice(start: isize, stop: isize, len: usize) -> Range<usize> {
    let n = len as isize;
    let clamp = |v: isize| (if v < 0 { v + n } else { v }).clamp(0, n) as usize;
    let (a, b) = (clamp(start), clamp(stop));
    a..b.max(a)
}

/// Unshifted frequency indices selected by the window along an axis of `len`.
pub(crate) fn window(len: usize, t: usize) -> Vec<usize> {
    let c = (len / 2) as isize;
    let t = isize::try_from(t).unwrap_or(isize::MAX);
    py_slice(c.saturating_sub(t), c.saturating_add(t), len)
        .map(|i| (i + len - len / 2) % len)
        .collect()
}

/// Filters every H×W plane of `x` ([.., H, W]). Panics where `try_fourier_filter` errs.
pub fn fourier_filter(x: &Tensor, threshold: usize, scale: f32, form: FilterForm) -> Tensor {
    try_fourier_filter(x, threshold, scale, form).unwrap_or_else(|e| panic!("{e}"))
}

/// As `fourier_filter`; an input of rank below 2 is an error, and its copy is allocated fallibly.
pub fn try_fourier_filter(
    x: &Tensor,
    threshold: usize,
    scale: f32,
    form: FilterForm,
) -> Result<Tensor> {
    let r = x.rank();
    if r < 2 {
        return Err(Error::shape(
            "Fourier filter",
            format!("expected [.., H, W], got shape {:?}", x.shape()),
        ));
    }
    let (h, w) = (x.shape()[r - 2], x.shape()[r - 1]);
    // The direct form multiplies two indices below H (or W) before reducing them.
    if h.max(w) > u32::MAX as usize {
        return Err(Error::TooLarge {
            what: "Fourier filter".into(),
            detail: format!("a {h}×{w} plane has a side of 2^32 or more"),
        });
    }
    let (rows, cols) = (window(h, threshold), window(w, threshold));
    let mut out = x.try_clone()?;
    if rows.is_empty() || cols.is_empty() || scale == 1.0 {
        return Ok(out);
    }
    match form {
        FilterForm::Fft => {
            let mut planner = FftPlanner::<f32>::new();
            let plans = [
                planner.plan_fft_forward(w),
                planner.plan_fft_forward(h),
                planner.plan_fft_inverse(w),
                planner.plan_fft_inverse(h),
            ];
            out.data_mut()
                .par_chunks_mut(h * w)
                .for_each(|plane| fft_plane(plane, h, w, &rows, &cols, scale, &plans));
        }
        FilterForm::Direct => {
            out.data_mut()
                .par_chunks_mut(h * w)
                .for_each(|plane| direct_plane(plane, h, w, &rows, &cols, scale));
        }
    }
    Ok(out)
}

type Plan = std::sync::Arc<dyn rustfft::Fft<f32>>;

fn fft_plane(
    plane: &mut [f32],
    h: usize,
    w: usize,
    rows: &[usize],
    cols: &[usize],
    scale: f32,
    [fwd_w, fwd_h, inv_w, inv_h]: &[Plan; 4],
) {
    let mut buf: Vec<Complex<f32>> = plane.iter().map(|&v| Complex::new(v, 0.0)).collect();
    let mut col = vec![Complex::new(0.0, 0.0); h];
    let columns = |buf: &mut [Complex<f32>], col: &mut [Complex<f32>], plan: &Plan| {
        for j in 0..w {
            for i in 0..h {
                col[i] = buf[i * w + j];
            }
            plan.process(col);
            for i in 0..h {
                buf[i * w + j] = col[i];
            }
        }
    };
    for row in buf.chunks_mut(w) {
        fwd_w.process(row);
    }
    columns(&mut buf, &mut col, fwd_h);
    for &k in rows {
        for &l in cols {
            buf[k * w + l] *= scale;
        }
    }
    columns(&mut buf, &mut col, inv_h);
    for row in buf.chunks_mut(w) {
        inv_w.process(row);
    }
    let norm = 1.0 / (h * w) as f32;
    for (p, c) in plane.iter_mut().zip(&buf) {
        *p = c.re * norm;
    }
}

fn direct_plane(plane: &mut [f32], h: usize, w: usize, rows: &[usize], cols: &[usize], scale: f32) {
    use std::f64::consts::TAU;
    let tw = |n: usize| -> Vec<Complex<f64>> {
        (0..n)
            .map(|q| Complex::from_polar(1.0, -TAU * q as f64 / n as f64))
            .collect()
    };
    let (tw_h, tw_w) = (tw(h), tw(w));
    // a[m][l] = Σ_n x[m,n] e^{-2πi l n/W}
    let mut a = vec![Complex::new(0.0f64, 0.0); h * cols.len()];
    for m in 0..h {
        let row = &plane[m * w..(m + 1) * w];
        for (li, &l) in cols.iter().enumerate() {
            a[m * cols.len() + li] = row
                .iter()
                .enumerate()
                .map(|(n, &v)| tw_w[(l * n) % w] * v as f64)
                .sum();
        }
    }
    // spectrum X[k][l] = Σ_m a[m][l] e^{-2πi k m/H}, then back along H:
    // b[m][l] = Σ_k X[k][l] e^{+2πi k m/H}
    let mut b = vec![Complex::new(0.0f64, 0.0); h * cols.len()];
    for (li, _) in cols.iter().enumerate() {
        for &k in rows {
            let xkl: Complex<f64> = (0..h)
                .map(|m| a[m * cols.len() + li] * tw_h[(k * m) % h])
                .sum();
            for m in 0..h {
                b[m * cols.len() + li] += xkl * tw_h[(k * m) % h].conj();
            }
        }
    }
    let gain = (scale as f64 - 1.0) / (h * w) as f64;
    for m in 0..h {
        let bm = &b[m * cols.len()..(m + 1) * cols.len()];
        for n in 0..w {
            let re: f64 = cols
                .iter()
                .zip(bm)
                .map(|(&l, &bv)| (bv * tw_w[(l * n) % w].conj()).re)
                .sum();
            let p = &mut plane[m * w + n];
            *p = (*p as f64 + gain * re) as f32;
        }
    }
}
