//! CLIP's text encoders as transformers' `modeling_clip` defines them: `CLIPTextModel` (SD 1.x and
//! 2.x, SDXL's first encoder) and `CLIPTextModelWithProjection` (SDXL's second), loaded from a
//! pipeline's `text_encoder/` or `text_encoder_2/` folder by transformers' weight names and
//! `config.json` (`CLIPTextConfig`), run on any `Backend`.
//!
//! The graph: token plus position embeddings; per layer pre-LayerNorm causal self-attention and a
//! `fc1` → activation → `fc2` MLP, each added to its input; the final LayerNorm. The pooled output
//! is the final state at each row's end-of-text token (transformers' rule, including the
//! `eos_token_id == 2` configs of the original checkpoints, which take the row's largest id), and
//! `text_embeds` its projection. Embedding look-ups and the pooling gather run on the host; the
//! rest on the backend.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::backend::{Activation, Backend, Epilogue};
use crate::error::{Error, Result};
use crate::nn::{LayerCtx, LayerNorm, Linear};
use crate::tensor::Tensor;
use crate::weights::{Checkpoint, WeightSource};

/// transformers' `CLIPTextConfig`: the fields the text encoder's shapes and maths use.
#[derive(Clone, Debug, PartialEq)]
pub struct CLIPTextConfig {
    /// Token ids are below it (`token_embedding` rows).
    pub vocab_size: usize,
    /// The width of every token state.
    pub hidden_size: usize,
    /// The MLP's inner width.
    pub intermediate_size: usize,
    /// `text_projection`'s output width (used with the projection only).
    pub projection_dim: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads; they divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Longest token sequence (`position_embedding` rows).
    pub max_position_embeddings: usize,
    /// The MLP's activation: `quick_gelu` or `gelu`.
    pub hidden_act: Activation,
    /// Every LayerNorm's epsilon.
    pub layer_norm_eps: f32,
    /// The end-of-text id the pooled output is taken at (2: the legacy rule, see the module
    /// docs).
    pub eos_token_id: i64,
    /// Whether `architectures` names `CLIPTextModelWithProjection`.
    pub with_projection: bool,
}

