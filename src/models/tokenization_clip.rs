//! CLIP's tokenizer as transformers' `CLIPTokenizer` (the tokenizers-backed one of transformers 5,
//! in its CLIP tokenization module) builds it from a pipeline's `tokenizer/` folder: byte-level
//! BPE with the `</w>` end-of-word suffix, NFC + whitespace-collapsing + lowercasing normalizer,
//! CLIP's split pattern, `<|startoftext|>` … `<|endoftext|>` around every prompt, then truncation
//! and padding to `model_max_length`, as diffusers' `encode_prompt` asks for them.
//!
//! The pipeline is handed to the `tokenizers` crate as the same JSON that transformers gives the
//! Python binding of that crate, so both run one implementation. The special tokens are resolved
//! the way transformers resolves them: `special_tokens_map.json` over `tokenizer_config.json`, an
//! `added_tokens_decoder` entry over either, a plain string being a non-normalized token and an
//! `AddedToken` dict keeping its flags. One consequence is kept on purpose: where the pad token is
//! `!` (SD 2.x, SDXL's second tokenizer) it is a special token, so a `!` in a prompt is id 0, not
//! the `!</w>` a word would give, exactly as transformers tokenizes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

/// CLIP's pre-tokenizer pattern (contractions, letter runs, single digits, other runs).
const SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// One special token as a config gives it: its text and `AddedToken` flags.
#[derive(Clone, Debug, PartialEq)]
struct Special {
    content: String,
    normalized: bool,
    lstrip: bool,
    rstrip: bool,
    single_word: bool,
}

impl Special {
    fn plain(content: &str) -> Self {
        Special {
            content: content.to_string(),
            normalized: false,
            lstrip: false,
            rstrip: false,
            single_word: false,
        }
    }

    /// A string (not normalized, as transformers makes it) or an `AddedToken` dict; None for
    /// `null`.
    fn parse(v: &Value, origin: &str, key: &str) -> Result<Option<Self>> {
        let flag = |m: &Map<String, Value>, k: &str, default: bool| match m.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(Error::Json {
                origin: origin.to_string(),
                msg: format!("`{key}.{k}` must be true or false, got {other}"),
            }),
        };
        match v {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(Special::plain(s))),
            Value::Object(m) => match m.get("content") {
                Some(Value::String(c)) => Ok(Some(Special {
                    content: c.clone(),
                    normalized: flag(m, "normalized", true)?,
                    lstrip: flag(m, "lstrip", false)?,
                    rstrip: flag(m, "rstrip", false)?,
                    single_word: flag(m, "single_word", false)?,
                })),
                _ => Err(Error::Json {
                    origin: origin.to_string(),
                    msg: format!("`{key}` has no string `content`"),
                }),
            },
            other => Err(Error::Json {
                origin: origin.to_string(),
                msg: format!("`{key}` must be a string or an AddedToken object, got {other}"),
            }),
        }
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

fn read_json(path: &Path) -> Result<Value> {
    serde_json::from_str(&read_text(path)?).map_err(|e| Error::Json {
        origin: path.display().to_string(),
        msg: e.to_string(),
    })
}

/// `vocab.json`'s token → id map (ids must be integers that fit u32).
fn parse_vocab(v: &Value, origin: &str) -> Result<BTreeMap<String, u32>> {
    let bad = |msg: String| Error::Json {
        origin: origin.to_string(),
        msg,
    };
    let Value::Object(m) = v else {
        return Err(bad("the vocabulary must be an object of token → id".into()));
    };
    m.iter()
        .map(|(t, id)| {
            let id = id
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| bad(format!("token {t:?} has id {id}, not an integer in u32")))?;
            Ok((t.clone(), id))
        })
        .collect()
}

