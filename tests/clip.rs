//! CLIP's tokenizer, text encoders and the pipelines' encode_prompt against transformers 5.24 and
//! diffusers 0.42.1 (`tools/gen_clip_goldens.py`: real BPE merges, tiny random-weight encoders,
//! references computed in float64 from the stored weights). Token ids must be equal; float
//! outputs are held to 1e-5 relative L2 (`Tensor::rel_l2`: ‖got − want‖ / ‖want‖ over the whole
//! tensor). The GPU test runs the CUDA backend (the PTX executor under `FREELUNCH_DEVICE=emu`)
//! against the CPU: f32 within 1e-4, f16 within 1e-2, bf16 within 2e-2.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use freelunch::backend::{Activation, Backend, Cpu};
use freelunch::models::encode_prompt::{
    encode_prompt_sd, encode_prompt_sdxl, PromptEmbeds, SdxlPrompts, TextEncoder,
};
use freelunch::models::modeling_clip::{CLIPTextConfig, CLIPTextModel};
use freelunch::models::tokenization_clip::CLIPTokenizer;
use freelunch::weights::Checkpoint;
use freelunch::{Error, Tensor};
use serde_json::Value;

const TOL: f64 = 1e-5;

fn dir() -> PathBuf {
    common::fixture("clip")
}

