"""What each layer does: activation maps for one input, and unit statistics over data.

cs231n, "Understanding and Visualizing CNNs": activation maps show, for one input, which
channels respond and where; over a data sample, units that never fire (dead ReLUs) and how
sparse a layer is are a quick health check of training.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import imaging
from ..errors import NeuronscopeError
from .reducers import Moments
from .stream import stream


class UnitStats:
    """Streaming, mergeable statistics of every unit of one layer.

    Per unit: number of examples, mean and spread (:class:`~.reducers.Moments`, float64) of the
    per-example mean activation, largest activation, examples on which the unit is active (spatial max above
    ``threshold``), and the fraction of exactly-zero activation values (sparsity). Memory is
    O(units); ``merge`` of two shards equals one pass over both. After dissect's RunningStats.
    """

    def __init__(self, channels: int, threshold: float = 0.0):
        self.threshold = threshold
        self.n = 0
        self.moments = Moments(channels)  # of the per-example mean activation
        self.max = np.full(channels, -np.inf)
        self.active = np.zeros(channels, dtype=np.int64)
        self.zeros = np.zeros(channels, dtype=np.int64)
        self.values = 0  # activation values per unit seen so far (examples x positions)

    def add(self, act: torch.Tensor) -> None:
        act = act.detach()
        flat = act.reshape(act.shape[0], act.shape[1] if act.ndim > 1 else 1, -1)
        self.add_reduced(flat.mean(2, dtype=torch.float64).cpu().numpy(), flat.amax(2).double().cpu().numpy(),
                         (flat == 0).sum(2).cpu().numpy(), flat.shape[2])

    def add_reduced(self, means: np.ndarray, maxes: np.ndarray, zeros: np.ndarray, per_example: int) -> None:
        """Add a batch already reduced to (B, U): spatial means, maxima, zero counts."""
        self.n += means.shape[0]
        self.values += means.shape[0] * per_example
        self.moments.add(means)
        self.max = np.maximum(self.max, maxes.max(0))
        self.active += (maxes > self.threshold).sum(0)
        self.zeros += zeros.sum(0)

    def merge(self, other: UnitStats) -> UnitStats:
        out = UnitStats(len(self.max), self.threshold)
        out.n, out.values = self.n + other.n, self.values + other.values
        out.moments = self.moments.merge(other.moments)
        out.max = np.maximum(self.max, other.max)
        out.active, out.zeros = self.active + other.active, self.zeros + other.zeros
        return out

    def state_dict(self) -> dict:
        state = {k: getattr(self, k) for k in ("threshold", "n", "values", "max", "active", "zeros")}
        return {**state, **{f"moments.{k}": v for k, v in self.moments.state_dict().items()}}

    @classmethod
    def from_state_dict(cls, state: dict) -> UnitStats:
        out = cls(len(state["max"]), state["threshold"])
        for k, v in state.items():
            if not k.startswith("moments."):
                setattr(out, k, np.asarray(v) if isinstance(v, (list, np.ndarray)) else v)
        out.moments = Moments.from_state_dict({k: state[f"moments.{k}"] for k in ("n", "mean", "m2")})
        return out

    def result(self) -> dict[str, np.ndarray]:
        n = max(self.n, 1)
        return {
            "mean": self.moments.mean,
            "std": self.moments.std(),
            "max": self.max,
            "active_fraction": self.active / n,
            "sparsity": self.zeros / max(self.values, 1),
        }


@dataclass
class LayerStatsResult:
    """Per-unit and per-layer statistics over a data sample."""

    layers: list[str]
    types: dict[str, str]
    relu_like: dict[str, bool]
    stats: dict[str, dict[str, np.ndarray]]
    n_examples: int

    def dead(self, layer: str) -> np.ndarray:
        """Units that never rose above zero on any example (meaningful for ReLU-like layers)."""
        return self.stats[layer]["max"] <= 0

    def tables(self) -> dict[str, dict[str, list]]:
        units = {"layer": [], "unit": [], "mean": [], "std": [], "max": [], "active_fraction": [],
                 "sparsity": [], "dead": []}
        layers = {"layer": [], "type": [], "units": [], "dead_fraction": [], "mean_activation": [],
                  "sparsity": [], "relu_like": []}
        for name in self.layers:
            s = self.stats[name]
            dead = self.dead(name) if self.relu_like[name] else np.zeros(len(s["mean"]), bool)
            for i in range(len(s["mean"])):
                units["layer"].append(name)
                units["unit"].append(f"{name}:{i}")
                for k in ("mean", "std", "max", "active_fraction", "sparsity"):
                    units[k].append(float(s[k][i]))
                units["dead"].append(bool(dead[i]))
            layers["layer"].append(name)
            layers["type"].append(self.types[name])
            layers["units"].append(len(s["mean"]))
            layers["dead_fraction"].append(float(dead.mean()) if self.relu_like[name] else None)
            layers["mean_activation"].append(float(s["mean"].mean()))
            layers["sparsity"].append(float(s["sparsity"].mean()))
            layers["relu_like"].append(self.relu_like[name])
        return {"units": units, "layers": layers}

    def images(self) -> dict:
        return {}

    def summary(self) -> dict:
        findings = []
        for name in self.layers:
            if not self.relu_like[name]:
                continue
            dead = self.dead(name)
            if dead.any():
                findings.append(
                    f"{int(dead.sum())} of {len(dead)} units in {name} never fire on these "
                    f"{self.n_examples} examples (dead)."
                )
        return {"n_examples": self.n_examples, "layers": self.layers, "findings": findings}

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{l}</td><td>{t}</td><td>{u}</td><td>{'' if d is None else f'{d:.0%}'}</td>"
            f"<td>{m:.3g}</td><td>{s:.0%}</td></tr>"
            for l, t, u, d, m, s, _ in zip(*self.tables()["layers"].values())
        )
        return ("<table><tr><th>layer</th><th>type</th><th>units</th><th>dead</th><th>mean</th>"
                f"<th>zeros</th></tr>{rows}</table>")


def layer_stats(subject, data, layers: Sequence[str] | None = None, *, limit: int | None = 512,
                batch_size: int = 64, progress: bool = True) -> LayerStatsResult:
    """Dead units, mean activation and sparsity of each layer over (a sample of) the data."""
    layers = list(layers) if layers is not None else subject.default_layers()
    reducers = LayerStatsReducer(subject, layers)
    for step in stream(subject, data, layers, limit=limit, batch_size=batch_size,
                       desc="layer statistics", progress=progress):
        reducers.add(step)
    return reducers.result()


class LayerStatsReducer:
    """Feeds one :class:`UnitStats` per layer from a :func:`stream` pass."""

    def __init__(self, subject, layers: Sequence[str]):
        self.layers = [subject.layer(l).name for l in layers]
        self.types = {l: subject.layer(l).type for l in self.layers}
        self.relu_like = {l: subject.is_relu_like(l) for l in self.layers}
        self.stats = {l: None for l in self.layers}
        self.n = 0

    def add(self, step) -> None:
        self.n += len(step.batch.ids)
        for l in self.layers:
            act = step.activations[l]
            if self.stats[l] is None:
                self.stats[l] = UnitStats(act.shape[1] if act.ndim > 1 else 1)
            self.stats[l].add(act)

    def result(self) -> LayerStatsResult:
        if self.n == 0:
            raise NeuronscopeError("No readable examples in the data: nothing to compute statistics on.")
        return LayerStatsResult(self.layers, self.types, self.relu_like,
                                {l: s.result() for l, s in self.stats.items()}, self.n)


@dataclass
class ActivationMapsResult:
    """Every chosen layer's response to one input, as grids of channel maps."""

    example_id: str
    input_image: object  # PIL image of the input
    layers: list[str]
    shapes: dict[str, tuple[int, ...]]
    pictures: dict[str, object]  # layer -> PIL image
    top_channels: dict[str, list[tuple[int, float]]]  # strongest channels (by spatial max)
    signed: dict[str, bool] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)  # largest |activation| per layer

    def tables(self) -> dict[str, dict[str, list]]:
        rows = {"layer": [], "rank": [], "unit": [], "score": []}
        for l in self.layers:
            for r, (c, v) in enumerate(self.top_channels[l]):
                rows["layer"].append(l)
                rows["rank"].append(r)
                rows["unit"].append(f"{l}:{c}")
                rows["score"].append(v)
        return {"top_channels": rows}

    def images(self) -> dict:
        out = {"input": self.input_image}
        out.update({f"layer-{i:03d}": p for i, p in enumerate(self.pictures.values())})
        return out

    def summary(self) -> dict:
        return {
            "example_id": self.example_id,
            "layers": [{"layer": l, "shape": list(self.shapes[l]), "image": f"layer-{i:03d}",
                        "signed": self.signed[l], "scale": self.scales[l],
                        "top": [f"{l}:{c}" for c, _ in self.top_channels[l][:5]]}
                       for i, l in enumerate(self.layers)],
        }

    def _repr_html_(self) -> str:
        parts = [f"<p>Activation maps for example <code>{self.example_id}</code></p>"]
        for l, pic in self.pictures.items():
            buf = io.BytesIO()
            pic.save(buf, format="PNG")
            parts.append(f"<h4>{l} {self.shapes[l]}</h4><img src='data:image/png;base64,"
                         f"{base64.b64encode(buf.getvalue()).decode()}'/>")
        return "".join(parts)


