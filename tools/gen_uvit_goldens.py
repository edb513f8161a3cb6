#!/usr/bin/env python3
"""Goldens for the MaskDM U-ViT (`src/models/uvit.rs`, `tests/uvit.rs`) from MaskDM's own code.

How to run (from the repo root):

    git clone https://github.com/jiachenlei/maskdm /tmp/maskdm   # the tested commit: 0e79a60
    pip install -r tools/requirements.txt
    python tools/gen_uvit_goldens.py /tmp/maskdm

It imports the checkout's real `models/mask_uvit.py` and `gaussian_ddpm.py`. What they import
and the goldens never run is shimmed: timm (mask_uvit.py takes `PatchEmbed`, `Mlp` and
`trunc_normal_` from it; the shims below are timm's modules with the same parameter names and
forward), and pywt / torchvision (imported by gaussian_ddpm.py, unused by its DDIM sampler).
xformers is left absent, so mask_uvit.py takes its vanilla attention path.

Writes tests/fixtures/uvit/:
    base/       CelebA-HQ 256's base network (configs/celebahq_base.yml: patch 4, 3 channels, no
                qkv bias, no time MLP, unconditional) reduced to 16 px, width 32, depth 4,
                converted by tools/convert_maskdm_checkpoint.py from a torch.save'd fake
                checkpoint laid out as MaskDM saves one (`ema` / `ema_model.model.` keys, the
                online copy, the diffusion buffers)
    variant/    qkv bias, the time MLP and 2 classes (label token), 8 px, patch 2, width 24
    goldens.safetensors  inputs and outputs (see `main`)
"""

import argparse
import math
import os
import subprocess
import sys
import tempfile
import types

import torch
import torch.nn as nn
import yaml
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_common import FIXTURES, dir_size, perturb_, rel_l2  # noqa: E402

OUT = os.path.join(FIXTURES, "uvit")


def install_shims():
    """timm, pywt and torchvision as far as MaskDM's imports reach."""

    class PatchEmbed(nn.Module):
        # timm.layers.PatchEmbed with its defaults (flatten, no norm, bias): conv, then NCHW → NLC.
        def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768):
            super().__init__()
            self.img_size = (img_size, img_size)
            self.patch_size = (patch_size, patch_size)
            self.grid_size = (img_size // patch_size, img_size // patch_size)
            self.num_patches = self.grid_size[0] * self.grid_size[1]
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
            self.norm = nn.Identity()

        def forward(self, x):
            return self.norm(self.proj(x).flatten(2).transpose(1, 2))

    class Mlp(nn.Module):
        # timm.layers.Mlp: fc1, act, drop, norm (Identity), fc2, drop.
        def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU):
            super().__init__()
            hidden_features = hidden_features or in_features
            out_features = out_features or in_features
            self.fc1 = nn.Linear(in_features, hidden_features)
            self.act = act_layer()
            self.norm = nn.Identity()
            self.fc2 = nn.Linear(hidden_features, out_features)

        def forward(self, x):
            return self.fc2(self.norm(self.act(self.fc1(x))))

    def trunc_normal_(t, std=1.0):
        with torch.no_grad():
            return nn.init.trunc_normal_(t, std=std)

    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    vit = types.ModuleType("timm.models.vision_transformer")
    layers.trunc_normal_ = trunc_normal_
    vit.Mlp, vit.PatchEmbed = Mlp, PatchEmbed
    timm.models, models.layers, models.vision_transformer = models, layers, vit
    tv = types.ModuleType("torchvision")
    tv.transforms = types.ModuleType("torchvision.transforms")
    for name, mod in {
        "timm": timm,
        "timm.models": models,
        "timm.models.layers": layers,
        "timm.models.vision_transformer": vit,
        "pywt": types.ModuleType("pywt"),
        "torchvision": tv,
        "torchvision.transforms": tv.transforms,
    }.items():
        sys.modules.setdefault(name, mod)


