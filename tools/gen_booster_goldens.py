#!/usr/bin/env python3
"""Generate golden outputs for the decoder-skip boosters (FreeU, Skip-Tuning) of the
`freelunch` crate.

How to run (from the repo root, after tools/gen_goldens.py has produced the models):

    python -m pip install -r tools/requirements.txt && python tools/gen_booster_goldens.py

The models are the existing fixtures under `tests/fixtures/<model>/` (loaded in f32;
sd21_like's bf16 weights are upcast). Output goes to `tests/fixtures/boosters/`:

    boosters/<case>/inputs.safetensors     forward inputs (sample, timestep,
                                           encoder_hidden_states, text_embeds, time_ids)
    boosters/<case>/<variant>.json         booster settings (schema below)
    boosters/<case>/<variant>.safetensors  one f32 tensor `sample` = boosted output
    boosters/README.md                     list of cases / variants

Variant JSON schema:

    {"model": "sd15_like",                      # fixture folder under tests/fixtures/
     "freeu": null | {"b1": f, "b2": f, "s1": f, "s2": f,
                      "blocks": "stage" | "channels", "v2": bool, "threshold": int},
     "skip_scales": null | [f, ...],             # explicit per-skip factors (n values)
     "skip_tuning": null | {"rho_top": f, "rho_bottom": f},
     "reference": "diffusers" | "plain"}

`reference` says what produced the output: "diffusers" = diffusers itself
(`unet.enable_freeu(...)`, stage convention, v1, threshold 1; or no booster at all),
"plain" = tools/reference_boosters.py. Every "diffusers" variant is also recomputed
with the plain reference and must agree (rel L2 < 1e-6). Every booster variant must
differ from the case's no-booster output (`none`) by a rel L2 >= 1e-3.

Everything runs on CPU, float32, under torch.no_grad(), deterministic.
"""

import json
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import save_file

import diffusers
from diffusers import UNet2DConditionModel
from diffusers.utils.torch_utils import fourier_filter as diffusers_fourier_filter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_boosters import FreeU, boosted, count_encoder_skips, fourier_filter  # noqa: E402
from golden_common import FIXTURES, dir_size, load_model, rel_l2  # noqa: E402

OUT_DIR = os.path.join(FIXTURES, "boosters")
MAX_BYTES = 2 * 1024 * 1024

SD15_PRESET = dict(b1=1.5, b2=1.6, s1=0.9, s2=0.2)
CUSTOM = dict(b1=1.2, b2=1.1, s1=0.6, s2=1.7)
BATCH = 2

AGREE_TOL = 1e-6  # plain reference vs diffusers, rel L2
MIN_EFFECT = 1e-3  # booster output vs no-booster output, rel L2


# --------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------


def v_none():
    return {"freeu": None, "skip_scales": None, "skip_tuning": None, "reference": "diffusers"}


def v_diffusers_freeu(p):
    return {
        "freeu": FreeU(**p, blocks="stage", v2=False, threshold=1),
        "skip_scales": None,
        "skip_tuning": None,
        "reference": "diffusers",
    }


def v_plain(freeu=None, skip_scales=None, skip_tuning=None):
    return {"freeu": freeu, "skip_scales": skip_scales, "skip_tuning": skip_tuning, "reference": "plain"}


def random_skip_scales(model_cfg_unet):
    n = count_encoder_skips(model_cfg_unet)
    vals = 0.5 + torch.rand(n, dtype=torch.float64)  # [0.5, 1.5)
    # exactly representable in f32, so a reader parsing them as f32 gets the same numbers
    return [float(np.float32(v)) for v in vals.tolist()]


