#!/usr/bin/env python3
"""Measure how far diffusers itself is from its own float32 output when the fixture models run
in bfloat16 and float16 (the yardstick for the GPU tests' "f16/bf16 within 1e-2 relative L2 of f32").

How to run (from the repo root):

    python -m pip install -r tools/requirements.txt && python tools/half_precision_error.py

Nothing is written; it prints one table. For each model fixture under `tests/fixtures/<case>/`
(plus sd15_like with diffusers' FreeU, SD1.5 preset, on the `boosters/sd15_16x16` inputs) it

  1. loads the model in f32 (f16/bf16-stored weights upcast) and checks `model(**inputs)` against
     the committed golden (`expected.safetensors` / `freeu_sd15.safetensors`) -> column `golden`;
  2. takes that f32 output as the reference `ref` and reports rel L2 = ||out - ref|| / ||ref||
     (float64 norms) of:
       f16       model.to(float16), float inputs cast to float16
       bf16      model.to(bfloat16), float inputs cast to bfloat16
       bf16 w    only the weights rounded to bf16, compute in f32:
                 model.to(bfloat16).to(float32), f32 inputs
       bf16 in   only the float inputs rounded to bf16, f32 weights, compute in f32
       bf16 all  as bf16, but timestep and SDXL time_ids are also cast to bf16 (a bf16 timestep
                 such as 437 -> 436 changes the conditioning itself; in the columns above they
                 stay f32 -- diffusers computes the sinusoidal embeddings in f32 and casts the
                 result to the sample dtype, as a pipeline with an f32 scheduler does).

"Float inputs" = sample, encoder_hidden_states, text_embeds (and time_ids only in `bf16 all`);
integer timesteps / class labels are left alone. Everything runs on CPU under torch.no_grad()
with the default attention processor; the run is deterministic. bf16 on CPU goes through
oneDNN (f32 accumulation in matmul/conv, f32 statistics in norms), like cuBLAS/cuDNN on a GPU,
but the rounding points are not identical to a GPU run, so read the numbers as magnitudes.
"""

import copy
import os
import sys

import torch
from safetensors.torch import load_file

import diffusers
from diffusers import UNet2DConditionModel, UNet2DModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_common import FIXTURES, load_model, rel_l2  # noqa: E402

SD15_PRESET = dict(s1=0.9, s2=0.2, b1=1.5, b2=1.6)  # diffusers' FreeU preset for SD1.5
GOLDEN_TOL = 1e-5  # f32 CPU recomputation vs committed golden, rel L2

# label -> (model dir under tests/fixtures, weights variant, inputs file, golden file, FreeU)
CASES = {
    "ddpm_basic": ("ddpm_basic", None, "ddpm_basic/inputs", "ddpm_basic/expected", None),
    "ddpm_scale_shift_class": (
        "ddpm_scale_shift_class",
        "fp16",
        "ddpm_scale_shift_class/inputs",
        "ddpm_scale_shift_class/expected",
        None,
    ),
    "ddpm_noattn_sharded": (
        "ddpm_noattn_sharded/model/unet",
        None,
        "ddpm_noattn_sharded/inputs",
        "ddpm_noattn_sharded/expected",
        None,
    ),
    "sd15_like": ("sd15_like", None, "sd15_like/inputs", "sd15_like/expected", None),
    "sd21_like": ("sd21_like", None, "sd21_like/inputs", "sd21_like/expected", None),
    "sdxl_like": ("sdxl_like", None, "sdxl_like/inputs", "sdxl_like/expected", None),
    "sd_mid_only_cross": (
        "sd_mid_only_cross",
        None,
        "sd_mid_only_cross/inputs",
        "sd_mid_only_cross/expected",
        None,
    ),
    "sd15_like+FreeU(sd15)": (
        "sd15_like",
        None,
        "boosters/sd15_16x16/inputs",
        "boosters/sd15_16x16/freeu_sd15",
        SD15_PRESET,
    ),
}

