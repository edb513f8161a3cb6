#!/usr/bin/env python3
"""Plain PyTorch reference for the decoder-skip "boosters" of the `freelunch` crate:
Skip-Tuning and FreeU (v1/v2, `stage` and `channels` block selection, any threshold).

Used by tools/gen_booster_goldens.py. Written from the spec, independent of
diffusers' own FreeU code path (`apply_freeu` / `enable_freeu`):

Every resnet of a decoder (up) block pops one skip tensor `skip` from the encoder
stack and concatenates `[h, skip]` along channels. Just before that concatenation,
in this order:

1. Skip-Tuning: `skip = skip * rho[j]`, where skips are numbered in the order the
   ENCODER produces them: j = 0 is the output of conv_in, then each resnet/attention
   output of each down block and each downsampler output; j = n-1 is the innermost.
   From (rho_top, rho_bottom): rho[j] = rho_top + (rho_bottom - rho_top) * j / (n - 1);
   or an explicit list of n values (`skip_scales`).
2. FreeU (if this resnet is selected): backbone scaling of `h`, then
   `skip = fourier_filter(skip, threshold, s)`.
   Selection `stage` (diffusers): every resnet of up_blocks[0] uses (b1, s1), every
   resnet of up_blocks[1] uses (b2, s2), others nothing. `channels` (official FreeU
   repo): a resnet whose incoming `h` has 4*block_out_channels[0] channels uses
   (b1, s1), one with 2*block_out_channels[0] uses (b2, s2), any other nothing.
   Backbone scaling of the first C//2 channels of h: v1 multiplies by b; v2 uses
   m = mean_C(h) (B x 1 x H x W, before any scaling), per sample
   m_hat = (m - min_HW m) / (max_HW m - min_HW m) (m_hat = 1 where max == min), and
   multiplies by (b - 1) * m_hat + 1.
3. concatenate.

Usage:

    with boosted(unet, freeu=FreeU(...), skip_tuning=(1.0, 0.6)):
        out = unet(...).sample

The context manager overrides `forward` on the up-block instances with copies of the
diffusers 0.42.1 forwards of UpBlock2D / CrossAttnUpBlock2D / AttnUpBlock2D in which
the FreeU code is removed and `h, skip = hook(block_idx, resnet_idx, h, skip)` is called
right before `torch.cat([h, skip], dim=1)`.
"""

from __future__ import annotations

import contextlib
import types
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch.fft import fftn, fftshift, ifftn, ifftshift

from diffusers.models.unets.unet_2d_blocks import AttnUpBlock2D, CrossAttnUpBlock2D, UpBlock2D


# --------------------------------------------------------------------------------------
# Booster math
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FreeU:
    b1: float
    b2: float
    s1: float
    s2: float
    blocks: str = "stage"  # "stage" | "channels"
    v2: bool = False
    threshold: int = 1

    def __post_init__(self):
        if self.blocks not in ("stage", "channels"):
            raise ValueError(f"FreeU.blocks must be 'stage' or 'channels', got {self.blocks!r}")
        if int(self.threshold) != self.threshold:
            raise ValueError("FreeU.threshold must be an integer")

    def to_json(self) -> dict:
        return {
            "b1": float(self.b1),
            "b2": float(self.b2),
            "s1": float(self.s1),
            "s2": float(self.s2),
            "blocks": self.blocks,
            "v2": bool(self.v2),
            "threshold": int(self.threshold),
        }