def reduced_config(maskdm, name, **network):
    """configs/celebahq_base.yml with its network section overridden."""
    with open(os.path.join(maskdm, "configs", "celebahq_base.yml")) as f:
        cfg = yaml.safe_load(f)
    cfg.pop("define", None)
    cfg["network"].update(network)
    return cfg


def fake_checkpoint(diffusion, model):
    """What MaskDM's save_training_state writes, with the EMA copy equal to `model`."""
    ema = {"initted": torch.tensor(True), "step": torch.tensor(1234)}
    for k, v in diffusion.state_dict().items():
        ema["online_model." + k] = v.clone() + 1.0  # must not be picked up
        ema["ema_model." + k] = v.clone()
    return {"step": 1234, "model": {k: v + 1.0 for k, v in model.state_dict().items()}, "ema": ema}


def build(mask_uvit, gaussian_ddpm, maskdm, name, seed, tmp, **network):
    cfg = reduced_config(maskdm, name, **network)
    torch.manual_seed(seed)
    model = mask_uvit.MaskedUViT(**cfg["network"]).eval()
    perturb_(model)
    diffusion = gaussian_ddpm.GaussianDiffusion(
        model, image_size=cfg["network"]["img_size"], timesteps=1000, sampling_timesteps=4,
        loss_type="l2", channels=cfg["network"]["in_chans"],
    )
    ckpt_path = os.path.join(tmp, f"{name}.pt")
    cfg_path = os.path.join(tmp, f"{name}.yml")
    torch.save(fake_checkpoint(diffusion, model), ckpt_path)
    with open(cfg_path, "w") as f:
        yaml.safe_dump(cfg, f)
    out = os.path.join(OUT, name)
    subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(__file__), "convert_maskdm_checkpoint.py"),
         ckpt_path, cfg_path, out],
        check=True,
    )
    # A config whose schedule is not the one the checkpoint's diffusion buffers hold is refused.
    wrong = dict(cfg, beta_schedule="linear")
    wrong_path = os.path.join(tmp, f"{name}_linear.yml")
    with open(wrong_path, "w") as f:
        yaml.safe_dump(wrong, f)
    r = subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(__file__), "convert_maskdm_checkpoint.py"),
         ckpt_path, wrong_path, os.path.join(tmp, "wrong")],
        capture_output=True, text=True,
    )
    assert r.returncode != 0 and "betas" in r.stderr, r.stderr
    # Round trip: the converted tensors are the network's, bit for bit.
    from safetensors.torch import load_file

    got = load_file(os.path.join(out, "diffusion_pytorch_model.safetensors"))
    want = model.state_dict()
    assert set(got) == set(want), set(got) ^ set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    return model, diffusion, cfg


def token_mask(b, n, dropped, gen):
    """[B, n] bool, `dropped` True (dropped) per row at random places."""
    m = torch.zeros(b, n, dtype=torch.bool)
    for i in range(b):
        m[i, torch.randperm(n, generator=gen)[:dropped]] = True
    return m


def with_extras(mask, extras):
    """mask_uvit.py's mask: the time (and label) token first, always kept."""
    return torch.cat([torch.zeros(mask.shape[0], extras, dtype=torch.bool), mask], dim=1)


def skip_scaled_forward(mask_uvit, model, x, t, rhos, mask=None, y=None):
    """The forward with out-block j's skip (in_blocks[depth/2-1-j]'s output) times rho[that]."""
    enc = model.encoder
    n = len(enc.out_blocks)
    originals = [blk._forward for blk in enc.out_blocks]
    try:
        for j, blk in enumerate(enc.out_blocks):
            rho = rhos[n - 1 - j]

            def scaled(xx, skip=None, _orig=originals[j], _rho=rho):
                return _orig(xx, skip * _rho)

            blk._forward = scaled
        return model(x, t, mask=mask, y=y)
    finally:
        for blk, f in zip(enc.out_blocks, originals):
            blk._forward = f


