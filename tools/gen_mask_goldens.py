#!/usr/bin/env python3
"""Generate golden outputs for MaskUNet-style binary weight masks (Wang et al. 2025) in the
`freelunch` crate.

How to run (from the repo root, after tools/gen_goldens.py has produced the models):

    python tools/gen_mask_goldens.py

The models are the existing fixtures under `tests/fixtures/<model>/` (loaded in f32, default
attention processor). Output goes to `tests/fixtures/masks/`:

    masks/<case>/case.json            {"model": <fixture folder>, "step": int, "description": str}
    masks/<case>/masks.safetensors    binary masks (uint8 or bool, non-zero keeps), keyed by the
                                      diffusers weight name (e.g. `up_blocks.1.attentions.0.
                                      transformer_blocks.0.attn1.to_q.weight`)
    masks/<case>/inputs.safetensors   forward inputs (sample, timestep f32 [2],
                                      encoder_hidden_states, text_embeds, time_ids)
    masks/<case>/expected.safetensors one f32 tensor `sample` = masked model output
    masks/README.md                   list of cases

Mask semantics (as MaskUNet's official code applies them). With r = rank of the weight:
  * rank r      : one mask shared by the whole batch;
  * rank r + 1  : [B, ...weight shape], mask b applies to sample b;
  * rank r + 2  : [steps, B, ...weight shape], the forward uses mask[step] (case.json `step`).
A masked Linear computes, per sample b, `y_b = x_b @ (W * M_b)^T + bias` (x_b = that sample's
[N, in] tokens or [in] vector; implemented with `torch.bmm(x, (W*M).permute(0, 2, 1)) + bias`
as the official code does); a masked Conv2d convolves sample b with `W * M_b` (same stride /
padding / dilation / groups / bias; computed as row b of a full-batch conv with W * M_b).
M is `(mask != 0)`, so uint8 values like 7 just mean "keep".
Only the forward of the masked modules is patched; everything else is diffusers unchanged.

"Official" layer selection (MaskUNet): every nn.Linear inside `up_blocks` whose module name
contains none of `time_emb_proj`, `ff`, `conv_shortcut`, `proj_in`, `proj_out` — for these
fixture models the to_q / to_k / to_v / to_out.0 linears of the up blocks' attentions.

Checks (the script fails otherwise): masked output differs from the unmasked one by rel L2
>= 1e-3; an all-ones mask (same layers / layout / dtype) reproduces the unmasked output
exactly; per-sample masks give, for each sample b, the output of a batch-1 forward with M_b
shared; swapping / replacing per-sample masks or selecting another step changes the output.

Everything runs on CPU, float32, under torch.no_grad(), deterministic.
"""

import contextlib
import json
import os
import shutil
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import diffusers
from diffusers import UNet2DConditionModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_common import FIXTURES, dir_size, load_model, rel_l2  # noqa: E402

OUT_DIR = os.path.join(FIXTURES, "masks")
MAX_BYTES = 3 * 1024 * 1024
BATCH = 2

MIN_EFFECT = 1e-3  # masked vs unmasked output, rel L2
PER_SAMPLE_TOL = 1e-5  # per-sample row vs batch-1 forward with that sample's mask, rel L2

OFFICIAL_EXCLUDE = ("time_emb_proj", "ff", "conv_shortcut", "proj_in", "proj_out")
OFFICIAL_SUFFIXES = ("to_q", "to_k", "to_v", "to_out.0")


# --------------------------------------------------------------------------------------
# Reference: masked forwards
# --------------------------------------------------------------------------------------


def official_selection(unet):
    """Module names (not weight names) of MaskUNet's default masked layers."""
    names = [
        n
        for n, m in unet.named_modules()
        if n.startswith("up_blocks.") and isinstance(m, torch.nn.Linear) and not any(k in n for k in OFFICIAL_EXCLUDE)
    ]
    for n in names:  # for these fixture models the selection is exactly the attention projections
        assert n.endswith(OFFICIAL_SUFFIXES), n
    assert names, "empty official selection"
    return names


def select_step(mask, weight, step):
    """Reduce a mask to either the weight's shape (shared) or [B, *weight.shape] (per sample)."""
    r = weight.dim()
    if mask.dim() == r + 2:
        mask = mask[step]
    if mask.dim() == r:
        assert tuple(mask.shape) == tuple(weight.shape), (mask.shape, weight.shape)
    elif mask.dim() == r + 1:
        assert tuple(mask.shape[1:]) == tuple(weight.shape), (mask.shape, weight.shape)
    else:
        raise ValueError(f"mask rank {mask.dim()} for weight rank {r}")
    return (mask != 0).to(weight.dtype)


