//! Sample quality of the built-in digit model with and without the skip boosters, at a few
//! step counts: DDIM from fixed noise, scored by the built-in classifier (FID of its features
//! against the real digits, mean confidence). Samples: FREELUNCH_SAMPLES (default 256);
//! threads: FREELUNCH_THREADS.

mod common;

use freelunch::boosters::{Boosters, FreeU, SkipScales};
use freelunch::eval::{frechet_distance, gaussian, mean_confidence};
use freelunch::schedulers::{self, SampleOptions, SamplerKind, SeededNoise};
use freelunch::{builtin, Tensor};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("FREELUNCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let pool = common::pool();
    let unet = builtin::unet().unwrap();
    let config = builtin::scheduler().unwrap();
    let classifier = builtin::classifier().unwrap();
    let (mu, sigma) = builtin::real_stats().unwrap();
    let noise = Tensor::randn([n, 1, 28, 28], 1234);
    let variants: Vec<(&str, Boosters)> = vec![
        ("plain", Boosters::default()),
        (
            "FreeU sd15 preset (1.5, 1.6, 0.9, 0.2)",
            Boosters {
                freeu: Some(FreeU::preset("sd15").unwrap()),
                ..Default::default()
            },
        ),
        (
            "FreeU mild (1.1, 1.2, 0.9, 0.9)",
            Boosters {
                freeu: Some(FreeU::new(1.1, 1.2, 0.9, 0.9)),
                ..Default::default()
            },
        ),
        (
            "Skip-Tuning 1.0 → 0.8",
            Boosters {
                skip_scales: Some(SkipScales::Linear {
                    top: 1.0,
                    bottom: 0.8,
                }),
                ..Default::default()
            },
        ),
    ];
    println!(
        "built-in model, DDIM (eta 0), {n} samples from fixed noise, {} threads",
        common::threads()
    );
    println!("| steps | variant | FID ↓ | mean confidence ↑ |");
    println!("|---|---|---|---|");
    for steps in [10, 25, 50] {
        for (name, b) in &variants {
            let mut s = schedulers::build(SamplerKind::Ddim, &config, steps, 0.0).unwrap();
            let opts = SampleOptions {
                guidance: None,
                conditioning: Default::default(),
                boosters: b.clone(),
                on_step: None,
            };
            let mut x = pool
                .install(|| {
                    schedulers::sample(&unet, s.as_mut(), &noise, opts, &mut SeededNoise(0))
                })
                .unwrap();
            x.data_mut()
                .iter_mut()
                .for_each(|v| *v = v.clamp(-1.0, 1.0));
            let out = pool.install(|| classifier.classify(&x)).unwrap();
            let (m, c) = gaussian(&out.features);
            let fid = frechet_distance(&m, &c, &mu, &sigma);
            println!(
                "| {steps} | {name} | {fid:.1} | {:.3} |",
                mean_confidence(&out.logits)
            );
        }
    }
}
