//! Model folders as users have them (`tools/gen_layout_fixtures.py`, checked by diffusers loading
//! each): variants single and sharded in both index namings, the Hugging Face cache (a repo
//! folder, a repo id under `HF_HUB_CACHE`, revisions by ref and by commit, a snapshot folder of
//! symlinks), and how checkpoints are held in memory: f32 tensors read in place from a shared map,
//! 16-bit ones widened per tensor or kept as stored for a GPU computing in their type.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixture, freelunch_bin, load_sample, scratch};
use freelunch::safetensors_io;
use freelunch::tensor::HalfType;
use freelunch::weights::{Checkpoint, LoadOptions, ModelFiles};
use freelunch::{Tensor, UNet, UNetInputs};

const REPO_ID: &str = "freelunch/tiny-unet";

fn layouts() -> PathBuf {
    fixture("layouts")
}

struct Case {
    name: String,
    model: String,
    variant: Option<String>,
    revision: Option<String>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(layouts().join("cases.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let s = |c: &serde_json::Value, k: &str| c.get(k).and_then(|v| v.as_str()).map(String::from);
    json.as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: s(c, "name").unwrap(),
            model: s(c, "model").unwrap(),
            variant: s(c, "variant"),
            revision: s(c, "revision"),
        })
        .collect()
}

fn expected(name: &str) -> Tensor {
    safetensors_io::load(&layouts().join("expected.safetensors"))
        .unwrap()
        .remove(name)
        .unwrap_or_else(|| panic!("no expected `{name}`"))
        .tensor
}

fn assert_close(case: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.shape(), want.shape(), "{case}");
    let err = got.rel_l2(want);
    eprintln!("{case}: rel L2 {err:.2e}");
    assert!(err <= 1e-5, "{case}: rel L2 {err:.3e} from diffusers");
}

/// The CLI's `forward` on the layout inputs, with `HF_HUB_CACHE` at the fixture cache: its
/// process output, and where it was told to write.
fn cli_forward_to(args: &[&str]) -> (std::process::Output, PathBuf) {
    let out = scratch("layout").join("out.safetensors");
    let o = Command::new(freelunch_bin())
        .env("HF_HUB_CACHE", layouts().join("hub"))
        .env_remove("HF_HOME")
        .arg("forward")
        .args(args)
        .arg("--input")
        .arg(layouts().join("inputs.safetensors"))
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    (o, out)
}

fn cli_forward(args: &[&str]) -> std::process::Output {
    cli_forward_to(args).0
}

/// Every layout loads the weights diffusers loads: through the library for folders, through the
/// CLI (with the cache in `HF_HUB_CACHE`) for repo ids and, for every case, the CLI too.
#[test]
fn every_layout_loads_what_diffusers_loads() {
    let inputs = UNetInputs::load(&layouts().join("inputs.safetensors")).unwrap();
    let all = cases();
    assert!(all.len() >= 10);
    for c in &all {
        let want = expected(&c.name);
        if c.model != REPO_ID {
            let opts = LoadOptions {
                variant: c.variant.clone(),
                revision: c.revision.clone(),
                keep: None,
            };
            let unet = UNet::from_pretrained(&layouts().join(&c.model), &opts)
                .unwrap_or_else(|e| panic!("{}: {e}", c.name));
            assert_close(&c.name, &unet.forward(&inputs).unwrap(), &want);
        }
        let model = if c.model == REPO_ID {
            c.model.clone()
        } else {
            layouts().join(&c.model).display().to_string()
        };
        let mut args = vec!["--model", model.as_str(), "--device", "cpu"];
        if let Some(v) = &c.variant {
            args.extend(["--variant", v]);
        }
        if let Some(r) = &c.revision {
            args.extend(["--revision", r]);
        }
        let (o, out) = cli_forward_to(&args);
        assert!(
            o.status.success(),
            "{}: {}",
            c.name,
            String::from_utf8_lossy(&o.stderr)
        );
        assert_close(&format!("{} (CLI)", c.name), &load_sample(&out), &want);
    }
}

/// `HF_HOME` is read as `$HF_HOME/hub` when `HF_HUB_CACHE` is unset.
#[test]
fn a_repo_id_is_found_under_hf_home() {
    let home = scratch("hf-home");
    let hub = layouts().join("hub");
    std::os::unix::fs::symlink(&hub, home.join("hub")).unwrap();
    let out = scratch("hf-home-out").join("out.safetensors");
    let o = Command::new(freelunch_bin())
        .env_remove("HF_HUB_CACHE")
        .env("HF_HOME", &home)
        .args(["forward", "--model", REPO_ID, "--device", "cpu", "--input"])
        .arg(layouts().join("inputs.safetensors"))
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_close("HF_HOME", &load_sample(&out), &expected("cache_repo_id"));
}

