//! Sample quality of digits: a small classifier trained on the same 5,000 MNIST digits as the
//! built-in model (`tools/train_mnist.py`), its mean confidence on the samples, and the Fréchet
//! distance between the Gaussians of its 64 features on the samples and on the real digits
//! (FID on this classifier's features, not Inception's: comparable within this crate only).

use crate::backend::cpu::{self, Padding};
use crate::error::{Error, Result};
use crate::safetensors_io;
use crate::tensor::Tensor;
use crate::weights::{Checkpoint, WeightSource};

/// conv 3×3/2 + ReLU, conv 3×3/2 + ReLU, flatten, linear + ReLU (the features), linear (logits).
pub struct DigitClassifier {
    conv1: (Tensor, Tensor),
    conv2: (Tensor, Tensor),
    fc1: (Tensor, Tensor),
    fc2: (Tensor, Tensor),
}

/// The classifier's view of a batch.
pub struct Classified {
    /// [B, 64] penultimate features.
    pub features: Tensor,
    /// [B, 10] logits.
    pub logits: Tensor,
}

fn relu(mut t: Tensor) -> Tensor {
    t.data_mut().iter_mut().for_each(|v| *v = v.max(0.0));
    t
}

impl DigitClassifier {
    /// Reads the classifier's parameters (`conv1`, `conv2`, `fc1`, `fc2`, each `weight` and
    /// `bias`) from safetensors bytes; `origin` names them in errors.
    pub fn from_safetensors(bytes: &[u8], origin: &str) -> Result<Self> {
        let tensors = safetensors_io::parse(bytes, origin)?
            .into_iter()
            .map(|(k, v)| (k, v.tensor))
            .collect();
        let mut ck = Checkpoint::from_tensors(tensors);
        let mut take = |w: &str, shape: &[usize]| ck.take(w, shape);
        Ok(DigitClassifier {
            conv1: (
                take("conv1.weight", &[32, 1, 3, 3])?,
                take("conv1.bias", &[32])?,
            ),
            conv2: (
                take("conv2.weight", &[64, 32, 3, 3])?,
                take("conv2.bias", &[64])?,
            ),
            fc1: (
                take("fc1.weight", &[64, 64 * 7 * 7])?,
                take("fc1.bias", &[64])?,
            ),
            fc2: (take("fc2.weight", &[10, 64])?, take("fc2.bias", &[10])?),
        })
    }

    /// `images`: [B, 1, 28, 28] in [-1, 1].
    pub fn classify(&self, images: &Tensor) -> Result<Classified> {
        match images.shape() {
            [_, 1, 28, 28] => {}
            s => {
                return Err(Error::input(
                    "images",
                    format!("shape {s:?}; the digit classifier takes [B, 1, 28, 28]"),
                ))
            }
        }
        let conv = |x: &Tensor, (w, b): &(Tensor, Tensor)| {
            cpu::try_conv2d(x, w, Some(b.data()), 2, Padding::same(1)).map(relu)
        };
        let h = conv(&conv(images, &self.conv1)?, &self.conv2)?;
        let b = h.shape()[0];
        let flat = h.reshape([b, 64 * 7 * 7])?;
        let features = relu(cpu::try_linear(
            &flat,
            &self.fc1.0,
            Some(self.fc1.1.data()),
        )?);
        let logits = cpu::try_linear(&features, &self.fc2.0, Some(self.fc2.1.data()))?;
        Ok(Classified { features, logits })
    }
}

/// The classifier's feature width (the FID's dimension).
pub const FEATURES: usize = 64;

/// The fewest samples an FID is computed from: the covariance of `FEATURES` features from N
/// samples has rank at most N − 1, so it can be non-singular only from `FEATURES + 1` samples
/// on (an FID from fewer compares a degenerate Gaussian, one image's being a point).
pub const MIN_FID_SAMPLES: usize = FEATURES + 1;

/// What [`builtin::score`](crate::builtin::score) reports for a batch of digit samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Scores {
    /// How many samples were scored.
    pub samples: usize,
    /// Mean over samples of the classifier's largest softmax probability.
    pub mean_confidence: f64,
    /// The FID of the samples' features against the real digits' (None when not asked for).
    pub fid: Option<f64>,
}

/// The error for an FID asked of `n` samples, too few.
pub(crate) fn too_few_for_fid(n: usize) -> Error {
    Error::input("samples", format!(
        "an FID needs at least {MIN_FID_SAMPLES} samples ({FEATURES} features need {MIN_FID_SAMPLES} \
         for a non-singular covariance); got {n}"
    ))
}

