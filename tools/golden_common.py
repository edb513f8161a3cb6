"""Helpers shared by the golden generators in tools/: where fixtures live, the parameter
perturbation every fixture model gets, loading a fixture model with diffusers, and the error and
size measures the generators report."""

import json
import os

import torch
from diffusers import UNet2DConditionModel, UNet2DModel

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO_ROOT, "tests", "fixtures")

NORM_TYPES = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d)


def perturb_(model: torch.nn.Module) -> None:
    """Move every parameter off its init value (deterministic given the RNG state)."""
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if isinstance(module, NORM_TYPES):
                    if name == "weight":
                        p.copy_(1.0 + 0.1 * torch.randn_like(p))
                    else:
                        p.copy_(0.1 * torch.randn_like(p))
                else:
                    p.add_(0.05 * torch.randn_like(p))
    # sanity: no zero biases, no all-ones norm weights
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert (p != 0).all(), f"zero in bias {name}"
        assert not torch.all(p == 1), f"param {name} is all ones"


def load_model(name):
    """The fixture model `tests/fixtures/<name>` in float32 with the default attention processor."""
    path = os.path.join(FIXTURES, name)
    with open(os.path.join(path, "config.json")) as f:
        cls_name = json.load(f)["_class_name"]
    cls = {"UNet2DConditionModel": UNet2DConditionModel, "UNet2DModel": UNet2DModel}[cls_name]
    model = cls.from_pretrained(path, torch_dtype=torch.float32)
    return model.to(torch.float32).eval()


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.double()
    b = b.double()
    return float((a - b).norm() / b.norm())


def dir_size(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
