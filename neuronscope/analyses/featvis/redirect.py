"""Redirected ReLU: a gradient for units that are off everywhere at the start.

A unit behind a ReLU that is negative for the random starting image gets exactly zero gradient,
and plain activation maximization then returns the starting image: the flat grey pictures users
of Lucent report. Lucid's fix (Olah et al. 2017, used in its ``render``) is a ReLU whose backward
pass, *for an image where the ordinary ReLU gradient is zero everywhere*, lets through the
gradient components that would raise the pre-activation; once the unit is on, the ordinary
gradient takes over. It is only used for the first steps (the warm-up); the forward values are
the real ones throughout.

The swap is a :class:`torch.overrides.TorchFunctionMode`, so it covers ``nn.ReLU`` modules,
``F.relu`` and ``torch.relu`` calls and ``Tensor.relu`` methods alike (in-place forms included;
they return a new tensor while the mode is active), without touching the user's model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class _RedirectedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        ordinary = grad * (x > 0)
        # Of the blocked components keep those whose descent step raises x (grad of -objective < 0).
        redirected = torch.where((x <= 0) & (grad > 0), torch.zeros_like(grad), grad)
        if x.ndim == 0:
            return ordinary if bool(ordinary.ne(0).any()) else redirected
        alive = ordinary.reshape(ordinary.shape[0], -1).ne(0).any(1)
        alive = alive.reshape(-1, *([1] * (x.ndim - 1)))
        return torch.where(alive, ordinary, redirected)


_RELUS = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu_}


class RedirectedReLU(TorchFunctionMode):
    """While active, every ReLU call uses the redirected gradient."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELUS and args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
            return _RedirectedReLU.apply(args[0])
        return func(*args, **kwargs)
