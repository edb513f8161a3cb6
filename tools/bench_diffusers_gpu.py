#!/usr/bin/env python3
"""GPU forward-pass benchmark of diffusers' Stable Diffusion 1.5 U-Net, the figure freelunch's
CUDA backend is set against.

    python3 tools/bench_diffusers_gpu.py [--device cuda] [--dtype all|fp16|fp32] [--batch 2]
        [--size 64] [--iters 30] [--warmup 5] [--fp32-strict] [--no-freeu]

Builds `UNet2DConditionModel` from SD1.5's U-Net config (written out below; random weights,
nothing downloaded), eval mode, default attention processor (SDPA), under
`torch.inference_mode()`. Inputs: latents [batch, 4, size, size], text states [batch, 77, 768],
timestep 500. Each figure is the median of `--iters` timed forwards (CUDA events on a GPU,
wall clock on the CPU) after `--warmup` untimed ones:

- fp32_ms: float32 with PyTorch's TF32 settings as they are (reported in `tf32`);
- fp32_strict_ms (`--fp32-strict`): float32 with TF32 off for matmuls and cuDNN convolutions;
- fp16_ms: float16;
- fp16_freeu_ms: float16 with `enable_freeu(s1=0.9, s2=0.2, b1=1.5, b2=1.6)` (SD1.5's values).

Prints one JSON object. A figure that could not be taken is null, with the reason under
"errors"; the exit status is 1 only when no figure was taken.
"""

import argparse
import json
import statistics
import sys
import time

import torch

import diffusers
from diffusers import UNet2DConditionModel

# runwayml/stable-diffusion-v1-5, unet/config.json.
SD15_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
}

FREEU_SD15 = {"s1": 0.9, "s2": 0.2, "b1": 1.5, "b2": 1.6}


def time_forward(model, inputs, device, warmup, iters):
    """Median and min milliseconds of `iters` forwards after `warmup` untimed ones."""
    cuda = device.type == "cuda"
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(**inputs)
        if cuda:
            torch.cuda.synchronize(device)
        for _ in range(iters):
            if cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                model(**inputs)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                model(**inputs)
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def make_inputs(args, device, dtype):
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    sample = torch.randn(args.batch, 4, args.size, args.size, generator=gen)
    text = torch.randn(args.batch, 77, SD15_UNET["cross_attention_dim"], generator=gen)
    return {
        "sample": sample.to(device=device, dtype=dtype),
        "timestep": torch.tensor(500, device=device),
        "encoder_hidden_states": text.to(device=device, dtype=dtype),
    }


def tf32_flags():
    return {
        "matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn": bool(torch.backends.cudnn.allow_tf32),
    }


def set_tf32(matmul, cudnn):
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="torch device (default cuda)")
    ap.add_argument("--dtype", choices=["all", "fp16", "fp32"], default="all",
                    help="which precisions to time (default all: fp32, then fp16 and FreeU)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=64, help="latent height and width (default 64)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fp32-strict", action="store_true",
                    help="also time float32 with TF32 off for matmuls and cuDNN")
    ap.add_argument("--no-freeu", action="store_true", help="skip the FreeU figure")
    args = ap.parse_args()

    diffusers.utils.logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = device.type

    result = {
        "impl": "diffusers",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "device": name,
        "model": "sd15-unet (random weights)",
        "batch": args.batch,
        "size": args.size,
        "tokens": 77,
        "timestep": 500,
        "warmup": args.warmup,
        "iters": args.iters,
        "tf32": tf32_flags(),
        "attn_processor": None,
        "fp32_ms": None,
        "fp32_strict_ms": None,
        "fp16_ms": None,
        "fp16_freeu_ms": None,
        "min_ms": {},
        "errors": {},
    }

    t0 = time.perf_counter()
    model = UNet2DConditionModel.from_config(SD15_UNET).eval()
    model.requires_grad_(False)
    model.to(device)
    result["build_s"] = round(time.perf_counter() - t0, 2)
    result["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
    procs = {type(p).__name__ for p in model.attn_processors.values()}
    result["attn_processor"] = ",".join(sorted(procs))

    def take(key, dtype):
        try:
            med, low = time_forward(model, make_inputs(args, device, dtype), device, args.warmup, args.iters)
            result[key] = round(med, 3)
            result["min_ms"][key] = round(low, 3)
        except Exception as e:  # a figure lost (out of memory, an op missing on the CPU) is reported
            result["errors"][key] = f"{type(e).__name__}: {e}"[:500]
            if device.type == "cuda":
                torch.cuda.empty_cache()

    if args.dtype in ("all", "fp32"):
        take("fp32_ms", torch.float32)
        if args.fp32_strict:
            saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            set_tf32(False, False)
            take("fp32_strict_ms", torch.float32)
            set_tf32(*saved)
    if args.dtype in ("all", "fp16"):
        model.to(torch.float16)
        take("fp16_ms", torch.float16)
        if not args.no_freeu:
            model.enable_freeu(**FREEU_SD15)
            take("fp16_freeu_ms", torch.float16)
            model.disable_freeu()
    if result["fp16_ms"] and result["fp16_freeu_ms"]:
        result["freeu_overhead_pct"] = round(100.0 * (result["fp16_freeu_ms"] / result["fp16_ms"] - 1.0), 2)
    if device.type == "cuda":
        result["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)

    print(json.dumps(result))
    taken = [k for k in ("fp32_ms", "fp32_strict_ms", "fp16_ms", "fp16_freeu_ms") if result[k] is not None]
    sys.exit(0 if taken else 1)


if __name__ == "__main__":
    main()
