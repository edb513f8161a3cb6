//! CPU forward against diffusers (float32, CPU) on every fixture `tools/gen_goldens.py` wrote.

mod common;

use common::fixture;
use freelunch::{UNet, UNetInputs};

fn check(case: &str, model_subdir: &str) {
    let g = common::goldens::model_golden(case, model_subdir);
    let unet = UNet::from_dir(&g.model).unwrap_or_else(|e| panic!("{case}: {e}"));
    let out = unet
        .forward(&g.inputs)
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_eq!(out.shape(), g.expected.shape(), "{case}: shape");
    let err = out.rel_l2(&g.expected);
    eprintln!("{case}: rel L2 = {err:.3e}");
    assert!(err <= 1e-4, "{case}: relative L2 error {err:.3e} > 1e-4");
}

#[test]
fn ddpm_basic() {
    check("ddpm_basic", "");
}

#[test]
fn ddpm_scale_shift_class_fp16_variant() {
    check("ddpm_scale_shift_class", "");
}

#[test]
fn ddpm_noattn_sharded_pipeline_folder() {
    check("ddpm_noattn_sharded", "model");
}

#[test]
fn sd15_like() {
    check("sd15_like", "");
}

#[test]
fn sd21_like_linear_proj_per_level_heads_odd_size_bf16() {
    check("sd21_like", "");
}

#[test]
fn sdxl_like_text_time_deep_transformers() {
    check("sdxl_like", "");
}

#[test]
fn only_cross_attention_and_ignored_resnet_options() {
    check("sd_mid_only_cross", "");
}

/// Loading once and calling forward from several threads at once gives the same answers.
#[test]
fn one_model_many_threads() {
    let dir = fixture("sd15_like");
    let unet = UNet::from_dir(&dir).unwrap();
    let inputs = UNetInputs::load(&dir.join("inputs.safetensors")).unwrap();
    let first = unet.forward(&inputs).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| unet.forward(&inputs).unwrap()))
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), first);
        }
    });
}