fn stderr_of(args: &[&str]) -> String {
    let o = cli_forward(args);
    assert!(!o.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn layouts_that_cannot_be_read_say_why() {
    let variants = layouts().join("variants");
    let v = variants.to_str().unwrap();
    let e = stderr_of(&["--model", v, "--variant", "fp8"]);
    assert!(
        e.contains("no weights of variant `fp8`") && e.contains("variants bf16, fp16"),
        "{e}"
    );
    assert!(e.contains("full-precision weights"), "{e}");
    let e = stderr_of(&["--model", v, "--variant", "../x"]);
    assert!(e.contains("a variant is a name"), "{e}");
    let e = stderr_of(&["--model", v, "--revision", "main"]);
    assert!(e.contains("plain folder"), "{e}");
    let e = stderr_of(&["--model", "nobody/nothing"]);
    assert!(
        e.contains("nobody/nothing") && e.contains("never downloads"),
        "{e}"
    );
    let e = stderr_of(&["--model", REPO_ID, "--revision", "v3"]);
    assert!(
        e.contains("no revision `v3`") && e.contains("main, v2"),
        "{e}"
    );
    let e = stderr_of(&["--model", REPO_ID, "--revision", "../../../etc"]);
    assert!(e.contains("not a branch, tag or commit"), "{e}");

    // Variants only, more than one: which is meant is not guessed.
    let two = scratch("two-variants");
    for entry in std::fs::read_dir(&variants).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if name != "diffusion_pytorch_model.safetensors" {
            std::fs::copy(entry.path(), two.join(&name)).unwrap();
        }
    }
    let e = stderr_of(&["--model", two.to_str().unwrap()]);
    assert!(
        e.contains("several variants (bf16, fp16)") && e.contains("--variant"),
        "{e}"
    );
    let ok = cli_forward(&["--model", two.to_str().unwrap(), "--variant", "fp16"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // A snapshot whose commit folder is gone (an interrupted download).
    let repo = scratch("broken-cache").join("models--a--b");
    std::fs::create_dir_all(repo.join("snapshots")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(
        repo.join("refs/main"),
        "0123456789abcdef0123456789abcdef01234567",
    )
    .unwrap();
    let e = stderr_of(&["--model", repo.to_str().unwrap()]);
    assert!(e.contains("snapshot folder is missing"), "{e}");
}

/// The CLI says which variant it read when it was not told and found no full-precision weights.
#[test]
fn the_variant_read_unasked_is_named() {
    let only = layouts().join("variants_only");
    let o = cli_forward(&["--model", only.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("reading its fp16 variant"), "{e}");
    let files = ModelFiles::locate(&only).unwrap();
    assert_eq!(files.variant.as_deref(), Some("fp16"));
    assert_eq!(files.weights.len(), 3);
}

fn weight_files(dir: &Path, variant: Option<&str>) -> Vec<PathBuf> {
    ModelFiles::locate_with(dir, variant).unwrap().weights
}

/// f32 tensors are read in place from the file's map (no copy exists), and two loads share
/// one map; values are those of the file.
#[test]
fn f32_checkpoints_are_read_in_place_and_share_their_map() {
    let files = weight_files(&layouts().join("variants"), None);
    let map = safetensors_io::map_file(&files[0]).unwrap();
    let again = safetensors_io::map_file(&files[0]).unwrap();
    assert!(std::sync::Arc::ptr_eq(&map, &again));
    let a = Checkpoint::load(&files).unwrap().into_tensors();
    let b = Checkpoint::load(&files).unwrap().into_tensors();
    let raw = std::fs::read(&files[0]).unwrap();
    let st = safetensors::SafeTensors::deserialize(&raw).unwrap();
    assert!(!a.is_empty());
    for (name, t) in &a {
        assert!(t.is_mapped(), "{name} was copied");
        assert_eq!(
            t.data().as_ptr(),
            b[name].data().as_ptr(),
            "{name}: two maps"
        );
        let view = st.tensor(name).unwrap();
        let want: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(t.data(), &want[..], "{name}");
    }
    // Changing a mapped tensor copies it; the file and the other load are untouched.
    let (name, t) = a.into_iter().next().unwrap();
    let mut t = t;
    let before = b[&name].data()[0];
    t.data_mut()[0] = before + 1.0;
    assert!(!t.is_mapped());
    assert_eq!(b[&name].data()[0], before);
    assert_eq!(std::fs::read(&files[0]).unwrap(), raw);
}

/// 16-bit tensors: widened at load by default (same values as a widening of the stored bits),
/// or kept as stored for a device computing in their type, then checked finite on their bits and
/// widened on first use to the same values.
#[test]
fn half_checkpoints_are_widened_or_kept_as_stored() {
    for (variant, half) in [("fp16", HalfType::F16), ("bf16", HalfType::BF16)] {
        let files = weight_files(&layouts().join("variants"), Some(variant));
        let widened = Checkpoint::load(&files).unwrap().into_tensors();
        let kept = Checkpoint::load_keeping(&files, Some(half))
            .unwrap()
            .into_tensors();
        let other = match half {
            HalfType::F16 => HalfType::BF16,
            HalfType::BF16 => HalfType::F16,
        };
        let not_kept = Checkpoint::load_keeping(&files, Some(other))
            .unwrap()
            .into_tensors();
        assert_eq!(widened.len(), kept.len());
        for (name, w) in &widened {
            let k = &kept[name];
            assert!(w.stored_half().is_none() && !w.is_mapped(), "{name}");
            assert!(not_kept[name].stored_half().is_none(), "{name}");
            let (dtype, bits) = k.stored_half().unwrap_or_else(|| panic!("{name} not kept"));
            assert_eq!(dtype, half);
            assert!(k.is_mapped());
            let from_bits: Vec<f32> = bits
                .chunks_exact(2)
                .map(|b| half.to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect();
            assert_eq!(w.data(), &from_bits[..], "{name}");
            assert_eq!(k.data(), w.data(), "{name}");
            assert!(!k.is_mapped(), "{name}: widened on use");
        }
    }
}

/// A kept 16-bit weight that holds an infinity is refused at load, without widening.
#[test]
fn a_kept_half_weight_that_is_infinite_is_refused() {
    let dir = scratch("half-inf");
    let path = dir.join("w.safetensors");
    let mut bits: Vec<u8> = Vec::new();
    for v in [1.0f32, -2.0, f32::INFINITY, 0.5] {
        bits.extend(half::f16::from_f32(v).to_bits().to_le_bytes());
    }
    common::write_raw_safetensors(&path, &[("conv.weight", "F16", vec![4], bits)]);
    for keep in [None, Some(HalfType::F16)] {
        let e = Checkpoint::load_keeping(std::slice::from_ref(&path), keep)
            .err()
            .unwrap_or_else(|| panic!("{keep:?}: loaded"))
            .to_string();
        assert!(
            e.contains("conv.weight") && e.contains("+inf at index [2]"),
            "{keep:?}: {e}"
        );
    }
}

/// On the GPU backend (the PTX executor here) a model whose 16-bit weights were kept as stored
/// computes exactly what the same model widened at load computes, in the device's type.
#[test]
fn kept_half_weights_run_on_the_gpu_as_widened_ones() {
    use common::gpu::gpus;
    use freelunch::device::{DType, Exec};
    let devices = gpus("kept_half_weights_run_on_the_gpu_as_widened_ones");
    let inputs = UNetInputs::load(&layouts().join("inputs.safetensors")).unwrap();
    let dir = layouts().join("variants");
    for (dt, gpu) in devices {
        let (variant, keep) = match dt {
            DType::F16 => ("fp16", HalfType::F16),
            DType::BF16 => ("bf16", HalfType::BF16),
            DType::F32 => continue,
        };
        let opts = |keep| LoadOptions {
            variant: Some(variant.into()),
            revision: None,
            keep,
        };
        let kept = UNet::from_pretrained(&dir, &opts(Some(keep))).unwrap();
        let widened = UNet::from_pretrained(&dir, &opts(None)).unwrap();
        let exec = Exec::Cuda(gpu.clone());
        let b = freelunch::boosters::Boosters::default();
        let a = kept.on(exec.clone()).forward_with(&inputs, &b).unwrap();
        let w = widened.on(exec).forward_with(&inputs, &b).unwrap();
        assert_eq!(a.data(), w.data(), "{dt:?}");
        let golden = if variant == "bf16" {
            "variant_bf16_sharded"
        } else {
            "variant_fp16"
        };
        let err = a.rel_l2(&expected(golden));
        eprintln!("{variant} kept on {dt:?}: rel L2 {err:.2e} from diffusers (f32)");
        assert!(err <= common::gpu::tolerance(*dt), "{dt:?}: {err:.3e}");
    }
}
