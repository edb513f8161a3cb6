#!/usr/bin/env python3
"""CPU forward of MaskDM's own MaskedUViT (mask_uvit.py), the PyTorch side of BENCHMARKS.md's
U-ViT figure; the freelunch side is `tests/uvit.rs`'s ignored `bench_forward_cpu`, on the same
config, batch and thread count.

    python tools/bench_uvit_torch.py /tmp/maskdm --config tools/configs/maskdm-celebahq-base-64.json \
        --batch 2 --threads 2 [--iters 10] [--warmup 2] [--mask-ratio 0.5]

/tmp/maskdm is a checkout of github.com/jiachenlei/maskdm (timm is shimmed as in
tools/gen_uvit_goldens.py). Random weights, float32, no_grad; with --mask-ratio, that share of
the patches is dropped (the masked forward of training). Prints one JSON line.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_uvit_goldens import install_shims, token_mask, with_extras  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("maskdm")
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--mask-ratio", type=float, default=0.0)
    a = ap.parse_args()
    install_shims()
    sys.path.insert(0, os.path.abspath(a.maskdm))
    from models import mask_uvit

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    with open(a.config) as f:
        cfg = json.load(f)
    net = {k: v for k, v in cfg.items() if not k.startswith("_") and k != "beta_schedule"}
    model = mask_uvit.MaskedUViT(**net).eval()
    n = (net["img_size"] // net["patch_size"]) ** 2
    x = torch.randn(a.batch, net["in_chans"], net["img_size"], net["img_size"])
    t = torch.arange(a.batch) * 117 % 1000
    mask = None
    if a.mask_ratio > 0:
        m = token_mask(a.batch, n, int(n * a.mask_ratio), torch.Generator().manual_seed(0))
        mask = with_extras(m, 1)
    times = []
    with torch.no_grad():
        for _ in range(a.warmup):
            model(x, t, mask=mask)
        for _ in range(a.iters):
            t0 = time.perf_counter()
            model(x, t, mask=mask)
            times.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"impl": "mask_uvit.py", "torch": torch.__version__, "threads": a.threads,
                      "batch": a.batch, "mask_ratio": a.mask_ratio,
                      "median_ms": statistics.median(times), "min_ms": min(times), "iters": a.iters}))


if __name__ == "__main__":
    main()
