//! One U-Net step of Stable Diffusion 1.5's size on the GPU (random weights, 64×64 latents,
//! batch 2, 77×768 text states), plain and with each booster: FreeU (direct and cuFFT),
//! Skip-Tuning, per-sample MaskUNet masks (keep 0.9) on the 72 decoder attention projections.
//! Compare with `tools/bench_diffusers_gpu.py` run in the same call. `FREELUNCH_DTYPE` = f16
//! (default), bf16 or f32. Prints `skipped: no CUDA device` where there is no GPU;
//! `FREELUNCH_DEVICE=emu` runs it on the PTX executor (slowly: its speed, not a GPU's).

use std::sync::Arc;

mod common;

use common::root;
use criterion::{criterion_group, criterion_main, Criterion};
use freelunch::backend::cpu::fourier::FilterForm;
use freelunch::backend::Backend;
use freelunch::boosters::{Boosters, FreeU, SkipScales};
use freelunch::weights::RandomWeights;
use freelunch::{Tensor, UNet, UNetConfig, UNetInputs};

fn unet_step(c: &mut Criterion) {
    let Some(gpu) = common::gpu() else { return };
    let dtype = gpu.dtype();
    let config = UNetConfig::from_file(&root().join("tools/configs/sd15.json")).unwrap();
    let unet = UNet::load(config, &mut RandomWeights::new(0)).unwrap();
    let mut inputs = UNetInputs::new(Tensor::randn([2, 4, 64, 64], 1), 500.0);
    inputs.encoder_hidden_states = Some(Tensor::randn([2, 77, 768], 2));

    let masks = common::official_masks(&unet, true, 2);
    let freeu = |filter| {
        let mut f = FreeU::preset("sd15").unwrap();
        f.filter = filter;
        Some(f)
    };
    let variants = [
        ("plain", Boosters::default()),
        (
            "freeu_direct",
            Boosters {
                freeu: freeu(FilterForm::Direct),
                ..Default::default()
            },
        ),
        (
            "freeu_cufft",
            Boosters {
                freeu: freeu(FilterForm::Fft),
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
            "masks_per_sample",
            Boosters {
                masks: Some(Arc::new(masks)),
                ..Default::default()
            },
        ),
    ];
    println!(
        "device: {} ({dtype:?}), SD1.5 U-Net, batch 2, 64×64 latents",
        gpu.name()
    );
    let mut g = c.benchmark_group(format!("sd15_unet_step_{}", dtype.suffix()));
    g.sample_size(20);
    for (name, boosters) in &variants {
        // Warm-up: weights and masks go to the device on first use.
        gpu.download(&unet.forward_on(gpu.as_ref(), &inputs, boosters).unwrap())
            .unwrap();
        g.bench_function(*name, |b| {
            b.iter(|| {
                let y = unet.forward_on(gpu.as_ref(), &inputs, boosters).unwrap();
                gpu.synchronize().unwrap();
                y
            })
        });
    }
    g.finish();
}

criterion_group!(benches, unet_step);
criterion_main!(benches);
