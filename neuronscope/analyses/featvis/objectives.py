"""Objectives: what "wants most" means. Higher is better; the optimizer minimises ``-objective``.

The kinds follow Lucid ("Feature Visualization", Olah et al. 2017): a **neuron** (one spatial
position of a channel), a **channel** (its mean over positions), a **layer** (DeepDream's mean
square), a **direction** in a layer's space (mean dot product, optionally times the cosine to a
power, which favours images that point *along* the direction rather than just far), a **class**
logit or log-probability, and **diversity** (minus the cosine similarity between the Gram matrices
of images rendered for the same objective).

Objectives are **vectorized**: ``channel("conv3", range(16))`` is 16 objectives that become one
batch of 16 images optimized together, image ``b`` scored against target ``ctx.target[b]``.
They compose with ``+``, ``-`` and scalars; a single objective (``n == 1``) broadcasts over a
vectorized one. Each call returns one value per image, ``(B,)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...errors import OptionError


@dataclass
class Context:
    """What an objective sees after one forward pass."""

    acts: dict[str, torch.Tensor]  # layer address -> (B, C, ...) activations
    output: torch.Tensor | None  # (B, K) logits, when an objective needs the output
    target: torch.Tensor  # (B,) which of the objective's targets each image serves
    group: torch.Tensor  # (B,) images with the same group id are one diverse set
    output_kind: str = "logits"  # "logits" or "probabilities" (a softmax inside forward)
    # layer address -> (B, ...) each image's own channel, when the pass computed only those
    # (see ``tap.Tap``); such a layer is not in ``acts``
    picked: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective:
    """Base class: ``n`` targets, the ``layers`` it reads, and whether it needs the model output."""

    n: int = 1
    layers: frozenset[str] = frozenset()
    needs_output: bool = False
    kind: str = "objective"
    description: str = ""

    def __call__(self, ctx: Context) -> torch.Tensor:
        raise NotImplementedError

    def channels_read(self, layer: str) -> torch.Tensor | None:
        """The one channel of ``layer`` each target reads, ``(n,)`` (or ``(1,)`` for all), when that
        is all this objective reads there; None when it reads more (or nothing) of it."""
        return None

    def __add__(self, other):
        return Sum([self, _as_objective(other)])

    __radd__ = __add__

    def __sub__(self, other):
        return Sum([self, Scaled(_as_objective(other), -1.0)])

    def __rsub__(self, other):
        return Sum([_as_objective(other), Scaled(self, -1.0)])

    def __neg__(self):
        return Scaled(self, -1.0)

    def __mul__(self, k):
        if not isinstance(k, (int, float)):
            return NotImplemented
        return Scaled(self, float(k))

    __rmul__ = __mul__

    def __truediv__(self, k):
        return Scaled(self, 1.0 / float(k))

    def __repr__(self):
        return self.description or type(self).__name__


def _as_objective(x) -> Objective:
    if isinstance(x, Objective):
        return x
    if isinstance(x, (int, float)):
        return Constant(float(x))
    raise TypeError(f"cannot combine an objective with {type(x).__name__}")


def _pick(values: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``values`` is per target ``(n,)``; return each image's ``(B,)``."""
    return values[target] if values.numel() > 1 else values.expand(target.shape[0])


class Constant(Objective):
    def __init__(self, value: float):
        self.value, self.description = value, f"{value:g}"

    def __call__(self, ctx):
        return torch.full((ctx.target.shape[0],), self.value, device=ctx.target.device)


class Sum(Objective):
    def __init__(self, parts: Sequence[Objective]):
        flat = []
        for p in parts:
            flat.extend(p.parts if isinstance(p, Sum) else [p])
        sizes = {p.n for p in flat if p.n > 1}
        if len(sizes) > 1:
            raise OptionError(f"cannot add vectorized objectives of different sizes {sorted(sizes)}")
        self.parts = flat
        self.n = sizes.pop() if sizes else 1
        self.layers = frozenset().union(*(p.layers for p in flat))
        self.needs_output = any(p.needs_output for p in flat)
        self.kind = flat[0].kind if len({p.kind for p in flat}) == 1 else "sum"
        self.description = " + ".join(repr(p) for p in flat)

    def __call__(self, ctx):
        return sum(p(ctx) for p in self.parts)

    def channels_read(self, layer):
        reads = [p.channels_read(layer) for p in self.parts if layer in p.layers]
        if not reads or any(r is None or not torch.equal(r, reads[0]) for r in reads):
            return None
        return reads[0]


class Scaled(Objective):
    def __init__(self, inner: Objective, k: float):
        self.inner, self.k = inner, k
        self.n, self.layers, self.needs_output = inner.n, inner.layers, inner.needs_output
        self.kind = inner.kind
        self.description = f"-({inner!r})" if k == -1 else f"{k:g}*({inner!r})"

    def __call__(self, ctx):
        return self.k * self.inner(ctx)

    def channels_read(self, layer):
        return self.inner.channels_read(layer)


