#!/usr/bin/env python3
"""Convert an official MaskUNet (training-based / hyper-network variant) checkpoint to one
safetensors file for the `freelunch` crate.

How to run (from the repo root):

    python tools/convert_maskunet_checkpoint.py CHECKPOINT_DIR OUT.safetensors

CHECKPOINT_DIR is a `checkpoint-<step>/` folder written by the official
`training/train_hyperunet.py` (github.com/gudaochangsheng/MaskUnet). It holds

    mask_generators.pth   torch.save(unet.mask_generators.state_dict())   (nn.ModuleList)
    adapters.pth          torch.save(unet.adapters.state_dict())          (nn.ModuleList of
                                                                            nn.ModuleDict)

The output holds every tensor of both state dicts, as f32 and contiguous, with the keys
prefixed by `mask_generators.` / `adapters.`:

    mask_generators.{i}.proj_temb.weight             [Cin, T]            (no bias)
    mask_generators.{i}.conv_kernel_mask.0.weight    [64, Cin, 1, 1]     + .bias [64]
    mask_generators.{i}.conv_kernel_mask.2.weight    [I4*O4, 64, 1, 1]   + .bias [I4*O4]
    adapters.{i}.{layer}.conv_in.weight              [out_f, O4, 1, 1]   + .bias [out_f]
    adapters.{i}.{layer}.conv_out.weight             [in_f, I4, 1, 1]    + .bias [in_f]

({i} = up-block index; {layer} = the masked Linear's module name relative to the up block
with '.' replaced by '_', e.g. `attentions_0_transformer_blocks_0_attn1_to_q`.) Up blocks
without masked layers (e.g. SD1.5's up_blocks.0) have a mask generator but no adapters.

The script checks the key layout and that the shapes of each block's generator and adapters
agree (conv_kernel_mask.2 outputs I4*O4 channels, every adapter's conv_in / conv_out take
O4 / I4 channels). A leading `module.` (DistributedDataParallel) is stripped if present.
Only tensors are accepted; the .pth files are loaded with `torch.load(weights_only=True)`.
"""

import argparse
import os
import re
import sys

import torch
from safetensors.torch import save_file

GEN_RE = re.compile(r"^(\d+)\.(proj_temb\.weight|conv_kernel_mask\.[02]\.(?:weight|bias))$")
ADA_RE = re.compile(r"^(\d+)\.([A-Za-z0-9_]+)\.(conv_in|conv_out)\.(weight|bias)$")


