"""Which units drive a class: a layer's units ranked by their contribution to the class logit.

A unit's contribution to logit ``k`` on one example is, by one of two methods (both via Captum):

- ``grad_x_activation``: the unit's activation times the logit's gradient with respect to it,
  summed over the unit's spatial positions (gradient x input, Shrikumar et al. 2016, "Not Just a
  Black Box", read at a hidden layer). When the layer reaches the logits through linear maps
  only, the contributions plus the final bias add up to the logit exactly.
- ``conductance``: the flow of the logit's integrated gradients (from the all-zero raw input)
  through the unit (Dhamdhere, Yan & Sundararajan 2018, "How Important Is a Neuron?"). The
  contributions add up to ``logit(x) - logit(0)`` up to the integration error.

The per-example contributions are averaged over the examples of each class (by label, or by
prediction), giving a (classes x units) matrix; a class page lists its largest entries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from ... import imaging
from ...errors import DataError, OptionError, UnsupportedError
from ...progress import progress_bar
from ...subject import Subject
from .targets import class_index, class_logits
from ...notebook import NotebookMixin

METHODS = ("grad_x_activation", "conductance")
BY = ("label", "prediction")
#: The heatmap is left out above these sizes (it would be unreadable).
MAX_IMAGE_CLASSES, MAX_IMAGE_UNITS = 64, 512
#: A sentence names a unit after the first only when it carries at least this share.
SENTENCE_MIN_SHARE = 0.05


@dataclass
class ClassDrivers(NotebookMixin):
    """Per-class mean contributions of one layer's units to the class logits."""

    layer: str
    method: str  # "grad_x_activation" or "conductance"
    classes: list[str]
    contributions: np.ndarray  # (K, C): mean over class k's examples of unit c's contribution to logit k
    counts: np.ndarray  # (K,) examples per class used
    by: str  # "label" or "prediction": which examples count as class k
    seconds: float
    n_top: int = 10  # units per class in the table
    # conductance only: mean |units' sum - (logit(x) - logit(0))| / mean |logit(x) - logit(0)|
    completeness: float | None = None

    def _index(self, cls) -> int:
        if isinstance(cls, np.integer):
            cls = int(cls)
        return class_index(SimpleNamespace(classes=self.classes), cls)

    def _shares(self, k: int) -> np.ndarray:
        row = self.contributions[k]
        positive = float(row[row > 0].sum())
        return row / positive if positive > 0 else np.zeros_like(row)

    def top(self, cls: int | str, n: int = 5) -> list[tuple[str, float, float]]:
        """The class's ``n`` largest contributors: (address, contribution, share of the class's
        positive contribution). Empty when the class had no examples."""
        k = self._index(cls)
        if self.counts[k] == 0:
            return []
        row, shares = self.contributions[k], self._shares(k)
        order = np.argsort(-row, kind="stable")[:n]
        return [(f"{self.layer}:{c}", float(row[c]), float(shares[c])) for c in order]

    def sentence(self, cls: int | str) -> str:
        """One line for a class page, e.g. "class 'cat' rests mostly on conv3:12 (41%), ..."."""
        k = self._index(cls)
        name = f"class {self.classes[k]!r}"
        if self.counts[k] == 0:
            return f"{name} had no examples {'labelled' if self.by == 'label' else 'predicted'} as it."
        parts = [f"{a} ({s:.0%})" for i, (a, v, s) in enumerate(self.top(k, 3))
                 if v > 0 and (i == 0 or s >= SENTENCE_MIN_SHARE)]
        if not parts:
            return f"no unit of {self.layer} adds to {name} on average."
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"{name} rests mostly on {listed}"

    def tables(self) -> dict[str, dict[str, list]]:
        cols = {k: [] for k in ("layer", "class", "class_index", "unit", "address", "rank", "contribution", "share")}
        for k, name in enumerate(self.classes):
            for rank, (address, value, share) in enumerate(self.top(k, self.n_top)):
                for col, v in zip(cols, (self.layer, name, k, int(address.rsplit(":", 1)[1]), address, rank,
                                         value, share)):
                    cols[col].append(v)
        return {"drivers": cols}

    def images(self) -> dict:
        k, c = self.contributions.shape
        if k > MAX_IMAGE_CLASSES or c > MAX_IMAGE_UNITS:
            return {}
        # Each row scaled to its own largest magnitude: logits differ in scale between classes.
        scale = np.abs(self.contributions).max(1, keepdims=True)
        rows = self.contributions / np.where(scale > 0, scale, 1.0)
        return {"drivers": imaging.heatmap_image(rows, maxabs=1.0, row_labels=list(self.classes))}

    def summary(self) -> dict:
        return {
            "layer": self.layer, "method": self.method, "by": self.by, "classes": list(self.classes),
            "counts": [int(n) for n in self.counts], "n": int(self.counts.sum()),
            "units": int(self.contributions.shape[1]),
            "sentences": {name: self.sentence(k) for k, name in enumerate(self.classes)},
            "completeness": self.completeness, "seconds": self.seconds,
            "image_note": "rows scaled to each class's largest |contribution|",
        }


