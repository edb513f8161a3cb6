#!/usr/bin/env python3
"""Generate golden outputs for DeMe channel projections (Ma et al. 2024, "Decouple-Then-Merge")
in the `freelunch` crate.

How to run (from the repo root):

    python tools/gen_deme_goldens.py

Output goes to `tests/fixtures/deme/ddpm_adapters/` (located from this script's own path):

    config.json                          standard diffusers UNet2DModel config
    diffusion_pytorch_model.safetensors  all UNet2DModel weights + the DeMe adapters
                                         `adapter_list.{k}.weight` (extra state-dict entries)
    inputs.safetensors                   `sample` f32 [2,3,16,16], `timestep` i64 [2]
    expected.safetensors                 one f32 tensor `sample`: forward WITH the adapters
    expected_identity.safetensors        one f32 tensor `sample`: forward with every adapter
                                         exactly identity (= plain diffusers UNet2DModel output)

DeMe semantics (as in DeMe's `diffusers/models/unet_2d.py`, `add_adapters` / `forward`). With
n = len(block_out_channels), the checkpoint holds 2n+1 bias-free 1x1 convolutions
`adapter_list.{k}` of shape [C, C, 1, 1]:
  * k = 0..n-1    after down block k,          C = block_out_channels[k]
  * k = n         after the mid block,         C = block_out_channels[-1]
  * k = n+1..2n   after up block k-n-1,        C = reversed(block_out_channels)[k-n-1]
Each projects the running `sample` only: after `sample, res_samples = down_block(...)`,
`sample = adapter_list[i](sample)` while `res_samples` (the skips, including the downsampler
output) are pushed unchanged; after the mid block `sample = adapter_list[n](sample)`; after up
block i (its upsampler included) `sample = adapter_list[n+1+i](sample)`; then conv_norm_out /
conv_act / conv_out as usual. (DeMe skips the adapter, without consuming an index, for
Skip*Block2D blocks; none are used here.)

The reference forward below re-implements UNet2DModel.forward's loop with the diffusers blocks
plus the adapters. It is validated by the identity case, which must equal `model(...).sample`.

Checks (the script fails otherwise): identity-adapter reference vs plain diffusers rel L2 < 1e-6;
adapter output vs plain rel L2 > 1e-2; the saved checkpoint reloads (safetensors + config) into
a UNet2DModel that reproduces the plain output.

Everything runs on CPU, float32, under torch.no_grad(), with the default attention processor,
and is deterministic (fixed seed). All UNet parameters are perturbed off their init values as in
tools/gen_goldens.py; each adapter is identity + 0.1 * randn so that it matters.
"""

import os
import shutil
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import diffusers
from diffusers import UNet2DModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_common import REPO_ROOT, dir_size, perturb_, rel_l2  # noqa: E402

OUT_ROOT = os.path.join(REPO_ROOT, "tests", "fixtures", "deme")
CASE = "ddpm_adapters"
SEED = 4000
MAX_BYTES = 2 * 1024 * 1024

IDENTITY_TOL = 1e-6  # reference loop with identity adapters vs diffusers, rel L2
MIN_EFFECT = 1e-2  # adapters vs plain, rel L2
ADAPTER_NOISE = 0.1


# --------------------------------------------------------------------------------------
# DeMe adapters and the reference forward
# --------------------------------------------------------------------------------------


def adapter_channels(block_out_channels):
    """Channel count of adapter_list.{k}, k = 0..2n (DeMe's add_adapters order)."""
    chans = list(block_out_channels)
    return chans + [chans[-1]] + list(reversed(chans))


def make_adapters(block_out_channels, identity: bool):
    """{`adapter_list.{k}.weight`: [C, C, 1, 1]}: identity (+ 0.1*randn unless `identity`)."""
    out = {}
    for k, c in enumerate(adapter_channels(block_out_channels)):
        w = torch.eye(c)
        if not identity:
            w = w + ADAPTER_NOISE * torch.randn(c, c)
        out[f"adapter_list.{k}.weight"] = w.view(c, c, 1, 1).contiguous()
    return out


def deme_forward(model: UNet2DModel, adapters, sample, timestep, class_labels=None):
    """UNet2DModel.forward (diffusers 0.42) with DeMe's projections of the running sample.

    `adapters` maps `adapter_list.{k}.weight` to [C, C, 1, 1] weights (applied as bias-free
    1x1 convolutions). The index advances in DeMe's order: each non-skip down block, the mid
    block, each non-skip up block.
    """
    cfg = model.config
    k = 0

    def project(x):
        nonlocal k
        w = adapters[f"adapter_list.{k}.weight"]
        assert w.shape == (x.shape[1], x.shape[1], 1, 1), (k, tuple(w.shape), tuple(x.shape))
        k += 1
        return F.conv2d(x, w)

    # 0. center input
    if cfg.center_input_sample:
        sample = 2 * sample - 1.0

    # 1. time
    timesteps = timestep
    if not torch.is_tensor(timesteps):
        timesteps = torch.tensor([timesteps], dtype=torch.long)
    elif timesteps.dim() == 0:
        timesteps = timesteps[None]
    timesteps = timesteps * torch.ones(sample.shape[0], dtype=timesteps.dtype)
    emb = model.time_embedding(model.time_proj(timesteps).to(sample.dtype))
    if model.class_embedding is not None:
        if cfg.class_embed_type == "timestep":
            class_labels = model.time_proj(class_labels)
        emb = emb + model.class_embedding(class_labels).to(sample.dtype)

    # 2. pre-process
    skip_sample = sample
    sample = model.conv_in(sample)

    # 3. down: project the running sample, push the skips unchanged
    down_block_res_samples = (sample,)
    for block in model.down_blocks:
        if hasattr(block, "skip_conv"):
            sample, res_samples, skip_sample = block(hidden_states=sample, temb=emb, skip_sample=skip_sample)
        else:
            sample, res_samples = block(hidden_states=sample, temb=emb)
            sample = project(sample)
        down_block_res_samples += res_samples

    # 4. mid
    if model.mid_block is not None:
        sample = model.mid_block(sample, emb)
    sample = project(sample)

    # 5. up
    skip_sample = None
    for block in model.up_blocks:
        res_samples = down_block_res_samples[-len(block.resnets) :]
        down_block_res_samples = down_block_res_samples[: -len(block.resnets)]
        if hasattr(block, "skip_conv"):
            sample, skip_sample = block(sample, res_samples, emb, skip_sample)
        else:
            sample = block(sample, res_samples, emb)
            sample = project(sample)

    assert k == len(adapters), f"used {k} of {len(adapters)} adapters"

    # 6. post-process
    sample = model.conv_out(model.conv_act(model.conv_norm_out(sample)))
    if skip_sample is not None:
        sample = sample + skip_sample
    if cfg.time_embedding_type == "fourier":
        sample = sample / timesteps.reshape((sample.shape[0], *([1] * len(sample.shape[1:]))))
    return sample


