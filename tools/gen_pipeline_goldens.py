"""Goldens for full prompt-to-image runs of two tiny, complete diffusers pipelines (tests/pipelines):
a StableDiffusionPipeline and a StableDiffusionXLPipeline with random float32 weights, saved with
`pipe.save_pretrained` (safetensors) under tests/fixtures/pipelines/, and what diffusers makes of
them.

Re-runnable (from the repo root, with torch, diffusers and transformers as in
tools/requirements.txt; the tokenizers are copied from tests/fixtures/clip/, written by
gen_clip_goldens.py):

    python tools/gen_pipeline_goldens.py

Pipelines:

- `sd_tiny`: StableDiffusionPipeline: UNet2DConditionModel (CrossAttnDown/Down, Up/CrossAttnUp,
  widths (8, 16), 4 groups, one layer per block, 2 heads, conv proj_in/out, cross_attention_dim
  16, sample_size 8), AutoencoderKL (widths (8, 16) so vae_scale_factor 2, 4 groups, 4 latent
  channels, mid attention, scaling_factor 0.18215), CLIPTextModel (hidden 16, 2 layers, 2 heads,
  quick_gelu, legacy eos_token_id 2) with SD 1.x's `tokenizer/`,
  PNDMScheduler as SD 1.x configures it (skip_prk_steps), no safety checker / feature extractor.
- `sdxl_tiny`: StableDiffusionXLPipeline: UNet (Down/CrossAttnDown, CrossAttnUp/Up, widths
  (8, 16), heads (2, 4), linear projection, transformer_layers_per_block 1) with text_time added
  conditioning (addition_time_embed_dim 8, projection_class_embeddings_input_dim 16 + 6*8),
  cross_attention_dim 8 + 16; CLIPTextModel (hidden 8, quick_gelu, legacy eos 2) +
  CLIPTextModelWithProjection (hidden 16, gelu, real eos, projection_dim 16), 2 layers each, with
  `tokenizer/` and `tokenizer_2/` (pad `!`); the same VAE shape
  (scaling_factor 0.13025, force_upcast false); EulerDiscreteScheduler as SDXL base configures it
  (timestep_spacing "leading"); force_zeros_for_empty_prompt true.

All weights are perturbed off their init values (golden_common.perturb_). The VAE decoder's
conv_out is then rescaled (an affine map of the decoded image) so that, over the final latents of
all cases, the decoded values have mean 0 and std 0.35: few pixels clamp at 0 or 1.

`<pipeline>/goldens/cases.json` lists the cases (name, prompt, prompt_2, negative_prompt,
negative_prompt_2, num_images_per_prompt, guidance_scale, num_inference_steps, height, width and
for SDXL original_size, crops_coords_top_left, target_size, null = the pipeline's default) and
`<pipeline>/goldens/<case>.safetensors` holds, all f32 unless said:

- `latents` [B*n, 4, H/2, W/2]: the initial latents passed as `latents=` (standard normal,
  unscaled: the pipeline multiplies them by the scheduler's init_noise_sigma);
- `image` [B*n, 3, H, W] in [0, 1]: the output with output_type="np" (NHWC → NCHW), before 8-bit
  rounding; `image_u8` [B*n, 3, H, W] u8 = round(image * 255);
- `timesteps` [T] f32: the timesteps the UNet was called with, in order (`scheduler.timesteps`;
  PNDM with skip_prk_steps calls it num_inference_steps + 1 times, repeating the second one);
- `final_latents` [B*n, 4, H/2, W/2]: the output of an identical run with output_type="latent";
- `prompt_embeds` [B*n, 77, D], `negative_prompt_embeds` (only with CFG, guidance_scale > 1):
  `pipe.encode_prompt`'s, as the UNet gets them;
- SDXL only: `pooled_prompt_embeds` [B*n, 16], `negative_pooled_prompt_embeds` (with CFG),
  `add_time_ids` [1, 6] and `negative_add_time_ids` [1, 6] (`pipe._get_add_time_ids`, before the
  batch repeat).

The intermediates are checked against what the UNet is actually called with during the run.
"""

import json
import os
import shutil
import sys

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_common import FIXTURES, dir_size, perturb_, rel_l2  # noqa: E402

OUT = os.path.join(FIXTURES, "pipelines")
CLIP = os.path.join(FIXTURES, "clip")
DECODED_STD = 0.35

SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
)

