"""Dataset examples for directions: the same streaming pass as for neurons, on direction scores.

Each :class:`~.book.DirectionSet` becomes one group of "units" (named ``layer:nmf`` and so on) fed
to the dataset-examples reducer (:mod:`neuronscope.analyses.examples`): top and bottom examples
with the position of the peak, examples across the range, histograms, class preferences. Every
direction then has what a neuron has, and its unit page renders from the same tables. Neurons of
the same layers can ride along in the same pass (group ``layer:neuron``), so that neurons and
directions are compared on exactly the same examples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..examples import ExamplesReducer, ExamplesResult, LayerSpec, _attach_rows, reduce_activation
from ..stream import run_pass

#: Groups that get pictures and unit pages; random directions and the neurons only feed comparisons.
ADDRESSABLE = ("nmf", "pca", "sae", "dir")


def group_name(layer: str, kind: str) -> str:
    return f"{layer}:{kind}"


def direction_examples(subject, data, sets: Sequence, *, neurons: Sequence[str] = (), k: int = 16,
                       reduce: str = "max", limit: int | None = None, batch_size: int = 64, pictures: bool = True,
                       max_units: int | None = 64, checkpoint=None, key: str = "",
                       progress: bool = True) -> ExamplesResult:
    """Rank real examples for every direction of ``sets`` (and every unit of the ``neurons`` layers)."""
    specs = []
    for d in sets:
        info = subject.layer(d.layer)
        specs.append(LayerSpec(group_name(info.name, d.kind), d.k, tuple(info.spatial), d.kind in ("nmf", "sae"),
                               d.title, source=info.name, unit_names=tuple(d.names)))
    for layer in neurons:
        info = subject.layer(layer)
        specs.append(LayerSpec(group_name(info.name, "neuron"), int(info.channels), tuple(info.spatial),
                               subject.is_relu_like(info.name), info.type, source=info.name))
    classes = subject.classes if (subject.task == "classification" and getattr(data, "task", None) == "classification") else None
    columns = subject.columns or (data.columns if len(subject.input_shape) == 1 else None)
    reducer = _DirectionReducer(specs, list(sets), k=k, classes=classes, reduce=reduce, columns=columns)
    layers = sorted({s.source for s in specs})
    run_pass(subject, data, layers, {"directions": reducer}, limit=limit, batch_size=batch_size,
             checkpoint=checkpoint, key=key, desc="direction examples", progress=progress)
    result = reducer.result()
    if result.columns is not None:
        _attach_rows(result, data)
    elif pictures:
        from ..example_pictures import render

        shown = {n: lr for n, lr in result.layers.items() if n.rsplit(":", 1)[1] in ADDRESSABLE}
        view = ExamplesResult(layers=shown, k=result.k, reduce=result.reduce, classes=result.classes)
        result.pictures = render(view, subject, data, max_units=max_units)
        result.boxes = view.boxes
    return result


class _DirectionReducer(ExamplesReducer):
    """An examples reducer fed with direction scores computed from the captured layer outputs."""

    def __init__(self, specs, sets, **kw):
        super().__init__(specs, **kw)
        self.sets = {group_name(d.layer, d.kind): d for d in sets}

    def add(self, step) -> None:
        acts = {}
        for s in self.specs:
            a = step.activations[s.source]
            a = a[0] if isinstance(a, tuple) else a
            d = self.sets.get(s.name)
            scores = d.scores(a) if d is not None else a.detach()
            acts[s.name] = reduce_activation(torch.as_tensor(scores))
        self.add_batch(step.batch.ids, acts, step.batch.y, step.batch.x)
