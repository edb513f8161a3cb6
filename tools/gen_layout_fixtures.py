#!/usr/bin/env python3
"""Generate the folder-layout fixtures of the `freelunch` crate: the ways diffusers and the
Hugging Face cache store a model on disk, each checked by loading it with diffusers itself.

How to run (from the repo root):

    python -m pip install -r tools/requirements.txt && python tools/gen_layout_fixtures.py

Output: `tests/fixtures/layouts/` (located from this script's own path):

    inputs.safetensors          `sample` [2, 3, 8, 8] and `timestep` [2] for every case
    cases.json                  [{"name", "model" (a path relative to layouts/ or a repo id),
                                  "variant", "revision", "expected" (a tensor name),
                                  "reference_variant", "reference_model" (what diffusers must
                                  be told where it reads less than freelunch does)}]
    expected.safetensors        one tensor per case: diffusers' output of
                                `UNet2DModel.from_pretrained(model, variant=..., revision=...,
                                torch_dtype=float32)(**inputs).sample`
    variants/                   full-precision weights, an fp16 single-file variant and a bf16
                                variant sharded as save_pretrained names it now
                                (diffusion_pytorch_model.safetensors.index.bf16.json with
                                diffusion_pytorch_model.bf16-0000i-of-0000n.safetensors)
    variants_only/              only variants: fp16 sharded in diffusers' legacy naming
                                (diffusion_pytorch_model.safetensors.fp16.index.json with
                                diffusion_pytorch_model-0000i-of-0000n.fp16.safetensors)
    hub/models--freelunch--tiny-unet/
                                a Hugging Face cache repo, as huggingface_hub writes one:
                                refs/main and refs/v2 hold commit hashes, snapshots/<commit>/
                                holds symlinks into blobs/<sha256>; the two revisions hold
                                different weights. diffusers reads it with
                                cache_dir=hub, local_files_only=True.

Every variant and revision holds different weights (its own seed), so a loader that reads the
wrong files fails the comparison by far more than rounding. Everything runs on the CPU in f32;
16-bit weights are widened to f32 by diffusers as by freelunch.
"""

import hashlib
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

import diffusers
from diffusers import UNet2DModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_common import FIXTURES, dir_size, perturb_  # noqa: E402

OUT = os.path.join(FIXTURES, "layouts")
REPO_ID = "freelunch/tiny-unet"


def tiny_model(seed):
    torch.manual_seed(seed)
    model = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=8,
    )
    perturb_(model)
    return model.eval()


def save(model, folder, dtype=torch.float32, **kw):
    model.to(dtype).save_pretrained(folder, safe_serialization=True, **kw)
    model.to(torch.float32)


def rename_to_legacy(folder, variant):
    """Rewrites a sharded variant save into the naming diffusers used before 0.28."""
    index = os.path.join(folder, f"diffusion_pytorch_model.safetensors.index.{variant}.json")
    with open(index) as f:
        idx = json.load(f)
    renames = {}
    for old in sorted(set(idx["weight_map"].values())):
        # diffusion_pytorch_model.fp16-00001-of-00003.safetensors
        #   -> diffusion_pytorch_model-00001-of-00003.fp16.safetensors
        stem, shard = old[: -len(".safetensors")].split(f".{variant}-")
        renames[old] = f"{stem}-{shard}.{variant}.safetensors"
        os.rename(os.path.join(folder, old), os.path.join(folder, renames[old]))
    idx["weight_map"] = {k: renames[v] for k, v in idx["weight_map"].items()}
    os.remove(index)
    legacy = os.path.join(folder, f"diffusion_pytorch_model.safetensors.{variant}.index.json")
    with open(legacy, "w") as f:
        json.dump(idx, f, indent=2, sort_keys=True)
        f.write("\n")


def commit_of(seed):
    return hashlib.sha1(f"freelunch-layout-{seed}".encode()).hexdigest()