def masked_linear_forward(mod, m):
    def forward(x):
        w = mod.weight
        if m.dim() == 2:  # shared by the batch
            return F.linear(x, w * m, mod.bias)
        b = m.shape[0]
        assert x.shape[0] == b, f"batch {x.shape[0]} vs per-sample mask batch {b}"
        wm = w.unsqueeze(0) * m  # [B, out, in]
        squeeze = x.dim() == 2
        xx = x.unsqueeze(1) if squeeze else x.reshape(b, -1, x.shape[-1])
        y = torch.bmm(xx, wm.permute(0, 2, 1))
        if mod.bias is not None:
            y = y + mod.bias
        return y.squeeze(1) if squeeze else y.reshape(*x.shape[:-1], y.shape[-1])

    return forward


def masked_conv_forward(mod, m):
    def conv(x, w):
        if mod.padding_mode != "zeros":
            raise NotImplementedError(mod.padding_mode)
        return F.conv2d(x, w, mod.bias, mod.stride, mod.padding, mod.dilation, mod.groups)

    def forward(x):
        w = mod.weight
        if m.dim() == 4:
            return conv(x, w * m)
        assert x.shape[0] == m.shape[0], f"batch {x.shape[0]} vs per-sample mask batch {m.shape[0]}"
        # Row b of a full-batch conv with W * M_b (rows are independent). Convolving the whole
        # batch rather than x[b:b+1] keeps torch on the same conv algorithm as the unmasked
        # batched call, so an all-ones mask is bit-exact (a batch-1 conv differs by ~1e-6).
        return torch.cat([conv(x, w * m[b])[b : b + 1] for b in range(x.shape[0])], dim=0)

    return forward


@contextlib.contextmanager
def masked(unet, masks, step):
    """Patch the forward of exactly the modules whose `<name>.weight` has a mask."""
    modules = dict(unet.named_modules())
    patched = []
    try:
        for key, mask in masks.items():
            assert key.endswith(".weight"), key
            mod = modules[key[: -len(".weight")]]
            m = select_step(mask, mod.weight, step)
            if isinstance(mod, torch.nn.Linear):
                fwd = masked_linear_forward(mod, m)
            elif isinstance(mod, torch.nn.Conv2d):
                fwd = masked_conv_forward(mod, m)
            else:
                raise TypeError(f"{key}: cannot mask {type(mod).__name__}")
            assert "forward" not in mod.__dict__, f"{key} patched twice"
            mod.forward = fwd
            patched.append(mod)
        yield
    finally:
        for mod in patched:
            del mod.forward


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def make_inputs(unet):
    cfg = unet.config
    h = w = cfg.sample_size
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
    assert inputs["timestep"][0] != inputs["timestep"][1]
    for k, v in inputs.items():
        if v.is_floating_point():
            assert (v != 0).all(), f"zero in input {k}"
    return inputs


def slice_inputs(inputs, b):
    return {k: v[b : b + 1] for k, v in inputs.items()}


def forward(unet, inputs):
    kwargs = dict(inputs)
    if "text_embeds" in kwargs or "time_ids" in kwargs:
        kwargs["added_cond_kwargs"] = {"text_embeds": kwargs.pop("text_embeds"), "time_ids": kwargs.pop("time_ids")}
    with torch.no_grad():
        out = unet(**kwargs).sample.to(torch.float32)
    if not torch.isfinite(out).all():
        raise RuntimeError("non-finite output")
    return out


def weight_shapes(unet, module_names):
    modules = dict(unet.named_modules())
    return {f"{n}.weight": tuple(modules[n].weight.shape) for n in module_names}


def keep_mask(gen, shape, p):
    return torch.rand(shape, generator=gen) < p


# --------------------------------------------------------------------------------------
# Mask builders: (unet, generator) -> {weight name: mask}
# --------------------------------------------------------------------------------------