SD_CASES = [
    dict(name="plain", prompt=["a photograph of an astronaut riding a horse"], negative_prompt=None,
         guidance_scale=7.5, num_inference_steps=4, height=16, width=16),
    dict(name="negative_batch2_nonsquare",
         prompt=["A Photo of a CAT, 4k!!", "héllo wörld, café naïve résumé Ærøskøbing"],
         negative_prompt=["blurry, low quality", ""], guidance_scale=5.0, num_inference_steps=3,
         height=16, width=24),
    dict(name="no_cfg", prompt=["東京タワーの夜景, 高清"], negative_prompt=None, guidance_scale=1.0,
         num_inference_steps=3, height=24, width=16),
    dict(name="two_images_per_prompt", prompt=["emoji 🙂🚀🔥 and flags 🇯🇵 with zwj 👩‍💻"],
         negative_prompt=["symbols @#$%^&*()_+-=[]{}|;:'\",.<>/?`~"], num_images_per_prompt=2,
         guidance_scale=7.5, num_inference_steps=3, height=16, width=16),
]

SDXL_CASES = [
    dict(name="zero_negative", prompt=["a photograph of an astronaut riding a horse"], negative_prompt=None,
         guidance_scale=7.5, num_inference_steps=4, height=16, width=16),
    dict(name="negative_micro_cond_nonsquare", prompt=["don't stop; it's the dog's ball, isn't it?"],
         prompt_2=["한국어 텍스트와 中文 混合"], negative_prompt=["ugly, (bad hands:1.2)"],
         guidance_scale=5.0, num_inference_steps=3, height=16, width=24,
         original_size=[64, 48], crops_coords_top_left=[4, 8], target_size=[32, 48]),
    dict(name="no_cfg_batch2", prompt=["hello!", "Ünïcödé ÇAPS ΣΊΣΥΦΟΣ Ελληνικά русский текст"],
         negative_prompt=None, guidance_scale=1.0, num_inference_steps=3, height=24, width=16),
    dict(name="both_negatives_batch2", prompt=["numbers 12345 and 3.14159", "masterpiece, best quality"],
         negative_prompt=["worse", ""], negative_prompt_2=["", "bad"], guidance_scale=7.5,
         num_inference_steps=3, height=16, width=16),
]

CASE_KEYS = ["name", "prompt", "prompt_2", "negative_prompt", "negative_prompt_2", "num_images_per_prompt",
             "guidance_scale", "num_inference_steps", "height", "width"]
XL_KEYS = ["original_size", "crops_coords_top_left", "target_size"]


def normalize_case(c, xl):
    out = {k: c.get(k) for k in CASE_KEYS + (XL_KEYS if xl else [])}
    out["num_images_per_prompt"] = c.get("num_images_per_prompt", 1)
    if not xl:
        del out["prompt_2"], out["negative_prompt_2"]
    return out


def text_encoder(seed, vocab_size, hidden, act, eos, projection=None):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden + 8,
        projection_dim=projection or 512,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act=act,
        layer_norm_eps=1e-5,
        bos_token_id=vocab_size - 2,
        eos_token_id=eos,
        pad_token_id=1,
    )
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()
    perturb_(model)
    return model


def vae(seed, scaling_factor, **extra):
    torch.manual_seed(seed)
    m = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[8, 16],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=scaling_factor,
        **extra,
    ).eval()
    perturb_(m)
    return m


def unet(seed, **cfg):
    torch.manual_seed(seed)
    m = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        **cfg,
    ).eval()
    perturb_(m)
    return m


def vocab_size():
    with open(os.path.join(CLIP, "tokenizer", "vocab.json"), encoding="utf-8") as f:
        return len(json.load(f))


def latents_for(case, seed, f=2):
    n = len(case["prompt"]) * case["num_images_per_prompt"]
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, 4, case["height"] // f, case["width"] // f), generator=g)


def call_kwargs(case, xl):
    kw = dict(
        prompt=case["prompt"],
        negative_prompt=case["negative_prompt"],
        num_images_per_prompt=case["num_images_per_prompt"],
        guidance_scale=case["guidance_scale"],
        num_inference_steps=case["num_inference_steps"],
        height=case["height"],
        width=case["width"],
    )
    if xl:
        kw.update(prompt_2=case["prompt_2"], negative_prompt_2=case["negative_prompt_2"])
        for k in XL_KEYS:
            if case[k] is not None:
                kw[k] = tuple(case[k])
    return kw