def fourier_filter(x_in: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """FreeU Fourier skip filter (same math as diffusers.utils.torch_utils.fourier_filter):
    2-D FFT over (H, W) in float32, fftshift, multiply the centre block
    [H//2-t : H//2+t, W//2-t : W//2+t] (python slice semantics, so a negative start
    wraps around) by `scale`, ifftshift, inverse FFT, real part."""
    x = x_in.to(torch.float32)
    _, _, h, w = x.shape
    x_freq = fftshift(fftn(x, dim=(-2, -1)), dim=(-2, -1))
    mask = torch.ones(x_freq.shape, dtype=torch.float32, device=x.device)
    crow, ccol = h // 2, w // 2
    mask[..., crow - threshold : crow + threshold, ccol - threshold : ccol + threshold] = scale
    x_freq = x_freq * mask
    out = ifftn(ifftshift(x_freq, dim=(-2, -1)), dim=(-2, -1)).real
    return out.to(x_in.dtype)


def backbone_scale(h: torch.Tensor, b: float, v2: bool) -> torch.Tensor:
    """Scale the first C//2 channels of h (v1: by b; v2: by (b-1)*m_hat+1). Not in place."""
    c = h.shape[1]
    half = c // 2
    if v2:
        m = h.mean(dim=1, keepdim=True)  # B x 1 x H x W, before any scaling
        mn = m.amin(dim=(2, 3), keepdim=True)
        mx = m.amax(dim=(2, 3), keepdim=True)
        flat = mx == mn
        denom = torch.where(flat, torch.ones_like(mx), mx - mn)
        m_hat = torch.where(flat, torch.ones_like(m), (m - mn) / denom)
        factor = (b - 1.0) * m_hat + 1.0
    else:
        factor = b
    return torch.cat([h[:, :half] * factor, h[:, half:]], dim=1)


def count_encoder_skips(unet: torch.nn.Module) -> int:
    """1 (conv_in) + sum over down blocks of len(resnets) + (1 if downsamplers)."""
    n = 1
    for blk in unet.down_blocks:
        n += len(blk.resnets)
        if getattr(blk, "downsamplers", None) is not None:
            n += len(blk.downsamplers)
    return n


def skip_tuning_scales(n: int, rho_top: float, rho_bottom: float) -> list[float]:
    if n == 1:
        return [float(rho_top)]
    return [rho_top + (rho_bottom - rho_top) * j / (n - 1) for j in range(n)]


class BoosterHook:
    """hook(block_idx, resnet_idx, h, skip) -> (h, skip) for one U-Net."""

    def __init__(
        self,
        unet: torch.nn.Module,
        freeu: FreeU | None = None,
        skip_tuning: tuple[float, float] | None = None,
        skip_scales: Sequence[float] | None = None,
    ):
        if skip_tuning is not None and skip_scales is not None:
            raise ValueError("give either skip_tuning or skip_scales, not both")
        self.freeu = freeu
        self.n = count_encoder_skips(unet)
        up_counts = [len(blk.resnets) for blk in unet.up_blocks]
        if sum(up_counts) != self.n:
            raise ValueError(f"decoder pops {sum(up_counts)} skips but encoder makes {self.n}")
        # pops before up block i
        self.offsets = [sum(up_counts[:i]) for i in range(len(up_counts))]
        self.c0 = int(unet.config.block_out_channels[0])
        if skip_scales is not None:
            if len(skip_scales) != self.n:
                raise ValueError(f"skip_scales has {len(skip_scales)} values, model has {self.n} skips")
            self.rho = [float(v) for v in skip_scales]
        elif skip_tuning is not None:
            self.rho = skip_tuning_scales(self.n, float(skip_tuning[0]), float(skip_tuning[1]))
        else:
            self.rho = None
        # debugging / verification aid: if set to the list of encoder skip tensors (in
        # production order), every popped skip is checked to be that very tensor.
        self.expected_skips: list[torch.Tensor] | None = None
        self.log: list[tuple[int, int, int, int, str | None]] = []  # (block, resnet, j, C_h, freeu stage)

    def skip_index(self, block_idx: int, resnet_idx: int) -> int:
        return self.n - 1 - (self.offsets[block_idx] + resnet_idx)

    def freeu_params(self, block_idx: int, h: torch.Tensor) -> tuple[float, float] | None:
        f = self.freeu
        if f is None:
            return None
        if f.blocks == "stage":
            stage = block_idx
        else:
            c = h.shape[1]
            stage = 0 if c == 4 * self.c0 else (1 if c == 2 * self.c0 else None)
        if stage == 0:
            return f.b1, f.s1
        if stage == 1:
            return f.b2, f.s2
        return None

    def __call__(self, block_idx: int, resnet_idx: int, h: torch.Tensor, skip: torch.Tensor):
        j = self.skip_index(block_idx, resnet_idx)
        if self.expected_skips is not None:
            assert skip is self.expected_skips[j], f"skip index mismatch at up {block_idx}.{resnet_idx} (j={j})"
        # 1. Skip-Tuning
        if self.rho is not None:
            skip = skip * self.rho[j]
        # 2. FreeU
        params = self.freeu_params(block_idx, h)
        tag = None
        if params is not None:
            b, s = params
            tag = f"b={b},s={s}"
            h = backbone_scale(h, b, self.freeu.v2)
            skip = fourier_filter(skip, self.freeu.threshold, s)
        self.log.append((block_idx, resnet_idx, j, int(h.shape[1]), tag))
        return h, skip


# --------------------------------------------------------------------------------------
# Patched forwards: diffusers 0.42.1 code, FreeU removed, hook inserted before torch.cat
# --------------------------------------------------------------------------------------


def _identity_hook(block_idx, resnet_idx, h, skip):
    return h, skip


def _hook_of(block) -> tuple[Callable, int]:
    return getattr(block, "_booster_hook", _identity_hook), getattr(block, "_booster_idx", -1)


def up_block_2d_forward(
    self,
    hidden_states: torch.Tensor,
    res_hidden_states_tuple: tuple[torch.Tensor, ...],
    temb: torch.Tensor | None = None,
    upsample_size: int | None = None,
    *args,
    **kwargs,
) -> torch.Tensor:
    hook, block_idx = _hook_of(self)
    for resnet_idx, resnet in enumerate(self.resnets):
        # pop res hidden states
        res_hidden_states = res_hidden_states_tuple[-1]
        res_hidden_states_tuple = res_hidden_states_tuple[:-1]

        hidden_states, res_hidden_states = hook(block_idx, resnet_idx, hidden_states, res_hidden_states)
        hidden_states = torch.cat([hidden_states, res_hidden_states], dim=1)

        if torch.is_grad_enabled() and self.gradient_checkpointing:
            hidden_states = self._gradient_checkpointing_func(resnet, hidden_states, temb)
        else:
            hidden_states = resnet(hidden_states, temb)

    if self.upsamplers is not None:
        for upsampler in self.upsamplers:
            hidden_states = upsampler(hidden_states, upsample_size)

    return hidden_states


def cross_attn_up_block_2d_forward(
    self,
    hidden_states: torch.Tensor,
    res_hidden_states_tuple: tuple[torch.Tensor, ...],
    temb: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    cross_attention_kwargs: dict[str, Any] | None = None,
    upsample_size: int | None = None,
    attention_mask: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    hook, block_idx = _hook_of(self)
    for resnet_idx, (resnet, attn) in enumerate(zip(self.resnets, self.attentions)):
        # pop res hidden states
        res_hidden_states = res_hidden_states_tuple[-1]
        res_hidden_states_tuple = res_hidden_states_tuple[:-1]

        hidden_states, res_hidden_states = hook(block_idx, resnet_idx, hidden_states, res_hidden_states)
        hidden_states = torch.cat([hidden_states, res_hidden_states], dim=1)

        if torch.is_grad_enabled() and self.gradient_checkpointing:
            hidden_states = self._gradient_checkpointing_func(resnet, hidden_states, temb)
        else:
            hidden_states = resnet(hidden_states, temb)
        hidden_states = attn(
            hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            cross_attention_kwargs=cross_attention_kwargs,
            attention_mask=attention_mask,
            encoder_attention_mask=encoder_attention_mask,
            return_dict=False,
        )[0]

    if self.upsamplers is not None:
        for upsampler in self.upsamplers:
            hidden_states = upsampler(hidden_states, upsample_size)

    return hidden_states


def attn_up_block_2d_forward(
    self,
    hidden_states: torch.Tensor,
    res_hidden_states_tuple: tuple[torch.Tensor, ...],
    temb: torch.Tensor | None = None,
    upsample_size: int | None = None,
    *args,
    **kwargs,
) -> torch.Tensor:
    hook, block_idx = _hook_of(self)
    for resnet_idx, (resnet, attn) in enumerate(zip(self.resnets, self.attentions)):
        # pop res hidden states
        res_hidden_states = res_hidden_states_tuple[-1]
        res_hidden_states_tuple = res_hidden_states_tuple[:-1]

        hidden_states, res_hidden_states = hook(block_idx, resnet_idx, hidden_states, res_hidden_states)
        hidden_states = torch.cat([hidden_states, res_hidden_states], dim=1)

        if torch.is_grad_enabled() and self.gradient_checkpointing:
            hidden_states = self._gradient_checkpointing_func(resnet, hidden_states, temb)
            hidden_states = attn(hidden_states)
        else:
            hidden_states = resnet(hidden_states, temb)
            hidden_states = attn(hidden_states)

    if self.upsamplers is not None:
        for upsampler in self.upsamplers:
            if self.upsample_type == "resnet":
                hidden_states = upsampler(hidden_states, temb=temb)
            else:
                hidden_states = upsampler(hidden_states)

    return hidden_states


# exact type -> patched forward (subclasses are rejected: their forward may differ)
PATCHED_FORWARDS = {
    UpBlock2D: up_block_2d_forward,
    CrossAttnUpBlock2D: cross_attn_up_block_2d_forward,
    AttnUpBlock2D: attn_up_block_2d_forward,
}


@contextlib.contextmanager
def patched(unet: torch.nn.Module, hook: Callable):
    """Override forward of every up block of `unet` with the hooked copy."""
    blocks = list(unet.up_blocks)
    for blk in blocks:
        if type(blk) not in PATCHED_FORWARDS:
            raise TypeError(f"unsupported up block type {type(blk).__name__}")
    try:
        for i, blk in enumerate(blocks):
            blk.forward = types.MethodType(PATCHED_FORWARDS[type(blk)], blk)
            blk._booster_hook = hook
            blk._booster_idx = i
        yield hook
    finally:
        for blk in blocks:
            for attr in ("forward", "_booster_hook", "_booster_idx"):
                if attr in blk.__dict__:
                    del blk.__dict__[attr]


@contextlib.contextmanager
def boosted(
    unet: torch.nn.Module,
    freeu: FreeU | None = None,
    skip_tuning: tuple[float, float] | None = None,
    skip_scales: Sequence[float] | None = None,
    verify_indices: bool = False,
):
    """Run `unet` with Skip-Tuning / FreeU applied by the plain reference.

    verify_indices: also record the encoder's skip tensors (forward hooks on conv_in and
    the down blocks) and assert every popped skip is the tensor with the computed index j.
    """
    hook = BoosterHook(unet, freeu=freeu, skip_tuning=skip_tuning, skip_scales=skip_scales)
    handles = []
    if verify_indices:
        recorded: list[torch.Tensor] = []

        def on_conv_in(_m, _inp, out):
            recorded.clear()
            recorded.append(out)

        def on_down(_m, _inp, out):
            recorded.extend(out[1])

        handles.append(unet.conv_in.register_forward_hook(on_conv_in))
        for blk in unet.down_blocks:
            handles.append(blk.register_forward_hook(on_down))
        hook.expected_skips = recorded
    try:
        with patched(unet, hook):
            yield hook
    finally:
        for h in handles:
            h.remove()