def unit_contributions(subject: Subject, x: torch.Tensor, layer: str, target, *,
                       method: str = "grad_x_activation", n_steps: int = 16,
                       batch_size: int = 64) -> torch.Tensor:
    """Each unit's contribution to the target logit, per example: (N, C), summed over positions.

    ``target`` is one class index per row (a sequence or tensor) or one for all rows.
    """
    _check_method(method)
    module = _layer_module(subject, layer)
    forward = class_logits(subject)
    x = torch.as_tensor(x).to(subject.device, subject.dtype)
    target = torch.as_tensor(target, dtype=torch.long, device=subject.device)
    if target.dim() == 0:
        target = target.expand(len(x))
    with subject.borrowed():
        if method == "grad_x_activation":
            from captum.attr import LayerGradientXActivation
            attribute, rows = LayerGradientXActivation(forward, module).attribute, max(1, batch_size)
            kwargs = {}
        else:
            from captum.attr import LayerConductance
            attribute = LayerConductance(forward, module).attribute
            # batch_size bounds the evaluations of one pass: a path of n_steps + 1 points per row.
            rows = max(1, batch_size // (n_steps + 1))
            kwargs = {"n_steps": n_steps, "method": "riemann_trapezoid",
                      "internal_batch_size": max(batch_size, 2 * rows)}
        parts = []
        for i in range(0, len(x), rows):
            xi = x[i:i + rows]
            if method == "conductance":
                kwargs["baselines"] = torch.zeros_like(xi)
            parts.append(_per_channel(_first(attribute(xi, target=target[i:i + rows], **kwargs))))
        return torch.cat(parts)


def class_drivers(subject: Subject, data, layer: str, *, method: str = "grad_x_activation", by: str = "label",
                  limit: int | None = 1024, batch_size: int = 64, n_steps: int = 16, top: int = 10,
                  progress: bool = True) -> ClassDrivers:
    """Rank ``layer``'s units by their mean contribution to each class's logit over ``data``.

    Class ``k``'s examples are those labelled ``k`` (``by="label"``), or predicted ``k``
    (``by="prediction"``, and always for unlabelled data). Each example is attributed to its own
    class only, so one backward pass per batch serves every class.
    """
    _check_method(method)
    if by not in BY:
        raise OptionError(f"by must be one of {', '.join(map(repr, BY))}, got {by!r}.")
    if subject.task != "classification":
        raise UnsupportedError("Class drivers need a classifier; this is a regression model (it has no classes).")
    _layer_module(subject, layer)  # errors before the pass
    names = subject.classes
    k_classes = len(names)
    forward = class_logits(subject)
    t0 = time.perf_counter()
    sums = counts = None
    used = by
    gap_err = gap_abs = 0.0
    total = len(data) if limit is None else min(int(limit), len(data))
    bar = progress_bar(total=total, desc=f"drivers {layer}", unit="ex", enabled=progress)
    try:
        for b in data.batches(batch_size, limit=limit):
            x = b.x.to(subject.device, subject.dtype)
            if by == "prediction" or b.y is None or method == "conductance":
                with torch.no_grad(), subject.borrowed():
                    z = forward(x)
            if by == "label" and b.y is not None:
                k = _labels(b.y, k_classes)
            else:
                k, used = z.argmax(1).cpu(), "prediction"
            contrib = unit_contributions(subject, x, layer, k, method=method, n_steps=n_steps,
                                         batch_size=batch_size).double().cpu()
            if sums is None:
                sums = torch.zeros(k_classes, contrib.shape[1], dtype=torch.float64)
                counts = torch.zeros(k_classes, dtype=torch.long)
            sums.index_add_(0, k, contrib)
            counts += torch.bincount(k, minlength=k_classes)
            if method == "conductance":
                with torch.no_grad(), subject.borrowed():
                    z0 = forward(torch.zeros_like(x))
                picked = k.to(z.device)[:, None]
                gap = (z.gather(1, picked) - z0.gather(1, picked))[:, 0].double().cpu()
                gap_err += float((contrib.sum(1) - gap).abs().sum())
                gap_abs += float(gap.abs().sum())
            bar.update(len(b))
    finally:
        bar.close()
    if sums is None:
        raise DataError("No readable examples in the data: nothing to attribute.")
    mean = (sums / counts.clamp(min=1)[:, None]).numpy()
    completeness = (gap_err / gap_abs if gap_abs > 0 else 0.0) if method == "conductance" else None
    return ClassDrivers(layer=subject.layer(layer).name, method=method, classes=list(names), contributions=mean,
                        counts=counts.numpy(), by=used, seconds=time.perf_counter() - t0, n_top=top,
                        completeness=completeness)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise OptionError(f"Unknown driver method {method!r}: choose {' or '.join(map(repr, METHODS))}.")


def _layer_module(subject: Subject, layer: str) -> torch.nn.Module:
    subject._require_hooks("a layer's units")
    info = subject.layer(layer)  # an unknown name raises with the closest matches
    if info.call is not None:
        raise UnsupportedError(
            f"{info.name!r} is one call of a module used several times in the forward pass; attribution "
            "hooks the module, so it cannot tell the calls apart. Pick a layer that is called once.")
    if not info.output_shape:
        raise UnsupportedError(f"Layer {info.name!r} gives no per-example tensor with units to attribute to.")
    if subject.fixed_batch is not None:
        raise UnsupportedError("Class drivers cannot run on a model exported at a fixed batch size: attribution "
                               "needs batches of other sizes.")
    return subject.module(info.name)


def _labels(y: torch.Tensor, k_classes: int) -> torch.Tensor:
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise DataError("The data's labels are not class indices (they look like regression targets).")
    k = y.reshape(-1).long().cpu()
    if len(k) and (int(k.min()) < 0 or int(k.max()) >= k_classes):
        raise DataError(f"Labels run from {int(k.min())} to {int(k.max())}, but the model has {k_classes} classes: "
                        "check that the data's classes match the model's (--classes).")
    return k


def _first(attr):
    # A layer with a tuple output gives one attribution per element; units are read from the first.
    return attr[0] if isinstance(attr, (tuple, list)) else attr


def _per_channel(attr: torch.Tensor) -> torch.Tensor:
    return attr.detach().reshape(attr.shape[0], attr.shape[1], -1).sum(-1) if attr.dim() > 2 else attr.detach()
