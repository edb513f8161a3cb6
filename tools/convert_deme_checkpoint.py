#!/usr/bin/env python3
"""Convert a DeMe checkpoint (Ma et al. 2024, "Decouple-Then-Merge") to a diffusers model folder.

How to run (from the repo root):

    python tools/convert_deme_checkpoint.py merged_models/diffusion_pytorch_model.bin OUT_DIR
    python tools/convert_deme_checkpoint.py unet_ema_lora/diffusion_pytorch_model.bin OUT_DIR \\
        --config ddpm-ema-church-256/unet/config.json

IN is either
  * the merged model written by DeMe's `merge.py` (`torch.save(model)`: a whole pickled
    `UNet2DModel` with the `adapter_list` ModuleList added by `add_adapters()`), or
  * a state dict (`torch.save(unet.state_dict())`, as DeMe's training script writes
    `unet_ema_lora/diffusion_pytorch_model.bin`).

OUT_DIR receives
  * `diffusion_pytorch_model.safetensors`: every tensor of the state dict (contiguous, dtype as
    stored), including DeMe's `adapter_list.{k}.weight` projections as extra entries;
  * `config.json`: the pickled module's diffusers config (`.config`), or the file given with
    `--config` (required for a bare state dict; it overrides the module's config otherwise).

Notes.
  * A pickled module is loaded with `torch.load(weights_only=False)`, which executes pickle
    code: only convert files you trust. DeMe pickled its model with its own fork of diffusers
    0.15 (classes such as `diffusers.models.unet_2d.UNet2DModel` and
    `diffusers.models.attention.AttentionBlock` that current diffusers no longer has). Classes
    that cannot be imported are replaced, while unpickling, by empty `torch.nn.Module`
    stand-ins, which is all `.state_dict()` needs.
  * Tensor names are kept as stored. A model pickled by diffusers 0.15 has the old attention
    names (`attentions.N.query/key/value/proj_attn`); current diffusers' `from_pretrained`
    renames those on load, and so does freelunch.
  * `mid_adapt_layer.*` (a distillation head that DeMe's training may add; its forward never
    uses it) is dropped, with a note.
"""

import argparse
import json
import os
import pickle
import sys

import torch
from safetensors.torch import save_file

DROP_PREFIXES = ("mid_adapt_layer.",)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

_STUBS = {}


def _stub_class(module: str, name: str):
    """An empty nn.Module subclass standing in for a class that cannot be imported."""
    key = (module, name)
    if key not in _STUBS:

        def forward(self, *args, **kwargs):
            raise RuntimeError(f"stand-in for {module}.{name}: not runnable")

        _STUBS[key] = type(name, (torch.nn.Module,), {"__module__": module, "forward": forward})
    return _STUBS[key]


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            print(f"note: {module}.{name} is not importable here; using a stand-in nn.Module", file=sys.stderr)
            return _stub_class(module, name)


class _TolerantPickleModule:
    """What torch.load needs from a `pickle_module`."""

    Unpickler = _TolerantUnpickler
    UnpicklingError = pickle.UnpicklingError
    __name__ = "convert_deme_checkpoint_pickle"

    @staticmethod
    def load(f, **kwargs):
        return _TolerantUnpickler(f, **kwargs).load()


def load_checkpoint(path: str):
    """The object stored in `path`: a state dict is tried with weights_only=True first."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a plain state dict: a pickled module
        print(f"note: weights_only load failed ({type(e).__name__}); loading the pickled object "
              f"with weights_only=False", file=sys.stderr)
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_TolerantPickleModule)


def module_config(module: torch.nn.Module):
    """The diffusers config of a (possibly stand-in) module, as a plain dict, or None."""
    cfg = module.__dict__.get("_internal_dict")
    if cfg is None:
        try:
            cfg = getattr(module, "config", None)
        except Exception:
            cfg = None
    if cfg is None:
        return None
    cfg = dict(cfg)
    out = {
        "_class_name": cfg.get("_class_name", type(module).__name__),
        "_diffusers_version": cfg.get("_diffusers_version"),
    }
    if out["_diffusers_version"] is None:
        del out["_diffusers_version"]
    for k, v in cfg.items():
        if not k.startswith("_"):
            out[k] = list(v) if isinstance(v, tuple) else v
    return out


def extract(obj):
    """(state dict of tensors, config dict or None) from whatever torch.load returned."""
    config = None
    if isinstance(obj, torch.nn.Module):
        config = module_config(obj)
        sd = obj.state_dict()
    elif isinstance(obj, dict):
        if "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        sd = obj
    else:
        raise SystemExit(f"error: unsupported checkpoint content {type(obj).__name__}")
    tensors = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            print(f"note: skipping non-tensor entry {k} ({type(v).__name__})", file=sys.stderr)
            continue
        if k.startswith(DROP_PREFIXES):
            print(f"note: dropping {k} (training-only, unused by the forward)", file=sys.stderr)
            continue
        # clone: safetensors refuses tensors that share storage
        tensors[k] = v.detach().to("cpu").clone().contiguous()
    if not tensors:
        raise SystemExit("error: no tensors in the checkpoint")
    return tensors, config


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", metavar="IN", help="DeMe checkpoint (.bin/.pt/.pth)")
    ap.add_argument("out_dir", metavar="OUT_DIR", help="diffusers model folder to write")
    ap.add_argument("--config", help="diffusers config.json (required for a bare state dict)")
    args = ap.parse_args(argv)

    tensors, config = extract(load_checkpoint(args.input))
    if args.config:
        with open(args.config) as f:
            config = json.load(f)
        if not isinstance(config, dict):
            raise SystemExit(f"error: {args.config} is not a JSON object")
    if config is None:
        raise SystemExit("error: the checkpoint carries no config (a state dict?): pass --config path/to/config.json")

    os.makedirs(args.out_dir, exist_ok=True)
    save_file(tensors, os.path.join(args.out_dir, WEIGHTS_NAME), metadata={"format": "pt"})
    with open(os.path.join(args.out_dir, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")

    adapters = sorted((k for k in tensors if k.startswith("adapter_list.")), key=lambda k: int(k.split(".")[1]))
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in tensors.values()})
    print(f"wrote {args.out_dir}: {len(tensors)} tensors ({', '.join(dtypes)}), "
          f"{len(adapters)} DeMe adapters"
          + (f" (channels {[tensors[k].shape[0] for k in adapters]})" if adapters else ""))
    if not adapters:
        print("note: no adapter_list.* tensors: a plain UNet2DModel", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
