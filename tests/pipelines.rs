//! Prompt to image against diffusers: `StableDiffusionPipeline` and `StableDiffusionXLPipeline`
//! runs on tiny random-weight pipeline folders (`tools/gen_pipeline_goldens.py`), from the same
//! initial latents. Per case: the prompt embeddings within 1e-5, the final latents within 1e-4
//! and the decoded image within 1e-3 relative L2 of diffusers' before 8-bit rounding, on the
//! CPU; the CLI's PNG equal to diffusers' 8-bit image but for values at a rounding boundary.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::fixture;
use freelunch::device::{DType, Device};
use freelunch::pipelines::{GenerateOptions, Prompt, StableDiffusionPipeline};
use freelunch::safetensors_io::StoredTensor;
use freelunch::Tensor;

struct Case {
    name: String,
    prompt: Vec<String>,
    negative: Option<Vec<String>>,
    prompt_2: Option<Vec<String>>,
    negative_2: Option<Vec<String>>,
    images_per_prompt: usize,
    guidance: f32,
    steps: usize,
    height: usize,
    width: usize,
    original_size: Option<(usize, usize)>,
    target_size: Option<(usize, usize)>,
    crops: Option<(usize, usize)>,
}

fn pipeline_dir(name: &str) -> PathBuf {
    fixture("pipelines").join(name)
}

fn cases(name: &str) -> Vec<Case> {
    let path = pipeline_dir(name).join("goldens/cases.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let strings = |v: &serde_json::Value| -> Option<Vec<String>> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
    };
    let pair = |v: Option<&serde_json::Value>| -> Option<(usize, usize)> {
        let a = v?.as_array()?;
        Some((a[0].as_u64()? as usize, a[1].as_u64()? as usize))
    };
    json.as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            prompt: strings(&c["prompt"]).unwrap(),
            negative: strings(&c["negative_prompt"]),
            prompt_2: c.get("prompt_2").and_then(strings),
            negative_2: c.get("negative_prompt_2").and_then(strings),
            images_per_prompt: c["num_images_per_prompt"].as_u64().unwrap_or(1) as usize,
            guidance: c["guidance_scale"].as_f64().unwrap() as f32,
            steps: c["num_inference_steps"].as_u64().unwrap() as usize,
            height: c["height"].as_u64().unwrap() as usize,
            width: c["width"].as_u64().unwrap() as usize,
            original_size: pair(c.get("original_size")),
            target_size: pair(c.get("target_size")),
            crops: pair(c.get("crops_coords_top_left")),
        })
        .collect()
}

