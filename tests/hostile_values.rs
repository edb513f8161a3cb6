//! Hostile values (issue 10): non-finite numbers are errors naming the tensor, weight, layer or
//! expert, never a NaN output with exit 0; the library's mask API answers misuse with an `Error`,
//! never a panic; loader errors are plain words naming the file; and no bytes, however mangled,
//! make a loader panic. Through the public API and the `freelunch` binary: every failure exits
//! non-zero, prints no panic and writes no output.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use common::{copy_fixture, fixture, scratch, write_raw_safetensors};
use freelunch::boosters::deme::merge;
use freelunch::boosters::mask_generator::{Gumbel, MaskGenerator};
use freelunch::boosters::masks::WeightMask;
use freelunch::boosters::{Boosters, FreeU, MaskSet, SkipScales};
use freelunch::models::Denoiser;
use freelunch::safetensors_io::{self, index_of};
use freelunch::weights::Checkpoint;
use freelunch::{Tensor, UNet, UNetInputs};
use proptest::prelude::*;

const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

/// The raw tensors of a safetensors file: (name, dtype, shape, bytes).
type Raw = Vec<(String, String, Vec<usize>, Vec<u8>)>;

fn read_raw(path: &Path) -> Raw {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Raw = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let dtype = format!("{:?}", v.dtype());
            (n, dtype, v.shape().to_vec(), v.data().to_vec())
        })
        .collect();
    out.sort();
    out
}

fn write_raw(path: &Path, raw: &Raw) {
    let refs: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = raw
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), d.as_str(), s.clone(), b.clone()))
        .collect();
    write_raw_safetensors(path, &refs);
}

/// Rewrites the f32 tensors of a safetensors file (every tensor is stored as f32 afterwards).
fn edit_f32(path: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let mut tensors: Vec<(String, Tensor)> = safetensors_io::load(path)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.tensor))
        .collect();
    edit(&mut tensors);
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    safetensors_io::save(path, &refs).unwrap();
}

fn set(tensors: &mut [(String, Tensor)], name: &str, f: impl FnOnce(&mut Tensor)) {
    let (_, t) = tensors
        .iter_mut()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no tensor `{name}`"));
    f(t);
}

/// Runs the binary, expecting a failure: no panic, no `out` written; returns stderr.
fn cli_failure<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>, out: &Path) -> String {
    let o = Command::new(common::freelunch_bin())
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "expected a failure; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists(), "{} was written: {stderr}", out.display());
    stderr
}

fn forward_args(model: &Path, input: &Path, out: &Path, extra: &[&str]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = vec!["forward".into(), "--device".into(), "cpu".into()];
    v.extend(["--model".into(), model.to_path_buf()]);
    v.extend(["--input".into(), input.to_path_buf()]);
    v.extend(["--output".into(), out.to_path_buf()]);
    v.extend(extra.iter().map(PathBuf::from));
    v
}

/// The parser's enum names, which must never reach a user.
const RAW_NAMES: [&str; 9] = [
    "MetadataIncompleteBuffer",
    "InvalidHeaderDeserialization",
    "InvalidHeaderLength",
    "InvalidHeaderStart",
    "InvalidOffset",
    "TensorInvalidInfo",
    "HeaderTooLarge",
    "HeaderTooSmall",
    "ValidationOverflow",
];

fn assert_plain(msg: &str) {
    for raw in RAW_NAMES {
        assert!(!msg.contains(raw), "raw parser name in: {msg}");
    }
}

// ---------------------------------------------------------------------------------------------
// Class 1: non-finite values are errors naming what holds them.
// ---------------------------------------------------------------------------------------------