fn goldens_json() -> Value {
    let text = std::fs::read_to_string(dir().join("goldens.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The golden tensors: f32 ones as tensors, i64 ones (token ids) as rows of u32.
struct Goldens {
    floats: BTreeMap<String, Tensor>,
    ids: BTreeMap<String, Vec<Vec<u32>>>,
}

fn goldens() -> Goldens {
    let bytes = std::fs::read(dir().join("goldens.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (mut floats, mut ids) = (BTreeMap::new(), BTreeMap::new());
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        match view.dtype() {
            safetensors::Dtype::F32 => {
                let data = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                floats.insert(name.clone(), Tensor::new(shape, data).unwrap());
            }
            safetensors::Dtype::I64 => {
                let flat: Vec<u32> = view
                    .data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
                    .collect();
                ids.insert(
                    name.clone(),
                    flat.chunks(shape[1]).map(<[u32]>::to_vec).collect(),
                );
            }
            other => panic!("{name}: unexpected dtype {other:?}"),
        }
    }
    Goldens { floats, ids }
}

/// `got` against `want`: same shape, a reference that is not all zeros, rel L2 within `tol`.
fn close(what: &str, got: &Tensor, want: &Tensor, tol: f64) -> f64 {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    assert!(
        want.data().iter().any(|&v| v != 0.0),
        "{what}: the reference is all zeros"
    );
    let err = got.rel_l2(want);
    assert!(err <= tol, "{what}: rel L2 {err:.3e} > {tol:.0e}");
    err
}

fn strs(v: &Value) -> Option<Vec<String>> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
}

#[test]
fn token_ids_match_transformers() {
    let g = goldens_json();
    let corpus = strs(&g["corpus"]).unwrap();
    let corpus: Vec<&str> = corpus.iter().map(String::as_str).collect();
    for name in ["tokenizer", "tokenizer_2", "tokenizer_json"] {
        let tok = CLIPTokenizer::from_pretrained(&dir().join(name)).unwrap();
        assert_eq!(
            i64::from(tok.pad_token_id),
            g["pad_token_id"][name].as_i64().unwrap(),
            "{name}: pad id"
        );
        let got = tok.encode_batch(&corpus).unwrap();
        let want: Vec<Vec<u32>> = serde_json::from_value(g["ids"][name].clone()).unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{name}: prompt {i} {:?}", corpus[i]);
        }
        // The corpus reaches truncation (a full row ending in <|endoftext|>) and padding.
        assert!(got
            .iter()
            .any(|r| r[76] == tok.eos_token_id && r[75] != tok.pad_token_id));
        assert!(got.iter().any(|r| r[76] == tok.pad_token_id));
    }
}

/// Each fixture encoder with the tokenizer whose ids its goldens used.
const ENCODERS: [(&str, &str); 3] = [
    ("text_encoder", "tokenizer"),
    ("text_encoder_2", "tokenizer_2"),
    ("text_encoder_sd2", "tokenizer_2"),
];

#[test]
fn text_encoders_match_transformers() {
    let g = goldens();
    let mut worst: f64 = 0.0;
    for (name, _) in ENCODERS {
        let model = CLIPTextModel::from_pretrained(&dir().join(name), None).unwrap();
        let ids = &g.ids[&format!("{name}.input_ids")];
        let out = model.forward(&Cpu, ids).unwrap();
        let f = |k: &str| &g.floats[&format!("{name}.{k}")];
        worst = worst.max(close(
            name,
            &out.last_hidden_state,
            f("last_hidden_state"),
            TOL,
        ));
        assert_eq!(out.hidden_states.len(), model.config.num_hidden_layers + 1);
        for (i, h) in out.hidden_states.iter().enumerate() {
            let what = format!("{name} hidden_states[{i}]");
            worst = worst.max(close(&what, h, f(&format!("hidden_states.{i}")), TOL));
        }
        match &out.text_embeds {
            Some(t) => worst = worst.max(close(name, t, f("text_embeds"), TOL)),
            None => worst = worst.max(close(name, &out.pooler_output, f("pooler_output"), TOL)),
        }
        assert_eq!(out.text_embeds.is_some(), name == "text_encoder_2");
    }
    println!("text encoders: worst rel L2 {worst:.2e}");
}

#[test]
fn causal_attention_is_attention_over_the_prefix() {
    // Row i of causal attention is plain attention of query i over keys and values 0..=i.
    let (b, n, heads, d) = (2, 23, 3, 8);
    let q = Tensor::randn([b, n, heads * d], 11);
    let k = Tensor::randn([b, n, heads * d], 12);
    let v = Tensor::randn([b, n, heads * d], 13);
    let got = Cpu.causal_attention(&q, &k, &v, heads, 0.3).unwrap();
    let c = heads * d;
    let rows = |t: &Tensor, bi: usize, r: std::ops::Range<usize>| {
        let data = t.data()[(bi * n + r.start) * c..(bi * n + r.end) * c].to_vec();
        Tensor::new(vec![1, r.len(), c], data).unwrap()
    };
    for bi in 0..b {
        for i in [0, 1, 7, n - 1] {
            let want = Cpu
                .attention(
                    &rows(&q, bi, i..i + 1),
                    &rows(&k, bi, 0..i + 1),
                    &rows(&v, bi, 0..i + 1),
                    heads,
                    0.3,
                )
                .unwrap();
            close(&format!("row {i}"), &rows(&got, bi, i..i + 1), &want, 1e-6);
        }
    }
    let plain = Cpu.attention(&q, &k, &v, heads, 0.3).unwrap();
    assert!(got.rel_l2(&plain) > 0.1, "the mask must change the result");
    let short = Tensor::randn([b, n - 1, heads * d], 14);
    assert!(Cpu
        .causal_attention(&q, &short, &short, heads, 0.3)
        .is_err());
}

#[test]
fn legacy_eos_rule_pools_at_the_largest_id() {
    // text_encoder's config has eos_token_id 2: the row's largest id, wherever it is.
    let model = CLIPTextModel::from_pretrained(&dir().join("text_encoder"), None).unwrap();
    assert_eq!(model.config.eos_token_id, 2);
    let ids = vec![vec![5, 900, 17, 3, 3], vec![1000, 2, 2, 2, 2]];
    let out = model.forward(&Cpu, &ids).unwrap();
    let d = model.config.hidden_size;
    let last = out.last_hidden_state.data();
    assert_eq!(&out.pooler_output.data()[..d], &last[d..2 * d]);
    assert_eq!(&out.pooler_output.data()[d..], &last[5 * d..6 * d]);
}

fn load_encoder(tok: &str, enc: &str) -> TextEncoder {
    TextEncoder::from_pretrained(&dir(), tok, enc, None).unwrap()
}

fn case_strs(case: &Value, key: &str) -> Option<Vec<String>> {
    strs(&case[key])
}

fn as_refs(v: &Option<Vec<String>>) -> Option<Vec<&str>> {
    v.as_ref().map(|v| v.iter().map(String::as_str).collect())
}

fn cases() -> Value {
    let text = std::fs::read_to_string(dir().join("encode_prompt_cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn check_embeds(key: &str, got: &PromptEmbeds, g: &Goldens) -> f64 {
    let f = |k: &str| &g.floats[&format!("{key}.{k}")];
    let mut worst = close(key, &got.prompt_embeds, f("prompt_embeds"), TOL);
    let neg = got.negative_prompt_embeds.as_ref().unwrap();
    let want_neg = f("negative_prompt_embeds");
    if want_neg.data().iter().all(|&v| v == 0.0) {
        assert_eq!(
            neg.shape(),
            want_neg.shape(),
            "{key}: zero negative's shape"
        );
        assert!(
            neg.data().iter().all(|&v| v == 0.0),
            "{key}: zeros expected"
        );
    } else {
        worst = worst.max(close(key, neg, want_neg, TOL));
    }
    if let Some(p) = &got.pooled_prompt_embeds {
        worst = worst.max(close(key, p, f("pooled_prompt_embeds"), TOL));
        let np = got.negative_pooled_prompt_embeds.as_ref().unwrap();
        let want = f("negative_pooled_prompt_embeds");
        if want.data().iter().all(|&v| v == 0.0) {
            assert!(np.data().iter().all(|&v| v == 0.0), "{key}: zero pooled");
        } else {
            worst = worst.max(close(key, np, want, TOL));
        }
    }
    worst
}

#[test]
fn encode_prompt_sd_matches_diffusers() {
    let g = goldens();
    let enc = load_encoder("tokenizer", "text_encoder");
    let cases = cases();
    let mut n = 0;
    let mut worst: f64 = 0.0;
    for (key, case) in cases.as_object().unwrap() {
        if !key.starts_with("sd.") {
            continue;
        }
        let prompt = case_strs(case, "prompt").unwrap();
        let neg = case_strs(case, "negative_prompt");
        let prompt: Vec<&str> = prompt.iter().map(String::as_str).collect();
        let neg = as_refs(&neg);
        let clip_skip = case["clip_skip"].as_u64().map(|k| k as usize);
        let got = encode_prompt_sd(&Cpu, &enc, &prompt, neg.as_deref(), true, clip_skip).unwrap();
        worst = worst.max(check_embeds(key, &got, &g));
        let cond = got.into_conditioning();
        assert!(cond.encoder_hidden_states.is_some() && cond.uncond_hidden_states.is_some());
        n += 1;
    }
    assert_eq!(n, 3);
    println!("encode_prompt (SD): worst rel L2 {worst:.2e}");
}

/// One SDXL case of `encode_prompt_cases.json` on `be` (force_zeros_for_empty_prompt, guidance).
fn run_sdxl_case<B: Backend>(
    be: &B,
    e1: &TextEncoder,
    e2: &TextEncoder,
    case: &Value,
) -> PromptEmbeds {
    let owned: Vec<Option<Vec<String>>> =
        ["prompt", "prompt_2", "negative_prompt", "negative_prompt_2"]
            .iter()
            .map(|k| case_strs(case, k))
            .collect();
    let refs: Vec<Option<Vec<&str>>> = owned.iter().map(as_refs).collect();
    let prompts = SdxlPrompts {
        prompt: refs[0].as_deref().unwrap(),
        prompt_2: refs[1].as_deref(),
        negative_prompt: refs[2].as_deref(),
        negative_prompt_2: refs[3].as_deref(),
    };
    let clip_skip = case["clip_skip"].as_u64().map(|k| k as usize);
    encode_prompt_sdxl(be, Some(e1), e2, &prompts, true, clip_skip, true).unwrap()
}

#[test]
fn encode_prompt_sdxl_matches_diffusers() {
    let g = goldens();
    let e1 = load_encoder("tokenizer", "text_encoder");
    let e2 = load_encoder("tokenizer_2", "text_encoder_2");
    let cases = cases();
    let mut n = 0;
    let mut worst: f64 = 0.0;
    for (key, case) in cases.as_object().unwrap() {
        if !key.starts_with("sdxl.") {
            continue;
        }
        let got = run_sdxl_case(&Cpu, &e1, &e2, case);
        worst = worst.max(check_embeds(key, &got, &g));
        let cond = got.into_conditioning();
        assert!(cond.text_embeds.is_some() && cond.uncond_text_embeds.is_some());
        n += 1;
    }
    assert_eq!(n, 3);
    println!("encode_prompt (SDXL): worst rel L2 {worst:.2e}");
}

#[test]
fn gpu_text_encoders_match_cpu() {
    let g = goldens();
    for (dtype, gpu) in common::gpu::gpus("clip text encoders") {
        let gpu = gpu.as_ref();
        let tol = common::gpu::tolerance(*dtype);
        // The new kernels alone on random inputs: causal attention at ragged lengths and both
        // activations.
        for (b, n, heads, d, seed) in [(2, 77, 4, 8, 1), (1, 19, 3, 40, 2), (1, 70, 2, 64, 3)] {
            let q = Tensor::randn([b, n, heads * d], seed);
            let k = Tensor::randn([b, n, heads * d], seed + 1);
            let v = Tensor::randn([b, n, heads * d], seed + 2);
            let s = 1.0 / (d as f32).sqrt();
            let want = Cpu.causal_attention(&q, &k, &v, heads, s).unwrap();
            let plain = Cpu.attention(&q, &k, &v, heads, s).unwrap();
            assert!(want.rel_l2(&plain) > 0.1, "the mask must change the result");
            let (gq, gk, gv) = (
                gpu.upload(&q).unwrap(),
                gpu.upload(&k).unwrap(),
                gpu.upload(&v).unwrap(),
            );
            let got = gpu.causal_attention(&gq, &gk, &gv, heads, s).unwrap();
            common::gpu::compare(gpu, "causal attention", &got, &want).unwrap();
        }
        let x = Tensor::randn([3, 77, 50], 9);
        for act in [Activation::Gelu, Activation::QuickGelu] {
            let got = gpu.activation(&gpu.upload(&x).unwrap(), act).unwrap();
            common::gpu::compare(
                gpu,
                &format!("{act:?}"),
                &got,
                &Cpu.activation(&x, act).unwrap(),
            )
            .unwrap();
        }
        // The whole encoders, every output.
        for (name, _) in ENCODERS {
            let model = CLIPTextModel::from_pretrained(&dir().join(name), None).unwrap();
            let ids = &g.ids[&format!("{name}.input_ids")];
            let want = model.forward(&Cpu, ids).unwrap();
            let got = model.forward(gpu, ids).unwrap();
            let what = format!("{name} ({dtype:?})");
            let mut worst = close(&what, &got.last_hidden_state, &want.last_hidden_state, tol);
            worst = worst.max(close(&what, &got.pooler_output, &want.pooler_output, tol));
            assert_eq!(got.hidden_states.len(), want.hidden_states.len());
            for (h, w) in got.hidden_states.iter().zip(&want.hidden_states) {
                worst = worst.max(close(&what, h, w, tol));
            }
            if let Some(t) = &want.text_embeds {
                worst = worst.max(close(&what, got.text_embeds.as_ref().unwrap(), t, tol));
            }
            println!("{what}: worst rel L2 {worst:.2e} against the CPU");
        }
        // SDXL's encode_prompt end to end on the device, against diffusers.
        let (e1, e2) = (
            load_encoder("tokenizer", "text_encoder"),
            load_encoder("tokenizer_2", "text_encoder_2"),
        );
        let key = "sdxl.both_negatives";
        let got = run_sdxl_case(gpu, &e1, &e2, &cases()[key]);
        let f = |k: &str| &g.floats[&format!("{key}.{k}")];
        let what = format!("{key} ({dtype:?})");
        let mut worst = close(&what, &got.prompt_embeds, f("prompt_embeds"), tol);
        let neg = got.negative_prompt_embeds.as_ref().unwrap();
        worst = worst.max(close(&what, neg, f("negative_prompt_embeds"), tol));
        let pooled = got.pooled_prompt_embeds.as_ref().unwrap();
        worst = worst.max(close(&what, pooled, f("pooled_prompt_embeds"), tol));
        println!("{what}: worst rel L2 {worst:.2e} against diffusers");
    }
}

/// A scratch copy of fixture folder `name` (under clip/).
fn scratch_copy(name: &str) -> PathBuf {
    let dst = common::scratch(&format!("clip-{name}"));
    for entry in std::fs::read_dir(dir().join(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    dst
}

fn tok_err(dir: &Path) -> Error {
    CLIPTokenizer::from_pretrained(dir).unwrap_err()
}

#[test]
fn hostile_tokenizer_files_are_typed_errors() {
    let d = scratch_copy("tokenizer");
    std::fs::remove_file(d.join("tokenizer_config.json")).unwrap();
    assert!(matches!(tok_err(&d), Error::Io { .. }), "missing config");

    let d = scratch_copy("tokenizer");
    std::fs::write(d.join("tokenizer_config.json"), "{\"model_max_length\": ").unwrap();
    assert!(
        matches!(tok_err(&d), Error::Json { .. }),
        "truncated config"
    );

    let d = scratch_copy("tokenizer");
    std::fs::write(
        d.join("tokenizer_config.json"),
        "{\"model_max_length\": 1e30}",
    )
    .unwrap();
    let e = tok_err(&d);
    assert!(
        matches!(e, Error::Config { .. }) && e.to_string().contains("model_max_length"),
        "{e}"
    );

    let d = scratch_copy("tokenizer");
    std::fs::write(d.join("vocab.json"), "[1, 2]").unwrap();
    assert!(
        matches!(tok_err(&d), Error::Json { .. }),
        "vocab not an object"
    );

    let d = scratch_copy("tokenizer");
    std::fs::write(d.join("vocab.json"), "{\"a\": -1}").unwrap();
    assert!(matches!(tok_err(&d), Error::Json { .. }), "negative id");

    let d = scratch_copy("tokenizer");
    std::fs::remove_file(d.join("merges.txt")).unwrap();
    assert!(matches!(tok_err(&d), Error::Io { .. }), "missing merges");

    let d = scratch_copy("tokenizer");
    std::fs::write(
        d.join("merges.txt"),
        "#version: 0.2\ni n\nthree parts here\n",
    )
    .unwrap();
    let e = tok_err(&d);
    assert!(
        matches!(e, Error::Config { .. }) && e.to_string().contains("merge 2"),
        "{e}"
    );

    // A merge of symbols the vocabulary lacks.
    let d = scratch_copy("tokenizer");
    std::fs::write(d.join("merges.txt"), "#version: 0.2\nqqq zzz\n").unwrap();
    assert!(
        matches!(tok_err(&d), Error::Config { .. }),
        "merge outside the vocab"
    );

    let d = scratch_copy("tokenizer_json");
    std::fs::write(
        d.join("tokenizer.json"),
        "{\"model\": {\"type\": \"Unigram\"}}",
    )
    .unwrap();
    assert!(matches!(tok_err(&d), Error::Unsupported { .. }), "not BPE");

    let d = scratch_copy("tokenizer");
    std::fs::write(d.join("special_tokens_map.json"), "{\"pad_token\": 5}").unwrap();
    assert!(
        matches!(tok_err(&d), Error::Json { .. }),
        "pad token a number"
    );
}

#[test]
fn hostile_encoder_inputs_are_typed_errors() {
    let model = CLIPTextModel::from_pretrained(&dir().join("text_encoder"), None).unwrap();
    let vocab = model.config.vocab_size as u32;
    let e = model.forward(&Cpu, &[vec![1, vocab, 2]]).unwrap_err();
    assert!(
        matches!(&e, Error::Input { name, .. } if name == "input_ids"),
        "{e}"
    );
    assert!(e.to_string().contains(&vocab.to_string()), "{e}");
    let e = model.forward(&Cpu, &[vec![1; 78]]).unwrap_err();
    assert!(matches!(e, Error::Input { .. }), "too long: {e}");
    let e = model.forward(&Cpu, &[vec![1, 2], vec![1]]).unwrap_err();
    assert!(matches!(e, Error::Input { .. }), "ragged: {e}");
    assert!(matches!(
        model.forward(&Cpu, &[]).unwrap_err(),
        Error::Input { .. }
    ));

    let enc = load_encoder("tokenizer", "text_encoder");
    let e = encode_prompt_sd(&Cpu, &enc, &["a"], None, true, Some(4)).unwrap_err();
    assert!(
        matches!(&e, Error::Input { name, .. } if name == "clip_skip"),
        "{e}"
    );
    let e = encode_prompt_sd(&Cpu, &enc, &["a", "b"], Some(&["c"]), true, None).unwrap_err();
    assert!(
        matches!(&e, Error::Input { name, .. } if name == "negative_prompt"),
        "{e}"
    );
    assert!(matches!(
        encode_prompt_sd(&Cpu, &enc, &[], None, true, None),
        Err(Error::Input { .. })
    ));
    // SDXL without a projection encoder has no pooled embedding.
    let e = encode_prompt_sdxl(
        &Cpu,
        None,
        &enc,
        &SdxlPrompts {
            prompt: &["a"],
            ..SdxlPrompts::default()
        },
        true,
        None,
        true,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Config { .. }), "{e}");
}

#[test]
fn hostile_encoder_configs_and_weights_are_typed_errors() {
    let path = dir().join("text_encoder/config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let edit = |from: &str, to: &str| {
        assert!(text.contains(from));
        CLIPTextConfig::from_json(&text.replace(from, to), "config.json")
    };
    assert!(matches!(
        edit("\"quick_gelu\"", "\"relu\""),
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(
        edit("\"num_attention_heads\": 4", "\"num_attention_heads\": 5"),
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        edit("\"hidden_size\": 32", "\"hidden_size\": 0"),
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        edit("\"vocab_size\": 1514", "\"vocab_size\": 1e300"),
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        CLIPTextConfig::from_json("{", "x"),
        Err(Error::Json { .. })
    ));

    // A checkpoint with one weight of the wrong shape.
    let config = CLIPTextConfig::from_file(&path).unwrap();
    let mut tensors = Checkpoint::load(&[dir().join("text_encoder/model.safetensors")])
        .unwrap()
        .into_tensors();
    let name = "encoder.layers.1.mlp.fc1.weight";
    tensors.insert(name.into(), Tensor::randn([3, 5], 1));
    let e = CLIPTextModel::load(
        config.clone(),
        &mut Checkpoint::from_tensors(tensors.clone()),
    )
    .err()
    .unwrap();
    assert!(
        matches!(&e, Error::Weight { name: n, .. } if n == name),
        "{e}"
    );
    tensors.remove(name);
    let e = CLIPTextModel::load(config, &mut Checkpoint::from_tensors(tensors))
        .err()
        .unwrap();
    assert!(matches!(e, Error::MissingWeight(_)), "{e}");

    // A folder without weights.
    let d = common::scratch("clip-noweights");
    std::fs::copy(&path, d.join("config.json")).unwrap();
    assert!(matches!(
        CLIPTextModel::from_pretrained(&d, None).err().unwrap(),
        Error::NotFound { .. }
    ));
    // Weights stored only as a variant (the hub's `model.fp16.safetensors`).
    let d = scratch_copy("text_encoder_2");
    std::fs::rename(
        d.join("model.safetensors"),
        d.join("model.fp16.safetensors"),
    )
    .unwrap();
    let want = CLIPTextModel::from_pretrained(&dir().join("text_encoder_2"), None).unwrap();
    for variant in [None, Some("fp16")] {
        let m = CLIPTextModel::from_pretrained(&d, variant).unwrap();
        assert_eq!(m.token_embedding.data(), want.token_embedding.data());
    }
    let e = CLIPTextModel::from_pretrained(&d, Some("bf16"))
        .err()
        .unwrap();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");

    // A tokenizer whose ids the encoder cannot hold.
    let tok = CLIPTokenizer::from_pretrained(&dir().join("tokenizer")).unwrap();
    let mut model = CLIPTextModel::from_pretrained(&dir().join("text_encoder"), None).unwrap();
    model.config.vocab_size = 100;
    assert!(matches!(
        TextEncoder::new(tok, model).err().unwrap(),
        Error::Config { .. }
    ));
}
