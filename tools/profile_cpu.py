#!/usr/bin/env python3
"""Per-op profile of one U-Net's CPU forward: freelunch (`cpu::profile`, through the bench
binary `benches/profile_forward.rs`) against PyTorch's profiler on the same config, batch and
thread count, rounds interleaved (freelunch, PyTorch, freelunch, ...) because the machine drifts.

    cargo build --release --bench profile_forward
    python tools/profile_cpu.py --config tools/configs/ddpm-cifar10-32.json --shape 8,3,32,32 \
        --threads 2 [--rounds 3] [--iters 2]

Both sides use random weights (the same architecture; timing does not depend on the values).
freelunch's forwards reuse one workspace, as `freelunch sample` and its pipelines run them
(`FREELUNCH_PROFILE_WORKSPACE=0` in the environment allocates every output afresh instead).
PyTorch: float32, eval, no_grad, diffusers' default attention processor (SDPA). Each
`nn.Conv2d` / `nn.Linear` / norm / GEGLU / SiLU module is wrapped in a `record_function` label
so that its time is counted as one op kind, named as freelunch names them (conv3x3, conv1x1,
conv_stride2, linear, group_norm, ...); the remaining top-level aten ops are sorted by name
(scaled_dot_product_attention -> attention_self / attention_cross by the key length, add, cat,
upsample, layout for views and copies, other). A label's time excludes the labels nested in it
(GEGLU's projection counts as linear).

Prints per round the wall times, then one Markdown table: op, freelunch ms, PyTorch ms (medians
over every profiled forward), ratio, and each side's share of its total; and the plain
(unprofiled) wall medians with the per-round ratios. --json writes everything.
"""

import argparse
import collections
import glob
import json
import os
import statistics
import subprocess
import time

import torch

import diffusers
from diffusers import UNet2DConditionModel, UNet2DModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Ops whose rows merge when compared: freelunch fuses SiLU into GroupNorm where diffusers runs
# them one after the other.
MERGE = {"group_norm": "group_norm+silu", "silu": "group_norm+silu"}


def find_bin():
    cands = [p for p in glob.glob(os.path.join(ROOT, "target/release/deps/profile_forward-*"))
             if not p.endswith(".d")]
    if not cands:
        raise SystemExit("build it first: cargo build --release --bench profile_forward")
    return max(cands, key=os.path.getmtime)


def freelunch_round(binary, args, extra_env=None):
    env = dict(os.environ)
    env.update(extra_env or {})
    env.update({
        "FREELUNCH_THREADS": str(args.threads),
        "FREELUNCH_PROFILE_CONFIG": os.path.abspath(args.config),
        "FREELUNCH_PROFILE_SHAPE": args.shape,
        "FREELUNCH_PROFILE_ITERS": str(args.iters),
        "FREELUNCH_ROOT": ROOT,
        "FREELUNCH_PROFILE_DTYPE": args.dtype,
    })
    env.pop("FREELUNCH_PROFILE", None)
    out = subprocess.run([binary], env=env, check=True, capture_output=True, text=True).stdout
    runs = []
    for line in out.splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            runs.append({"wall_ms": d["wall_ms"], "ops": {k: v[0] for k, v in d["ops"].items()}})
    return runs


def build_torch(args):
    with open(args.config) as f:
        config = json.load(f)
    cls = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}[
        config.get("_class_name", "UNet2DModel")]
    model = cls.from_config(config).to(torch.float32).eval()
    b, c, h, w = (int(v) for v in args.shape.split(","))
    kwargs = {"sample": torch.randn(b, c, h, w),
              "timestep": torch.randint(0, 1000, (b,), dtype=torch.int64)}
    if cls is UNet2DConditionModel:
        cad = config.get("cross_attention_dim", 768)
        kwargs["encoder_hidden_states"] = torch.randn(b, 77, cad)
    label_modules(model)
    return model, kwargs