/// A NaN or infinity in any input tensor is refused at load, naming the tensor and the first
/// bad index; hand-built inputs are refused by the forward, naming the right tensor.
#[test]
fn non_finite_inputs_are_named_with_their_first_bad_index() {
    let cases: [(&str, &[&str]); 3] = [
        (
            "sd15_like",
            &["sample", "timestep", "encoder_hidden_states"],
        ),
        ("sdxl_like", &["text_embeds", "time_ids"]),
        ("ddpm_scale_shift_class", &["class_labels"]),
    ];
    let bad = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
    let words = ["NaN", "+inf", "-inf"];
    let dir = scratch("nonfinite-inputs");
    let mut k = 0;
    for (case, names) in cases {
        for name in names {
            let path = dir.join(format!("{case}-{name}.safetensors"));
            std::fs::copy(fixture(case).join("inputs.safetensors"), &path).unwrap();
            let mut want = String::new();
            edit_f32(&path, |ts| {
                set(ts, name, |t| {
                    // Two bad values; the first is reported.
                    let (i, last) = (t.numel() / 2, t.numel() - 1);
                    if last != i {
                        t.data_mut()[last] = f32::NAN;
                    }
                    t.data_mut()[i] = bad[k % 3];
                    want = format!("{} at index {:?}", words[k % 3], index_of(t.shape(), i));
                })
            });
            let msg = UNetInputs::load(&path).unwrap_err().to_string();
            assert!(
                msg.contains(&format!("`{name}`")) && msg.contains(&want),
                "{name}: want `{want}` in: {msg}"
            );
            let msg = UNetInputs::load_optional(&path, name)
                .unwrap_err()
                .to_string();
            assert!(msg.contains(&want), "{msg}");
            k += 1;
        }
    }

    // An f64 value too large for f32 counts too.
    let path = dir.join("f64.safetensors");
    let mut raw = read_raw(&fixture("ddpm_basic").join("inputs.safetensors"));
    for (n, d, s, b) in raw.iter_mut() {
        if n == "sample" {
            let mut v: Vec<f64> = b
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect();
            v[7] = 1e300;
            *b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            *d = "F64".into();
            assert_eq!(s, &[2, 3, 16, 16]);
        }
    }
    write_raw(&path, &raw);
    let msg = UNetInputs::load(&path).unwrap_err().to_string();
    assert!(
        msg.contains("`sample`")
            && msg.contains("+inf at index [0, 0, 0, 7]")
            && msg.contains("F64"),
        "{msg}"
    );

    // Hand-built inputs: the forward names the tensor (a NaN timestep is not blamed on sample).
    let unet = UNet::from_dir(&fixture("sdxl_like")).unwrap();
    let inputs = UNetInputs::load(&fixture("sdxl_like").join("inputs.safetensors")).unwrap();
    let mut x = inputs.clone();
    x.timesteps[1] = f32::NAN;
    let msg = unet.forward(&x).unwrap_err().to_string();
    assert!(
        msg.contains("`timestep`") && msg.contains("NaN at index [1]"),
        "{msg}"
    );
    assert!(!msg.contains("`sample`"), "{msg}");
    let mut x = inputs.clone();
    x.text_embeds.as_mut().unwrap().data_mut()[33] = f32::INFINITY;
    let msg = unet.forward(&x).unwrap_err().to_string();
    assert!(
        msg.contains("`text_embeds`") && msg.contains("+inf at index [1, 1]"),
        "{msg}"
    );

    // Routed DeMe experts check the same way; timesteps they cannot route by are errors too.
    let ddpm = fixture("ddpm_basic");
    let router =
        freelunch::boosters::deme::Router::from_dirs(&[ddpm.clone(), ddpm.clone()], 1000).unwrap();
    let mut x = UNetInputs::load(&ddpm.join("inputs.safetensors")).unwrap();
    x.timesteps = vec![f32::NAN, 900.0];
    let msg = router
        .forward_with(&x, &Boosters::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("`timestep`") && msg.contains("NaN at index [0]"),
        "{msg}"
    );
    x.timesteps.clear();
    let msg = router
        .forward_with(&x, &Boosters::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("timestep"), "{msg}");

    // The binary: exit non-zero, the tensor named, nothing written.
    let input = dir.join("sd15_like-encoder_hidden_states.safetensors");
    let out = dir.join("out.safetensors");
    let msg = cli_failure(forward_args(&fixture("sd15_like"), &input, &out, &[]), &out);
    assert!(msg.contains("`encoder_hidden_states`"), "{msg}");
}

/// A non-finite weight is refused at load, naming it: an f16 weight that overflowed to inf, an
/// f32 NaN, and parameters handed to the builder in memory.
#[test]
fn non_finite_weights_are_refused_naming_the_weight() {
    let name = "down_blocks.1.resnets.0.conv1.weight";
    let dir = copy_fixture("ddpm_scale_shift_class");
    let file = dir.join("diffusion_pytorch_model.fp16.safetensors");
    let mut raw = read_raw(&file);
    let (_, dtype, shape, bytes) = raw.iter_mut().find(|(n, ..)| n == name).unwrap();
    assert_eq!(dtype, "F16");
    bytes[6..8].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
    let want = format!("+inf at index {:?}", index_of(shape, 3));
    write_raw(&file, &raw);
    let msg = UNet::from_dir(&dir).err().unwrap().to_string();
    assert!(
        msg.contains(name) && msg.contains(&want) && msg.contains("F16"),
        "{msg}"
    );

    let dir = copy_fixture("sd15_like");
    edit_f32(&dir.join(WEIGHTS), |ts| {
        set(ts, "conv_in.weight", |t| t.data_mut()[0] = f32::NAN)
    });
    let msg = UNet::from_dir(&dir).err().unwrap().to_string();
    assert!(
        msg.contains("`conv_in.weight`") && msg.contains("NaN"),
        "{msg}"
    );
    let out = dir.join("out.safetensors");
    let input = fixture("sd15_like").join("inputs.safetensors");
    let msg = cli_failure(forward_args(&dir, &input, &out, &[]), &out);
    assert!(
        msg.contains("`conv_in.weight`") && msg.contains("NaN"),
        "{msg}"
    );

    // In memory: `Checkpoint::from_tensors` is checked as the builder takes each parameter.
    let mut tensors: std::collections::BTreeMap<String, Tensor> =
        safetensors_io::load(&fixture("ddpm_basic").join(WEIGHTS))
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.tensor))
            .collect();
    let bias = "mid_block.attentions.0.to_q.bias";
    tensors.get_mut(bias).unwrap().data_mut()[2] = f32::NEG_INFINITY;
    let config =
        freelunch::UNetConfig::from_file(&fixture("ddpm_basic").join("config.json")).unwrap();
    let msg = UNet::load(config, &mut Checkpoint::from_tensors(tensors))
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains(bias) && msg.contains("-inf at index [2]"),
        "{msg}"
    );
}

