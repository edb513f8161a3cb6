//! Hostile configs, sizes and allocations: every `config.json` value is checked against what the
//! maths needs where it enters; encoder and decoder sizes that cannot be joined are an error
//! naming the block and both shapes; a forward that would not fit in memory, and a size that
//! overflows, are refused with a message, never a panic or an abort. Each class is driven through
//! the library and through the `freelunch` binary.

mod common;

use std::path::Path;
use std::process::Command;

use common::{copy_fixture, fixture, scratch};
use freelunch::backend::{Backend, Cpu};
use freelunch::{safetensors_io, Tensor, UNet, UNetConfig, UNetInputs};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn read_config(dir: &Path) -> Map<String, Value> {
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_object()
        .unwrap()
        .clone()
}

/// A copy of fixture `name` whose config.json has `edits` applied (null removes a field).
fn edited_fixture(name: &str, edits: &[(&str, Value)]) -> std::path::PathBuf {
    let dir = copy_fixture(name);
    let mut cfg = read_config(&dir);
    for (k, v) in edits {
        if v.is_null() {
            cfg.remove(*k);
        } else {
            cfg.insert(k.to_string(), v.clone());
        }
    }
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&Value::Object(cfg)).unwrap(),
    )
    .unwrap();
    dir
}

/// Runs the binary; asserts it failed without a panic or an abort, wrote no output, and returns
/// its stderr.
fn cli_failure(args: &[&std::ffi::OsStr], env: &[(&str, String)]) -> String {
    let out = scratch("hostile-config-out").join("out.safetensors");
    let mut cmd = Command::new(common::freelunch_bin());
    cmd.args(args).arg("--output").arg(&out);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "expected failure: {stderr}");
    assert_eq!(o.status.code(), Some(1), "killed or aborted: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(!out.exists(), "output written on failure");
    stderr
}

fn cli_forward_failure(model: &Path, input: &Path, env: &[(&str, String)]) -> String {
    cli_failure(
        &[
            "forward".as_ref(),
            "--threads".as_ref(),
            "1".as_ref(),
            "--model".as_ref(),
            model.as_os_str(),
            "--input".as_ref(),
            input.as_os_str(),
        ],
        env,
    )
}

