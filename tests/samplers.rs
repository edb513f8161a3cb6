//! Sampling loops against diffusers' (as its pipelines run them) for the same
//! scheduler_config.json, noise and model: `tools/gen_sampler_goldens.py`.

mod common;

use std::path::Path;

use common::fixture;
use freelunch::boosters::Boosters;
use freelunch::device::Exec;
use freelunch::models::Denoiser;
use freelunch::safetensors_io;
use freelunch::schedulers::{
    sample, Conditioning, GivenNoise, SampleOptions, Sampler, SchedulerConfig, SeededNoise,
};
use freelunch::{Tensor, UNet, UNetInputs};
use serde_json::Value;

fn tensor(dir: &Path, file: &str, name: &str) -> Tensor {
    safetensors_io::load(&dir.join(file))
        .unwrap()
        .remove(name)
        .unwrap_or_else(|| panic!("{file} has no {name}"))
        .tensor
}

/// Runs one fixture's loop and returns its final sample; None when its sampler is not
/// implemented yet. With `perturb = Some(e)`, every model output gets relative noise of size `e`
/// (see `Perturbed`).
fn run_case(dir: &Path, exec: &Exec, perturb: Option<f32>) -> Option<Tensor> {
    let case: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let cfg = SchedulerConfig::from_path(&dir.join("scheduler_config.json")).unwrap();
    let steps = case["steps"].as_u64().unwrap() as usize;
    let eta = case["eta"].as_f64().unwrap_or(0.0) as f32;
    let kind = cfg.class?;
    let sampler = freelunch::schedulers::build(kind, &cfg, steps, eta).unwrap();
    // diffusers' `scheduler.sigmas`, for the samplers that have them.
    match (sampler.sigmas(), case["sigmas"].as_array()) {
        (Some(got), Some(want)) => {
            assert_eq!(got.len(), want.len(), "{}", dir.display());
            for (g, w) in got.iter().zip(want) {
                let w = w.as_f64().unwrap();
                assert!(
                    (*g as f64 - w).abs() <= 1e-5 * w.abs().max(1e-3),
                    "{}: sigma {g} vs {w}",
                    dir.display()
                );
            }
        }
        (None, None) => {}
        (got, want) => panic!(
            "{}: sigmas {got:?} here, {want:?} in diffusers",
            dir.display()
        ),
    }
    // diffusers integrates the LMS coefficients numerically (scipy's quad on an f32 integrand);
    // here they are exact.
    if let Some(want) = case["lms_coefficients"].as_array() {
        let lms =
            freelunch::schedulers::scheduling_lms_discrete::LmsScheduler::new(&cfg, steps).unwrap();
        assert_eq!(lms.coefficients().len(), want.len());
        let mut worst = 0f64;
        for (i, (got, want)) in lms.coefficients().iter().zip(want).enumerate() {
            let want = want.as_array().unwrap();
            assert_eq!(got.len(), want.len());
            for (j, (g, w)) in got.iter().zip(want).enumerate() {
                let w = w.as_f64().unwrap();
                let err = (*g as f64 - w).abs() / w.abs().max(1e-6);
                // The σ's here and in diffusers may differ in their last bit, and a coefficient
                // divides by differences of σ's.
                assert!(
                    err <= 2e-6,
                    "{}: LMS coefficient ({i}, {j}): {g} vs diffusers' {w}",
                    dir.display()
                );
                worst = worst.max(err);
            }
        }
        eprintln!(
            "{}: LMS coefficients within {worst:.1e} (relative) of diffusers'",
            dir.file_name().unwrap().to_string_lossy()
        );
    }
    Some(finish(dir, &case, sampler, exec, perturb))
}

/// A model whose every output carries seeded noise of relative RMS size `eps`: how the loop
/// treats the error of a half-precision model.
struct Perturbed<D> {
    model: D,
    eps: f32,
    calls: std::sync::atomic::AtomicU64,
}