def _on(obj, name: str, device, dtype=None) -> torch.Tensor:
    """``obj.<name>`` on ``device`` (and ``dtype``), moved once and kept: a copy from the host in
    every step would make an accelerator wait for it, and a CUDA graph cannot hold one."""
    cache = obj.__dict__.setdefault("_moved", {})
    key = (name, str(device), dtype)
    if key not in cache:
        t = getattr(obj, name)
        cache[key] = t.to(device=device, dtype=dtype if dtype is not None else t.dtype)
    return cache[key]


def _indices(x) -> torch.Tensor:
    if isinstance(x, int):
        return torch.tensor([x])
    return torch.as_tensor(list(x), dtype=torch.long)


def _own_channel(obj, ctx: Context) -> torch.Tensor:
    """``(B, ...)``: the channel of ``obj.layer`` each image serves, picked by the pass or here."""
    if obj.layer in ctx.picked:
        return ctx.picked[obj.layer]
    a = ctx.acts[obj.layer]
    c = _pick(_on(obj, "channels", a.device), ctx.target)
    return a[torch.arange(a.shape[0], device=a.device), c]


class Channel(Objective):
    """Mean activation of channel ``c`` over all positions (a dense unit for vector layers)."""

    kind = "channel"

    def __init__(self, layer: str, channels):
        self.layer = str(layer)
        self.channels = _indices(channels)
        self.n = len(self.channels)
        self.layers = frozenset([self.layer])
        self.description = f"channel {self.layer}:{self.channels.tolist() if self.n > 1 else int(self.channels[0])}"

    def channels_read(self, layer):
        return self.channels if layer == self.layer else None

    def __call__(self, ctx):
        own = _own_channel(self, ctx)
        return own.reshape(own.shape[0], -1).mean(1)


