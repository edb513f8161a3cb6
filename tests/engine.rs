//! What an engine embedding the crate relies on: a step callback that sees each step and can stop
//! or cancel the run, and errors it can match by kind.

mod common;

use common::fixture;
use freelunch::boosters::{Boosters, MaskSet};
use freelunch::device::{DType, Device};
use freelunch::schedulers::{
    self, SampleOptions, SamplerKind, SchedulerConfig, SeededNoise, StepControl, StepState,
};
use freelunch::{Error, Tensor, UNet};

fn ddim(steps: usize) -> Box<dyn freelunch::schedulers::Sampler> {
    let cfg = SchedulerConfig::from_path(&fixture(
        "samplers/ddim_linear_leading_offset1/scheduler_config.json",
    ))
    .unwrap();
    schedulers::build(SamplerKind::Ddim, &cfg, steps, 0.0).unwrap()
}

fn run(
    unet: &UNet,
    steps: usize,
    on_step: &mut (dyn FnMut(&StepState) -> StepControl + Send),
) -> freelunch::Result<Tensor> {
    let noise = Tensor::randn([1, 3, 16, 16], 5);
    let opts = SampleOptions {
        guidance: None,
        conditioning: Default::default(),
        boosters: Boosters::default(),
        on_step: Some(on_step),
    };
    schedulers::sample(
        unet,
        ddim(steps).as_mut(),
        &noise,
        opts,
        &mut SeededNoise(0),
    )
}

/// The callback sees every step in order with its timestep and the latents after it; `Stop`
/// returns those latents, `Cancel` a typed error, and a run left to finish returns the last
/// latents the callback saw.
#[test]
fn the_step_callback_sees_each_step_and_can_stop_or_cancel() {
    let unet = UNet::from_dir(&fixture("ddpm_basic")).unwrap();
    let timesteps = ddim(6).timesteps().to_vec();
    let mut seen: Vec<(usize, usize, f32, Tensor)> = Vec::new();
    let full = run(&unet, 6, &mut |s: &StepState| {
        seen.push((s.step, s.total, s.timestep, s.latents.clone()));
        StepControl::Continue
    })
    .unwrap();
    assert_eq!(seen.len(), 6);
    for (i, (step, total, t, _)) in seen.iter().enumerate() {
        assert_eq!((*step, *total, *t), (i, 6, timesteps[i]));
    }
    assert_eq!(seen[5].3, full);
    assert_ne!(seen[2].3, full);

    let stopped = run(&unet, 6, &mut |s: &StepState| {
        if s.step == 2 {
            StepControl::Stop
        } else {
            StepControl::Continue
        }
    })
    .unwrap();
    assert_eq!(
        stopped, seen[2].3,
        "Stop returns the latents after that step"
    );

    let mut calls = 0;
    let e = run(&unet, 6, &mut |_s: &StepState| {
        calls += 1;
        StepControl::Cancel
    })
    .unwrap_err();
    assert!(matches!(e, Error::Cancelled { step: 1, total: 6 }), "{e:?}");
    assert_eq!(calls, 1);
}

