"""Redirected ReLU: a gradient for units that are off everywhere at the start.

A unit behind a ReLU that is negative for the random starting image gets exactly zero gradient,
and plain activation maximization then returns the starting image: the flat grey pictures users
of Lucent report. Lucid's fix (Olah et al. 2017, used in its ``render``) is a ReLU whose backward
pass, *for an image where the ordinary ReLU gradient is zero everywhere*, lets through the
gradient components that would raise the pre-activation; once the unit is on, the ordinary
gradient takes over. It is only used for the first steps (the warm-up); the forward values are
the real ones throughout.

The swap is a :class:`torch.overrides.TorchFunctionMode`, so it covers ``nn.ReLU`` modules,
``F.relu`` and ``torch.relu`` calls and ``Tensor.relu`` methods alike, in-place forms included
(they still rectify the caller's tensor), without touching the user's model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def _redirected_grad(grad: torch.Tensor, on: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``on`` marks where the input was positive; also says whether any image was blocked."""
    ordinary = grad * on
    if grad.ndim == 0:
        if bool(ordinary.ne(0)):
            return ordinary, False
        return torch.where(~on & (grad > 0), torch.zeros_like(grad), grad), True
    alive = ordinary.reshape(ordinary.shape[0], -1).ne(0).any(1)
    if bool(alive.all()):  # the usual case: nothing to redirect, one pass
        return ordinary, False
    dead = ~alive
    g = grad[dead]
    # Of the blocked components keep those whose descent step raises x (grad of -objective < 0).
    ordinary[dead] = torch.where(on[dead] | (g <= 0), g, torch.zeros_like(g))
    return ordinary, True


class _RedirectedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mode):
        on = x > 0
        ctx.mode = mode
        ctx.save_for_backward(on)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (on,) = ctx.saved_tensors
        g, redirected = _redirected_grad(grad, on)
        ctx.mode.blocked |= redirected
        return g, None


class _RedirectedReLUInPlace(_RedirectedReLU):
    """The in-place form: the caller's tensor is rectified, as the real ``relu_`` would; same backward."""

    @staticmethod
    def forward(ctx, x, mode):
        on = x > 0
        ctx.mode = mode
        ctx.mark_dirty(x)
        ctx.save_for_backward(on)
        return x.clamp_(min=0)


_RELUS = {F.relu, torch.relu, torch.Tensor.relu}
_RELUS_IN_PLACE = {torch.relu_, torch.Tensor.relu_, F.relu_}


class RedirectedReLU(TorchFunctionMode):
    """While active, every ReLU call uses the redirected gradient.

    After the backward pass, ``blocked`` says whether any image's gradient was blocked at some
    ReLU (and was redirected); when none was, the step equalled an ordinary one.
    """

    def __init__(self):
        super().__init__()
        self.blocked = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
            in_place = func in _RELUS_IN_PLACE or (func is F.relu and (kwargs.get("inplace") or args[1:2] == (True,)))
            if in_place:
                return _RedirectedReLUInPlace.apply(args[0], self)
            if func in _RELUS:
                return _RedirectedReLU.apply(args[0], self)
        return func(*args, **kwargs)
