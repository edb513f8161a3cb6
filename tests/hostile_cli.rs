//! Hostile input to the command line, the scheduler configs and `eval`: every bad value is an
//! error that names the flag or the field, never a panic, an abort, a silently ignored flag or
//! a NaN sample, and nothing is written. One test per class, and a property test that no JSON
//! makes the scheduler config reader or any sampler built from it panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixture, scratch};
use freelunch::boosters::Boosters;
use freelunch::models::Denoiser;
use freelunch::schedulers::{
    self, Conditioning, GivenNoise, SampleOptions, SamplerKind, SchedulerConfig, SeededNoise,
};
use freelunch::{safetensors_io, Tensor, UNetInputs};
use proptest::prelude::*;

const KINDS: [SamplerKind; 10] = SamplerKind::ALL;

/// Runs the CLI, expecting a clean failure: non-zero exit, no panic, and no file at `out`.
/// Returns stderr.
fn refused(args: &[&std::ffi::OsStr], out: &Path) -> String {
    let o = Command::new(common::freelunch_bin())
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success(),
        "expected a failure for {args:?}; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(!out.exists(), "{args:?} failed but wrote {}", out.display());
    stderr
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

/// `freelunch sample` with the pixel fixture model and `extra` flags.
fn sample_refused(extra: &[&std::ffi::OsStr]) -> String {
    let out = scratch("hostile-sample").join("out.safetensors");
    let model = fixture("ddpm_basic");
    let mut args = vec![
        os("sample"),
        os("--model"),
        model.as_os_str(),
        os("--output"),
        out.as_os_str(),
    ];
    args.extend_from_slice(extra);
    refused(&args, &out)
}

fn assert_names(msg: &str, words: &[&str]) {
    for w in words {
        assert!(msg.contains(w), "`{w}` not in: {msg}");
    }
}

/// A fixture's scheduler config with `edit` applied, written to a scratch folder. The edit is
/// textual (the fixtures hold one key per line), so Python's bare NaN / Infinity, which
/// serde_json cannot read, can be read and written too.
fn edited_config(case: &str, edit: &[(&str, &str)]) -> PathBuf {
    let text =
        std::fs::read_to_string(fixture("samplers").join(case).join("scheduler_config.json"))
            .unwrap();
    let mut fields: Vec<String> = text
        .lines()
        .map(|l| l.trim().trim_end_matches(',').to_string())
        .filter(|l| l.starts_with('"'))
        .filter(|l| {
            !edit
                .iter()
                .any(|(k, _)| l.starts_with(&format!("\"{k}\":")))
        })
        .collect();
    fields.extend(edit.iter().map(|(k, v)| format!("\"{k}\": {v}")));
    let path = scratch("hostile-sched").join("scheduler_config.json");
    std::fs::write(&path, format!("{{\n  {}\n}}\n", fields.join(",\n  "))).unwrap();
    path
}

// ---------------------------------------------------------------------------------------------
// 1. Scheduler config values: validated where they enter.

/// (fixture, edits (key, raw JSON value), --steps, words the error must contain).
type ConfigCase<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a [&'a str]);

#[test]
fn scheduler_config_values_are_validated_where_they_enter() {
    let ddim = "ddim_linear_leading_offset1";
    let dpm = "dpmpp2m_eps";
    let cases: &[ConfigCase] = &[
        (
            ddim,
            &[("num_train_timesteps", "NaN")],
            "4",
            &["num_train_timesteps", "NaN"],
        ),
        (
            ddim,
            &[("num_train_timesteps", "999.5")],
            "4",
            &["num_train_timesteps", "integer"],
        ),
        (
            ddim,
            &[("num_train_timesteps", "null")],
            "4",
            &["num_train_timesteps", "null"],
        ),
        (
            ddim,
            &[("num_train_timesteps", "0")],
            "4",
            &["num_train_timesteps"],
        ),
        (
            ddim,
            &[("num_train_timesteps", "1e12")],
            "4",
            &["num_train_timesteps"],
        ),
        (
            ddim,
            &[("num_train_timesteps", "\"1000\"")],
            "4",
            &["num_train_timesteps"],
        ),
        (
            ddim,
            &[("beta_start", "0.03")],
            "4",
            &["beta_start", "beta_end"],
        ),
        (ddim, &[("beta_end", "1.0")], "4", &["beta_end", "(0, 1)"]),
        (ddim, &[("beta_start", "-0.1")], "4", &["beta_start"]),
        (
            ddim,
            &[("beta_end", "Infinity")],
            "4",
            &["beta_end", "Infinity"],
        ),
        // 1 − β rounds to 1: ᾱ_0 = 1, σ_0 = 0.
        (ddim, &[("beta_start", "1e-12")], "4", &["beta_start", "ᾱ"]),
        // ᾱ underflows to 0: 1/ᾱ is infinite.
        (
            ddim,
            &[("beta_end", "0.99"), ("num_train_timesteps", "100000")],
            "4",
            &["beta_end", "ᾱ"],
        ),
        // A negative clip range made the x̂₀ clamp panic (min > max).
        (
            ddim,
            &[("clip_sample", "true"), ("clip_sample_range", "-1")],
            "4",
            &["clip_sample_range"],
        ),
        (
            ddim,
            &[("clip_sample_range", "NaN")],
            "4",
            &["clip_sample_range", "NaN"],
        ),
        (
            ddim,
            &[("steps_offset", "2.5")],
            "4",
            &["steps_offset", "integer"],
        ),
        (ddim, &[("steps_offset", "1e300")], "4", &["steps_offset"]),
        (ddim, &[("steps_offset", "-1")], "4", &["steps_offset"]),
        // Leading spacing past the last training timestep.
        (
            ddim,
            &[("steps_offset", "999")],
            "4",
            &["steps_offset", "timestep"],
        ),
        (
            ddim,
            &[("timestep_spacing", "\"sideways\"")],
            "4",
            &["timestep_spacing", "sideways"],
        ),
        (
            ddim,
            &[("prediction_type", "\"noise\"")],
            "4",
            &["prediction_type", "noise"],
        ),
        (ddim, &[("beta_schedule", "null")], "4", &["beta_schedule"]),
        (ddim, &[("clip_sample", "\"yes\"")], "4", &["clip_sample"]),
        (
            dpm,
            &[("solver_order", "1.5")],
            "4",
            &["solver_order", "integer"],
        ),
        (
            dpm,
            &[("solver_order", "NaN")],
            "4",
            &["solver_order", "NaN"],
        ),
        (
            dpm,
            &[("lambda_min_clipped", "NaN")],
            "4",
            &["lambda_min_clipped"],
        ),
        // Steps the spacing cannot place: more than the training timesteps, and DPM-Solver's
        // linspace of steps + 1 points on 1000 timesteps.
        (ddim, &[], "1001", &["--steps", "1000"]),
        (dpm, &[], "1000", &["steps", "999"]),
    ];
    for (case, edits, steps, words) in cases {
        let path = edited_config(case, edits);
        let msg = sample_refused(&[
            os("--scheduler"),
            path.as_os_str(),
            os("--steps"),
            os(steps),
        ]);
        assert_names(&msg, words);
    }
    // A config built by hand is checked as well before a sampler uses it.
    let mut cfg =
        SchedulerConfig::from_json_str(r#"{"_class_name": "DDIMScheduler"}"#, "inline").unwrap();
    cfg.clip_sample_range = -1.0;
    for kind in KINDS {
        let msg = schedulers::build(kind, &cfg, 10, 0.0)
            .err()
            .unwrap()
            .to_string();
        assert_names(&msg, &["clip_sample_range"]);
    }
    let mut cfg = SchedulerConfig::from_json_str("{}", "inline").unwrap();
    cfg.betas[500] = f32::NAN;
    for kind in KINDS {
        let msg = schedulers::build(kind, &cfg, 10, 0.0)
            .err()
            .unwrap()
            .to_string();
        assert_names(&msg, &["timestep 500", "beta"]);
    }
}

// ---------------------------------------------------------------------------------------------
// 2a. Integer flags that would wrap, or whose tensors would not fit.

#[test]
fn integer_flags_that_would_wrap_or_not_fit_are_errors() {
    // Without --model: the built-in model, whose batch overflows, then does not fit.
    let out = scratch("hostile-int").join("out.png");
    let run = |extra: &[&str]| {
        let mut args = vec![os("sample"), os("--output"), out.as_os_str()];
        args.extend(extra.iter().map(|s| os(s)));
        refused(&args, &out)
    };
    let msg = run(&["--batch", "18446744073709551615"]);
    assert_names(&msg, &["--batch", "too large"]);
    let msg = run(&["--batch", "1000000000000"]);
    assert_names(&msg, &["--batch", "needs", "GiB", "available"]);
    assert_names(&run(&["--batch", "0"]), &["--batch"]);
    // Past u64: clap refuses it by name.
    assert_names(&run(&["--seed", "18446744073709551616"]), &["--seed"]);
    assert_names(
        &run(&["--steps", "18446744073709551615"]),
        &["--steps", "1000"],
    );
    assert_names(&run(&["--steps", "0"]), &["--steps"]);
    assert_names(
        &run(&[
            "--freeu",
            "sd15",
            "--freeu-threshold",
            "18446744073709551615",
        ]),
        &["--freeu-threshold"],
    );
    // forward: DeMe's routed timesteps are bounded as num_train_timesteps is.
    let dir = fixture("ddpm_basic");
    let out = scratch("hostile-int").join("out.safetensors");
    let input = dir.join("inputs.safetensors");
    let msg = refused(
        &[
            os("forward"),
            os("--route"),
            dir.as_os_str(),
            os("--route-timesteps"),
            os("18446744073709551615"),
            os("--input"),
            input.as_os_str(),
            os("--output"),
            out.as_os_str(),
        ],
        &out,
    );
    assert_names(&msg, &["--route-timesteps"]);
}

// ---------------------------------------------------------------------------------------------
// 2b. Float flags: NaN and inf are errors, and factors that would overflow are refused.

#[test]
fn float_flags_must_be_finite_and_in_range() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["--eta", "NaN"], &["--eta", "finite"]),
        (&["--eta", "inf"], &["--eta", "finite"]),
        (&["--eta", "2"], &["--eta"]),
        (&["--guidance", "NaN"], &["--guidance", "finite"]),
        (&["--freeu", "1.5,NaN,0.9,0.2"], &["--freeu", "finite"]),
        (&["--freeu", "1e30,1.6,0.9,0.2"], &["--freeu", "range"]),
        (&["--skip-tuning", "inf,0.8"], &["--skip-tuning", "finite"]),
        (&["--skip-tuning", "1,-1e9"], &["--skip-tuning", "range"]),
        (&["--skip-scales", "1,NaN,1"], &["--skip-scales", "finite"]),
    ];
    let sched = fixture("samplers")
        .join("ddim_linear_leading_offset1")
        .join("scheduler_config.json");
    for (flags, words) in cases {
        let mut args = vec![os("--scheduler"), sched.as_os_str(), os("--steps"), os("2")];
        // `--eta -1`-style values need `=`; every value is passed that way.
        let joined: Vec<String> = flags
            .chunks(2)
            .map(|kv| format!("{}={}", kv[0], kv[1]))
            .collect();
        args.extend(joined.iter().map(|s| os(s)));
        let msg = sample_refused(&args);
        assert_names(&msg, words);
    }
}