def module_label(m):
    if isinstance(m, torch.nn.Conv2d):
        k, s = m.kernel_size[0], m.stride[0]
        return "conv_stride2" if s != 1 else ("conv1x1" if k == 1 else "conv3x3")
    if isinstance(m, torch.nn.Linear):
        return "linear"
    if isinstance(m, torch.nn.GroupNorm):
        return "group_norm"
    if isinstance(m, torch.nn.LayerNorm):
        return "layer_norm"
    if isinstance(m, torch.nn.SiLU):
        return "silu"
    if type(m).__name__ == "GEGLU":
        return "geglu"
    return None


def label_modules(model):
    stack = []

    def pre(name):
        def hook(_m, _inp):
            rf = torch.profiler.record_function("fl::" + name)
            rf.__enter__()
            stack.append(rf)
        return hook

    def post(_m, _inp, _out):
        stack.pop().__exit__(None, None, None)

    for m in model.modules():
        name = module_label(m)
        if name:
            m.register_forward_pre_hook(pre(name))
            m.register_forward_hook(post)


def aten_kind(e):
    n = e.name
    if n == "aten::scaled_dot_product_attention":
        shapes = e.input_shapes
        try:
            return "attention_self" if shapes[0][-2] == shapes[1][-2] else "attention_cross"
        except (IndexError, TypeError):
            return "attention_self"
    if n in ("aten::add", "aten::add_"):
        return "add"
    if n == "aten::cat":
        return "cat"
    if n.startswith("aten::upsample"):
        return "upsample"
    if n in ("aten::mul", "aten::div", "aten::mul_", "aten::div_"):
        return "scale"
    if n in ("aten::silu", "aten::silu_"):
        return "silu"
    if n in ("aten::permute", "aten::reshape", "aten::view", "aten::transpose", "aten::contiguous",
             "aten::clone", "aten::copy_", "aten::flatten", "aten::to", "aten::chunk",
             "aten::split", "aten::unflatten", "aten::expand", "aten::t"):
        return "layout"
    if n in ("aten::exp", "aten::sin", "aten::cos", "aten::arange", "aten::cat") or "embed" in n:
        return "timestep_embedding"
    return "other"


def torch_profile(model, kwargs):
    acts = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=acts, record_shapes=True) as prof:
        t0 = time.perf_counter()
        model(**kwargs)
        wall = (time.perf_counter() - t0) * 1e3
    events = prof.events()
    ops = collections.defaultdict(float)
    for e in events:
        parent = e.cpu_parent
        if e.name.startswith("fl::"):
            ops[e.name[4:]] += e.cpu_time_total / 1e3
            # Take this label's time out of the nearest label it sits in.
            while parent is not None and not parent.name.startswith("fl::"):
                parent = parent.cpu_parent
            if parent is not None:
                ops[parent.name[4:]] -= e.cpu_time_total / 1e3
        elif parent is None and e.name.startswith("aten::"):
            ops[aten_kind(e)] += e.cpu_time_total / 1e3
    return {"wall_ms": wall, "ops": dict(ops)}