/// The FID of `features` (`[N, D]`) against a real Gaussian (`mu` `[D]`, `sigma` `[D·D]`), checked:
/// N ≥ D + 1, finite features, statistics of the same width, and a finite result.
pub fn fid(features: &Tensor, mu: &[f64], sigma: &[f64]) -> Result<f64> {
    let (n, d) = match features.shape() {
        [n, d] => (*n, *d),
        s => {
            return Err(Error::input(
                "features",
                format!("shape {s:?}; expected [N, D]"),
            ))
        }
    };
    if d == 0 || mu.len() != d || sigma.len() != d * d {
        return Err(Error::input(
            "statistics",
            format!(
                "FID: {d} features against statistics of {} means and {} covariances",
                mu.len(),
                sigma.len()
            ),
        ));
    }
    if n < d + 1 {
        return Err(if d == FEATURES {
            too_few_for_fid(n)
        } else {
            Error::input(
                "samples",
                format!(
                    "an FID of {d} features needs at least {} samples; got {n}",
                    d + 1
                ),
            )
        });
    }
    if features.data().iter().any(|v| !v.is_finite())
        || mu.iter().chain(sigma).any(|v| !v.is_finite())
    {
        return Err(Error::NonFinite {
            at: "FID".into(),
            msg: "FID: non-finite features or statistics".into(),
        });
    }
    let (m, s) = gaussian(features);
    let v = frechet_distance(&m, &s, mu, sigma);
    if !v.is_finite() {
        return Err(Error::NonFinite {
            at: "FID".into(),
            msg: format!("FID: the distance is not finite ({v})"),
        });
    }
    Ok(v)
}

/// Mean over samples of the largest softmax probability.
pub fn mean_confidence(logits: &Tensor) -> f64 {
    let k = logits.shape()[1];
    let rows = logits.data().chunks(k);
    let n = rows.len().max(1) as f64;
    rows.map(|r| {
        let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        1.0 / r.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>()
    })
    .sum::<f64>()
        / n
}

/// Mean and covariance (N − 1 normalisation) of the rows of `x` ([N, D], N ≥ 2; `fid` checks
/// that and more).
pub fn gaussian(x: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let (n, d) = (x.shape()[0], x.shape()[1]);
    let mut mu = vec![0f64; d];
    for row in x.data().chunks(d) {
        mu.iter_mut().zip(row).for_each(|(m, &v)| *m += v as f64);
    }
    mu.iter_mut().for_each(|m| *m /= n as f64);
    let mut cov = vec![0f64; d * d];
    for row in x.data().chunks(d) {
        for i in 0..d {
            let di = row[i] as f64 - mu[i];
            for j in 0..d {
                cov[i * d + j] += di * (row[j] as f64 - mu[j]);
            }
        }
    }
    let denom = (n.max(2) - 1) as f64;
    cov.iter_mut().for_each(|c| *c /= denom);
    (mu, cov)
}

/// `‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^{1/2})`, the trace term taken as
/// `Σ √λ(Σ₁^{1/2} Σ₂ Σ₁^{1/2})` (same eigenvalues as Σ₁Σ₂, but symmetric).
pub fn frechet_distance(mu1: &[f64], s1: &[f64], mu2: &[f64], s2: &[f64]) -> f64 {
    let d = mu1.len();
    let diff: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b) * (a - b)).sum();
    let root1 = sym_sqrt(s1, d);
    let m = matmul(&matmul(&root1, s2, d), &root1, d);
    let (vals, _) = jacobi_eigen(&m, d);
    let tr_sqrt: f64 = vals.iter().map(|&l| l.max(0.0).sqrt()).sum();
    let tr = |s: &[f64]| (0..d).map(|i| s[i * d + i]).sum::<f64>();
    diff + tr(s1) + tr(s2) - 2.0 * tr_sqrt
}

fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut c = vec![0f64; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            for j in 0..d {
                c[i * d + j] += aik * b[k * d + j];
            }
        }
    }
    c
}

/// The PSD square root of a symmetric matrix (negative eigenvalues from rounding clamp to 0).
fn sym_sqrt(s: &[f64], d: usize) -> Vec<f64> {
    let (vals, vecs) = jacobi_eigen(s, d);
    let mut out = vec![0f64; d * d];
    for (k, &l) in vals.iter().enumerate() {
        let r = l.max(0.0).sqrt();
        for i in 0..d {
            for j in 0..d {
                out[i * d + j] += r * vecs[i * d + k] * vecs[j * d + k];
            }
        }
    }
    out
}

/// Cyclic Jacobi eigendecomposition of a symmetric matrix: (eigenvalues, eigenvectors as
/// columns).
fn jacobi_eigen(s: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = s.to_vec();
    let mut v = vec![0f64; d * d];
    (0..d).for_each(|i| v[i * d + i] = 1.0);
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j] * a[i * d + j])
            .sum();
        let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().max(1e-300);
        if off <= 1e-30 * scale {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s_ = t * c;
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = c * akp - s_ * akq;
                    a[k * d + q] = s_ * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = c * apk - s_ * aqk;
                    a[q * d + k] = s_ * apk + c * aqk;
                }
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * vkp - s_ * vkq;
                    v[k * d + q] = s_ * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}