# case name -> (model fixture, (H, W), variant builders). A builder is a dict or a
# callable(unet) -> dict (called after the case's inputs were drawn, same RNG stream).
CASES = {
    "sd15_16x16": (
        "sd15_like",
        (16, 16),
        {
            "none": v_none(),
            "freeu_sd15": v_diffusers_freeu(SD15_PRESET),
            "freeu_custom": v_diffusers_freeu(CUSTOM),
            "freeu_channels_v1": v_plain(freeu=FreeU(**SD15_PRESET, blocks="channels", v2=False)),
            "freeu_stage_v2": v_plain(freeu=FreeU(**SD15_PRESET, blocks="stage", v2=True)),
            "freeu_channels_v2": v_plain(freeu=FreeU(**CUSTOM, blocks="channels", v2=True)),
            "skip_tuning": v_plain(skip_tuning=(1.0, 0.6)),
            "skip_tuning_freeu_channels_v2": v_plain(
                freeu=FreeU(**SD15_PRESET, blocks="channels", v2=True), skip_tuning=(1.0, 0.6)
            ),
        },
    ),
    "sd15_2x2": (
        "sd15_like",
        (2, 2),
        {
            "none": v_none(),
            "freeu_sd15": v_diffusers_freeu(SD15_PRESET),
            # up_blocks[0] runs at 1x1: flat mean map (max == min) -> m_hat = 1
            "freeu_stage_v2": v_plain(freeu=FreeU(**SD15_PRESET, blocks="stage", v2=True)),
        },
    ),
    "sd15_3x3": (
        "sd15_like",
        (3, 3),
        {"none": v_none(), "freeu_custom": v_diffusers_freeu(CUSTOM)},
    ),
    "sd15_7x5": (
        "sd15_like",
        (7, 5),
        {
            "none": v_none(),
            "freeu_sd15": v_diffusers_freeu(SD15_PRESET),
            "freeu_custom": v_diffusers_freeu(CUSTOM),
        },
    ),
    "sd21_8x8": (
        "sd21_like",
        (8, 8),
        {"none": v_none(), "freeu_custom": v_diffusers_freeu(CUSTOM)},
    ),
    "sd21_4x4": (
        "sd21_like",
        (4, 4),
        {"none": v_none(), "freeu_sd15": v_diffusers_freeu(SD15_PRESET)},
    ),
    "sd21_9x11": (
        "sd21_like",
        (9, 11),
        {
            "none": v_none(),
            "freeu_sd15": v_diffusers_freeu(SD15_PRESET),
            "freeu_custom": v_diffusers_freeu(CUSTOM),
            "freeu_custom_t2": v_plain(freeu=FreeU(**CUSTOM, blocks="stage", v2=False, threshold=2)),
            "freeu_custom_t3": v_plain(freeu=FreeU(**CUSTOM, blocks="stage", v2=False, threshold=3)),
        },
    ),
    "ddpm_16x16": (
        "ddpm_basic",
        (16, 16),
        {
            "none": v_none(),
            "freeu_channels_v1": v_plain(freeu=FreeU(**SD15_PRESET, blocks="channels", v2=False)),
            "skip_tuning": v_plain(skip_tuning=(1.0, 0.6)),
        },
    ),
    "sdxl_12x12": (
        "sdxl_like",
        (12, 12),
        {
            "none": v_none(),
            "skip_scales": lambda unet: v_plain(skip_scales=random_skip_scales(unet)),
        },
    ),
}