ALWAYS_CAST = ("sample", "encoder_hidden_states", "text_embeds")
CAST_IN_ALL = ("timestep", "time_ids")


def load(model_dir, variant):
    if variant is None:
        return load_model(model_dir)
    # golden_common.load_model does not pass a variant; same thing with one.
    path = os.path.join(FIXTURES, model_dir)
    cls = UNet2DModel if "ddpm" in model_dir else UNet2DConditionModel
    model = cls.from_pretrained(path, variant=variant, torch_dtype=torch.float32)
    return model.to(torch.float32).eval()


def cast_inputs(inputs, dtype, names):
    return {
        k: (v.to(dtype) if (k in names and v.is_floating_point()) else v) for k, v in inputs.items()
    }


def forward(model, inputs):
    kwargs = dict(inputs)
    if "text_embeds" in kwargs or "time_ids" in kwargs:
        kwargs["added_cond_kwargs"] = {
            "text_embeds": kwargs.pop("text_embeds"),
            "time_ids": kwargs.pop("time_ids"),
        }
    with torch.no_grad():
        out = model(**kwargs).sample
    if not torch.isfinite(out).all():
        raise RuntimeError("non-finite output")
    return out.to(torch.float32)


def run_case(label, model_dir, variant, inputs_name, golden_name, freeu):
    model = load(model_dir, variant)
    if freeu is not None:
        model.enable_freeu(**freeu)
    inputs = load_file(os.path.join(FIXTURES, inputs_name + ".safetensors"))
    golden = load_file(os.path.join(FIXTURES, golden_name + ".safetensors"))["sample"]

    ref = forward(model, inputs)
    golden_err = rel_l2(ref, golden)
    if golden_err > GOLDEN_TOL:
        raise RuntimeError(f"{label}: f32 output differs from the golden by {golden_err:.3e}")

    row = {"golden": golden_err}
    for name, dtype in (("f16", torch.float16), ("bf16", torch.bfloat16)):
        m = copy.deepcopy(model).to(dtype)
        row[name] = rel_l2(forward(m, cast_inputs(inputs, dtype, ALWAYS_CAST)), ref)
        if dtype == torch.bfloat16:
            all_names = ALWAYS_CAST + CAST_IN_ALL
            row["bf16 all"] = rel_l2(forward(m, cast_inputs(inputs, dtype, all_names)), ref)
        del m
    m = copy.deepcopy(model).to(torch.bfloat16).to(torch.float32)
    row["bf16 w"] = rel_l2(forward(m, inputs), ref)
    del m
    rounded = {
        k: (v.to(torch.bfloat16).to(torch.float32) if (k in ALWAYS_CAST and v.is_floating_point()) else v)
        for k, v in inputs.items()
    }
    row["bf16 in"] = rel_l2(forward(model, rounded), ref)
    row["ref std"] = float(ref.std())
    return row


def main():
    diffusers.utils.logging.set_verbosity_error()  # silence ModelMixin.to() dtype warnings
    diffusers.utils.logging.disable_progress_bar()  # sharded-checkpoint loading bar
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    print(f"torch {torch.__version__}  diffusers {diffusers.__version__}  device cpu")
    cols = ["golden", "f16", "bf16", "bf16 w", "bf16 in", "bf16 all", "ref std"]
    head = f"{'model':24s} " + " ".join(f"{c:>9s}" for c in cols)
    print(head)
    print("-" * len(head))
    only = set(sys.argv[1:])
    for label, spec in CASES.items():
        if only and label not in only:
            continue
        row = run_case(label, *spec)
        cells = " ".join(f"{row[c]:9.2e}" if c != "ref std" else f"{row[c]:9.3f}" for c in cols)
        print(f"{label:24s} {cells}", flush=True)
    print("rel L2 = ||out - ref|| / ||ref|| vs diffusers' own f32 CPU output; golden = that f32 output")
    print("vs the committed expected file. The GPU tests' bound for f16/bf16: 1e-2.")


if __name__ == "__main__":
    main()
