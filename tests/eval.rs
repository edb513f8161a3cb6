//! The digit classifier and FID against PyTorch / scipy (`tools/train_mnist.py`'s goldens).

mod common;

use freelunch::eval::{frechet_distance, gaussian, mean_confidence, DigitClassifier};
use freelunch::safetensors_io;

fn assets() -> std::path::PathBuf {
    common::root().join("assets/mnist")
}

#[test]
fn classifier_matches_pytorch() {
    let bytes = std::fs::read(assets().join("classifier.safetensors")).unwrap();
    let clf = DigitClassifier::from_safetensors(&bytes, "classifier").unwrap();
    let mut io = safetensors_io::load(&assets().join("golden/classifier_io.safetensors")).unwrap();
    let mut take = |k: &str| io.remove(k).unwrap().tensor;
    let (images, features, logits, conf) = (
        take("images"),
        take("features"),
        take("logits"),
        take("confidence"),
    );
    let out = clf.classify(&images).unwrap();
    assert!(
        out.features.rel_l2(&features) <= 1e-5,
        "{}",
        out.features.rel_l2(&features)
    );
    assert!(
        out.logits.rel_l2(&logits) <= 1e-5,
        "{}",
        out.logits.rel_l2(&logits)
    );
    let c = mean_confidence(&out.logits);
    assert!(
        (c - conf.data()[0] as f64).abs() <= 1e-5,
        "{c} vs {}",
        conf.data()[0]
    );
}

#[test]
fn fid_matches_scipy() {
    let mut io = safetensors_io::load(&assets().join("golden/fid_io.safetensors")).unwrap();
    let (a, b, fid) = (
        io.remove("a").unwrap().tensor,
        io.remove("b").unwrap().tensor,
        io.remove("fid").unwrap().tensor,
    );
    let (m1, s1) = gaussian(&a);
    let (m2, s2) = gaussian(&b);
    let got = frechet_distance(&m1, &s1, &m2, &s2);
    let want = fid.data()[0] as f64;
    assert!(
        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
        "{got} vs {want}"
    );
    // Identical sets are at distance ~0.
    assert!(frechet_distance(&m1, &s1, &m1, &s1).abs() < 1e-6 * want.abs().max(1.0));
}
