#!/usr/bin/env python3
"""Convert a MaskDM checkpoint (github.com/jiachenlei/maskdm) to a model folder for the
`freelunch` crate.

How to run (from the repo root):

    python tools/convert_maskdm_checkpoint.py CKPT.pt CONFIG.yml OUT_DIR

CKPT.pt is what MaskDM's training loop saves (`train_step.save_training_state`): a dict whose
`ema` entry is an `ema_pytorch.EMA` state dict. Its EMA wraps the `GaussianDiffusion`, so the
network's parameters are the keys `ema_model.model.<name>` (the `online_model.` copy, the
diffusion buffers `ema_model.betas`, ... and EMA's `initted` / `step` are not the network's).
`eval.py` strips `ema_model.` and loads the rest into the `GaussianDiffusion`; this script
keeps only the network's keys and strips `ema_model.model.` (or `ema_model.` when a
checkpoint's EMA wrapped the bare network).

CONFIG.yml is the repo's training config (`configs/*.yml`); its `network` section gives the
`MaskedUViT` constructor's arguments, `beta_schedule` the noise schedule.

OUT_DIR gets
    config.json                         `_class_name: MaskedUViT` and the network's arguments
    diffusion_pytorch_model.safetensors every network tensor, f32, under mask_uvit.py's names
    scheduler_config.json               a DDIMScheduler set as eval.py samples: cosine betas
                                        (diffusers' squaredcos_cap_v2, the same betas),
                                        x̂₀ clipped to [clip_min, clip_max], trailing spacing
                                        (eval.py's linspace(-1, T-1, steps+1) when steps
                                        divides T), ε-prediction; eval.py's eta is 1
                                        (`freelunch sample --eta 1`).

The checkpoint is read with `torch.load(weights_only=True)`: only tensors and plain containers.
"""

import argparse
import json
import math
import os
import sys

import torch
import yaml
from safetensors.torch import save_file

# MaskedUViT's constructor arguments this crate reads, with mask_uvit.py's defaults.
NETWORK_DEFAULTS = {
    "img_size": 224,
    "patch_size": 16,
    "in_chans": 3,
    "encoder_embed_dim": 768,
    "encoder_depth": 12,
    "encoder_heads": 12,
    "mlp_ratio": 4.0,
    "qkv_bias": False,
    "qk_scale": None,
    "num_classes": -1,
    "mlp_time_embed": False,
}
# Constructor arguments that change nothing at inference.
IGNORED = {"name", "use_checkpoint", "dropout", "attn_dropout", "proj_dropout"}
# GaussianDiffusion's training timesteps in eval.py.
TRAIN_TIMESTEPS = 1000


def network_config(cfg, path):
    net = cfg.get("network")
    if not isinstance(net, dict):
        raise SystemExit(f"{path}: no `network` section")
    if net.get("name", "maskdm") != "maskdm":
        raise SystemExit(f"{path}: network.name is {net.get('name')!r}; only 'maskdm' is a MaskedUViT")
    unknown = sorted(set(net) - set(NETWORK_DEFAULTS) - IGNORED)
    if unknown:
        raise SystemExit(f"{path}: network arguments this converter does not know: {unknown}")
    out = {"_class_name": "MaskedUViT"}
    for k, default in NETWORK_DEFAULTS.items():
        out[k] = net.get(k, default)
    schedule = cfg.get("beta_schedule", "cosine")
    if schedule not in ("cosine", "linear"):
        raise SystemExit(f"{path}: beta_schedule {schedule!r} is neither cosine nor linear")
    out["beta_schedule"] = schedule
    return out