def masks_sd15_shared_u8(unet, gen):
    out = {}
    for key, shape in weight_shapes(unet, official_selection(unet)).items():
        keep = keep_mask(gen, shape, 0.8)
        big = torch.rand(shape, generator=gen) < 0.5  # kept entries are 1 or 7
        m = torch.where(big, torch.tensor(7, dtype=torch.uint8), torch.tensor(1, dtype=torch.uint8))
        out[key] = torch.where(keep, m, torch.tensor(0, dtype=torch.uint8))
    return out


def per_sample(shape, gen, probs, dtype):
    m = torch.stack([keep_mask(gen, shape, p) for p in probs])
    return m if dtype == torch.bool else m.to(dtype)


def masks_sd15_per_sample_bool(unet, gen):
    names = official_selection(unet) + ["up_blocks.1.resnets.0.conv1", "up_blocks.0.resnets.1.conv2"]
    out = {k: per_sample(s, gen, (0.9, 0.6), torch.bool) for k, s in weight_shapes(unet, names).items()}
    assert any(k.endswith("attn2.to_k.weight") for k in out)
    return out


def masks_sdxl_per_step(unet, gen):
    out = {}
    for key, shape in weight_shapes(unet, official_selection(unet)).items():
        # [3 steps, 2 samples, out, in]; every (step, sample) slice is an independent draw
        out[key] = torch.stack([per_sample(shape, gen, (0.85, 0.7), torch.uint8) for _ in range(3)])
    return out


def masks_ddpm_per_sample(unet, gen):
    names = official_selection(unet) + ["up_blocks.2.resnets.0.conv1"]
    return {k: per_sample(s, gen, (0.8, 0.65), torch.uint8) for k, s in weight_shapes(unet, names).items()}


# name -> (model, step, mask builder, description)
CASES = {
    "sd15_shared_u8": (
        "sd15_like",
        0,
        masks_sd15_shared_u8,
        "official selection (up-block attn1/attn2 to_q/to_k/to_v/to_out.0 linears), masks shared "
        "by the batch (rank 2), uint8 with values {0, 1, 7} (non-zero keeps), keep p 0.8",
    ),
    "sd15_per_sample_bool": (
        "sd15_like",
        0,
        masks_sd15_per_sample_bool,
        "official selection (incl. attn2.to_k/to_v on encoder_hidden_states) + convs "
        "up_blocks.1.resnets.0.conv1 and up_blocks.0.resnets.1.conv2; per-sample masks "
        "(rank r+1, leading B=2), bool, keep p 0.9 (sample 0) / 0.6 (sample 1)",
    ),
    "sdxl_per_step": (
        "sdxl_like",
        2,
        masks_sdxl_per_step,
        "official selection; per-step per-sample masks [3 steps, B=2, out, in], uint8 {0, 1}, "
        "keep p 0.85 (sample 0) / 0.7 (sample 1), independent draw per step; forward uses step 2",
    ),
    "ddpm_per_sample": (
        "ddpm_basic",
        0,
        masks_ddpm_per_sample,
        "UNet2DModel: official selection (AttnUpBlock2D attention to_q/to_k/to_v/to_out.0) + conv "
        "up_blocks.2.resnets.0.conv1; per-sample masks (leading B=2), uint8 {0, 1}, "
        "keep p 0.8 (sample 0) / 0.65 (sample 1)",
    ),
}


# --------------------------------------------------------------------------------------