def activation_maps(subject, x, layers: Sequence[str] | None = None, *, example_id: str = "input",
                    top: int = 8) -> ActivationMapsResult:
    """Grids of channel maps of every chosen layer for one raw input ``x`` (shape ``input_shape``)."""
    x = torch.as_tensor(x)
    if tuple(x.shape) == subject.input_shape:
        x = x[None]
    layers = list(layers) if layers is not None else subject.default_layers()
    acts = subject.activations(x, layers)
    pictures, shapes, tops, signed, scales = {}, {}, {}, {}, {}
    for l in layers:
        a = acts[subject.layer(l).name][0].detach().double().cpu().numpy()
        name = subject.layer(l).name
        shapes[name] = tuple(a.shape)
        is_signed = bool((a < 0).any())
        signed[name] = is_signed
        scales[name] = float(np.abs(a).max()) if a.size else 0.0
        if a.ndim >= 2:
            maps = a.reshape(a.shape[0], a.shape[1], -1)
            pictures[name] = imaging.to_image(imaging.channel_grid(maps, signed=is_signed))
            scores = maps.reshape(a.shape[0], -1).max(1)
        else:
            pictures[name] = imaging.to_image(imaging.cells(a.reshape(-1), signed=is_signed))
            scores = a.reshape(-1)
        order = np.argsort(-scores, kind="stable")[:top]
        tops[name] = [(int(c), float(scores[c])) for c in order]
    return ActivationMapsResult(example_id, imaging.input_picture(x[0], subject.value_range), list(pictures), shapes,
                                pictures, tops, signed, scales)
