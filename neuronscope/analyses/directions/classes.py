"""How each direction feeds the output classes: the class logit attributed to the direction.

With the layer's activation at a position rebuilt as ``offset + sum_i code_i write_i`` (see
:mod:`.book`), direction ``i``'s contribution to logit ``c`` on one example is

    sum over positions of  code_i(pos) * < write_i, d logit_c / d activation(pos) >

(gradient x activation read in the direction's coordinates, as "The Building Blocks of
Interpretability", Olah et al. 2018, attributes to NMF factors). The gradient comes from Captum's
``LayerGradientXActivation`` with ``multiply_by_inputs=False``. Each example is attributed to its own
class (its label, else the prediction), and contributions are averaged per class, like the class
drivers of single units (:mod:`neuronscope.analyses.attribution.drivers`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...errors import DataError, UnsupportedError
from ...progress import progress_bar
from ..attribution.drivers import _first, _labels, _layer_module
from ..attribution.targets import class_logits
from ..stream import spread_batches
from .rows import to_rows
from ...notebook import NotebookMixin


@dataclass
class ClassLinks(NotebookMixin):
    """(classes x directions) mean contribution of each direction to each class's logit."""

    layer: str
    kind: str
    names: list[str]
    classes: list[str]
    contributions: np.ndarray  # (K classes, D directions)
    counts: np.ndarray  # examples per class
    by: str  # "label" or "prediction"

    def strongest(self, direction: int) -> tuple[str, float, float]:
        """The class a direction adds most to: (class, contribution, its share of the direction's positive total)."""
        col = self.contributions[:, direction]
        k = int(np.argmax(col))
        pos = float(col[col > 0].sum())
        return self.classes[k], float(col[k]), float(col[k] / pos) if pos > 0 else 0.0

    def tables(self) -> dict[str, dict[str, list]]:
        rows: dict[str, list] = {k: [] for k in ("layer", "unit", "class", "contribution")}
        for d, name in enumerate(self.names):
            for k, cls in enumerate(self.classes):
                for col, v in zip(rows, (self.layer, f"{self.layer}:{name}", cls, float(self.contributions[k, d]))):
                    rows[col].append(v)
        return {"class_links": rows}

    def sentences(self, top: int = 6) -> list[str]:
        out = []
        for k, cls in enumerate(self.classes):
            if self.counts[k] == 0:
                continue
            row = self.contributions[k]
            best = np.argsort(-row)[:top]
            pos = float(row[row > 0].sum())
            if pos <= 0:
                continue
            parts = [f"{self.layer}:{self.names[d]} ({row[d] / pos:.0%})" for d in best[:3] if row[d] > 0]
            out.append(f"class {cls!r} rests most on " + ", ".join(parts))
        return out


def class_links(subject, data, directions, *, limit: int | None = 512, batch_size: int = 64,
                progress: bool = False) -> ClassLinks:
    """Mean contribution of each direction of ``directions`` (a DirectionSet) to each class logit."""
    if subject.task != "classification":
        raise UnsupportedError("Class links need a classifier; this is a regression model.")
    from captum.attr import LayerGradientXActivation

    module = _layer_module(subject, directions.layer)
    forward = class_logits(subject)
    names = subject.classes
    write = torch.from_numpy(directions.write).double()  # (D, C)
    sums = torch.zeros(len(names), directions.k, dtype=torch.float64)
    counts = torch.zeros(len(names), dtype=torch.long)
    by = "label"
    total = len(data) if limit is None else min(int(limit), len(data))
    bar = progress_bar(total=total, desc=f"class links {directions.layer}", unit="ex", enabled=progress)
    try:
        with subject.borrowed():
            grad_of = LayerGradientXActivation(forward, module, multiply_by_inputs=False)
            for b in spread_batches(data, limit, batch_size):
                x = b.x.to(subject.device, subject.dtype)
                with torch.no_grad(), subject.capture([directions.layer]) as cap:
                    z = forward(x)
                acts = cap[directions.layer]
                if b.y is not None and getattr(data, "task", None) == "classification":
                    k = _labels(b.y, len(names))
                else:
                    k, by = z.argmax(1).cpu(), "prediction"
                grad = _first(grad_of.attribute(x, target=k.to(subject.device))).detach()
                rows = to_rows(acts.detach().float().cpu())  # (N*P, C)
                codes = directions.codes(rows).double()  # (N*P, D)
                along = to_rows(grad.double().cpu()) @ write.T  # (N*P, D): <write_i, grad>
                per = (codes * along).reshape(len(x), -1, directions.k).sum(1)  # (N, D)
                sums.index_add_(0, k, per)
                counts += torch.bincount(k, minlength=len(names))
                bar.update(len(x))
    finally:
        bar.close()
    if counts.sum() == 0:
        raise DataError("No readable examples in the data: nothing to attribute.")
    mean = (sums / counts.clamp(min=1)[:, None]).numpy()
    return ClassLinks(directions.layer, directions.kind, list(directions.names), list(names), mean,
                      counts.numpy(), by)