/// Finite inputs and weights whose values overflow inside the network: the error names the
/// first module whose output is non-finite, on the CPU; the binary writes nothing.
#[test]
fn a_non_finite_intermediate_names_the_first_layer() {
    // A finite sample at the top of f32's range overflows in the first convolution.
    let dir = scratch("overflow");
    let input = dir.join("huge.safetensors");
    std::fs::copy(fixture("ddpm_basic").join("inputs.safetensors"), &input).unwrap();
    edit_f32(&input, |ts| {
        set(ts, "sample", |t| {
            t.data_mut().iter_mut().for_each(|v| *v = f32::MAX)
        })
    });
    let inputs = UNetInputs::load(&input).unwrap();
    let unet = UNet::from_dir(&fixture("ddpm_basic")).unwrap();
    let msg = unet.forward(&inputs).unwrap_err().to_string();
    assert!(
        msg.contains("non-finite") && msg.contains("`conv_in`"),
        "{msg}"
    );
    let out = dir.join("out.safetensors");
    let msg = cli_failure(
        forward_args(&fixture("ddpm_basic"), &input, &out, &[]),
        &out,
    );
    assert!(msg.contains("`conv_in`"), "{msg}");

    // Finite weights that overflow deep inside: the module is named, down to the resnet.
    let inputs = UNetInputs::load(&fixture("sd15_like").join("inputs.safetensors")).unwrap();
    for (weight, layer) in [
        ("time_embedding.linear_2.weight", "`time_embedding`"),
        (
            "down_blocks.0.attentions.1.proj_out.weight",
            "`down_blocks.0.attentions.1`",
        ),
        (
            "down_blocks.1.resnets.0.conv2.weight",
            "`down_blocks.1.resnets.0`",
        ),
        ("mid_block.resnets.1.conv2.weight", "`mid_block`"),
        ("up_blocks.1.resnets.2.conv2.weight", "`up_blocks.1`"),
        ("conv_out.weight", "`conv_out`"),
    ] {
        let dir = copy_fixture("sd15_like");
        edit_f32(&dir.join(WEIGHTS), |ts| {
            set(ts, weight, |t| {
                t.data_mut().iter_mut().for_each(|v| *v = f32::MAX / 2.0)
            })
        });
        let unet = UNet::from_dir(&dir).unwrap();
        let msg = match unet.forward(&inputs) {
            Ok(_) => panic!("{weight}: a finite output"),
            Err(e) => e.to_string(),
        };
        assert!(
            msg.contains("non-finite") && msg.contains(layer),
            "{weight}: {msg}"
        );
    }
}

/// The GPU backend checks block boundaries too (a kernel per check, read once at the call's end):
/// a non-finite intermediate names the same first module as on the CPU, never a NaN file. Runs
/// where `FREELUNCH_DEVICE` names a GPU device (or the executor), like the other GPU suites.
#[test]
fn the_gpu_path_names_the_first_non_finite_layer() {
    let Some(device) = freelunch::device::Device::from_env().unwrap() else {
        eprintln!("FREELUNCH_DEVICE is not set: the GPU block checks are not run");
        return;
    };
    let exec = device.open(freelunch::device::DType::F32).unwrap();
    let run = |unet: &UNet, x: &UNetInputs| {
        freelunch::models::Denoiser::forward_with(&unet.on(exec.clone()), x, &Boosters::default())
            .unwrap_err()
            .to_string()
    };
    let unet = UNet::from_dir(&fixture("ddpm_basic")).unwrap();
    let mut x = UNetInputs::load(&fixture("ddpm_basic").join("inputs.safetensors")).unwrap();
    x.sample
        .data_mut()
        .iter_mut()
        .for_each(|v| *v = v.signum() * 3e38);
    let msg = run(&unet, &x);
    assert!(
        msg.contains("non-finite") && msg.contains("`conv_in`"),
        "{msg}"
    );
    let cpu = unet.forward(&x).unwrap_err().to_string();
    assert_eq!(msg, cpu, "the GPU and the CPU name different places");

    let inputs = UNetInputs::load(&fixture("sd15_like").join("inputs.safetensors")).unwrap();
    for (weight, layer) in [
        (
            "down_blocks.1.resnets.0.conv2.weight",
            "`down_blocks.1.resnets.0`",
        ),
        ("up_blocks.1.resnets.2.conv2.weight", "`up_blocks.1`"),
    ] {
        let dir = copy_fixture("sd15_like");
        edit_f32(&dir.join(WEIGHTS), |ts| {
            set(ts, weight, |t| {
                t.data_mut().iter_mut().for_each(|v| *v = f32::MAX / 2.0)
            })
        });
        let unet = UNet::from_dir(&dir).unwrap();
        let msg = run(&unet, &inputs);
        assert!(
            msg.contains("non-finite") && msg.contains(layer),
            "{weight}: {msg}"
        );
    }
}

