"""Dataset examples: which real inputs excite each unit, for every unit of every chosen layer.

The most trusted answer to "what does this unit look for?" is the real inputs that excite it
most (cs231n, "Understanding and Visualizing CNNs"; Girshick et al. 2014; OpenAI Microscope;
Neuronpedia). One streaming pass over the data gives, per unit: the top-k and bottom-k examples
(with the position of the maximum), examples sampled across the activation range, a histogram
and quantiles of the per-example scores, mean/std, how often the unit is active, and, with
labels, which classes it prefers (selectivity index of Morcos et al. 2018). Every statistic is a
mergeable reducer (``reducers.py``, ``sketch.py``): two shards merge into the one-pass result.
"""

from __future__ import annotations

import warnings

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import NeuronscopeError
from .activations import LayerStatsResult, UnitStats
from .reducers import Histogram, KeepBest, Moments, calibrate_edges, id_keys
from .sketch import QuantileSketch
from ..notebook import NotebookMixin

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
#: A ReLU-like unit active (score above zero) on fewer than this share of inputs is "rarely active".
RARE = 0.01
#: A unit with a class-selectivity index at or above this "prefers one class".
SELECTIVE = 0.5


@dataclass(frozen=True)
class LayerSpec:
    """What the reducer needs to know about one layer."""

    name: str
    channels: int
    spatial: tuple[int, ...]
    relu_like: bool
    type: str = ""
    source: str | None = None  # the model layer read, when ``name`` is a group of directions in it
    unit_names: tuple[str, ...] | None = None  # e.g. ("nmf0", "nmf1"); None: channel indices

    def address(self, u: int) -> str:
        """Unit ``u``'s address: ``layer:12``, or ``layer:nmf3`` for a group of directions."""
        return f"{self.source or self.name}:{self.unit_names[u] if self.unit_names else u}"


def layer_specs(subject, layers: Sequence[str]) -> list[LayerSpec]:
    out = []
    for l in layers:
        info = subject.layer(l)
        if not info.output_shape:
            raise NeuronscopeError(f"Layer {info.name!r} has no tensor output to rank examples by.")
        out.append(LayerSpec(info.name, info.output_shape[0], tuple(info.output_shape[1:]),
                             subject.is_relu_like(info.name), info.type))
    return out