def run_case(seed, case, model_name, step, builder, description, models, readme_rows):
    torch.manual_seed(seed)
    np.random.seed(seed)
    gen = torch.Generator().manual_seed(10_000 + seed)
    case_dir = os.path.join(OUT_DIR, case)
    os.makedirs(case_dir)
    if model_name not in models:
        models[model_name] = load_model(model_name)
    unet = models[model_name]

    inputs = make_inputs(unet)
    masks = {k: v.contiguous() for k, v in builder(unet, gen).items()}
    baseline = forward(unet, inputs)
    with masked(unet, masks, step):
        out = forward(unet, inputs)
    std = float(out.std())
    if not (0.1 <= std <= 10.0):
        raise RuntimeError(f"{case}: output std {std} out of sane range")

    # ---- checks ----
    effect = rel_l2(out, baseline)
    if effect < MIN_EFFECT:
        raise RuntimeError(f"{case}: masked output differs from unmasked by only {effect:.3e}")
    ones = {k: torch.ones_like(v) for k, v in masks.items()}
    with masked(unet, ones, step):
        out_ones = forward(unet, inputs)
    ones_diff = float((out_ones - baseline).abs().max())
    if ones_diff != 0.0:
        raise RuntimeError(f"{case}: all-ones mask does not reproduce the unmasked output ({ones_diff:.3e})")
    notes = []
    if any(v.dtype == torch.uint8 for v in masks.values()):  # keep = non-zero, not a multiplier
        if any(bool((v > 1).any()) for v in masks.values()):
            raw = {k: v.to(torch.float32) for k, v in masks.items()}
            wrong = _forward_multiplier(unet, inputs, raw, step)
            d = rel_l2(wrong, out)
            if d < MIN_EFFECT:
                raise RuntimeError(f"{case}: using the uint8 values as multipliers changes only {d:.3e}")
            notes.append(f"uint8 values used as raw multipliers (wrong) would give rel L2 {d:.3e}")
    ranks = {v.dim() - len(dict(unet.named_parameters())[k].shape) for k, v in masks.items()}
    assert len(ranks) == 1, ranks
    extra = ranks.pop()
    if extra >= 1:
        sel = {k: (v[step] if extra == 2 else v) for k, v in masks.items()}
        worst = 0.0
        for b in range(BATCH):
            shared_b = {k: v[b] for k, v in sel.items()}
            with masked(unet, shared_b, 0):
                ob = forward(unet, slice_inputs(inputs, b))
            worst = max(worst, rel_l2(out[b : b + 1], ob))
        if worst >= PER_SAMPLE_TOL:
            raise RuntimeError(f"{case}: per-sample row != batch-1 forward with its mask ({worst:.3e})")
        notes.append(f"per-sample rows vs batch-1 shared-mask forwards: rel L2 <= {worst:.2e}")
        swapped = {k: v.flip(0) for k, v in sel.items()}
        with masked(unet, swapped, 0):
            out_sw = forward(unet, inputs)
        d = rel_l2(out_sw, out)
        if d < MIN_EFFECT:
            raise RuntimeError(f"{case}: swapping the per-sample masks changes the output by only {d:.3e}")
        notes.append(f"swapped samples' masks: rel L2 {d:.3e}")
    if extra == 2:
        for s in range(next(iter(masks.values())).shape[0]):
            if s == step:
                continue
            with masked(unet, masks, s):
                out_s = forward(unet, inputs)
            d = rel_l2(out_s, out)
            if d < MIN_EFFECT:
                raise RuntimeError(f"{case}: step {s} output differs from step {step} by only {d:.3e}")
            notes.append(f"step {s} instead of {step}: rel L2 {d:.3e}")

    # ---- save ----
    with open(os.path.join(case_dir, "case.json"), "w") as f:
        json.dump({"model": model_name, "step": step, "description": description}, f, indent=2)
        f.write("\n")
    save_file(masks, os.path.join(case_dir, "masks.safetensors"))
    save_file({k: v.contiguous() for k, v in inputs.items()}, os.path.join(case_dir, "inputs.safetensors"))
    save_file({"sample": out.contiguous()}, os.path.join(case_dir, "expected.safetensors"))
    # round-trip the masks (dtype / values survive safetensors)
    back = load_file(os.path.join(case_dir, "masks.safetensors"))
    for k, v in masks.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k

    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in masks.values()})
    kept = float(sum(int((v != 0).sum()) for v in masks.values())) / sum(v.numel() for v in masks.values())
    shapes = {}
    for k, v in masks.items():
        shapes.setdefault(tuple(v.shape), []).append(k)
    print(
        f"\n== {case}: model={model_name} step={step} sample={tuple(inputs['sample'].shape)} "
        f"timestep={inputs['timestep'].tolist()} out_std={std:.4f}"
    )
    print(f"  masks: {len(masks)} tensors, dtype {'/'.join(dtypes)}, kept fraction {kept:.3f}")
    for shp, keys in shapes.items():
        print(f"    {len(keys):3d} x {list(shp)}  e.g. {keys[0]}")
    print(f"  masked vs unmasked: rel L2 {effect:.3e}   all-ones mask: max abs diff {ones_diff:.1e}")
    for n in notes:
        print(f"  {n}")
    print(f"  size {dir_size(case_dir) / 1e6:.3f} MB")
    readme_rows.append((case, model_name, step, len(masks), dtypes, shapes, effect, description))