/// Errors an engine handles differently come as their own kinds.
#[test]
fn errors_come_by_kind() {
    // A device that cannot be opened: no driver here, or the executor standing in for one.
    match Device::Cuda(0).open(DType::F32) {
        Err(Error::DeviceUnavailable { device, .. }) => assert_eq!(device, "cuda:0"),
        Err(e) => panic!("opening cuda:0: {e:?}"),
        Ok(_) => println!("a GPU opened: nothing to check"),
    }
    assert!(matches!(
        "tpu".parse::<Device>(),
        Err(Error::DeviceUnavailable { .. })
    ));
    assert!(matches!(
        Device::Cpu.open(DType::F16),
        Err(Error::DeviceUnavailable { .. })
    ));
    // A mask under a weight name the model does not have.
    let unet = UNet::from_dir(&fixture("ddpm_basic")).unwrap();
    let dir = common::scratch("engine-mask");
    let path = dir.join("m.safetensors");
    common::write_raw_safetensors(&path, &[("no.such.weight", "U8", vec![2, 2], vec![1; 4])]);
    match MaskSet::load(&path, unet.layers()) {
        Err(Error::Mask { name, msg }) => {
            assert_eq!(name, "no.such.weight");
            assert!(
                msg.contains("names no linear or convolution weight"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Input errors name the input.
    let bad = freelunch::UNetInputs::new(Tensor::randn([1, 5, 16, 16], 0), 10.0);
    match unet.forward(&bad) {
        Err(Error::Input { name, .. }) => assert_eq!(name, "sample"),
        other => panic!("{other:?}"),
    }
    // A model that is not there (nothing is downloaded).
    match UNet::from_dir("no/such/model".as_ref()) {
        Err(Error::NotFound { what, .. }) => assert!(what.contains("no/such/model"), "{what}"),
        other => panic!("{:?}", other.err()),
    }
    // A sampler nobody implemented, and a schedule a sampler cannot take.
    assert!(matches!(
        SamplerKind::from_short_name("dpm-3m"),
        Err(Error::Unsupported { .. })
    ));
    let cfg = SchedulerConfig::from_json_str(r#"{"_class_name": "DDIMScheduler"}"#, "t").unwrap();
    match schedulers::build(SamplerKind::Ddim, &cfg, 5000, 0.0) {
        Err(Error::Sampler { sampler, .. }) => assert_eq!(sampler, "timesteps"),
        other => panic!("{:?}", other.err()),
    }
    // Booster settings out of range, and operands that do not agree.
    let freeu = freelunch::boosters::FreeU::preset("sd15").unwrap();
    let boosters = Boosters {
        freeu: Some(freelunch::boosters::FreeU {
            b1: f32::NAN,
            ..freeu
        }),
        ..Boosters::default()
    };
    let x = freelunch::UNetInputs::new(Tensor::randn([1, 3, 16, 16], 0), 10.0);
    match unet.forward_with(&x, &boosters) {
        Err(Error::Booster { booster, msg }) => {
            assert_eq!(booster, "boosters");
            assert!(msg.contains("b1"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Tensor::new(vec![2, 3], vec![0.0; 5]),
        Err(Error::Shape { .. })
    ));
}

/// A model's error inside a run keeps its kind under the step it happened at.
#[test]
fn a_model_error_in_a_run_keeps_its_kind() {
    use freelunch::models::Denoiser;
    use freelunch::UNetInputs;
    struct OutOfMemoryAtThirdCall(std::sync::atomic::AtomicUsize);
    impl Denoiser for OutOfMemoryAtThirdCall {
        fn forward_with(&self, x: &UNetInputs, _: &Boosters) -> freelunch::Result<Tensor> {
            if self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 2 {
                return Err(Error::OutOfMemory {
                    what: "a test".into(),
                    needed: 2 << 30,
                    available: 1 << 30,
                });
            }
            Ok(x.sample.clone())
        }
    }
    let noise = Tensor::randn([1, 3, 16, 16], 5);
    let opts = SampleOptions {
        guidance: None,
        conditioning: Default::default(),
        boosters: Boosters::default(),
        on_step: None,
    };
    let model = OutOfMemoryAtThirdCall(0.into());
    let e = schedulers::sample(&model, ddim(6).as_mut(), &noise, opts, &mut SeededNoise(0))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::AtStep {
                step: 3,
                total: 6,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(matches!(e.root(), Error::OutOfMemory { .. }), "{e:?}");
    assert!(e.to_string().starts_with("sampling step 3/6"), "{e}");
}

/// Under guidance a per-sample mask is given per sample (B entries) and serves both halves of
/// the guided batch: the run equals one given the doubled masks explicitly, uncond first.
#[test]
fn per_sample_masks_serve_both_halves_of_a_guided_batch() {
    use freelunch::boosters::masks::WeightMask;
    use std::sync::Arc;
    let unet = UNet::from_dir(&fixture("sd15_like")).unwrap();
    let case = fixture("samplers/cfg_ddim_sd15");
    let cond = freelunch::safetensors_io::load(&case.join("cond.safetensors")).unwrap();
    let cfg = SchedulerConfig::from_path(&case.join("scheduler_config.json")).unwrap();
    let noise = Tensor::randn([2, 4, 16, 16], 1);
    let conditioning = freelunch::schedulers::Conditioning {
        encoder_hidden_states: Some(cond["encoder_hidden_states"].tensor.clone()),
        uncond_hidden_states: Some(cond["uncond_hidden_states"].tensor.clone()),
        ..Default::default()
    };
    let masked: Vec<(&String, &Vec<usize>)> = unet.layers().iter().take(6).collect();
    let masks = |batch: usize, twice: bool| {
        let mut set = MaskSet::new();
        for (k, (name, shape)) in masked.iter().enumerate() {
            let n: usize = shape.iter().product();
            let one = common::random_mask_bytes(n * batch, 0.6, k as u64);
            let bytes = if twice {
                [one.clone(), one].concat()
            } else {
                one
            };
            let b = if twice { 2 * batch } else { batch };
            let m = WeightMask::from_bytes(shape.to_vec(), None, Some(b), &bytes).unwrap();
            set.insert(name.to_string(), m).unwrap();
        }
        Arc::new(set)
    };
    let run = |masks: Option<Arc<MaskSet>>| {
        let opts = SampleOptions {
            guidance: Some(7.5),
            conditioning: conditioning.clone(),
            boosters: Boosters {
                masks,
                ..Boosters::default()
            },
            on_step: None,
        };
        let mut s = schedulers::build(SamplerKind::Ddim, &cfg, 2, 0.0).unwrap();
        schedulers::sample(&unet, s.as_mut(), &noise, opts, &mut SeededNoise(0)).unwrap()
    };
    let per_sample = run(Some(masks(2, false)));
    let explicit = run(Some(masks(2, true)));
    assert_eq!(per_sample, explicit);
    assert_ne!(per_sample, run(None));
}

/// Per-step masks follow the sampler's steps, not its model calls: Heun's and PNDM's steps take
/// several calls, and every call of a step sees that step (so N-step masks serve N steps).
#[test]
fn mask_steps_follow_sampler_steps() {
    use freelunch::models::Denoiser;
    use freelunch::UNetInputs;
    use std::sync::Mutex;
    struct Recorder(Mutex<Vec<usize>>);
    impl Denoiser for Recorder {
        fn forward_with(&self, x: &UNetInputs, b: &Boosters) -> freelunch::Result<Tensor> {
            self.0.lock().unwrap().push(b.mask_step);
            let mut out = x.sample.clone();
            out.data_mut().iter_mut().for_each(|v| *v *= 0.1);
            Ok(out)
        }
    }
    let steps_of = |class: &str, extra: &str, steps: usize| {
        let json = format!(
            r#"{{"_class_name": "{class}", "beta_schedule": "scaled_linear",
                "beta_start": 0.00085, "beta_end": 0.012{extra}}}"#
        );
        let cfg = SchedulerConfig::from_json_str(&json, "test").unwrap();
        let mut s = schedulers::build(cfg.class.unwrap(), &cfg, steps, 0.0).unwrap();
        let calls = s.timesteps().len();
        let model = Recorder(Mutex::new(Vec::new()));
        let opts = SampleOptions {
            guidance: None,
            conditioning: Default::default(),
            boosters: Boosters::default(),
            on_step: None,
        };
        let noise = Tensor::randn([1, 3, 8, 8], 1);
        schedulers::sample(&model, s.as_mut(), &noise, opts, &mut SeededNoise(0)).unwrap();
        let seen = model.0.into_inner().unwrap();
        assert_eq!(seen.len(), calls);
        seen
    };
    assert_eq!(
        steps_of("HeunDiscreteScheduler", "", 4),
        [0, 0, 1, 1, 2, 2, 3]
    );
    assert_eq!(
        steps_of("PNDMScheduler", r#", "skip_prk_steps": true"#, 4),
        [0, 0, 1, 2, 3]
    );
    let prk = steps_of("PNDMScheduler", r#", "skip_prk_steps": false"#, 5);
    assert_eq!(prk, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 4]);
    assert_eq!(steps_of("EulerDiscreteScheduler", "", 3), [0, 1, 2]);
}

/// Calls `model` through the one run trait, whatever holds it.
fn call(model: impl freelunch::models::Denoiser, inputs: &freelunch::UNetInputs) -> Tensor {
    model.forward_with(inputs, &Boosters::default()).unwrap()
}

/// One loaded model serves every holder (`&M`, `Arc<M>`, `Box<M>`), and handles placed with
/// threads of their own share its weights and compute what it computes.
#[test]
fn one_model_runs_through_one_trait_whoever_holds_it() {
    use std::sync::Arc;
    let unet = Arc::new(UNet::from_dir(&fixture("ddpm_basic")).unwrap());
    let inputs = freelunch::UNetInputs::new(Tensor::randn([2, 3, 16, 16], 3), 400.0);
    let by_ref = call(&*unet, &inputs);
    assert_eq!(call(Arc::clone(&unet), &inputs), by_ref);
    assert_eq!(
        call(Box::new(unet.on(freelunch::device::Exec::cpu())), &inputs),
        by_ref
    );
    for threads in [1, 3] {
        let own = unet
            .to(Device::Cpu, DType::F32)
            .unwrap()
            .with_threads(threads)
            .unwrap();
        assert_eq!(own.placement().threads(), threads);
        own.warm_up().unwrap();
        let out = call(&own, &inputs);
        assert!(
            out.rel_l2(&by_ref) < 1e-6,
            "{threads} threads: {}",
            out.rel_l2(&by_ref)
        );
    }
    // Placement is per handle: the CPU cannot hold f16, and saying so is an error, not a panic.
    assert!(matches!(
        unet.to(Device::Cpu, DType::F16),
        Err(Error::DeviceUnavailable { .. })
    ));
}

/// On a GPU (the PTX executor in CI) a placed model's weights go up at `warm_up`, its calls
/// match the CPU, `unload` frees them (and the next call uploads them again), and dropping the
/// last handle frees them too.
#[test]
fn a_placed_model_uploads_at_warm_up_and_frees_its_weights_when_unloaded_or_dropped() {
    let Some(device) = common::gpu::device("a_placed_model") else {
        return;
    };
    let exec = device.open(DType::F32).unwrap();
    let freelunch::device::Exec::Cuda(gpu) = &exec else {
        panic!("{device:?} opened as the CPU");
    };
    let unet = UNet::from_dir(&fixture("ddpm_basic")).unwrap();
    let inputs = freelunch::UNetInputs::new(Tensor::randn([1, 3, 16, 16], 4), 700.0);
    let on_cpu = call(&unet, &inputs);
    assert_eq!(gpu.resident_layers(), 0);
    let placed = unet.on(exec.clone());
    placed.warm_up().unwrap();
    let uploaded = gpu.resident_layers();
    assert!(
        uploaded > 10,
        "{uploaded} layers on the device after warm_up"
    );
    let out = call(&placed, &inputs);
    assert_eq!(
        gpu.resident_layers(),
        uploaded,
        "a call after warm_up uploads nothing"
    );
    assert!(out.rel_l2(&on_cpu) < 1e-4, "{}", out.rel_l2(&on_cpu));
    placed.unload();
    assert_eq!(gpu.resident_layers(), 0);
    assert_eq!(call(&placed, &inputs), out);
    assert_eq!(gpu.resident_layers(), uploaded);
    // A second model on the same device keeps its own copies; dropping the first model (every
    // handle of it) frees only the first's.
    let other = UNet::from_dir(&fixture("ddpm_basic"))
        .unwrap()
        .on(exec.clone());
    other.warm_up().unwrap();
    assert_eq!(gpu.resident_layers(), 2 * uploaded);
    drop(placed);
    assert_eq!(
        gpu.resident_layers(),
        2 * uploaded,
        "`unet` still holds the weights"
    );
    drop(unet);
    assert_eq!(gpu.resident_layers(), uploaded);
    assert_eq!(call(&other, &inputs), out);
}

/// A random-weight checkpoint of `config` (a diffusers config.json) written to `dir`.
fn write_random_checkpoint(dir: &std::path::Path, config: &str) {
    struct Random(Vec<(String, Tensor)>, u64);
    impl freelunch::weights::WeightSource for Random {
        fn take(&mut self, name: &str, shape: &[usize]) -> freelunch::Result<Tensor> {
            self.1 += 1;
            let r = Tensor::randn(shape.to_vec(), self.1);
            let t = Tensor::new(shape.to_vec(), r.data().iter().map(|v| v * 0.05).collect())?;
            self.0.push((name.to_string(), t.clone()));
            Ok(t)
        }
        fn has(&self, _: &str) -> bool {
            false
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    let cfg = freelunch::UNetConfig::from_json_str(config, "test").unwrap();
    let mut random = Random(Vec::new(), 0);
    UNet::load(cfg, &mut random).unwrap();
    let named: Vec<(&str, &Tensor)> = random.0.iter().map(|(n, t)| (n.as_str(), t)).collect();
    freelunch::safetensors_io::save(&dir.join("diffusion_pytorch_model.safetensors"), &named)
        .unwrap();
}

/// Resident kB of this process's maps of `file`, from /proc/self/smaps (exact per mapping,
/// whatever other threads allocate).
fn resident_kb_of(file: &std::path::Path) -> u64 {
    let file = file.canonicalize().unwrap();
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut total = 0;
    let mut in_file = false;
    for line in smaps.lines() {
        let mut cols = line.split_whitespace();
        match cols.next() {
            Some(range) if range.contains('-') && !range.ends_with(':') => {
                in_file = cols.nth(4).is_some_and(|p| std::path::Path::new(p) == file);
            }
            Some("Rss:") if in_file => total += cols.next().unwrap().parse::<u64>().unwrap(),
            _ => {}
        }
    }
    total
}

/// Weights read in place from a mapped checkpoint become resident as a call reads them, and
/// `release_host_memory` hands those pages back (the next call reads them again, unchanged).
#[test]
#[cfg(target_os = "linux")]
fn release_host_memory_gives_back_the_mapped_weight_pages() {
    let dir = common::scratch("release_host_memory");
    let config = std::fs::read_to_string(fixture("ddpm_basic/config.json"))
        .unwrap()
        .replace("16,\n    32,\n    32", "64,\n    128,\n    128");
    write_random_checkpoint(&dir, &config);
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    let file_kb = std::fs::metadata(&weights).unwrap().len() / 1024;
    let unet = UNet::from_dir(&dir).unwrap();
    let inputs = freelunch::UNetInputs::new(Tensor::randn([1, 3, 16, 16], 6), 10.0);
    let before = call(&unet, &inputs);
    let used = resident_kb_of(&weights);
    assert!(
        used > file_kb * 9 / 10,
        "{used} kB of {file_kb} kB resident after a call"
    );
    unet.release_host_memory();
    let left = resident_kb_of(&weights);
    assert!(
        left < file_kb / 20,
        "{left} kB of {file_kb} kB still resident"
    );
    assert_eq!(call(&unet, &inputs), before);
}

/// A model that knows the data: for the clean sample `x0` it returns the exact noise of its
/// input (`(x − √ᾱ_t·x0)/√(1 − ᾱ_t)`; the σ-samplers' scaled input is in that same form), so
/// every sampler's prediction of the denoised sample must be `x0` itself at every step.
struct KnowsTheData {
    x0: Tensor,
    alphas_cumprod: Vec<f64>,
}

impl freelunch::models::Denoiser for KnowsTheData {
    fn forward_with(
        &self,
        inputs: &freelunch::UNetInputs,
        _: &Boosters,
    ) -> freelunch::Result<Tensor> {
        let t = inputs.timesteps[0];
        assert_eq!(t.fract(), 0.0, "timestep {t} between training timesteps");
        let a = self.alphas_cumprod[t as usize];
        let data = (inputs.sample.data().iter().zip(self.x0.data()))
            .map(|(&x, &x0)| ((x as f64 - a.sqrt() * x0 as f64) / (1.0 - a).sqrt()) as f32)
            .collect();
        Tensor::new(inputs.sample.shape().to_vec(), data)
    }
}

/// The step callback's `pred_x0` is the sampler's prediction of the denoised sample: given a
/// model that knows the data, it equals the data at every step of every sampler that has one.
#[test]
fn the_step_callback_sees_each_samplers_prediction_of_the_data() {
    let path = fixture("samplers/ddim_linear_leading_offset1/scheduler_config.json");
    let cfg = SchedulerConfig::from_path(&path).unwrap();
    let mut alpha = 1.0f64;
    let alphas_cumprod = (0..1000)
        .map(|i| {
            alpha *= 1.0 - (0.0001 + (0.02 - 0.0001) * i as f64 / 999.0);
            alpha
        })
        .collect();
    let model = KnowsTheData {
        x0: Tensor::randn([2, 3, 8, 8], 11),
        alphas_cumprod,
    };
    use SamplerKind::*;
    for kind in [
        Ddpm,
        Ddim,
        Euler,
        EulerAncestral,
        Lms,
        Heun,
        DpmSolverMultistep,
        UniPc,
        Pndm,
    ] {
        let mut sampler = schedulers::build(kind, &cfg, 6, 0.0).unwrap();
        let mut seen = Vec::new();
        let mut on_step = |s: &StepState| {
            seen.push(s.pred_x0.map(|x0| x0.rel_l2(&model.x0)));
            StepControl::Continue
        };
        let opts = SampleOptions {
            guidance: None,
            conditioning: Default::default(),
            boosters: Boosters::default(),
            on_step: Some(&mut on_step),
        };
        let noise = Tensor::randn([2, 3, 8, 8], 12);
        schedulers::sample(&model, sampler.as_mut(), &noise, opts, &mut SeededNoise(1)).unwrap();
        assert!(!seen.is_empty());
        if kind == Pndm {
            assert!(seen.iter().all(Option::is_none), "PNDM has no x̂₀: {seen:?}");
            continue;
        }
        for (i, err) in seen.iter().enumerate() {
            let err = err.unwrap_or_else(|| panic!("{kind:?} step {i}: no pred_x0"));
            assert!(
                err < 1e-4,
                "{kind:?} step {i}: pred_x0 {err:.2e} from the data"
            );
        }
    }
}

/// A workspace makes repeated calls of one shape reuse the buffers the first call freed, with
/// outputs bit-identical to calls without one, on its own threads and from many threads at
/// once; `forward_into` fills the caller's buffer, and a buffer of the wrong length is an error
/// before any work.
#[test]
fn a_workspace_reuses_buffers_across_calls_and_changes_no_output() {
    use freelunch::workspace::Workspace;
    // Cross-attention, GEGLU, concatenations and resamplers: every kind of buffer.
    let unet = UNet::from_dir(&fixture("sd15_like")).unwrap();
    let inputs = {
        let c = unet.config.in_channels;
        let mut i = freelunch::UNetInputs::new(Tensor::randn([2, c, 16, 16], 4), 321.0);
        if unet.config.is_conditional() {
            let d = unet.config.levels[0].cross_attention_dim;
            i.encoder_hidden_states = Some(Tensor::randn([2, 7, d], 5));
        }
        i
    };
    let plain = unet.forward(&inputs).unwrap();
    let ws = Workspace::new();
    let pooled = unet
        .clone()
        .with_workspace(ws.clone())
        .with_threads(2)
        .unwrap();
    let mut out = vec![f32::NAN; plain.numel()];
    pooled
        .forward_into(&inputs, &Boosters::default(), &mut out)
        .unwrap();
    assert_eq!(out, plain.data());
    let first = ws.stats();
    assert!(first.held_bytes > 0, "{first:?}");
    out.fill(f32::NAN);
    pooled
        .forward_into(&inputs, &Boosters::default(), &mut out)
        .unwrap();
    assert_eq!(out, plain.data());
    let second = ws.stats();
    // Every buffer the second call asked for of a pooled size was one the first had freed.
    assert_eq!(second.missed, first.missed, "{first:?} then {second:?}");
    assert!(second.reused > first.reused, "{first:?} then {second:?}");
    // Threads sharing one workspace each get their own buffers: the same answers.
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| pooled.forward(&inputs).unwrap()))
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), plain);
        }
    });
    let mut short = vec![0.0; plain.numel() - 1];
    let err = pooled
        .forward_into(&inputs, &Boosters::default(), &mut short)
        .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    ws.clear();
    assert_eq!(ws.stats().held_bytes, 0);
}
