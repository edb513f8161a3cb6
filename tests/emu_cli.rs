//! `--device emu` end to end: the CLI runs the unchanged CUDA backend on the PTX executor, and
//! matches the CPU backend in every dtype (the GPU tolerances: f32 ≤ 1e-4, f16 ≤ 1e-2, bf16 ≤ 2e-2, see
//! tests/common/gpu.rs), with FreeU through the cuFFT stand-in and the direct form, MaskUNet
//! masks and the mask generator; outputs do not depend on the order blocks and warps run in nor
//! on the thread count; and a missing executor is an error, not a panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixture, scratch};
use freelunch::safetensors_io;
use freelunch::Tensor;

fn forward(
    model: &Path,
    input: &Path,
    out: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut c = Command::new(common::freelunch_bin());
    c.arg("forward")
        .arg("--model")
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(out)
        .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn run_ok(
    model: &Path,
    input: &Path,
    tag: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (PathBuf, Tensor) {
    let out = scratch("emu-cli").join(format!("{tag}.safetensors"));
    let o = forward(model, input, &out, args, env);
    assert!(
        o.status.success(),
        "{tag}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let t = safetensors_io::load(&out)
        .unwrap()
        .remove("sample")
        .unwrap()
        .tensor;
    assert!(
        t.data().iter().all(|v| v.is_finite()),
        "{tag}: non-finite output"
    );
    (out, t)
}

fn tolerance(dtype: &str) -> f64 {
    match dtype {
        "f32" => 1e-4,
        "f16" => 1e-2,
        _ => 2e-2,
    }
}

#[test]
fn forward_on_the_executor_matches_the_cpu_in_every_dtype_with_boosters() {
    let sd = fixture("sd15_like");
    let input = sd.join("inputs.safetensors");
    let masks = fixture("masks").join("sd15_shared_u8");
    let generator = fixture("mask_generator").join("sd15_hyper");
    let mask_file = masks.join("masks.safetensors");
    let generator_file = generator.join("generator.safetensors");
    let cases: Vec<(&str, Vec<&str>, &Path)> = vec![
        ("plain", vec![], &input),
        (
            "freeu-fft",
            vec!["--freeu", "sd15", "--freeu-filter", "fft"],
            &input,
        ),
        (
            "freeu-direct",
            vec![
                "--freeu",
                "sd15",
                "--freeu-filter",
                "direct",
                "--skip-tuning",
                "1.0,0.9",
            ],
            &input,
        ),
        (
            "masks",
            vec!["--masks", mask_file.to_str().unwrap()],
            &input,
        ),
        (
            "generator",
            vec![
                "--mask-generator",
                generator_file.to_str().unwrap(),
                "--no-gumbel",
            ],
            &input,
        ),
    ];
    for (tag, args, input) in &cases {
        let (_, want) = run_ok(
            &sd,
            input,
            &format!("{tag}-cpu"),
            &[&["--device", "cpu"], &args[..]].concat(),
            &[],
        );
        for dtype in ["f32", "f16", "bf16"] {
            let a = [&["--device", "emu", "--dtype", dtype], &args[..]].concat();
            let (_, got) = run_ok(&sd, input, &format!("{tag}-{dtype}"), &a, &[]);
            let err = got.rel_l2(&want);
            println!("{tag} {dtype}: rel L2 {err:.3e}");
            assert!(err <= tolerance(dtype), "{tag} {dtype}: rel L2 {err:.3e}");
        }
    }
}

/// Blocks in reverse or shuffled order, warps likewise, one thread or two: the same bytes.
#[test]
fn outputs_do_not_depend_on_the_order_blocks_and_warps_run_in() {
    let sd = fixture("sd15_like");
    let input = sd.join("inputs.safetensors");
    let args = [
        "--device",
        "emu",
        "--dtype",
        "f16",
        "--freeu",
        "sd15",
        "--freeu-filter",
        "fft",
    ];
    let (first, _) = run_ok(
        &sd,
        &input,
        "order-forward",
        &args,
        &[("FREELUNCH_EMU_ORDER", "forward")],
    );
    let reference = std::fs::read(first).unwrap();
    for (tag, env) in [
        (
            "order-reverse",
            [
                ("FREELUNCH_EMU_ORDER", "reverse"),
                ("FREELUNCH_EMU_THREADS", "2"),
            ],
        ),
        (
            "order-shuffle",
            [
                ("FREELUNCH_EMU_ORDER", "shuffle:7"),
                ("FREELUNCH_EMU_THREADS", "2"),
            ],
        ),
        (
            "order-one-thread",
            [
                ("FREELUNCH_EMU_ORDER", "shuffle:3"),
                ("FREELUNCH_EMU_THREADS", "1"),
            ],
        ),
    ] {
        let (path, _) = run_ok(&sd, &input, tag, &args, &env);
        assert!(
            std::fs::read(path).unwrap() == reference,
            "{tag}: output bytes differ from the forward order"
        );
    }
}

#[test]
fn a_missing_executor_is_an_error_that_says_how_to_build_it() {
    let sd = fixture("sd15_like");
    let out = scratch("emu-cli-missing").join("out.safetensors");
    let empty = scratch("emu-cli-missing-dir");
    let o = forward(
        &sd,
        &sd.join("inputs.safetensors"),
        &out,
        &["--device", "emu"],
        &[("FREELUNCH_EMU_DIR", empty.to_str().unwrap())],
    );
    assert!(!o.status.success());
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(!msg.contains("panicked"), "{msg}");
    assert!(
        msg.contains("not built") && msg.contains("cargo build"),
        "{msg}"
    );
    assert!(!out.exists());
}

/// The memory plan counts the device's memory too: a call that would not fit in a small
/// emulated device is refused up front, naming what it needs, rather than failing an allocation.
#[test]
fn a_forward_too_big_for_the_device_is_refused_before_it_allocates() {
    let sd = fixture("sd15_like");
    let given = safetensors_io::load(&sd.join("inputs.safetensors")).unwrap();
    let ehs = &given["encoder_hidden_states"].tensor;
    let (s, d) = (ehs.shape()[1], ehs.shape()[2]);
    let dir = scratch("emu-cli-plan");
    let input = dir.join("big.safetensors");
    let (sample, t, e) = (
        Tensor::randn([8, 4, 96, 96], 1),
        Tensor::new(vec![8], vec![500.0; 8]).unwrap(),
        Tensor::randn([8, s, d], 2),
    );
    safetensors_io::save(
        &input,
        &[
            ("sample", &sample),
            ("timestep", &t),
            ("encoder_hidden_states", &e),
        ],
    )
    .unwrap();
    let out = dir.join("out.safetensors");
    let o = forward(
        &sd,
        &input,
        &out,
        &["--device", "emu", "--dtype", "f16"],
        &[("FREELUNCH_EMU_MEMORY_MB", "16")],
    );
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a 16 MiB device ran it");
    assert!(
        msg.contains("needs ~") && msg.contains("available"),
        "{msg}"
    );
    assert!(!msg.contains("panicked") && !out.exists(), "{msg}");
}

#[test]
fn a_device_the_executor_does_not_have_is_an_error() {
    let sd = fixture("sd15_like");
    let out = scratch("emu-cli-ordinal").join("out.safetensors");
    let o = forward(
        &sd,
        &sd.join("inputs.safetensors"),
        &out,
        &["--device", "emu:5"],
        &[],
    );
    assert!(!o.status.success());
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        msg.contains("emu:5") && msg.contains("1 emulated device"),
        "{msg}"
    );
    assert!(!msg.contains("panicked"), "{msg}");
}

#[test]
fn executor_settings_that_are_wrong_are_errors() {
    let sd = fixture("sd15_like");
    let out = scratch("emu-cli-settings").join("out.safetensors");
    for (var, value) in [
        ("FREELUNCH_EMU_ORDER", "sideways"),
        ("FREELUNCH_EMU_CHECKS", "most"),
        ("FREELUNCH_EMU_ARCH", "sm_70"),
    ] {
        let o = forward(
            &sd,
            &sd.join("inputs.safetensors"),
            &out,
            &["--device", "emu"],
            &[(var, value)],
        );
        assert!(!o.status.success(), "{var}={value} was accepted");
        let msg = String::from_utf8_lossy(&o.stderr);
        assert!(
            !msg.contains("panicked") && msg.contains(var),
            "{var}: {msg}"
        );
    }
}