/// `merges.txt` as the tokenizers crate reads it: `#version` lines skipped, every other line
/// exactly two symbols separated by one space.
fn parse_merges_txt(text: &str, origin: &str) -> Result<Vec<(String, String)>> {
    text.lines()
        .filter(|l| !l.starts_with("#version"))
        .enumerate()
        .map(|(i, line)| match line.split(' ').collect::<Vec<_>>()[..] {
            [a, b] => Ok((a.to_string(), b.to_string())),
            _ => Err(Error::Config {
                origin: origin.to_string(),
                msg: format!(
                    "merge {} is {line:?}, not two symbols separated by one space",
                    i + 1
                ),
            }),
        })
        .collect()
}

/// `tokenizer.json`'s BPE vocabulary and merges (what transformers takes from it before
/// rebuilding CLIP's pipeline around them).
fn from_tokenizer_json(v: &Value, origin: &str) -> Result<(Value, Vec<(String, String)>)> {
    let bad = |msg: &str| Error::Json {
        origin: origin.to_string(),
        msg: msg.to_string(),
    };
    let model = v.get("model").ok_or_else(|| bad("no `model`"))?;
    if model
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| t != "BPE")
    {
        return Err(Error::Unsupported {
            field: format!("{origin}: model.type"),
            value: model["type"].to_string(),
        });
    }
    let vocab = match model.get("vocab") {
        Some(Value::Object(m)) => Value::Object(m.clone()),
        Some(Value::Array(list)) => {
            let mut m = Map::new();
            for (i, t) in list.iter().enumerate() {
                let t = match t {
                    Value::String(s) => s.clone(),
                    Value::Array(p) if p.first().is_some_and(Value::is_string) => {
                        p[0].as_str().expect("checked").to_string()
                    }
                    _ => return Err(bad("a `model.vocab` entry is not a token")),
                };
                m.insert(t, json!(i));
            }
            Value::Object(m)
        }
        _ => return Err(bad("no `model.vocab`")),
    };
    let merges = match model.get("merges") {
        Some(Value::Array(list)) => list
            .iter()
            .map(|m| match m {
                Value::String(s) => match s.split(' ').collect::<Vec<_>>()[..] {
                    [a, b] => Ok((a.to_string(), b.to_string())),
                    _ => Err(bad("a `model.merges` string is not two symbols")),
                },
                Value::Array(p) => match &p[..] {
                    [Value::String(a), Value::String(b)] => Ok((a.clone(), b.clone())),
                    _ => Err(bad("a `model.merges` pair is not two strings")),
                },
                _ => Err(bad("a `model.merges` entry is neither a string nor a pair")),
            })
            .collect::<Result<Vec<_>>>()?,
        _ => return Err(bad("no `model.merges` list")),
    };
    Ok((vocab, merges))
}

/// transformers' `CLIPTokenizer`: prompts to the fixed-length id rows CLIP's text encoders take.
pub struct CLIPTokenizer {
    tokenizer: tokenizers::Tokenizer,
    /// `model_max_length`: every encoded row has exactly this many ids (77 in every SD model).
    pub model_max_length: usize,
    /// `<|startoftext|>`'s id (`bos_token`).
    pub bos_token_id: u32,
    /// `<|endoftext|>`'s id (`eos_token`).
    pub eos_token_id: u32,
    /// The padding id (`pad_token`: `<|endoftext|>` in SD 1.x, `!` in SD 2.x and SDXL's second
    /// tokenizer).
    pub pad_token_id: u32,
    /// The vocabulary's size including added tokens: every id is below it.
    pub vocab_size: usize,
}

impl std::fmt::Debug for CLIPTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CLIPTokenizer")
            .field("model_max_length", &self.model_max_length)
            .field("bos_token_id", &self.bos_token_id)
            .field("eos_token_id", &self.eos_token_id)
            .field("pad_token_id", &self.pad_token_id)
            .field("vocab_size", &self.vocab_size)
            .finish()
    }
}