def merged(ops):
    out = collections.defaultdict(float)
    for k, v in ops.items():
        out[MERGE.get(k, k)] += v
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--shape", required=True, help="B,C,H,W")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=2, help="forwards per side per round")
    ap.add_argument("--bin", default=None, help="the profile_forward bench binary")
    ap.add_argument("--json", default=None)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32",
                    help="bf16: freelunch's CPU device in bf16 (AMX) against PyTorch's CPU "
                         "autocast to bfloat16")
    ap.add_argument("--also-gemm", action="store_true",
                    help="also run freelunch with FREELUNCH_CPU_CONV=gemm (the portable GEMM "
                         "convolution, the code before the direct kernel) in every round")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    diffusers.utils.logging.set_verbosity_error()
    binary = args.bin or find_bin()
    model, kwargs = build_torch(args)

    fl_runs, pt_runs, pt_plain, fl_plain, pairs = [], [], [], [], []
    gm_runs, gm_plain, gm_pairs = [], [], []
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    with torch.no_grad(), autocast:
        model(**kwargs)  # warm-up
        for r in range(args.rounds):
            fl = freelunch_round(binary, args)
            fl_runs += fl
            if args.also_gemm:
                gm = freelunch_round(binary, args, {"FREELUNCH_CPU_CONV": "gemm"})
                gm_runs += gm
            plain = []
            for _ in range(args.iters):
                t0 = time.perf_counter()
                model(**kwargs)
                plain.append((time.perf_counter() - t0) * 1e3)
            pt = [torch_profile(model, kwargs) for _ in range(args.iters)]
            pt_runs += pt
            fl_w = statistics.median(x["wall_ms"] for x in fl)
            pt_w = statistics.median(plain)
            fl_plain.append(fl_w)
            pt_plain.append(pt_w)
            pairs.append(fl_w / pt_w)
            if args.also_gemm:
                gm_w = statistics.median(x["wall_ms"] for x in gm)
                gm_plain.append(gm_w)
                gm_pairs.append(gm_w / pt_w)
                print(f"round {r}: freelunch (GEMM conv) {gm_w:.1f} ms, ratio {gm_w / pt_w:.2f}")
            print(f"round {r}: freelunch {fl_w:.1f} ms, PyTorch {pt_w:.1f} ms "
                  f"(profiled {statistics.median(x['wall_ms'] for x in pt):.1f} ms), "
                  f"ratio {fl_w / pt_w:.2f}", flush=True)

    def med(runs):
        keys = set().union(*(merged(x["ops"]).keys() for x in runs))
        return {k: statistics.median(merged(x["ops"]).get(k, 0.0) for x in runs) for k in keys}

    fl_ops, pt_ops = med(fl_runs), med(pt_runs)
    gm_ops = med(gm_runs) if gm_runs else {}
    fl_tot, pt_tot = sum(fl_ops.values()), sum(pt_ops.values())
    gm_tot = sum(gm_ops.values())
    keys = sorted(set(fl_ops) | set(pt_ops), key=lambda k: -max(fl_ops.get(k, 0), pt_ops.get(k, 0)))
    print()
    gh = " freelunch GEMM-conv ms | GEMM ratio |" if gm_ops else ""
    print(f"| op | freelunch ms | PyTorch ms | ratio | freelunch share | PyTorch share |{gh}")
    print("|---|---|---|---|---|---|" + ("---|---|" if gm_ops else ""))
    for k in keys:
        a, b = fl_ops.get(k, 0.0), pt_ops.get(k, 0.0)
        ratio = f"{a / b:.2f}" if b > 0.005 else "–"
        g = ""
        if gm_ops:
            gv = gm_ops.get(k, 0.0)
            g = f" {gv:.1f} | {gv / b:.2f} |" if b > 0.005 else f" {gv:.1f} | – |"
        print(f"| {k} | {a:.1f} | {b:.1f} | {ratio} | {100 * a / fl_tot:.1f}% | "
              f"{100 * b / pt_tot:.1f}% |{g}")
    g = f" {gm_tot:.1f} | {gm_tot / pt_tot:.2f} |" if gm_ops else ""
    print(f"| **sum of ops** | {fl_tot:.1f} | {pt_tot:.1f} | {fl_tot / pt_tot:.2f} | | |{g}")
    print()
    print(f"plain wall, medians over rounds: freelunch {statistics.median(fl_plain):.1f} ms, "
          f"PyTorch {statistics.median(pt_plain):.1f} ms; per-round ratios "
          + ", ".join(f"{p:.2f}" for p in pairs)
          + f" (median {statistics.median(pairs):.2f})")
    if gm_plain:
        print(f"freelunch with the GEMM convolution: {statistics.median(gm_plain):.1f} ms; "
              "per-round ratios " + ", ".join(f"{p:.2f}" for p in gm_pairs)
              + f" (median {statistics.median(gm_pairs):.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "torch": torch.__version__,
                       "diffusers": diffusers.__version__, "freelunch": fl_runs,
                       "pytorch_profiled": pt_runs, "freelunch_wall": fl_plain,
                       "pytorch_wall": pt_plain, "ratios": pairs, "freelunch_gemm": gm_runs,
                       "freelunch_gemm_wall": gm_plain, "gemm_ratios": gm_pairs}, f, indent=1)


if __name__ == "__main__":
    main()