def reduce_activation(act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, C, *spatial) -> four (B, C) tensors: spatial max, its flat position, mean, zero count.

    Run inside the capture hook (``Subject.capture(reduce=...)``), so feature maps are never
    copied. The per-example mean is float32 (it is summed across examples in float64).
    """
    flat = act.reshape(act.shape[0], act.shape[1] if act.ndim > 1 else 1, -1)
    maxes, where = flat.max(2)
    return maxes, where, flat.mean(2), flat.shape[2] - torch.count_nonzero(flat, dim=2)


def _to_numpy(reduced, per_example: int):
    maxes, where, means, zeros = reduced
    return (maxes.double().cpu().numpy(), where.cpu().numpy(), means.double().cpu().numpy(),
            zeros.cpu().numpy(), per_example)


class LayerExamples:
    """All per-unit reducers of one layer."""

    def __init__(self, spec: LayerSpec, *, k: int, lo: np.ndarray, hi: np.ndarray, range_bins: int,
                 per_bin: int, n_classes: int, bins: int = 48):
        u = spec.channels
        self.spec, self.k, self.range_bins, self.per_bin = spec, k, range_bins, per_bin
        self.top = KeepBest(u, k, ["pos", "label"])
        self.bottom = KeepBest(u, k, ["pos", "label"])
        self.ranged = KeepBest(u * range_bins, per_bin, ["pos", "label", "score"])
        self.hist = Histogram(lo, hi, bins)
        self.sketch = QuantileSketch(u)
        self.stats = UnitStats(u)
        self.n = 0
        self.moments = Moments(u)
        self.class_count = np.zeros(n_classes, dtype=np.int64)
        self.class_sum = np.zeros((n_classes, u))

    def add(self, scores: np.ndarray, pos: np.ndarray, means: np.ndarray, zeros: np.ndarray, per_example: int,
            maxes: np.ndarray, keys: np.ndarray, labels: np.ndarray | None) -> None:
        b, u = scores.shape
        lab = labels if labels is not None else np.full(b, -1, dtype=np.int64)
        lab2 = np.broadcast_to(lab[:, None], (b, u))
        self.top.update_dense(-scores, keys, pos=pos, label=lab2)
        self.bottom.update_dense(scores, keys, pos=pos, label=lab2)
        bins = self.hist.bin_of(scores)
        self.hist.add(bins)
        rbin = np.clip((bins - 1) * self.range_bins // self.hist.bins, 0, self.range_bins - 1)
        self.ranged.update((np.arange(u)[None, :] * self.range_bins + rbin).ravel(), np.zeros(b * u),
                           np.repeat(keys, u), pos=pos.ravel(), label=lab2.ravel(), score=scores.ravel())
        self.sketch.add(scores)
        self.stats.add_reduced(means, maxes, zeros, per_example)
        self.n += b
        self.moments.add(scores)
        if labels is not None and len(self.class_count):
            onehot = np.zeros((b, len(self.class_count)))
            onehot[np.arange(b), labels] = 1.0
            self.class_count += onehot.sum(0).astype(np.int64)
            self.class_sum += onehot.T @ scores

    def merge(self, other: LayerExamples) -> LayerExamples:
        out = LayerExamples.__new__(LayerExamples)
        out.spec, out.k, out.range_bins, out.per_bin = self.spec, self.k, self.range_bins, self.per_bin
        out.top, out.bottom = self.top.merge(other.top), self.bottom.merge(other.bottom)
        out.ranged, out.hist = self.ranged.merge(other.ranged), self.hist.merge(other.hist)
        out.sketch, out.stats = self.sketch.merge(other.sketch), self.stats.merge(other.stats)
        out.n = self.n + other.n
        out.moments = self.moments.merge(other.moments)
        out.class_count, out.class_sum = self.class_count + other.class_count, self.class_sum + other.class_sum
        return out

    def state_dict(self) -> dict:
        state = {"n": self.n, "class_count": self.class_count, "class_sum": self.class_sum}
        for name in ("top", "bottom", "ranged", "hist", "sketch", "stats", "moments"):
            for k, v in getattr(self, name).state_dict().items():
                state[f"{name}/{k}"] = v
        return state

    def load_state_dict(self, state: dict) -> None:
        def part(name):
            return {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(name + "/")}

        self.top, self.bottom = KeepBest.from_state_dict(part("top")), KeepBest.from_state_dict(part("bottom"))
        self.ranged, self.hist = KeepBest.from_state_dict(part("ranged")), Histogram.from_state_dict(part("hist"))
        self.sketch = QuantileSketch.from_state_dict(part("sketch"))
        self.stats = UnitStats.from_state_dict(part("stats"))
        self.n = int(state["n"])
        self.moments = Moments.from_state_dict(part("moments"))
        self.class_count, self.class_sum = np.asarray(state["class_count"]), np.asarray(state["class_sum"])


class ExamplesReducer:
    """Feeds one :class:`LayerExamples` per layer from a streaming pass; mergeable, resumable.

    Histogram edges (and the range bins cut from them) must be the same in every shard: they
    come from a calibration sample, the first ``calibration`` examples of the pass, or from
    ``edges`` computed once by :func:`calibrate_edges` and shared.
    """

    def __init__(self, specs: Sequence[LayerSpec], *, k: int = 16, classes: Sequence[str] | None = None,
                 reduce: str = "max", range_bins: int = 8, per_bin: int = 4, calibration: int = 256,
                 edges: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                 columns: Sequence[str] | None = None):
        if reduce not in ("max", "mean"):
            raise NeuronscopeError(f"reduce must be 'max' or 'mean', got {reduce!r}.")
        if k < 1:
            raise NeuronscopeError(f"k must be at least 1, got {k}.")
        self.specs = list(specs)
        self.k, self.reduce, self.range_bins, self.per_bin = k, reduce, range_bins, per_bin
        self.classes = list(classes) if classes else []
        self.calibration = calibration
        self.edges = dict(edges) if edges else None
        self.columns = list(columns) if columns else None
        self.layers: dict[str, LayerExamples] | None = None
        self._pending: list[tuple] = []  # batches held until the edges are known
        self.ids: dict[int, str] = {}  # key -> id, for keys the reducers hold
        self._since_prune = 0
        self.x_moments = None  # vector inputs: column means and spreads for input profiles
        if self.edges is not None:
            self._start()

    # ------------------------------------------------------------------ feeding
    @property
    def ready(self) -> bool:
        """Calibrated: every batch so far is in the reducers (none held back), so the state is whole."""
        return self.layers is not None

    def _start(self) -> None:
        self.layers = {s.name: LayerExamples(s, k=self.k, lo=self.edges[s.name][0], hi=self.edges[s.name][1],
                                             range_bins=self.range_bins, per_bin=self.per_bin,
                                             n_classes=len(self.classes)) for s in self.specs}

    def add(self, step) -> None:
        """One step of :func:`~neuronscope.analyses.stream.run_pass`."""
        self.add_batch(step.batch.ids, step.activations, step.batch.y, step.batch.x)

    def add_batch(self, ids: Sequence[str], activations: dict[str, torch.Tensor], labels=None, x=None) -> None:
        """One batch: example ids, each layer's activations (B, C, ...), labels, raw inputs."""
        keys = id_keys(ids)
        self.ids.update(zip(keys.tolist(), ids))
        labels = (None if labels is None or not self.classes or torch.as_tensor(labels).is_floating_point()
                  else np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64))
        reduced = {}
        for s in self.specs:
            a = activations[s.name]
            r = a if isinstance(a, tuple) else reduce_activation(a.detach())  # reduced in the hook, or not
            reduced[s.name] = _to_numpy(r, int(np.prod(s.spatial)) if s.spatial else 1)
        if x is not None and self.columns:
            xd = torch.as_tensor(x).double().reshape(len(ids), -1).cpu().numpy()
            if self.x_moments is None:
                self.x_moments = Moments(xd.shape[1])
            self.x_moments.add(xd)
        if self.layers is None:
            self._pending.append((keys, reduced, labels))
            if sum(len(p[0]) for p in self._pending) >= self.calibration:
                self._calibrate()
            return
        self._feed(keys, reduced, labels)

    def _score(self, r) -> np.ndarray:
        return r[0] if self.reduce == "max" else r[2]

    def _calibrate(self) -> None:
        self.edges = {s.name: calibrate_edges(np.concatenate([self._score(p[1][s.name]) for p in self._pending]))
                      for s in self.specs}
        self._start()
        pending, self._pending = self._pending, []
        for keys, reduced, labels in pending:
            self._feed(keys, reduced, labels)

    def _feed(self, keys, reduced, labels) -> None:
        for s in self.specs:
            maxes, pos, means, zeros, per_example = reduced[s.name]
            self.layers[s.name].add(self._score(reduced[s.name]), pos, means, zeros, per_example, maxes, keys, labels)
        self._since_prune += 1
        if self._since_prune >= 64:
            self._prune()

    def finish(self) -> None:
        """Flush batches held for calibration (small data sets never reach the sample size)."""
        if self.layers is None:
            if not self._pending:
                raise NeuronscopeError("No readable examples in the data: nothing to rank.")
            self._calibrate()
        self._prune()

    def _referenced(self) -> set[int]:
        keys = set()
        for le in (self.layers or {}).values():
            for kb in (le.top, le.bottom, le.ranged):
                keys.update(kb.key[kb.filled()].tolist())
        return keys

    def _prune(self) -> None:
        """Forget ids no reducer holds any more: memory stays O(units x k), not O(data)."""
        if self.layers is None:
            return
        ref = self._referenced()
        self.ids = {k: v for k, v in self.ids.items() if k in ref}
        self._since_prune = 0

    # ------------------------------------------------------------------ merging and saving
    def merge(self, other: ExamplesReducer) -> ExamplesReducer:
        self.finish()
        other.finish()
        out = ExamplesReducer(self.specs, k=self.k, classes=self.classes, reduce=self.reduce,
                              range_bins=self.range_bins, per_bin=self.per_bin, edges=self.edges,
                              columns=self.columns)
        out.layers = {n: le.merge(other.layers[n]) for n, le in self.layers.items()}
        out.ids = {**self.ids, **other.ids}
        if self.x_moments is not None:
            out.x_moments = self.x_moments.merge(other.x_moments) if other.x_moments is not None else self.x_moments
        out._prune()
        return out

    def state_dict(self) -> dict:
        """Flat numpy state (np.savez-able); only valid once calibrated (call after >= 1 fed batch)."""
        if self.layers is None:
            self._calibrate()
        self._prune()
        state = {"ids.key": np.array(list(self.ids), dtype=np.int64),
                 "ids.value": np.array(list(self.ids.values()), dtype=object).astype(str)}
        if self.x_moments is not None:
            state.update({f"x.{k}": v for k, v in self.x_moments.state_dict().items()})
        for name, le in self.layers.items():
            for k, v in le.state_dict().items():
                state[f"layer:{name}/{k}"] = v
        return state

    def load_state_dict(self, state: dict) -> None:
        self.edges = {s.name: (np.asarray(state[f"layer:{s.name}/hist/lo"]), np.asarray(state[f"layer:{s.name}/hist/hi"]))
                      for s in self.specs}
        self._start()
        for s in self.specs:
            prefix = f"layer:{s.name}/"
            self.layers[s.name].load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        self.ids = dict(zip(np.asarray(state["ids.key"]).tolist(), np.asarray(state["ids.value"]).tolist()))
        if "x.mean" in state:
            self.x_moments = Moments.from_state_dict({k: state[f"x.{k}"] for k in ("n", "mean", "m2")})
        self._pending = []

    # ------------------------------------------------------------------ results
    def result(self) -> ExamplesResult:
        self.finish()
        layers = {}
        for s in self.specs:
            le = self.layers[s.name]
            layers[s.name] = LayerResult.from_reducers(le, self.ids, self.classes, self.reduce)
        x_mean = x_std = None
        if self.x_moments is not None:
            x_mean, x_std = self.x_moments.mean, self.x_moments.std()
        return ExamplesResult(layers=layers, k=self.k, reduce=self.reduce, classes=self.classes,
                              columns=self.columns, x_mean=x_mean, x_std=x_std)