def run(pipe, case, latents, xl, output_type):
    torch.manual_seed(0)  # nothing should draw from it (latents are given, the schedulers are deterministic)
    with torch.no_grad():
        return pipe(**call_kwargs(case, xl), latents=latents.clone(), output_type=output_type).images


def calibrate_vae(pipe, cases, xl):
    """Rescale the decoder's conv_out so the decoded final latents have mean 0, std DECODED_STD."""
    decoded = []
    for i, c in enumerate(cases):
        lat = run(pipe, c, latents_for(c, 100 + i), xl, "latent")
        with torch.no_grad():
            decoded.append(pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample.flatten())
    d = torch.cat(decoded)
    mean, std = float(d.mean()), float(d.std())
    conv = pipe.vae.decoder.conv_out
    with torch.no_grad():
        conv.weight.mul_(DECODED_STD / std)
        conv.bias.sub_(mean).mul_(DECODED_STD / std)
    print(f"  vae calibration: decoded mean {mean:.3f}, std {std:.3f} → std {DECODED_STD}")


def save_pipeline(pipe, name, tokenizers):
    root = os.path.join(OUT, name)
    shutil.rmtree(root, ignore_errors=True)
    pipe.save_pretrained(root, safe_serialization=True)
    # The tokenizers as the hub has them (SD 1.x / SDXL files), not transformers' re-save.
    for t in tokenizers:
        shutil.rmtree(os.path.join(root, t), ignore_errors=True)
        shutil.copytree(os.path.join(CLIP, t), os.path.join(root, t))
    return root


class UnetSpy:
    """Records the keyword arguments (and the timestep) of the UNet's calls in a run."""

    def __init__(self, unet):
        self.calls = []
        unet.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.calls.append(dict(kwargs, timestep=args[1] if len(args) > 1 else kwargs["timestep"]))