impl CLIPTokenizer {
    /// Loads a tokenizer folder (a pipeline's `tokenizer/` or `tokenizer_2/`):
    /// `tokenizer_config.json` (required: it gives `model_max_length`), optional
    /// `special_tokens_map.json`, and the BPE from `tokenizer.json` if present, else from
    /// `vocab.json` and `merges.txt`. Missing or malformed files are `Error::Io`, `Error::Json` or
    /// `Error::Config` naming the file.
    pub fn from_pretrained(dir: &Path) -> Result<Self> {
        let origin = |p: &PathBuf| p.display().to_string();
        let config_path = dir.join("tokenizer_config.json");
        let config = read_json(&config_path)?;
        let Value::Object(config) = config else {
            return Err(Error::Json {
                origin: origin(&config_path),
                msg: "not a JSON object".into(),
            });
        };
        let map_path = dir.join("special_tokens_map.json");
        let map = if map_path.is_file() {
            match read_json(&map_path)? {
                Value::Object(m) => m,
                _ => {
                    return Err(Error::Json {
                        origin: origin(&map_path),
                        msg: "not a JSON object".into(),
                    })
                }
            }
        } else {
            Map::new()
        };
        let json_path = dir.join("tokenizer.json");
        let (vocab, merges) = if json_path.is_file() {
            let (vocab, merges) =
                from_tokenizer_json(&read_json(&json_path)?, &origin(&json_path))?;
            (parse_vocab(&vocab, &origin(&json_path))?, merges)
        } else {
            let vp = dir.join("vocab.json");
            let mp = dir.join("merges.txt");
            let vocab = parse_vocab(&read_json(&vp)?, &origin(&vp))?;
            (vocab, parse_merges_txt(&read_text(&mp)?, &origin(&mp))?)
        };
        Self::build(vocab, merges, &config, &map, &origin(&config_path))
    }