fn load_err(dir: &Path) -> String {
    match UNet::from_dir(dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// Class 1: each value the maths cannot take is refused at load, naming the field, by the
/// library and by the binary.
#[test]
fn config_values_are_validated_where_they_enter() {
    let ddpm = |k: &str, v: Value| ("ddpm_basic", vec![(k.to_string(), v)]);
    let sd = |k: &str, v: Value| ("sd15_like", vec![(k.to_string(), v)]);
    type Case<'a> = ((&'a str, Vec<(String, Value)>), &'a str);
    let cases: Vec<Case> = vec![
        // Ranges and finiteness.
        (ddpm("norm_eps", json!(-1e-6)), "norm_eps"),
        (ddpm("norm_eps", json!(0)), "norm_eps"),
        (ddpm("norm_eps", json!(1e39)), "norm_eps"),
        (
            ddpm("mid_block_scale_factor", json!(0)),
            "mid_block_scale_factor",
        ),
        (
            ddpm("mid_block_scale_factor", json!(1e-45)),
            "mid_block_scale_factor",
        ),
        // half of block_out_channels[0] = 16 is 8: 8 − 8 = 0 divides 0 by 0.
        (ddpm("freq_shift", json!(8)), "freq_shift"),
        (ddpm("freq_shift", json!(9.5)), "freq_shift"),
        (ddpm("freq_shift", json!("NaN")), "freq_shift"),
        // Integer-ness: never rounded, never defaulted.
        (ddpm("layers_per_block", json!(2.5)), "layers_per_block"),
        (ddpm("layers_per_block", json!(2.0)), "layers_per_block"),
        (ddpm("layers_per_block", json!("NaN")), "layers_per_block"),
        (ddpm("in_channels", json!(-3)), "in_channels"),
        (ddpm("downsample_padding", json!(1.5)), "downsample_padding"),
        (ddpm("norm_num_groups", json!(1e300)), "norm_num_groups"),
        (
            ddpm("block_out_channels", json!([16, 32.5, 32])),
            "block_out_channels",
        ),
        (ddpm("sample_size", json!([16, "16"])), "sample_size"),
        (ddpm("flip_sin_to_cos", json!("true")), "flip_sin_to_cos"),
        // Consistency: heads, groups, widths.
        (ddpm("attention_head_dim", json!(5)), "attention_head_dim"),
        (ddpm("attention_head_dim", json!(64)), "attention_head_dim"),
        (ddpm("attention_head_dim", json!(0)), "attention_head_dim"),
        (ddpm("norm_num_groups", json!(3)), "norm_num_groups"),
        (ddpm("norm_num_groups", json!(0)), "norm_num_groups"),
        (
            ddpm("attn_norm_num_groups", json!(5)),
            "attn_norm_num_groups",
        ),
        (ddpm("time_embedding_dim", json!(0)), "time_embedding_dim"),
        (ddpm("num_class_embeds", json!(0)), "num_class_embeds"),
        (ddpm("sample_size", json!(0)), "sample_size"),
        (ddpm("out_channels", json!(0)), "out_channels"),
        (sd("attention_head_dim", json!(3)), "num_attention_heads"),
        (
            sd("num_attention_heads", json!([2, 0])),
            "num_attention_heads",
        ),
        (
            sd("attention_head_dim", json!([4, 0])),
            "attention_head_dim",
        ),
        (sd("cross_attention_dim", json!(0)), "cross_attention_dim"),
        (sd("conv_in_kernel", json!(0)), "conv_in_kernel"),
        (sd("conv_out_kernel", json!(4)), "conv_out_kernel"),
        // block_out_channels[0] = 16 with freq_shift 8 on the conditional class too.
        (sd("freq_shift", json!(8)), "freq_shift"),
        (
            (
                "sdxl_like",
                vec![("addition_time_embed_dim".into(), json!(0))],
            ),
            "addition_time_embed_dim",
        ),
        (
            (
                "sdxl_like",
                vec![("freq_shift".into(), json!(4))], // addition_time_embed_dim 8: 4 − 4 = 0
            ),
            "addition_time_embed_dim",
        ),
        // Level counts whose downsampling factor 2^(n−1) overflows a shift.
        (
            (
                "ddpm_basic",
                vec![
                    ("block_out_channels".into(), json!(vec![16; 70])),
                    ("down_block_types".into(), json!(vec!["DownBlock2D"; 70])),
                    ("up_block_types".into(), json!(vec!["UpBlock2D"; 70])),
                ],
            ),
            "70 levels",
        ),
    ];
    for ((name, edits), field) in cases {
        let edits: Vec<(&str, Value)> =
            edits.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let dir = edited_fixture(name, &edits);
        let msg = load_err(&dir);
        assert!(msg.contains(field), "{name} {edits:?}: {msg}");
        // The config alone gives the same error.
        let err = UNetConfig::from_file(&dir.join("config.json")).unwrap_err();
        assert!(err.to_string().contains(field), "{name} {edits:?}: {err}");
        let stderr = cli_forward_failure(&dir, &fixture(name).join("inputs.safetensors"), &[]);
        assert!(stderr.contains(field), "{name} {edits:?}: {stderr}");
    }
}

/// Class 2: a `downsample_padding` of 2 shrinks the encoder's sizes so the upsampled decoder
/// feature no longer matches its skip: an error naming the block and both shapes, before any
/// work, from the library and the binary; a sample too small for a downsampler likewise; and the
/// layout functions themselves return errors for shapes that do not agree.
#[test]
fn skip_and_backbone_sizes_that_disagree_are_errors() {
    let dir = edited_fixture("ddpm_basic", &[("downsample_padding", json!(2))]);
    let unet = UNet::from_dir(&dir).unwrap();
    let input = fixture("ddpm_basic").join("inputs.safetensors");
    let inputs = UNetInputs::load(&input).unwrap();
    let msg = unet.forward(&inputs).unwrap_err().to_string();
    // 16 → 9 → 6 with padding 2; the decoder doubles 6 to 12 and meets the 9×9 skip.
    for part in [
        "up_blocks.1.resnets.0",
        "[2, 32, 12, 12]",
        "[2, 32, 9, 9]",
        "down_blocks.1.attentions.1",
        "downsample_padding = 2",
    ] {
        assert!(msg.contains(part), "missing {part:?}: {msg}");
    }
    let stderr = cli_forward_failure(&dir, &input, &[]);
    assert!(stderr.contains("up_blocks.1.resnets.0"), "{stderr}");

    // A conditional model takes odd sizes, but a 1×1 sample is too small for a 3×3 stride-2
    // convolution padded by (0, 1).
    let dir = edited_fixture("sd15_like", &[("downsample_padding", json!(0))]);
    let sd_inputs = UNetInputs::load(&fixture("sd15_like").join("inputs.safetensors")).unwrap();
    let ehs = sd_inputs.encoder_hidden_states.clone().unwrap();
    let small = scratch("hostile-small").join("in.safetensors");
    let sample = Tensor::randn([1, 4, 1, 1], 0);
    let timestep = Tensor::new([1], vec![10.0]).unwrap();
    let ehs1 = Tensor::new(
        [1, ehs.shape()[1], ehs.shape()[2]],
        ehs.data()[..ehs.shape()[1] * ehs.shape()[2]].to_vec(),
    )
    .unwrap();
    safetensors_io::save(
        &small,
        &[
            ("sample", &sample),
            ("timestep", &timestep),
            ("encoder_hidden_states", &ehs1),
        ],
    )
    .unwrap();
    let msg = UNet::from_dir(&dir)
        .unwrap()
        .forward(&UNetInputs::load(&small).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("too small") && msg.contains("down_blocks.0.downsamplers.0"),
        "{msg}"
    );
    let stderr = cli_forward_failure(&dir, &small, &[]);
    assert!(stderr.contains("down_blocks.0.downsamplers.0"), "{stderr}");

    // The backend's layout functions: errors naming both shapes, never an assertion.
    let be = Cpu;
    let h = Tensor::randn([1, 8, 12, 12], 0);
    let skip = Tensor::randn([1, 8, 6, 6], 1);
    for scale in [1.0, 0.5] {
        let msg = be.cat_channels(&h, &skip, scale).unwrap_err().to_string();
        assert!(
            msg.contains("[1, 8, 12, 12]") && msg.contains("[1, 8, 6, 6]"),
            "{msg}"
        );
    }
    assert!(be.add(&h, &skip, 1.0).is_err());
    assert!(be.to_image(&be.to_tokens(&h).unwrap(), 5, 5).is_err());
    assert!(be.to_tokens(&Tensor::randn([3, 4], 0)).is_err());
    assert!(be
        .upsample_nearest(&Tensor::zeros([1, 1, 0, 3]), 4, 4)
        .is_err());
    assert!(be.geglu(&Tensor::randn([2, 3], 0)).is_err());
    let q = Tensor::randn([1, 4, 6], 0);
    assert!(
        be.attention(&q, &q, &q, 4, 1.0).is_err(),
        "4 heads of 6 channels"
    );
    assert!(be.attention(&q, &q, &q, 0, 1.0).is_err(), "0 heads");
    let kernel = Tensor::randn([2, 1, 5, 5], 0);
    let msg = freelunch::backend::cpu::try_conv2d(
        &Tensor::randn([1, 1, 2, 2], 0),
        &kernel,
        None,
        1,
        freelunch::backend::cpu::Padding::same(1),
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("does not fit"), "{msg}");
}

/// Class 3: sizes that overflow are errors; an allocation the machine cannot satisfy is an
/// error, not an abort; a forward that will not fit is refused up front with "needs ~X GiB,
/// Y GiB available", from the library and the binary.
#[test]
fn memory_plans_and_fallible_allocation() {
    // Shapes whose element count overflows usize, or whose bytes do not fit in memory.
    let msg = Tensor::try_zeros([1usize << 40, 1 << 40])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("too large"), "{msg}");
    let msg = Tensor::try_randn([1usize << 62, 2], 0)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("too large"), "{msg}");
    let msg = Tensor::new([1usize << 33, 1 << 33], vec![])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("too large"), "{msg}");
    // 4 PiB: addressable, but no machine here has it.
    let msg = Tensor::try_zeros([1usize << 20, 1 << 20, 1 << 10])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("needs ~") && msg.contains("GiB available"),
        "{msg}"
    );

    // The plan, from the config alone: overflow is an error, a huge batch does not fit.
    let cfg = UNetConfig::from_file(&fixture("sd15_like").join("config.json")).unwrap();
    let msg = cfg
        .plan_forward(1 << 40, 1 << 20, 1 << 20, 7)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("overflows"), "{msg}");
    let plan = cfg.plan_forward(4096, 512, 512, 7).unwrap();
    let msg = plan.ensure_fits(Some(8 << 30)).unwrap_err().to_string();
    assert!(
        msg.contains("needs ~") && msg.contains("8.0 GiB available"),
        "{msg}"
    );
    assert!(
        plan.ensure_fits(None).is_ok(),
        "unknown memory refuses nothing"
    );
    let small = cfg.plan_forward(2, 16, 16, 7).unwrap();
    assert!(small.weight_bytes > 0 && small.call_bytes() < plan.call_bytes());
    assert!(small.ensure_fits(Some(1 << 30)).is_ok());

    // End to end: a valid input whose forward needs more than the memory the run may use
    // (FREELUNCH_HOST_MEMORY_MB caps what the system reports) is refused before it allocates.
    let dir = fixture("sd15_like");
    let sd_inputs = UNetInputs::load(&dir.join("inputs.safetensors")).unwrap();
    let ehs = sd_inputs.encoder_hidden_states.clone().unwrap();
    let (b, m, d) = (4, ehs.shape()[1], ehs.shape()[2]);
    let big = scratch("hostile-big").join("in.safetensors");
    let sample = Tensor::randn([b, 4, 192, 192], 0);
    let timestep = Tensor::new([1], vec![10.0]).unwrap();
    let ehs_b = Tensor::randn([b, m, d], 1);
    safetensors_io::save(
        &big,
        &[
            ("sample", &sample),
            ("timestep", &timestep),
            ("encoder_hidden_states", &ehs_b),
        ],
    )
    .unwrap();
    let plan = cfg.plan_forward(b, 192, 192, m).unwrap();
    // Room for the weights and the input, not for the call.
    let cap_mb = (plan.call_bytes() / 4) >> 20;
    assert!(
        cap_mb << 20 > 4 * plan.weight_bytes + (64 << 20),
        "plan {plan:?}: no cap between the weights and the call"
    );
    let stderr = cli_forward_failure(
        &dir,
        &big,
        &[("FREELUNCH_HOST_MEMORY_MB", cap_mb.to_string())],
    );
    assert!(
        stderr.contains("needs ~")
            && stderr.contains("GiB available")
            && stderr.contains("[4, 4, 192, 192]"),
        "{stderr}"
    );
    // The same through the library's plan, told how much there is.
    let inputs = UNetInputs::load(&big).unwrap();
    let msg = cfg
        .plan_forward_of(&inputs.sample, inputs.encoder_hidden_states.as_ref())
        .unwrap()
        .ensure_fits(Some(cap_mb << 20))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("needs ~"), "{msg}");

    // Loading refuses a config whose f32 weights alone exceed what is available.
    let stderr = cli_forward_failure(
        &dir,
        &dir.join("inputs.safetensors"),
        &[("FREELUNCH_HOST_MEMORY_MB", "0".into())],
    );
    assert!(
        stderr.contains("weights") && stderr.contains("needs ~"),
        "{stderr}"
    );
}