@dataclass
class Ranked:
    """Examples of one kind (top, bottom, or one range bin) for every unit of a layer."""

    ids: list[list[str]]
    scores: np.ndarray  # (U, m), NaN where a unit has fewer examples
    pos: np.ndarray  # (U, m) flat spatial index of the maximum, -1 when none
    labels: np.ndarray  # (U, m), -1 when unlabelled


def _ranked(kb: KeepBest, ids: dict[int, str], sign: float) -> Ranked:
    filled = kb.filled()
    scores = np.where(filled, sign * kb.primary, np.nan)
    if "score" in kb.payloads:  # range samples are ordered by key; their score rides along
        scores = np.where(filled, kb.payloads["score"], np.nan)
    return Ranked([[ids[k] for k, f in zip(row, frow) if f] for row, frow in zip(kb.key.tolist(), filled)],
                  scores, kb.payloads["pos"].astype(np.int64), kb.payloads["label"].astype(np.int64))


@dataclass
class LayerResult:
    spec: LayerSpec
    n: int
    top: Ranked
    bottom: Ranked
    ranged: list[Ranked]  # one per range bin, low to high
    range_edges: np.ndarray  # (U, range_bins + 1)
    hist_edges: np.ndarray  # (U, bins + 1)
    hist_counts: np.ndarray  # (U, bins + 2): underflow, bins, overflow
    quantiles: np.ndarray  # (U, len(QUANTILES))
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    active: np.ndarray  # share of examples with score > 0
    class_means: np.ndarray | None  # (C, U)
    class_count: np.ndarray | None
    unit_stats: dict[str, np.ndarray] = field(default_factory=dict)  # UnitStats.result()

    @classmethod
    def from_reducers(cls, le: LayerExamples, ids: dict[int, str], classes: list[str], reduce: str) -> LayerResult:
        u, r = le.spec.channels, le.range_bins
        ranged_all = _ranked(le.ranged, ids, 1.0)
        ranged = []
        for b in range(r):
            rows = np.arange(u) * r + b
            ranged.append(Ranked([ranged_all.ids[i] for i in rows], ranged_all.scores[rows],
                                 ranged_all.pos[rows], ranged_all.labels[rows]))
        n = max(le.n, 1)
        mean = le.moments.mean
        hist_edges = le.hist.edges()
        q = le.sketch.quantiles([0.0, *QUANTILES, 1.0])
        has_classes = bool(classes) and le.class_count.sum() > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            class_means = le.class_sum / le.class_count[:, None] if has_classes else None
        return cls(
            spec=le.spec, n=le.n, top=_ranked(le.top, ids, -1.0), bottom=_ranked(le.bottom, ids, 1.0),
            ranged=ranged, range_edges=le.hist.lo[:, None] + (le.hist.hi - le.hist.lo)[:, None] * np.linspace(0, 1, r + 1),
            hist_edges=hist_edges, hist_counts=le.hist.counts, quantiles=q[:, 1:-1], mean=mean,
            std=le.moments.std(), min=q[:, 0], max=q[:, -1],
            active=le.stats.active / n, class_means=class_means,
            class_count=le.class_count if has_classes else None, unit_stats=le.stats.result(),
        )

    def position(self, flat: int) -> tuple[int, ...] | None:
        """A flat spatial index as (y, x) (or (l,)); None for dense layers."""
        if not self.spec.spatial or flat < 0:
            return None
        return tuple(int(v) for v in np.unravel_index(int(flat), self.spec.spatial))

    def dead(self) -> np.ndarray:
        """ReLU-like units whose score never rose above zero."""
        return (self.max <= 0) if self.spec.relu_like else np.zeros(self.spec.channels, bool)

    def rare(self) -> np.ndarray:
        return (self.active < RARE) & ~self.dead() if self.spec.relu_like else np.zeros(self.spec.channels, bool)

    def selectivity(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(preferred class, selectivity index) per unit, or None without labels.

        Morcos et al. 2018: (mu_max - mu_rest) / (mu_max + mu_rest) over class-conditional mean
        scores, in [0, 1] for non-negative units (0: no preference, 1: fires for one class only).
        For units that can go negative the index is computed on scores shifted to start at 0.
        """
        if self.class_means is None:
            return None
        cm = np.where(self.class_count[:, None] > 0, self.class_means, np.nan)
        cm = cm - np.minimum(np.nanmin(cm, axis=0), 0)[None, :]
        best = np.nanargmax(np.where(np.isnan(cm), -np.inf, cm), axis=0)
        mu_max = cm[best, np.arange(cm.shape[1])]
        rest = np.where(np.arange(cm.shape[0])[:, None] == best[None, :], np.nan, cm)
        with warnings.catch_warnings():  # a unit whose data holds one class only: no "rest", index 0
            warnings.simplefilter("ignore", RuntimeWarning)
            mu_rest = np.nanmean(rest, axis=0) if cm.shape[0] > 1 else np.zeros_like(mu_max)
        with np.errstate(invalid="ignore", divide="ignore"):
            si = np.where(mu_max + mu_rest > 0, (mu_max - mu_rest) / (mu_max + mu_rest), 0.0)
        return best, si

    def peak_consistency(self) -> tuple[list[tuple[int, ...] | None], np.ndarray]:
        """Per unit: the most common peak position among its top examples, and its share.

        A conv unit whose top examples all peak at one place responds to something that sits at a
        fixed position (a watermark, a border, a planted marker), not to an object anywhere.
        """
        where, share = [], np.zeros(self.spec.channels)
        for u in range(self.spec.channels):
            n = len(self.top.ids[u])
            pos = self.top.pos[u][:n]
            if not self.spec.spatial or n == 0:
                where.append(None)
                continue
            values, counts = np.unique(pos, return_counts=True)
            where.append(self.position(values[counts.argmax()]))
            share[u] = counts.max() / n
        return where, share

    def top_label_mix(self) -> np.ndarray | None:
        """(U, C) share of each class among a unit's top-k examples."""
        if self.class_means is None:
            return None
        c = self.class_means.shape[0]
        mix = np.zeros((self.spec.channels, c))
        for u in range(self.spec.channels):
            labs = self.top.labels[u][self.top.labels[u] >= 0]
            if len(labs):
                mix[u] = np.bincount(labs, minlength=c) / len(labs)
        return mix


@dataclass
class ExamplesResult(NotebookMixin):
    """Per layer and unit: ranked examples, score distributions, class preferences."""

    layers: dict[str, LayerResult]
    k: int
    reduce: str
    classes: list[str]
    columns: list[str] | None = None
    x_mean: np.ndarray | None = None
    x_std: np.ndarray | None = None
    pictures: dict[str, object] = field(default_factory=dict)  # image name -> PIL image
    rows: dict[str, list] | None = None  # vector inputs: feature values of the examples shown
    profiles: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> (U, columns) standardized
    boxes: dict[tuple[str, int, int], tuple[int, int, int, int]] = field(default_factory=dict)

    def layer_stats(self) -> LayerStatsResult:
        """The layer summary (dead units, mean activation, sparsity) from the same pass."""
        names = list(self.layers)
        return LayerStatsResult(
            names, {n: self.layers[n].spec.type for n in names}, {n: self.layers[n].spec.relu_like for n in names},
            {n: self.layers[n].unit_stats for n in names}, max((l.n for l in self.layers.values()), default=0))

    def tables(self) -> dict[str, dict[str, list]]:
        units: dict[str, list] = {k: [] for k in (
            "layer", "unit", "index", "mean", "std", "min", "max", "active_fraction", "dead", "rare", "peak_at", "peak_share",
            *[f"q{int(q * 100):02d}" for q in QUANTILES], "preferred_class", "selectivity", "top_class_share")}
        ex: dict[str, list] = {k: [] for k in ("layer", "unit", "kind", "rank", "id", "score", "y", "x", "label",
                                                "box_y0", "box_x0", "box_y1", "box_x1")}
        hist: dict[str, list] = {k: [] for k in ("layer", "unit", "bin", "lo", "hi", "count")}
        for name, lr in self.layers.items():
            sel = lr.selectivity()
            mix = lr.top_label_mix()
            dead, rare = lr.dead(), lr.rare()
            peak_at, peak_share = lr.peak_consistency()
            for u in range(lr.spec.channels):
                units["layer"].append(name)
                units["unit"].append(lr.spec.address(u))
                units["index"].append(u)
                for col, arr in (("mean", lr.mean), ("std", lr.std), ("min", lr.min), ("max", lr.max),
                                 ("active_fraction", lr.active)):
                    units[col].append(float(arr[u]))
                units["dead"].append(bool(dead[u]))
                units["rare"].append(bool(rare[u]))
                units["peak_at"].append(",".join(map(str, peak_at[u])) if peak_at[u] else None)
                units["peak_share"].append(float(peak_share[u]) if peak_at[u] else None)
                for qi, q in enumerate(QUANTILES):
                    units[f"q{int(q * 100):02d}"].append(float(lr.quantiles[u, qi]))
                units["preferred_class"].append(self.classes[sel[0][u]] if sel is not None else None)
                units["selectivity"].append(float(sel[1][u]) if sel is not None else None)
                units["top_class_share"].append(float(mix[u].max()) if mix is not None else None)
                kinds = [("top", lr.top), ("bottom", lr.bottom)] + [(f"range{b}", r) for b, r in enumerate(lr.ranged)]
                for kind, rk in kinds:
                    for rank, id_ in enumerate(rk.ids[u]):
                        p = lr.position(rk.pos[u, rank])
                        ex["layer"].append(name)
                        ex["unit"].append(lr.spec.address(u))
                        ex["kind"].append(kind)
                        ex["rank"].append(rank)
                        ex["id"].append(id_)
                        s = rk.scores[u, rank]
                        ex["score"].append(None if np.isnan(s) else float(s))
                        ex["y"].append(p[0] if p else None)
                        ex["x"].append(p[-1] if p and len(p) > 1 else None)
                        lab = int(rk.labels[u, rank])
                        ex["label"].append(self.classes[lab] if lab >= 0 and self.classes else None)
                        # the receptive field of the peak, in input pixels [y0, x0, y1, x1) (top examples drawn)
                        box = self.boxes.get((name, u, rank)) if kind == "top" else None
                        for i, col in enumerate(("box_y0", "box_x0", "box_y1", "box_x1")):
                            ex[col].append(None if box is None else int(box[i]))
                edges = lr.hist_edges[u]
                counts = lr.hist_counts[u]
                for b in range(len(counts)):
                    hist["layer"].append(name)
                    hist["unit"].append(lr.spec.address(u))
                    hist["bin"].append(b)
                    hist["lo"].append(float(lr.min[u]) if b == 0 else float(edges[min(b - 1, len(edges) - 1)]))
                    hist["hi"].append(float(lr.max[u]) if b == len(counts) - 1 else float(edges[b]))
                    hist["count"].append(int(counts[b]))
        out = {"units": units, "examples": ex, "histograms": hist}
        if self.rows is not None:
            out["rows"] = self.rows
        if self.profiles:
            prof: dict[str, list] = {"layer": [], "unit": [], "column": [], "z": []}
            for name, p in self.profiles.items():
                for u in range(p.shape[0]):
                    for c, col in enumerate(self.columns):
                        prof["layer"].append(name)
                        prof["unit"].append(self.layers[name].spec.address(u))
                        prof["column"].append(col)
                        prof["z"].append(float(p[u, c]))
            out["profiles"] = prof
        return out

    def images(self) -> dict:
        return dict(self.pictures)

    def summary(self) -> dict:
        findings, layers = [], []
        for name, lr in self.layers.items():
            dead, rare = lr.dead(), lr.rare()
            sel = lr.selectivity()
            entry = {"layer": name, "source": lr.spec.source or name, "type": lr.spec.type, "units": lr.spec.channels,
                     "spatial": list(lr.spec.spatial),
                     "relu_like": lr.spec.relu_like, "dead": int(dead.sum()), "rare": int(rare.sum()),
                     "n": lr.n}
            if sel is not None:
                best, si = sel
                entry["selective"] = int((si >= SELECTIVE).sum())
                top = np.argsort(-np.nan_to_num(si, nan=-1))[:3]
                entry["most_selective"] = [{"unit": lr.spec.address(u), "class": self.classes[best[u]],
                                            "selectivity": float(si[u])} for u in top]
            layers.append(entry)
            if sel is not None and lr.spec.channels > 1:
                best, si = sel
                strong = si >= SELECTIVE
                if strong.any():
                    u = int(np.nanargmax(si))
                    findings.append(
                        f"In {name}, {int(strong.sum())} of {lr.spec.channels} units prefer one class "
                        f"(selectivity index >= {SELECTIVE}); the most selective, {lr.spec.address(u)}, fires mostly for "
                        f"'{self.classes[best[u]]}' ({si[u]:.2f}).")
        return {"k": self.k, "reduce": self.reduce, "classes": self.classes, "layers": layers,
                "findings": findings, "has_pictures": bool(self.pictures), "vector_input": self.columns is not None}


def examples(subject, data, layers: Sequence[str] | None = None, *, k: int = 16, reduce: str = "max",
             limit: int | None = None, batch_size: int = 64, pictures: bool = True, max_units: int | None = 64,
             checkpoint=None, progress: bool = True, engine=None) -> ExamplesResult:
    """Which real inputs excite each unit of ``layers`` (default: the Subject's default layers).

    One streaming pass; ``reduce`` ranks examples by each unit's spatial ``"max"`` or ``"mean"``.
    With ``checkpoint`` (a file path) an interrupted pass resumes where it stopped. ``engine="ray"``
    (or a :class:`~neuronscope.engines.ray_engine.RayEngine`) shards the pass over a Ray cluster.
    """
    from ..engines import get_engine
    from .stream import run_pass

    reducer = examples_reducer(subject, data, layers, k=k, reduce=reduce)
    key = _pass_key(subject, data, reducer, limit)
    run_pass(subject, data, [s.name for s in reducer.specs], {"examples": reducer}, reduce=reduce_activation, limit=limit,
             batch_size=batch_size, checkpoint=checkpoint, key=key, desc="dataset examples", progress=progress,
             engine=get_engine(engine))
    return finish_examples(reducer, subject, data, pictures=pictures, max_units=max_units)


def examples_reducer(subject, data, layers: Sequence[str] | None = None, *, k: int = 16,
                     reduce: str = "max") -> ExamplesReducer:
    """A reducer for ``layers`` of ``subject`` over ``data`` (class names when labels exist)."""
    layers = list(layers) if layers else subject.default_layers()
    classes = subject.classes if (subject.task == "classification" and getattr(data, "task", None) == "classification") else None
    columns = subject.columns or (data.columns if len(subject.input_shape) == 1 else None)
    if columns is None and len(subject.input_shape) == 1:
        columns = [f"x{i}" for i in range(subject.input_shape[0])]
    return ExamplesReducer(layer_specs(subject, layers), k=k, classes=classes, reduce=reduce, columns=columns)


def _pass_key(subject, data, reducer, limit) -> str:
    from ..store import content_hash, model_hash

    return content_hash(model_hash(subject.model), subject.describe(), data.source, data.ids(), limit,
                        [s.name for s in reducer.specs], reducer.k, reducer.reduce)


def finish_examples(reducer: ExamplesReducer, subject, data, *, pictures: bool = True,
                    max_units: int | None = 64) -> ExamplesResult:
    """The result of a finished pass, with pictures (images) or feature values (vectors)."""
    from .example_pictures import render

    result = reducer.result()
    if result.columns is not None:
        _attach_rows(result, data)
    elif pictures:
        result.pictures = render(result, subject, data, max_units=max_units)
    return result


def _attach_rows(result: ExamplesResult, data) -> None:
    """Vector inputs: the feature values of every top example, and each unit's input profile:
    how its top-k rows differ from the data average, per column, in standard deviations."""
    ids = sorted({i for lr in result.layers.values() for i in (id_ for row in lr.top.ids for id_ in row)})
    if not ids:
        return
    x = data.get(ids).x.double().reshape(len(ids), -1).numpy()
    where = {i: n for n, i in enumerate(ids)}
    result.rows = {"id": ids, **{c: x[:, j].tolist() for j, c in enumerate(result.columns)}}
    std = np.where(result.x_std > 0, result.x_std, 1.0)
    for name, lr in result.layers.items():
        prof = np.zeros((lr.spec.channels, len(result.columns)))
        for u in range(lr.spec.channels):
            rows = [where[i] for i in lr.top.ids[u]]
            if rows:
                prof[u] = (x[rows].mean(0) - result.x_mean) / std
        result.profiles[name] = prof