impl CLIPTextConfig {
    /// Parses a text encoder's `config.json` text (`origin` names it in errors), with
    /// transformers' defaults for absent fields.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|e| Error::Json {
            origin: origin.to_string(),
            msg: e.to_string(),
        })?;
        let Value::Object(m) = v else {
            return Err(Error::Json {
                origin: origin.to_string(),
                msg: "not a JSON object".into(),
            });
        };
        let cfg_err = |msg: String| Error::Config {
            origin: origin.to_string(),
            msg,
        };
        let size = |key: &str, default: usize| -> Result<usize> {
            match m.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_u64()
                    .filter(|&n| n > 0 && n <= 1 << 24)
                    .map(|n| n as usize)
                    .ok_or_else(|| {
                        cfg_err(format!("{key} = {v}: must be an integer from 1 to 2^24"))
                    }),
            }
        };
        let hidden_act = match m.get("hidden_act") {
            None | Some(Value::Null) => Activation::QuickGelu,
            Some(Value::String(s)) if s == "quick_gelu" => Activation::QuickGelu,
            Some(Value::String(s)) if s == "gelu" => Activation::Gelu,
            Some(other) => {
                return Err(Error::Unsupported {
                    field: "hidden_act".into(),
                    value: other.to_string(),
                })
            }
        };
        let layer_norm_eps = match m.get("layer_norm_eps") {
            None | Some(Value::Null) => 1e-5,
            Some(v) => v
                .as_f64()
                .filter(|e| e.is_finite() && *e > 0.0)
                .ok_or_else(|| cfg_err(format!("layer_norm_eps = {v}: must be positive")))?
                as f32,
        };
        let eos_token_id = match m.get("eos_token_id") {
            None | Some(Value::Null) => 49407,
            Some(v) => v
                .as_i64()
                .ok_or_else(|| cfg_err(format!("eos_token_id = {v}: must be an integer")))?,
        };
        let with_projection = m
            .get("architectures")
            .and_then(Value::as_array)
            .is_some_and(|a| {
                a.iter()
                    .any(|s| s.as_str() == Some("CLIPTextModelWithProjection"))
            });
        let c = CLIPTextConfig {
            vocab_size: size("vocab_size", 49408)?,
            hidden_size: size("hidden_size", 512)?,
            intermediate_size: size("intermediate_size", 2048)?,
            projection_dim: size("projection_dim", 512)?,
            num_hidden_layers: size("num_hidden_layers", 12)?,
            num_attention_heads: size("num_attention_heads", 8)?,
            max_position_embeddings: size("max_position_embeddings", 77)?,
            hidden_act,
            layer_norm_eps,
            eos_token_id,
            with_projection,
        };
        if !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(cfg_err(format!(
                "num_attention_heads = {} does not divide hidden_size = {}",
                c.num_attention_heads, c.hidden_size
            )));
        }
        // Every weight's element count must be addressable before any shape is compared.
        for (what, a, b) in [
            ("vocab_size × hidden_size", c.vocab_size, c.hidden_size),
            (
                "hidden_size × intermediate_size",
                c.hidden_size,
                c.intermediate_size,
            ),
            (
                "max_position_embeddings × hidden_size",
                c.max_position_embeddings,
                c.hidden_size,
            ),
            (
                "projection_dim × hidden_size",
                c.projection_dim,
                c.hidden_size,
            ),
        ] {
            if a.checked_mul(b).is_none_or(|n| n > 1 << 36) {
                return Err(cfg_err(format!("{what} = {a} × {b} is too large")));
            }
        }
        Ok(c)
    }

    /// Reads and parses `path` (a text encoder's `config.json`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, &path.display().to_string())
    }
}

/// transformers' `CLIPAttention`: biased q, k, v and out projections around causal multi-head
/// attention scaled by `1/√head_dim`.
pub struct CLIPAttention {
    /// `q_proj`.
    pub q_proj: Linear,
    /// `k_proj`.
    pub k_proj: Linear,
    /// `v_proj`.
    pub v_proj: Linear,
    /// `out_proj`.
    pub out_proj: Linear,
    /// Attention heads.
    pub heads: usize,
}

/// transformers' `CLIPMLP`: `fc2(act(fc1(x)))`.
pub struct CLIPMLP {
    /// `fc1`: hidden → intermediate.
    pub fc1: Linear,
    /// `fc2`: intermediate → hidden.
    pub fc2: Linear,
    /// The activation between them.
    pub act: Activation,
}

/// transformers' `CLIPEncoderLayer`: `x + attn(ln1(x))`, then `h + mlp(ln2(h))`.
pub struct CLIPEncoderLayer {
    /// `layer_norm1`.
    pub layer_norm1: LayerNorm,
    /// `self_attn`.
    pub self_attn: CLIPAttention,
    /// `layer_norm2`.
    pub layer_norm2: LayerNorm,
    /// `mlp`.
    pub mlp: CLIPMLP,
}

impl CLIPEncoderLayer {
    fn load(ws: &mut dyn WeightSource, prefix: &str, c: &CLIPTextConfig) -> Result<Self> {
        let (d, i) = (c.hidden_size, c.intermediate_size);
        let p = |n: &str| format!("{prefix}.{n}");
        Ok(CLIPEncoderLayer {
            layer_norm1: LayerNorm::load(ws, &p("layer_norm1"), d, c.layer_norm_eps)?,
            self_attn: CLIPAttention {
                q_proj: Linear::load(ws, &p("self_attn.q_proj"), d, d, true)?,
                k_proj: Linear::load(ws, &p("self_attn.k_proj"), d, d, true)?,
                v_proj: Linear::load(ws, &p("self_attn.v_proj"), d, d, true)?,
                out_proj: Linear::load(ws, &p("self_attn.out_proj"), d, d, true)?,
                heads: c.num_attention_heads,
            },
            layer_norm2: LayerNorm::load(ws, &p("layer_norm2"), d, c.layer_norm_eps)?,
            mlp: CLIPMLP {
                fc1: Linear::load(ws, &p("mlp.fc1"), d, i, true)?,
                fc2: Linear::load(ws, &p("mlp.fc2"), i, d, true)?,
                act: c.hidden_act,
            },
        })
    }

