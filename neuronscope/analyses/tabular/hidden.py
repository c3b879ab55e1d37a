"""The hidden units of a network on plain numeric vectors, read from its first Linear layer.

Each unit of the first ``nn.Linear`` is a weighted sum of the input columns: its weights say which
columns it adds up and which it sets against each other. They are given as the layer sees them
(after the model's own normalization, so per std of each column when the model standardizes) and,
when the model normalizes, per raw unit of each column with the matching bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...errors import UnsupportedError
from ...imaging import heatmap_image
from ...subject import Subject

TOP = 3  # columns named per unit
MAX_IMAGE_UNITS = 128  # units drawn in the heatmap


@dataclass
class HiddenUnits:
    """The first Linear layer's units as weights on the input columns."""

    layer: str  # the first parameterised layer (an nn.Linear on the inputs)
    columns: list[str]
    weights: np.ndarray  # (units, F) per normalized input unit (the model's own normalization applied)
    weights_original: np.ndarray | None  # (units, F) per raw unit; None when the model does not normalize
    bias: np.ndarray  # (units,)
    top_columns: list[list[tuple[str, float]]]  # per unit its largest |weight| columns, with sign
    bias_original: np.ndarray | None = None  # (units,) the bias for raw inputs

    def names(self) -> list[str]:
        return [f"{self.layer}:{u}" for u in range(len(self.weights))]

    def sentences(self) -> list[str]:
        """Per unit: "linear1:3 weighs 'age' (+1.2) against 'fare' (-0.8)"."""
        out = []
        for name, top in zip(self.names(), self.top_columns):
            pos = [f"{c!r} ({w:+.2g})" for c, w in top if w > 0]
            neg = [f"{c!r} ({w:+.2g})" for c, w in top if w < 0]
            if pos and neg:
                out.append(f"{name} weighs {_and(pos)} against {_and(neg)}")
            elif pos:
                out.append(f"{name} adds up {_and(pos)}")
            elif neg:
                out.append(f"{name} weighs against {_and(neg)}")
            else:
                out.append(f"{name} ignores every column (all weights are 0)")
        return out

    def tables(self) -> dict[str, dict[str, list]]:
        units, f = self.weights.shape
        long = {"unit": [n for n in self.names() for _ in range(f)],
                "column": list(self.columns) * units,
                "weight": self.weights.ravel().tolist()}
        if self.weights_original is not None:
            long["weight_original"] = self.weights_original.ravel().tolist()
        per_unit = {"unit": self.names(), "bias": self.bias.tolist(),
                    "top": ["; ".join(f"{c} ({w:+.3g})" for c, w in top) for top in self.top_columns],
                    "sentence": self.sentences()}
        if self.bias_original is not None:
            per_unit["bias_original"] = self.bias_original.tolist()
        return {"hidden_weights": long, "hidden_units": per_unit}

    def images(self) -> dict:
        shown = self.weights[:MAX_IMAGE_UNITS]
        return {"hidden_weights": heatmap_image(shown, row_labels=self.names()[:MAX_IMAGE_UNITS])}

    def summary(self) -> dict:
        units = len(self.weights)
        return {"layer": self.layer, "units": units, "columns": len(self.columns),
                "normalized": self.weights_original is not None,
                "image_units": min(units, MAX_IMAGE_UNITS), "sentences": self.sentences()}


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _first_weighted(subject: Subject) -> tuple[str, nn.Module]:
    """The first module with parameters of its own that a forward pass meets."""
    if subject.hookable:
        for info in subject.layers:
            m = subject.model.get_submodule(info.module_name)
            if any(True for _ in m.parameters(recurse=False)):
                return info.name, m
    for name, m in subject.model.named_modules():
        if name and any(True for _ in m.parameters(recurse=False)):
            return name, m
    raise UnsupportedError(f"{subject.name} has no layer with weights to read hidden units from.")


def hidden_units(subject: Subject) -> HiddenUnits:
    """The units of the first Linear layer as weights on the input columns.

    Raises UnsupportedError for models on images, and when the first layer with weights is not an
    ``nn.Linear`` reading the (normalized) input columns directly.
    """
    if len(subject.input_shape) != 1:
        raise UnsupportedError(f"Hidden units are read for models on plain numeric vectors; this model takes "
                               f"inputs of shape {subject.input_shape}. For images see the first-layer filters.")
    f = subject.input_shape[0]
    columns = list(subject.columns) if subject.columns else [f"x{j}" for j in range(f)]
    if not subject.hookable:
        raise UnsupportedError("This is a TorchScript model: its layers cannot be read. Load it as "
                               "'file.py:factory' with --weights.")
    name, module = _first_weighted(subject)
    if not isinstance(module, nn.Linear):
        raise UnsupportedError(f"The first layer with weights, {name!r}, is a {type(module).__name__}, not a "
                               "Linear on the input columns: its units are not weighted sums of columns.")
    if module.in_features != f:
        raise UnsupportedError(f"The first Linear, {name!r}, takes {module.in_features} inputs but the model "
                               f"takes {f} columns.")
    _check_reads_inputs(subject, module, name)

    w = module.weight.detach().double().cpu().numpy().copy()
    b = (module.bias.detach().double().cpu().numpy().copy() if module.bias is not None
         else np.zeros(module.out_features))
    w_orig = b_orig = None
    if subject.mean is not None or subject.std is not None:
        mean = np.zeros(f) if subject.mean is None else np.broadcast_to(
            subject.mean.detach().double().cpu().numpy().ravel(), (f,))
        std = np.ones(f) if subject.std is None else np.broadcast_to(
            subject.std.detach().double().cpu().numpy().ravel(), (f,))
        w_orig = w / std  # W (x - m) / s + b = (W / s) x + (b - W (m / s))
        b_orig = b - w @ (mean / std)
    top = []
    for row in w:
        idx = np.argsort(-np.abs(row), kind="stable")[:TOP]
        top.append([(columns[j], float(row[j])) for j in idx])
    return HiddenUnits(name, columns, w, w_orig, b, top, b_orig)


def _check_reads_inputs(subject: Subject, module: nn.Module, name: str) -> None:
    """UnsupportedError unless the Linear's input is the normalized input itself."""
    seen = []
    handle = module.register_forward_pre_hook(lambda mod, inputs: seen.append(inputs[0].detach()))
    n = subject.fixed_batch or 4
    x = subject.sample_input(n, seed=1)
    try:
        with torch.no_grad():
            subject.forward(x)
    finally:
        handle.remove()
    want = subject.prepare(x)
    if not seen or tuple(seen[0].shape[1:]) != tuple(want.shape[1:]) or not torch.allclose(
            seen[0][:n].to(want.dtype), want, rtol=1e-5, atol=1e-6):
        raise UnsupportedError(f"The first Linear, {name!r}, does not read the input columns as given "
                               "(something transforms them before it), so its weights are not weights on columns.")