def load_state_dict(path):
    if not os.path.isfile(path):
        raise SystemExit(f"missing {path}")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise SystemExit(f"{path}: expected a state dict, got {type(sd).__name__}")
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise SystemExit(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        if k.startswith("module."):
            k = k[len("module.") :]
        if k in out:
            raise SystemExit(f"{path}: duplicate key {k!r} after stripping 'module.'")
        out[k] = v
    return out


def check_layout(gens, adas):
    """Validate keys and cross-check shapes; returns {block: (Cin, T, I4*O4)} for the log."""
    blocks = {}
    for k, v in gens.items():
        m = GEN_RE.match(k)
        if m is None:
            raise SystemExit(f"mask_generators.pth: unexpected key {k!r}")
        blocks.setdefault(int(m.group(1)), {})[m.group(2)] = v
    info = {}
    for i, p in sorted(blocks.items()):
        need = [
            "proj_temb.weight",
            "conv_kernel_mask.0.weight",
            "conv_kernel_mask.0.bias",
            "conv_kernel_mask.2.weight",
            "conv_kernel_mask.2.bias",
        ]
        missing = [n for n in need if n not in p]
        if missing:
            raise SystemExit(f"mask_generators.{i}: missing {missing}")
        cin, t = p["proj_temb.weight"].shape
        w0, w2 = p["conv_kernel_mask.0.weight"], p["conv_kernel_mask.2.weight"]
        hid = w0.shape[0]
        if tuple(w0.shape) != (hid, cin, 1, 1) or tuple(p["conv_kernel_mask.0.bias"].shape) != (hid,):
            raise SystemExit(f"mask_generators.{i}: conv_kernel_mask.0 shape {tuple(w0.shape)} vs Cin {cin}")
        n = w2.shape[0]
        if tuple(w2.shape) != (n, hid, 1, 1) or tuple(p["conv_kernel_mask.2.bias"].shape) != (n,):
            raise SystemExit(f"mask_generators.{i}: conv_kernel_mask.2 shape {tuple(w2.shape)}")
        info[i] = (cin, t, n)

    layers = {}
    for k, v in adas.items():
        m = ADA_RE.match(k)
        if m is None:
            raise SystemExit(f"adapters.pth: unexpected key {k!r}")
        i, name = int(m.group(1)), m.group(2)
        layers.setdefault((i, name), {})[f"{m.group(3)}.{m.group(4)}"] = v
    per_block = {}
    for (i, name), p in sorted(layers.items()):
        if i not in info:
            raise SystemExit(f"adapters.{i}.{name}: no mask_generators.{i}")
        missing = [n for n in ("conv_in.weight", "conv_in.bias", "conv_out.weight", "conv_out.bias") if n not in p]
        if missing:
            raise SystemExit(f"adapters.{i}.{name}: missing {missing}")
        wi, wo = p["conv_in.weight"], p["conv_out.weight"]
        if wi.dim() != 4 or wi.shape[2:] != (1, 1) or wo.dim() != 4 or wo.shape[2:] != (1, 1):
            raise SystemExit(f"adapters.{i}.{name}: conv weights must be [*, *, 1, 1]")
        out_f, o4 = wi.shape[:2]
        in_f, i4 = wo.shape[:2]
        if tuple(p["conv_in.bias"].shape) != (out_f,) or tuple(p["conv_out.bias"].shape) != (in_f,):
            raise SystemExit(f"adapters.{i}.{name}: bias shapes")
        if i4 * o4 != info[i][2]:
            raise SystemExit(
                f"adapters.{i}.{name}: O4*I4 = {o4}*{i4} != mask_generators.{i} output channels {info[i][2]}"
            )
        seen = per_block.setdefault(i, (o4, i4, []))
        if seen[:2] != (o4, i4):
            raise SystemExit(f"adapters.{i}: inconsistent (O4, I4) {(o4, i4)} vs {seen[:2]}")
        seen[2].append((name, out_f, in_f))
    return info, per_block


def convert(ckpt_dir, out_path, verbose=True):
    gens = load_state_dict(os.path.join(ckpt_dir, "mask_generators.pth"))
    adas = load_state_dict(os.path.join(ckpt_dir, "adapters.pth"))
    info, per_block = check_layout(gens, adas)
    out = {}
    for prefix, sd in (("mask_generators.", gens), ("adapters.", adas)):
        for k, v in sd.items():
            out[prefix + k] = v.detach().to(torch.float32).contiguous()
    save_file(out, out_path, metadata={"format": "pt", "source": "MaskUNet hyper-network checkpoint"})
    if verbose:
        dtypes = sorted({str(v.dtype).replace("torch.", "") for v in list(gens.values()) + list(adas.values())})
        print(f"{ckpt_dir} ({'/'.join(dtypes)}) -> {out_path}: {len(out)} tensors (f32)")
        for i, (cin, t, n) in sorted(info.items()):
            if i in per_block:
                o4, i4, layers = per_block[i]
                print(f"  up_blocks.{i}: Cin={cin} T={t} I4*O4={n} (O4={o4}, I4={i4}), {len(layers)} adapters")
            else:
                print(f"  up_blocks.{i}: Cin={cin} T={t} I4*O4={n}, no adapters")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint_dir", help="folder with mask_generators.pth and adapters.pth")
    ap.add_argument("out", help="output .safetensors path")
    args = ap.parse_args(argv)
    convert(args.checkpoint_dir, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