impl<D: Denoiser> Denoiser for Perturbed<D> {
    fn forward_with(&self, inputs: &UNetInputs, boosters: &Boosters) -> freelunch::Result<Tensor> {
        let out = self.model.forward_with(inputs, boosters)?;
        let call = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let noise = Tensor::randn(out.shape().to_vec(), 9000 + call);
        let rms = (out.data().iter().map(|v| (*v as f64).powi(2)).sum::<f64>()
            / out.numel().max(1) as f64)
            .sqrt() as f32;
        let data = out
            .data()
            .iter()
            .zip(noise.data())
            .map(|(v, n)| v + self.eps * rms * n)
            .collect();
        Tensor::new(out.shape().to_vec(), data)
    }

    fn check(&self, inputs: &UNetInputs) -> freelunch::Result<()> {
        self.model.check(inputs)
    }
}

fn finish(
    dir: &Path,
    case: &Value,
    mut sampler: Box<dyn Sampler>,
    exec: &Exec,
    perturb: Option<f32>,
) -> Tensor {
    let want_ts: Vec<f64> = case["timesteps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(
        sampler.timesteps().len(),
        want_ts.len(),
        "{}",
        dir.display()
    );
    for (g, w) in sampler.timesteps().iter().zip(&want_ts) {
        assert!(
            (*g as f64 - w).abs() <= 1e-3,
            "{}: timestep {g} vs {w}",
            dir.display()
        );
    }
    let unet = UNet::from_dir(&fixture(case["model"].as_str().unwrap())).unwrap();
    let noise = tensor(dir, "noise.safetensors", "sample");
    let guidance = case["guidance"].as_f64().map(|g| g as f32);
    let conditioning = if dir.join("cond.safetensors").is_file() {
        let mut c = safetensors_io::load(&dir.join("cond.safetensors")).unwrap();
        let mut take = |name: &str| c.remove(name).map(|s| s.tensor);
        let conditioning = Conditioning {
            encoder_hidden_states: take("encoder_hidden_states"),
            uncond_hidden_states: take("uncond_hidden_states"),
            class_labels: None,
            text_embeds: take("text_embeds"),
            time_ids: take("time_ids"),
            uncond_text_embeds: take("uncond_text_embeds"),
            uncond_time_ids: take("uncond_time_ids"),
        };
        assert!(c.is_empty(), "{}: unread {:?}", dir.display(), c.keys());
        conditioning
    } else {
        Conditioning::default()
    };
    let mut given;
    let mut seeded = SeededNoise(0);
    let step_noise: &mut dyn freelunch::schedulers::NoiseSource =
        if case["step_noise"].as_bool().unwrap() {
            // One noise tensor per model call.
            given = GivenNoise(
                (0..want_ts.len())
                    .map(|i| tensor(dir, "step_noise.safetensors", &format!("noise_{i}")))
                    .collect(),
            );
            &mut given
        } else {
            &mut seeded
        };
    let opts = SampleOptions {
        guidance,
        conditioning,
        boosters: Boosters::default(),
        on_step: None,
    };
    let model = unet.on(exec.clone());
    match perturb {
        None => sample(&model, sampler.as_mut(), &noise, opts, step_noise).unwrap(),
        Some(eps) => {
            let model = Perturbed {
                model,
                eps,
                calls: 0.into(),
            };
            sample(&model, sampler.as_mut(), &noise, opts, step_noise).unwrap()
        }
    }
}

#[test]
fn sampling_loops_match_diffusers() {
    sampling_loops_on(&Exec::cpu(), &|_| 1e-4);
}

