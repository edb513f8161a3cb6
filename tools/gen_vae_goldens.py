"""Goldens for the VAE (AutoencoderKL): tiny random-weight models saved as diffusers folders under
tests/fixtures/, with what diffusers computes from them.

Re-runnable (from the repo root, with torch and diffusers as in tools/requirements.txt):

    python tools/gen_vae_goldens.py

Cases:

- `vae_sd_like`: an SD-1.x-like AutoencoderKL (scaling_factor 0.18215, no shift, quant convs,
  mid-block attention), widths (8, 16), one resnet per encoder block, in a pipeline folder
  (`model_index.json` beside `vae/`), f32 weights.
- `vae_sd3_like`: an SD3/Flux-like one (16 latent channels, scaling_factor 1.5305,
  shift_factor 0.0609, no quant convs), three levels (8, 8, 16), two resnets per encoder block,
  no mid-block attention, weights stored only as the fp16 variant (the reference uses those
  rounded weights upcast to f32).

And `vae_layouts.json`: the configs and state-dict shapes of full-size SD and SD3/Flux VAEs (no
weights), which the loader must take exactly.

Each case folder holds `goldens.safetensors`:

- `latents` [2, C, h, w] (random, as a pipeline's sampler leaves them, i.e. scaled) and `decoded`:
  `vae.decode(latents / scaling_factor + shift_factor).sample`, f32, before any rounding;
- `image_u8` [2, H, W, 3] u8: `VaeImageProcessor.postprocess(decoded, output_type="pil")` as
  arrays;
- `tiled_latents` [1, C, h', w'] larger than the tile, and `tiled_decoded`: `vae.tiled_decode` of
  them unscaled as above (tile_latent_min_size = sample_size / 2^(levels-1), overlap 0.25);
- `pixels` [2, 3, H, W] in [-1, 1], `noise`, and `encode_mean`, `encode_logvar` (the posterior
  `DiagonalGaussianDistribution`'s, logvar clamped to [-30, 20] as diffusers does) and
  `encode_sample` = mean + std * noise.
"""

import json
import os
import shutil
import sys

import numpy as np
import torch
from diffusers import AutoencoderKL
from diffusers.image_processor import VaeImageProcessor
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_common import FIXTURES, dir_size, perturb_  # noqa: E402


def unscale(vae, latents):
    """What the SD / SD3 pipelines do before `vae.decode`."""
    z = latents / vae.config.scaling_factor
    if vae.config.shift_factor is not None:
        z = z + vae.config.shift_factor
    return z


def build(seed, config):
    torch.manual_seed(seed)
    vae = AutoencoderKL(**config)
    perturb_(vae)
    vae.eval()
    # Give the decoder's output a spread of about 0.5 around its mean, so that the 8-bit image
    # uses most byte values and few saturate (a random network's output range is arbitrary).
    with torch.no_grad():
        probe = torch.randn((1, vae.config.latent_channels, 6, 6), generator=torch.Generator().manual_seed(seed))
        out = vae.decode(probe).sample
        vae.decoder.conv_out.weight.mul_(0.5 / float(out.std()))
        vae.decoder.conv_out.bias.sub_(float(out.mean()) * 0.5 / float(out.std()))
    return vae


