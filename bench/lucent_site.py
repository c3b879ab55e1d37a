"""Import the real Lucent (torch-lucent 0.1.8, the library the issue compares with) for benchmarks.

Lucent is not a dependency of neuronscope: it pins ``kornia<=0.4.1`` and imports torchvision and
IPython. Install it beside the repository, outside the virtualenv, once:

    .venv/bin/python -m pip install --no-deps --target .bench-site torch-lucent==0.1.8 kornia==0.4.1 decorator

``import_lucent()`` puts ``.bench-site`` on the path and returns Lucent's ``render`` and ``param``
modules. Two things Lucent imports but never runs on the path the benchmarks take get stand-ins
when they cannot be imported: ``IPython.display`` (Lucent's notebook display) and, where
torchvision does not import beside this torch (the CPU wheel here), ``torchvision.transforms``
with a ``Normalize`` that computes ``(x - mean) / std`` as torchvision's does. Where torchvision
imports (the GPU machine), Lucent uses the real one.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

SITE = Path(__file__).resolve().parents[1] / ".bench-site"


class _Normalize:
    """torchvision.transforms.Normalize on a batch: ``(x - mean) / std`` per channel."""

    def __init__(self, mean, std):
        import torch
        self.mean = torch.as_tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.as_tensor(std, dtype=torch.float32)[:, None, None]

    def __call__(self, x):
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


def _stand_in(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def import_lucent():
    """``(lucent.optvis.render, lucent.optvis.param, notes)``; raises ImportError if Lucent is not installed."""
    notes = []
    if SITE.is_dir() and str(SITE) not in sys.path:
        sys.path.insert(0, str(SITE))
    if importlib.util.find_spec("lucent") is None:  # before any stand-in is put in sys.modules
        raise ImportError("torch-lucent is not installed: python -m pip install --no-deps --target .bench-site "
                          "torch-lucent==0.1.8 kornia==0.4.1 decorator")
    try:
        importlib.import_module("torchvision.transforms")
    except Exception:  # noqa: BLE001 - any failure to import means "use the stand-in"
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        tvt = _stand_in("torchvision.transforms", Normalize=_Normalize)
        _stand_in("torchvision", transforms=tvt)
        notes.append("torchvision does not import here: Lucent's Normalize is a stand-in computing (x - mean) / std")
    try:
        importlib.import_module("IPython.display")
    except ImportError:
        display = _stand_in("IPython.display")
        _stand_in("IPython", display=display)
        notes.append("IPython is not installed: its display module is an empty stand-in (never called here)")
    from lucent.optvis import param, render
    return render, param, notes


def clear_new_hooks(model, before: dict) -> int:
    """Remove the forward hooks added since ``before = hook_snapshot(model)``: Lucent's
    ``hook_model`` never removes its own, and a second render would otherwise run with two sets."""
    removed = 0
    for m in model.modules():
        keep = before.get(id(m), set())
        for key in [k for k in m._forward_hooks if k not in keep]:
            del m._forward_hooks[key]
            removed += 1
    return removed


def hook_snapshot(model) -> dict:
    return {id(m): set(m._forward_hooks) for m in model.modules()}


def render_channel(lucent, model, layer: str, c: int, steps: int, size: int, seed: int = 0):
    """One ``render_vis(model, f"{layer}:{c}")`` as a user would call it, at the model's own image size
    (``fixed_image_size``; Lucent's default upsamples anything under 224 px to 224), without display
    or progress bar. ``lucent`` is what :func:`import_lucent` returned; ``layer`` uses Lucent's
    names (dots become underscores). Lucent's hooks, and the weight gradients it leaves behind
    (it keeps the weights trainable), are removed afterwards: left in place, every later render
    would run with one more set of hooks."""
    import torch

    render_mod, param_mod, _ = lucent

    def run():
        torch.manual_seed(seed + c)
        before = hook_snapshot(model)
        try:
            return render_mod.render_vis(model, f"{layer.replace('.', '_')}:{c}", param_f=lambda: param_mod.image(size),
                                         thresholds=(steps,), fixed_image_size=size, show_image=False, progress=False)
        finally:
            clear_new_hooks(model, before)
            for p in model.parameters():
                p.grad = None
    return run
