//! MaskDM's U-ViT against its own `mask_uvit.py` and `gaussian_ddpm.py` (goldens of
//! tools/gen_uvit_goldens.py, fixtures in tests/fixtures/uvit): the forward with and without a
//! token mask, Skip-Tuning and weight masks, eval.py's DDIM sampler; the CUDA backend on the PTX
//! executor (`FREELUNCH_DEVICE=emu`) against the CPU; bad inputs as typed errors.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use freelunch::backend::{Backend, Cpu};
use freelunch::boosters::{Boosters, MaskSet, SkipScales};
use freelunch::device::{DType, Exec};
use freelunch::models::mask_uvit::{MaskedUViT, MaskedUViTConfig, TokenMask};
use freelunch::models::Denoiser;
use freelunch::schedulers::{self, GivenNoise, SampleOptions, SamplerKind, SchedulerConfig};
use freelunch::{Error, Tensor, UNetInputs};

fn dir() -> PathBuf {
    common::fixture("uvit")
}

fn goldens() -> BTreeMap<String, Tensor> {
    freelunch::safetensors_io::load(&dir().join("goldens.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.tensor))
        .collect()
}

fn model(name: &str) -> MaskedUViT {
    MaskedUViT::from_dir(&dir().join(name)).unwrap()
}

fn inputs(g: &BTreeMap<String, Tensor>, case: &str, labels: bool) -> UNetInputs {
    let mut i = UNetInputs::new(g[&format!("{case}.sample")].clone(), 0.0);
    i.timesteps = g[&format!("{case}.timestep")].data().to_vec();
    if labels {
        i.class_labels = Some(g[&format!("{case}.class_labels")].data().to_vec());
    }
    i
}

/// Max abs error and relative L2 of `got` against `want`, asserting the shape, a reference
/// that is not all zeros, and the relative bound.
fn close(what: &str, got: &Tensor, want: &Tensor, tol: f64) -> (f32, f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    assert!(
        want.data().iter().any(|&v| v != 0.0),
        "{what}: zero reference"
    );
    let max = got
        .data()
        .iter()
        .zip(want.data())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let rel = got.rel_l2(want);
    println!("{what}: max abs {max:.3e}, rel L2 {rel:.3e}");
    assert!(rel < tol, "{what}: rel L2 {rel:.3e} above {tol:.0e}");
    (max, rel)
}

const CPU_TOL: f64 = 1e-5;

#[test]
fn forward_matches_mask_uvit() {
    let g = goldens();
    let base = model("base");
    assert_eq!(base.config.num_patches(), 16);
    let i = inputs(&g, "base", false);
    close("base", &base.forward(&i).unwrap(), &g["base.out"], CPU_TOL);

    let variant = model("variant");
    let iv = inputs(&g, "variant", true);
    close(
        "variant (labels)",
        &variant.forward(&iv).unwrap(),
        &g["variant.out"],
        CPU_TOL,
    );
    let mut uncond = iv.clone();
    uncond.class_labels = None;
    close(
        "variant (uncond_embed)",
        &variant.forward(&uncond).unwrap(),
        &g["variant.out_uncond"],
        CPU_TOL,
    );
}

#[test]
fn masked_forward_runs_only_the_visible_tokens() {
    let g = goldens();
    for (case, labels) in [("base", false), ("variant", true)] {
        let m = model(case);
        let i = inputs(&g, case, labels);
        let mask = TokenMask::from_tensor(&g[&format!("{case}.token_mask")]).unwrap();
        let got = m.forward_masked(&i, &mask, &Boosters::default()).unwrap();
        let want = &g[&format!("{case}.out_masked")];
        close(&format!("{case} masked"), &got, want, CPU_TOL);
        // Not the unmasked output's patches at the visible places: attention saw fewer tokens.
        let full = m.forward(&i).unwrap();
        let (p, c) = (m.config.patch_size, m.config.in_chans);
        let side = m.config.img_size;
        let grid = side / p;
        let mut picked = Vec::new();
        for (s, row) in mask.dropped.iter().enumerate() {
            for (j, _) in row.iter().enumerate().filter(|(_, &d)| !d) {
                let (gy, gx) = (j / grid, j % grid);
                for p1 in 0..p {
                    for p2 in 0..p {
                        for ch in 0..c {
                            let (y, x) = (gy * p + p1, gx * p + p2);
                            picked.push(full.data()[((s * c + ch) * side + y) * side + x]);
                        }
                    }
                }
            }
        }
        let picked = Tensor::new(want.shape().to_vec(), picked).unwrap();
        let d = picked.rel_l2(want);
        assert!(
            d > 1e-2,
            "{case}: the masked output equals the full one's patches ({d:.2e})"
        );
    }
}

#[test]
fn skip_tuning_scales_the_long_skips() {
    let g = goldens();
    let base = model("base");
    assert_eq!(base.num_skips(), 2);
    let i = inputs(&g, "base", false);
    let b = Boosters {
        skip_scales: Some(SkipScales::Linear {
            top: 0.8,
            bottom: 0.5,
        }),
        ..Boosters::default()
    };
    let got = base.forward_with(&i, &b).unwrap();
    close("skip-tuned", &got, &g["base.out_skip"], CPU_TOL);
    assert!(
        got.rel_l2(&g["base.out"]) > 1e-2,
        "the factors changed nothing"
    );
    let mask = TokenMask::from_tensor(&g["base.token_mask"]).unwrap();
    let got = base.forward_masked(&i, &mask, &b).unwrap();
    close(
        "skip-tuned masked",
        &got,
        &g["base.out_skip_masked"],
        CPU_TOL,
    );
    // An explicit list of the wrong length is refused.
    let bad = Boosters {
        skip_scales: Some(SkipScales::Explicit(vec![1.0; 3])),
        ..Boosters::default()
    };
    assert!(matches!(
        base.forward_with(&i, &bad),
        Err(Error::Booster { .. })
    ));
}

fn freeu() -> Boosters {
    Boosters {
        freeu: Some(freelunch::boosters::FreeU::new(1.1, 1.2, 0.9, 0.2)),
        ..Boosters::default()
    }
}

#[test]
fn freeu_extension_filters_the_skip_patch_grid() {
    // This crate's FreeU for a U-ViT (not the paper's) against its PyTorch statement in the
    // generator, with both filter forms.
    let g = goldens();
    let base = model("base");
    let i = inputs(&g, "base", false);
    for form in [
        freelunch::backend::cpu::fourier::FilterForm::Direct,
        freelunch::backend::cpu::fourier::FilterForm::Fft,
    ] {
        let mut b = freeu();
        b.freeu.as_mut().unwrap().filter = form;
        let got = base.forward_with(&i, &b).unwrap();
        close(
            &format!("freeu {form:?}"),
            &got,
            &g["base.out_freeu"],
            CPU_TOL,
        );
        assert!(got.rel_l2(&g["base.out"]) > 1e-2);
    }
}

fn weight_masks(g: &BTreeMap<String, Tensor>, m: &MaskedUViT) -> MaskSet {
    // The masks as a mask file holds them: u8 under the weights' names.
    let tensors: Vec<(String, Vec<u8>, Vec<usize>)> = g
        .iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("base.weight_mask.")?;
            Some((
                name.to_string(),
                v.data().iter().map(|&x| x as u8).collect(),
                v.shape().to_vec(),
            ))
        })
        .collect();
    assert_eq!(tensors.len(), 4);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::tensor::Dtype::U8, s.clone(), d)
                    .unwrap();
            (n.clone(), view)
        })
        .collect();
    let bytes = safetensors::tensor::serialize(views, &None).unwrap();
    MaskSet::parse(&bytes, "weight masks", m.layers()).unwrap()
}

