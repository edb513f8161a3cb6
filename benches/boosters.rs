//! What each booster costs on the CPU forward of an SD1.5-shaped U-Net
//! (`tools/configs/sd15-small.json`: SD1.5's layout at a quarter of its widths; random weights;
//! batch 2, 32×32 latents, 77 text tokens). Threads: FREELUNCH_THREADS (default: all cores);
//! rounds: FREELUNCH_ROUNDS (default 7).
//!
//! A bench binary rather than criterion: the variants run interleaved, one forward each per
//! round, and each is reported as its ratio to the plain forward of the same round (min and
//! median over rounds), so machine drift between variants does not enter the figures.

mod common;

use std::sync::Arc;

use freelunch::backend::cpu::fourier::FilterForm;
use freelunch::boosters::mask_generator::{Gumbel, MaskGenerator};
use freelunch::boosters::{Boosters, FreeU, FreeUBlocks, SkipScales};
use freelunch::weights::RandomWeights;
use freelunch::{Tensor, UNet, UNetConfig, UNetInputs};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let threads = common::threads();
    let pool = common::pool();
    let path = common::root().join("tools/configs/sd15-small.json");
    let unet = UNet::load(
        UNetConfig::from_file(&path).unwrap(),
        &mut RandomWeights::new(0),
    )
    .unwrap();
    let mut inputs = UNetInputs::new(Tensor::randn([2, 4, 32, 32], 1), 500.0);
    inputs.encoder_hidden_states = Some(Tensor::randn([2, 77, 768], 2));

    let freeu = |filter, v2, blocks| {
        let mut f = FreeU::preset("sd15").unwrap();
        f.filter = filter;
        f.v2 = v2;
        f.blocks = blocks;
        Some(f)
    };
    let generator =
        MaskGenerator::from_source(&mut RandomWeights::new(3), &unet, Gumbel::Seeded(42)).unwrap();
    let variants: Vec<(&str, Boosters)> = vec![
        ("plain", Boosters::default()),
        (
            "freeu_direct",
            Boosters {
                freeu: freeu(FilterForm::Direct, false, FreeUBlocks::Stage),
                ..Default::default()
            },
        ),
        (
            "freeu_fft",
            Boosters {
                freeu: freeu(FilterForm::Fft, false, FreeUBlocks::Stage),
                ..Default::default()
            },
        ),
        (
            "freeu_v2_channels",
            Boosters {
                freeu: freeu(FilterForm::Direct, true, FreeUBlocks::Channels),
                ..Default::default()
            },
        ),
        (
            "skip_tuning",
            Boosters {
                skip_scales: Some(SkipScales::Linear {
                    top: 1.0,
                    bottom: 0.8,
                }),
                ..Default::default()
            },
        ),
        (
            "masks_shared",
            Boosters {
                masks: Some(Arc::new(common::official_masks(&unet, false, 2))),
                ..Default::default()
            },
        ),
        (
            "masks_per_sample",
            Boosters {
                masks: Some(Arc::new(common::official_masks(&unet, true, 2))),
                ..Default::default()
            },
        ),
        (
            "mask_generator",
            Boosters {
                mask_generator: Some(Arc::new(generator)),
                ..Default::default()
            },
        ),
    ];
    let rounds: usize = std::env::var("FREELUNCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let mut times = vec![Vec::new(); variants.len()];
    pool.install(|| {
        for (_, b) in &variants {
            unet.forward_with(&inputs, b).unwrap(); // warm-up
        }
        for _ in 0..rounds {
            for (t, (_, b)) in times.iter_mut().zip(&variants) {
                let start = std::time::Instant::now();
                unet.forward_with(&inputs, b).unwrap();
                t.push(start.elapsed().as_secs_f64());
            }
        }
    });
    println!("boosters on sd15-small, batch 2, {threads} threads, {rounds} interleaved rounds");
    println!("| variant | median ms | ratio to plain (min) | ratio to plain (median) |");
    println!("|---|---|---|---|");
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    for (i, (name, _)) in variants.iter().enumerate() {
        let ratios: Vec<f64> = times[i].iter().zip(&times[0]).map(|(t, p)| t / p).collect();
        let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "| {name} | {:.1} | {min:.3} | {:.3} |",
            median(times[i].clone()) * 1e3,
            median(ratios)
        );
    }
}