/// The same loops with the U-Net on the GPU, in every dtype. f32 is held to the GPU tolerance of 1e-4 (`common::gpu::tolerance`). A
/// half-precision model errs by up to its tolerance at every step, and a loop can amplify that:
/// the bound is the dtype's tolerance times the loop's amplification, measured on the CPU by
/// perturbing every model output by a relative 1e-3 and comparing final samples (about 1 for
/// most loops; ~15 for DDIM on the cosine schedule with clipping, whose last steps divide the
/// model's error by a vanishing sqrt(alpha_prod)).
#[test]
fn sampling_loops_match_diffusers_on_gpu() {
    let amplification = std::cell::RefCell::new(std::collections::HashMap::new());
    for (dt, gpu) in common::gpu::gpus("sampling_loops_on_gpu") {
        let tol = common::gpu::tolerance(*dt);
        let bound = |dir: &Path| -> f64 {
            if *dt == freelunch::device::DType::F32 {
                return tol;
            }
            let amp = *amplification
                .borrow_mut()
                .entry(dir.to_path_buf())
                .or_insert_with(|| loop_amplification(dir));
            tol * amp.max(1.0)
        };
        sampling_loops_on(&Exec::Cuda(gpu.clone()), &bound);
    }
}

/// How much a loop amplifies the relative error of its model's outputs (on the CPU).
fn loop_amplification(dir: &Path) -> f64 {
    const EPS: f32 = 1e-3;
    let clean = run_case(dir, &Exec::cpu(), None).expect("implemented");
    let noisy = run_case(dir, &Exec::cpu(), Some(EPS)).expect("implemented");
    let amp = noisy.rel_l2(&clean) / EPS as f64;
    eprintln!(
        "{}: loop amplification {amp:.2}",
        dir.file_name().unwrap().to_string_lossy()
    );
    amp
}