/// FreeU's b and s and the skip scales are refused where they enter when they are not finite
/// or large enough to overflow the features they scale.
#[test]
fn booster_factors_that_overflow_are_refused() {
    let dir = fixture("sd15_like");
    let unet = UNet::from_dir(&dir).unwrap();
    let inputs = UNetInputs::load(&dir.join("inputs.safetensors")).unwrap();
    let err = |b: Boosters| unet.forward_with(&inputs, &b).unwrap_err().to_string();
    let freeu = |f: FreeU| Boosters {
        freeu: Some(f),
        ..Boosters::default()
    };
    let skips = |s: SkipScales| Boosters {
        skip_scales: Some(s),
        ..Boosters::default()
    };
    let msg = err(freeu(FreeU::new(1e30, 1.2, 0.9, 0.2)));
    assert!(msg.contains("FreeU b1") && msg.contains("±10000"), "{msg}");
    let msg = err(freeu(FreeU::new(1.1, 1.2, 0.9, f32::INFINITY)));
    assert!(msg.contains("FreeU s2") && msg.contains("finite"), "{msg}");
    let mut f = FreeU::new(1.1, 1.2, 0.9, 0.2);
    f.threshold = usize::MAX;
    let msg = err(freeu(f));
    assert!(msg.contains("threshold"), "{msg}");
    let msg = err(skips(SkipScales::Linear {
        top: 1.0,
        bottom: -3e38,
    }));
    assert!(msg.contains("rho_bottom"), "{msg}");
    let mut v = vec![1.0; unet.num_skips()];
    v[3] = 1e9;
    let msg = err(skips(SkipScales::Explicit(v)));
    assert!(msg.contains("skip scale 3"), "{msg}");

    let out = scratch("factors").join("out.safetensors");
    let input = dir.join("inputs.safetensors");
    let msg = cli_failure(
        forward_args(&dir, &input, &out, &["--freeu", "1e30,1.2,0.9,0.2"]),
        &out,
    );
    assert!(msg.contains("1e30"), "{msg}");
    let msg = cli_failure(
        forward_args(&dir, &input, &out, &["--skip-tuning", "1,1e20"]),
        &out,
    );
    assert!(msg.contains("1e20"), "{msg}");
}

/// `merge`: a NaN in an expert is an error naming the expert and the tensor; merged values that
/// overflow f32 name the tensor and the expert that dominates; no folder is written.
#[test]
fn merge_refuses_nan_experts_and_overflowing_values() {
    let base = fixture("ddpm_basic");
    let bad = copy_fixture("ddpm_basic");
    let name = "down_blocks.0.resnets.1.norm2.weight";
    edit_f32(&bad.join(WEIGHTS), |ts| {
        set(ts, name, |t| t.data_mut()[5] = f32::NAN)
    });
    let out = scratch("merge-nan").join("merged");
    let msg = merge(&base, &[base.clone(), bad.clone()], &[0.5, 0.5], &out)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("expert 2") && msg.contains(name) && msg.contains("NaN at index [5]"),
        "{msg}"
    );
    assert!(!out.exists());
    let msg = cli_failure(
        [
            "merge".as_ref(),
            "--base".as_ref(),
            base.as_os_str(),
            "--experts".as_ref(),
            bad.as_os_str(),
            "--weights".as_ref(),
            "0.5".as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ],
        &out,
    );
    assert!(msg.contains("expert 1") && msg.contains(name), "{msg}");

    // Finite weights, finite experts, a merged value that overflows f32.
    let doubled = copy_fixture("ddpm_basic");
    edit_f32(&doubled.join(WEIGHTS), |ts| {
        for (_, t) in ts.iter_mut() {
            t.data_mut().iter_mut().for_each(|v| *v *= 2.0);
        }
    });
    let msg = merge(&base, &[base.clone(), doubled], &[1.0, 3e38], &out)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("merged `") && msg.contains("overflows f32") && msg.contains("expert 2"),
        "{msg}"
    );
    assert!(!out.exists());
}