DESCRIPTIONS = {
    "none": "no booster (plain `unet(**inputs)`)",
    "freeu_sd15": "FreeU v1, stage convention, t=1, SD1.5 preset b1 1.5 b2 1.6 s1 0.9 s2 0.2 (diffusers `enable_freeu`)",
    "freeu_custom": "FreeU v1, stage convention, t=1, b1 1.2 b2 1.1 s1 0.6 s2 1.7 (diffusers `enable_freeu`)",
    "freeu_channels_v1": "FreeU v1, channels convention, SD1.5 preset",
    "freeu_stage_v2": "FreeU v2 (mean-map backbone scaling), stage convention, SD1.5 preset",
    "freeu_channels_v2": "FreeU v2, channels convention, b1 1.2 b2 1.1 s1 0.6 s2 1.7",
    "skip_tuning": "Skip-Tuning rho_top 1.0 -> rho_bottom 0.6",
    "skip_tuning_freeu_channels_v2": "Skip-Tuning (1.0, 0.6) + FreeU v2 channels convention, SD1.5 preset",
    "freeu_custom_t2": "FreeU v1 stage convention, b1 1.2 b2 1.1 s1 0.6 s2 1.7, threshold 2",
    "freeu_custom_t3": "FreeU v1 stage convention, b1 1.2 b2 1.1 s1 0.6 s2 1.7, threshold 3",
    "skip_scales": "explicit per-skip factors (uniform in [0.5, 1.5), one per encoder skip)",
}


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def make_inputs(unet, hw):
    cfg = unet.config
    h, w = hw
    inputs = {
        "sample": torch.randn(BATCH, cfg.in_channels, h, w),
        "timestep": torch.randint(1, 1000, (BATCH,)).to(torch.float32),
    }
    if isinstance(unet, UNet2DConditionModel):
        seq = int(torch.randint(3, 9, ()).item())
        inputs["encoder_hidden_states"] = torch.randn(BATCH, seq, cfg.cross_attention_dim)
        if cfg.addition_embed_type == "text_time":
            n_time = 6
            text_dim = cfg.projection_class_embeddings_input_dim - n_time * cfg.addition_time_embed_dim
            inputs["text_embeds"] = torch.randn(BATCH, text_dim)
            base = torch.tensor([512.0, 512.0, 0.0, 0.0, 512.0, 512.0])
            inputs["time_ids"] = (base.unsqueeze(0).repeat(BATCH, 1) + 8.0 * torch.randn(BATCH, n_time)).float()
        elif cfg.addition_embed_type is not None:
            raise NotImplementedError(cfg.addition_embed_type)
    for k, v in inputs.items():
        if v.is_floating_point():
            assert (v != 0).all(), f"zero in input {k}"
    return inputs


def forward(unet, inputs):
    kwargs = dict(inputs)
    if "text_embeds" in kwargs or "time_ids" in kwargs:
        kwargs["added_cond_kwargs"] = {"text_embeds": kwargs.pop("text_embeds"), "time_ids": kwargs.pop("time_ids")}
    with torch.no_grad():
        out = unet(**kwargs).sample.to(torch.float32)
    if not torch.isfinite(out).all():
        raise RuntimeError("non-finite output")
    return out


def run_plain(unet, inputs, v):
    st = v["skip_tuning"]
    with boosted(unet, freeu=v["freeu"], skip_tuning=st, skip_scales=v["skip_scales"], verify_indices=True) as hook:
        out = forward(unet, inputs)
    return out, hook


def run_diffusers(unet, inputs, v):
    f = v["freeu"]
    if f is None:
        return forward(unet, inputs)
    assert f.blocks == "stage" and not f.v2 and f.threshold == 1
    assert v["skip_scales"] is None and v["skip_tuning"] is None
    unet.enable_freeu(s1=f.s1, s2=f.s2, b1=f.b1, b2=f.b2)
    try:
        return forward(unet, inputs)
    finally:
        unet.disable_freeu()


def variant_json(model_name, v):
    st = v["skip_tuning"]
    return {
        "model": model_name,
        "freeu": None if v["freeu"] is None else v["freeu"].to_json(),
        "skip_scales": None if v["skip_scales"] is None else [float(x) for x in v["skip_scales"]],
        "skip_tuning": None if st is None else {"rho_top": float(st[0]), "rho_bottom": float(st[1])},
        "reference": v["reference"],
    }


def check_fourier_filter():
    """Our fourier_filter must equal diffusers' bit for bit (incl. tiny / odd sizes)."""
    g = torch.Generator().manual_seed(7)
    worst = 0.0
    for h, w in [(1, 1), (2, 2), (3, 3), (2, 1), (4, 4), (5, 6), (7, 5), (8, 8), (9, 11)]:
        x = torch.randn(2, 3, h, w, generator=g)
        for t in (0, 1, 2, 3, 5):
            for s in (0.2, 1.7):
                a = fourier_filter(x, t, s)
                b = diffusers_fourier_filter(x, threshold=t, scale=s)
                worst = max(worst, float((a - b).abs().max()))
    print(f"fourier_filter vs diffusers: max abs diff {worst:.3g} over sizes 1x1..9x11, t 0..5")
    assert worst == 0.0