fn sampling_loops_on(exec: &Exec, tolerance: &dyn Fn(&Path) -> f64) {
    let root = fixture("samplers");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.json").is_file())
        .collect();
    cases.sort();
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut pending = Vec::new();
    for dir in &cases {
        let Some(out) = run_case(dir, exec, None) else {
            pending.push(dir.file_name().unwrap().to_string_lossy().to_string());
            continue;
        };
        let err = out.rel_l2(&tensor(dir, "expected.safetensors", "sample"));
        let tol = tolerance(dir);
        eprintln!(
            "{}: rel L2 {err:.3e} (bound {tol:.1e})",
            dir.file_name().unwrap().to_string_lossy()
        );
        if err.is_nan() || err > tol {
            failures.push(format!("{}: {err:.3e} > {tol:.1e}", dir.display()));
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Every golden names an implemented class.
    assert!(pending.is_empty(), "skipped: {pending:?}");
    assert!(checked >= 36, "only {checked} sampler goldens ran");
}

fn freelunch(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(common::freelunch_bin())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn sample_cli_with_guidance_matches_diffusers() {
    let case = fixture("samplers").join("cfg_ddim_sd15");
    let out = common::scratch("sample-cli").join("out.safetensors");
    let model = fixture("sd15_like");
    let sched = case.join("scheduler_config.json");
    let noise = case.join("noise.safetensors");
    let cond = case.join("cond.safetensors");
    let o = freelunch(&[
        "sample".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--scheduler".as_ref(),
        sched.as_os_str(),
        "--noise".as_ref(),
        noise.as_os_str(),
        "--cond".as_ref(),
        cond.as_os_str(),
        "--guidance".as_ref(),
        "7.5".as_ref(),
        "--steps".as_ref(),
        "10".as_ref(),
        "--output".as_ref(),
        out.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = tensor(out.parent().unwrap(), "out.safetensors", "sample");
    let want = tensor(&case, "expected.safetensors", "sample");
    assert!(got.rel_l2(&want) <= 1e-4, "{}", got.rel_l2(&want));
}

#[test]
fn sample_cli_writes_a_png_grid() {
    let dir = common::scratch("sample-png");
    // A pixel model whose output matches its input: ddpm_basic, with a scheduler from a fixture.
    let png = dir.join("grid.png");
    let sched = fixture("samplers").join("ddim_linear_leading_offset1");
    let noise = dir.join("noise.safetensors");
    safetensors_io::save(&noise, &[("sample", &Tensor::randn([5, 3, 16, 16], 3))]).unwrap();
    let o = freelunch(&[
        "sample".as_ref(),
        "--model".as_ref(),
        fixture("ddpm_basic").as_os_str(),
        "--scheduler".as_ref(),
        sched.as_os_str(),
        "--noise".as_ref(),
        noise.as_os_str(),
        "--steps".as_ref(),
        "4".as_ref(),
        "--freeu".as_ref(),
        "sd15".as_ref(),
        "--output".as_ref(),
        png.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    // 5 samples: a 3×2 grid of 16×16 RGB tiles.
    assert_eq!(
        (info.width, info.height, info.color_type),
        (48, 32, png::ColorType::Rgb)
    );
}

#[test]
fn sample_cli_errors() {
    let dir = common::scratch("sample-err");
    let out = dir.join("o.safetensors");
    let model = fixture("ddpm_basic");
    let sched = fixture("samplers")
        .join("ddim_linear_leading_offset1")
        .join("scheduler_config.json");
    let run = |extra: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "sample".as_ref(),
            "--model".as_ref(),
            model.as_os_str(),
            "--output".as_ref(),
            out.as_os_str(),
        ];
        args.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
        let o = freelunch(&args);
        assert!(!o.status.success());
        let msg = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!msg.contains("panicked"), "{msg}");
        msg
    };
    let s = sched.to_str().unwrap();
    assert!(run(&["--scheduler", s, "--steps", "0"]).contains("steps"));
    assert!(run(&["--scheduler", s, "--sampler", "plms"])
        .contains("`sampler` = `plms` (implemented: ddpm"));
    assert!(run(&["--scheduler", s, "--guidance", "7"]).contains("guidance"));
    let bad = dir.join("sched.json");
    // An unimplemented class is named, with every implemented one and the --sampler way out.
    std::fs::write(&bad, r#"{"_class_name": "KDPM2DiscreteScheduler"}"#).unwrap();
    let msg = run(&["--scheduler", bad.to_str().unwrap()]);
    for word in [
        "KDPM2DiscreteScheduler",
        "PNDMScheduler",
        "EulerAncestralDiscreteScheduler",
        "LMSDiscreteScheduler",
        "UniPCMultistepScheduler",
        "DPMSolverMultistepScheduler",
        "--sampler",
        "euler-a",
        "dpmpp-2m-sde",
    ] {
        assert!(msg.contains(word), "{word}: {msg}");
    }
    std::fs::write(
        &bad,
        r#"{"_class_name": "DDIMScheduler", "beta_schedule": "sigmoid"}"#,
    )
    .unwrap();
    assert!(run(&["--scheduler", bad.to_str().unwrap()]).contains("beta_schedule"));
    let noise = dir.join("noise.safetensors");
    safetensors_io::save(&noise, &[("sample", &Tensor::randn([1, 4, 16, 16], 0))]).unwrap();
    let msg = run(&["--scheduler", s, "--noise", noise.to_str().unwrap()]);
    assert!(
        msg.contains("noise") && msg.contains("[B, 3, H, W]"),
        "{msg}"
    );
    let o = freelunch(&[
        "sample".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--scheduler".as_ref(),
        s.as_ref(),
        "--output".as_ref(),
        "x.jpg".as_ref(),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains(".png or .safetensors"));
}

/// SDXL through the CLI: `--cond` carries the pooled text embeddings and time ids (the negative
/// time ids defaulting to the positive ones), one prompt for a batch of two, with guidance; the
/// result is diffusers' SDXL loop on the same embeddings and latents (`cfg_euler_sdxl`).
#[test]
fn sample_cli_sdxl_with_guidance_matches_diffusers() {
    let case = fixture("samplers").join("cfg_euler_sdxl");
    let out = common::scratch("sample-sdxl").join("out.safetensors");
    let (model, sched) = (fixture("sdxl_like"), case.join("scheduler_config.json"));
    let (noise, cond) = (
        case.join("noise.safetensors"),
        case.join("cond.safetensors"),
    );
    let o = freelunch(&[
        "sample".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--scheduler".as_ref(),
        sched.as_os_str(),
        "--noise".as_ref(),
        noise.as_os_str(),
        "--cond".as_ref(),
        cond.as_os_str(),
        "--guidance".as_ref(),
        "5".as_ref(),
        "--steps".as_ref(),
        "8".as_ref(),
        "--output".as_ref(),
        out.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("wrote")
            && stderr.contains("2 samples")
            && stderr.contains("8 model calls"),
        "{stderr}"
    );
    let got = tensor(out.parent().unwrap(), "out.safetensors", "sample");
    let want = tensor(&case, "expected.safetensors", "sample");
    assert!(got.rel_l2(&want) <= 1e-4, "{}", got.rel_l2(&want));
}

/// Conditioning that cannot serve the batch or the model is refused before the first step, and
/// the error names the user's tensor and shape (never the stacked uncond+cond batch).
#[test]
fn conditioning_errors_name_the_users_tensors() {
    use freelunch::schedulers::SamplerKind;
    let case = fixture("samplers").join("cfg_euler_sdxl");
    let unet = UNet::from_dir(&fixture("sdxl_like")).unwrap();
    let cfg = SchedulerConfig::from_path(&case.join("scheduler_config.json")).unwrap();
    let noise = tensor(&case, "noise.safetensors", "sample");
    let full = |name: &str| tensor(&case, "cond.safetensors", name);
    let base = Conditioning {
        encoder_hidden_states: Some(full("encoder_hidden_states")),
        uncond_hidden_states: Some(full("uncond_hidden_states")),
        text_embeds: Some(full("text_embeds")),
        time_ids: Some(full("time_ids")),
        uncond_text_embeds: Some(full("uncond_text_embeds")),
        ..Conditioning::default()
    };
    /// A model that fails the test if it is ever called: every case must be refused first.
    struct NeverCalled<'a>(&'a UNet);
    impl Denoiser for NeverCalled<'_> {
        fn forward_with(&self, _: &UNetInputs, _: &Boosters) -> freelunch::Result<Tensor> {
            panic!("the model was called before the conditioning was refused")
        }
        fn check(&self, inputs: &UNetInputs) -> freelunch::Result<()> {
            Denoiser::check(self.0, inputs)
        }
    }
    let run = |c: Conditioning, guidance: Option<f32>| {
        let mut s = freelunch::schedulers::build(SamplerKind::Euler, &cfg, 8, 0.0).unwrap();
        let opts = SampleOptions {
            guidance,
            conditioning: c,
            boosters: Boosters::default(),
            on_step: None,
        };
        sample(
            &NeverCalled(&unet),
            s.as_mut(),
            &noise,
            opts,
            &mut SeededNoise(0),
        )
        .unwrap_err()
        .to_string()
    };
    let expect = |msg: String, words: &[&str]| {
        for w in words {
            assert!(msg.contains(w), "`{w}` not in: {msg}");
        }
        assert!(!msg.contains("[4,"), "a stacked batch in: {msg}");
    };
    // A batch that is neither 1 nor the noise's.
    let mut c = base.clone();
    c.encoder_hidden_states = Some(Tensor::randn([3, 7, 64], 1));
    expect(
        run(c, Some(5.0)),
        &["encoder_hidden_states", "[3, 7, 64]", "batch 2"],
    );
    // The unconditional pooled embedding of the wrong width: named, at the user's batch.
    let mut c = base.clone();
    c.uncond_text_embeds = Some(Tensor::randn([1, 31], 2));
    expect(run(c, Some(5.0)), &["uncond_text_embeds", "[2, 31]"]);
    // Guidance without the unconditional pooled embedding.
    let mut c = base.clone();
    c.uncond_text_embeds = None;
    expect(run(c, Some(5.0)), &["uncond_text_embeds", "missing"]);
    // Unconditional tensors without guidance would change nothing.
    expect(
        run(base.clone(), None),
        &["uncond_hidden_states", "without guidance"],
    );
    // SDXL conditioning given to a model without text_time conditioning.
    let sd15 = UNet::from_dir(&fixture("sd15_like")).unwrap();
    let c = Conditioning {
        encoder_hidden_states: Some(Tensor::randn([1, 7, 48], 3)),
        time_ids: Some(full("time_ids")),
        ..Conditioning::default()
    };
    let mut s = freelunch::schedulers::build(SamplerKind::Euler, &cfg, 8, 0.0).unwrap();
    let opts = SampleOptions {
        guidance: None,
        conditioning: c,
        boosters: Boosters::default(),
        on_step: None,
    };
    let msg = sample(
        &NeverCalled(&sd15),
        s.as_mut(),
        &noise,
        opts,
        &mut SeededNoise(0),
    )
    .unwrap_err()
    .to_string();
    expect(msg, &["time_ids", "no text_time"]);
}

/// A `.png` for a latent model is refused before the model runs, and `--batch` repeats a
/// one-prompt conditioning to every sample (diffusers' num_images_per_prompt).
#[test]
fn sample_cli_checks_before_work_and_repeats_one_prompt() {
    let case = fixture("samplers").join("cfg_ddim_sd15");
    let dir = common::scratch("sample-batch");
    let (model, sched, cond) = (
        fixture("sd15_like"),
        case.join("scheduler_config.json"),
        case.join("cond.safetensors"),
    );
    let png = dir.join("latents.png");
    let o = freelunch(&[
        "sample".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--scheduler".as_ref(),
        sched.as_os_str(),
        "--cond".as_ref(),
        cond.as_os_str(),
        "--guidance".as_ref(),
        "7.5".as_ref(),
        "--steps".as_ref(),
        "500".as_ref(),
        "--output".as_ref(),
        png.as_os_str(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("a PNG needs 1 or 3 channels"),
        "{e}"
    );
    assert!(!e.contains("step"), "{e}");
    assert!(!png.exists());
    let out = dir.join("four.safetensors");
    let o = freelunch(&[
        "sample".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--scheduler".as_ref(),
        sched.as_os_str(),
        "--cond".as_ref(),
        cond.as_os_str(),
        "--guidance".as_ref(),
        "7.5".as_ref(),
        "--steps".as_ref(),
        "2".as_ref(),
        "--batch".as_ref(),
        "4".as_ref(),
        "--output".as_ref(),
        out.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let four = tensor(&dir, "four.safetensors", "sample");
    assert_eq!(four.shape(), &[4, 4, 16, 16]);
    // Each sample is the one its own noise gives with the one prompt: sample 0 of the batch is
    // the first sample of a batch-1 run whose noise is the batch's first.
    let noise = Tensor::randn([4, 4, 16, 16], 0);
    let first = Tensor::new(vec![1, 4, 16, 16], noise.data()[..4 * 16 * 16].to_vec()).unwrap();
    let noise_file = dir.join("noise1.safetensors");
    safetensors_io::save(&noise_file, &[("sample", &first)]).unwrap();
    let one = dir.join("one.safetensors");
    let o = freelunch(&[
        "sample".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--scheduler".as_ref(),
        sched.as_os_str(),
        "--cond".as_ref(),
        cond.as_os_str(),
        "--guidance".as_ref(),
        "7.5".as_ref(),
        "--steps".as_ref(),
        "2".as_ref(),
        "--noise".as_ref(),
        noise_file.as_os_str(),
        "--output".as_ref(),
        one.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let one = tensor(&dir, "one.safetensors", "sample");
    let n = one.numel();
    let d = four.data()[..n]
        .iter()
        .zip(one.data())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        d <= 1e-4 * one.data().iter().fold(1f32, |m, v| m.max(v.abs())),
        "{d}"
    );
}