def case(name, seed, config, latent_hw, tiled_hw, pixel_hw, variant=None, pipeline=False):
    root = os.path.join(FIXTURES, name)
    shutil.rmtree(root, ignore_errors=True)
    vae = build(seed, config)
    model_dir = os.path.join(root, "vae") if pipeline else root
    if variant == "fp16":
        vae.to(torch.float16).save_pretrained(model_dir, variant="fp16")
        vae = vae.to(torch.float32)
    else:
        vae.save_pretrained(model_dir)
    if pipeline:
        with open(os.path.join(root, "model_index.json"), "w") as f:
            json.dump({"_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"]}, f)
    # The reference runs what was saved, as a loader reads it back.
    vae = AutoencoderKL.from_pretrained(model_dir, variant=variant, torch_dtype=torch.float32).eval()
    c = vae.config.latent_channels
    g = torch.Generator().manual_seed(seed + 1)
    latents = torch.randn((2, c, *latent_hw), generator=g) * vae.config.scaling_factor
    tiled_latents = torch.randn((1, c, *tiled_hw), generator=g) * vae.config.scaling_factor
    pixels = (torch.rand((2, 3, *pixel_hw), generator=g) * 2 - 1).contiguous()
    noise = None
    with torch.no_grad():
        decoded = vae.decode(unscale(vae, latents)).sample
        tile = vae.tile_latent_min_size
        assert tiled_hw[0] > tile or tiled_hw[1] > tile, "the tiled case must be larger than a tile"
        tiled = vae.tiled_decode(unscale(vae, tiled_latents)).sample
        dist = vae.encode(pixels).latent_dist
        noise = torch.randn(dist.mean.shape, generator=g)
        sample = dist.mean + dist.std * noise
    pil = VaeImageProcessor(vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1)).postprocess(
        decoded, output_type="pil"
    )
    image_u8 = torch.from_numpy(np.stack([np.asarray(p) for p in pil]))
    assert image_u8.dtype == torch.uint8 and image_u8.shape[-1] == 3
    distinct = len(torch.unique(image_u8))
    saturated = float(((image_u8 == 0) | (image_u8 == 255)).float().mean())
    print(f"{name}: decoded range [{float(decoded.min()):.2f}, {float(decoded.max()):.2f}], std {float(decoded.std()):.2f}, {saturated:.0%} saturated")
    assert distinct > 64 and saturated < 0.3, f"{name}: {distinct} distinct byte values, {saturated:.0%} saturated"
    save_file(
        {
            "latents": latents.contiguous(),
            "decoded": decoded.contiguous(),
            "image_u8": image_u8.contiguous(),
            "tiled_latents": tiled_latents.contiguous(),
            "tiled_decoded": tiled.contiguous(),
            "pixels": pixels,
            "noise": noise.contiguous(),
            "encode_mean": dist.mean.contiguous(),
            "encode_logvar": dist.logvar.contiguous(),
            "encode_sample": sample.contiguous(),
        },
        os.path.join(root, "goldens.safetensors"),
    )
    print(
        f"{name}: decoded {tuple(decoded.shape)}, tiled {tuple(tiled.shape)} (tile latent {tile}), "
        f"{distinct} byte values, {dir_size(root) / 1024:.0f} KiB"
    )


def layouts():
    """`vae_layouts.json`: the config and every state-dict name and shape of full-size VAEs
    (SD 1.x/2.x/XL's four levels of up to 512 channels; SD3/Flux's 16 latent channels without
    quant convs), built on the meta device: a loader must take exactly these."""
    full = dict(
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[128, 256, 512, 512],
        layers_per_block=2,
        norm_num_groups=32,
    )
    configs = {
        "sd": dict(full, latent_channels=4, sample_size=512),
        "sd3": dict(
            full,
            latent_channels=16,
            sample_size=1024,
            scaling_factor=1.5305,
            shift_factor=0.0609,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ),
    }
    out = {}
    for name, cfg in configs.items():
        with torch.device("meta"):
            vae = AutoencoderKL(**cfg)
        config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
        config["_class_name"] = "AutoencoderKL"
        out[name] = {
            "config": config,
            "weights": {k: list(v.shape) for k, v in vae.state_dict().items()},
        }
    path = os.path.join(FIXTURES, "vae_layouts.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=0, sort_keys=True)
    counts = ", ".join(f"{k}: {len(v['weights'])} weights" for k, v in out.items())
    print(f"vae_layouts.json: {counts}")


def main():
    layouts()
    case(
        "vae_sd_like",
        1,
        dict(
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
            block_out_channels=[8, 16],
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=16,
            scaling_factor=0.18215,
        ),
        latent_hw=(6, 5),
        tiled_hw=(12, 20),
        pixel_hw=(16, 12),
        pipeline=True,
    )
    case(
        "vae_sd3_like",
        2,
        dict(
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 3,
            up_block_types=["UpDecoderBlock2D"] * 3,
            block_out_channels=[8, 8, 16],
            layers_per_block=2,
            latent_channels=16,
            norm_num_groups=4,
            sample_size=32,
            scaling_factor=1.5305,
            shift_factor=0.0609,
            use_quant_conv=False,
            use_post_quant_conv=False,
            mid_block_add_attention=False,
            force_upcast=False,
        ),
        latent_hw=(4, 3),
        tiled_hw=(12, 10),
        pixel_hw=(16, 8),
        variant="fp16",
    )


if __name__ == "__main__":
    main()