#[test]
fn weight_masks_act_on_every_kind_of_linear() {
    let g = goldens();
    let base = model("base");
    assert!(base
        .layers()
        .contains_key("encoder.in_blocks.0.attn.qkv.weight"));
    let i = inputs(&g, "base", false);
    let b = Boosters {
        masks: Some(Arc::new(weight_masks(&g, &base))),
        ..Boosters::default()
    };
    let got = base.forward_with(&i, &b).unwrap();
    close("weight-masked", &got, &g["base.out_weight_masked"], CPU_TOL);
    assert!(got.rel_l2(&g["base.out"]) > 1e-2);
}

fn ddim(m: &dyn Denoiser, g: &BTreeMap<String, Tensor>, eta: &str) -> Tensor {
    let text = std::fs::read_to_string(dir().join("base/scheduler_config.json")).unwrap();
    let cfg = SchedulerConfig::from_json_str(&text, "scheduler_config.json").unwrap();
    let e = if eta == "eta1" { 1.0 } else { 0.0 };
    let mut sampler = schedulers::build(SamplerKind::Ddim, &cfg, 4, e).unwrap();
    assert_eq!(sampler.timesteps(), [999.0, 749.0, 499.0, 249.0]);
    let noise = &g[&format!("ddim.{eta}.noise")];
    // gaussian_ddpm draws noise after each step but the last (whose σ is 0).
    let mut steps: Vec<Tensor> = match g.get(&format!("ddim.{eta}.step_noise")) {
        Some(s) => {
            let per = noise.numel();
            (0..s.shape()[0])
                .map(|k| {
                    Tensor::new(noise.shape().to_vec(), s.data()[k * per..][..per].to_vec())
                        .unwrap()
                })
                .collect()
        }
        None => Vec::new(),
    };
    while steps.len() < 4 {
        steps.push(Tensor::zeros(noise.shape().to_vec()));
    }
    let opts = SampleOptions {
        guidance: None,
        conditioning: Default::default(),
        boosters: Boosters::default(),
        on_step: None,
    };
    schedulers::sample(m, sampler.as_mut(), noise, opts, &mut GivenNoise(steps)).unwrap()
}

