#!/usr/bin/env python3
"""Generate golden test fixtures for the `freelunch` crate from diffusers.

How to run (from the repo root):

    python -m pip install -r tools/requirements.txt && python tools/gen_goldens.py

Output goes to `tests/fixtures/` relative to the repository root (located from
this script's own path), one folder per case:

    tests/fixtures/<case>/config.json                                  (diffusers config)
    tests/fixtures/<case>/diffusion_pytorch_model[.<variant>].safetensors  (weights;
        sharded cases have -0000i-of-0000n shards + .safetensors.index.json)
    tests/fixtures/<case>/inputs.safetensors    forward inputs (sample, timestep, ...)
    tests/fixtures/<case>/expected.safetensors  one tensor `sample` (f32) = model(**inputs).sample

Pipeline-layout cases put the model under `<case>/model/` (model_index.json,
unet/, scheduler/) while inputs/expected stay in `<case>/`.

Everything runs on CPU, float32, under torch.no_grad(), with the default
attention processor, and is deterministic (torch.manual_seed per case).
All parameters are perturbed away from their init values (no zero biases, no
unit norm weights) so that a loader which drops/misnames a tensor fails.
For cases whose weights are stored in f16/bf16, the reference output is
computed with the weights rounded to that dtype and cast back to f32, so a
loader that upcasts the stored weights to f32 reproduces it exactly (up to
float summation order).
"""

import json
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import save_file

import diffusers
from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_common import FIXTURES, dir_size, perturb_  # noqa: E402


def round_weights_(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Round all params/buffers to `dtype` in place, keeping them f32."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))
        for b in model.buffers():
            if b.is_floating_point():
                b.copy_(b.to(dtype).to(torch.float32))


def contig(d):
    return {k: v.detach().contiguous() for k, v in d.items()}


def sdxl_time_ids(b: int) -> torch.Tensor:
    base = torch.tensor([512.0, 512.0, 0.0, 0.0, 512.0, 512.0])
    return (base.unsqueeze(0).repeat(b, 1) + 8.0 * torch.randn(b, 6)).float()


# --------------------------------------------------------------------------------------
# Cases. Each builder gets nothing and returns (model, inputs dict). The RNG is seeded
# before the builder is called.
# --------------------------------------------------------------------------------------


def case_ddpm_basic():
    model = UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        # widths halved from (32, 64, 64) to keep tests/fixtures under ~15 MB
        block_out_channels=(16, 32, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        norm_num_groups=8,
        attention_head_dim=16,
        flip_sin_to_cos=False,
        freq_shift=1,
        downsample_padding=0,
        norm_eps=1e-6,
    )
    inputs = {
        "sample": torch.randn(2, 3, 16, 16),
        "timestep": torch.tensor([17, 803], dtype=torch.int64),
    }
    return model, inputs


def case_ddpm_scale_shift_class():
    model = UNet2DModel(
        sample_size=(16, 24),
        in_channels=3,
        out_channels=3,
        resnet_time_scale_shift="scale_shift",
        num_class_embeds=10,
        center_input_sample=True,
        flip_sin_to_cos=True,
        freq_shift=0,
        downsample_padding=1,
        mid_block_scale_factor=1.414,
        attention_head_dim=8,
        block_out_channels=(32, 64),
        down_block_types=("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
    )
    inputs = {
        "sample": torch.randn(2, 3, 16, 24),
        "timestep": torch.tensor(437.0, dtype=torch.float32),
        "class_labels": torch.tensor([3, 9], dtype=torch.int64),
    }
    return model, inputs


def case_ddpm_noattn_sharded():
    model = UNet2DModel(
        sample_size=(16, 8),
        in_channels=1,
        out_channels=2,
        add_attention=False,
        attention_head_dim=None,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        layers_per_block=1,
    )
    inputs = {
        "sample": torch.randn(2, 1, 16, 8),
        "timestep": torch.tensor([999.0, 0.5], dtype=torch.float32),
    }
    return model, inputs


def case_sd15_like():
    model = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        # widths halved from (32, 64) to keep tests/fixtures under ~15 MB
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=2,
        cross_attention_dim=48,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    inputs = {
        "sample": torch.randn(2, 4, 16, 16),
        "timestep": torch.tensor(261, dtype=torch.int64),
        "encoder_hidden_states": torch.randn(2, 7, 48),
    }
    return model, inputs


def case_sd21_like():
    model = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        use_linear_projection=True,
        attention_head_dim=[2, 4, 4],
        upcast_attention=True,
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=40,
        norm_num_groups=8,
    )
    inputs = {
        "sample": torch.randn(2, 4, 15, 13),
        "timestep": torch.tensor([12.0, 640.0], dtype=torch.float32),
        "encoder_hidden_states": torch.randn(2, 5, 40),
    }
    return model, inputs


def case_sdxl_like():
    model = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        # widths halved from (32, 64, 64) to keep tests/fixtures under ~15 MB
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        transformer_layers_per_block=[1, 2, 3],
        attention_head_dim=[2, 4, 4],
        use_linear_projection=True,
        cross_attention_dim=64,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,
        norm_num_groups=8,
    )
    inputs = {
        "sample": torch.randn(2, 4, 16, 16),
        "timestep": torch.tensor([999.0, 333.0], dtype=torch.float32),
        "encoder_hidden_states": torch.randn(2, 6, 64),
        "text_embeds": torch.randn(2, 32),
        "time_ids": sdxl_time_ids(2),
    }
    return model, inputs