fn goldens(pipeline: &str, case: &str) -> BTreeMap<String, StoredTensor> {
    let path = pipeline_dir(pipeline).join(format!("goldens/{case}.safetensors"));
    freelunch::safetensors_io::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// diffusers' float image: `(x / 2 + 0.5).clamp(0, 1)` of the VAE's output.
fn to_unit(images: &Tensor) -> Tensor {
    let data = images
        .data()
        .iter()
        .map(|&x| (x / 2.0 + 0.5).clamp(0.0, 1.0))
        .collect();
    Tensor::new(images.shape().to_vec(), data).unwrap()
}

/// Rows 0, n, 2n, ... of `t`: one per prompt of a batch repeated `n` times per prompt.
fn every_nth_row(t: &Tensor, n: usize) -> Tensor {
    let b = t.shape()[0];
    let per = t.numel() / b;
    let data = t.data().chunks(per).step_by(n).flatten().copied().collect();
    let mut shape = t.shape().to_vec();
    shape[0] = b / n;
    Tensor::new(shape, data).unwrap()
}

/// Relative L2, or 0 where both are exactly zero (SDXL's zeroed negative prompt), infinity where
/// only the expected one is.
fn rel_l2_or_exact_zero(got: &Tensor, want: &Tensor) -> f64 {
    if want.data().iter().all(|&v| v == 0.0) {
        return if got.data().iter().all(|&v| v == 0.0) {
            0.0
        } else {
            f64::INFINITY
        };
    }
    got.rel_l2(want)
}

fn check_pipeline(name: &str) {
    let dir = pipeline_dir(name);
    let pipe = StableDiffusionPipeline::from_pretrained(
        &dir,
        &Default::default(),
        Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let cases = cases(name);
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in &cases {
        let g = goldens(name, &case.name);
        let want = |k: &str| {
            &g.get(k)
                .unwrap_or_else(|| panic!("{}: no `{k}`", case.name))
                .tensor
        };
        let prompt = Prompt {
            prompt: case.prompt.clone(),
            negative_prompt: case.negative.clone(),
            prompt_2: case.prompt_2.clone(),
            negative_prompt_2: case.negative_2.clone(),
        };
        // The prompt embeddings, as `encode_prompt` gives them (one row per prompt; diffusers'
        // are repeated per image).
        let embeds = pipe
            .encode_prompt(&prompt, case.guidance > 1.0, None)
            .unwrap();
        let n = case.images_per_prompt;
        let mut errs = Vec::new();
        for (what, got) in [
            ("prompt_embeds", Some(&embeds.prompt_embeds)),
            (
                "negative_prompt_embeds",
                embeds.negative_prompt_embeds.as_ref(),
            ),
            ("pooled_prompt_embeds", embeds.pooled_prompt_embeds.as_ref()),
            (
                "negative_pooled_prompt_embeds",
                embeds.negative_pooled_prompt_embeds.as_ref(),
            ),
        ] {
            let Some(got) = got else {
                assert!(
                    !g.contains_key(what) || what.starts_with("negative") && case.guidance <= 1.0,
                    "{}: no {what}",
                    case.name
                );
                continue;
            };
            let expected = every_nth_row(want(what), n);
            errs.push((what, rel_l2_or_exact_zero(got, &expected), 1e-5));
        }
        let opts = GenerateOptions {
            steps: case.steps,
            guidance_scale: Some(case.guidance),
            height: Some(case.height),
            width: Some(case.width),
            images_per_prompt: case.images_per_prompt,
            latents: Some(want("latents").clone()),
            original_size: case.original_size,
            target_size: case.target_size,
            crops_coords_top_left: case.crops.unwrap_or((0, 0)),
            ..GenerateOptions::default()
        };
        let out = pipe.generate(&prompt, opts).unwrap();
        errs.push((
            "final_latents",
            out.latents.rel_l2(want("final_latents")),
            1e-4,
        ));
        errs.push(("image", to_unit(&out.images).rel_l2(want("image")), 1e-3));
        for (what, err, tol) in errs {
            println!("{name}/{}: {what} rel L2 {err:.2e}", case.name);
            if err.is_nan() || err > tol {
                failures.push(format!(
                    "{name}/{}: {what} {err:.2e} > {tol:.0e}",
                    case.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn stable_diffusion_prompt_to_image_matches_diffusers() {
    check_pipeline("sd_tiny");
}

#[test]
fn stable_diffusion_xl_prompt_to_image_matches_diffusers() {
    check_pipeline("sdxl_tiny");
}

/// `freelunch sample --prompt` on a pipeline folder: the PNG is diffusers' 8-bit image (values
/// whose float lies within 1e-4 of a rounding boundary may differ by one; they are counted), and
/// `--output X.safetensors` writes the final latents.
#[test]
fn the_cli_turns_a_prompt_into_diffusers_png() {
    let case = &cases("sd_tiny")[0];
    assert_eq!(case.prompt.len(), 1);
    let g = goldens("sd_tiny", &case.name);
    let dir = common::scratch("pipeline-cli");
    let noise = dir.join("noise.safetensors");
    freelunch::safetensors_io::save(&noise, &[("sample", &g["latents"].tensor)]).unwrap();
    let model = pipeline_dir("sd_tiny");
    let args = |out: &std::path::Path| {
        let mut a: Vec<String> = [
            "sample",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            &case.prompt[0],
            "--noise",
            noise.to_str().unwrap(),
            "--device",
            "cpu",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (flag, v) in [
            ("--steps", case.steps.to_string()),
            ("--guidance", case.guidance.to_string()),
            ("--height", case.height.to_string()),
            ("--width", case.width.to_string()),
            ("--output", out.display().to_string()),
        ] {
            a.extend([flag.to_string(), v]);
        }
        if let Some(n) = &case.negative {
            a.extend(["--negative-prompt".to_string(), n[0].clone()]);
        }
        a
    };
    let run = |out: &std::path::Path| {
        let o = std::process::Command::new(common::freelunch_bin())
            .args(args(out))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let latents = dir.join("latents.safetensors");
    run(&latents);
    let err = common::load_sample(&latents).rel_l2(&g["final_latents"].tensor);
    assert!(err < 1e-4, "final latents {err:.2e}");

    let png = dir.join("image.png");
    run(&png);
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let (h, w) = (case.height, case.width);
    assert_eq!((info.height as usize, info.width as usize), (h, w));
    let (want, float) = (&g["image_u8"].tensor, &g["image"].tensor);
    let (mut boundary, mut exact) = (0, 0);
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let i = (c * h + y) * w + x;
                let (got, want) = (buf[(y * w + x) * 3 + c] as f32, want.data()[i]);
                let v = float.data()[i] * 255.0;
                if got == want {
                    exact += 1;
                } else if (got - want).abs() == 1.0 && (v - v.floor() - 0.5).abs() < 255e-4 {
                    boundary += 1;
                } else {
                    panic!("pixel ({c}, {y}, {x}): {got} against diffusers' {want} ({v})");
                }
            }
        }
    }
    println!("{exact} bytes equal, {boundary} off by one at a rounding boundary");

    // Booster flags act on the pipeline's U-Net: the same run with FreeU and Skip-Tuning gives
    // other latents, and a booster setting out of range is refused before any step.
    let boosted = dir.join("boosted.safetensors");
    let mut a = args(&boosted);
    a.extend(["--freeu", "1.5,1.6,0.9,0.2", "--skip-tuning", "1,0.8"].map(String::from));
    let o = std::process::Command::new(common::freelunch_bin())
        .args(&a)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d = common::load_sample(&boosted).rel_l2(&common::load_sample(&latents));
    assert!(d > 1e-3, "the boosters changed the latents by {d:.2e} only");
    let mut a = args(&dir.join("never.safetensors"));
    a.extend(["--freeu", "nan,1.6,0.9,0.2"].map(String::from));
    let o = std::process::Command::new(common::freelunch_bin())
        .args(&a)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--freeu") && !err.contains("panicked"),
        "{err}"
    );
}

/// The pipeline on the GPU backend (the PTX executor in CI), f32: diffusers' image within 1e-4.
#[test]
fn the_pipelines_run_on_the_gpu() {
    let Some(device) = common::gpu::device("the_pipelines_run_on_the_gpu") else {
        return;
    };
    for name in ["sd_tiny", "sdxl_tiny"] {
        let pipe = StableDiffusionPipeline::from_pretrained(
            &pipeline_dir(name),
            &Default::default(),
            device,
            DType::F32,
        )
        .unwrap();
        let case = &cases(name)[0];
        let g = goldens(name, &case.name);
        let opts = GenerateOptions {
            steps: case.steps,
            guidance_scale: Some(case.guidance),
            height: Some(case.height),
            width: Some(case.width),
            latents: Some(g["latents"].tensor.clone()),
            ..GenerateOptions::default()
        };
        let prompt = Prompt {
            prompt: case.prompt.clone(),
            negative_prompt: case.negative.clone(),
            ..Prompt::default()
        };
        let out = pipe.generate(&prompt, opts).unwrap();
        let err = to_unit(&out.images).rel_l2(&g["image"].tensor);
        println!("{name}/{} on {device:?}: image rel L2 {err:.2e}", case.name);
        assert!(err < 1e-4, "{name}: {err:.2e}");
    }
}

/// A prompt needs a pipeline folder with every component: anything else is a clear error,
/// never a panic, and nothing is written.
#[test]
fn a_prompt_without_a_pipeline_is_a_clear_error() {
    let dir = common::scratch("pipeline-errors");
    let out = dir.join("x.png");
    let run = |model: &std::path::Path| {
        let o = std::process::Command::new(common::freelunch_bin())
            .args([
                "sample", "--prompt", "a cat", "--steps", "2", "--device", "cpu",
            ])
            .arg("--model")
            .arg(model)
            .arg("--output")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success() && !err.contains("panicked"), "{err}");
        assert!(!out.exists());
        err
    };
    assert!(run(&fixture("ddpm_basic")).contains("no model_index.json"));
    // A pipeline folder that lost its VAE.
    let broken = dir.join("sd");
    for entry in std::fs::read_dir(pipeline_dir("sd_tiny")).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().unwrap() != "vae" {
            copy_tree(&p, &broken.join(p.file_name().unwrap()));
        }
    }
    let err = run(&broken);
    assert!(err.contains("no `vae` component"), "{err}");
    assert!(matches!(
        StableDiffusionPipeline::from_pretrained(
            &broken,
            &Default::default(),
            Device::Cpu,
            DType::F32
        ),
        Err(freelunch::Error::NotFound { .. })
    ));
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let p = entry.unwrap().path();
            copy_tree(&p, &to.join(p.file_name().unwrap()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}