# --------------------------------------------------------------------------------------
# Case
# --------------------------------------------------------------------------------------


def build_model():
    # google/ddpm-* style (flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, eps 1e-6),
    # shrunk: widths (16, 32, 32), 1 layer per block, 4 groups, 8 channels per attention head.
    return UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=8,
        flip_sin_to_cos=False,
        freq_shift=1,
        downsample_padding=0,
        norm_eps=1e-6,
    )


def main():
    diffusers.utils.logging.set_verbosity_error()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    case_dir = os.path.join(OUT_ROOT, CASE)
    print(f"torch {torch.__version__}  diffusers {diffusers.__version__}  -> {case_dir}")
    if os.path.exists(case_dir):
        shutil.rmtree(case_dir)
    os.makedirs(case_dir)

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    model = build_model().to(torch.float32).eval()
    perturb_(model)
    boc = model.config.block_out_channels
    adapters = make_adapters(boc, identity=False)
    identity = make_adapters(boc, identity=True)
    inputs = {
        "sample": torch.randn(2, 3, 16, 16),
        "timestep": torch.tensor([5, 731], dtype=torch.int64),
    }

    with torch.no_grad():
        plain = model(**inputs).sample
        out_id = deme_forward(model, identity, **inputs)
        out = deme_forward(model, adapters, **inputs)

    for name, t in (("plain", plain), ("identity", out_id), ("adapters", out)):
        if not torch.isfinite(t).all():
            raise RuntimeError(f"{name}: non-finite output")
    std = float(out.std())
    if not (0.1 <= std <= 10.0):
        raise RuntimeError(f"adapter output std {std} out of sane range")

    id_err = rel_l2(out_id, plain)
    effect = rel_l2(out, plain)
    print(f"identity adapters vs diffusers UNet2DModel: rel L2 = {id_err:.3e} (max abs "
          f"{float((out_id - plain).abs().max()):.3e})")
    print(f"adapters vs plain:                          rel L2 = {effect:.3e}")
    if id_err >= IDENTITY_TOL:
        raise RuntimeError(f"identity-adapter reference deviates from diffusers: {id_err}")
    if effect <= MIN_EFFECT:
        raise RuntimeError(f"adapters barely change the output: {effect}")

    # ---- save model: diffusers config + one safetensors with the adapters as extra keys ----
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    assert not set(state) & set(adapters)
    state.update(adapters)
    model.save_config(case_dir)
    weights_path = os.path.join(case_dir, "diffusion_pytorch_model.safetensors")
    save_file(state, weights_path, metadata={"format": "pt"})

    save_file({k: v.contiguous() for k, v in inputs.items()}, os.path.join(case_dir, "inputs.safetensors"))
    save_file({"sample": out.contiguous()}, os.path.join(case_dir, "expected.safetensors"))
    save_file({"sample": out_id.contiguous()}, os.path.join(case_dir, "expected_identity.safetensors"))

    # ---- reload check: config.json + safetensors reproduce both outputs ----
    loaded = load_file(weights_path)
    re = UNet2DModel.from_config(UNet2DModel.load_config(case_dir)).eval()
    missing, unexpected = re.load_state_dict(loaded, strict=False)
    assert not missing, missing
    assert sorted(unexpected) == sorted(adapters), unexpected
    re_adapters = {k: loaded[k] for k in adapters}
    with torch.no_grad():
        re_plain = re(**inputs).sample
        re_out = deme_forward(re, re_adapters, **inputs)
    assert torch.equal(re_plain, plain), rel_l2(re_plain, plain)
    assert torch.equal(re_out, out), rel_l2(re_out, out)

    n_params = sum(p.numel() for p in model.parameters())
    n_adapt = sum(v.numel() for v in adapters.values())
    size = dir_size(case_dir)
    print(f"{CASE}: params={n_params} adapters={len(adapters)} ({n_adapt} weights, channels "
          f"{adapter_channels(boc)}) out_shape={tuple(out.shape)} out_std={std:.4f} "
          f"size={size / 1e6:.3f}MB")
    if size > MAX_BYTES:
        raise RuntimeError(f"deme fixtures exceed {MAX_BYTES} bytes")


if __name__ == "__main__":
    sys.exit(main())