def hub_snapshot(repo, model, revision, seed):
    """Writes `model` as the snapshot of `revision` in cache repo folder `repo`."""
    commit = commit_of(seed)
    staging = os.path.join(repo, "staging")
    save(model, staging)
    snap = os.path.join(repo, "snapshots", commit)
    os.makedirs(snap)
    os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
    for name in sorted(os.listdir(staging)):
        data = open(os.path.join(staging, name), "rb").read()
        blob = hashlib.sha256(data).hexdigest()
        with open(os.path.join(repo, "blobs", blob), "wb") as f:
            f.write(data)
        os.symlink(os.path.join("..", "..", "blobs", blob), os.path.join(snap, name))
    shutil.rmtree(staging)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", revision), "w") as f:
        f.write(commit)  # huggingface_hub writes the hash without a newline


def main():
    diffusers.utils.logging.set_verbosity_error()
    torch.set_num_threads(1)
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    torch.manual_seed(7)
    inputs = {
        "sample": torch.randn(2, 3, 8, 8),
        "timestep": torch.tensor([3, 911], dtype=torch.int64),
    }
    save_file(inputs, os.path.join(OUT, "inputs.safetensors"))

    variants = os.path.join(OUT, "variants")
    save(tiny_model(1), variants)
    save(tiny_model(2), variants, torch.float16, variant="fp16")
    save(tiny_model(3), variants, torch.bfloat16, variant="bf16", max_shard_size="40KB")
    only = os.path.join(OUT, "variants_only")
    save(tiny_model(4), only, torch.float16, variant="fp16", max_shard_size="40KB")
    rename_to_legacy(only, "fp16")
    hub = os.path.join(OUT, "hub")
    repo = os.path.join(hub, "models--" + REPO_ID.replace("/", "--"))
    hub_snapshot(repo, tiny_model(5), "main", 5)
    hub_snapshot(repo, tiny_model(6), "v2", 6)

    cases = [
        {"name": "default_prefers_full_precision", "model": "variants"},
        {"name": "variant_fp16", "model": "variants", "variant": "fp16"},
        {"name": "variant_bf16_sharded", "model": "variants", "variant": "bf16"},
        # diffusers refuses a folder without full-precision weights unless told the variant;
        # freelunch takes the only one there is, so its reference is diffusers told it.
        {"name": "only_variant_legacy_shards", "model": "variants_only", "reference_variant": "fp16"},
        {"name": "legacy_shards_named", "model": "variants_only", "variant": "fp16"},
        # diffusers takes a cache repo by its id only; freelunch also takes its folder.
        {
            "name": "cache_repo_folder",
            "model": os.path.relpath(repo, OUT),
            "reference_model": REPO_ID,
        },
        {"name": "cache_repo_id", "model": REPO_ID},
        {"name": "cache_repo_id_revision", "model": REPO_ID, "revision": "v2"},
        {"name": "cache_commit_revision", "model": REPO_ID, "revision": commit_of(6)},
        {
            "name": "snapshot_folder",
            "model": os.path.relpath(os.path.join(repo, "snapshots", commit_of(5)), OUT),
        },
    ]
    expected = {}
    for case in cases:
        kw = {"torch_dtype": torch.float32}
        variant = case.get("variant") or case.get("reference_variant")
        if variant:
            kw["variant"] = variant
        reference = case.get("reference_model", case["model"])
        if reference == REPO_ID:
            kw.update(cache_dir=hub, local_files_only=True, revision=case.get("revision"))
            where = REPO_ID
        else:
            where = os.path.join(OUT, reference)
        model = UNet2DModel.from_pretrained(where, **kw).to(torch.float32).eval()
        with torch.no_grad():
            out = model(**inputs).sample
        case["expected"] = case["name"]
        expected[case["name"]] = out.contiguous()
        print(f"{case['name']:34s} std={float(out.std()):.4f}")
    save_file(expected, os.path.join(OUT, "expected.safetensors"))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(cases, f, indent=2)
        f.write("\n")
    print(f"layouts: {dir_size(OUT) / 1e3:.1f} kB in {OUT}")


if __name__ == "__main__":
    main()
