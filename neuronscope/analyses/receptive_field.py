"""Which input pixels a spatial unit sees: empirical receptive fields and max-activating patches.

For a conv unit's response at position ``(y, x)`` of a layer, the interesting part of an input
is the patch that position "sees" (cs231n, "Understanding and Visualizing CNNs": showing the
image patches that excite a unit most). Textbook formulas (``r_l = r_{l-1} + (k_l - 1) * j_{l-1}``)
break on residual graphs, odd paddings and anything that is not a plain chain, so the field is
measured instead: it is the support of the gradient of that position's activation with respect to
the input, on the model seen as a *linear* network:

- every elementwise activation (ReLU, ReLU6/Hardtanh, LeakyReLU, PReLU, RReLU, ELU, SELU, CELU,
  GELU, SiLU, Mish, Hardswish, Hardsigmoid, Softplus, Tanh, Sigmoid, Threshold; modules,
  ``F.*`` functions, ``torch.*`` functions, ``Tensor`` methods, in-place forms and the
  ``aten`` ops an exported program calls) is the identity, so dead or saturated paths still
  count;
- every max-pool is the average pool with the same kernel, stride, padding and ceil_mode
  (``count_include_pad=True``), so inputs the max did not select still count. A dilated
  max-pool becomes the mean over the same dilated window (a depthwise convolution with a
  constant kernel), and adaptive max-pools become adaptive average pools. When the pool must
  return indices (``return_indices=True``, or an ``aten`` op that always does), the real
  max-pool's indices are returned beside the averaged values, for a later ``max_unpool``.

The model itself is never touched: the substitution is a :class:`torch.overrides.TorchFunctionMode`
active only while the probing forward pass runs, under ``subject.borrowed()`` (eval mode, frozen
parameters; only the input gets a gradient).

Choices worth knowing:

- The input is one seeded random raw input in the value range, the same for every batch element,
  so a position's field does not depend on which batch it was computed in. Once activations are
  identities the network up to the layer is affine and the gradient does not depend on the input
  at all; the input only matters for operations left alone (products, normalisations, softmax).
- The objective of position ``p`` is a seeded random positive weighting of the layer's channels
  at ``p`` (weights in [0.5, 1.5]), not their plain sum: channels that mirror each other
  (CReLU-style ``[h, -h]``) would cancel exactly in a plain sum.
- A pixel is in the support when ``sum_c |grad[c, i, j]| > 1e-12 * max``; the box is the support's
  bounding box, so holes (dilated kernels) are filled in.
- Examples in a batch are assumed not to interact (true in eval mode).
- Hand-written activations (``x.clamp(min=0)``, ``torch.where(x > 0, x, 0)``) and global max
  reductions (``x.amax(...)``) are left alone: there the real gradient is used.

Coordinates: a :class:`Box` is half-open, in input pixels, clipped to the image. For 1-D inputs
``(C, L)`` (or ``(L,)``) a box spans ``y0=0, y1=1`` and ``x0:x1`` along ``L``; positions of a
1-D layer ``(C, L)`` are ``(l,)``, ``l`` or ``(0, l)``.

References
----------
cs231n, "Understanding and Visualizing Convolutional Neural Networks"
(https://cs231n.github.io/understanding-cnn/).
Luo, Li, Urtasun, Zemel, "Understanding the Effective Receptive Field in Deep Convolutional
Neural Networks", NeurIPS 2016 (receptive fields measured as input-gradient support).
"""

from __future__ import annotations

import functools
import inspect
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..errors import InputShapeError, NeuronscopeError, UnitOutOfRangeError, UnsupportedError

#: A pixel belongs to the field when its gradient magnitude exceeds this fraction of the largest.
RELATIVE_TOLERANCE = 1e-12
SEED = 0