// ---------------------------------------------------------------------------------------------
// 2c. Flags that would be ignored without a word are errors.

#[test]
fn flags_that_would_be_ignored_are_errors() {
    let case = fixture("samplers").join("ddim_linear_leading_offset1");
    let sched = case.join("scheduler_config.json");
    let dir = scratch("hostile-ignored");
    let noise = dir.join("noise.safetensors");
    safetensors_io::save(&noise, &[("sample", &Tensor::randn([1, 3, 16, 16], 0))]).unwrap();
    let s = sched.as_os_str();
    let cases: &[(&[&std::ffi::OsStr], &[&str])] = &[
        (
            &[
                os("--scheduler"),
                s,
                os("--sampler"),
                os("euler"),
                os("--eta"),
                os("0.5"),
            ],
            &["--eta", "euler"],
        ),
        (
            &[
                os("--scheduler"),
                s,
                os("--sampler"),
                os("heun"),
                os("--eta"),
                os("0"),
            ],
            &["--eta", "heun"],
        ),
        (
            &[os("--scheduler"), s, os("--guidance"), os("7.5")],
            &["--guidance", "--cond"],
        ),
        (
            &[os("--scheduler"), s, os("--mask-step"), os("3")],
            &["--mask-step"],
        ),
        // The initial noise is given and DDIM at eta 0 draws none: --seed would do nothing.
        (
            &[
                os("--scheduler"),
                s,
                os("--noise"),
                noise.as_os_str(),
                os("--seed"),
                os("5"),
            ],
            &["--seed", "--noise"],
        ),
        (
            &[
                os("--scheduler"),
                s,
                os("--noise"),
                noise.as_os_str(),
                os("--batch"),
                os("4"),
            ],
            &["--batch", "--noise"],
        ),
    ];
    for (extra, words) in cases {
        assert_names(&sample_refused(extra), words);
    }
    // --cond must hold what the run reads; --guidance needs the unconditional states in it.
    let cond = dir.join("cond.safetensors");
    safetensors_io::save(&cond, &[("unrelated", &Tensor::randn([1, 4], 0))]).unwrap();
    let msg = sample_refused(&[os("--scheduler"), s, os("--cond"), cond.as_os_str()]);
    assert_names(&msg, &["--cond", "encoder_hidden_states"]);
    let cfg = fixture("samplers").join("cfg_ddim_sd15");
    let only_cond = dir.join("only_cond.safetensors");
    let ehs = safetensors_io::load(&cfg.join("cond.safetensors"))
        .unwrap()
        .remove("encoder_hidden_states")
        .unwrap()
        .tensor;
    safetensors_io::save(&only_cond, &[("encoder_hidden_states", &ehs)]).unwrap();
    let out = dir.join("cfg.safetensors");
    let sd = fixture("sd15_like");
    let msg = refused(
        &[
            os("sample"),
            os("--model"),
            sd.as_os_str(),
            os("--scheduler"),
            cfg.join("scheduler_config.json").as_os_str(),
            os("--noise"),
            cfg.join("noise.safetensors").as_os_str(),
            os("--cond"),
            only_cond.as_os_str(),
            os("--guidance"),
            os("7.5"),
            os("--steps"),
            os("2"),
            os("--output"),
            out.as_os_str(),
        ],
        &out,
    );
    assert_names(&msg, &["--guidance", "uncond_hidden_states"]);

    // forward: --gumbel-seed with --no-gumbel, --mask-step without masks or with masks that
    // are the same at every step, --route-timesteps without --route.
    let sd_in = sd.join("inputs.safetensors");
    let out = dir.join("fwd.safetensors");
    let forward = |extra: &[&std::ffi::OsStr]| {
        let mut args = vec![
            os("forward"),
            os("--input"),
            sd_in.as_os_str(),
            os("--output"),
            out.as_os_str(),
        ];
        args.extend_from_slice(extra);
        refused(&args, &out)
    };
    let gen = fixture("mask_generator")
        .join("sd15_hyper")
        .join("generator.safetensors");
    let shared = fixture("masks")
        .join("sd15_shared_u8")
        .join("masks.safetensors");
    let m = sd.as_os_str();
    let cases: &[(&[&std::ffi::OsStr], &[&str])] = &[
        (
            &[
                os("--model"),
                m,
                os("--mask-generator"),
                gen.as_os_str(),
                os("--no-gumbel"),
                os("--gumbel-seed"),
                os("7"),
            ],
            &["--no-gumbel", "--gumbel-seed"],
        ),
        (
            &[os("--model"), m, os("--mask-step"), os("2")],
            &["--mask-step", "--masks"],
        ),
        (
            &[
                os("--model"),
                m,
                os("--masks"),
                shared.as_os_str(),
                os("--mask-step"),
                os("2"),
            ],
            &["--mask-step", "every step"],
        ),
        (
            &[os("--model"), m, os("--route-timesteps"), os("500")],
            &["--route-timesteps", "--route"],
        ),
    ];
    for (extra, words) in cases {
        assert_names(&forward(extra), words);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. eval: an empty batch, too few samples for an FID, non-finite images.

#[test]
fn eval_refuses_empty_tiny_and_non_finite_batches() {
    let dir = scratch("hostile-eval");
    let eval = |images: &Tensor, extra: &[&str]| {
        let path = dir.join("images.safetensors");
        safetensors_io::save(&path, &[("sample", images)]).unwrap();
        let o = Command::new(common::freelunch_bin())
            .args(["eval", "--images"])
            .arg(&path)
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{stderr}");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr,
        )
    };
    let digits = |n: usize| {
        let mut t = Tensor::randn([n, 1, 28, 28], 3);
        t.data_mut()
            .iter_mut()
            .for_each(|v| *v = v.clamp(-1.0, 1.0));
        t
    };
    // One image: no FID from it, and the minimum is stated.
    let (ok, stdout, stderr) = eval(&digits(1), &[]);
    assert!(!ok && !stdout.contains("fid:"), "{stdout}");
    assert_names(&stderr, &["65", "--no-fid"]);
    let (ok, stdout, _) = eval(&digits(1), &["--no-fid"]);
    assert!(
        ok && stdout.contains("mean_confidence") && !stdout.contains("fid:"),
        "{stdout}"
    );
    // Non-finite pixels.
    let mut nan = digits(70);
    nan.data_mut()[28 * 28 * 5 + 3] = f32::NAN;
    let (ok, _, stderr) = eval(&nan, &[]);
    assert!(!ok);
    assert_names(&stderr, &["sample", "NaN", "5"]);
    let msg = freelunch::builtin::score(&nan, true)
        .unwrap_err()
        .to_string();
    assert_names(&msg, &["images", "sample 5", "NaN"]);
    // Enough finite samples: an FID is printed.
    let (ok, stdout, stderr) = eval(&digits(65), &[]);
    assert!(ok && stdout.contains("fid:"), "{stdout}{stderr}");
    // The library says the same, and refuses an empty batch.
    let empty = Tensor::new([0, 1, 28, 28], vec![]).unwrap();
    let msg = freelunch::builtin::score(&empty, false)
        .unwrap_err()
        .to_string();
    assert_names(&msg, &["empty"]);
    let msg = freelunch::builtin::score(&digits(64), true)
        .unwrap_err()
        .to_string();
    assert_names(&msg, &["65", "got 64"]);
    let features = Tensor::randn([3, 64], 0);
    let (mu, sigma) = freelunch::builtin::real_stats().unwrap();
    assert!(freelunch::eval::fid(&features, &mu, &sigma).is_err());
}

// ---------------------------------------------------------------------------------------------
// 4. A non-finite value in the loop is blamed on what made it, with the step.

/// A model whose output turns to NaN from call `bad` on (None: never), and otherwise returns
/// its input scaled.
struct Faulty {
    bad: Option<usize>,
    calls: std::sync::atomic::AtomicUsize,
}

impl Faulty {
    fn new(bad: Option<usize>) -> Self {
        Faulty {
            bad,
            calls: 0.into(),
        }
    }
}

impl Denoiser for Faulty {
    fn forward_with(&self, inputs: &UNetInputs, _: &Boosters) -> freelunch::Result<Tensor> {
        let call = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut out = inputs.sample.clone();
        let v = if self.bad.is_some_and(|b| call >= b) {
            f32::NAN
        } else {
            0.5
        };
        out.data_mut().iter_mut().for_each(|x| *x *= v);
        Ok(out)
    }
}

fn opts(guidance: Option<f32>, conditioning: Conditioning) -> SampleOptions<'static> {
    SampleOptions {
        guidance,
        conditioning,
        boosters: Boosters::default(),
        on_step: None,
    }
}