# --------------------------------------------------------------------------------------


def run_case(seed, case, model_name, hw, variants, models, readme_rows):
    torch.manual_seed(seed)
    np.random.seed(seed)
    case_dir = os.path.join(OUT_DIR, case)
    os.makedirs(case_dir)
    if model_name not in models:
        models[model_name] = load_model(model_name)
    unet = models[model_name]
    if hasattr(unet, "disable_freeu"):
        unet.disable_freeu()

    inputs = make_inputs(unet, hw)
    save_file({k: v.contiguous() for k, v in inputs.items()}, os.path.join(case_dir, "inputs.safetensors"))
    baseline = forward(unet, inputs)
    std = float(baseline.std())
    if not (0.1 <= std <= 10.0):
        raise RuntimeError(f"{case}: output std {std} out of sane range")
    print(
        f"\n== {case}: model={model_name} sample={tuple(inputs['sample'].shape)} "
        f"timestep={inputs['timestep'].tolist()} skips={count_encoder_skips(unet)} out_std={std:.4f}"
    )

    outs = {}
    for name, v in variants.items():
        if callable(v):
            v = v(unet)
        if v["reference"] == "diffusers":
            out = run_diffusers(unet, inputs, v)
            plain, hook = run_plain(unet, inputs, v)  # must agree
            agree = rel_l2(plain, out)
            note = f"plain-vs-diffusers rel L2 {agree:.3e}"
            if agree >= AGREE_TOL:
                raise RuntimeError(f"{case}/{name}: plain reference disagrees with diffusers ({agree:.3e})")
        else:
            out, hook = run_plain(unet, inputs, v)
            note = "plain reference"
        sel = [f"{b}.{r}(j={j},C={c})" for (b, r, j, c, tag) in hook.log if tag is not None]
        effect = rel_l2(out, baseline)
        if v["freeu"] is None and v["skip_scales"] is None and v["skip_tuning"] is None:
            assert effect == 0.0 or effect < 1e-7, effect
            effect_s = "(baseline)"
        else:
            if effect < MIN_EFFECT:
                raise RuntimeError(f"{case}/{name}: differs from no-booster output by only {effect:.3e}")
            effect_s = f"vs none {effect:.3e}"
        print(f"  {name:32s} {effect_s:20s} {note}")
        if sel:
            print(f"      freeu on up resnets: {' '.join(sel)}")
        outs[name] = out
        with open(os.path.join(case_dir, f"{name}.json"), "w") as f:
            json.dump(variant_json(model_name, v), f, indent=2)
            f.write("\n")
        save_file({"sample": out.contiguous()}, os.path.join(case_dir, f"{name}.safetensors"))
        readme_rows.append((case, model_name, hw, name, v["reference"]))

    # extra sanity: thresholds / conventions / versions must actually change the output
    pairs = [
        ("freeu_custom_t2", "freeu_custom"),
        ("freeu_custom_t3", "freeu_custom"),
        ("freeu_custom_t3", "freeu_custom_t2"),
        ("freeu_channels_v1", "freeu_sd15"),
        ("freeu_stage_v2", "freeu_sd15"),
        ("skip_tuning_freeu_channels_v2", "skip_tuning"),
    ]
    for a, b in pairs:
        if a in outs and b in outs:
            d = rel_l2(outs[a], outs[b])
            print(f"  {a} vs {b}: rel L2 {d:.3e}")
            if d < MIN_EFFECT:
                raise RuntimeError(f"{case}: {a} vs {b} differ by only {d:.3e}")