def goldens(pipe, cases, xl, root):
    gdir = os.path.join(root, "goldens")
    os.makedirs(gdir, exist_ok=True)
    spy = UnetSpy(pipe.unet)
    for i, c in enumerate(cases):
        lat = latents_for(c, 100 + i)
        spy.calls.clear()
        image = run(pipe, c, lat, xl, "np")
        first = spy.calls[0]
        unet_timesteps = torch.stack([torch.as_tensor(k["timestep"]).float().reshape(()) for k in spy.calls])
        assert torch.equal(unet_timesteps, pipe.scheduler.timesteps.float())
        image2 = run(pipe, c, lat, xl, "np")
        final = run(pipe, c, lat, xl, "latent")
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(0, 3, 1, 2).contiguous().float()
        image2 = torch.from_numpy(np.ascontiguousarray(image2)).permute(0, 3, 1, 2).contiguous().float()
        det = rel_l2(image2, image)
        assert det == 0.0, f"{c['name']}: nondeterministic ({det})"
        cfg = c["guidance_scale"] > 1.0
        n = c["num_images_per_prompt"]
        t = {"latents": lat, "timesteps": unet_timesteps, "image": image, "image_u8": (image * 255).round().to(torch.uint8), "final_latents": final}
        with torch.no_grad():
            if xl:
                pe, ne, pp, npp = pipe.encode_prompt(
                    prompt=c["prompt"], prompt_2=c["prompt_2"], device="cpu", num_images_per_prompt=n,
                    do_classifier_free_guidance=cfg, negative_prompt=c["negative_prompt"],
                    negative_prompt_2=c["negative_prompt_2"],
                )
                size = (c["height"], c["width"])
                orig = tuple(c["original_size"] or size)
                crop = tuple(c["crops_coords_top_left"] or (0, 0))
                target = tuple(c["target_size"] or size)
                proj = pipe.text_encoder_2.config.projection_dim
                tid = pipe._get_add_time_ids(orig, crop, target, dtype=pe.dtype, text_encoder_projection_dim=proj)
                # negative_original_size etc. are not set: the negative ids are the positive ones.
                ntid = tid.clone()
                t.update(prompt_embeds=pe, pooled_prompt_embeds=pp, add_time_ids=tid)
                if cfg:
                    t.update(negative_prompt_embeds=ne, negative_pooled_prompt_embeds=npp, negative_add_time_ids=ntid)
                bn = pe.shape[0]
                ids = torch.cat([ntid, tid]) if cfg else tid
                want = {
                    "encoder_hidden_states": torch.cat([ne, pe]) if cfg else pe,
                    "text_embeds": torch.cat([npp, pp]) if cfg else pp,
                    "time_ids": ids.repeat(bn, 1),  # as the pipeline does: [neg, pos] * bn
                }
                got = {
                    "encoder_hidden_states": first["encoder_hidden_states"],
                    "text_embeds": first["added_cond_kwargs"]["text_embeds"],
                    "time_ids": first["added_cond_kwargs"]["time_ids"],
                }
            else:
                pe, ne = pipe.encode_prompt(
                    c["prompt"], "cpu", n, cfg, negative_prompt=c["negative_prompt"],
                )
                t["prompt_embeds"] = pe
                if cfg:
                    t["negative_prompt_embeds"] = ne
                want = {"encoder_hidden_states": torch.cat([ne, pe]) if cfg else pe}
                got = {"encoder_hidden_states": first["encoder_hidden_states"]}
            for k in want:
                assert torch.equal(want[k], got[k]), f"{c['name']}: {k} differs from what the UNet got"
            # The np image is the VAE decode of the final latents.
            dec = pipe.vae.decode(final / pipe.vae.config.scaling_factor).sample
            assert rel_l2((dec / 2 + 0.5).clamp(0, 1), image) < 1e-6
        clamped = float(((image <= 0) | (image >= 1)).float().mean())
        assert clamped < 0.05, f"{c['name']}: {clamped:.1%} clamped"
        t = {k: v.contiguous() if v.dtype == torch.uint8 else v.float().contiguous() for k, v in t.items()}
        save_file(t, os.path.join(gdir, f"{c['name']}.safetensors"))
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in t.items())
        print(f"  {c['name']}: rel L2 of two runs {det}, clamped {clamped:.2%}, "
              f"distinct bytes {len(torch.unique(t['image_u8']))}; {shapes}")
    with open(os.path.join(gdir, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)


def sd_tiny():
    print("sd_tiny")
    vs = vocab_size()
    te = text_encoder(11, vs, 16, "quick_gelu", 2)
    un = unet(
        12,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
    )
    va = vae(13, 0.18215)
    sched = PNDMScheduler(**SCHEDULER, skip_prk_steps=True, set_alpha_to_one=False, prediction_type="epsilon")
    tok = CLIPTokenizer.from_pretrained(os.path.join(CLIP, "tokenizer"))
    pipe = StableDiffusionPipeline(
        vae=va, text_encoder=te, tokenizer=tok, unet=un, scheduler=sched, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    cases = [normalize_case(c, False) for c in SD_CASES]
    calibrate_vae(pipe, cases, False)
    root = save_pipeline(pipe, "sd_tiny", ["tokenizer"])
    pipe = StableDiffusionPipeline.from_pretrained(root, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, PNDMScheduler) and pipe.vae_scale_factor == 2
    goldens(pipe, cases, False, root)


def sdxl_tiny():
    print("sdxl_tiny")
    vs = vocab_size()
    te = text_encoder(21, vs, 8, "quick_gelu", 2)
    te2 = text_encoder(22, vs, 16, "gelu", vs - 1, projection=16)
    time_dim = 8
    un = unet(
        23,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8 + 16,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=1,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=te2.config.projection_dim + 6 * time_dim,
    )
    va = vae(24, 0.13025, force_upcast=False)
    sched = EulerDiscreteScheduler(
        **SCHEDULER, timestep_spacing="leading", interpolation_type="linear", use_karras_sigmas=False,
        prediction_type="epsilon",
    )
    tok = CLIPTokenizer.from_pretrained(os.path.join(CLIP, "tokenizer"))
    tok2 = CLIPTokenizer.from_pretrained(os.path.join(CLIP, "tokenizer_2"))
    pipe = StableDiffusionXLPipeline(
        vae=va, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2, unet=un, scheduler=sched,
        force_zeros_for_empty_prompt=True, add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    cases = [normalize_case(c, True) for c in SDXL_CASES]
    calibrate_vae(pipe, cases, True)
    root = save_pipeline(pipe, "sdxl_tiny", ["tokenizer", "tokenizer_2"])
    pipe = StableDiffusionXLPipeline.from_pretrained(root, dtype=torch.float32, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler) and pipe.vae_scale_factor == 2
    assert pipe.config.force_zeros_for_empty_prompt
    goldens(pipe, cases, True, root)


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    sd_tiny()
    sdxl_tiny()
    for name in ["sd_tiny", "sdxl_tiny"]:
        print(f"{name}: {dir_size(os.path.join(OUT, name)) / 1024:.0f} KiB")
    print(f"pipelines: {dir_size(OUT) / 1024:.0f} KiB in all")


if __name__ == "__main__":
    main()