#[test]
fn a_non_finite_value_in_the_loop_names_its_step_and_source() {
    let cfg =
        SchedulerConfig::from_json_str(r#"{"_class_name": "DDIMScheduler"}"#, "inline").unwrap();
    let noise = Tensor::randn([1, 1, 4, 4], 0);
    // The model's output: blamed on the model, at its step and timestep.
    let mut s = schedulers::build(SamplerKind::Ddim, &cfg, 10, 0.0).unwrap();
    let msg = schedulers::sample(
        &Faulty::new(Some(2)),
        s.as_mut(),
        &noise,
        opts(None, Conditioning::default()),
        &mut SeededNoise(0),
    )
    .unwrap_err()
    .to_string();
    assert_names(&msg, &["step 3/10", "timestep", "model's output", "NaN"]);
    // Guidance that overflows a finite model output: blamed on the guidance scale.
    let cond = Conditioning {
        encoder_hidden_states: Some(Tensor::randn([1, 2, 3], 1)),
        uncond_hidden_states: Some(Tensor::randn([1, 2, 3], 2)),
        ..Conditioning::default()
    };
    struct Split;
    impl Denoiser for Split {
        fn forward_with(&self, inputs: &UNetInputs, _: &Boosters) -> freelunch::Result<Tensor> {
            // Unconditional half −1e30, conditional half +1e30.
            let mut out = inputs.sample.clone();
            let half = out.numel() / 2;
            for (i, v) in out.data_mut().iter_mut().enumerate() {
                *v = if i < half { -1e30 } else { 1e30 };
            }
            Ok(out)
        }
    }
    let mut s = schedulers::build(SamplerKind::Ddim, &cfg, 10, 0.0).unwrap();
    let msg = schedulers::sample(
        &Split,
        s.as_mut(),
        &noise,
        opts(Some(1e10), cond.clone()),
        &mut SeededNoise(0),
    )
    .unwrap_err()
    .to_string();
    assert_names(&msg, &["step 1/10", "guidance"]);
    // Non-finite conditioning is named before any call, and non-finite step noise by its step.
    let mut bad = cond.clone();
    bad.encoder_hidden_states.as_mut().unwrap().data_mut()[1] = f32::INFINITY;
    let mut s = schedulers::build(SamplerKind::Ddim, &cfg, 10, 0.0).unwrap();
    let msg = schedulers::sample(
        &Faulty::new(None),
        s.as_mut(),
        &noise,
        opts(Some(7.5), bad),
        &mut SeededNoise(0),
    )
    .unwrap_err()
    .to_string();
    assert_names(&msg, &["encoder_hidden_states", "inf"]);
    let mut step_noise = GivenNoise(vec![Tensor::new([1, 1, 4, 4], vec![f32::NAN; 16]).unwrap()]);
    let mut s = schedulers::build(SamplerKind::Ddpm, &cfg, 10, 0.0).unwrap();
    let msg = schedulers::sample(
        &Faulty::new(None),
        s.as_mut(),
        &noise,
        opts(None, Conditioning::default()),
        &mut step_noise,
    )
    .unwrap_err()
    .to_string();
    assert_names(&msg, &["noise", "step 0", "NaN"]);
    // A schedule the spacing cannot place is named before any call: DPM-Solver's linspace of
    // 1000 steps on 1000 timesteps repeats them.
    let dpm = SchedulerConfig::from_json_str(
        r#"{"_class_name": "DPMSolverMultistepScheduler", "timestep_spacing": "linspace"}"#,
        "inline",
    )
    .unwrap();
    let msg = schedulers::build(SamplerKind::DpmSolverMultistep, &dpm, 1000, 0.0)
        .err()
        .unwrap()
        .to_string();
    assert_names(&msg, &["steps", "999"]);
    // The CLI, end to end: a huge guidance scale makes the latents overflow inside the model
    // at a later call; the error names the sampling step and timestep (and the model the layer).
    let case = fixture("samplers").join("cfg_ddim_sd15");
    let out = scratch("hostile-loop").join("out.safetensors");
    let sd = fixture("sd15_like");
    let msg = refused(
        &[
            os("sample"),
            os("--model"),
            sd.as_os_str(),
            os("--scheduler"),
            case.join("scheduler_config.json").as_os_str(),
            os("--noise"),
            case.join("noise.safetensors").as_os_str(),
            os("--cond"),
            case.join("cond.safetensors").as_os_str(),
            os("--guidance"),
            os("3e38"),
            os("--steps"),
            os("2"),
            os("--output"),
            out.as_os_str(),
        ],
        &out,
    );
    assert_names(&msg, &["sampling step", "/2 (timestep"]);
}

// ---------------------------------------------------------------------------------------------
// 5. No JSON makes the config reader, or any sampler built from what it accepts, panic; and a
//    loop over an accepted schedule never returns a non-finite sample.

/// The keys the reader looks at, and a few it does not.
const KEYS: &[&str] = &[
    "_class_name",
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
    "clip_sample",
    "clip_sample_range",
    "set_alpha_to_one",
    "use_karras_sigmas",
    "solver_order",
    "thresholding",
    "variance_type",
    "lambda_min_clipped",
    "sigma_min",
    "trained_betas",
    "final_sigmas_type",
    "algorithm_type",
    "skip_prk_steps",
    "rescale_betas_zero_snr",
    "solver_type",
    "predict_x0",
    "lower_order_final",
    "disable_corrector",
    "solver_p",
    "unrelated_key",
];

/// A JSON value as text: numbers of every size and sign, Python's non-finite tokens, enum
/// strings and others, booleans, null, arrays and objects.
fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("NaN".to_string()),
        Just("Infinity".to_string()),
        Just("-Infinity".to_string()),
        Just("null".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        (-3i64..3000).prop_map(|v| v.to_string()),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<u64>().prop_map(|v| v.to_string()),
        (0.0f64..1.0).prop_map(|v| format!("{v:e}")),
        (-1e300f64..1e300).prop_map(|v| format!("{v:e}")),
        (0u32..40).prop_map(|e| format!("1e-{e}")),
        (0u32..400).prop_map(|e| format!("1e{e}")),
        prop::sample::select(vec![
            "\"DDIMScheduler\"",
            "\"DDPMScheduler\"",
            "\"EulerDiscreteScheduler\"",
            "\"HeunDiscreteScheduler\"",
            "\"DPMSolverMultistepScheduler\"",
            "\"PNDMScheduler\"",
            "\"EulerAncestralDiscreteScheduler\"",
            "\"LMSDiscreteScheduler\"",
            "\"UniPCMultistepScheduler\"",
            "\"linear\"",
            "\"scaled_linear\"",
            "\"squaredcos_cap_v2\"",
            "\"epsilon\"",
            "\"v_prediction\"",
            "\"sample\"",
            "\"leading\"",
            "\"trailing\"",
            "\"linspace\"",
            "\"fixed_small\"",
            "\"dpmsolver++\"",
            "\"sde-dpmsolver++\"",
            "\"bh1\"",
            "\"bh2\"",
            "\"zero\"",
            "\"\"",
            "\"NaN\"",
        ])
        .prop_map(str::to_string),
        "[a-z_]{0,8}".prop_map(|s| format!("\"{s}\"")),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(inner, 0..2).prop_map(|v| {
                let fields: Vec<String> = v
                    .iter()
                    .enumerate()
                    .map(|(i, x)| format!("\"k{i}\": {x}"))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

/// Values a real config could hold (so that many random configs are accepted and reach the
/// samplers): small betas, timestep counts and offsets, the enum strings, booleans.
fn plausible() -> impl Strategy<Value = String> {
    prop_oneof![
        (1e-6f64..0.05).prop_map(|v| format!("{v}")),
        (0.01f64..0.3).prop_map(|v| format!("{v}")),
        (0u32..1100).prop_map(|v| v.to_string()),
        (0u32..4).prop_map(|v| v.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        prop::sample::select(vec![
            "\"linear\"",
            "\"scaled_linear\"",
            "\"squaredcos_cap_v2\"",
            "\"epsilon\"",
            "\"v_prediction\"",
            "\"sample\"",
            "\"leading\"",
            "\"trailing\"",
            "\"linspace\"",
            "-Infinity",
            "null",
        ])
        .prop_map(str::to_string),
    ]
}

/// A config object over `KEYS` with random values (a sane base most of the time, so that
/// accepted configs reach the samplers).
fn config_text() -> impl Strategy<Value = String> {
    let class = prop::sample::select(vec![
        "DDIMScheduler",
        "DDPMScheduler",
        "EulerDiscreteScheduler",
        "HeunDiscreteScheduler",
        "DPMSolverMultistepScheduler",
        "PNDMScheduler",
        "EulerAncestralDiscreteScheduler",
        "LMSDiscreteScheduler",
        "UniPCMultistepScheduler",
    ]);
    let small_n = prop_oneof![Just(1000usize), 2usize..50, 50usize..3000];
    (
        class,
        small_n,
        prop::collection::vec(
            (
                prop::sample::select(KEYS.to_vec()),
                prop_oneof![3 => plausible(), 2 => value()],
            ),
            0..5,
        ),
    )
        .prop_map(|(class, n, fields)| {
            let mut parts = vec![
                format!("\"_class_name\": \"{class}\""),
                format!("\"num_train_timesteps\": {n}"),
            ];
            parts.extend(fields.iter().map(|(k, v)| format!("\"{k}\": {v}")));
            // Later duplicates win in serde_json, so the random fields override the base.
            format!("{{{}}}", parts.join(", "))
        })
}

/// A stand-in model that returns its input halved.
struct Half;

impl Denoiser for Half {
    fn forward_with(&self, inputs: &UNetInputs, _: &Boosters) -> freelunch::Result<Tensor> {
        let mut out = inputs.sample.clone();
        out.data_mut().iter_mut().for_each(|v| *v *= 0.5);
        Ok(out)
    }
}

proptest! {
    // PROPTEST_CASES runs longer passes.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(384),
        ..ProptestConfig::default()
    })]

    #[test]
    fn scheduler_configs_never_panic(
        text in config_text(),
        steps in prop_oneof![Just(1usize), Just(2), 3usize..60, Just(999), Just(1000), Just(1001)],
        eta in prop_oneof![Just(0.0f32), Just(1.0), 0.0f32..1.0, Just(f32::NAN), Just(-1.0), Just(2.0)],
    ) {
        let Ok(config) = SchedulerConfig::from_json_str(&text, "proptest") else {
            return Ok(());
        };
        for kind in KINDS {
            let eta = if kind == SamplerKind::Ddim { eta } else { 0.0 };
            let Ok(mut s) = schedulers::build(kind, &config, steps, eta) else {
                continue;
            };
            prop_assert!(s.timesteps().iter().all(|t| t.is_finite()));
            // Short schedules run end to end: an accepted schedule never yields NaN silently.
            if s.timesteps().len() <= 120 {
                let noise = Tensor::randn([1, 1, 2, 2], 1);
                match schedulers::sample(
                    &Half,
                    s.as_mut(),
                    &noise,
                    opts(None, Conditioning::default()),
                    &mut SeededNoise(2),
                ) {
                    Ok(x) => prop_assert!(x.data().iter().all(|v| v.is_finite())),
                    Err(e) => prop_assert!(!e.to_string().is_empty()),
                }
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,64}") {
        let _ = SchedulerConfig::from_json_str(&text, "proptest");
    }
}