const BASES: [&str; 6] = [
    "ddpm_basic",
    "ddpm_scale_shift_class",
    "sd15_like",
    "sd21_like",
    "sdxl_like",
    "sd_mid_only_cross",
];

/// Field names the parser knows (from every fixture) plus junk, for the properties below.
fn field_names() -> &'static [String] {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names = std::collections::BTreeSet::new();
        for f in BASES {
            names.extend(read_config(&fixture(f)).keys().cloned());
        }
        names.extend(
            [
                "",
                "_",
                "x",
                "block_out_channel",
                "layers",
                "🦀",
                "norm_eps ",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        names.into_iter().collect()
    })
}

fn base_configs() -> &'static [Map<String, Value>] {
    static BASE: std::sync::OnceLock<Vec<Map<String, Value>>> = std::sync::OnceLock::new();
    BASE.get_or_init(|| BASES.iter().map(|f| read_config(&fixture(f))).collect())
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0u64..70).prop_map(|v| json!(v)),
        any::<u64>().prop_map(|v| json!(v)),
        any::<i64>().prop_map(|v| json!(v)),
        (-1e6f64..1e6).prop_map(|v| json!(v)),
        prop_oneof![
            Just(1e39),
            Just(-1e39),
            Just(1e308),
            Just(f64::MIN_POSITIVE),
            Just(1e-45),
            Just(-0.0),
            Just(0.5),
            Just(2.0),
            Just(16.0),
            Just(8.0),
            Just(-1.0),
        ]
        .prop_map(|v| json!(v)),
        prop_oneof![
            Just("NaN"),
            Just("nan"),
            Just("Infinity"),
            Just("-inf"),
            Just("1e999"),
            Just(""),
            Just("8"),
            Just("UNet2DModel"),
            Just("UNet2DConditionModel"),
            Just("DownBlock2D"),
            Just("CrossAttnDownBlock2D"),
            Just("AttnUpBlock2D"),
            Just("UNetMidBlock2D"),
            Just("text_time"),
            Just("scale_shift"),
            Just("silu"),
        ]
        .prop_map(|s| json!(s)),
        "[a-zA-Z0-9_ ]{0,12}".prop_map(Value::String),
    ]
}

