"""Golden outputs for CLIP's tokenizer, text encoders and the pipelines' encode_prompt
(tests/clip.rs), from transformers' CLIPTokenizer / CLIPTextModel / CLIPTextModelWithProjection and
diffusers' StableDiffusionPipeline.encode_prompt / StableDiffusionXLPipeline.encode_prompt.

The tokenizers get the original CLIP BPE merges (a prefix of them, to keep the fixtures small; the
vocabulary is built from them the way CLIP builds it: 256 byte symbols, the same with `</w>`, one
token per merge, then the two special tokens). The merges come from open_clip_torch's
`bpe_simple_vocab_16e6.txt.gz` (PyPI, no hub access): pass `--bpe PATH` or have open_clip_torch
installed (`pip download open_clip_torch==3.3.0 --no-deps` and unzip it is enough).

Writes tests/fixtures/clip/: `tokenizer/` (SD 1.x layout: AddedToken dicts, pad `<|endoftext|>`,
special_tokens_map.json), `tokenizer_2/` (SDXL's second tokenizer: pad `!`), `tokenizer_json/`
(transformers' own save_pretrained: tokenizer.json), `text_encoder/` (CLIPTextModel, quick_gelu,
the legacy eos_token_id 2, f32), `text_encoder_2/` (CLIPTextModelWithProjection, gelu, real
eos_token_id, stored f16), `text_encoder_sd2/` (CLIPTextModel, gelu, f16), and `goldens.json` (token
ids) plus `goldens.safetensors` (encoder and encode_prompt outputs, computed in float64 from the
stored weights). Re-runnable: the same seed gives the same files.

Usage: /tmp/venv/bin/python tools/gen_clip_goldens.py [--bpe bpe_simple_vocab_16e6.txt.gz]
"""

import argparse
import gzip
import importlib.util
import json
import os
import shutil
import types

import torch
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from golden_common import FIXTURES, perturb_

OUT = os.path.join(FIXTURES, "clip")
NUM_MERGES = 1000

CORPUS = [
    "a photograph of an astronaut riding a horse",
    "A Photo of a CAT, 4k!!",
    "",
    " ",
    "hello!",
    "don't stop; it's the dog's ball, isn't it? we'll see, they'd say, I'm sure you've",
    "  many   spaces\tand\ttabs\nand newlines  ",
    "numbers 12345 and 3.14159, 1,000,000 and 2nd place",
    "héllo wörld, café naïve résumé Ærøskøbing",
    "東京タワーの夜景, 高清",
    "한국어 텍스트와 中文 混合",
    "emoji 🙂🚀🔥 and flags 🇯🇵 with zwj 👩‍💻",
    "e\u0301 combining accents (NFC: é)",
    "symbols @#$%^&*()_+-=[]{}|;:'\",.<>/?`~ and ---- ....",
    "<|startoftext|>special<|endoftext|> tokens <|ENDOFTEXT|> in text",
    "x<|endoftext|>y",
    "Ünïcödé ÇAPS ΣΊΣΥΦΟΣ Ελληνικά русский текст",
    "masterpiece, best quality, (ultra detailed:1.2), [bad hands], {artstation}",
    " ".join(f"word{i}" for i in range(120)),
    "an extremely long prompt " * 30,
]


def bpe_path(arg):
    if arg:
        return arg
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pass --bpe PATH to bpe_simple_vocab_16e6.txt.gz (from open_clip_torch on PyPI)")
    return os.path.join(list(spec.submodule_search_locations)[0], "bpe_simple_vocab_16e6.txt.gz")