def scheduler_config(cfg):
    schedule = cfg.get("beta_schedule", "cosine")
    lo, hi = float(cfg.get("clip_min", -1)), float(cfg.get("clip_max", 1))
    if lo != -hi:
        raise SystemExit(f"clip range [{lo}, {hi}] is not symmetric; diffusers' DDIM clips to ±r")
    out = {
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": TRAIN_TIMESTEPS,
        "prediction_type": "epsilon",
        "clip_sample": True,
        "clip_sample_range": hi,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "timestep_spacing": "trailing",
    }
    if schedule == "cosine":
        out["beta_schedule"] = "squaredcos_cap_v2"
    else:
        # gaussian_ddpm.linear_beta_schedule at T = 1000: linspace(1e-4, 0.02).
        out.update(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    return out


def network_state_dict(ckpt, path):
    if not isinstance(ckpt, dict) or "ema" not in ckpt:
        raise SystemExit(f"{path}: expected a dict with an `ema` entry (MaskDM's saved state)")
    ema = ckpt["ema"]
    if not isinstance(ema, dict):
        raise SystemExit(f"{path}: `ema` is a {type(ema).__name__}, not a state dict")
    keys = [k for k in ema if k.startswith("ema_model.")]
    if not keys:
        raise SystemExit(f"{path}: no `ema_model.` keys in `ema`")
    prefix = "ema_model.model." if any(k.startswith("ema_model.model.") for k in keys) else "ema_model."
    out = {}
    for k in keys:
        if not k.startswith(prefix):
            continue  # GaussianDiffusion's buffers (betas, alphas_cumprod, ...)
        v = ema[k]
        if not isinstance(v, torch.Tensor):
            raise SystemExit(f"{path}: {k!r} is a {type(v).__name__}, not a tensor")
        out[k[len(prefix):]] = v.detach().to(torch.float32).contiguous()
    if not any(k.startswith("encoder.") for k in out):
        raise SystemExit(f"{path}: no `encoder.` tensors under {prefix!r}: not a MaskedUViT")
    return out


def schedule_betas(schedule, t=TRAIN_TIMESTEPS):
    """gaussian_ddpm.py's betas (float64), restated."""
    if schedule == "linear":
        return torch.linspace(1e-4, 0.02, t, dtype=torch.float64)
    s = 0.008
    x = torch.linspace(0, t, t + 1, dtype=torch.float64)
    ac = torch.cos(((x / t) + s) / (1 + s) * math.pi * 0.5) ** 2
    ac = ac / ac[0]
    return torch.clip(1 - (ac[1:] / ac[:-1]), 0, 0.999)


def check_schedule(ckpt, schedule, path):
    """The diffusion buffers the EMA saved (when it wrapped the GaussianDiffusion) must be the
    betas the config names, or the scheduler_config.json written would not be the one trained."""
    betas = ckpt["ema"].get("ema_model.betas")
    if betas is None:
        return
    want = schedule_betas(schedule).to(torch.float32)
    if tuple(betas.shape) != tuple(want.shape) or (betas.float() - want).abs().max() > 1e-6:
        raise SystemExit(
            f"{path}: the checkpoint's betas are not the {schedule} schedule of {TRAIN_TIMESTEPS} "
            "steps that the config names"
        )


def check_shapes(sd, net, path):
    d, p, c = net["encoder_embed_dim"], net["patch_size"], net["in_chans"]
    n = (net["img_size"] // p) ** 2
    extras = 2 if net["num_classes"] > 0 else 1
    expect = {
        "encoder.patch_embed.proj.weight": (d, c, p, p),
        "encoder.encoder_pos_embed": (1, extras + n, d),
        "encoder_to_output.weight": (p * p * c, d),
        "encoder.in_blocks.0.attn.qkv.weight": (3 * d, d),
    }
    for k, shape in expect.items():
        if k not in sd:
            raise SystemExit(f"{path}: missing {k}")
        if tuple(sd[k].shape) != shape:
            raise SystemExit(f"{path}: {k} is {tuple(sd[k].shape)}, the config gives {shape}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("config")
    ap.add_argument("out_dir")
    a = ap.parse_args(argv)
    with open(a.config) as f:
        cfg = yaml.safe_load(f)
    if not isinstance(cfg, dict):
        raise SystemExit(f"{a.config}: not a YAML mapping")
    net = network_config(cfg, a.config)
    ckpt = torch.load(a.ckpt, map_location="cpu", weights_only=True)
    sd = network_state_dict(ckpt, a.ckpt)
    check_schedule(ckpt, net["beta_schedule"], a.ckpt)
    check_shapes(sd, net, a.ckpt)
    os.makedirs(a.out_dir, exist_ok=True)
    save_file(sd, os.path.join(a.out_dir, "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(a.out_dir, "config.json"), "w") as f:
        json.dump(net, f, indent=2)
        f.write("\n")
    with open(os.path.join(a.out_dir, "scheduler_config.json"), "w") as f:
        json.dump(scheduler_config(cfg), f, indent=2)
        f.write("\n")
    print(f"wrote {a.out_dir}: {len(sd)} tensors", file=sys.stderr)


if __name__ == "__main__":
    main()