#[test]
fn ddim_matches_gaussian_ddpm() {
    let g = goldens();
    let base = model("base");
    // diffusers' squaredcos_cap_v2 against MaskDM's cosine_beta_schedule (f64, then f32).
    let text = std::fs::read_to_string(dir().join("base/scheduler_config.json")).unwrap();
    let cfg = SchedulerConfig::from_json_str(&text, "scheduler_config.json").unwrap();
    let ac = Tensor::new(vec![1000], cfg.alphas_cumprod()).unwrap();
    let (max, _) = close("alphas_cumprod", &ac, &g["ddim.alphas_cumprod"], 1e-6);
    assert!(max < 1e-6);
    for eta in ["eta0", "eta1"] {
        let got = ddim(&base, &g, eta);
        close(
            &format!("DDIM {eta}"),
            &got,
            &g[&format!("ddim.{eta}.out")],
            1e-5,
        );
    }
}

#[test]
fn gpu_matches_cpu_on_the_executor() {
    let g = goldens();
    for (dtype, gpu) in common::gpu::gpus("uvit") {
        let exec = Exec::Cuda(gpu.clone());
        if *dtype != DType::F32 {
            // Half precision: the base forward within the dtype's tolerance of the CPU.
            let cpu = model("base");
            let i = inputs(&g, "base", false);
            let got = cpu.on(exec.clone()).forward(&i).unwrap();
            close(
                &format!("base gpu {dtype:?}"),
                &got,
                &cpu.forward(&i).unwrap(),
                common::gpu::tolerance(*dtype),
            );
            continue;
        }
        for (case, labels) in [("base", false), ("variant", true)] {
            let cpu = model(case);
            let m = cpu.on(exec.clone());
            let i = inputs(&g, case, labels);
            let want = cpu.forward(&i).unwrap();
            close(&format!("{case} gpu"), &m.forward(&i).unwrap(), &want, 1e-4);
            let mask = TokenMask::from_tensor(&g[&format!("{case}.token_mask")]).unwrap();
            let b = Boosters {
                skip_scales: Some(SkipScales::Linear {
                    top: 0.8,
                    bottom: 0.5,
                }),
                ..Boosters::default()
            };
            let want = cpu.forward_masked(&i, &mask, &b).unwrap();
            let got = m.forward_masked(&i, &mask, &b).unwrap();
            close(&format!("{case} gpu masked skip-tuned"), &got, &want, 1e-4);
        }
        let base = model("base");
        let got = base
            .on(exec.clone())
            .forward_with(&inputs(&g, "base", false), &freeu())
            .unwrap();
        close("gpu freeu", &got, &g["base.out_freeu"], 1e-4);
        let b = Boosters {
            masks: Some(Arc::new(weight_masks(&g, &base))),
            ..Boosters::default()
        };
        let i = inputs(&g, "base", false);
        let got = base.on(exec.clone()).forward_with(&i, &b).unwrap();
        close(
            "gpu weight-masked",
            &got,
            &g["base.out_weight_masked"],
            1e-4,
        );
        // The token ops on their own, against the CPU's.
        let x = Tensor::randn([2, 5, 7], 3);
        let y = Tensor::randn([2, 3, 7], 4);
        let pos = Tensor::randn([1, 8, 7], 5);
        let gx = gpu.upload(&x).unwrap();
        let gy = gpu.upload(&y).unwrap();
        let gp = gpu.upload(&pos).unwrap();
        let cat = gpu.cat_tokens(&gx, &gy, Some(&gp)).unwrap();
        let want = Cpu.cat_tokens(&x, &y, Some(&pos)).unwrap();
        common::gpu::compare(gpu, "cat_tokens", &cat, &want).unwrap();
        let rows = [4, 0, 2, 1, 1, 3];
        let got = gpu.gather_tokens(&gx, &rows).unwrap();
        common::gpu::compare(gpu, "gather", &got, &Cpu.gather_tokens(&x, &rows).unwrap()).unwrap();
        let got = gpu.slice_channels(&gx, 2, 4).unwrap();
        common::gpu::compare(gpu, "slice", &got, &Cpu.slice_channels(&x, 2, 4).unwrap()).unwrap();
        // Sampling through the Denoiser trait on the device.
        let got = ddim(&base.on(exec.clone()), &g, "eta1");
        close("gpu DDIM eta1", &got, &g["ddim.eta1.out"], 1e-4);
    }
}

