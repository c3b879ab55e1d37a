"""The report's attribution section: a gallery of explained inputs with their trust evidence,
the units that drive each class, and what in each unit's top examples makes it fire.

It composes :func:`~.explain.explain` and :func:`~.drivers.class_drivers`; the units and their
top examples come from the dataset-examples section already in the store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ...data import Batch
from ...errors import NeuronscopeError
from ...units import slug
from .drivers import ClassDrivers, class_drivers
from .explain import Explanation, explain


@dataclass
class UnitExplanation:
    address: str
    layer: str
    unit: int
    explanation: Explanation  # one row per top example


@dataclass
class AttributionSection:
    gallery: Explanation
    drivers: ClassDrivers | None = None
    units: list[UnitExplanation] = field(default_factory=list)
    unit_method: str = "integrated_gradients"
    seconds: float = 0.0

    def tables(self) -> dict:
        out = self.gallery.tables()
        if self.drivers is not None:
            out.update(self.drivers.tables())
        if self.units:
            rows = {k: [] for k in ("address", "layer", "unit", "rank", "id", "method", "score", "image")}
            for ue in self.units:
                for rank, id_ in enumerate(ue.explanation.ids):
                    for k, v in (("address", ue.address), ("layer", ue.layer), ("unit", ue.unit), ("rank", rank),
                                 ("id", id_), ("method", self.unit_method),
                                 ("score", float(ue.explanation.scores[rank])),
                                 ("image", f"units/{slug(ue.layer)}/{ue.unit}/{rank}")):
                        rows[k].append(v)
            out["units"] = rows
        return out

    def images(self) -> dict:
        out = self.gallery.images()
        for ue in self.units:
            e = ue.explanation
            if e.is_image:
                for rank in range(len(e)):
                    out[f"units/{slug(ue.layer)}/{ue.unit}/{rank}"] = e.overlay(self.unit_method, rank, size=96)
        return out

    def summary(self) -> dict:
        s = self.gallery.summary()
        if self.drivers is not None:
            s["drivers"] = {"layer": self.drivers.layer, "method": self.drivers.method,
                            "sentences": {c: self.drivers.sentence(c) for c in self.drivers.classes
                                          if self.drivers.counts[self.drivers.classes.index(c)] > 0}}
        if self.units:
            s["unit_method"] = self.unit_method
        s["seconds"] = round(self.seconds, 2)
        return s


def pick_inputs(data, n: int, pool: int = 2048) -> Batch:
    """Up to ``n`` examples spread over the classes (the first of each class in turn) from a pool
    of ``pool`` examples evenly spaced over the data (folders list one class after another), or
    the first ``n`` when the data is unlabelled."""
    ids = data.ids()
    step = max(1, len(ids) // pool)
    try:
        allb = Batch.cat([data.get(ids[s:s + 256 * step:step]) for s in range(0, len(ids), 256 * step)][:pool])
    except NeuronscopeError:  # an unreadable file among them: read in order instead
        allb = Batch.cat(list(data.batches(256, limit=pool)))
    if allb.y is None or allb.y.dtype.is_floating_point:
        keep = list(range(min(n, len(allb))))
    else:
        by_class: dict[int, list[int]] = {}
        for i, y in enumerate(allb.y.tolist()):
            by_class.setdefault(int(y), []).append(i)
        keep, r = [], 0
        while len(keep) < min(n, len(allb)):
            row = [members[r] for _, members in sorted(by_class.items()) if r < len(members)]
            if not row:
                break
            keep += row[: n - len(keep)]
            r += 1
        keep.sort()
    return Batch([allb.ids[i] for i in keep], allb.x[keep], None if allb.y is None else allb.y[keep])


class _Picked:
    """A Batch read like a dataset (``len``, ``batches``): the class-balanced sample for drivers."""

    def __init__(self, batch: Batch, classes):
        self.batch, self.classes = batch, classes

    def __len__(self) -> int:
        return len(self.batch)

    def batches(self, batch_size: int = 64, *, limit: int | None = None):
        n = len(self) if limit is None else min(limit, len(self))
        for s in range(0, n, batch_size):
            e = min(s + batch_size, n)
            yield Batch(self.batch.ids[s:e], self.batch.x[s:e], None if self.batch.y is None else self.batch.y[s:e])


def _driver_layer(subject, layers) -> str | None:
    final = subject.final_layer()
    usable = [name for name in layers if name != final and subject.layer(name).call is None
              and subject.layer(name).channels]
    return usable[-1] if usable else None


def attribution_section(subject, data, store, layers, *, inputs: int = 12, units_per_layer: int = 4,
                        top: int = 3, n_steps: int = 50, progress: bool = True,
                        ranked: dict | None = None, engine=None) -> AttributionSection:
    """Explain a spread of inputs with the default methods and every check; rank the units
    driving each class at the last hidden layer; explain each listed unit on its top examples.
    With an ``engine`` the explanations (the gallery and each unit's) run as tasks on its workers."""
    t0 = time.perf_counter()
    batch = pick_inputs(data, inputs)
    calls = [((batch,), dict(target="predicted", data=data, n_steps=n_steps, progress=progress and engine is None))]
    drivers = None
    if subject.task == "classification" and subject.hookable:
        layer = _driver_layer(subject, layers)
        if layer is not None:
            # a class-balanced sample: data folders list one class after another
            sample = _Picked(pick_inputs(data, 512), data.classes)
            drivers = class_drivers(subject, sample, layer, by="label" if data.classes is not None else "prediction",
                                    progress=progress)
    units = []
    image = len(subject.input_shape) == 3
    if image and store is not None and store.has("examples") and units_per_layer:
        t = store.table("examples", "examples")
        top_ids: dict[tuple[str, int], list[str]] = {}
        for layer, u, kind, rank, id_ in zip(t["layer"], t["unit"], t["kind"], t["rank"], t["id"]):
            if kind == "top" and rank < top:
                top_ids.setdefault((layer, int(str(u).rsplit(":", 1)[1]) if isinstance(u, str) else int(u)),
                                   []).append(id_)
        final = subject.final_layer()
        for layer in layers:
            if layer == final or subject.layer(layer).call is not None:
                continue
            c = subject.layer(layer).channels or 0
            order = (ranked or {}).get(layer, {})
            for u in sorted(range(c), key=lambda u: order.get(u, (2, 0, u)))[:units_per_layer]:
                ids = top_ids.get((layer, u))
                if not ids:
                    continue
                units.append((layer, u))
                calls.append(((data.get(ids),), dict(target=f"{layer}:{u}", method="integrated_gradients",
                                                     baseline="blur", n_steps=max(8, n_steps // 2), curves=False,
                                                     randomisation=False)))
    if engine is not None:
        done = engine.map_calls(subject, data, explain, calls, desc="attribution", progress=progress)
    else:
        done = [explain(subject, *args, **kwargs) for args, kwargs in calls]
    unit_results = [UnitExplanation(f"{layer}:{u}", layer, u, e) for (layer, u), e in zip(units, done[1:])]
    return AttributionSection(done[0], drivers, unit_results, seconds=time.perf_counter() - t0)


def marker_shares(e: Explanation, box) -> dict[str, float]:
    """Mean share of attribution mass inside ``box`` per method (for tests and notes)."""
    return {m: float(np.mean(v)) for m, v in e.mass_in(box).items()}


__all__ = ["AttributionSection", "attribution_section", "pick_inputs", "marker_shares"]
