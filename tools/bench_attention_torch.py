#!/usr/bin/env python3
"""PyTorch's CPU attention on SD1.5's shapes, the other side of BENCHMARKS.md's attention ratios
(issue 13); the freelunch side is `benches/cpu_ops.rs`'s `cpu_attention_flop` group on the same
shapes and thread count.

    python tools/bench_attention_torch.py --threads 1 [--shapes "2,4096,4096,320,8;..."] \
        [--iters 10] [--warmup 2]

A shape is B,N,M,C,heads: q [B, N, C], k and v [B, M, C], as diffusers' projections produce
them. What is timed is diffusers' AttnProcessor2_0 around `F.scaled_dot_product_attention`:
the heads split off by view + transpose (no copy), SDPA (PyTorch's CPU flash kernel), and the
result transposed back into [B, N, C] (one copy): what freelunch's kernel does in one call.
float32 (or with `--dtype bf16`, q, k and v in bf16 under CPU autocast, as the bf16 model's
projections hand them over), no_grad, `torch.set_num_threads(threads)`. Prints one JSON line per shape (median and
minimum of `iters` timed calls, in ms, and the least CPU time of the calling thread: at
one thread, a figure a busy machine perturbs less).
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

SD15 = "2,4096,4096,320,8;2,4096,77,320,8;2,1024,1024,640,8;2,256,256,1280,8"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--shapes", default=SD15)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    for spec in filter(None, a.shapes.split(";")):
        b, n, m, c, heads = (int(x) for x in spec.split(","))
        dh = c // heads
        dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
        q = torch.randn(b, n, c).to(dtype)
        k = torch.randn(b, m, c).to(dtype)
        v = torch.randn(b, m, c).to(dtype)

        def call():
            split = lambda t: t.view(b, -1, heads, dh).transpose(1, 2)  # noqa: E731
            o = F.scaled_dot_product_attention(split(q), split(k), split(v))
            return o.transpose(1, 2).reshape(b, -1, c)

        times, cpu = [], []
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dtype == "bf16")
        with torch.no_grad(), autocast:
            for _ in range(a.warmup):
                call()
            for _ in range(a.iters):
                t0, c0 = time.perf_counter(), time.thread_time()
                call()
                times.append((time.perf_counter() - t0) * 1e3)
                cpu.append((time.thread_time() - c0) * 1e3)
        print(
            json.dumps(
                {
                    "shape": spec,
                    "threads": a.threads,
                    "dtype": a.dtype,
                    "torch": torch.__version__,
                    "median_ms": round(statistics.median(times), 3),
                    "min_ms": round(min(times), 3),
                    # At one thread the calling thread does all the work, so its CPU time is
                    # the call's time without what other processes took of the core.
                    "min_thread_cpu_ms": round(min(cpu), 3),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