def _forward_multiplier(unet, inputs, raw_masks, step):
    """Forward with the masks used as raw f32 multipliers (a wrong implementation, for the log)."""
    modules = dict(unet.named_modules())
    saved = {}
    try:
        for k, v in raw_masks.items():
            p = modules[k[: -len(".weight")]].weight
            saved[k] = p.detach().clone()
            m = v[step] if v.dim() == p.dim() + 2 else v
            assert m.dim() == p.dim(), "multiplier check only for shared masks"
            with torch.no_grad():
                p.mul_(m)
        return forward(unet, inputs)
    finally:
        with torch.no_grad():
            for k, w in saved.items():
                modules[k[: -len(".weight")]].weight.copy_(w)


def write_readme(rows):
    lines = [
        "# MaskUNet golden fixtures (binary weight masks)",
        "",
        "Regenerate (from the repo root; needs the model fixtures written by `tools/gen_goldens.py`):",
        "",
        "    python tools/gen_mask_goldens.py",
        "",
        "Each `<case>/` holds:",
        "",
        "- `case.json`: `{\"model\": <fixture folder under tests/fixtures/>, \"step\": int, \"description\": str}`",
        "- `masks.safetensors`: binary masks keyed by the diffusers weight name",
        "  (e.g. `up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight`), uint8 or bool,",
        "  non-zero keeps",
        "- `inputs.safetensors`: `sample`, `timestep` (f32 [2]) and `encoder_hidden_states` /",
        "  `text_embeds` + `time_ids` for conditional models; batch 2",
        "- `expected.safetensors`: one f32 tensor `sample` = the masked model output",
        "",
        "The model is loaded from `tests/fixtures/<model>/` in f32 (default attention processor).",
        "",
        "Mask layout, r = rank of the weight: rank r = shared by the batch; rank r+1 = `[B, ...]`,",
        "mask b for sample b; rank r+2 = `[steps, B, ...]`, the forward uses `mask[step]`.",
        "A masked Linear computes `y_b = x_b @ (W * M_b)^T + bias` per sample (x_b = that sample's",
        "tokens, e.g. `encoder_hidden_states` for `attn2.to_k`/`to_v`); a masked Conv2d convolves",
        "sample b with `W * M_b` (same stride/padding/bias). `M = (mask != 0)`: a uint8 value of 7",
        "means keep, not scale by 7. Unmasked modules are unchanged.",
        "",
        "\"Official\" selection (MaskUNet): every `nn.Linear` in `up_blocks` whose name contains none of",
        "`time_emb_proj`, `ff`, `conv_shortcut`, `proj_in`, `proj_out` (here: the up blocks' attention",
        "`to_q`/`to_k`/`to_v`/`to_out.0`).",
        "",
        "Checks made by the generator: masked vs unmasked output rel L2 >= 1e-3; an all-ones mask",
        "reproduces the unmasked output bit for bit; each per-sample row equals a batch-1 forward with",
        "that sample's mask shared (rel L2 < 1e-5); swapping the two samples' masks, or using another",
        "step of a per-step mask, changes the output by rel L2 >= 1e-3.",
        "",
        "| case | model | step | masks | dtype | mask shapes | rel L2 vs unmasked | description |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, model, step, n, dtypes, shapes, effect, desc in rows:
        shp = ", ".join(f"{len(v)}x`{list(k)}`" for k, v in shapes.items())
        lines.append(
            f"| `{case}` | `{model}` | {step} | {n} | {'/'.join(dtypes)} | {shp} | {effect:.3e} | {desc} |"
        )
    with open(os.path.join(OUT_DIR, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    diffusers.utils.logging.set_verbosity_error()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    print(f"torch {torch.__version__}  diffusers {diffusers.__version__}  -> {OUT_DIR}")
    if os.path.exists(OUT_DIR):
        shutil.rmtree(OUT_DIR)
    os.makedirs(OUT_DIR)
    models, rows = {}, []
    for i, (case, (model_name, step, builder, desc)) in enumerate(CASES.items()):
        run_case(3000 + i, case, model_name, step, builder, desc, models, rows)
    write_readme(rows)
    total = dir_size(OUT_DIR)
    print(f"\ntotal masks fixtures size: {total / 1e6:.3f} MB ({total} bytes)")
    if total > MAX_BYTES:
        raise RuntimeError(f"masks fixtures exceed {MAX_BYTES} bytes")


if __name__ == "__main__":
    sys.exit(main())
