#!/usr/bin/env python3
"""Load time and peak memory of a real-size U-Net checkpoint: freelunch against diffusers, in the
same run, interleaved (these VMs drift), each load in a fresh process.

    python tools/bench_load.py make DIR          # writes DIR/sd15-f32 and DIR/sdxl-f16 (random
                                                 # weights, published configs; ~3.4 GB + ~5.1 GB)
    python tools/bench_load.py run DIR [--rounds 3] [--freelunch target/release/freelunch]

`run` times, per checkpoint and round:
  - diffusers: `UNet2DConditionModel.from_pretrained(dir[, variant="fp16", torch_dtype=float16])`
    and one forward at 8x8 latents (torch.no_grad, CPU);
  - freelunch: `freelunch forward --model dir --input 8x8 --output ...` (the CLI: it loads, checks
    every weight finite, runs the same forward and writes the output).
Wall time from process start to exit, and the peak RSS of that process (wait4's ru_maxrss), with
the page cache warm (one untimed read of the files first); "loading" is diffusers' import plus
`from_pretrained`, and for freelunch the time to its model being built (inputs read, weights
mapped, checked finite and widened where stored in 16 bits), as its summary line reports it.
Prints a Markdown table for BENCHMARKS.md.
"""

import argparse
import json
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

CASES = {
    # name: (config file, dtype, variant)
    "sd15-f32": ("sd15.json", "float32", None),
    "sdxl-f16": ("sdxl-base.json", "float16", "fp16"),
}


def make(root):
    import torch
    from diffusers import UNet2DConditionModel

    for name, (cfg_file, dtype, variant) in CASES.items():
        out = os.path.join(root, name)
        if os.path.isdir(out):
            print(f"{out}: exists")
            continue
        with open(os.path.join(HERE, "configs", cfg_file)) as f:
            cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(cfg).to(getattr(torch, dtype))
        # One file, as the Hub ships these (diffusers would shard at 10 GB by default).
        unet.save_pretrained(out, variant=variant, max_shard_size="100GB")
        print(f"{out}: {sum(p.numel() for p in unet.parameters()) / 1e9:.3f} B parameters")
        del unet


def inputs(root, name):
    """An 8x8-latent input for the checkpoint, as a safetensors file for freelunch and a dict."""
    import torch
    from safetensors.torch import save_file

    with open(os.path.join(root, name, "config.json")) as f:
        cfg = json.load(f)
    g = torch.Generator().manual_seed(1)
    x = {
        "sample": torch.randn(1, cfg["in_channels"], 8, 8, generator=g),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": torch.randn(1, 77, cfg["cross_attention_dim"], generator=g),
    }
    if cfg.get("addition_embed_type") == "text_time":
        x["text_embeds"] = torch.randn(1, 1280, generator=g)
        x["time_ids"] = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]])
    path = os.path.join(root, f"{name}-input.safetensors")
    save_file(x, path)
    return path


DIFFUSERS_CHILD = r"""
import sys, time, torch
t0 = time.perf_counter()
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file
root, name, dtype, variant, inp = sys.argv[1:6]
kw = {"torch_dtype": getattr(torch, dtype)}
if variant != "-":
    kw["variant"] = variant
unet = UNet2DConditionModel.from_pretrained(f"{root}/{name}", **kw)
t1 = time.perf_counter()
x = load_file(inp)
cond = {}
if "text_embeds" in x:
    cond["added_cond_kwargs"] = {"text_embeds": x["text_embeds"].to(unet.dtype), "time_ids": x["time_ids"].to(unet.dtype)}
with torch.no_grad():
    unet(x["sample"].to(unet.dtype), x["timestep"], encoder_hidden_states=x["encoder_hidden_states"].to(unet.dtype), **cond)
t2 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f}")
"""


def measure_rss(argv):
    """Wall seconds, peak RSS in bytes and stdout of `argv`, run as a direct child (wait4)."""
    r, w = os.pipe()
    err = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.dup2(w, 1)
        os.dup2(err.fileno(), 2)
        os.execvp(argv[0], argv)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    err.seek(0)
    stderr = err.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{argv} failed with status {status}:\n{stderr}")
    return wall, usage.ru_maxrss * 1024, b"".join(chunks).decode() + stderr


def warm(path):
    for dirpath, _, files in os.walk(path):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                while fh.read(1 << 24):
                    pass


def run(root, rounds, freelunch):
    rows = {}
    for name, (cfg_file, dtype, variant) in CASES.items():
        path = os.path.join(root, name)
        if not os.path.isdir(path):
            print(f"{path}: missing (run `make` first)", file=sys.stderr)
            continue
        inp = inputs(root, name)
        warm(path)
        size = sum(
            os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
        )
        for r in range(rounds):
            with tempfile.TemporaryDirectory() as tmp:
                fl = [freelunch, "forward", "--model", path, "--device", "cpu",
                      "--input", inp, "--output", os.path.join(tmp, "out.safetensors")]
                wall, rss, out = measure_rss(fl)
                # "wrote ...: sample [..] in T s (inputs and model loaded in L s)"
                load_s = float(re.search(r"loaded in ([0-9.]+) s", out).group(1))
                rows.setdefault((name, "freelunch"), []).append((wall, rss, load_s))
            dv = [sys.executable, "-c", DIFFUSERS_CHILD, root, name, dtype, variant or "-", inp]
            wall, rss, out = measure_rss(dv)
            load_s = float(out.split()[0])
            rows.setdefault((name, "diffusers"), []).append((wall, rss, load_s))
            print(f"round {r}: {name} done", file=sys.stderr)
        rows[(name, "size")] = size
    print("| checkpoint | file size | runner | process: load + 8x8 forward, s (median) | of which loading, s | peak RSS, GB |")
    print("|---|---|---|---|---|---|")
    for name in CASES:
        if (name, "size") not in rows:
            continue
        size = rows[(name, "size")]
        for runner in ("freelunch", "diffusers"):
            vals = rows[(name, runner)]
            med = sorted(v[0] for v in vals)[len(vals) // 2]
            rss = max(v[1] for v in vals)
            load = f"{sorted(v[2] for v in vals)[len(vals) // 2]:.2f}"
            print(f"| {name} | {size / 1e9:.2f} GB | {runner} | {med:.2f} | {load} | {rss / 1e9:.2f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["make", "run"])
    ap.add_argument("dir")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--freelunch", default=os.path.join(REPO, "target", "release", "freelunch"))
    a = ap.parse_args()
    if a.what == "make":
        make(a.dir)
    else:
        run(a.dir, a.rounds, a.freelunch)


if __name__ == "__main__":
    main()
