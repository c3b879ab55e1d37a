"""Model sanity, before any explanation: is this model, fed this way, any good on this data?

A classifier near chance on labelled data usually means the inputs are fed wrongly (``--mean``,
``--std``, ``--range``, channel or class order); every later picture would then be misleading.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .. import imaging
from ..errors import NeuronscopeError
from .stream import stream

#: Accuracy within this margin of the majority-class rate counts as "near chance".
NEAR_CHANCE_MARGIN = 0.10


@dataclass
class SanityResult:
    task: str
    n: int
    classes: list[str] | None = None
    accuracy: float | None = None
    chance: float | None = None
    confusion: np.ndarray | None = None  # rows: true class, columns: predicted class
    errors: dict[str, list] = field(default_factory=dict)  # most confident errors
    r2: float | None = None
    mae: float | None = None
    rmse: float | None = None
    warning: str | None = None
    labelled: bool = True
    thumbnails: list = field(default_factory=list)  # pictures of the errors, in table order

    def tables(self) -> dict[str, dict[str, list]]:
        out = {}
        if self.confusion is not None:
            out["confusion"] = {"true": list(self.classes),
                                **{p: self.confusion[:, j].tolist() for j, p in enumerate(self.classes)}}
        if self.errors:
            out["errors"] = self.errors
        return out

    def images(self) -> dict:
        return {f"error-{i:02d}": img for i, img in enumerate(self.thumbnails)}

    def summary(self) -> dict:
        s = {"task": self.task, "n": self.n, "labelled": self.labelled, "warning": self.warning,
             "thumbnails": len(self.thumbnails)}
        if self.task == "classification":
            s.update(accuracy=self.accuracy, chance=self.chance, classes=self.classes,
                     per_class_accuracy=(np.diag(self.confusion) / np.maximum(self.confusion.sum(1), 1)).tolist()
                     if self.confusion is not None else None)
        else:
            s.update(r2=self.r2, mae=self.mae, rmse=self.rmse)
        s["finding"] = self.finding()
        return s

    def finding(self) -> str:
        if not self.labelled:
            return f"The data has no labels: accuracy cannot be checked ({self.n} examples)."
        if self.warning:
            return self.warning
        if self.task == "classification":
            return (f"Accuracy {self.accuracy:.1%} on {self.n} labelled examples "
                    f"(chance: {self.chance:.1%}).")
        return f"R² = {self.r2:.3f}, MAE = {self.mae:.4g} on {self.n} examples."

    def _repr_html_(self) -> str:
        return f"<p>{self.finding()}</p>"


class SanityReducer:
    """Accumulates predictions and labels over a :func:`stream` pass."""

    def __init__(self, subject, n_errors: int = 16):
        self.subject = subject
        self.n_errors = n_errors
        self.ids, self.y, self.pred, self.conf, self.out = [], [], [], [], []
        self.labelled = True

    def add(self, step) -> None:
        b = step.batch
        if b.y is None:
            self.labelled = False
        self.ids.extend(b.ids)
        if self.subject.task == "classification":
            p = self.subject.to_probabilities(step.logits).double().cpu()
            conf, pred = p.max(1)
            self.pred.append(pred.numpy())
            self.conf.append(conf.numpy())
        else:
            self.out.append(step.logits.reshape(len(b.ids), -1).double().cpu().numpy())
        if b.y is not None:
            self.y.append(b.y.cpu().numpy())

    def state_dict(self) -> dict:
        cat = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)  # noqa: E731
        return {"ids": np.array(self.ids, dtype=str), "y": cat(self.y, np.int64), "pred": cat(self.pred, np.int64),
                "conf": cat(self.conf, np.float64),
                "out": np.concatenate(self.out) if self.out else np.zeros((0, 1)), "labelled": self.labelled}

    def merge(self, other: "SanityReducer") -> "SanityReducer":
        """This shard's examples followed by ``other``'s (merged in data order, the result is the one pass's)."""
        out = SanityReducer(self.subject, self.n_errors)
        out.ids = self.ids + other.ids
        out.y, out.pred, out.conf, out.out = (self.y + other.y, self.pred + other.pred, self.conf + other.conf,
                                              self.out + other.out)
        out.labelled = self.labelled and other.labelled
        return out

    def load_state_dict(self, state: dict) -> None:
        self.ids = [str(i) for i in state["ids"]]
        self.y = [state["y"]] if len(state["y"]) else []
        self.pred = [state["pred"]] if len(state["pred"]) else []
        self.conf = [state["conf"]] if len(state["conf"]) else []
        self.out = [state["out"]] if len(state["out"]) else []
        self.labelled = bool(state["labelled"])

    def result(self, data=None) -> SanityResult:
        """The result; with ``data`` holding images, pictures of the listed errors too."""
        res = self._result()
        ids = res.errors.get("id", [])
        if data is not None and ids and len(self.subject.input_shape) == 3 and self.subject.input_shape[0] in (1, 3):
            x = data.get(ids).x
            res.thumbnails = [imaging.input_picture(xi, self.subject.value_range, size=64) for xi in x]
        return res

    def _result(self) -> SanityResult:
        s = self.subject
        n = len(self.ids)
        if n == 0:
            raise NeuronscopeError("No readable examples in the data: nothing to check the model on.")
        if s.task == "classification":
            pred = np.concatenate(self.pred)
            res = SanityResult("classification", n, classes=s.classes, labelled=self.labelled)
            if not self.labelled:
                return res
            y = np.concatenate(self.y).astype(np.int64)
            k = len(s.classes)
            if y.min() < 0 or y.max() >= k:
                raise NeuronscopeError(
                    f"Labels run from {y.min()} to {y.max()}, but the model has {k} classes: check "
                    "that the data's classes match the model's (--classes)."
                )
            conf = np.concatenate(self.conf)
            res.accuracy = float((pred == y).mean())
            res.chance = float(np.bincount(y, minlength=k).max() / n)
            res.confusion = np.zeros((k, k), dtype=np.int64)
            np.add.at(res.confusion, (y, pred), 1)
            wrong = np.flatnonzero(pred != y)
            # ties (a confidence of exactly 1.0 is common) go by id: the same list however the pass was sharded
            wrong = wrong[np.lexsort((np.array(self.ids)[wrong], -conf[wrong]))][: self.n_errors]
            res.errors = {"id": [self.ids[i] for i in wrong], "true": [s.classes[y[i]] for i in wrong],
                          "predicted": [s.classes[pred[i]] for i in wrong],
                          "confidence": [float(conf[i]) for i in wrong]}
            present = np.unique(y)
            if len(present) == 1 and k > 1:  # "near chance" would blame the inputs for the sample
                res.warning = (
                    f"All {n} labelled examples read are of class {s.classes[present[0]]!r}, so accuracy "
                    f"({res.accuracy:.1%}) cannot be compared with chance. A limit (--limit) reads the data in "
                    "its order, and an image folder lists one class after another: raise the limit or leave it out."
                )
            elif res.accuracy <= res.chance + NEAR_CHANCE_MARGIN:
                res.warning = (
                    f"Accuracy is {res.accuracy:.1%}, near chance ({res.chance:.1%}): the model may be "
                    "fed wrongly. Check --mean/--std, --range, the channel order and the class order "
                    "(--classes); until then every picture in this report may mislead."
                )
            return res
        out = np.concatenate(self.out)
        res = SanityResult("regression", n, labelled=self.labelled)
        if not self.labelled:
            return res
        y = np.concatenate(self.y).reshape(n, -1).astype(np.float64)
        if y.shape[1] != out.shape[1]:
            raise NeuronscopeError(f"Targets have {y.shape[1]} columns but the model gives {out.shape[1]} outputs.")
        resid = out - y
        res.mae = float(np.abs(resid).mean())
        res.rmse = float(np.sqrt((resid**2).mean()))
        ss_tot = ((y - y.mean(0)) ** 2).sum()
        res.r2 = float(1 - (resid**2).sum() / ss_tot) if ss_tot > 0 else float("nan")
        k = min(self.n_errors, n)
        worst = np.lexsort((np.array(self.ids), -np.abs(resid).max(1)))[:k]  # ties by id, as above
        res.errors = {"id": [self.ids[i] for i in worst], "target": [float(y[i, 0]) for i in worst],
                      "predicted": [float(out[i, 0]) for i in worst]}
        if res.r2 < 0:
            res.warning = (
                f"R² is {res.r2:.2f}: the model predicts worse than the mean of the targets. Check the "
                "input normalization (--mean/--std), the column order and the target's units."
            )
        return res


def sanity(subject, data, *, limit: int | None = None, batch_size: int = 64, progress: bool = True) -> SanityResult:
    """Accuracy, confusion matrix and most confident errors (R², MAE for regression)."""
    red = SanityReducer(subject)
    with torch.no_grad():
        for step in stream(subject, data, limit=limit, batch_size=batch_size, desc="model sanity",
                           progress=progress):
            red.add(step)
    return red.result(data)
