#!/usr/bin/env python3
"""CPU forward-pass benchmark of a diffusers U-Net, as a baseline for freelunch.

    python -m pip install -r tools/requirements.txt
    python tools/bench_diffusers_cpu.py --config tools/configs/ddpm-cifar10-32.json \
        --batch 8 --threads 2 [--iters 20] [--warmup 3]

Builds the model from the config with random weights (float32, eval, no_grad,
default attention processor), feeds a random [batch, in_channels, size, size]
sample plus random timesteps, warms up, times `--iters` forwards, and prints one
JSON line: {"impl", "torch", "diffusers", "threads", "batch", "median_ms",
"min_ms", "iters", ...}.
"""

import argparse
import json
import statistics
import time

import torch

import diffusers
from diffusers import UNet2DConditionModel, UNet2DModel


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="diffusers config.json of the U-Net")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--size", type=int, default=None, help="spatial size (default: config sample_size)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    diffusers.utils.logging.set_verbosity_error()

    with open(args.config) as f:
        config = json.load(f)
    cls_name = config.get("_class_name", "UNet2DModel")
    if cls_name == "UNet2DModel":
        cls = UNet2DModel
    elif cls_name == "UNet2DConditionModel":
        cls = UNet2DConditionModel
    else:
        raise SystemExit(f"unsupported _class_name {cls_name}")
    model = cls.from_config(config).to(torch.float32).eval()

    size = args.size or config.get("sample_size") or 32
    if isinstance(size, (list, tuple)):
        h, w = size
    else:
        h = w = int(size)
    sample = torch.randn(args.batch, config.get("in_channels", 3), h, w)
    timestep = torch.randint(0, 1000, (args.batch,), dtype=torch.int64)
    kwargs = {"sample": sample, "timestep": timestep}
    if cls is UNet2DConditionModel:
        cad = config.get("cross_attention_dim", 1280)
        kwargs["encoder_hidden_states"] = torch.randn(args.batch, 77, cad)

    times_ms = []
    with torch.no_grad():
        for _ in range(args.warmup):
            model(**kwargs)
        for _ in range(args.iters):
            t0 = time.perf_counter()
            model(**kwargs)
            times_ms.append((time.perf_counter() - t0) * 1e3)

    print(
        json.dumps(
            {
                "impl": "diffusers",
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "threads": args.threads,
                "batch": args.batch,
                "median_ms": round(statistics.median(times_ms), 3),
                "min_ms": round(min(times_ms), 3),
                "iters": args.iters,
                "warmup": args.warmup,
                "size": [h, w],
                "params": sum(p.numel() for p in model.parameters()),
                "config": args.config,
            }
        )
    )


if __name__ == "__main__":
    main()
