#!/usr/bin/env python3
"""Generate sampler-loop golden fixtures for the `freelunch` crate from diffusers.

How to run (from the repo root, after `tools/gen_goldens.py` has produced the
`ddpm_basic` and `sd15_like` model fixtures):

    python -m pip install -r tools/requirements.txt && python tools/gen_sampler_goldens.py [case ...]

Output: `tests/fixtures/samplers/<case>/` (located from this script's own path):

    scheduler_config.json     scheduler.save_config(dir) (has `_class_name`)
    case.json                 {"model", "steps", "guidance", "eta", "step_noise", "batch",
                               "timesteps": scheduler.timesteps as floats,
                               "sigmas": scheduler.sigmas as floats or null,
                               LMS only: "lms_coefficients": per step, diffusers'
                               get_lms_coefficient(order, i, j) for j = 0..order}
    noise.safetensors         `sample`: initial noise, N(0,1), UNSCALED, f32 [B,C,H,W]
    cond.safetensors          (conditional cases) `encoder_hidden_states` [B,7,48] and,
                              with guidance, `uncond_hidden_states` [B,7,48]
    step_noise.safetensors    (stochastic cases) `noise_0`, `noise_1`, ... one per loop
                              iteration (shape of latents, N(0,1)); the step consumes
                              noise_i instead of drawing from a generator
    expected.safetensors      `sample`: final latents (unclamped, no post-processing)

The loop is the one diffusers pipelines run (CPU, f32, torch.no_grad()):

    scheduler = Cls.from_config(config); scheduler.set_timesteps(steps)
    latents = noise * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        x_in = cat([latents] * 2) if guidance else latents
        x_in = scheduler.scale_model_input(x_in, t)
        out = unet(x_in, t[, encoder_hidden_states=cat([uncond, cond])]).sample
        if guidance: u, c = out.chunk(2); out = u + g * (c - u)
        latents = scheduler.step(out, t, latents, **kw).prev_sample

Noise injection: DDPMScheduler draws its variance noise via `randn_tensor` imported
into `diffusers.schedulers.scheduling_ddpm`; that name is monkeypatched to return
noise_i (it is only called when t > 0, so with "leading" spacing the last noise
tensor, for t = 0, is not consumed). EulerAncestralDiscreteScheduler draws through
the same name in `scheduling_euler_ancestral_discrete`, patched the same way (it
draws at every step, the last with sigma_up = 0). DDIMScheduler (eta > 0) and
DPMSolverMultistepScheduler (algorithm_type sde-dpmsolver++) get noise_i through
`step(..., variance_noise=noise_i)`. Every injection is verified by re-running
with negated step noise and checking that the result changes (and, for the
patched modules, that the patched function was called the expected number of
times).

PNDMScheduler's timesteps repeat entries (PLMS evaluates its second timestep
twice; the PRK warm-up its midpoints): `timesteps` in case.json is the list of
model calls, one per loop iteration, as the pipelines loop over it.
"""

import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

import diffusers
import diffusers.schedulers.scheduling_ddpm as ddpm_mod
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a_mod
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UNet2DConditionModel,
    UNet2DModel,
    UniPCMultistepScheduler,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_common import FIXTURES, dir_size  # noqa: E402

OUT_ROOT = os.path.join(FIXTURES, "samplers")

MODELS = {
    # name -> (class, latent shape of one sample, conditional)
    "ddpm_basic": (UNet2DModel, (3, 16, 16), False),
    "sd15_like": (UNet2DConditionModel, (4, 16, 16), True),
    "sdxl_like": (UNet2DConditionModel, (4, 16, 16), True),
}
SEQ_LEN = 7
# cross_attention_dim of each conditional model, and for SDXL-like (text_time) models the width
# of the pooled text embedding (projection_class_embeddings_input_dim - 6 * addition_time_embed_dim).
CROSS_DIM = {"sd15_like": 48, "sdxl_like": 64}
TEXT_EMBEDS = {"sdxl_like": 80 - 6 * 8}


def C(cls, steps, model="ddpm_basic", batch=None, guidance=None, eta=None, step_noise=False,
      cond_batch=None, **config):
    """`cond_batch`: the batch of the stored conditioning when it differs from the noise's (1:
    one prompt for the whole batch, repeated as diffusers' num_images_per_prompt does)."""
    if batch is None:
        batch = 2 if model == "ddpm_basic" else 1
    return dict(
        cls=cls,
        steps=steps,
        model=model,
        batch=batch,
        guidance=guidance,
        eta=eta,
        step_noise=step_noise,
        cond_batch=cond_batch or batch,
        config=dict(num_train_timesteps=1000, **config),
    )