def freeu_forward(model, x, t, b1, b2, s1, s2, threshold):
    """This crate's FreeU extension for a U-ViT (not the paper's): before out-block j, the first
    half of h's channels times b and the skip's patch tokens, as their patch grid, through
    diffusers' FreeU filter with s; (b1, s1) for the inner half of the out-blocks."""
    from diffusers.utils.torch_utils import fourier_filter

    enc = model.encoder
    n = len(enc.out_blocks)
    e = enc.extras
    g = int(enc.num_patches ** 0.5)
    originals = [blk._forward for blk in enc.out_blocks]
    try:
        for j, blk in enumerate(enc.out_blocks):
            b, s = (b1, s1) if 2 * j < n else (b2, s2)

            def patched(xx, skip=None, _orig=originals[j], _b=b, _s=s):
                xx = xx.clone()
                c = xx.shape[-1]
                xx[..., : c // 2] = xx[..., : c // 2] * _b
                patches = skip[:, e:, :]
                bs, npatch, ch = patches.shape
                grid = patches.permute(0, 2, 1).reshape(bs, ch, g, g)
                grid = fourier_filter(grid, threshold=threshold, scale=_s)
                patches = grid.reshape(bs, ch, npatch).permute(0, 2, 1)
                return _orig(xx, torch.cat([skip[:, :e], patches], dim=1))

            blk._forward = patched
        return model(x, t)
    finally:
        for blk, f in zip(enc.out_blocks, originals):
            blk._forward = f


def weight_masked_forward(model, masks, x, t, y=None):
    """The forward with each named weight multiplied by its 0/1 mask."""
    saved = {}
    params = dict(model.named_parameters())
    try:
        with torch.no_grad():
            for k, m in masks.items():
                saved[k] = params[k].clone()
                params[k].mul_(m.to(params[k].dtype))
        return model(x, t, y=y)
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                params[k].copy_(v)


def ddim(gaussian_ddpm, diffusion, shape, eta, seed):
    """GaussianDiffusion.ddim_sample with eta, recording its noise draws; before eval.py's
    unnormalisation to [0, 1]."""
    diffusion.ddim_sampling_eta = eta
    draws = []
    randn, randn_like = torch.randn, torch.randn_like

    def rec(*a, **k):
        v = randn(*a, **k)
        draws.append(v.clone())
        return v

    def rec_like(*a, **k):
        v = randn_like(*a, **k)
        draws.append(v.clone())
        return v

    torch.manual_seed(seed)
    gaussian_ddpm.maybe_unnormalize_to_zero_to_one = lambda img, normalization: img
    torch.randn, torch.randn_like = rec, rec_like
    try:
        img = diffusion.ddim_sample(shape)
    finally:
        torch.randn, torch.randn_like = randn, randn_like
    return img, draws[0], draws[1:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("maskdm", help="a checkout of github.com/jiachenlei/maskdm")
    a = ap.parse_args()
    install_shims()
    sys.path.insert(0, os.path.abspath(a.maskdm))
    from models import mask_uvit
    import gaussian_ddpm

    assert mask_uvit.ATTENTION == "vanilla"
    torch.set_num_threads(1)
    g = {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        base, base_diff, base_cfg = build(
            mask_uvit, gaussian_ddpm, a.maskdm, "base", 0, tmp,
            img_size=16, encoder_embed_dim=32, encoder_depth=4, encoder_heads=4,
        )
        variant, _, _ = build(
            mask_uvit, gaussian_ddpm, a.maskdm, "variant", 1, tmp,
            img_size=8, patch_size=2, encoder_embed_dim=24, encoder_depth=2, encoder_heads=3,
            qkv_bias=True, mlp_time_embed=True, num_classes=2, mlp_ratio=2,
        )
        gen = torch.Generator().manual_seed(7)
        b = 2
        x = torch.randn(b, 3, 16, 16, generator=gen)
        t = torch.tensor([17, 643])
        mask = token_mask(b, 16, 10, gen)
        g["base.sample"] = x
        g["base.timestep"] = t.float()
        g["base.token_mask"] = mask.to(torch.uint8)
        g["base.out"] = base(x, t)
        g["base.out_masked"] = base(x, t, mask=with_extras(mask, 1))
        assert g["base.out_masked"].shape == (b, 6, 48)

        # Skip-Tuning: rho linear from the outermost skip (in_blocks[0]) to the innermost.
        rhos = [0.8, 0.5]
        g["base.out_skip"] = skip_scaled_forward(mask_uvit, base, x, t, rhos)
        g["base.out_skip_masked"] = skip_scaled_forward(mask_uvit, base, x, t, rhos, with_extras(mask, 1))

        # FreeU on the skip tokens' patch grid: this crate's extension.
        g["base.out_freeu"] = freeu_forward(base, x, t, 1.1, 1.2, 0.9, 0.2, 1)

        # MaskUNet-style weight masks on linears of every kind (shared by the batch).
        masks = {}
        for k in ["encoder.in_blocks.0.attn.qkv.weight", "encoder.mid_block.mlp.fc1.weight",
                  "encoder.out_blocks.1.skip_linear.weight", "encoder_to_output.weight"]:
            shape = dict(base.named_parameters())[k].shape
            masks[k] = (torch.rand(shape, generator=gen) > 0.3).to(torch.uint8)
            g["base.weight_mask." + k] = masks[k]
        g["base.out_weight_masked"] = weight_masked_forward(base, masks, x, t)

        xv = torch.randn(b, 3, 8, 8, generator=gen)
        tv = torch.tensor([999, 3])
        yv = torch.tensor([1, 0])
        maskv = token_mask(b, 16, 5, gen)
        g["variant.sample"] = xv
        g["variant.timestep"] = tv.float()
        g["variant.class_labels"] = yv.float()
        g["variant.token_mask"] = maskv.to(torch.uint8)
        g["variant.out"] = variant(xv, tv, y=yv)
        g["variant.out_uncond"] = variant(xv, tv)
        g["variant.out_masked"] = variant(xv, tv, mask=with_extras(maskv, 2), y=yv)

        # eval.py's DDIM (cosine betas, x̂₀ clipped), 4 steps of 1000, eta 0 and eta 1 (at 5 steps its
        # eta-1 update takes the root of 1 - ᾱ_next - σ² = -6e-8 in f32 at the first step: NaN).
        for eta, name in [(0.0, "eta0"), (1.0, "eta1")]:
            img, init, step_noise = ddim(gaussian_ddpm, base_diff, (b, 3, 16, 16), eta, 11)
            g[f"ddim.{name}.noise"] = init
            if step_noise:
                g[f"ddim.{name}.step_noise"] = torch.stack(step_noise)
            assert torch.isfinite(img).all(), name
            g[f"ddim.{name}.out"] = img
        g["ddim.alphas_cumprod"] = base_diff.alphas_cumprod.clone()

        # MaskDM's cosine betas against diffusers' squaredcos_cap_v2.
        from diffusers import DDIMScheduler

        sched = DDIMScheduler(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000)
        ours = gaussian_ddpm.cosine_beta_schedule(1000)
        print("cosine betas vs squaredcos_cap_v2: max abs",
              float((ours.float() - sched.betas).abs().max()))
        print("alphas_cumprod vs diffusers: max abs",
              float((base_diff.alphas_cumprod - sched.alphas_cumprod).abs().max()))

    g = {k: v.contiguous() for k, v in g.items()}
    save_file(g, os.path.join(OUT, "goldens.safetensors"))
    print("skip-tuned vs plain rel", rel_l2(g["base.out_skip"], g["base.out"]))
    print("freeu vs plain rel", rel_l2(g["base.out_freeu"], g["base.out"]))
    print("weight-masked vs plain rel", rel_l2(g["base.out_weight_masked"], g["base.out"]))
    print(f"fixtures: {dir_size(OUT) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
