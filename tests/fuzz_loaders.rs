//! Fuzzing every loader of untrusted input, on stable Rust with proptest: safetensors headers and
//! data (checkpoints, input files, mask files, mask-generator checkpoints), model `config.json`
//! (parsed, then built with random weights) and scheduler configs (parsed, then every sampler
//! built). Each case starts from a real fixture file and applies a few mutations — bit flips,
//! byte runs overwritten, inserted or deleted, truncation, and, for JSON, a value replaced by a
//! hostile one (huge, negative, zero, fractional, NaN-like, a wrong type) — and the loader must
//! return, `Ok` or `Err`, without panicking (a panic fails the case, which proptest shrinks) or
//! aborting (which ends the run with a non-zero status).
//!
//! `FREELUNCH_FUZZ_CASES` cases per target (default 300: CI's short seeded pass; the seed is fixed
//! so CI's pass is reproducible; `FREELUNCH_FUZZ_SEED` changes it). The long run recorded in
//! BENCHMARKS.md:
//!
//! ```text
//! FREELUNCH_FUZZ_CASES=167000 FREELUNCH_HOST_MEMORY_MB=512 \
//!     cargo test --release --test fuzz_loaders -- --nocapture --test-threads 2
//! ```
//!
//! `FREELUNCH_HOST_MEMORY_MB` keeps the memory plan's refusals in play: without it a mutated
//! config that asks for a model the size of the machine's free memory is (rightly) built, with
//! random weights, and one such case takes minutes and most of the RAM.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use common::{fixture, scratch};
use freelunch::boosters::mask_generator::{Gumbel, MaskGenerator};
use freelunch::boosters::MaskSet;
use freelunch::schedulers::{self, SamplerKind, SchedulerConfig};
use freelunch::weights::{Checkpoint, RandomWeights};
use freelunch::{UNet, UNetConfig, UNetInputs};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::Value;

fn cases() -> u32 {
    std::env::var("FREELUNCH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn runner() -> TestRunner {
    let seed: u64 = std::env::var("FREELUNCH_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261201);
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key))
}

/// One mutation of a byte string.
#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Overwrite { at: usize, bytes: Vec<u8> },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        (at, 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (at, prop::collection::vec(any::<u8>(), 1..9))
            .prop_map(|(at, bytes)| Mutation::Overwrite { at, bytes }),
        (at, prop::collection::vec(any::<u8>(), 1..9))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (at, 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        at.prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn apply(mut b: Vec<u8>, ms: &[Mutation], header_bias: bool) -> Vec<u8> {
    for m in ms {
        // Half the mutations of a safetensors file land in its header (the first 8 bytes and the
        // JSON after them), where a flipped byte changes a size or an offset.
        let span = |n: usize| {
            if b.is_empty() {
                0
            } else if header_bias && n.is_multiple_of(2) {
                n % b.len().min(512)
            } else {
                n % b.len()
            }
        };
        match m {
            Mutation::Flip { at, bit } if !b.is_empty() => {
                let i = span(*at);
                b[i] ^= 1 << bit;
            }
            Mutation::Overwrite { at, bytes } if !b.is_empty() => {
                let i = span(*at);
                for (k, v) in bytes.iter().enumerate() {
                    if let Some(x) = b.get_mut(i + k) {
                        *x = *v;
                    }
                }
            }
            Mutation::Insert { at, bytes } => {
                let i = if b.is_empty() { 0 } else { span(*at) };
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::Delete { at, len } if !b.is_empty() => {
                let i = span(*at);
                let end = (i + len).min(b.len());
                b.drain(i..end);
            }
            Mutation::Truncate { at } if !b.is_empty() => b.truncate(span(*at)),
            _ => {}
        }
    }
    b
}

/// A hostile replacement for a JSON value.
fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::from(0)),
        Just(Value::from(-1)),
        Just(Value::from(1u64 << 40)),
        Just(Value::from(u64::MAX)),
        Just(Value::from(i64::MIN)),
        Just(Value::from(1e308)),
        Just(Value::from(-1e-308)),
        Just(Value::from(0.5)),
        Just(Value::from(2.5)),
        Just(Value::from("NaN")),
        Just(Value::from("inf")),
        Just(Value::from("")),
        Just(Value::Null),
        Just(Value::Bool(true)),
        Just(Value::Array(vec![])),
        Just(Value::Array(vec![Value::from(0); 40])),
        Just(serde_json::json!({"x": 1})),
        (-100000i64..100000).prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
    ]
}

/// Replaces the value at a random path of `v` (objects and arrays, any depth).
fn replace_random(v: &mut Value, pick: usize, new: Value) {
    let mut paths: Vec<Vec<Result<String, usize>>> = Vec::new();
    fn walk(
        v: &Value,
        path: &mut Vec<Result<String, usize>>,
        out: &mut Vec<Vec<Result<String, usize>>>,
    ) {
        out.push(path.clone());
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    path.push(Ok(k.clone()));
                    walk(x, path, out);
                    path.pop();
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    path.push(Err(i));
                    walk(x, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    walk(v, &mut Vec::new(), &mut paths);
    let path = &paths[pick % paths.len()];
    let mut cur = v;
    for step in path {
        cur = match step {
            Ok(k) => &mut cur[k.as_str()],
            Err(i) => &mut cur[*i],
        };
    }
    *cur = new;
}

/// A fuzzed JSON document: a seed with 1-4 values replaced, sometimes byte-mutated too.
fn json_case(seeds: Vec<Value>) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(seeds),
        prop::collection::vec((any::<usize>(), hostile_value()), 1..5),
        prop::collection::vec(mutation(), 0..3),
    )
        .prop_map(|(mut v, edits, bytes)| {
            for (pick, new) in edits {
                replace_random(&mut v, pick, new);
            }
            apply(
                python_literals(serde_json::to_string(&v).unwrap()).into_bytes(),
                &bytes,
                false,
            )
        })
}

