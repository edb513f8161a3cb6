//! The boosters on the CPU path: properties, and (in `booster_goldens`) goldens.

mod common;

use common::fixture;
use freelunch::backend::cpu::fourier::{fourier_filter, py_slice, FilterForm};
use freelunch::boosters::{Boosters, FreeU, FreeUBlocks, SkipScales};
use freelunch::{Tensor, UNet, UNetInputs};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Both forms of the Fourier filter are exact: they agree to f32 rounding.
    #[test]
    fn fft_and_direct_filters_agree(
        h in 1usize..=64, w in 1usize..=64, t in 1usize..=3, s in 0.0f32..=2.0, seed in any::<u64>(),
    ) {
        let x = Tensor::randn([2, h, w], seed);
        let fft = fourier_filter(&x, t, s, FilterForm::Fft);
        let direct = fourier_filter(&x, t, s, FilterForm::Direct);
        let err = fft.rel_l2(&direct);
        prop_assert!(err <= 2e-6, "H={h} W={w} t={t} s={s}: rel L2 {err:.3e}");
    }

    /// For t = 1 and H, W ≥ 3 the filter scales DC by s, the ±(1,0), ±(0,1), ±(1,1)
    /// pairs by (1+s)/2, and nothing else; checked through a plane made of those modes.
    #[test]
    fn t1_closed_form(h in 3usize..20, w in 3usize..20, s in 0.0f32..=2.0, seed in any::<u64>()) {
        let c = Tensor::randn([6], seed).data().to_vec();
        use std::f64::consts::TAU;
        let mode = |m: usize, n: usize, k: f64, l: f64| (TAU * (k * m as f64 / h as f64 + l * n as f64 / w as f64)).cos();
        let far = |m: usize, n: usize| mode(m, n, (h / 2) as f64, (w / 2) as f64); // a frequency outside the window
        let mut x = vec![0f32; h * w];
        let mut want = vec![0f32; h * w];
        let g = (1.0 + s as f64) / 2.0;
        for m in 0..h { for n in 0..w {
            let parts = [
                (c[0] as f64, 1.0, s as f64),
                (c[1] as f64, mode(m, n, 1.0, 0.0), g),
                (c[2] as f64, mode(m, n, 0.0, 1.0), g),
                (c[3] as f64, mode(m, n, 1.0, 1.0), g),
                (c[4] as f64, mode(m, n, 1.0, -1.0), 1.0),
                // (H/2, W/2) lies outside the window only from 5 on (at 3 it is (1, 1)).
                (if h >= 5 && w >= 5 { c[5] as f64 } else { 0.0 }, far(m, n), 1.0),
            ];
            x[m * w + n] = parts.iter().map(|p| p.0 * p.1).sum::<f64>() as f32;
            want[m * w + n] = parts.iter().map(|p| p.0 * p.1 * p.2).sum::<f64>() as f32;
        }}
        let got = fourier_filter(&Tensor::new([h, w], x).unwrap(), 1, s, FilterForm::Direct);
        let want = Tensor::new([h, w], want).unwrap();
        prop_assert!(got.rel_l2(&want) <= 1e-5, "rel L2 {}", got.rel_l2(&want));
    }
}

#[test]
fn python_slices() {
    assert_eq!(py_slice(-1, 1, 1), 0..1);
    assert_eq!(py_slice(0, 2, 2), 0..2);
    assert_eq!(py_slice(-1, 3, 3), 2..3);
    assert_eq!(py_slice(-2, 2, 1), 0..1);
    assert_eq!(py_slice(2, 1, 5), 2..2);
    assert_eq!(py_slice(3, 9, 5), 3..5);
}

fn sd15() -> (UNet, UNetInputs) {
    let dir = fixture("sd15_like");
    let unet = UNet::from_dir(&dir).unwrap();
    let inputs = UNetInputs::load(&dir.join("inputs.safetensors")).unwrap();
    (unet, inputs)
}

#[test]
fn neutral_settings_give_the_plain_output_bit_for_bit() {
    let (unet, inputs) = sd15();
    let plain = unet.forward(&inputs).unwrap();
    let n = unet.num_skips();
    for v2 in [false, true] {
        for blocks in [FreeUBlocks::Stage, FreeUBlocks::Channels] {
            let mut freeu = FreeU::new(1.0, 1.0, 1.0, 1.0);
            freeu.v2 = v2;
            freeu.blocks = blocks;
            let b = Boosters {
                skip_scales: Some(SkipScales::Linear {
                    top: 1.0,
                    bottom: 1.0,
                }),
                freeu: Some(freeu),
                ..Boosters::default()
            };
            assert_eq!(unet.forward_with(&inputs, &b).unwrap(), plain);
        }
    }
    let b = Boosters {
        skip_scales: Some(SkipScales::Explicit(vec![1.0; n])),
        ..Boosters::default()
    };
    assert_eq!(unet.forward_with(&inputs, &b).unwrap(), plain);
    // And a non-neutral setting does change it.
    let b = Boosters {
        freeu: Some(FreeU::preset("sd15").unwrap()),
        ..Boosters::default()
    };
    assert!(unet.forward_with(&inputs, &b).unwrap().rel_l2(&plain) > 1e-3);
}

#[test]
fn bad_booster_settings_are_errors() {
    let (unet, inputs) = sd15();
    let msg = FreeU::preset("sd3").unwrap_err().to_string();
    assert!(msg.contains("sd3") && msg.contains("sd15"), "{msg}");
    let b = Boosters {
        skip_scales: Some(SkipScales::Explicit(vec![1.0; 3])),
        ..Boosters::default()
    };
    let msg = unet.forward_with(&inputs, &b).unwrap_err().to_string();
    assert!(
        msg.contains("3 values") && msg.contains(&unet.num_skips().to_string()),
        "{msg}"
    );
    let mut f = FreeU::new(1.1, 1.2, f32::NAN, 0.5);
    let msg = unet
        .forward_with(
            &inputs,
            &Boosters {
                freeu: Some(f.clone()),
                ..Boosters::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(msg.contains("finite"), "{msg}");
    f.s1 = 0.5;
    f.threshold = 0;
    let msg = unet
        .forward_with(
            &inputs,
            &Boosters {
                freeu: Some(f),
                ..Boosters::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(msg.contains("threshold"), "{msg}");
}

/// Every variant `tools/gen_booster_goldens.py` wrote: FreeU (diffusers' own `enable_freeu` for the
/// stage convention, the plain PyTorch reference for the rest), Skip-Tuning, explicit skip
/// scales, at sizes where levels are 1×1, 2×2 or odd; each with both filter forms.
#[test]
fn booster_goldens() {
    let mut models = common::goldens::Models::default();
    let goldens = common::goldens::booster_goldens();
    for g in &goldens {
        let out = models
            .get(&g.model)
            .forward_with(&g.inputs, &g.boosters)
            .unwrap();
        let err = out.rel_l2(&g.expected);
        assert!(err <= 1e-4, "{}: rel L2 {err:.3e}", g.name);
    }
    assert!(
        goldens.len() >= 40,
        "only {} booster goldens found",
        goldens.len()
    );
}
