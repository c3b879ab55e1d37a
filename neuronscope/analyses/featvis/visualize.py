"""``visualize``: what input each unit, direction or class wants most, with the evidence beside it.

One call renders, for every target (the units of a layer, one unit, one spatial neuron, a
direction, a class), in one batched optimization each:

- the **positive** visualization from ``seeds`` random starts (their agreement is measured),
- optionally the **negative** one (what lowers the unit most),
- optionally a **diverse** set (Gram-matrix diversity within the set),

and the numbers that justify the pictures (:mod:`.evidence`): the score reached, its ratio to the
largest real score, reachability and seed consistency. The result saves into a
:class:`~neuronscope.store.Store` like every other analysis and renders on the unit pages.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ...errors import NeuronscopeError, UnitOutOfRangeError, did_you_mean
from ...imaging import input_rgb, tile_grid, upscale_nearest
from ...subject import Subject
from ...units import Unit, parse_unit, slug
from . import objectives as O
from .evidence import _pairwise_mean, real_maxima_from_data, real_maxima_from_store, seed_consistency, unit_scores
from .param import IMAGENET_COLOUR, PixelParam, colour_matrix, magnitude_spectrum
from .render import Rendering, render
from ...notebook import NotebookMixin


@dataclass
class Target:
    """One thing to visualize: its address, the single objective, and where its layer is."""

    address: str
    layer: str | None  # None for classes
    index: int | None  # channel / class index
    kind: str  # "channel", "neuron", "direction", "class"


@dataclass
class TargetResult:
    target: Target
    images: np.ndarray  # (seeds, C, H, W) raw, best first
    values: np.ndarray  # (seeds,) objective on each
    reachable: bool
    reached: float | None = None  # score on the best image with the examples pass's reduction
    real_max: float | None = None
    consistency: dict = field(default_factory=dict)
    negative: np.ndarray | None = None  # (1, C, H, W)
    negative_value: float | None = None
    negative_layer: str | None = None  # where the negative was read (before a ReLU)
    start: str = "noise"  # "random input": restarted from the random inputs that turn it on most
    turned_on_by: str | None = None  # when the optimizer failed: "data" or "random inputs" still turn it on
    diverse: np.ndarray | None = None  # (M, C, H, W)
    diverse_values: np.ndarray | None = None

    @property
    def ratio(self) -> float | None:
        if self.reached is None or not self.real_max or self.real_max <= 0:
            return None
        return self.reached / self.real_max


@dataclass
class Visualization(NotebookMixin):
    """Everything ``visualize`` rendered; a Store section (tables, images, summary)."""

    results: list[TargetResult]
    value_range: tuple[float, float]
    options: dict
    reduce: str = "max"
    seconds: float = 0.0

    def __getitem__(self, address: str) -> TargetResult:
        for r in self.results:
            if r.target.address == address:
                return r
        raise KeyError(did_you_mean(address, [r.target.address for r in self.results], "target"))

    def __iter__(self):
        return iter(self.results)

    def __len__(self):
        return len(self.results)

    # --- pictures -------------------------------------------------------------------------
    def _pic(self, x: np.ndarray, size: int = 96) -> np.ndarray:
        rgb = input_rgb(x, self.value_range)
        return upscale_nearest(rgb, max(1, size // max(rgb.shape[:2])))

    def strip(self, images: np.ndarray) -> np.ndarray:
        return tile_grid(np.stack([self._pic(x) for x in images]), ncols=len(images), pad=2)

    def grid(self) -> np.ndarray:
        """The best positive image of every target (unreachable ones left blank)."""
        tiles = []
        for r in self.results:
            p = self._pic(r.images[0])
            tiles.append(p if r.reachable else np.full_like(p, 235))
        return tile_grid(np.stack(tiles), pad=2)

    def _repr_png_(self):  # notebooks show the grid
        from ...imaging import png_bytes

        return png_bytes(self.grid())

    # --- Store protocol -------------------------------------------------------------------
    def tables(self) -> dict[str, dict[str, list]]:
        cols = ("address", "layer", "index", "kind", "value", "value_mean", "reachable", "reached", "real_max",
                "ratio", "seed_features", "seed_pixels", "negative_value", "negative_layer", "diverse_similarity",
                "turned_on_by", "start", "diverse_min_share")
        t: dict[str, list] = {c: [] for c in cols}
        for r in self.results:
            tg = r.target
            t["address"].append(tg.address)
            t["layer"].append(tg.layer)
            t["index"].append(tg.index)
            t["kind"].append(tg.kind)
            t["value"].append(float(r.values[0]))
            t["value_mean"].append(float(r.values.mean()))
            t["reachable"].append(bool(r.reachable))
            t["reached"].append(r.reached)
            t["real_max"].append(r.real_max)
            t["ratio"].append(r.ratio)
            t["seed_features"].append(_nan_none(r.consistency.get("features")))
            t["seed_pixels"].append(_nan_none(r.consistency.get("pixels")))
            t["negative_value"].append(r.negative_value)
            t["negative_layer"].append(r.negative_layer)
            t["turned_on_by"].append(r.turned_on_by)
            t["start"].append(r.start)
            t["diverse_min_share"].append(
                float(r.diverse_values.min() / r.values[0]) if r.diverse_values is not None and r.values[0] > 0 else None)
            t["diverse_similarity"].append(_nan_none(r.consistency.get("diverse_features")))
        return {"targets": t}

    def images(self) -> dict[str, np.ndarray]:
        out = {}
        groups: dict[str, list[TargetResult]] = {}
        for r in self.results:
            name = picture_name(r.target)
            out[f"{name}-pos"] = self.strip(r.images) if r.reachable else None
            if r.negative is not None:
                out[f"{name}-neg"] = self.strip(r.negative)
            if r.diverse is not None:
                out[f"{name}-div"] = self.strip(r.diverse)
            group = "classes" if r.target.layer is None else slug(r.target.layer) + {"neuron": "-neurons", "direction": "-directions"}.get(r.target.kind, "")
            groups.setdefault(group, []).append(r)
        for group, rs in groups.items():
            out[f"{group}/grid"] = Visualization(rs, self.value_range, self.options).grid()
        return {k: v for k, v in out.items() if v is not None}

    def summary(self) -> dict:
        findings = []
        for r in self.results:
            if not r.reachable and r.turned_on_by:
                findings.append(f"{r.target.address}: the optimizer did not turn it on, although {r.turned_on_by} do; "
                                "no picture (rerun it with more steps or another seed).")
            elif not r.reachable:
                findings.append(f"{r.target.address} is unreachable: it stayed at or below zero after the redirected "
                                "warm-up, and no real or random input turns it on (no picture).")
            elif r.ratio is not None and r.ratio > 3:
                findings.append(f"{r.target.address}: the visualization reaches {r.ratio:.1f}x the unit's largest "
                                "real activation: it shows the unit's mode, far from any real input.")
        layers = sorted({r.target.layer for r in self.results if r.target.layer})
        return {"targets": [r.target.address for r in self.results], "layers": layers, "options": self.options,
                "reduce": self.reduce, "findings": findings[:20], "seconds": self.seconds,
                "unreachable": [r.target.address for r in self.results if not r.reachable and not r.turned_on_by],
                "not_reached": [r.target.address for r in self.results if not r.reachable and r.turned_on_by]}


def write_pictures(vis: Visualization, out, *, grids: bool = True) -> list[str]:
    """Write ``vis.images()`` as PNG files under ``out`` (atomically); returns their names."""
    from pathlib import Path

    from ...atomic import atomic_write
    from ...imaging import png_bytes

    names = []
    for name, picture in vis.images().items():
        if grids or not name.endswith("/grid"):
            atomic_write(Path(out) / f"{name}.png", png_bytes(picture))
            names.append(name)
    return names


def visualize_to(subject: Subject, *args, out, **kwargs) -> Visualization:
    """:func:`visualize`, its pictures written to ``out`` where it runs (a Ray task writes its own)
    and left out of the answer: the evidence comes back, the image arrays do not (a Microscope-
    sized render would otherwise gather every image in one process). No per-call grid is written."""
    import dataclasses

    vis = visualize(subject, *args, **kwargs)
    write_pictures(vis, out, grids=False)
    light = [dataclasses.replace(r, images=r.images[:0], negative=None, diverse=None) for r in vis.results]
    return dataclasses.replace(vis, results=light)


def picture_name(target: Target) -> str:
    if target.kind == "class":
        return f"classes/{target.index}"
    if target.kind == "neuron":
        return f"{slug(target.layer)}/{target.address.rsplit(':', 1)[1].replace('@', '-at-').replace(',', '-')}"
    if target.kind == "direction":
        return f"{slug(target.layer)}/{target.address.rsplit(':', 1)[1]}"
    return f"{slug(target.layer)}/{target.index}"


def _nan_none(v):
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)


# ---------------------------------------------------------------------------------------------
def _parse_targets(subject: Subject, what, directions: dict | None, units: Sequence[int] | None):
    """Addresses -> (vectorized objective, list of Target). All targets must be of one kind/layer."""
    if isinstance(what, str):
        what = [what]
    what = list(what)
    if all(str(w).startswith("class:") for w in what):
        names = subject.classes
        if names is None:
            raise NeuronscopeError("class visualizations need a classification model; this one is a regression model.")
        idx = []
        for w in what:
            name = str(w).split(":", 1)[1]
            if name in names:
                idx.append(names.index(name))
            elif name.isdigit() and int(name) < len(names):
                idx.append(int(name))
            else:
                raise UnitOutOfRangeError(f"No class {name!r}: use one of {names} or an index 0..{len(names) - 1}. "
                                          + did_you_mean(name, names, "class"))
        return idx, [Target(f"class:{names[k]}", None, k, "class") for k in idx]
    targets = []
    for w in what:
        _register_given(subject, w, directions)
        unit = subject.resolve(w)
        info = subject.layer(unit.layer)
        if unit.direction is not None:
            targets.append(Target(str(unit), info.name, subject.direction(unit)[1], "direction"))
        elif unit.channel is None:
            c = info.channels or 1
            chosen = range(c) if units is None else units
            for u in chosen:
                if not 0 <= u < c:
                    raise UnitOutOfRangeError(f"Unit {u} is out of range for layer {info.name!r}: use 0..{c - 1}.")
                targets.append(Target(f"{info.name}:{u}", info.name, int(u), "channel"))
        elif unit.position is not None:
            targets.append(Target(str(unit), info.name, unit.channel, "neuron"))
        else:
            targets.append(Target(str(unit), info.name, unit.channel, "channel"))
    kinds = {(t.kind, t.layer) for t in targets}
    if len(kinds) > 1:
        raise NeuronscopeError("visualize one kind of target in one layer per call (e.g. 'conv3', 'conv3:5' or "
                               f"'class:cat'); got {sorted(str(k) for k in kinds)}.")
    return None, targets


def _register_given(subject: Subject, address, directions: dict | None) -> None:
    """A direction passed as ``directions={name: vector}`` that the subject does not know yet becomes
    one of its units (the name's prefix says the kind: ``dir-...``, ``nmf3``, ...)."""
    from ..directions.book import from_vectors

    if not directions or isinstance(address, Unit):
        return
    unit = parse_unit(address)
    if unit.direction is None or unit.direction not in directions:
        return
    layer = subject.layer(unit.layer).name
    known = {n for d in subject.direction_sets(layer) for n in d.names}
    if unit.direction in known:
        return
    kind = "dir" if unit.direction.startswith("dir-") else unit.direction.rstrip("0123456789")
    if any(d.kind == kind for d in subject.direction_sets(layer)):
        raise NeuronscopeError(f"{layer} already has {kind} directions without {unit.direction!r}: name the vector "
                               "'dir-xxxxxxxx' or use subject.add_direction(layer, vector).")
    subject.add_directions(from_vectors(layer, [directions[unit.direction]], kind=kind, names=[unit.direction]))


def _objective(subject: Subject, targets: list[Target], class_idx, directions, class_objective: str):
    kind, layer = targets[0].kind, targets[0].layer
    if kind == "class":
        make = O.class_logprob if class_objective == "logprob" else O.class_logit
        return make(class_idx, names=[t.address for t in targets])
    if kind == "direction":
        vecs = np.stack([d.read[i] for d, i in (subject.direction(t.address) for t in targets)])
        return O.direction(layer, vecs, names=[t.address for t in targets])
    if kind == "neuron":
        positions = [subject.resolve(t.address).position for t in targets]
        return O.neuron(layer, [t.index for t in targets], positions[0] if len(set(positions)) == 1 else positions)
    return O.channel(layer, [t.index for t in targets])


def choose_colour(subject: Subject, data, colour="auto"):
    """The colour-decorrelation matrix to use: the one given, estimated from ``data`` (``"auto"``
    with data and more than one channel), the ImageNet one for 3 channels without data, or none."""
    if colour is not None and not (isinstance(colour, str) and colour == "auto"):
        return None if isinstance(colour, str) and colour == "none" else colour
    c = subject.input_shape[0]
    if data is not None and c > 1:
        return colour_matrix(_sample(data, 256, subject.value_range))
    return IMAGENET_COLOUR if c == 3 else None


def _colour_label(colour, data) -> str:
    """How the colour decorrelation was chosen, for the record: "data", "given", or the name used."""
    if isinstance(colour, str):
        return "data" if colour == "auto" and data is not None else colour
    return "given" if colour is not None else "none"


def _sample(data, n: int, value_range: tuple[float, float]) -> torch.Tensor:
    """``n`` examples spread evenly over the data (folders list one class after another), in [0, 1];
    unreadable ones are left out."""
    from ..stream import spread_batches

    lo, hi = value_range
    x = torch.cat([torch.as_tensor(np.asarray(b.x), dtype=torch.float32) for b in spread_batches(data, n, n)])
    return (x - lo) / (hi - lo)


def _diversity_layer(subject: Subject, targets: list[Target]) -> str:
    if targets[0].layer is not None:
        return targets[0].layer
    layers = [l for l in subject.default_layers() if l != subject.final_layer()]
    return layers[-1] if layers else subject.default_layers()[-1]


def visualize(
    subject: Subject,
    what,
    *,
    units: Sequence[int] | None = None,
    data=None,
    store=None,
    seeds: int = 3,
    negative: bool = True,
    diverse: int = 0,
    diversity_weight: float = 0.15,
    steps: int = 256,
    param: str = "fourier",
    transforms="standard",
    colour="auto",
    decay_power: float = 1.0,
    lr: float = 0.05,
    directions: dict | None = None,
    class_objective: str = "logit",
    region="ball",
    seed: int = 0,
    progress: bool = True,
) -> Visualization:
    """Render what ``what`` wants most, with evidence.

    ``what`` is a unit address or a list of them, all in one layer: ``"conv3"`` (every channel, or
    ``units=[...]``), ``"conv3:5"`` (a channel), ``"conv3:5@4,4"`` (one spatial neuron),
    ``"conv3:dir-1a2b3c4d"`` with ``directions={"dir-1a2b3c4d": vector}``, or ``"class:cat"``.
    All targets render together in one batch per kind of picture. ``data`` (raw inputs) gives the
    colour matrix (``colour="auto"``), the MACO magnitude spectrum (``param="maco"``) and, when
    ``store`` holds no dataset-examples section, the units' largest real activations.

    For models on numeric vectors the search stays inside ``region`` of the data (``"ball"``: the
    Mahalanobis ball around the data's mean that holds 90% of its rows, clipped to each column's
    observed range; ``"box"``: the observed ranges; or a
    :class:`~neuronscope.analyses.featvis.vector.Region`), and the answer is a row of column values
    shown as a profile against the data's means (:class:`VectorVisualization`).
    """
    if len(subject.input_shape) == 1:
        return visualize_vectors(subject, what, units=units, data=data, store=store, region=region, seeds=seeds,
                                 steps=steps, class_objective=class_objective, seed=seed, progress=progress)
    if len(subject.input_shape) != 3:
        raise NeuronscopeError(f"Feature visualization draws (C, H, W) images; this model takes {subject.input_shape}.")
    if seeds < 1:
        raise NeuronscopeError(f"seeds must be at least 1, got {seeds}.")
    t0 = time.perf_counter()
    class_idx, targets = _parse_targets(subject, what, directions, units)
    objective = _objective(subject, targets, class_idx, directions, class_objective)
    colour_m = choose_colour(subject, data, colour)
    magnitude = magnitude_spectrum(_sample(data, 256, subject.value_range)) if param == "maco" and data is not None else None
    common = dict(param=param, transforms=transforms, steps=steps, lr=lr, colour=colour_m, decay_power=decay_power,
                  magnitude=magnitude, progress=progress)
    n, layer = len(targets), targets[0].layer
    unit_kind = targets[0].kind in ("channel", "neuron")
    pos = render(subject, objective, replicas=seeds, seed=seed, rescue=unit_kind,
                 desc=f"visualizing {n} target{'s' * (n > 1)}", **common)
    probe = _random_probe(subject, layer, seed) if unit_kind else None
    restarted = _restart_stuck(subject, targets, class_idx, pos, seeds, seed, common, probe) if unit_kind else set()
    neg = None
    if negative:
        neg_layer = pre_activation(subject, layer) if targets[0].kind in ("channel", "neuron") else layer
        neg_obj = objective if neg_layer == layer else _objective(
            subject, [Target(t.address, neg_layer, t.index, t.kind) for t in targets], class_idx, directions, class_objective)
        neg = render(subject, -neg_obj, replicas=1, seed=seed + 7919, desc="negative", **common)
    div = None
    if diverse > 1:
        scale = float(np.median(np.abs(pos.values))) or 1.0
        obj = objective + (diversity_weight * scale) * O.diversity(_diversity_layer(subject, targets))
        div = render(subject, obj, replicas=diverse, seed=seed + 104729, desc="diverse sets", **common)

    if targets[0].kind == "direction":
        real, reduce = _direction_maxima(subject, targets, data, store)
    else:
        real, reduce = _real_maxima(subject, layer, data, store)

    results = []
    for t, tg in enumerate(targets):
        rows = pos.for_target(t)
        order = rows[np.argsort(-pos.values[rows])]
        images, values = pos.images[order], pos.values[order]
        res = TargetResult(tg, images, values, reachable=_reachable(subject, tg, values[0]),
                           start="random input" if t in restarted else "noise")
        if not res.reachable:
            res.turned_on_by = _turned_on_by(tg, real, probe) if unit_kind else None
        if tg.kind == "class":
            with torch.no_grad():
                res.reached = float(subject.logits(torch.as_tensor(images[:1]))[0].reshape(-1)[tg.index]) \
                    if subject.output_dim > 1 else float(values[0])
            res.real_max = real.get(tg.index) if real else None
        elif tg.kind == "direction":
            d, i = subject.direction(tg.address)
            res.reached = float(direction_scores(subject, d, images[:1], reduce)[0, i])
            res.real_max = real.get(tg.address) if real else None
        elif tg.kind in ("channel", "neuron"):
            res.reached = float(unit_scores(subject, layer, images[:1], reduce)[0, tg.index])
            res.real_max = real.get(tg.index) if real else None
        if seeds > 1:
            res.consistency = seed_consistency(subject, layer or _diversity_layer(subject, targets), images)
        if neg is not None:
            i = neg.for_target(t)[0]
            res.negative, res.negative_value = neg.images[i : i + 1], float(-neg.values[i])
            res.negative_layer = neg_layer
        if div is not None:
            rows = div.for_target(t)
            res.diverse, res.diverse_values = div.images[rows], div.values[rows]
            res.consistency["diverse_features"] = seed_consistency(
                subject, layer or _diversity_layer(subject, targets), res.diverse).get("features")
        results.append(res)
    options = dict(negative_layer=neg_layer if negative else None, steps=steps, seeds=seeds, param=param, transforms=str(transforms), lr=lr, decay_power=decay_power,
                   diverse=diverse, negative=negative, colour=_colour_label(colour, data),
                   class_objective=class_objective)
    return Visualization(results, subject.value_range, options, reduce, time.perf_counter() - t0)


def interpolate(subject: Subject, a, b, *, frames: int = 6, steps: int = 256, data=None, colour="auto",
                seed: int = 0, progress: bool = True, **render_options) -> Rendering:
    """Frames from what ``a`` wants most to what ``b`` wants most, in one batch.

    ``a`` and ``b`` are unit addresses (``"conv3:5"``, ``"class:cat"``) or single objectives;
    frame ``i`` maximizes ``(1 - t_i) a + t_i b`` with ``t`` evenly spaced from 0 to 1 (Olah et
    al. 2017, "Interaction between Neurons"). All frames share one extra Fourier image, so
    neighbouring frames stay aligned and the change reads as a morph.
    """
    from .param import FourierParam

    def single(x):
        if isinstance(x, O.Objective):
            return x
        idx, ts = _parse_targets(subject, [x], None, None)
        return _objective(subject, ts, idx, None, "logit")

    if frames < 2:
        raise NeuronscopeError(f"an interpolation needs at least 2 frames, got {frames}.")
    objective = O.interpolate(single(a), single(b), frames)
    param = FourierParam(frames, subject.input_shape, shared=True, colour=choose_colour(subject, data, colour),
                         device=subject.device, seed=seed)
    return render(subject, objective, param=param, steps=steps, seed=seed, progress=progress,
                  desc="interpolating", **render_options)


def pre_activation(subject: Subject, layer: str) -> str:
    """The layer feeding a ReLU-like one, when it has the same shape (e.g. ``bn3`` for ``relu3``).

    A ReLU's output cannot go below zero, so "what lowers this unit most" is only informative
    before the nonlinearity; otherwise the layer itself.
    """
    if not subject.is_relu_like(layer):
        return layer
    leaves = [i for i in subject.layers if i.is_leaf and i.output_shape]
    idx = next(n for n, i in enumerate(leaves) if i.name == subject.layer(layer).name)
    shape = leaves[idx].output_shape
    for info in reversed(leaves[:idx]):
        if info.output_shape != shape:
            break
        if not subject.is_relu_like(info.name):
            return info.name
    return layer


def _random_probe(subject: Subject, layer: str, seed: int, n: int = 256):
    """A function giving ``n`` seeded random inputs and every unit's score on them, computed once."""
    found = []

    def probe() -> tuple[torch.Tensor, np.ndarray]:
        if not found:
            x = subject.sample_input(n, seed=seed + 1)
            found.append((x, unit_scores(subject, layer, x, "max")))
        return found[0]
    return probe


def _restart_stuck(subject: Subject, targets: list[Target], class_idx, pos: Rendering, seeds: int, seed: int,
                   common: dict, probe) -> set[int]:
    """Re-render units the optimizer left off everywhere, starting from random inputs that turn them on.

    The near-grey start can sit where a unit's pre-activation is negative at every position and
    the redirected gradient of its *mean* cannot lift any one position above zero; random
    inputs often do. Such units restart (pixel basis) from the ``seeds`` random inputs that excite
    them most. Rows of ``pos`` are replaced in place; returns the restarted target numbers.
    """
    layer = targets[0].layer
    if not subject.is_relu_like(layer):
        return set()
    best = np.array([pos.values[pos.for_target(t)].max() for t in range(len(targets))])
    stuck = np.flatnonzero(best <= 1e-6)
    if not len(stuck):
        return set()
    x, scores = probe()
    restart = [t for t in stuck if scores[:, targets[t].index].max() > 0]
    if not restart:
        return set()
    starts = torch.cat([x[np.argsort(-scores[:, targets[t].index])[:seeds]] for t in restart])
    lo, hi = subject.value_range
    param = PixelParam(len(starts), subject.input_shape, init=(starts - lo) / (hi - lo), device=subject.device, seed=seed)
    sub = _objective(subject, [targets[t] for t in restart], class_idx, None, "logit")
    opts = {k: v for k, v in common.items() if k not in ("param", "colour", "decay_power", "magnitude")}
    again = render(subject, sub, replicas=seeds, param=param, seed=seed, desc="restarting stuck units", **opts)
    for j, t in enumerate(restart):
        rows, new = pos.for_target(t), again.for_target(j)
        pos.images[rows], pos.values[rows] = again.images[new], again.values[new]
    return set(restart)


def _turned_on_by(target: Target, real: dict | None, probe) -> str | None:
    """Whether anything turns on a unit the optimizer could not: real data, or random inputs."""
    if real and real.get(target.index, 0) > 0:
        return "data"
    if float(probe()[1][:, target.index].max()) > 0:
        return "random inputs"
    return None


def _reachable(subject: Subject, target: Target, best: float) -> bool:
    if target.kind in ("channel", "neuron") and subject.is_relu_like(target.layer):
        return bool(best > 1e-6)
    return True


def _real_maxima(subject: Subject, layer: str | None, data, store) -> tuple[dict[int, float] | None, str]:
    """Each target's largest score on real data and the spatial reduction it was taken with.

    From the store's dataset-examples section when it covers the layer (the same reduction the
    examples were ranked by), else from a pass over ``data``; class logits for ``layer=None``.
    """
    if layer is None:
        return (_class_maxima(subject, data) if data is not None else None), "max"
    found = real_maxima_from_store(store, layer)
    if found is not None:
        return found
    return (real_maxima_from_data(subject, data, layer) if data is not None else None), "max"


def direction_scores(subject: Subject, directions, raw, reduce: str = "max") -> np.ndarray:
    """(B, K) scores of a DirectionSet on raw inputs, reduced over positions like the examples pass."""
    with torch.no_grad():
        act = subject.activations(torch.as_tensor(raw), [directions.layer])[directions.layer]
    from .evidence import reduce_map

    return reduce_map(directions.scores(act), reduce).double().numpy()


def _direction_maxima(subject: Subject, targets: list[Target], data, store, limit: int = 2048):
    """Each direction's largest score on real data: from the store's directions section, else from ``data``."""
    wanted = {t.address for t in targets}
    if store is not None and store.has("directions") and "examples" in store.sections()["directions"].get("tables", {}):
        ex = store.table("directions", "examples")
        best = {u: float(sc) for u, kind, rank, sc in zip(ex["unit"], ex["kind"], ex["rank"], ex["score"])
                if u in wanted and kind == "top" and rank == 0 and sc is not None}
        if set(best) == wanted:
            return best, store.summary("directions").get("reduce", "max")
    if data is None:
        return None, "max"
    sets = {}
    for t in targets:
        d, i = subject.direction(t.address)
        sets.setdefault(id(d), (d, []))[1].append((t.address, i))
    best: dict[str, float] = {}
    for b in data.batches(128, limit=limit):
        for d, items in sets.values():
            s = direction_scores(subject, d, b.x, "max").max(0)
            for address, i in items:
                best[address] = max(best.get(address, -np.inf), float(s[i]))
    return best, "max"


def _class_maxima(subject: Subject, data, limit: int = 2048) -> dict[int, float]:
    best = None
    with torch.no_grad():
        for b in data.batches(128, limit=limit):
            z = subject.logits(b.x).reshape(len(b.x), -1).double().cpu().numpy()
            if z.shape[1] == 1:  # one logit: class 1 is z, class 0 is -z
                z = np.concatenate([-z, z], 1)
            m = z.max(0)
            best = m if best is None else np.maximum(best, m)
    return {} if best is None else {k: float(v) for k, v in enumerate(best)}


# --------------------------------------------------------------------------------------------- vectors
@dataclass
class VectorVisualization:
    """``visualize`` on a model over numeric vectors: the best row per target, as a profile."""

    results: list[TargetResult]  # images are (seeds, F) rows in the data's units
    columns: list[str]
    mean: np.ndarray
    scale: np.ndarray
    region: str
    options: dict
    reduce: str = "max"
    seconds: float = 0.0

    def __iter__(self):
        return iter(self.results)

    def __len__(self):
        return len(self.results)

    def __getitem__(self, address: str) -> TargetResult:
        return Visualization.__getitem__(self, address)

    def profile(self, address: str) -> list[tuple[str, float, float]]:
        """(column, value, z against the data) of the best row, most unusual columns first."""
        r = self[address]
        z = (r.images[0] - self.mean) / np.where(self.scale > 0, self.scale, 1)
        return sorted(zip(self.columns, r.images[0].tolist(), z.tolist()), key=lambda t: -abs(t[2]))

    def tables(self):
        t = Visualization.tables(self)
        prof: dict[str, list] = {k: [] for k in ("address", "column", "value", "mean", "z")}
        for r in self.results:
            for column, value, z in self.profile(r.target.address):
                prof["address"].append(r.target.address)
                prof["column"].append(column)
                prof["value"].append(float(value))
                prof["mean"].append(float(self.mean[self.columns.index(column)]))
                prof["z"].append(float(z))
        return {**t, "profiles": prof}

    def images(self):
        return {}

    def summary(self):
        out = Visualization.summary(self)
        out["vector_input"] = True
        out["region"] = self.region
        return out


def visualize_vectors(subject: Subject, what, *, units=None, data=None, store=None, region="ball", seeds: int = 3,
                      steps: int = 300, class_objective: str = "logit", seed: int = 0,
                      progress: bool = True) -> VectorVisualization:
    """Activation maximization for a vector model inside a region of its data (see ``vector``)."""
    from .vector import Region, maximize

    t0 = time.perf_counter()
    class_idx, targets = _parse_targets(subject, what, None, units)
    objective = _objective(subject, targets, class_idx, None, class_objective)
    rows = None
    if data is not None:
        rows = np.concatenate([np.asarray(b.x, dtype=np.float64) for b in data.batches(4096)])
    if not isinstance(region, Region):
        if rows is None:
            raise NeuronscopeError("Visualizing a model on vectors needs its data (data=...): the search stays "
                                   "inside the data's range, or pass region=Region.box(lo, hi).")
        region = Region.from_data(rows, kind=region)
        if region.kind == "ball":
            # Radius: the 90th percentile of the rows' own Mahalanobis norms, so the ball holds 90% of
            # the data (a fixed "3 sigma" is smaller than typical data in many dimensions, where a
            # typical norm is about sqrt(F)); clipped to each column's observed range, so that
            # heavy-tailed columns cannot run past what the data shows.
            u = np.linalg.solve(region.chol, (rows - region.mean).T)
            region = Region.from_data(rows, kind="ball", radius=float(np.quantile(np.linalg.norm(u, axis=0), 0.9)),
                                      clip=True)
    layer = targets[0].layer
    # Start from the real rows that score highest for each target: a ReLU unit that a random start
    # leaves off everywhere has no gradient to follow, and the answer then beats every real row.
    init = None
    if rows is not None and len(rows) >= seeds:
        with torch.no_grad():
            if layer is None:
                z = subject.logits(torch.as_tensor(rows)).reshape(len(rows), -1).double().cpu().numpy()
                score = np.concatenate([-z, z], 1) if z.shape[1] == 1 else z
            else:
                score = unit_scores(subject, layer, rows, "max")
        init = np.concatenate([rows[np.argsort(-score[:, t.index])[:seeds]] for t in targets])
    res = maximize(subject, objective, region, replicas=seeds, steps=steps, seed=seed, init=init, progress=progress)
    if targets[0].kind == "direction":
        real, reduce = _direction_maxima(subject, targets, data, store)
    else:
        real, reduce = _real_maxima(subject, layer, data, store)
    results = []
    for t, tg in enumerate(targets):
        rows = np.flatnonzero(res.target == t)
        order = rows[np.argsort(-res.values[rows])]
        r = TargetResult(tg, res.x[order], res.values[order], reachable=_reachable(subject, tg, res.values[order][0]))
        with torch.no_grad():
            if tg.kind == "class":
                z = subject.logits(torch.as_tensor(res.x[order[:1]])).reshape(1, -1)
                r.reached = float(z[0, tg.index]) if z.shape[1] > 1 else float(res.values[order[0]])
            else:
                r.reached = float(unit_scores(subject, layer, res.x[order[:1]], reduce)[0, tg.index])
        r.real_max = real.get(tg.index) if real else None
        if seeds > 1:  # cosine similarity of the seeds' z-profiles (a vector's "pixels")
            p = res.profile[order]
            p = p / (np.linalg.norm(p, axis=1, keepdims=True) + 1e-12)
            r.consistency = {"pixels": _pairwise_mean(p @ p.T)}
        results.append(r)
    options = dict(steps=steps, seeds=seeds, region=region.kind, radius=region.radius, class_objective=class_objective)
    return VectorVisualization(results, list(res.columns), res.mean, res.scale, region.kind, options, reduce,
                               time.perf_counter() - t0)