/// Mask-generator checkpoints holding a NaN (or nothing but NaN) are refused at load.
#[test]
fn mask_generators_with_nan_weights_are_refused_at_load() {
    let unet = UNet::from_dir(&fixture("sd15_like")).unwrap();
    let src = fixture("mask_generator/sd15_hyper/generator.safetensors");
    let dir = scratch("nan-generator");
    let one = dir.join("one.safetensors");
    std::fs::copy(&src, &one).unwrap();
    let mut victim = String::new();
    edit_f32(&one, |ts| {
        let mid = ts.len() / 2;
        let (k, t) = &mut ts[mid];
        t.data_mut()[0] = f32::NAN;
        victim = k.clone();
    });
    let msg = MaskGenerator::load(&one, &unet, Gumbel::Off)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&format!("`{victim}`")) && msg.contains("NaN"),
        "{msg}"
    );

    let all = dir.join("all.safetensors");
    std::fs::copy(&src, &all).unwrap();
    edit_f32(&all, |ts| {
        for (_, t) in ts.iter_mut() {
            t.data_mut().iter_mut().for_each(|v| *v = f32::NAN);
        }
    });
    let msg = MaskGenerator::load(&all, &unet, Gumbel::Off)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("NaN") && msg.contains("weight `"), "{msg}");
    let out = dir.join("out.safetensors");
    let input = fixture("mask_generator/sd15_hyper/inputs.safetensors");
    let mut args = forward_args(&fixture("sd15_like"), &input, &out, &["--no-gumbel"]);
    args.extend(["--mask-generator".into(), all.clone()]);
    let msg = cli_failure(args, &out);
    assert!(msg.contains("NaN"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// Class 2: the mask API.
// ---------------------------------------------------------------------------------------------

/// Masks of the wrong rank or shape, under a name the model lacks, with too few or too many
/// bytes, or changed after construction: each an `Error` where it is built or used.
#[test]
fn the_mask_api_answers_misuse_with_errors() {
    let dir = fixture("sd15_like");
    let unet = UNet::from_dir(&dir).unwrap();
    let inputs = UNetInputs::load(&dir.join("inputs.safetensors")).unwrap();
    let conv = "down_blocks.0.resnets.0.conv1.weight";
    assert_eq!(unet.layers()[conv], [16, 16, 3, 3]);
    let forward = |name: &str, mask: WeightMask| {
        let mut set = MaskSet::new();
        set.insert(name.to_string(), mask).unwrap();
        let b = Boosters {
            masks: Some(Arc::new(set)),
            ..Boosters::default()
        };
        unet.forward_with(&inputs, &b).unwrap_err().to_string()
    };

    // A rank-2 mask on a convolution (it used to panic inside a rayon worker).
    let msg = forward(
        conv,
        WeightMask::from_bytes(vec![16, 144], None, None, &[1; 2304]).unwrap(),
    );
    assert!(
        msg.contains(conv) && msg.contains("rank 2") && msg.contains("rank 4"),
        "{msg}"
    );
    // Right rank, wrong shape.
    let msg = forward(
        conv,
        WeightMask::from_bytes(vec![16, 16, 1, 1], None, Some(2), &[1; 512]).unwrap(),
    );
    assert!(
        msg.contains(conv) && msg.contains("[16, 16, 1, 1]"),
        "{msg}"
    );
    // A name the model does not have (it used to be ignored).
    let ghost = "down_blocks.0.resnets.0.conv9.weight";
    let msg = forward(
        ghost,
        WeightMask::from_bytes(vec![16, 16, 3, 3], None, None, &[1; 2304]).unwrap(),
    );
    assert!(msg.contains(ghost) && msg.contains("names no"), "{msg}");
    let msg = forward(
        "down_blocks.0.resnets.0.conv1",
        WeightMask::from_bytes(vec![16, 16, 3, 3], None, None, &[1; 2304]).unwrap(),
    );
    assert!(msg.contains(&format!("did you mean `{conv}`")), "{msg}");
    // Fields changed after construction no longer describe the bits.
    let mut m = WeightMask::from_bytes(vec![16, 16, 3, 3], None, None, &[1; 2304]).unwrap();
    m.steps = Some(4);
    let msg = forward(conv, m);
    assert!(
        msg.contains(conv) && msg.contains("bits do not match"),
        "{msg}"
    );

    // Too few bytes (they used to be zero-filled), too many, empty shapes, zero counts.
    let msg = WeightMask::from_bytes(vec![16, 16, 3, 3], None, Some(2), &[1; 2304])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("2304 bytes given; 4608 needed"), "{msg}");
    let msg = WeightMask::from_bytes(vec![4, 4], None, None, &[1; 17])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("17 bytes given; 16 needed"), "{msg}");
    assert!(WeightMask::from_bytes(vec![], None, None, &[1]).is_err());
    assert!(WeightMask::from_bytes(vec![4, 0], None, None, &[]).is_err());
    assert!(WeightMask::from_bytes(vec![4, 4], Some(0), Some(1), &[]).is_err());
    assert!(WeightMask::from_bytes(vec![usize::MAX, 4], None, Some(3), &[]).is_err());

    // From files: the CLI names the weight, writes nothing.
    let masks = scratch("mask-api").join("m.safetensors");
    write_raw_safetensors(&masks, &[(ghost, "U8", vec![16, 16, 3, 3], vec![1; 2304])]);
    let out = masks.with_file_name("out.safetensors");
    let input = dir.join("inputs.safetensors");
    let mut args = forward_args(&dir, &input, &out, &[]);
    args.extend(["--masks".into(), masks.clone()]);
    let msg = cli_failure(&args, &out);
    assert!(msg.contains(ghost) && msg.contains("names no"), "{msg}");
    // A mask file whose tensor has too few bytes.
    write_raw_safetensors(&masks, &[(conv, "U8", vec![16, 16, 3, 3], vec![1; 2000])]);
    let msg = cli_failure(&args, &out);
    assert!(
        msg.contains(&masks.display().to_string())
            && msg.contains(conv)
            && msg.contains("needs 2,304 bytes"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// Class 3: loader messages.
// ---------------------------------------------------------------------------------------------

/// A safetensors file from a header (padded to 8) and data.
fn st_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.to_string();
    while !h.len().is_multiple_of(8) {
        h.push(' ');
    }
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(data);
    b
}

/// Every loader's message for the file `bytes`: checkpoint, inputs, mask file.
fn loader_messages(path: &Path, bytes: &[u8]) -> [String; 3] {
    std::fs::write(path, bytes).unwrap();
    [
        Checkpoint::load(&[path.to_path_buf()])
            .err()
            .unwrap()
            .to_string(),
        UNetInputs::load(path).unwrap_err().to_string(),
        MaskSet::load(path, sd15_layers()).unwrap_err().to_string(),
    ]
}

fn sd15_layers() -> &'static std::collections::BTreeMap<String, Vec<usize>> {
    static LAYERS: OnceLock<std::collections::BTreeMap<String, Vec<usize>>> = OnceLock::new();
    LAYERS.get_or_init(|| {
        UNet::from_dir(&fixture("sd15_like"))
            .unwrap()
            .layers()
            .clone()
    })
}

/// The safetensors parser's and serde_json's errors reach the user as words naming the file and
/// what is wrong; malformed, truncated, overlapping and out-of-range data are errors.
#[test]
fn loader_messages_are_plain_words() {
    let path = scratch("loader-words").join("x.safetensors");
    let t = |dtype: &str, shape: &str, a: u64, b: u64| {
        format!(r#""dtype":"{dtype}","shape":{shape},"data_offsets":[{a},{b}]"#)
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![1, 2, 3], "the file is 3 bytes long"),
        (
            st_bytes(&format!(r#"{{"x":{{{}}}}}"#, t("U8", "[1000000]", 0, 1_000_000)), &[0; 12]),
            "the header says 1,000,000 bytes of tensor data but the file has 12 after the header",
        ),
        (st_bytes(r#"{"x":{"dtype":"U8","#, &[]), "the header is not valid JSON"),
        (st_bytes("[1, 2]", &[]), "not a JSON object"),
        (
            st_bytes(&format!(r#"{{"a":{{{}}},"b":{{{}}}}}"#, t("U8", "[8]", 0, 8), t("U8", "[8]", 4, 12)), &[0; 12]),
            "the data of tensors `a` (bytes 0..8) and `b` (bytes 4..12) overlap",
        ),
        (
            st_bytes(&format!(r#"{{"a":{{{}}}}}"#, t("U8", "[4]", 4, 8)), &[0; 8]),
            "4 bytes before tensor `a`'s data belong to no tensor",
        ),
        (
            st_bytes(&format!(r#"{{"a":{{{}}}}}"#, t("F32", "[2, 3]", 0, 12)), &[0; 12]),
            "tensor `a`: shape [2, 3] of F32 needs 24 bytes but its data_offsets [0, 12] hold 12 bytes",
        ),
        (
            st_bytes(&format!(r#"{{"a":{{{}}}}}"#, t("F32", "[1]", 8, 4)), &[0; 8]),
            "tensor `a`: its data_offsets [8, 4] end before they begin",
        ),
        (
            st_bytes(&format!(r#"{{"a":{{{}}}}}"#, t("F7", "[1]", 0, 1)), &[0; 1]),
            "tensor `a`: unknown dtype `F7`",
        ),
        (
            st_bytes(&format!(r#"{{"a":{{{}}}}}"#, t("U8", "[4294967296, 4294967296]", 0, 0)), &[]),
            "tensor `a`: shape [4294967296, 4294967296] is too large",
        ),
        (
            st_bytes(&format!(r#"{{"a":{{{}}}}}"#, t("U8", "[2]", 0, 2)), &[0; 5]),
            "3 bytes after the last tensor's data",
        ),
        (
            {
                let mut b = 64u64.to_le_bytes().to_vec();
                b.extend_from_slice(b"{}");
                b
            },
            "the header is said to be 64 bytes long but the file has only 2 bytes after the length",
        ),
        (u64::MAX.to_le_bytes().to_vec(), "more than the 100,000,000 bytes a safetensors header may have"),
        (st_bytes("{\"a\":\u{1}}", &[]), "the header is not valid JSON"),
    ];
    let shown = path.display().to_string();
    for (bytes, want) in &cases {
        for msg in loader_messages(&path, bytes) {
            assert!(
                msg.contains(want) && msg.contains(&shown),
                "want `{want}` in: {msg}"
            );
            assert_plain(&msg);
        }
    }
    // Invalid UTF-8 in the header.
    let mut bytes = st_bytes("{\"x", &[]);
    bytes[10] = 0xff;
    let msg = loader_messages(&path, &bytes)[0].clone();
    assert!(msg.contains("not valid UTF-8"), "{msg}");

    // A checkpoint cut halfway, through the binary: plain words, the file named, no output.
    let dir = copy_fixture("ddpm_basic");
    let file = dir.join(WEIGHTS);
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let out = dir.join("out.safetensors");
    let input = fixture("ddpm_basic").join("inputs.safetensors");
    let msg = cli_failure(forward_args(&dir, &input, &out, &[]), &out);
    assert!(
        msg.contains(&file.display().to_string())
            && msg.contains("bytes of tensor data but the file has"),
        "{msg}"
    );
    assert_plain(&msg);
    // A truncated input file too.
    let cut = dir.join("cut.safetensors");
    let bytes = std::fs::read(&input).unwrap();
    std::fs::write(&cut, &bytes[..100]).unwrap();
    let msg = cli_failure(forward_args(&fixture("ddpm_basic"), &cut, &out, &[]), &out);
    assert!(
        msg.contains("cut.safetensors") && msg.contains("truncated"),
        "{msg}"
    );
    assert_plain(&msg);
}

// ---------------------------------------------------------------------------------------------
// No bytes make a loader panic.
// ---------------------------------------------------------------------------------------------

/// Real files to mutate: an input file, a mask file and a (small) checkpoint.
fn originals() -> &'static [Vec<u8>] {
    static FILES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FILES.get_or_init(|| {
        [
            fixture("sdxl_like/inputs.safetensors"),
            fixture("masks/sd15_shared_u8/masks.safetensors"),
            fixture("ddpm_scale_shift_class/inputs.safetensors"),
            fixture("mask_generator/sd15_hyper/generator.safetensors"),
        ]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect()
    })
}

#[derive(Clone, Debug)]
enum Mutation {
    /// Keep the first `n` bytes (n taken modulo the length + 1).
    Truncate(usize),
    /// XOR the header byte at `pos` (modulo the header's length) with `x`.
    FlipHeader(usize, u8),
    /// Replace the `k`-th number after a `data_offsets` or `shape` key with `v`.
    Number { shape: bool, k: usize, v: u64 },
    /// Replace the 8-byte header length with `n`.
    Length(u64),
    /// XOR a data byte (past the header) with `x`.
    FlipData(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let number = prop_oneof![
        0u64..64,
        Just(u64::MAX),
        Just(u32::MAX as u64),
        any::<u64>(),
        0u64..100_000
    ];
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1u8..=255).prop_map(|(p, x)| Mutation::FlipHeader(p, x)),
        (any::<bool>(), 0usize..64, number).prop_map(|(shape, k, v)| Mutation::Number {
            shape,
            k,
            v
        }),
        prop_oneof![0u64..2048, any::<u64>()].prop_map(Mutation::Length),
        (any::<usize>(), 1u8..=255).prop_map(|(p, x)| Mutation::FlipData(p, x)),
    ]
}

fn header_len(b: &[u8]) -> usize {
    (u64::from_le_bytes(b[..8].try_into().unwrap()) as usize).min(b.len() - 8)
}

fn mutate(orig: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = orig.to_vec();
    for m in muts {
        if b.len() < 8 {
            break;
        }
        match *m {
            Mutation::Truncate(n) => b.truncate(n % (b.len() + 1)),
            Mutation::FlipHeader(p, x) => {
                let n = header_len(&b);
                if n > 0 {
                    b[8 + p % n] ^= x;
                }
            }
            Mutation::Length(n) => b[..8].copy_from_slice(&n.to_le_bytes()),
            Mutation::FlipData(p, x) => {
                let start = 8 + header_len(&b);
                if start < b.len() {
                    let len = b.len() - start;
                    b[start + p % len] ^= x;
                }
            }
            Mutation::Number { shape, k, v } => {
                let n = header_len(&b);
                let Ok(text) = std::str::from_utf8(&b[8..8 + n]) else {
                    continue;
                };
                let key = if shape {
                    "\"shape\":["
                } else {
                    "\"data_offsets\":["
                };
                // The k-th number after any occurrence of the key, wrapping around.
                let mut spots = Vec::new();
                for (at, _) in text.match_indices(key) {
                    let mut i = at + key.len();
                    let bytes = text.as_bytes();
                    while i < text.len() && bytes[i] != b']' {
                        if bytes[i].is_ascii_digit() {
                            let j = (i..text.len())
                                .find(|&j| !bytes[j].is_ascii_digit())
                                .unwrap_or(text.len());
                            spots.push((i, j));
                            i = j;
                        } else {
                            i += 1;
                        }
                    }
                }
                if spots.is_empty() {
                    continue;
                }
                let (i, j) = spots[k % spots.len()];
                let header = format!("{}{v}{}", &text[..i], &text[j..]);
                let data = b[8 + n..].to_vec();
                b = (header.len() as u64).to_le_bytes().to_vec();
                b.extend_from_slice(header.as_bytes());
                b.extend_from_slice(&data);
            }
        }
    }
    b
}

/// Loads `bytes` as a checkpoint, as inputs and as a mask file; none may panic (proptest fails
/// a case that panics), and no message may carry a parser enum name.
fn load_everything(path: &Path, bytes: &[u8]) -> std::result::Result<(), TestCaseError> {
    std::fs::write(path, bytes).unwrap();
    let msgs = [
        Checkpoint::load(&[path.to_path_buf()])
            .err()
            .map(|e| e.to_string()),
        UNetInputs::load(path).err().map(|e| e.to_string()),
        MaskSet::load(path, sd15_layers())
            .err()
            .map(|e| e.to_string()),
    ];
    for msg in msgs.iter().flatten() {
        for raw in RAW_NAMES {
            prop_assert!(!msg.contains(raw), "raw parser name in: {}", msg);
        }
    }
    Ok(())
}

fn fuzz_path(tag: &str) -> PathBuf {
    thread_local!(static DIR: PathBuf = scratch("fuzz"));
    DIR.with(|d| d.join(format!("{tag}.safetensors")))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_make_a_loader_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        header in prop::collection::vec(any::<u8>(), 0..200),
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        load_everything(&fuzz_path("random"), &bytes)?;
        // Random bytes behind a length that fits, so the header parser sees them.
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(&header);
        b.extend_from_slice(&tail);
        load_everything(&fuzz_path("random-header"), &b)?;
    }

    #[test]
    fn mutated_files_never_make_a_loader_panic(
        which in 0usize..4,
        muts in prop::collection::vec(mutation(), 1..4),
    ) {
        let b = mutate(&originals()[which], &muts);
        load_everything(&fuzz_path("mutated"), &b)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Class 4: inputs the model would not use.
// ---------------------------------------------------------------------------------------------

/// Conditioning a model has no use for is an error, not a silently unconditional sample
/// (diffusers drops it without a word); the mask generator checks the tensors it is handed.
#[test]
fn inputs_the_model_cannot_use_are_refused() {
    let dir = fixture("ddpm_basic");
    let unet = UNet::from_dir(&dir).unwrap();
    let mut inputs = UNetInputs::load(&dir.join("inputs.safetensors")).unwrap();
    assert!(unet.forward(&inputs).is_ok());
    let b = inputs.sample.shape()[0];
    inputs.encoder_hidden_states = Some(Tensor::randn([b, 4, 8], 3));
    let msg = unet.forward(&inputs).unwrap_err().to_string();
    assert!(
        msg.contains("encoder_hidden_states") && msg.contains("no cross-attention"),
        "{msg}"
    );

    let sd = UNet::from_dir(&fixture("sd15_like")).unwrap();
    let generator = MaskGenerator::load(
        &fixture("mask_generator/sd15_hyper/generator.safetensors"),
        &sd,
        Gumbel::Off,
    )
    .unwrap();
    let (sample, skip) = (
        Tensor::randn([2, 4, 4, 4], 1),
        Tensor::randn([2, 4, 4, 4], 2),
    );
    let mut refused = 0;
    for i in 0..4 {
        for (s, k, e) in [
            (&sample, &skip, Tensor::randn([3, 8], 4)),
            (
                &sample,
                &Tensor::randn([1, 4, 4, 4], 5),
                Tensor::randn([2, 8], 4),
            ),
            (&Tensor::randn([2, 16], 6), &skip, Tensor::randn([2, 8], 4)),
        ] {
            // A block without a generator has nothing to check; one with a generator must
            // refuse every mismatched call, before any channel count matters.
            match generator.block_masks(i, s, k, &e, 0) {
                Ok(None) => {}
                Ok(Some(_)) => panic!("block {i}: mismatched shapes produced masks"),
                Err(err) => {
                    let msg = err.to_string();
                    assert!(msg.contains("mask generator inputs"), "{msg}");
                    refused += 1;
                }
            }
        }
    }
    assert!(refused > 0 && refused % 3 == 0, "{refused} refusals");
}