# --- boxes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """A half-open pixel box ``[y0, y1) x [x0, x1)`` in input coordinates, clipped to the image.

    A position that sees no input pixel at all (only padding) gets an empty box, ``area() == 0``.
    """

    y0: int
    x0: int
    y1: int
    x1: int

    def height(self) -> int:
        return max(0, self.y1 - self.y0)

    def width(self) -> int:
        return max(0, self.x1 - self.x0)

    def area(self) -> int:
        return self.height() * self.width()

    def clip(self, height: int, width: int) -> Box:
        return Box(min(max(self.y0, 0), height), min(max(self.x0, 0), width),
                   min(max(self.y1, 0), height), min(max(self.x1, 0), width))


EMPTY = Box(0, 0, 0, 0)


# --- the linearized model -------------------------------------------------------------------

_ACTIVATIONS = (
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "prelu",
    "_prelu_kernel", "rrelu", "rrelu_", "rrelu_with_noise", "rrelu_with_noise_", "elu", "elu_",
    "selu", "selu_", "celu", "celu_", "gelu", "gelu_", "silu", "silu_", "mish", "mish_",
    "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "softplus", "sigmoid", "sigmoid_",
    "tanh", "tanh_", "threshold", "threshold_", "_threshold",
)
# Where those names live. F.max_pool2d is a boolean_dispatch wrapper; it still is the object that
# reaches __torch_function__, because F._max_pool2d hands F.max_pool2d to handle_torch_function.
_NAMESPACES = (F, torch, torch._C._nn, torch.Tensor, torch.ops.aten)
_MAX_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_ADAPTIVE_ARGS = ("input", "output_size", "return_indices")


def _lookup(name: str) -> list:
    found = []
    for ns in _NAMESPACES:
        try:
            obj = getattr(ns, name)
        except (AttributeError, RuntimeError):
            continue
        found.append(obj)
    return found


def _rules() -> dict:
    rules: dict = {}
    for name in _ACTIVATIONS:
        for obj in _lookup(name):
            rules[obj] = ("identity", 0)
    for nd in (1, 2, 3):
        for name in (f"max_pool{nd}d", f"_max_pool{nd}d", f"max_pool{nd}d_with_indices"):
            for obj in _lookup(name):
                rules[obj] = ("max_pool", nd)
        for name in (f"adaptive_max_pool{nd}d", f"_adaptive_max_pool{nd}d", f"adaptive_max_pool{nd}d_with_indices"):
            for obj in _lookup(name):
                rules[obj] = ("adaptive_max_pool", nd)
    return rules


_RULES = _rules()


def _key(func):
    # An exported program calls aten OpOverloads (aten.relu.default): match their packet.
    return func.overloadpacket if isinstance(func, torch._ops.OpOverload) else func


def _name(func) -> str:
    return getattr(_key(func), "__name__", "")


@functools.lru_cache(maxsize=None)
def _signature(func) -> inspect.Signature | None:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):
        return None


def _in_place(func, args, kwargs) -> bool:
    name = _name(func)
    if name.endswith("_") and not name.endswith("__"):
        return True
    if "inplace" in kwargs:
        return bool(kwargs["inplace"])
    sig = _signature(func)
    if sig is None or "inplace" not in sig.parameters:
        return False
    try:
        return bool(sig.bind_partial(*args, **kwargs).arguments.get("inplace", False))
    except TypeError:
        return False


def _bind(names: Sequence[str], args, kwargs) -> dict:
    bound = dict(zip(names, args))
    for k, v in kwargs.items():
        bound["input" if k == "self" else k] = v
    return bound


def _ntuple(value, nd: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * nd
    value = tuple(int(v) for v in value)
    return value * nd if len(value) == 1 else value


def _identity(func, args, kwargs):
    x = args[0] if args else kwargs.get("input", kwargs.get("self"))
    # In place: the "activation" leaves the tensor as it is. Otherwise a fresh tensor, so that a
    # later in-place op on the result cannot write into the activation's input.
    return x if _in_place(func, args, kwargs) else x.clone()


def _window_mean(x, kernel, stride, padding, dilation, size):
    """The mean over each (dilated) window, zero padding counted, cut to the real pool's ``size``."""
    nd = len(kernel)
    lead, spatial = x.shape[:-nd], x.shape[-nd:]
    flat = x.reshape(-1, 1, *spatial)
    pad: list[int] = []
    for i in reversed(range(nd)):  # F.pad lists the last dimension first
        span = (size[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1
        pad += [padding[i], max(padding[i], span - spatial[i] - padding[i])]
    flat = F.pad(flat, pad)
    weight = torch.full((1, 1, *kernel), 1.0 / math.prod(kernel), dtype=x.dtype, device=x.device)
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    out = conv(flat, weight, stride=stride, dilation=dilation)
    out = out[(..., *(slice(0, n) for n in size))]
    return out.reshape(*lead, *size)


def _average_pool(func, nd: int, args, kwargs):
    p = _bind(_MAX_POOL_ARGS, args, kwargs)
    x = p["input"]
    with torch.no_grad():  # the real pool: its output size, and its indices when asked for
        real = func(*args, **kwargs)
    ref = real[0] if isinstance(real, (tuple, list)) else real
    kernel = _ntuple(p["kernel_size"], nd)
    stride = p.get("stride")
    stride = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _ntuple(stride, nd)
    padding = _ntuple(p.get("padding", 0), nd)
    dilation = _ntuple(p.get("dilation", 1), nd)
    out = None
    if all(d == 1 for d in dilation):
        avg = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
        out = avg(x, kernel, stride, padding, ceil_mode=bool(p.get("ceil_mode", False)), count_include_pad=True)
    if out is None or out.shape != ref.shape:
        out = _window_mean(x, kernel, stride, padding, dilation, tuple(ref.shape[-nd:]))
    return (out, real[1]) if isinstance(real, (tuple, list)) else out


def _adaptive_average_pool(func, nd: int, args, kwargs):
    p = _bind(_ADAPTIVE_ARGS, args, kwargs)
    with torch.no_grad():
        real = func(*args, **kwargs)
    avg = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[nd - 1]
    out = avg(p["input"], p["output_size"])
    return (out, real[1]) if isinstance(real, (tuple, list)) else out


class Linearized(TorchFunctionMode):
    """While active: elementwise activations are identities, max-pools are average pools.

    Covers modules and functional calls alike (``nn.ReLU`` calls ``F.relu``, ``nn.MaxPool2d``
    calls ``F.max_pool2d``). Nothing is copied or modified; leaving the context ends it.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            rule = _RULES.get(_key(func))
        except TypeError:  # an unhashable callable: not one of ours
            rule = None
        if rule is None:
            return func(*args, **kwargs)
        kind, nd = rule
        if kind == "identity":
            return _identity(func, args, kwargs)
        if kind == "max_pool":
            return _average_pool(func, nd, args, kwargs)
        return _adaptive_average_pool(func, nd, args, kwargs)


# --- receptive fields -----------------------------------------------------------------------

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # subject -> {(layer, pos): Box}


class _Stop(Exception):
    """Raised by a hook once the wanted layer has run: the rest of the model is not needed."""


def _layer_geometry(subject, layer: str):
    info = subject.layer(layer)
    shape = info.output_shape
    if shape is None:
        raise UnsupportedError(f"Layer {info.name!r} has no tensor output to take a receptive field of.")
    if len(shape) == 1:
        raise UnsupportedError(
            f"Layer {info.name!r} is dense (output {tuple(shape)}): it has no spatial positions, and "
            "a dense unit sees the whole input. Receptive fields need a conv-like layer (C, H, W) or (C, L)."
        )
    if len(shape) > 3:
        raise UnsupportedError(
            f"Layer {info.name!r} has {len(shape) - 1} spatial dimensions {tuple(shape[1:])}; receptive "
            "fields are computed for 1-D (C, L) and 2-D (C, H, W) layers."
        )
    if len(subject.input_shape) > 3:
        raise UnsupportedError(
            f"Inputs of shape {subject.input_shape} have more than two spatial dimensions; receptive "
            "fields are drawn on (C, H, W) images and (C, L) or (L,) sequences."
        )
    return info, tuple(shape[1:])


def _position(pos, spatial: tuple[int, ...], layer: str) -> tuple[int, ...]:
    if isinstance(pos, (int, np.integer)):
        pos = (int(pos),)
    try:
        pos = tuple(int(p) for p in pos)
    except TypeError:
        raise UnitOutOfRangeError(f"A position must be a tuple of ints like (y, x); got {pos!r}.") from None
    if len(spatial) == 1 and len(pos) == 2 and pos[0] == 0:
        pos = pos[1:]  # (0, l): the y=0 row of a 1-D layer, as boxes write it
    if len(pos) != len(spatial):
        form = "(y, x)" if len(spatial) == 2 else "(l,)"
        raise UnitOutOfRangeError(
            f"Layer {layer!r} has {len(spatial)} spatial dimension(s) {spatial}: positions are {form}, got {pos}."
        )
    for p, s, axis in zip(pos, spatial, "yx" if len(spatial) == 2 else "l"):
        if not 0 <= p < s:
            raise UnitOutOfRangeError(
                f"Position {pos} is outside layer {layer!r}'s {'x'.join(map(str, spatial))} grid: "
                f"{axis} must be in 0..{s - 1}."
            )
    return pos


def _support_box(grad: torch.Tensor, input_ndim: int) -> Box:
    """Bounding box of where one example's input gradient is not (numerically) zero."""
    g = grad.detach().abs().double()
    if input_ndim >= 2:
        g = g.sum(0)  # over input channels
    if g.ndim == 1:
        g = g[None]
    finite = torch.isfinite(g)
    top = float(g[finite].max()) if bool(finite.any()) else 0.0
    support = (g > RELATIVE_TOLERANCE * top) | ~finite
    if top == 0.0 and bool(finite.all()):
        return EMPTY
    rows = torch.nonzero(support.any(1)).flatten()
    cols = torch.nonzero(support.any(0)).flatten()
    if len(rows) == 0:
        return EMPTY
    return Box(int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def _compute(subject, info, positions: list[tuple[int, ...]]) -> list[Box]:
    n = len(positions)
    base = subject.sample_input(1, seed=SEED)
    x = base.expand(n, *base.shape[1:]).clone().requires_grad_(True)
    g = torch.Generator().manual_seed(SEED)
    weights = 0.5 + torch.rand(info.output_shape[0], generator=g)
    module = subject.model.get_submodule(info.module_name)
    with torch.enable_grad(), subject.borrowed(), subject.capture([info.name]) as cap:

        def stop(mod, inputs, output):
            try:
                cap[info.name]
            except NeuronscopeError:  # not recorded yet (an earlier call of a reused module)
                return
            raise _Stop

        # Registered after capture's hook, so it runs after the activation has been recorded.
        # A fixed-batch model is fed in chunks: there every chunk must run to the end.
        handle = module.register_forward_hook(stop) if subject.fixed_batch is None else None
        try:
            with Linearized():
                try:
                    subject.forward(x)
                except _Stop:
                    pass
                act = cap[info.name][:n]
        except NeuronscopeError:
            raise
        except Exception as e:
            raise UnsupportedError(
                f"Measuring receptive fields of layer {info.name!r} failed while the model ran with its "
                f"activations as identities and its max-pools as average pools: {type(e).__name__}: {e}"
            ) from e
        finally:
            if handle is not None:
                handle.remove()
        if not act.requires_grad or not act.is_floating_point():
            raise UnsupportedError(
                f"Layer {info.name!r}'s output does not depend differentiably on the input (it is "
                "computed without gradients, detached or not floating point): its receptive field "
                "cannot be measured."
            )
        index = torch.arange(n, device=act.device)
        at = [torch.tensor([p[i] for p in positions], device=act.device) for i in range(len(positions[0]))]
        picked = act[(index, slice(None), *at)]  # (n, C)
        objective = (picked * weights.to(picked)).sum()
        (grad,) = torch.autograd.grad(objective, x, allow_unused=True)
    if grad is None:
        return [EMPTY] * n
    return [_support_box(grad[i], len(subject.input_shape)) for i in range(n)]


def receptive_fields(subject, layer: str, positions: Sequence[tuple[int, int]], *, batch: int = 64) -> list[Box]:
    """The input box each spatial position of ``layer`` sees, measured on the linearized model.

    Parameters
    ----------
    subject : Subject
    layer : str
        A layer address whose output is ``(N, C, H, W)`` or ``(N, C, L)``.
    positions : sequence of (y, x)
        Spatial positions in the layer's output; for a 1-D layer ``(l,)``, ``l`` or ``(0, l)``.
    batch : int
        Positions measured per forward/backward pass: position ``p`` of a batch is read on
        batch element ``p``, all with one backward pass.

    Returns
    -------
    list of Box
        One per position, in order: the bounding box of the support of the gradient of the
        position's activation with respect to the input, with activations as identities and
        max-pools as average pools (see the module docstring). Cached per (subject, layer,
        position): after changing the model in place, make a new Subject.

    Raises
    ------
    UnsupportedError
        For a dense layer (a dense unit sees the whole input), layers or inputs with more than two
        spatial dimensions, and layers whose output does not depend differentiably on the input.
    """
    if int(batch) < 1:
        raise NeuronscopeError(f"batch must be a positive number of positions per pass; got {batch}.")
    info, spatial = _layer_geometry(subject, layer)
    wanted = [_position(p, spatial, info.name) for p in positions]
    cache = _CACHE.setdefault(subject, {})
    todo = list(dict.fromkeys(p for p in wanted if (info.name, p) not in cache))
    for start in range(0, len(todo), int(batch)):
        chunk = todo[start : start + int(batch)]
        for p, box in zip(chunk, _compute(subject, info, chunk)):
            cache[(info.name, p)] = box
    return [cache[(info.name, p)] for p in wanted]


def receptive_field(subject, layer: str, position) -> Box:
    """The box one spatial position of ``layer`` sees (see :func:`receptive_fields`)."""
    return receptive_fields(subject, layer, [position])[0]


# --- pictures -------------------------------------------------------------------------------


def patch(image: np.ndarray | torch.Tensor, box: Box, *, whole_image_above: float = 0.5) -> tuple[np.ndarray, Box | None]:
    """The part of a raw ``(C, H, W)`` (or ``(C, L)``) input that ``box`` covers.

    Returns ``(crop, None)``; or, when the box covers more than ``whole_image_above`` of the
    image area (a crop would be nearly the whole image anyway, and lose where the field lies),
    ``(whole image, box)``: the caller draws the box on it (:func:`draw_box`).
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise InputShapeError(
            f"patch takes one raw input of shape (C, H, W) or (C, L); got shape {image.shape}."
        )
    height, width = (image.shape[1], image.shape[2]) if image.ndim == 3 else (1, image.shape[1])
    clipped = box.clip(height, width)
    if clipped.area() > whole_image_above * height * width:
        return image, clipped
    if image.ndim == 3:
        return image[:, clipped.y0 : clipped.y1, clipped.x0 : clipped.x1], None
    return image[:, clipped.x0 : clipped.x1], None


def draw_box(img_hwc_uint8: np.ndarray, box: Box, colour=(255, 210, 0)) -> np.ndarray:
    """A copy of an ``(H, W, C)`` uint8 picture with ``box`` outlined, 1 pixel wide.

    The outline is the box's own border pixels (rows ``y0`` and ``y1 - 1``, columns ``x0`` and
    ``x1 - 1``), clipped to the picture. Grey pictures, ``(H, W)`` or ``(H, W, 1)``, come back as
    RGB; an alpha channel is set opaque on the outline.
    """
    img = np.asarray(img_hwc_uint8)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise InputShapeError(f"draw_box takes an (H, W, 3) or (H, W, 4) picture; got shape {img.shape}.")
    out = np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img.copy()
    out = out.astype(np.uint8, copy=False)
    b = box.clip(out.shape[0], out.shape[1])
    if b.area() == 0:
        return out
    colour = tuple(int(c) for c in colour)[:3]
    value = np.array(colour + ((255,) if out.shape[2] == 4 else ()), dtype=np.uint8)
    out[b.y0, b.x0 : b.x1] = value
    out[b.y1 - 1, b.x0 : b.x1] = value
    out[b.y0 : b.y1, b.x0] = value
    out[b.y0 : b.y1, b.x1 - 1] = value
    return out
