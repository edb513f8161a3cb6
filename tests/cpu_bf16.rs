//! The CPU backend in bf16 (`--dtype bf16 --device cpu`: convolutions and linear layers on AMX
//! tiles, operands rounded to bf16, f32 accumulation) against diffusers' float32 goldens, on
//! every U-Net fixture, with and without MaskUNet masks. Where the CPU has no AMX-BF16, opening
//! the device in bf16 must fail with an error that says so.

mod common;

use std::sync::Arc;

use freelunch::boosters::masks::{MaskSet, WeightMask};
use freelunch::boosters::Boosters;
use freelunch::device::{DType, Device, Exec};
use freelunch::UNet;

fn bf16_exec() -> Option<Exec> {
    match Device::Cpu.open(DType::BF16) {
        Ok(exec) => {
            assert_eq!(exec.dtype(), DType::BF16);
            Some(exec)
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("AMX-BF16"), "unclear error: {msg}");
            eprintln!("no bf16 on this CPU: {msg}");
            None
        }
    }
}

#[test]
fn bf16_forwards_stay_within_1e_2_of_diffusers_f32() {
    let Some(exec) = bf16_exec() else { return };
    for (case, subdir) in common::goldens::MODEL_CASES {
        let g = common::goldens::model_golden(case, subdir);
        let unet = UNet::from_dir(&g.model).unwrap();
        let f32_out = unet.forward(&g.inputs).unwrap();
        let placed = unet.on(exec.clone());
        let out = placed.forward_with(&g.inputs, &g.boosters).unwrap();
        let err = out.rel_l2(&g.expected);
        let f32_err = f32_out.rel_l2(&g.expected);
        eprintln!("{case}: bf16 rel L2 {err:.3e} (f32 {f32_err:.3e})");
        assert!(
            err <= 1e-2,
            "{case}: bf16 relative L2 error {err:.3e} > 1e-2"
        );
        // The products did run in bf16: their rounding shows, far above f32's.
        assert!(
            err > 10.0 * f32_err,
            "{case}: bf16 {err:.3e} vs f32 {f32_err:.3e}"
        );
    }
}

#[test]
fn masked_bf16_forwards_match_their_f32_forwards_and_all_ones_masks_change_nothing() {
    let Some(exec) = bf16_exec() else { return };
    let g = common::goldens::model_golden("sd15_like", "");
    let unet = UNet::from_dir(&g.model).unwrap();
    let layers: Vec<_> = unet.layers().iter().collect();
    let mut masks = MaskSet::new();
    let mut ones = MaskSet::new();
    let batch = g.inputs.sample.shape()[0];
    for (k, (name, shape)) in layers.iter().step_by(3).enumerate() {
        let n: usize = shape.iter().product();
        let bytes = common::random_mask_bytes(batch * n, 0.7, k as u64);
        let m = WeightMask::from_bytes(shape.to_vec(), None, Some(batch), &bytes).unwrap();
        masks.insert(name.to_string(), m).unwrap();
        let all =
            WeightMask::from_bytes(shape.to_vec(), None, Some(batch), &vec![1; batch * n]).unwrap();
        ones.insert(name.to_string(), all).unwrap();
    }
    let with = |m: MaskSet| Boosters {
        masks: Some(Arc::new(m)),
        ..Boosters::default()
    };
    let bf16 = unet.on(exec);
    let f32_masked = unet.forward_with(&g.inputs, &with(masks.clone())).unwrap();
    let bf16_masked = bf16.forward_with(&g.inputs, &with(masks)).unwrap();
    let err = bf16_masked.rel_l2(&f32_masked);
    eprintln!("sd15_like masked: bf16 vs f32 rel L2 {err:.3e}");
    assert!(err <= 1e-2, "masked bf16 vs f32: {err:.3e}");
    assert!(
        f32_masked.rel_l2(&g.expected) > 1e-2,
        "the masks change the output"
    );
    // Masked layers run the same products as dense ones, so all-ones masks give the dense
    // bf16 output bit for bit.
    let dense = bf16.forward_with(&g.inputs, &Boosters::default()).unwrap();
    let all_ones = bf16.forward_with(&g.inputs, &with(ones)).unwrap();
    assert_eq!(dense.data(), all_ones.data());
}

#[test]
fn f16_on_the_cpu_is_a_clear_error() {
    let e = Device::Cpu
        .open(DType::F16)
        .err()
        .expect("f16 is a GPU type");
    assert!(e.to_string().contains("f16"), "{e}");
}
