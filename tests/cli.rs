//! `freelunch forward` end to end, and its failures.

mod common;

use std::process::Command;

use common::{fixture, scratch};
use freelunch::safetensors_io;

fn freelunch() -> Command {
    Command::new(common::freelunch_bin())
}

#[test]
fn forward_writes_diffusers_output() {
    let case = fixture("sdxl_like");
    let out = scratch("cli").join("out.safetensors");
    let status = freelunch()
        .args(["forward", "--threads", "2", "--model"])
        .arg(&case)
        .arg("--input")
        .arg(case.join("inputs.safetensors"))
        .arg("--output")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let got = safetensors_io::load(&out)
        .unwrap()
        .remove("sample")
        .unwrap();
    assert_eq!(got.dtype, safetensors::Dtype::F32);
    let want = safetensors_io::load(&case.join("expected.safetensors"))
        .unwrap()
        .remove("sample")
        .unwrap();
    let err = got.tensor.rel_l2(&want.tensor);
    assert!(err <= 1e-4, "rel L2 {err}");
}

fn forward_error(model: &std::path::Path, input: &std::path::Path, extra: &[&str]) -> String {
    let out = scratch("cli-err").join("out.safetensors");
    let o = freelunch()
        .arg("forward")
        .arg("--model")
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(&out)
        .args(extra)
        .output()
        .unwrap();
    assert!(!o.status.success(), "expected failure");
    assert!(!out.exists(), "no output on failure");
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    stderr
}

#[test]
fn forward_reports_bad_input_without_panicking() {
    let sd = fixture("sd15_like");
    let ddpm = fixture("ddpm_basic");
    let msg = forward_error(&sd, &ddpm.join("inputs.safetensors"), &[]);
    assert!(msg.contains("sample") && msg.contains("channels"), "{msg}");
    let msg = forward_error(&sd, &sd.join("missing.safetensors"), &[]);
    assert!(msg.contains("missing.safetensors"), "{msg}");
    let msg = forward_error(&scratch("empty"), &sd.join("inputs.safetensors"), &[]);
    assert!(msg.contains("config.json"), "{msg}");
    let msg = forward_error(&sd, &sd.join("inputs.safetensors"), &["--device", "tpu"]);
    assert!(msg.contains("unknown device"), "{msg}");
    let msg = forward_error(&sd, &sd.join("inputs.safetensors"), &["--threads", "0"]);
    assert!(msg.contains("--threads"), "{msg}");
    let msg = forward_error(&sd, &sd.join("inputs.safetensors"), &["--dtype", "f8"]);
    assert!(msg.contains("dtype") && msg.contains("f8"), "{msg}");
    let msg = forward_error(&sd, &sd.join("inputs.safetensors"), &["--dtype", "f16"]);
    assert!(msg.contains("f32"), "{msg}");
    if freelunch::backend::cuda::device_count() == 0 {
        let msg = forward_error(&sd, &sd.join("inputs.safetensors"), &["--device", "cuda:0"]);
        assert!(msg.contains("CUDA"), "{msg}");
    }
}
