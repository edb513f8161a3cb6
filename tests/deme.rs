//! DeMe: task-arithmetic merging, timestep routing, and the checkpoint's channel projections.

mod common;

use std::path::{Path, PathBuf};

use common::{copy_fixture, fixture, scratch};
use freelunch::boosters::deme::{merge, Router};
use freelunch::boosters::Boosters;
use freelunch::models::Denoiser;
use freelunch::safetensors_io;
use freelunch::{Tensor, UNet, UNetInputs};

const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

fn tensors(dir: &Path) -> Vec<(String, Tensor)> {
    safetensors_io::load(&dir.join(WEIGHTS))
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.tensor))
        .collect()
}

/// A copy of the sd15_like fixture with every parameter moved by `scale`·N(0,1).
fn perturbed_sd15(scale: f32, seed: u64) -> PathBuf {
    let dir = copy_fixture("sd15_like");
    let mut ts = tensors(&dir);
    for (i, (_, t)) in ts.iter_mut().enumerate() {
        let noise = Tensor::randn(t.shape().to_vec(), seed + i as u64);
        t.data_mut()
            .iter_mut()
            .zip(noise.data())
            .for_each(|(v, n)| *v += scale * n);
    }
    let refs: Vec<(&str, &Tensor)> = ts.iter().map(|(k, t)| (k.as_str(), t)).collect();
    safetensors_io::save(&dir.join(WEIGHTS), &refs).unwrap();
    dir
}

#[test]
fn one_expert_of_weight_one_is_that_expert_exactly() {
    let expert = perturbed_sd15(0.05, 1);
    let out = scratch("merge1");
    merge(
        &fixture("sd15_like"),
        std::slice::from_ref(&expert),
        &[1.0],
        &out,
    )
    .unwrap();
    assert_eq!(tensors(&out), tensors(&expert));
    // The merged folder is a loadable diffusers model.
    UNet::from_dir(&out).unwrap();
}

#[test]
fn task_arithmetic_over_several_experts() {
    let base = fixture("sd15_like");
    let experts = [
        perturbed_sd15(0.05, 10),
        perturbed_sd15(0.05, 20),
        perturbed_sd15(0.05, 30),
    ];
    let w = [0.1f32, 0.2, 0.5];
    let out = scratch("merge3");
    merge(&base, &experts, &w, &out).unwrap();
    let (t0, ts): (Vec<_>, Vec<_>) = (tensors(&base), experts.iter().map(|e| tensors(e)).collect());
    let merged = tensors(&out);
    for (i, (name, m)) in merged.iter().enumerate() {
        assert_eq!(name, &t0[i].0);
        for j in 0..m.numel() {
            let b = t0[i].1.data()[j] as f64;
            let want: f64 = b
                + (0..3)
                    .map(|e| w[e] as f64 * (ts[e][i].1.data()[j] as f64 - b))
                    .sum::<f64>();
            let got = m.data()[j] as f64;
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "{name}[{j}]: {got} vs {want}"
            );
        }
    }
}

#[test]
fn merge_errors() {
    let base = fixture("sd15_like");
    let out = scratch("merge-err");
    let msg = merge(&base, &[fixture("sdxl_like")], &[1.0], &out)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("different config") && msg.contains("`"),
        "{msg}"
    );
    let msg = merge(&base, std::slice::from_ref(&base), &[0.5, 0.5], &out)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("1 experts but 2 weights"), "{msg}");
    let msg = merge(&base, &[], &[], &out).unwrap_err().to_string();
    assert!(msg.contains("at least one expert"), "{msg}");
    // Same config, a tensor missing.
    let e = copy_fixture("sd15_like");
    let mut ts = tensors(&e);
    ts.retain(|(k, _)| k != "conv_in.bias");
    let refs: Vec<(&str, &Tensor)> = ts.iter().map(|(k, t)| (k.as_str(), t)).collect();
    safetensors_io::save(&e.join(WEIGHTS), &refs).unwrap();
    let msg = merge(&base, &[e], &[1.0], &out).unwrap_err().to_string();
    assert!(msg.contains("conv_in.bias"), "{msg}");
}