    /// `x`: `[B, N, hidden]` → the same shape.
    pub fn forward<B: Backend>(&self, be: &B, x: &B::Tensor) -> Result<B::Tensor> {
        let lc = LayerCtx::default();
        let none = Epilogue::default;
        let a = &self.self_attn;
        let n1 = be.layer_norm(self.layer_norm1.params(), x)?;
        let q = be.linear(a.q_proj.params(lc), &n1, none())?;
        let k = be.linear(a.k_proj.params(lc), &n1, none())?;
        let v = be.linear(a.v_proj.params(lc), &n1, none())?;
        let head_dim = a.q_proj.weight.shape()[0] / a.heads;
        let o = be.causal_attention(&q, &k, &v, a.heads, 1.0 / (head_dim as f32).sqrt())?;
        let h = be.linear(a.out_proj.params(lc), &o, Epilogue::residual(x, 1.0))?;
        let n2 = be.layer_norm(self.layer_norm2.params(), &h)?;
        let f = be.activation(
            &be.linear(self.mlp.fc1.params(lc), &n2, none())?,
            self.mlp.act,
        )?;
        be.linear(self.mlp.fc2.params(lc), &f, Epilogue::residual(&h, 1.0))
    }
}

/// What a text encoder's forward returns (host tensors, f32).
#[derive(Clone, Debug)]
pub struct CLIPTextOutput {
    /// `[B, N, hidden]`, after `final_layer_norm`.
    pub last_hidden_state: Tensor,
    /// `[B, hidden]`: `last_hidden_state` at each row's end-of-text token.
    pub pooler_output: Tensor,
    /// `num_hidden_layers + 1` tensors `[B, N, hidden]`: the embeddings, then each layer's output
    /// (none of them final-normed), as transformers' `output_hidden_states=True` gives them.
    pub hidden_states: Vec<Tensor>,
    /// `[B, projection_dim]`: `text_projection(pooler_output)`, for a model with the projection.
    pub text_embeds: Option<Tensor>,
}

/// transformers' `CLIPTextModel`, or with `text_projection` `CLIPTextModelWithProjection`. The
/// weight names below are the hub's; the same names without `text_model.` (how transformers 5
/// saves a CLIPTextModel) load too.
pub struct CLIPTextModel {
    /// The model's config.
    pub config: CLIPTextConfig,
    /// `text_model.embeddings.token_embedding.weight`, `[vocab_size, hidden]`.
    pub token_embedding: Tensor,
    /// `text_model.embeddings.position_embedding.weight`, `[max_position_embeddings, hidden]`.
    pub position_embedding: Tensor,
    /// `text_model.encoder.layers`.
    pub layers: Vec<CLIPEncoderLayer>,
    /// `text_model.final_layer_norm`.
    pub final_layer_norm: LayerNorm,
    /// `text_projection` (no bias), `hidden` → `projection_dim`, with the projection only.
    pub text_projection: Option<Linear>,
}

