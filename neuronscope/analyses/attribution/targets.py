"""What an explanation explains: a class, the predicted class, a regression output, or a unit.

Every target becomes one differentiable function of the *raw* inputs, ``forward(x) -> (N, K)``,
plus one output index per input, which is the form Captum's methods take. Attributions are
therefore read in the user's input units (before normalization), and class scores are logits
(before a final Softmax/Sigmoid module), where attribution methods are not flattened by
saturation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ...errors import OptionError, did_you_mean
from ...subject import Subject
from ...units import Unit, parse_unit

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Target:
    """A resolved target: ``forward(x)[i, index[i]]`` is the number explained for row ``i``."""

    forward: Forward
    index: list[int]
    labels: list[str]  # per row, for people: "class cat", "output 0", "conv3:5"
    kind: str  # "class", "output" or "unit"
    unit: Unit | None = None
    layer: str | None = None  # the layer a unit target reads
    build: Callable[[Subject], Forward] | None = None  # the same forward for another copy of the model

    def on(self, subject: Subject) -> "Target":
        """The same target read from another copy of the model (randomisation checks)."""
        return dataclasses.replace(self, forward=self.build(subject))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The explained number for each row of ``x`` (N,), in the target's own order."""
        out = self.forward(x)
        return out[torch.arange(len(out)), torch.as_tensor(self.index[: len(out)], device=out.device)]

    def part(self, start: int, stop: int) -> "Target":
        """The same target for rows ``start:stop`` (a chunk, or a sample for checks)."""
        return dataclasses.replace(self, index=self.index[start:stop], labels=self.labels[start:stop])