#[test]
fn routing_sends_each_sample_to_its_expert() {
    let low = UNet::from_dir(&fixture("sd15_like")).unwrap();
    let high = UNet::from_dir(&perturbed_sd15(0.05, 40)).unwrap();
    let mut inputs = UNetInputs::load(&fixture("sd15_like").join("inputs.safetensors")).unwrap();
    inputs.timesteps = vec![120.0, 870.0];
    let want_low = low.forward(&inputs.select(&[0]).unwrap()).unwrap();
    let want_high = high.forward(&inputs.select(&[1]).unwrap()).unwrap();
    let router = Router::new(vec![low, high], 1000).unwrap();
    assert_eq!(
        (
            router.expert_for(0.0),
            router.expert_for(499.9),
            router.expert_for(500.0)
        ),
        (0, 0, 1)
    );
    assert_eq!(router.expert_for(999.0), 1);
    let got = router.forward_with(&inputs, &Boosters::default()).unwrap();
    let per = got.numel() / 2;
    let part = |k: usize| {
        Tensor::new(
            want_low.shape().to_vec(),
            got.data()[k * per..(k + 1) * per].to_vec(),
        )
        .unwrap()
    };
    assert!(part(0).rel_l2(&want_low) <= 1e-6);
    assert!(part(1).rel_l2(&want_high) <= 1e-6);
    // Both samples in one expert's range: that expert alone.
    inputs.timesteps = vec![700.0];
    let all_high = router.forward_with(&inputs, &Boosters::default()).unwrap();
    assert_eq!(all_high, router.experts()[1].forward(&inputs).unwrap());
}

#[test]
fn routing_errors() {
    let a = UNet::from_dir(&fixture("sd15_like")).unwrap();
    let b = UNet::from_dir(&fixture("sdxl_like")).unwrap();
    let msg = Router::new(vec![a, b], 1000).err().unwrap().to_string();
    assert!(msg.contains("different config"), "{msg}");
    assert!(Router::new(vec![], 1000).is_err());
}

#[test]
fn merge_cli() {
    let out = scratch("merge-cli").join("merged");
    let expert = perturbed_sd15(0.05, 50);
    let status = std::process::Command::new(common::freelunch_bin())
        .args(["merge", "--base"])
        .arg(fixture("sd15_like"))
        .arg("--experts")
        .arg(&expert)
        .args(["--weights", "1"])
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(tensors(&out), tensors(&expert));
}

/// A DeMe UNet2DModel with channel projections (`adapter_list.{k}`), against DeMe's forward.
#[test]
fn channel_projections_match_deme() {
    let dir = fixture("deme").join("ddpm_adapters");
    let unet = UNet::from_dir(&dir).unwrap();
    let inputs = UNetInputs::load(&dir.join("inputs.safetensors")).unwrap();
    let load = |f: &str| common::load_sample(&dir.join(f));
    let out = unet.forward(&inputs).unwrap();
    let err = out.rel_l2(&load("expected.safetensors"));
    assert!(err <= 1e-4, "rel L2 {err:.3e}");
    // Without its projections the same model gives diffusers' plain output instead.
    assert!(out.rel_l2(&load("expected_identity.safetensors")) > 1e-2);
}

#[test]
fn identity_projections_give_the_plain_model() {
    let src = fixture("deme").join("ddpm_adapters");
    let dir = scratch("deme-identity");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut ts = tensors(&src);
    for (name, t) in ts.iter_mut() {
        if name.starts_with("adapter_list.") {
            let c = t.shape()[0];
            t.data_mut().iter_mut().enumerate().for_each(|(i, v)| {
                *v = if i / c == i % c { 1.0 } else { 0.0 };
            });
        }
    }
    let refs: Vec<(&str, &Tensor)> = ts.iter().map(|(k, t)| (k.as_str(), t)).collect();
    safetensors_io::save(&dir.join(WEIGHTS), &refs).unwrap();
    let out = UNet::from_dir(&dir)
        .unwrap()
        .forward(&UNetInputs::load(&src.join("inputs.safetensors")).unwrap())
        .unwrap();
    let want = common::load_sample(&src.join("expected_identity.safetensors"));
    assert!(out.rel_l2(&want) <= 1e-4);
}

#[test]
fn forward_cli_routes() {
    let high = perturbed_sd15(0.05, 60);
    let dir = scratch("route-cli");
    let mut inputs = UNetInputs::load(&fixture("sd15_like").join("inputs.safetensors")).unwrap();
    inputs.timesteps = vec![800.0];
    let mut tensors_in = vec![
        ("sample", inputs.sample.clone()),
        ("timestep", Tensor::new([1], vec![800.0]).unwrap()),
    ];
    tensors_in.push((
        "encoder_hidden_states",
        inputs.encoder_hidden_states.clone().unwrap(),
    ));
    let refs: Vec<(&str, &Tensor)> = tensors_in.iter().map(|(k, t)| (*k, t)).collect();
    safetensors_io::save(&dir.join("in.safetensors"), &refs).unwrap();
    let status = std::process::Command::new(common::freelunch_bin())
        .args(["forward", "--route"])
        .arg(format!(
            "{},{}",
            fixture("sd15_like").display(),
            high.display()
        ))
        .arg("--input")
        .arg(dir.join("in.safetensors"))
        .arg("--output")
        .arg(dir.join("out.safetensors"))
        .status()
        .unwrap();
    assert!(status.success());
    let got = common::load_sample(&dir.join("out.safetensors"));
    assert_eq!(
        got,
        UNet::from_dir(&high).unwrap().forward(&inputs).unwrap()
    );
}