/// Numbers for numeric fields: mostly small integers, some edge values.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => (0u64..10).prop_map(|v| json!(v)),
        4 => prop_oneof![Just(16u64), Just(32), Just(64), Just(48), Just(12), Just(24), Just(80)]
            .prop_map(|v| json!(v)),
        1 => prop_oneof![Just((1u64 << 24) - 1), Just(1 << 24), Just(u64::MAX)].prop_map(|v| json!(v)),
        1 => (-3i64..0).prop_map(|v| json!(v)),
        2 => prop_oneof![
            Just(0.0f64),
            Just(1e-6),
            Just(-1e-5),
            Just(0.5),
            Just(1.0),
            Just(2.0),
            Just(7.5),
            Just(1e-45),
            Just(1e39),
            Just(1e308),
        ]
        .prop_map(|v| json!(v)),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Parses a config and, when it parses, plans forwards on it: neither may panic.
fn parse_and_plan(text: &str, sizes: (usize, usize, usize, usize)) {
    if let Ok(cfg) = UNetConfig::from_json_str(text, "fuzz") {
        let _ = cfg.parameter_count();
        let _ = cfg.weight_bytes();
        let (b, h, w, m) = sizes;
        if let Ok(plan) = cfg.plan_forward(b, h, w, m) {
            let _ = plan.ensure_fits(Some(1 << 30));
        }
        let _ = cfg.plan_forward(usize::MAX, usize::MAX, usize::MAX, usize::MAX);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 25000, ..ProptestConfig::default() })]

    /// A real config with random fields set to random values (numbers of every size and sign,
    /// NaN-like strings, nested junk), removed, or added.
    #[test]
    fn config_parsing_never_panics_on_mutated_configs(
        base in 0usize..6,
        edits in prop::collection::vec((0usize..1000, value()), 1..6),
        class in prop::option::of(prop_oneof![
            Just("UNet2DModel"),
            Just("UNet2DConditionModel"),
        ]),
        sizes in (0usize..5, 0usize..40, 0usize..40, 0usize..9),
    ) {
        let names = field_names();
        let mut cfg = base_configs()[base].clone();
        for (i, v) in edits {
            let name = &names[i % names.len()];
            if i % 7 == 0 {
                cfg.remove(name);
            } else {
                cfg.insert(name.clone(), v);
            }
        }
        if let Some(c) = class {
            cfg.insert("_class_name".into(), json!(c));
        }
        parse_and_plan(&Value::Object(cfg).to_string(), sizes);
    }

    /// A real config whose numeric fields (and lists of numbers) get other numbers, mostly
    /// small integers, so that most configs still parse and their validation, parameter count
    /// and forward plan run on odd sizes, heads, groups, paddings, kernels and shifts.
    #[test]
    fn config_parsing_never_panics_on_renumbered_configs(
        base in 0usize..6,
        edits in prop::collection::vec((0usize..1000, prop::collection::vec(number(), 1..6), any::<bool>()), 1..5),
        sizes in (0usize..5, 0usize..70, 0usize..70, 0usize..9),
    ) {
        let mut cfg = base_configs()[base].clone();
        let numeric: Vec<String> = cfg
            .iter()
            .filter(|(_, v)| v.is_number() || v.as_array().is_some_and(|a| a.iter().all(Value::is_number)))
            .map(|(k, _)| k.clone())
            .collect();
        for (i, nums, keep_len) in edits {
            let name = &numeric[i % numeric.len()];
            let new = match &cfg[name] {
                Value::Array(old) => {
                    let len = if keep_len { old.len() } else { nums.len() };
                    Value::Array((0..len).map(|j| nums[j % nums.len()].clone()).collect())
                }
                _ => nums[0].clone(),
            };
            cfg.insert(name.clone(), new);
        }
        parse_and_plan(&Value::Object(cfg).to_string(), sizes);
    }

    /// Arbitrary JSON objects over the known field names and junk ones.
    #[test]
    fn config_parsing_never_panics_on_random_objects(
        fields in prop::collection::vec((0usize..1000, value()), 0..30),
        class in prop_oneof![
            Just(json!("UNet2DModel")),
            Just(json!("UNet2DConditionModel")),
            value(),
        ],
        sizes in (0usize..5, 0usize..40, 0usize..40, 0usize..9),
    ) {
        let names = field_names();
        let mut cfg = Map::new();
        cfg.insert("_class_name".into(), class);
        for (i, v) in fields {
            cfg.insert(names[i % names.len()].clone(), v);
        }
        parse_and_plan(&Value::Object(cfg).to_string(), sizes);
    }

    /// Any text at all, and any JSON value at the top level.
    #[test]
    fn config_parsing_never_panics_on_any_text(text in ".{0,200}", v in value()) {
        let _ = UNetConfig::from_json_str(&text, "fuzz");
        let _ = UNetConfig::from_json_str(&v.to_string(), "fuzz");
    }
}