# fmt: off
CASES = {
    # ---- DDIM, eta 0: beta_schedule x timestep_spacing, each value at least once ----
    "ddim_linear_leading_offset1": C(
        DDIMScheduler, 10, eta=0.0, beta_schedule="linear", timestep_spacing="leading",
        steps_offset=1, clip_sample=False, prediction_type="epsilon"),
    "ddim_scaled_trailing_alpha1false": C(
        DDIMScheduler, 10, eta=0.0, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=False, prediction_type="epsilon"),
    "ddim_cos_linspace_clip": C(
        DDIMScheduler, 10, eta=0.0, beta_schedule="squaredcos_cap_v2", timestep_spacing="linspace",
        clip_sample=True, prediction_type="epsilon"),
    "ddim_linear_trailing_v": C(
        DDIMScheduler, 10, eta=0.0, beta_schedule="linear", timestep_spacing="trailing",
        clip_sample=False, prediction_type="v_prediction"),
    "ddim_scaled_leading_sample": C(
        DDIMScheduler, 10, eta=0.0, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        timestep_spacing="leading", clip_sample=False, prediction_type="sample"),
    # ---- Euler ----
    "euler_eps_linear_leading": C(
        EulerDiscreteScheduler, 10, beta_schedule="linear", timestep_spacing="leading",
        prediction_type="epsilon"),
    "euler_eps_scaled_karras": C(
        EulerDiscreteScheduler, 10, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        use_karras_sigmas=True, prediction_type="epsilon"),
    "euler_v_trailing": C(
        EulerDiscreteScheduler, 10, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        timestep_spacing="trailing", prediction_type="v_prediction"),
    "euler_eps_linear_linspace": C(
        EulerDiscreteScheduler, 10, beta_schedule="linear", timestep_spacing="linspace",
        prediction_type="epsilon"),
    # ---- Heun (timesteps are doubled: 2*steps-1 model calls) ----
    "heun_eps": C(
        HeunDiscreteScheduler, 6, beta_schedule="linear", prediction_type="epsilon"),
    "heun_v": C(
        HeunDiscreteScheduler, 6, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        prediction_type="v_prediction"),
    # ---- DPM-Solver++ 2M ----
    "dpmpp2m_eps": C(
        DPMSolverMultistepScheduler, 8, algorithm_type="dpmsolver++", solver_order=2,
        beta_schedule="linear", prediction_type="epsilon"),
    "dpmpp2m_v": C(
        DPMSolverMultistepScheduler, 8, algorithm_type="dpmsolver++", solver_order=2,
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction"),
    "dpmpp2m_eps_karras": C(
        DPMSolverMultistepScheduler, 8, algorithm_type="dpmsolver++", solver_order=2,
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, use_karras_sigmas=True,
        prediction_type="epsilon"),
    # ---- stochastic ----
    "ddpm_eps_stepnoise": C(
        DDPMScheduler, 10, step_noise=True, beta_schedule="linear", prediction_type="epsilon",
        clip_sample=True, variance_type="fixed_small"),
    "ddim_eta05_stepnoise": C(
        DDIMScheduler, 10, eta=0.5, step_noise=True, beta_schedule="scaled_linear",
        beta_start=0.00085, beta_end=0.012, timestep_spacing="leading", steps_offset=1,
        clip_sample=False, set_alpha_to_one=False, prediction_type="epsilon"),
    # ---- classifier-free guidance on the conditional UNet ----
    "cfg_ddim_sd15": C(
        DDIMScheduler, 10, model="sd15_like", guidance=7.5, eta=0.0, beta_schedule="scaled_linear",
        beta_start=0.00085, beta_end=0.012, timestep_spacing="leading", steps_offset=1,
        clip_sample=False, set_alpha_to_one=False, prediction_type="epsilon"),
    "cfg_euler_sd15": C(
        EulerDiscreteScheduler, 10, model="sd15_like", guidance=7.5, beta_schedule="scaled_linear",
        beta_start=0.00085, beta_end=0.012, timestep_spacing="leading", steps_offset=1,
        prediction_type="epsilon"),
    # ==== added with PNDM, Euler ancestral, LMS, UniPC, DPM-Solver++ SDE, zero terminal SNR ====
    # Appended, so that the seeds of the cases above stay the same. The GPU-emulated test runs
    # every case in three dtypes at ~0.5 s per model call and dtype, so these are batch 1 with
    # 2-4 steps, each covering several options (every beta schedule, prediction type and
    # spacing of each sampler across its cases). f16 must hold the latents (below 65504): the
    # cosine schedule's first sigma of ~20000 goes with v or sample prediction.
    # ---- PNDM: PLMS only (skip_prk_steps, the SD1.x default) and the PRK warm-up ----
    # The PRK warm-up takes 4 steps (12 calls), its PLMS calls use the 4-term formula.
    "pndm_prk_linear_trailing_v": C(
        PNDMScheduler, 4, batch=1, beta_schedule="linear", skip_prk_steps=False, set_alpha_to_one=False,
        timestep_spacing="trailing", prediction_type="v_prediction"),
    # (4 steps: the 3-term formula's call is not the last, whose ε barely matters.)
    "pndm_plms_scaled_linspace": C(
        PNDMScheduler, 4, batch=1, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        skip_prk_steps=True, set_alpha_to_one=False, timestep_spacing="linspace",
        prediction_type="epsilon"),
    # (Not from t = 999 on the cosine schedule: the first step's sqrt(alpha_prev / alpha) of
    # ~20000 takes an epsilon model's latents past f16's range.)
    "cfg_pndm_sd15_cos_leading_alpha1": C(
        PNDMScheduler, 2, model="sd15_like", guidance=7.5, beta_schedule="squaredcos_cap_v2",
        skip_prk_steps=True, set_alpha_to_one=True, timestep_spacing="leading", steps_offset=1,
        prediction_type="epsilon"),
    # ---- Euler ancestral (stochastic) ----
    "euler_a_eps_scaled_linspace_stepnoise": C(
        EulerAncestralDiscreteScheduler, 2, batch=1, step_noise=True, beta_schedule="scaled_linear",
        beta_start=0.00085, beta_end=0.012, timestep_spacing="linspace", prediction_type="epsilon"),
    # (From the cosine schedule's sigma of ~20000 at t = 999, diffusers' f32 sigma_down is NaN:
    # sigma_from**2 - sigma_to**2 rounds to sigma_from**2. Leading spacing starts lower.)
    "cfg_euler_a_sd15_v_cos_leading_stepnoise": C(
        EulerAncestralDiscreteScheduler, 2, model="sd15_like", guidance=7.5, step_noise=True,
        beta_schedule="squaredcos_cap_v2", timestep_spacing="leading", steps_offset=1,
        prediction_type="v_prediction"),
    # ---- LMS (order 4, reached at the 4th step) ----
    "lms_eps_scaled_karras": C(
        LMSDiscreteScheduler, 4, batch=1, beta_schedule="scaled_linear", beta_start=0.00085,
        beta_end=0.012, use_karras_sigmas=True, prediction_type="epsilon"),
    "lms_v_linear_trailing": C(
        LMSDiscreteScheduler, 2, batch=1, beta_schedule="linear", timestep_spacing="trailing",
        prediction_type="v_prediction"),
    "lms_sample_cos_leading": C(
        LMSDiscreteScheduler, 2, batch=1, beta_schedule="squaredcos_cap_v2", timestep_spacing="leading",
        steps_offset=1, prediction_type="sample"),
    # ---- UniPC (bh2, order 2, predict_x0, lower_order_final: diffusers' defaults) ----
    # (4 steps: a second-order corrector at step 2 (step 3's cannot matter), on latents of
    # size ~1, where it shows.)
    "unipc_v_scaled_linspace": C(
        UniPCMultistepScheduler, 4, batch=1, beta_schedule="scaled_linear", beta_start=0.00085,
        beta_end=0.012, timestep_spacing="linspace", prediction_type="v_prediction"),
    # (UniPC's spacing rules are DPM-Solver's; Karras timesteps are always rounded here.)
    "cfg_unipc_sd15_sample_cos_karras": C(
        UniPCMultistepScheduler, 2, model="sd15_like", guidance=7.5, beta_schedule="squaredcos_cap_v2",
        use_karras_sigmas=True, prediction_type="sample"),
    # ---- DPM-Solver++ 2M SDE (stochastic) ----
    "dpmpp2m_sde_eps_linear_stepnoise": C(
        DPMSolverMultistepScheduler, 3, batch=1, step_noise=True, algorithm_type="sde-dpmsolver++",
        solver_order=2, beta_schedule="linear", prediction_type="epsilon"),
    "dpmpp2m_sde_v_scaled_karras_stepnoise": C(
        DPMSolverMultistepScheduler, 2, batch=1, step_noise=True, algorithm_type="sde-dpmsolver++",
        solver_order=2, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        use_karras_sigmas=True, prediction_type="v_prediction"),
    "dpmpp2m_sde_sample_cos_leading_stepnoise": C(
        DPMSolverMultistepScheduler, 2, batch=1, step_noise=True, algorithm_type="sde-dpmsolver++",
        solver_order=2, beta_schedule="squaredcos_cap_v2", timestep_spacing="leading",
        prediction_type="sample"),
    # ---- zero terminal SNR (rescale_betas_zero_snr), with trailing spacing from t = 999 ----
    "ddim_zsnr_v_trailing": C(
        DDIMScheduler, 2, batch=1, eta=0.0, beta_schedule="scaled_linear", beta_start=0.00085,
        beta_end=0.012, rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False,
        prediction_type="v_prediction"),
    # (diffusers' first sigma there is torch.sqrt(2**24 - 1) = 4096.0 on the CPU that generated
    # these, one ulp above the correctly rounded root; the first Euler step from it cancels
    # about three digits, so the next two agree to a few 1e-5 only, and less with fewer steps.)
    "euler_zsnr_v_trailing": C(
        EulerDiscreteScheduler, 4, batch=1, beta_schedule="scaled_linear", beta_start=0.00085,
        beta_end=0.012, rescale_betas_zero_snr=True, timestep_spacing="trailing",
        prediction_type="v_prediction"),
    "euler_a_zsnr_v_linear_trailing_stepnoise": C(
        EulerAncestralDiscreteScheduler, 4, batch=1, step_noise=True, beta_schedule="linear",
        rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction"),
    "dpmpp2m_zsnr_v_trailing": C(
        DPMSolverMultistepScheduler, 2, batch=1, algorithm_type="dpmsolver++", solver_order=2,
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True,
        timestep_spacing="trailing", prediction_type="v_prediction"),
    # UniPC at order 1 with the first corrector switched off (step 2's still runs; the last
    # step's correction cannot matter: the final update to sigma = 0 is its x0 prediction), on
    # zero terminal SNR.
    "unipc_zsnr_v_linear_trailing_order1_disable_corrector": C(
        UniPCMultistepScheduler, 4, batch=1, beta_schedule="linear", rescale_betas_zero_snr=True,
        timestep_spacing="trailing", solver_order=1, disable_corrector=[0],
        prediction_type="v_prediction"),
    # ---- SDXL: pooled text embeddings and time ids, guided, one prompt for a batch of two ----
    "cfg_euler_sdxl": C(
        EulerDiscreteScheduler, 8, model="sdxl_like", guidance=5.0, batch=2, cond_batch=1,
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        timestep_spacing="leading", steps_offset=1, prediction_type="epsilon"),
}
# fmt: on


_unets = {}


def load_unet(name):
    if name not in _unets:
        cls = MODELS[name][0]
        _unets[name] = cls.from_pretrained(os.path.join(FIXTURES, name)).to(torch.float32).eval()
    return _unets[name]


def make_scheduler(spec):
    cls = spec["cls"]
    sched = cls.from_config(cls(**spec["config"]).config)
    sched.set_timesteps(spec["steps"])
    return sched


class NoisePatch:
    """Replace `module.randn_tensor` so that a call during step i returns noise_i."""

    def __init__(self, module):
        self.module = module
        self.orig = module.randn_tensor
        self.current = None
        self.calls = 0

    def __enter__(self):
        def fake(shape, generator=None, device=None, dtype=None, layout=None):
            assert self.current is not None, "the scheduler drew noise outside of a step"
            assert tuple(shape) == tuple(self.current.shape), (shape, self.current.shape)
            self.calls += 1
            return self.current.to(dtype=dtype or torch.float32)

        self.module.randn_tensor = fake
        return self

    def __exit__(self, *exc):
        self.module.randn_tensor = self.orig
        return False


def guided(uncond, cond, guidance):
    """The model's batch of conditioning: [uncond, cond] under guidance (as the pipelines
    concatenate them), the conditioning alone otherwise."""
    return torch.cat([uncond, cond]) if guidance is not None else cond


def run_loop(spec, unet, noise, cond=None, uncond=None, step_noise=None):
    """`cond`/`uncond`: dicts with `encoder_hidden_states` and, for SDXL-like models,
    `text_embeds` and `time_ids`, already at the noise's batch."""
    sched = make_scheduler(spec)
    guidance = spec["guidance"]
    patched = {DDPMScheduler: ddpm_mod, EulerAncestralDiscreteScheduler: euler_a_mod}.get(type(sched))
    patch = NoisePatch(patched) if patched else None
    sde = isinstance(sched, DPMSolverMultistepScheduler) and sched.config.algorithm_type.startswith("sde")
    n_model_calls = 0
    latents = noise * sched.init_noise_sigma
    if patch:
        patch.__enter__()
    try:
        for i, t in enumerate(sched.timesteps):
            x_in = torch.cat([latents] * 2) if guidance is not None else latents
            x_in = sched.scale_model_input(x_in, t)
            kwargs = {}
            if cond is not None:
                g = {k: guided(uncond and uncond[k], cond[k], guidance) for k in cond}
                kwargs["encoder_hidden_states"] = g.pop("encoder_hidden_states")
                if g:
                    kwargs["added_cond_kwargs"] = g
            out = unet(x_in, t, **kwargs).sample
            n_model_calls += 1
            if guidance is not None:
                u, c = out.chunk(2)
                out = u + guidance * (c - u)
            step_kw = {}
            if isinstance(sched, DDIMScheduler):
                step_kw["eta"] = spec["eta"]
                if spec["eta"] and spec["eta"] > 0:
                    step_kw["variance_noise"] = step_noise[i]
            if sde:
                step_kw["variance_noise"] = step_noise[i]
            if patch:
                patch.current = step_noise[i]
            latents = sched.step(out, t, latents, **step_kw).prev_sample
            if patch:
                patch.current = None
    finally:
        if patch:
            patch.__exit__(None, None, None)
    return latents, sched, n_model_calls, (patch.calls if patch else None)


def floats(x):
    return [float(v) for v in x.detach().to(torch.float64).flatten().tolist()]


def run_case(seed, name, spec):
    torch.manual_seed(seed)
    case_dir = os.path.join(OUT_ROOT, name)
    if os.path.exists(case_dir):
        shutil.rmtree(case_dir)
    os.makedirs(case_dir)

    _, shape, conditional = MODELS[spec["model"]]
    unet = load_unet(spec["model"])
    B = spec["batch"]
    noise = torch.randn(B, *shape)
    cond = uncond = None
    stored = {}
    if conditional:
        model = spec["model"]
        CB = spec["cond_batch"]

        def draw():
            c = {"encoder_hidden_states": torch.randn(CB, SEQ_LEN, CROSS_DIM[model])}
            if model in TEXT_EMBEDS:
                c["text_embeds"] = torch.randn(CB, TEXT_EMBEDS[model])
            return c

        cond = draw()
        if model in TEXT_EMBEDS:
            # SDXL's add_time_ids: original size, crop top-left, target size.
            cond["time_ids"] = torch.tensor([[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]]).repeat(CB, 1)
        stored = {k: v for k, v in cond.items()}
        if spec["guidance"] is not None:
            uncond = draw()
            stored.update({f"uncond_{k}": v for k, v in uncond.items()})
            stored["uncond_hidden_states"] = stored.pop("uncond_encoder_hidden_states")
            if "time_ids" in cond:
                # the pipeline's negative time ids default to the positive ones; the stored
                # conditioning leaves uncond_time_ids out to test that default
                uncond["time_ids"] = cond["time_ids"]
        # one prompt for the batch: repeated to it as num_images_per_prompt does
        cond = {k: v.repeat(B // CB, *[1] * (v.dim() - 1)) for k, v in cond.items()}
        if uncond is not None:
            uncond = {k: v.repeat(B // CB, *[1] * (v.dim() - 1)) for k, v in uncond.items()}
    probe = make_scheduler(spec)
    n_iters = len(probe.timesteps)
    step_noise = [torch.randn(B, *shape) for _ in range(n_iters)] if spec["step_noise"] else None

    with torch.no_grad():
        out, sched, n_calls, noise_calls = run_loop(spec, unet, noise, cond, uncond, step_noise)
        if not torch.isfinite(out).all():
            raise RuntimeError(f"{name}: non-finite output")
        # determinism
        out2, *_ = run_loop(spec, unet, noise, cond, uncond, step_noise)
        assert torch.equal(out, out2), f"{name}: non-deterministic"
        # injection really used
        if step_noise is not None:
            neg = [-n for n in step_noise]
            out3, *_ = run_loop(spec, unet, noise, cond, uncond, neg)
            diff = float((out - out3).abs().max())
            assert diff > 1e-3, f"{name}: step noise injection had no effect ({diff})"
            if noise_calls is not None:
                if isinstance(sched, DDPMScheduler):
                    expected_calls = int((sched.timesteps > 0).sum())
                else:
                    expected_calls = len(sched.timesteps)
                assert noise_calls == expected_calls, (noise_calls, expected_calls)
        # rough conditioning estimate for choosing test tolerances
        eps = 1e-4
        outp, *_ = run_loop(spec, unet, noise + eps * torch.randn_like(noise), cond, uncond, step_noise)
        amp = float((outp - out).abs().max()) / eps

    sched.save_config(case_dir)
    sigmas = getattr(sched, "sigmas", None)
    case = {
        "model": spec["model"],
        "steps": spec["steps"],
        "guidance": spec["guidance"],
        "eta": spec["eta"],
        "step_noise": spec["step_noise"],
        "batch": B,
        "timesteps": floats(sched.timesteps),
        "sigmas": floats(sigmas) if sigmas is not None else None,
    }
    if isinstance(sched, LMSDiscreteScheduler):
        # The LMS coefficients diffusers integrates with scipy's quad, per step (newest
        # derivative first), for `step`'s default order 4.
        probe = make_scheduler(spec)
        case["lms_coefficients"] = [
            [float(probe.get_lms_coefficient(min(i + 1, 4), i, j)) for j in range(min(i + 1, 4))]
            for i in range(len(probe.timesteps))
        ]
    with open(os.path.join(case_dir, "case.json"), "w") as f:
        json.dump(case, f, indent=2)
        f.write("\n")
    save_file({"sample": noise.contiguous()}, os.path.join(case_dir, "noise.safetensors"))
    if conditional:
        save_file({k: v.contiguous() for k, v in stored.items()}, os.path.join(case_dir, "cond.safetensors"))
    if step_noise is not None:
        save_file(
            {f"noise_{i}": n.contiguous() for i, n in enumerate(step_noise)},
            os.path.join(case_dir, "step_noise.safetensors"),
        )
    save_file({"sample": out.contiguous()}, os.path.join(case_dir, "expected.safetensors"))

    ts = sched.timesteps
    print(
        f"{name:34s} {type(sched).__name__:28s} iters={n_calls:2d} ts_dtype={str(ts.dtype).replace('torch.', '')} "
        f"init_sigma={float(sched.init_noise_sigma):.4f} out_std={float(out.std()):.4f} "
        f"out_maxabs={float(out.abs().max()):.3f} noise_amp~{amp:.2f}"
        + (f" noise_calls={noise_calls}" if noise_calls is not None else ""),
        flush=True,
    )


def main():
    diffusers.utils.logging.set_verbosity_error()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.makedirs(OUT_ROOT, exist_ok=True)
    print(f"torch {torch.__version__}  diffusers {diffusers.__version__}  -> {OUT_ROOT}")
    only = set(sys.argv[1:])
    unknown = only - set(CASES)
    if unknown:
        sys.exit(f"unknown cases: {sorted(unknown)}")
    for idx, (name, spec) in enumerate(CASES.items()):
        if only and name not in only:
            continue
        run_case(5000 + 17 * idx, name, spec)
    total = dir_size(OUT_ROOT)
    print(f"total samplers fixtures size: {total / 1e6:.3f} MB ({total} bytes)")
    if total > 2 * 1024 * 1024:
        print("WARNING: sampler fixtures exceed 2 MB", file=sys.stderr)


if __name__ == "__main__":
    main()