#[test]
fn token_ops_reference_semantics() {
    // cat with the table, gather and slice on the CPU by hand.
    let a = Tensor::new(vec![2, 1, 2], vec![1., 2., 3., 4.]).unwrap();
    let b = Tensor::new(vec![2, 2, 2], vec![5., 6., 7., 8., 9., 10., 11., 12.]).unwrap();
    let pos = Tensor::new(vec![1, 3, 2], vec![0.5, 0., 0., 0.5, 1., 1.]).unwrap();
    let y = Cpu.cat_tokens(&a, &b, Some(&pos)).unwrap();
    assert_eq!(y.shape(), [2, 3, 2]);
    assert_eq!(
        y.data(),
        [1.5, 2., 5., 6.5, 8., 9., 3.5, 4., 9., 10.5, 12., 13.]
    );
    let g = Cpu.gather_tokens(&y, &[2, 0, 1, 1]).unwrap();
    assert_eq!(g.data(), [8., 9., 1.5, 2., 9., 10.5, 9., 10.5]);
    let s = Cpu.slice_channels(&y, 1, 1).unwrap();
    assert_eq!(s.shape(), [2, 3, 1]);
    assert_eq!(s.data(), [2., 6.5, 9., 4., 10.5, 13.]);
    assert!(matches!(
        Cpu.gather_tokens(&y, &[3, 0]),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        Cpu.gather_tokens(&y, &[0]),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        Cpu.slice_channels(&y, 1, 2),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        Cpu.cat_tokens(&a, &pos, None),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        Cpu.cat_tokens(&a, &b, Some(&a)),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn bad_masks_inputs_and_configs_are_typed_errors() {
    let g = goldens();
    let base = model("base");
    let i = inputs(&g, "base", false);
    let run = |m: Tensor| {
        TokenMask::from_tensor(&m).and_then(|m| base.forward_masked(&i, &m, &Boosters::default()))
    };
    // Unequal counts per sample.
    let mut m = vec![0.0f32; 32];
    m[0] = 1.0;
    m[16] = 1.0;
    m[17] = 1.0;
    assert!(matches!(
        run(Tensor::new(vec![2, 16], m).unwrap()),
        Err(Error::Input { .. })
    ));
    // Wrong patch count, wrong batch, wrong rank.
    assert!(matches!(
        run(Tensor::zeros(vec![2, 15])),
        Err(Error::Input { .. })
    ));
    assert!(matches!(
        run(Tensor::zeros(vec![3, 16])),
        Err(Error::Input { .. })
    ));
    assert!(matches!(
        run(Tensor::zeros(vec![2, 16, 1])),
        Err(Error::Input { .. })
    ));
    // Everything dropped still runs the time token, and yields no patches.
    let all = base
        .forward_masked(
            &i,
            &TokenMask::from_tensor(&Tensor::new(vec![2, 16], vec![1.0; 32]).unwrap()).unwrap(),
            &Boosters::default(),
        )
        .unwrap();
    assert_eq!(all.shape(), [2, 0, 48]);
    // A sample of the wrong size (the position table fixes it), labels for an unconditional
    // model, a timestep list of the wrong length.
    let bad = UNetInputs::new(Tensor::zeros(vec![1, 3, 32, 32]), 1.0);
    assert!(matches!(base.forward(&bad), Err(Error::Input { .. })));
    let mut bad = i.clone();
    bad.class_labels = Some(vec![0.0, 1.0]);
    assert!(matches!(base.forward(&bad), Err(Error::Input { .. })));
    let mut bad = i.clone();
    bad.timesteps = vec![1.0, 2.0, 3.0];
    assert!(matches!(base.forward(&bad), Err(Error::Input { .. })));
    let variant = model("variant");
    let mut bad = inputs(&g, "variant", true);
    bad.class_labels = Some(vec![0.0, 2.0]);
    assert!(matches!(variant.forward(&bad), Err(Error::Input { .. })));
    // FreeU v2, and FreeU under a token mask, are refused.
    let mut f = freelunch::boosters::FreeU::new(1.1, 1.2, 0.9, 0.2);
    f.v2 = true;
    let b = Boosters {
        freeu: Some(f),
        ..Boosters::default()
    };
    assert!(matches!(
        base.forward_with(&i, &b),
        Err(Error::Booster { .. })
    ));
    let m = TokenMask::from_tensor(&g["base.token_mask"]).unwrap();
    assert!(matches!(
        base.forward_masked(&i, &m, &freeu()),
        Err(Error::Booster { .. })
    ));

    // Configs.
    let text = std::fs::read_to_string(dir().join("base/config.json")).unwrap();
    assert!(MaskedUViTConfig::is_mask_uvit(&text));
    let cfg = MaskedUViTConfig::from_json_str(&text, "base").unwrap();
    assert_eq!(
        (cfg.encoder_embed_dim, cfg.encoder_depth, cfg.patch_size),
        (32, 4, 4)
    );
    for (edit, what) in [
        (("patch_size", "5"), "patch does not tile"),
        (("encoder_heads", "0"), "no heads"),
        (("encoder_heads", "64"), "more heads than width"),
        (("encoder_depth", "1"), "no out-blocks"),
        (("mlp_ratio", "0.001"), "no MLP width"),
        (("img_size", "-3"), "negative"),
        (("qkv_bias", "3"), "not a bool"),
        (("qk_scale", "-1"), "negative scale"),
        (
            ("encoder_embed_dim", "4611686018427387904"),
            "overflowing width",
        ),
    ] {
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v[edit.0] = serde_json::from_str(edit.1).unwrap();
        let r = MaskedUViTConfig::from_json_str(&v.to_string(), what);
        assert!(matches!(r, Err(Error::Config { .. })), "{what}: {r:?}");
    }
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["dropout_path"] = 0.1.into();
    assert!(matches!(
        MaskedUViTConfig::from_json_str(&v.to_string(), "unknown"),
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(
        MaskedUViTConfig::from_json_str("[1]", "array"),
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        MaskedUViTConfig::from_json_str("{", "truncated"),
        Err(Error::Json { .. })
    ));
    // Weights of another config: a typed error, not a panic.
    let mut wrong = cfg.clone();
    wrong.encoder_embed_dim = 16;
    let mut ckpt = freelunch::weights::Checkpoint::load(&[
        dir().join("base/diffusion_pytorch_model.safetensors")
    ])
    .unwrap();
    assert!(matches!(
        MaskedUViT::load(wrong, &mut ckpt),
        Err(Error::Weight { .. })
    ));
}

fn f32_bytes(t: &Tensor) -> Vec<u8> {
    t.data().iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn cli_forward_and_sample_take_a_converted_folder() {
    let g = goldens();
    let tmp = common::scratch("uvit-cli");
    let model_dir = dir().join("base");
    let x = &g["base.sample"];
    let t = &g["base.timestep"];
    let mask: Vec<u8> = g["base.token_mask"]
        .data()
        .iter()
        .map(|&v| v as u8)
        .collect();
    let plain = tmp.join("in.safetensors");
    common::write_raw_safetensors(
        &plain,
        &[
            ("sample", "F32", x.shape().to_vec(), f32_bytes(x)),
            ("timestep", "F32", vec![2], f32_bytes(t)),
        ],
    );
    let masked = tmp.join("in_masked.safetensors");
    common::write_raw_safetensors(
        &masked,
        &[
            ("sample", "F32", x.shape().to_vec(), f32_bytes(x)),
            ("timestep", "F32", vec![2], f32_bytes(t)),
            ("token_mask", "BOOL", vec![2, 16], mask.clone()),
        ],
    );
    let forward = |input: &std::path::Path, out: &str, extra: &[&str]| {
        let mut args = vec!["forward", "--device", "cpu", "--model"];
        args.push(model_dir.to_str().unwrap());
        args.push("--input");
        args.push(input.to_str().unwrap());
        args.extend_from_slice(extra);
        common::cli_sample(args, &tmp.join(out))
    };
    close(
        "cli forward",
        &forward(&plain, "o1.safetensors", &[]),
        &g["base.out"],
        CPU_TOL,
    );
    close(
        "cli forward masked",
        &forward(&masked, "o2.safetensors", &[]),
        &g["base.out_masked"],
        CPU_TOL,
    );
    close(
        "cli forward skip-tuned",
        &forward(&plain, "o3.safetensors", &["--skip-tuning", "0.8,0.5"]),
        &g["base.out_skip"],
        CPU_TOL,
    );
    close(
        "cli forward freeu",
        &forward(&plain, "o5.safetensors", &["--freeu", "1.1,1.2,0.9,0.2"]),
        &g["base.out_freeu"],
        CPU_TOL,
    );
    // A token mask must be u8 or bool.
    let f32_mask = tmp.join("in_f32_mask.safetensors");
    let as_f32 = Tensor::new(vec![2, 16], mask.iter().map(|&v| f32::from(v)).collect()).unwrap();
    common::write_raw_safetensors(
        &f32_mask,
        &[("token_mask", "F32", vec![2, 16], f32_bytes(&as_f32))],
    );
    assert!(matches!(
        TokenMask::load(&f32_mask),
        Err(Error::Input { .. })
    ));
    let u8_mask = tmp.join("in_u8_mask.safetensors");
    common::write_raw_safetensors(&u8_mask, &[("token_mask", "U8", vec![2, 16], mask.clone())]);
    let loaded = TokenMask::load(&u8_mask).unwrap().unwrap();
    assert_eq!(
        loaded,
        TokenMask::from_tensor(&g["base.token_mask"]).unwrap()
    );
    assert_eq!(TokenMask::load(&plain).unwrap(), None);
    // FreeU v2 is refused with a message, not a panic.
    let o = std::process::Command::new(common::freelunch_bin())
        .args([
            "forward",
            "--device",
            "cpu",
            "--freeu",
            "1.1,1.2,0.9,0.2",
            "--freeu-v2",
            "--model",
        ])
        .arg(&model_dir)
        .arg("--input")
        .arg(&plain)
        .arg("--output")
        .arg(tmp.join("o4.safetensors"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("MaskedUViT"));

    // eval.py's DDIM (the converted scheduler_config.json beside the weights), eta 0 from the
    // reference's initial noise.
    let noise = tmp.join("noise.safetensors");
    let n = &g["ddim.eta0.noise"];
    common::write_raw_safetensors(
        &noise,
        &[("sample", "F32", n.shape().to_vec(), f32_bytes(n))],
    );
    let got = common::cli_sample(
        [
            "sample",
            "--device",
            "cpu",
            "--steps",
            "4",
            "--model",
            model_dir.to_str().unwrap(),
            "--noise",
            noise.to_str().unwrap(),
        ],
        &tmp.join("s.safetensors"),
    );
    close("cli DDIM eta0", &got, &g["ddim.eta0.out"], 1e-5);
}

/// BENCHMARKS.md's U-ViT figure (run by hand, `--ignored`): the CPU forward of
/// tools/configs/maskdm-celebahq-base-64.json, random weights, batch 2, on FREELUNCH_THREADS
/// threads (default 2); UVIT_MASK_RATIO drops that share of the patches. The PyTorch side is
/// tools/bench_uvit_torch.py.
#[test]
#[ignore]
fn bench_forward_cpu() {
    let threads: usize = std::env::var("FREELUNCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let ratio: f64 = std::env::var("UVIT_MASK_RATIO")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let iters = 10;
    let cfg = MaskedUViTConfig::from_file(
        &common::root().join("tools/configs/maskdm-celebahq-base-64.json"),
    )
    .unwrap();
    let n = cfg.num_patches();
    let side = cfg.img_size;
    let m = MaskedUViT::load(cfg, &mut freelunch::weights::RandomWeights::new(0))
        .unwrap()
        .with_threads(threads)
        .unwrap();
    let mut i = UNetInputs::new(Tensor::randn([2, 3, side, side], 1), 0.0);
    i.timesteps = vec![0.0, 117.0];
    let dropped = (n as f64 * ratio) as usize;
    let mask = TokenMask {
        dropped: (0..2)
            .map(|s| (0..n).map(|j| (j * 7 + s * 3) % n < dropped).collect())
            .collect(),
    };
    let run = || {
        if ratio > 0.0 {
            m.forward_masked(&i, &mask, &Boosters::default()).unwrap()
        } else {
            m.forward(&i).unwrap()
        }
    };
    for _ in 0..2 {
        run();
    }
    let mut ms: Vec<f64> = (0..iters)
        .map(|_| {
            let t0 = std::time::Instant::now();
            run();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    println!(
        "{{\"impl\": \"freelunch\", \"threads\": {threads}, \"batch\": 2, \"mask_ratio\": {ratio}, \"median_ms\": {:.1}, \"min_ms\": {:.1}, \"iters\": {iters}}}",
        (ms[iters / 2 - 1] + ms[iters / 2]) / 2.0,
        ms[0]
    );
}