/// transformers' weight files of a model folder: one file, or the shards of its index.
fn weight_files(dir: &Path, variant: Option<&str>) -> Result<Vec<PathBuf>> {
    let (single, index) = match variant {
        None => (
            "model.safetensors".to_string(),
            "model.safetensors.index.json".to_string(),
        ),
        Some(v) => (
            format!("model.{v}.safetensors"),
            format!("model.safetensors.index.{v}.json"),
        ),
    };
    if dir.join(&single).is_file() {
        return Ok(vec![dir.join(single)]);
    }
    let ip = dir.join(&index);
    if variant.is_none() && !ip.is_file() {
        // Without full-precision weights, the folder's one variant (as diffusers loads one).
        let found: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter_map(|n| {
                let v = n.strip_prefix("model.")?.strip_suffix(".safetensors")?;
                (!v.is_empty() && !v.contains('.')).then(|| v.to_string())
            })
            .collect();
        if let [v] = &found[..] {
            return weight_files(dir, Some(v));
        }
    }
    if !ip.is_file() {
        return Err(Error::not_found(
            dir.join(&single).display().to_string(),
            format!(
                "{}: no {single} nor {index} in the text encoder folder",
                dir.display()
            ),
        ));
    }
    let text = std::fs::read_to_string(&ip).map_err(|e| Error::io(&ip, e))?;
    let bad = |msg: &str| Error::Json {
        origin: ip.display().to_string(),
        msg: msg.to_string(),
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no `weight_map` object"))?;
    let mut files = Vec::new();
    for f in map.values() {
        let f = f
            .as_str()
            .ok_or_else(|| bad("a `weight_map` value is not a file name"))?;
        if f.contains('/') || f.contains('\\') || f.starts_with('.') {
            return Err(bad("a `weight_map` file name leaves the folder"));
        }
        let p = dir.join(f);
        if !files.contains(&p) {
            files.push(p);
        }
    }
    Ok(files)
}

impl CLIPTextModel {
    /// Loads a text encoder folder (`config.json` and `model.safetensors`, or its shards;
    /// `variant` reads `model.<variant>.safetensors`, and without one a folder holding only
    /// `model.<v>.safetensors` reads that). The projection is loaded when the config's
    /// `architectures` names `CLIPTextModelWithProjection`. 16-bit weights are widened to f32.
    pub fn from_pretrained(dir: &Path, variant: Option<&str>) -> Result<Self> {
        let config = CLIPTextConfig::from_file(&dir.join("config.json"))?;
        let mut ckpt = Checkpoint::load(&weight_files(dir, variant)?)?;
        Self::load(config, &mut ckpt)
    }

    /// Builds the model of `config`, taking every parameter from `ws` by transformers' names.
    pub fn load(config: CLIPTextConfig, ws: &mut dyn WeightSource) -> Result<Self> {
        let c = &config;
        let d = c.hidden_size;
        // The hub's checkpoints name the transformer `text_model.*`; transformers 5 saves a
        // CLIPTextModel without that prefix (it reads both).
        let unprefixed = !ws.has("text_model.embeddings.token_embedding.weight")
            && ws.has("embeddings.token_embedding.weight");
        let pre = if unprefixed { "" } else { "text_model." };
        let token_embedding = ws.take(
            &format!("{pre}embeddings.token_embedding.weight"),
            &[c.vocab_size, d],
        )?;
        let position_embedding = ws.take(
            &format!("{pre}embeddings.position_embedding.weight"),
            &[c.max_position_embeddings, d],
        )?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| CLIPEncoderLayer::load(ws, &format!("{pre}encoder.layers.{i}"), c))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm =
            LayerNorm::load(ws, &format!("{pre}final_layer_norm"), d, c.layer_norm_eps)?;
        let text_projection = if c.with_projection {
            Some(Linear::load(
                ws,
                "text_projection",
                d,
                c.projection_dim,
                false,
            )?)
        } else {
            None
        };
        Ok(CLIPTextModel {
            config,
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            text_projection,
        })
    }

    /// The rows' token and position embeddings, `[B, N, hidden]`; rows of unequal or bad length
    /// and ids outside the vocabulary are `Error::Input` naming `input_ids`.
    fn embed(&self, input_ids: &[Vec<u32>]) -> Result<Tensor> {
        let c = &self.config;
        let n = input_ids.first().map_or(0, Vec::len);
        if input_ids.is_empty() || n == 0 || n > c.max_position_embeddings {
            return Err(Error::input(
                "input_ids",
                format!(
                    "{} rows of {n} ids: need at least one row of 1 to {} ids",
                    input_ids.len(),
                    c.max_position_embeddings
                ),
            ));
        }
        let d = c.hidden_size;
        let len = crate::tensor::numel_of(&[input_ids.len(), n, d], "text embeddings")?;
        let mut out = crate::tensor::try_vec_with_capacity(len, "text embeddings")?;
        for (r, row) in input_ids.iter().enumerate() {
            if row.len() != n {
                return Err(Error::input(
                    "input_ids",
                    format!("row {r} has {} ids, row 0 has {n}", row.len()),
                ));
            }
            for (pos, &id) in row.iter().enumerate() {
                let id = id as usize;
                if id >= c.vocab_size {
                    return Err(Error::input(
                        "input_ids",
                        format!(
                            "row {r}, position {pos}: id {id} is outside the vocabulary (0..{})",
                            c.vocab_size
                        ),
                    ));
                }
                let t = &self.token_embedding.data()[id * d..][..d];
                let p = &self.position_embedding.data()[pos * d..][..d];
                out.extend(t.iter().zip(p).map(|(a, b)| a + b));
            }
        }
        Tensor::new(vec![input_ids.len(), n, d], out)
    }

    /// Each row's pooling position: transformers' rule (see the module docs).
    fn eos_positions(&self, input_ids: &[Vec<u32>]) -> Vec<usize> {
        let first_max = |row: &Vec<u32>| {
            let m = row.iter().copied().max().unwrap_or(0);
            row.iter().position(|&x| x == m).unwrap_or(0)
        };
        input_ids
            .iter()
            .map(|row| {
                if self.config.eos_token_id == 2 {
                    first_max(row)
                } else {
                    // argmax of an all-false row is 0, as torch's is.
                    row.iter()
                        .position(|&x| i64::from(x) == self.config.eos_token_id)
                        .unwrap_or(0)
                }
            })
            .collect()
    }

    /// The encoder on `be` for rows of token ids (as `CLIPTokenizer::encode` gives them):
    /// transformers' `model(input_ids, output_hidden_states=True)` with no attention mask, as
    /// diffusers calls it.
    pub fn forward<B: Backend>(&self, be: &B, input_ids: &[Vec<u32>]) -> Result<CLIPTextOutput> {
        let emb = self.embed(input_ids)?;
        let mut h = be.upload(&emb)?;
        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        hidden_states.push(emb);
        for layer in &self.layers {
            h = layer.forward(be, &h)?;
            hidden_states.push(be.download(&h)?);
        }
        let last = be.download(&be.layer_norm(self.final_layer_norm.params(), &h)?)?;
        let d = self.config.hidden_size;
        let n = last.shape()[1];
        let mut pooled = Vec::with_capacity(input_ids.len() * d);
        for (r, pos) in self.eos_positions(input_ids).into_iter().enumerate() {
            pooled.extend_from_slice(&last.data()[(r * n + pos) * d..][..d]);
        }
        let pooler_output = Tensor::new(vec![input_ids.len(), d], pooled)?;
        let text_embeds = match &self.text_projection {
            Some(p) => {
                let x = be.upload(&pooler_output)?;
                Some(be.download(&be.linear(
                    p.params(LayerCtx::default()),
                    &x,
                    Epilogue::default(),
                )?)?)
            }
            None => None,
        };
        Ok(CLIPTextOutput {
            last_hidden_state: last,
            pooler_output,
            hidden_states,
            text_embeds,
        })
    }

    /// `final_layer_norm` of `x` (`[.., hidden]`), on the CPU: what SD's `clip_skip` applies to
    /// an earlier hidden state.
    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        self.final_layer_norm.try_forward(x)
    }
}
