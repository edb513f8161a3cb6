//! The README's main job: `freelunch sample` with the built-in model writes a PNG grid of digits
//! that the built-in classifier reads with confidence far above chance, spread over the classes.

mod common;

use std::process::Command;

use freelunch::builtin;
use freelunch::eval::{frechet_distance, gaussian, mean_confidence};

fn sample(args: &[&str], out: &std::path::Path) {
    let o = Command::new(common::freelunch_bin())
        .arg("sample")
        .args(args)
        .arg("--output")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn main_job_writes_a_png_grid_of_digits() {
    let dir = common::scratch("builtin");
    let png = dir.join("digits.png");
    sample(&["--steps", "20"], &png);
    let reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()))
        .read_info()
        .unwrap();
    let info = reader.info();
    // 16 digits of 28×28 in a 4×4 grid.
    assert_eq!(
        (info.width, info.height, info.color_type),
        (112, 112, png::ColorType::Grayscale)
    );
}

#[test]
fn built_in_samples_are_digits() {
    let dir = common::scratch("builtin");
    let out = dir.join("digits.safetensors");
    sample(&["--steps", "20", "--batch", "64", "--seed", "7"], &out);
    let mut x = common::load_sample(&out);
    assert_eq!(x.shape(), &[64, 1, 28, 28]);
    x.data_mut()
        .iter_mut()
        .for_each(|v| *v = v.clamp(-1.0, 1.0));
    let c = builtin::classifier().unwrap().classify(&x).unwrap();
    let conf = mean_confidence(&c.logits);
    let mut classes = std::collections::BTreeSet::new();
    for row in c.logits.data().chunks(10) {
        let arg = (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        classes.insert(arg);
    }
    let (mu, sigma) = builtin::real_stats().unwrap();
    let (m, s) = gaussian(&c.features);
    let fid = frechet_distance(&m, &s, &mu, &sigma);
    eprintln!("confidence {conf:.3}, classes {classes:?}, FID {fid:.1}");
    // Chance is 0.1; pure noise makes this classifier name one class for everything.
    assert!(conf > 0.6, "mean confidence {conf}");
    assert!(classes.len() >= 6, "only classes {classes:?}");
    assert!(fid < 400.0, "FID {fid}");
}
