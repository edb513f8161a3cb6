//! Nothing a user has is lost: outputs are written atomically (a write that fails or is killed
//! halfway leaves the previous file as it was), no output may be one of the inputs, a failed
//! merge leaves no half-written folder, and `--threads` is bounded by the machine.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{copy_fixture, fixture, scratch};
use freelunch::boosters::deme::merge;
use freelunch::safetensors_io;
use freelunch::Tensor;

fn freelunch() -> Command {
    Command::new(common::freelunch_bin())
}

fn failure(c: &mut Command) -> String {
    let o = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "expected a failure; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn bytes_of(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn merging_into_an_input_folder_is_refused_and_changes_nothing() {
    let base = copy_fixture("ddpm_basic");
    let expert = copy_fixture("ddpm_basic");
    let (before_base, before_expert) = (bytes_of(&base), bytes_of(&expert));
    for out in [&base, &expert] {
        let msg = merge(&base, std::slice::from_ref(&expert), &[0.5], out)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("is the input"), "{msg}");
    }
    // The CLI says so too, with a non-zero exit.
    let msg = failure(
        freelunch()
            .args(["merge", "--base"])
            .arg(&base)
            .arg("--experts")
            .arg(&expert)
            .args(["--weights", "0.5", "--out"])
            .arg(&base),
    );
    assert!(msg.contains("is the input"), "{msg}");
    assert_eq!(bytes_of(&base), before_base);
    assert_eq!(bytes_of(&expert), before_expert);
}

#[test]
fn a_failed_merge_leaves_no_folder_and_keeps_an_old_one_whole() {
    let base = fixture("ddpm_basic");
    let other = fixture("sdxl_like"); // a different architecture: the merge fails
    let fresh = scratch("merge-fail").join("merged");
    assert!(merge(&base, std::slice::from_ref(&other), &[0.5], &fresh).is_err());
    assert!(!fresh.exists(), "a failed merge left {}", fresh.display());
    // An existing output folder keeps its files as they were.
    let old = scratch("merge-fail-old");
    merge(&base, std::slice::from_ref(&base), &[0.25], &old).unwrap();
    let before = bytes_of(&old);
    assert!(merge(&base, std::slice::from_ref(&other), &[0.5], &old).is_err());
    assert_eq!(bytes_of(&old), before);
}

#[test]
fn forward_and_sample_refuse_to_write_over_their_inputs() {
    let model = copy_fixture("ddpm_basic");
    let input = model.join("inputs.safetensors");
    let weights = model.join("diffusion_pytorch_model.safetensors");
    let before = bytes_of(&model);
    for output in [
        input.clone(),
        model.join(".").join("inputs.safetensors"),
        weights.clone(),
    ] {
        let msg = failure(
            freelunch()
                .args(["forward", "--device", "cpu", "--model"])
                .arg(&model)
                .arg("--input")
                .arg(&input)
                .arg("--output")
                .arg(&output),
        );
        assert!(msg.contains("is the input"), "{}: {msg}", output.display());
    }
    let noise = model.join("noise.safetensors");
    safetensors_io::save(&noise, &[("sample", &Tensor::randn([1, 3, 16, 16], 1))]).unwrap();
    let sched = fixture("samplers")
        .join("ddim_linear_leading_offset1")
        .join("scheduler_config.json");
    let msg = failure(
        freelunch()
            .args(["sample", "--device", "cpu", "--steps", "2", "--model"])
            .arg(&model)
            .arg("--scheduler")
            .arg(&sched)
            .arg("--noise")
            .arg(&noise)
            .arg("--output")
            .arg(&noise),
    );
    assert!(msg.contains("is the input"), "{msg}");
    std::fs::remove_file(&noise).unwrap();
    assert_eq!(bytes_of(&model), before);
}

/// A process killed while writing (here by the file-size limit, as a full disk would stop it)
/// leaves the previous output as it was.
#[test]
fn a_write_killed_halfway_keeps_the_previous_output() {
    let case = fixture("sd15_like");
    let dir = scratch("killed-write");
    let out = dir.join("out.safetensors");
    std::fs::write(&out, b"the previous output").unwrap();
    // 8 KiB of output against a 4 KiB (8 blocks) limit: the write fails halfway.
    let cmd = format!(
        "ulimit -f 8 && exec '{}' forward --device cpu --model '{}' --input '{}' --output '{}'",
        common::freelunch_bin().display(),
        case.display(),
        case.join("inputs.safetensors").display(),
        out.display()
    );
    let o = Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
    assert!(
        !o.status.success(),
        "the write should have failed under ulimit -f"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"the previous output");
    // Without the limit the same command replaces it.
    let o = freelunch()
        .args(["forward", "--device", "cpu", "--model"])
        .arg(&case)
        .arg("--input")
        .arg(case.join("inputs.safetensors"))
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(safetensors_io::load(&out).unwrap().contains_key("sample"));
}

#[test]
fn threads_beyond_the_machine_are_refused() {
    let case = fixture("ddpm_basic");
    let out = scratch("threads").join("out.safetensors");
    let msg = failure(
        freelunch()
            .args([
                "forward",
                "--device",
                "cpu",
                "--threads",
                "100000",
                "--model",
            ])
            .arg(&case)
            .arg("--input")
            .arg(case.join("inputs.safetensors"))
            .arg("--output")
            .arg(&out),
    );
    assert!(
        msg.contains("--threads 100000") && msg.contains("threads at once"),
        "{msg}"
    );
    assert!(!out.exists());
}