    fn build(
        vocab: BTreeMap<String, u32>,
        merges: Vec<(String, String)>,
        config: &Map<String, Value>,
        map: &Map<String, Value>,
        origin: &str,
    ) -> Result<Self> {
        let cfg_err = |msg: String| Error::Config {
            origin: origin.to_string(),
            msg,
        };
        let model_max_length = match config.get("model_max_length") {
            Some(v) => v
                .as_u64()
                .filter(|&n| (2..=1 << 20).contains(&n))
                .ok_or_else(|| {
                    cfg_err(format!(
                        "model_max_length = {v}: must be an integer from 2 (room for \
                         <|startoftext|> and <|endoftext|>) to 2^20"
                    ))
                })? as usize,
            None => return Err(cfg_err("no model_max_length".into())),
        };
        // Special tokens in the order CLIPTokenizer registers them; a later one with the same text
        // replaces an earlier one's flags, as the tokenizers crate's add_special_tokens does.
        let defaults = [
            ("unk_token", "<|endoftext|>"),
            ("bos_token", "<|startoftext|>"),
            ("eos_token", "<|endoftext|>"),
            ("pad_token", "<|endoftext|>"),
        ];
        let mut roles = BTreeMap::new();
        for (key, default) in defaults {
            let given = match map.get(key) {
                Some(v) if !v.is_null() => Special::parse(v, origin, key)?,
                _ => match config.get(key) {
                    Some(v) => Special::parse(v, origin, key)?,
                    None => None,
                },
            };
            roles.insert(key, given.unwrap_or_else(|| Special::plain(default)));
        }
        // `added_tokens_decoder` fixes id and flags of the tokens it lists.
        let mut added: Vec<(u32, Special)> = Vec::new();
        if let Some(dec) = config.get("added_tokens_decoder") {
            let Value::Object(dec) = dec else {
                return Err(cfg_err("added_tokens_decoder is not an object".into()));
            };
            for (id, tok) in dec {
                let id: u32 = id.parse().map_err(|_| {
                    cfg_err(format!("added_tokens_decoder key {id:?} is not an id"))
                })?;
                let t = Special::parse(tok, origin, "added_tokens_decoder")?
                    .ok_or_else(|| cfg_err(format!("added_tokens_decoder[{id}] is null")))?;
                added.push((id, t));
            }
            added.sort_by_key(|(id, _)| *id);
        }
        let fixed: Vec<String> = added.iter().map(|(_, a)| a.content.clone()).collect();
        let mut next_id = vocab.values().max().map_or(0, |&m| m + 1);
        for (key, _) in defaults {
            let t = roles[key].clone();
            if fixed.contains(&t.content) {
                continue;
            }
            let id = match vocab.get(&t.content) {
                Some(&id) => id,
                None => {
                    next_id += 1;
                    next_id - 1
                }
            };
            match added.iter_mut().find(|(i, _)| *i == id) {
                Some(slot) => slot.1 = t,
                None => added.push((id, t)),
            }
        }
        let id_of = |key: &str| {
            let c = &roles[key].content;
            added
                .iter()
                .find(|(_, a)| &a.content == c)
                .map(|(id, _)| *id)
                .expect("every role was added")
        };
        let (bos, eos, pad) = (id_of("bos_token"), id_of("eos_token"), id_of("pad_token"));
        let vocab_size = added
            .iter()
            .map(|(id, _)| *id as usize + 1)
            .chain(vocab.values().map(|&id| id as usize + 1))
            .max()
            .unwrap_or(0);
        let added_json: Vec<Value> = added
            .iter()
            .map(|(id, t)| {
                json!({"id": id, "content": t.content, "single_word": t.single_word,
                       "lstrip": t.lstrip, "rstrip": t.rstrip, "normalized": t.normalized,
                       "special": true})
            })
            .collect();
        let spec = json!({
            "version": "1.0",
            "truncation": {"direction": "Right", "max_length": model_max_length,
                           "strategy": "LongestFirst", "stride": 0},
            "padding": {"strategy": {"Fixed": model_max_length}, "direction": "Right",
                        "pad_to_multiple_of": null, "pad_id": pad, "pad_type_id": 0,
                        "pad_token": roles["pad_token"].content},
            "added_tokens": added_json,
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
                {"type": "Lowercase"}]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": SPLIT_PATTERN}, "behavior": "Removed",
                 "invert": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                 "use_regex": true}]},
            "post_processor": {"type": "RobertaProcessing",
                               "sep": [roles["eos_token"].content, eos],
                               "cls": [roles["bos_token"].content, bos],
                               "trim_offsets": false, "add_prefix_space": false},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                        "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": roles["unk_token"].content,
                      "continuing_subword_prefix": "", "end_of_word_suffix": "</w>",
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab,
                      "merges": merges.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>()},
        });
        let tokenizer = tokenizers::Tokenizer::from_bytes(spec.to_string().as_bytes())
            .map_err(|e| cfg_err(format!("the BPE vocabulary and merges do not fit: {e}")))?;
        Ok(CLIPTokenizer {
            tokenizer,
            model_max_length,
            bos_token_id: bos,
            eos_token_id: eos,
            pad_token_id: pad,
            vocab_size,
        })
    }

    /// `prompt`'s ids as `tokenizer(prompt, padding="max_length", max_length=model_max_length,
    /// truncation=True)` gives them: `<|startoftext|>`, at most `model_max_length - 2` tokens,
    /// `<|endoftext|>`, then padding, `model_max_length` ids in all.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| Error::input("prompt", format!("cannot be tokenized: {e}")))?;
        let ids = enc.get_ids().to_vec();
        if ids.len() != self.model_max_length {
            return Err(Error::input(
                "prompt",
                format!(
                    "tokenized to {} ids, not model_max_length = {}",
                    ids.len(),
                    self.model_max_length
                ),
            ));
        }
        Ok(ids)
    }

    /// `encode` of every prompt.
    pub fn encode_batch(&self, prompts: &[&str]) -> Result<Vec<Vec<u32>>> {
        prompts.iter().map(|p| self.encode(p)).collect()
    }
}