def class_logits(subject: Subject) -> Forward:
    """Raw inputs -> class logits, (N, K). A one-logit binary model gives (-z, z), so that
    class 0 and class 1 are both targets and the logits differ by the model's own logit."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        z = subject.logits(x).reshape(len(x), -1)
        if subject.task == "classification" and z.shape[1] == 1:
            return torch.cat([-z, z], dim=1)
        return z

    return forward


def unit_forward(subject: Subject, unit: Unit, reduce: str = "max") -> Forward:
    """Raw inputs -> the unit's layer, one number per channel, (N, C).

    A conv channel's map is reduced the way the dataset-examples pass scores it (``max`` by
    default, or ``mean``); a neuron ``layer:c@y,x`` reads its one position. A direction
    (``layer:nmf3``, ``layer:sae17``, ``layer:dir-...``) is one column, (N, 1): the activation's
    projection on the vector the direction reads (centred for principal components), which is
    differentiable where NMF's least-squares codes and the dictionary's TopK codes are not.
    """
    layer = unit.layer
    direction = subject.direction(unit) if unit.direction is not None else None

    def forward(x: torch.Tensor) -> torch.Tensor:
        with subject.capture([layer]) as cap:
            subject.forward(x)
        a = cap[layer]
        if direction is not None:
            d, i = direction
            v = torch.as_tensor(d.read[i], dtype=a.dtype, device=a.device)
            shape = (1, -1) + (1,) * (a.dim() - 2)
            if d.kind == "pca":
                a = a - torch.as_tensor(d.offset, dtype=a.dtype, device=a.device).reshape(shape)
            a = (a * v.reshape(shape)).sum(1, keepdim=True)
        if unit.position is not None:
            return a[(slice(None), slice(None), *unit.position)]
        a = a.reshape(a.shape[0], a.shape[1], -1) if a.dim() > 2 else a.reshape(a.shape[0], -1, 1)
        return a.amax(-1) if reduce == "max" else a.mean(-1)

    return forward


def resolve_target(subject: Subject, target, n: int, *, predicted: Sequence[int] | None = None,
                   unit_reduce: str = "max") -> Target:
    """Turn what the user asked for into a :class:`Target` for ``n`` inputs.

    ``target`` is ``"predicted"`` (default for classifiers), a class index or name (or
    ``"class:NAME"``), one per input (a list), an output index for regression, or a unit address
    ``"layer:channel"`` / ``"layer:channel@y,x"``. ``predicted`` gives the predicted classes when
    the caller already computed them.
    """
    if unit_reduce not in ("max", "mean"):
        raise OptionError(f"unit_reduce must be 'max' or 'mean', got {unit_reduce!r}.")
    if isinstance(target, (list, tuple)) and not isinstance(target, str):
        if len(target) != n:
            raise OptionError(f"{len(target)} targets given for {n} inputs: give one target, or one per input.")
        parts = [resolve_target(subject, t, 1, predicted=None if predicted is None else [predicted[i]],
                                unit_reduce=unit_reduce) for i, t in enumerate(target)]
        kinds = {(p.kind, str(p.unit.layer) if p.unit else None) for p in parts}
        if len(kinds) > 1:
            raise OptionError("Per-input targets must all be classes, all outputs, or units of one layer.")
        first = parts[0]
        return Target(first.forward, [p.index[0] for p in parts], [p.labels[0] for p in parts], first.kind,
                      first.unit, first.layer, first.build)

    if subject.task == "regression":
        return _regression_target(subject, target, n)

    text = str(target)
    if target is None or text == "predicted":
        if predicted is None:
            raise OptionError("target='predicted' needs the predicted classes (pass predicted=...).")
        names = subject.classes
        return Target(class_logits(subject), [int(k) for k in predicted],
                      [f"class {names[int(k)]} (predicted)" for k in predicted], "class", build=class_logits)
    if (not isinstance(target, int) and ":" not in text and text not in subject.classes and subject.hookable
            and text in {i.name for i in subject.layers}):
        raise OptionError(f"{text!r} is a whole layer: explain one unit of it, e.g. '{text}:0'.")
    if isinstance(target, int) or text.startswith("class:") or ":" not in text:
        k = class_index(subject, text.removeprefix("class:") if isinstance(target, str) else target)
        return Target(class_logits(subject), [k] * n, [f"class {subject.classes[k]}"] * n, "class", build=class_logits)
    return _unit_target(subject, text, n, unit_reduce)


def class_index(subject: Subject, name) -> int:
    """A class given by index or name -> its index, with the valid choices in the error."""
    names = subject.classes
    if isinstance(name, int) or (isinstance(name, str) and name.lstrip("-").isdigit() and name not in names):
        k = int(name)
        if not 0 <= k < len(names):
            raise OptionError(f"Class {k} is out of range: this model has {len(names)} classes, 0..{len(names) - 1}.")
        return k
    if name not in names:
        raise OptionError(f"Unknown class {name!r}. " + did_you_mean(str(name), names, "class name"))
    return names.index(name)


def _regression_target(subject: Subject, target, n: int) -> Target:
    d = subject.output_dim
    if target is None or target == "predicted":
        k = 0
    elif isinstance(target, int) or str(target).lstrip("-").isdigit():
        k = int(target)
    elif ":" in str(target):
        return _unit_target(subject, str(target), n, "max")
    else:
        raise OptionError(f"This is a regression model: the target is an output index 0..{d - 1} or a unit "
                          f"address such as 'layer:3', not {target!r}.")
    if not 0 <= k < d:
        raise OptionError(f"Output {k} is out of range: the model has {d} output(s), 0..{d - 1}.")

    return Target(outputs(subject), [k] * n, [f"output {k}"] * n, "output", build=outputs)


def outputs(subject: Subject) -> Forward:
    """Raw inputs -> the model's outputs, (N, D)."""
    return lambda x: subject.forward(x).reshape(len(x), -1)


def _unit_target(subject: Subject, address: str, n: int, reduce: str) -> Target:
    unit = subject.resolve(parse_unit(address))
    if unit.direction is not None:
        if unit.position is not None:
            raise OptionError(f"{address!r}: explain a direction over the whole map, without '@y,x'.")
        return Target(unit_forward(subject, unit, reduce), [0] * n, [str(unit)] * n, "unit", unit,
                      str(unit.layer), build=lambda s: unit_forward(s, unit, reduce))
    if unit.channel is None:
        raise OptionError(f"{address!r} is a whole layer: explain one unit of it, e.g. '{unit.layer}:0'.")
    return Target(unit_forward(subject, unit, reduce), [unit.channel] * n, [str(unit)] * n, "unit", unit,
                  str(unit.layer), build=lambda s: unit_forward(s, unit, reduce))