/// A fuzzed binary file: a seed with 1-6 mutations.
fn bytes_case(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(seeds),
        prop::collection::vec(mutation(), 1..7),
    )
        .prop_map(|(b, ms)| apply(b, &ms, true))
}

static EXECUTIONS: AtomicU64 = AtomicU64::new(0);

/// Runs `target` on `strategy`'s cases; a panic (proptest catches it) fails the test with the
/// shrunk input.
fn fuzz<S: Strategy<Value = Vec<u8>>>(name: &str, strategy: S, target: impl Fn(&[u8], &Path)) {
    let file = scratch(&format!("fuzz-{name}")).join("case");
    let mut runner = runner();
    let n = AtomicU64::new(0);
    let result = runner.run(&strategy, |bytes| {
        n.fetch_add(1, Ordering::Relaxed);
        std::fs::write(&file, &bytes).unwrap();
        target(&bytes, &file);
        Ok(())
    });
    let n = n.into_inner();
    EXECUTIONS.fetch_add(n, Ordering::Relaxed);
    println!("{name}: {n} executions");
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

fn read(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// diffusers writes Python's `-Infinity`/`Infinity`/`NaN`, which JSON lacks: they travel as
/// these strings and are put back after a case is serialised.
const PY_LITERALS: [(&str, &str); 3] = [
    ("-Infinity", "\"__-Infinity__\""),
    ("Infinity", "\"__Infinity__\""),
    ("NaN", "\"__NaN__\""),
];

fn json(p: PathBuf) -> Value {
    let mut text = String::from_utf8(read(p.clone())).unwrap();
    for (lit, tag) in PY_LITERALS {
        text = text.replace(&format!(": {lit}"), &format!(": {tag}"));
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn python_literals(mut text: String) -> String {
    for (lit, tag) in PY_LITERALS {
        text = text.replace(tag, lit);
    }
    text
}

fn safetensors_seeds() -> Vec<Vec<u8>> {
    vec![
        read(fixture("ddpm_basic").join("diffusion_pytorch_model.safetensors")),
        read(fixture("ddpm_scale_shift_class").join("diffusion_pytorch_model.fp16.safetensors")),
        read(fixture("sd15_like").join("inputs.safetensors")),
        read(
            fixture("masks")
                .join("sd15_shared_u8")
                .join("masks.safetensors"),
        ),
    ]
}

#[test]
fn fuzz_checkpoints() {
    fuzz("checkpoint", bytes_case(safetensors_seeds()), |_, p| {
        let _ = Checkpoint::load(&[p.to_path_buf()]);
    });
}

#[test]
fn fuzz_input_files() {
    fuzz("inputs", bytes_case(safetensors_seeds()), |_, p| {
        let _ = UNetInputs::load(p);
    });
}

#[test]
fn fuzz_mask_files() {
    let unet = UNet::from_dir(&fixture("sd15_like")).unwrap();
    let seeds = vec![
        read(
            fixture("masks")
                .join("sd15_shared_u8")
                .join("masks.safetensors"),
        ),
        read(
            fixture("masks")
                .join("sd15_per_sample_bool")
                .join("masks.safetensors"),
        ),
    ];
    fuzz("masks", bytes_case(seeds), |_, p| {
        let _ = MaskSet::load(p, unet.layers());
    });
}

#[test]
fn fuzz_mask_generator_checkpoints() {
    let unet = UNet::from_dir(&fixture("sd15_like")).unwrap();
    let seeds = vec![read(
        fixture("mask_generator")
            .join("sd15_hyper")
            .join("generator.safetensors"),
    )];
    fuzz("mask-generator", bytes_case(seeds), |_, p| {
        let _ = MaskGenerator::load(p, &unet, Gumbel::Off);
    });
}

#[test]
fn fuzz_model_configs() {
    let seeds = [
        "ddpm_basic",
        "sd15_like",
        "sdxl_like",
        "sd21_like",
        "ddpm_scale_shift_class",
    ]
    .iter()
    .map(|c| json(fixture(c).join("config.json")))
    .collect();
    fuzz("config", json_case(seeds), |bytes, _| {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return;
        };
        if let Ok(config) = UNetConfig::from_json_str(text, "fuzz") {
            let _ = UNet::load(config, &mut RandomWeights::new(0));
        }
    });
}

#[test]
fn fuzz_scheduler_configs() {
    let seeds = std::fs::read_dir(fixture("samplers"))
        .unwrap()
        .map(|e| e.unwrap().path().join("scheduler_config.json"))
        .filter(|p| p.is_file())
        .map(json)
        .collect();
    let kinds = [
        SamplerKind::Ddpm,
        SamplerKind::Ddim,
        SamplerKind::Euler,
        SamplerKind::Heun,
        SamplerKind::DpmSolverMultistep,
    ];
    fuzz("scheduler", json_case(seeds), |bytes, _| {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return;
        };
        if let Ok(config) = SchedulerConfig::from_json_str(text, "fuzz") {
            for kind in kinds {
                for steps in [1, 10, 1000] {
                    if let Ok(s) = schedulers::build(kind, &config, steps, 0.0) {
                        let _ = s.timesteps().len();
                    }
                }
            }
        }
    });
}