def case_sd_mid_only_cross():
    # NB: with these block types (CrossAttn*/Down/Up + UNetMidBlock2DCrossAttn) diffusers
    # IGNORES resnet_skip_time_act / resnet_out_scale_factor (they only reach the
    # Simple*/ResnetDownsample/ResnetUpsample blocks) and mid_block_only_cross_attention
    # (only used by UNetMidBlock2DSimpleCrossAttn). They are still written to config.json,
    # so this case checks that a loader accepts them and treats them as no-ops here.
    # only_cross_attention=True is live for the down/up transformer blocks: attn1 attends
    # to encoder_hidden_states (its to_k/to_v take cross_attention_dim inputs).
    model = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        only_cross_attention=True,
        resnet_skip_time_act=True,
        resnet_out_scale_factor=2.0,
        block_out_channels=(32, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=8,
    )
    inputs = {
        "sample": torch.randn(1, 4, 8, 8),
        "timestep": torch.tensor([555], dtype=torch.int64),
        "encoder_hidden_states": torch.randn(1, 3, 16),
    }
    return model, inputs


# name -> (builder, options)
#   store_dtype: dtype in which weights are saved (reference uses weights rounded to it)
#   variant: save_pretrained variant
#   pipeline: save inside <case>/model/{unet,scheduler} with a model_index.json
#   max_shard_size: shard the safetensors
CASES = {
    "ddpm_basic": (case_ddpm_basic, {}),
    "ddpm_scale_shift_class": (
        case_ddpm_scale_shift_class,
        {"store_dtype": torch.float16, "variant": "fp16"},
    ),
    "ddpm_noattn_sharded": (
        case_ddpm_noattn_sharded,
        {"pipeline": "DDPMPipeline", "max_shard_size": "200KB"},
    ),
    "sd15_like": (case_sd15_like, {}),
    "sd21_like": (case_sd21_like, {"store_dtype": torch.bfloat16}),
    "sdxl_like": (case_sdxl_like, {}),
    "sd_mid_only_cross": (case_sd_mid_only_cross, {}),
}


def run_case(seed, name, builder, opts):
    torch.manual_seed(seed)
    np.random.seed(seed)
    case_dir = os.path.join(FIXTURES, name)
    if os.path.exists(case_dir):
        shutil.rmtree(case_dir)
    os.makedirs(case_dir)

    model, inputs = builder()
    model = model.to(torch.float32).eval()
    perturb_(model)
    n_params = sum(p.numel() for p in model.parameters())

    store_dtype = opts.get("store_dtype", torch.float32)
    if store_dtype != torch.float32:
        round_weights_(model, store_dtype)

    kwargs = dict(inputs)
    if "text_embeds" in kwargs or "time_ids" in kwargs:
        kwargs["added_cond_kwargs"] = {
            "text_embeds": kwargs.pop("text_embeds"),
            "time_ids": kwargs.pop("time_ids"),
        }
    with torch.no_grad():
        out = model(**kwargs).sample.to(torch.float32)
    std = float(out.std())
    if not torch.isfinite(out).all():
        raise RuntimeError(f"{name}: non-finite output")
    if not (0.1 <= std <= 10.0):
        raise RuntimeError(f"{name}: output std {std} out of sane range")

    # ---- save model ----
    if opts.get("pipeline"):
        model_root = os.path.join(case_dir, "model")
        unet_dir = os.path.join(model_root, "unet")
        os.makedirs(model_root)
        with open(os.path.join(model_root, "model_index.json"), "w") as f:
            json.dump(
                {
                    "_class_name": opts["pipeline"],
                    "_diffusers_version": diffusers.__version__,
                    "scheduler": ["diffusers", "DDPMScheduler"],
                    "unet": ["diffusers", type(model).__name__],
                },
                f,
                indent=2,
            )
            f.write("\n")
        DDPMScheduler().save_pretrained(os.path.join(model_root, "scheduler"))
    else:
        unet_dir = case_dir

    save_kwargs = {"safe_serialization": True}
    if opts.get("variant"):
        save_kwargs["variant"] = opts["variant"]
    if opts.get("max_shard_size"):
        save_kwargs["max_shard_size"] = opts["max_shard_size"]
    to_save = model if store_dtype == torch.float32 else model.to(store_dtype)
    to_save.save_pretrained(unet_dir, **save_kwargs)
    model.to(torch.float32)

    # ---- save io ----
    save_file(contig(inputs), os.path.join(case_dir, "inputs.safetensors"))
    save_file({"sample": out.contiguous()}, os.path.join(case_dir, "expected.safetensors"))

    files = sorted(
        os.path.relpath(os.path.join(r, f), case_dir) for r, _, fs in os.walk(unet_dir) for f in fs
    )
    print(
        f"{name:24s} params={n_params:9d} out_shape={tuple(out.shape)} out_std={std:.4f} "
        f"store={str(store_dtype).replace('torch.', '')} size={dir_size(case_dir) / 1e6:.2f}MB "
        f"files={len(files)}",
        flush=True,
    )
    return files


def main():
    diffusers.utils.logging.set_verbosity_error()  # silence ModelMixin.to() dtype warnings
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.makedirs(FIXTURES, exist_ok=True)
    print(f"torch {torch.__version__}  diffusers {diffusers.__version__}  -> {FIXTURES}")
    only = set(sys.argv[1:])
    for seed, (name, (builder, opts)) in enumerate(CASES.items()):
        if only and name not in only:
            continue
        run_case(1000 + seed, name, builder, opts)
    total = dir_size(FIXTURES)
    print(f"total fixtures size: {total / 1e6:.2f} MB ({total} bytes)")
    if total > 15 * 1024 * 1024:
        print("WARNING: fixtures exceed 15 MB", file=sys.stderr)


if __name__ == "__main__":
    main()