class Neuron(Objective):
    """One spatial position of a channel (the centre when no position is given).

    ``position`` is one ``(y, x)`` for every channel, or a list with one per channel, so neurons
    at different places of one layer still render as one batch.
    """

    kind = "neuron"

    def __init__(self, layer: str, channels, position=None):
        self.layer = str(layer)
        self.channels = _indices(channels)
        self.n = len(self.channels)
        per_target = position is not None and len(position) > 0 and hasattr(position[0], "__len__")
        if per_target and len(position) != self.n:
            raise OptionError(f"{len(position)} positions given for {self.n} channels: give one, or one per channel.")
        self.positions = torch.as_tensor([tuple(p) for p in position], dtype=torch.long) if per_target else None
        self.position = None if per_target or position is None else tuple(position)
        if self.positions is not None:
            where = "@" + ";".join(",".join(map(str, p)) for p in self.positions.tolist())
        else:
            where = "@" + ",".join(map(str, self.position)) if self.position else " (centre)"
        self.layers = frozenset([self.layer])
        self.description = f"neuron {self.layer}:{self.channels.tolist() if self.n > 1 else int(self.channels[0])}{where}"

    def channels_read(self, layer):
        return self.channels if layer == self.layer else None

    def __call__(self, ctx):
        picked = _own_channel(self, ctx)  # (B, *spatial)
        rows = torch.arange(picked.shape[0], device=picked.device)
        if picked.ndim == 1:
            return picked
        if self.positions is not None:
            pos = _on(self, "positions", picked.device)[ctx.target]  # (B, ndim)
            return picked[(rows, *pos.unbind(1))]
        pos = self.position or tuple(s // 2 for s in picked.shape[1:])
        return picked[(slice(None), *pos)]


class LayerL2(Objective):
    """DeepDream: the mean square of the whole layer (everything it reacts to, amplified)."""

    kind = "layer"

    def __init__(self, layer: str):
        self.layer = str(layer)
        self.layers = frozenset([self.layer])
        self.description = f"layer {self.layer} (DeepDream)"

    def __call__(self, ctx):
        a = ctx.acts[self.layer]
        return a.reshape(a.shape[0], -1).pow(2).mean(1)


class Direction(Objective):
    """Mean dot product of the activation vector with a direction, at every position.

    ``vectors`` is ``(n, C)`` (n directions, vectorized) or ``(C,)``. With ``cosine_power > 0``
    the dot product is multiplied by ``max(cos, 0.1) ** cosine_power`` (Lucid's
    ``direction_cossim``): images then point along the direction instead of merely far.
    """

    kind = "direction"

    def __init__(self, layer: str, vectors, *, cosine_power: float = 0.0, names: Sequence[str] | None = None):
        self.layer = str(layer)
        v = torch.as_tensor(vectors, dtype=torch.float32)
        self.vectors = v[None] if v.ndim == 1 else v
        self.n = self.vectors.shape[0]
        self.cosine_power = float(cosine_power)
        self.layers = frozenset([self.layer])
        self.description = f"direction in {self.layer}" + (f" ({', '.join(names)})" if names else "")

    def __call__(self, ctx):
        a = ctx.acts[self.layer]
        b = a.shape[0]
        v = _on(self, "vectors", a.device, a.dtype)
        if v.shape[1] != a.shape[1]:
            raise OptionError(f"direction has {v.shape[1]} components but layer {self.layer!r} has {a.shape[1]} channels")
        v = v[ctx.target] if self.n > 1 else v.expand(b, -1)
        flat = a.reshape(b, a.shape[1], -1)  # (B, C, P)
        dot = torch.einsum("bcp,bc->bp", flat, v)
        if self.cosine_power:
            cos = dot / (flat.norm(dim=1) * v.norm(dim=1, keepdim=True) + 1e-8)
            dot = dot * cos.clamp(min=0.1) ** self.cosine_power
        return dot.mean(1)


class ClassLogit(Objective):
    """The logit of class ``k`` (before any final softmax)."""

    kind = "class"

    def __init__(self, classes, names: Sequence[str] | None = None):
        self.classes = _indices(classes)
        self.n = len(self.classes)
        self.needs_output = True
        self.names = list(names) if names else None
        self.description = "logit of class " + ", ".join(self.names or map(str, self.classes.tolist()))

    def _column(self, z, ctx):
        k = _pick(_on(self, "classes", z.device), ctx.target)
        if z.shape[1] == 1:  # one-logit binary model: class 1 is z, class 0 is -z
            return torch.where(k == 1, z[:, 0], -z[:, 0])
        return z[torch.arange(z.shape[0], device=z.device), k]

    def __call__(self, ctx):
        z = ctx.output.reshape(ctx.output.shape[0], -1)
        if ctx.output_kind == "probabilities":
            return self._column(torch.log(z.clamp_min(1e-12)), ctx)
        return self._column(z, ctx)


class ClassLogProb(ClassLogit):
    """The log-probability of class ``k``: raising it must also lower the other classes."""

    def __init__(self, classes, names=None):
        super().__init__(classes, names)
        self.description = "log-probability of class " + ", ".join(self.names or map(str, self.classes.tolist()))

    def __call__(self, ctx):
        z = ctx.output.reshape(ctx.output.shape[0], -1)
        if ctx.output_kind == "probabilities":
            return self._column(torch.log(z.clamp_min(1e-12)), ctx)
        if z.shape[1] == 1:
            logp = torch.cat([F.logsigmoid(-z), F.logsigmoid(z)], 1)
            k = _pick(_on(self, "classes", z.device), ctx.target)
            return logp[torch.arange(z.shape[0], device=z.device), k]
        return self._column(F.log_softmax(z, 1), ctx)


class Diversity(Objective):
    """Minus the mean cosine similarity of an image's Gram matrix to the others in its set.

    The Gram matrix of a layer's activations describes its "style" regardless of where things
    are; pushing the Grams of a diverse set apart gives different *kinds* of input, not shifts of
    one (Olah et al. 2017, section "Diversity"). Images alone in their set score 0.
    """

    kind = "diversity"

    def __init__(self, layer: str):
        self.layer = str(layer)
        self.layers = frozenset([self.layer])
        self.description = f"diversity in {self.layer}"

    def __call__(self, ctx):
        a = ctx.acts[self.layer]
        b, c = a.shape[:2]
        flat = a.reshape(b, c, -1)
        gram = torch.bmm(flat, flat.transpose(1, 2)).reshape(b, -1)
        gram = F.normalize(gram, dim=1)
        sim = gram @ gram.T
        same = (ctx.group[:, None] == ctx.group[None, :]).to(sim.dtype)
        same.fill_diagonal_(0)
        count = same.sum(1).clamp(min=1)
        return -(sim * same).sum(1) / count


class Mix(Objective):
    """``(1 - alpha) * a + alpha * b`` with one ``alpha`` per target: an interpolation path."""

    kind = "interpolation"

    def __init__(self, a: Objective, b: Objective, alphas):
        if a.n != 1 or b.n != 1:
            raise OptionError("interpolate between two single objectives")
        self.a, self.b = a, b
        self.alphas = torch.as_tensor(list(alphas), dtype=torch.float32)
        self.n = len(self.alphas)
        self.layers = a.layers | b.layers
        self.needs_output = a.needs_output or b.needs_output
        self.description = f"from {a!r} to {b!r}"

    def channels_read(self, layer):
        return Sum([self.a, self.b]).channels_read(layer)

    def __call__(self, ctx):
        alpha = _on(self, "alphas", ctx.target.device)[ctx.target]
        return (1 - alpha) * self.a(ctx) + alpha * self.b(ctx)


# ---------------------------------------------------------------------------- short constructors
def channel(layer: str, channels) -> Channel:
    return Channel(layer, channels)


def neuron(layer: str, channels, position=None) -> Neuron:
    return Neuron(layer, channels, position)


def layer(layer: str) -> LayerL2:
    return LayerL2(layer)


def direction(layer: str, vectors, *, cosine_power: float = 0.0, names=None) -> Direction:
    return Direction(layer, vectors, cosine_power=cosine_power, names=names)


def class_logit(classes, names=None) -> ClassLogit:
    return ClassLogit(classes, names)


def class_logprob(classes, names=None) -> ClassLogProb:
    return ClassLogProb(classes, names)


def diversity(layer: str) -> Diversity:
    return Diversity(layer)


def interpolate(a: Objective, b: Objective, frames: int = 6) -> Mix:
    return Mix(a, b, torch.linspace(0, 1, frames).tolist())
