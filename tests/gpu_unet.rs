//! The whole U-Net on the GPU against every golden of the earlier issues (diffusers' outputs),
//! boosters included: f32 within 1e-4, f16/bf16 within 1e-2. Prints `skipped: no CUDA device`
//! where there is none.

mod common;

use common::goldens::{self, Golden, Models};
use common::gpu::{gpus, tolerance};
use freelunch::device::Exec;

fn check_all(test: &str, cases: impl FnOnce(&mut Models) -> Vec<Golden>) {
    let devices = gpus(test);
    if devices.is_empty() {
        return;
    }
    let mut models = Models::default();
    let cases = cases(&mut models);
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for g in &cases {
        let unet = models.get(&g.model);
        for (dt, gpu) in devices {
            let exec = Exec::Cuda(gpu.clone());
            match unet.on(exec).forward_with(&g.inputs, &g.boosters) {
                Ok(out) => {
                    let err = out.rel_l2(&g.expected);
                    let nan = out.data().iter().any(|v| !v.is_finite());
                    println!("{} {dt:?}: rel L2 {err:.3e}", g.name);
                    if nan || err > tolerance(*dt) {
                        failures.push(format!("{} {dt:?}: rel L2 {err:.3e}, NaN {nan}", g.name));
                    }
                }
                Err(e) => failures.push(format!("{} {dt:?}: {e}", g.name)),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn model_goldens_on_gpu() {
    check_all("model_goldens_on_gpu", |_| {
        goldens::MODEL_CASES
            .iter()
            .map(|(c, s)| goldens::model_golden(c, s))
            .collect()
    });
}

#[test]
fn booster_goldens_on_gpu() {
    check_all("booster_goldens_on_gpu", |_| goldens::booster_goldens());
}

#[test]
fn mask_goldens_on_gpu() {
    check_all("mask_goldens_on_gpu", |models| {
        let mut cases: Vec<Golden> = goldens::MASK_CASES
            .iter()
            .map(|c| goldens::mask_golden(c, models))
            .collect();
        let sd15 = common::fixture("sd15_like");
        cases.push(goldens::mask_generator_golden(models.get(&sd15)));
        cases
    });
}

#[test]
fn deme_golden_on_gpu() {
    check_all("deme_golden_on_gpu", |_| vec![goldens::deme_golden()]);
}