def write_readme(rows):
    lines = [
        "# Booster golden fixtures (FreeU, Skip-Tuning)",
        "",
        "Regenerate (from the repo root; needs the model fixtures written by `tools/gen_goldens.py`):",
        "",
        "    python tools/gen_booster_goldens.py",
        "",
        "Each `<case>/` holds `inputs.safetensors` (`sample`, `timestep` f32 [2], and",
        "`encoder_hidden_states` / `text_embeds` + `time_ids` for conditional models) and, per",
        "variant, `<variant>.json` (settings) + `<variant>.safetensors` (one f32 tensor `sample`).",
        "The model is the fixture folder `tests/fixtures/<model>/` named in the JSON (loaded in f32).",
        "",
        "JSON schema: `{\"model\": str, \"freeu\": null | {\"b1\", \"b2\", \"s1\", \"s2\": f,",
        "\"blocks\": \"stage\"|\"channels\", \"v2\": bool, \"threshold\": int}, \"skip_scales\": null | [f; n_skips],",
        "\"skip_tuning\": null | {\"rho_top\": f, \"rho_bottom\": f}, \"reference\": \"diffusers\"|\"plain\"}`.",
        "",
        "`reference: diffusers` = diffusers 0.42.1 itself (`unet.enable_freeu(...)`, or no booster);",
        "the plain reference (`tools/reference_boosters.py`) reproduces all of them to rel L2 < 1e-6.",
        "`reference: plain` = `tools/reference_boosters.py` (written from the spec, diffusers' up-block",
        "forwards with a hook before the skip concatenation). Every booster variant differs from the",
        "case's `none` output by rel L2 >= 1e-3.",
        "",
        "Semantics: per decoder resnet, before `cat([h, skip])`: (1) Skip-Tuning `skip *= rho[j]`, j = index",
        "of the skip in encoder order (0 = conv_in output, n-1 = innermost),",
        "rho[j] = rho_top + (rho_bottom - rho_top) * j / (n-1) (or the explicit `skip_scales`); (2) FreeU on",
        "selected resnets (`stage`: up_blocks[0] -> (b1, s1), up_blocks[1] -> (b2, s2); `channels`: h with",
        "4*block_out_channels[0] channels -> (b1, s1), 2*block_out_channels[0] -> (b2, s2)): scale the first",
        "C//2 channels of h by b (v1) or (b-1)*m_hat+1 (v2, m_hat = per-sample min-max normalised channel",
        "mean of h, 1 where flat), then `skip = fourier_filter(skip, threshold, s)` (diffusers' filter).",
        "",
        "| case | model | input HxW | variant | reference | description |",
        "|---|---|---|---|---|---|",
    ]
    for case, model, (h, w), name, ref in rows:
        lines.append(f"| `{case}` | `{model}` | {h}x{w} | `{name}` | {ref} | {DESCRIPTIONS[name]} |")
    lines += [
        "",
        "Notes: at tiny levels the FreeU Fourier mask covers the whole spectrum (1x1 and 2x2 with",
        "threshold 1: the slice `[H//2-1 : H//2+1]` spans every row), so the filter reduces to `skip * s`.",
        "Thresholds above H//2 give a negative slice start, which python wraps around (e.g. 3x3, t=2:",
        "rows `[-1:3]` = row 2 only) — the `_t2`/`_t3` variants at 9x11 (levels 9x11, 5x6, 3x3) exercise this.",
        "",
    ]
    with open(os.path.join(OUT_DIR, "README.md"), "w") as f:
        f.write("\n".join(lines))


def main():
    diffusers.utils.logging.set_verbosity_error()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    print(f"torch {torch.__version__}  diffusers {diffusers.__version__}  -> {OUT_DIR}")
    check_fourier_filter()
    if os.path.exists(OUT_DIR):
        shutil.rmtree(OUT_DIR)
    os.makedirs(OUT_DIR)
    models = {}
    rows = []
    for seed, (case, (model_name, hw, variants)) in enumerate(CASES.items()):
        run_case(2000 + seed, case, model_name, hw, variants, models, rows)
    write_readme(rows)
    total = dir_size(OUT_DIR)
    print(f"\ntotal boosters size: {total / 1e6:.3f} MB ({total} bytes)")
    if total > MAX_BYTES:
        raise RuntimeError("boosters fixtures exceed 2 MB")


if __name__ == "__main__":
    main()