def bytes_to_unicode():
    """CLIP's (and GPT-2's) byte-to-symbol table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def added(content):
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def write_tokenizers(bpe):
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = lines[1 : 1 + NUM_MERGES]
    syms = bytes_to_unicode()
    vocab = syms + [s + "</w>" for s in syms] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(vocab)}
    for name in ["tokenizer", "tokenizer_2"]:
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
        with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    # SD 1.x's files as the hub has them: AddedToken dicts, pad as a plain string.
    sd1 = {"bos_token": added("<|startoftext|>"), "eos_token": added("<|endoftext|>"), "pad_token": "<|endoftext|>", "unk_token": added("<|endoftext|>")}
    cfg = {"add_prefix_space": False, "do_lower_case": True, "errors": "replace", "model_max_length": 77, "tokenizer_class": "CLIPTokenizer", **sd1}
    with open(os.path.join(OUT, "tokenizer", "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(OUT, "tokenizer", "special_tokens_map.json"), "w") as f:
        json.dump(sd1, f, indent=2)
    # SDXL's tokenizer_2: pad `!`, plain strings, new-style added_tokens_decoder.
    cfg2 = {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(vocab["!"]): {"content": "!", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True},
            str(vocab["<|startoftext|>"]): {"content": "<|startoftext|>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False, "special": True},
            str(vocab["<|endoftext|>"]): {"content": "<|endoftext|>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False, "special": True},
        },
        "bos_token": "<|startoftext|>",
        "do_lower_case": True,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": "!",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": "<|endoftext|>",
    }
    with open(os.path.join(OUT, "tokenizer_2", "tokenizer_config.json"), "w") as f:
        json.dump(cfg2, f, indent=2)
    d = os.path.join(OUT, "tokenizer_json")
    shutil.rmtree(d, ignore_errors=True)
    CLIPTokenizer.from_pretrained(os.path.join(OUT, "tokenizer")).save_pretrained(d)
    return len(vocab)


def make_encoder(name, vocab_size, seed, hidden, layers, heads, act, eos, projection, dtype):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden + 8,
        projection_dim=projection or 512,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        layer_norm_eps=1e-5,
        bos_token_id=vocab_size - 2,
        eos_token_id=eos,
        pad_token_id=1,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    model = cls(cfg).eval()
    perturb_(model)
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    model.to(dtype).save_pretrained(d, safe_serialization=True)
    # The reference computes in float64 from exactly the stored weights.
    return cls.from_pretrained(d, torch_dtype=torch.float64).eval()


class Dummy(types.SimpleNamespace):
    """Just what encode_prompt reads of a pipeline."""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bpe")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    vocab_size = write_tokenizers(bpe_path(args.bpe))
    eos = vocab_size - 1

    goldens = {"corpus": CORPUS, "ids": {}}
    toks = {}
    for name in ["tokenizer", "tokenizer_2", "tokenizer_json"]:
        tok = CLIPTokenizer.from_pretrained(os.path.join(OUT, name))
        toks[name] = tok
        ids = tok(CORPUS, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
        goldens["ids"][name] = ids
        goldens.setdefault("pad_token_id", {})[name] = tok.pad_token_id
    assert goldens["ids"]["tokenizer"] == goldens["ids"]["tokenizer_json"]
    assert goldens["ids"]["tokenizer"] != goldens["ids"]["tokenizer_2"]  # `!` is special there
    with open(os.path.join(OUT, "goldens.json"), "w", encoding="utf-8") as f:
        json.dump(goldens, f, ensure_ascii=False, indent=0)

    enc1 = make_encoder("text_encoder", vocab_size, 1, 32, 3, 4, "quick_gelu", 2, None, torch.float32)
    enc2 = make_encoder("text_encoder_2", vocab_size, 2, 48, 3, 6, "gelu", eos, 24, torch.float16)
    enc_sd2 = make_encoder("text_encoder_sd2", vocab_size, 3, 40, 2, 5, "gelu", eos, None, torch.float16)

    out = {}
    prompts = [CORPUS[2], CORPUS[18]]
    for name, enc, tok in [("text_encoder", enc1, "tokenizer"), ("text_encoder_2", enc2, "tokenizer_2"), ("text_encoder_sd2", enc_sd2, "tokenizer_2")]:
        ids = torch.tensor(toks[tok](prompts, padding="max_length", max_length=77, truncation=True).input_ids)
        with torch.no_grad():
            o = enc(ids, output_hidden_states=True)
        out[f"{name}.input_ids"] = ids.to(torch.int64)
        if isinstance(enc, CLIPTextModelWithProjection):
            out[f"{name}.text_embeds"] = o.text_embeds
        else:
            out[f"{name}.pooler_output"] = o.pooler_output
        out[f"{name}.last_hidden_state"] = o.last_hidden_state
        assert len(o.hidden_states) == enc.config.num_hidden_layers + 1
        for i, h in enumerate(o.hidden_states):
            out[f"{name}.hidden_states.{i}"] = h

    # diffusers 0.42.1's clip_skip path reads `text_encoder.text_model.final_layer_norm`, a module
    # transformers 5 no longer has (CLIPTextModel is the text transformer itself, its weights still
    # named `text_model.*`): point the old name at the model, bypassing Module's registration
    # (which would make a cycle), so the golden is what that path means.
    object.__setattr__(enc1, "text_model", enc1)
    sd = Dummy(tokenizer=toks["tokenizer"], text_encoder=enc1, unet=None)
    sd_cases = [
        ("sd.plain", dict(prompt=[CORPUS[0]], negative_prompt=None, clip_skip=None)),
        ("sd.negative_skip1", dict(prompt=[CORPUS[1], CORPUS[5]], negative_prompt=["blurry, low quality", ""], clip_skip=1)),
        ("sd.skip2", dict(prompt=[CORPUS[8]], negative_prompt=None, clip_skip=2)),
    ]
    for key, kw in sd_cases:
        with torch.no_grad():
            pe, ne = StableDiffusionPipeline.encode_prompt(sd, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, **kw)
        out[f"{key}.prompt_embeds"] = pe
        out[f"{key}.negative_prompt_embeds"] = ne
    xl = Dummy(
        tokenizer=toks["tokenizer"], tokenizer_2=toks["tokenizer_2"], text_encoder=enc1, text_encoder_2=enc2, unet=None,
        config=types.SimpleNamespace(force_zeros_for_empty_prompt=True),
    )
    xl_cases = [
        ("sdxl.zero_negative", dict(prompt=[CORPUS[0]], prompt_2=None, negative_prompt=None, negative_prompt_2=None, clip_skip=None)),
        ("sdxl.negative_prompt2_skip1", dict(prompt=[CORPUS[1]], prompt_2=[CORPUS[9]], negative_prompt=["ugly"], negative_prompt_2=None, clip_skip=1)),
        ("sdxl.both_negatives", dict(prompt=[CORPUS[4], CORPUS[11]], prompt_2=None, negative_prompt=["ugly", "bad"], negative_prompt_2=["worse", ""], clip_skip=None)),
    ]
    for key, kw in xl_cases:
        with torch.no_grad():
            pe, ne, pp, npp = StableDiffusionXLPipeline.encode_prompt(xl, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, **kw)
        out[f"{key}.prompt_embeds"] = pe
        out[f"{key}.negative_prompt_embeds"] = ne
        out[f"{key}.pooled_prompt_embeds"] = pp
        out[f"{key}.negative_pooled_prompt_embeds"] = npp
    # The cases' inputs, for the Rust side (lists of strings; None as absent).
    cases = {key: kw for key, kw in sd_cases + xl_cases}
    with open(os.path.join(OUT, "encode_prompt_cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)
    out = {k: (v if v.dtype == torch.int64 else v.to(torch.float32)).contiguous() for k, v in out.items()}
    save_file(out, os.path.join(OUT, "goldens.safetensors"))
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {OUT}: {len(out)} tensors, {total / 1e6:.2f} MB in all")


if __name__ == "__main__":
    main()
