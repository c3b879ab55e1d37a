"""How much of what the model uses a reconstruction of one layer keeps: splice it in, measure the loss.

A sparse autoencoder or a factorization rebuilds a layer's activations from a few directions.
A small reconstruction error does not say whether the *model* still works on the rebuilt
activations. Here the layer's output is replaced, during the model's own forward pass, by

* ``reconstruct(output)`` (the reconstruction under test),
* the layer's mean output over the data (mean-ablation: what is left when the layer carries no
  information about the input),
* zeros (zero-ablation),

and the model's loss is compared with the clean loss. The share of the mean-ablation damage
that the reconstruction repairs, ``(L_mean - L_spliced) / (L_mean - L_clean)``, is what SAELens
reports as "CE loss recovered": 1 means the reconstruction is as good as the real activations,
0 means it is no better than forgetting the input.

Losses: classification with integer labels uses the mean cross-entropy against the labels (a
one-logit binary model: binary cross-entropy with logits, i.e. the cross-entropy of
``(sigmoid(-z), sigmoid(z))``); without labels, the mean KL divergence of the spliced output
distribution from the clean one (so the clean loss is 0). The KL divergence and the share of
unchanged predictions are reported in either case. Regression uses the mean squared error against
the targets when the data has them, else against the clean output.

Two streaming passes over at most ``limit`` examples: one for the mean activation (per channel
and position), one that runs the clean and the three spliced forward passes batch by batch. The
model is borrowed (eval mode, frozen parameters) and every hook is removed afterwards, also when
``reconstruct`` raises.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...errors import OptionError
from ..stream import stream
from ...notebook import NotebookMixin

Reconstruct = Callable[[torch.Tensor], torch.Tensor]

VARIANTS = ("clean", "reconstruction", "mean-ablated", "zero-ablated")

__all__ = ["SpliceResult", "splice_loss"]


@dataclass
class SpliceResult(NotebookMixin):
    """The model's loss with one layer's output replaced by a reconstruction, its mean, or zeros."""

    layer: str
    n: int  # examples evaluated
    clean_loss: float
    spliced_loss: float
    mean_ablated_loss: float
    zero_ablated_loss: float
    recovered: float | None  # (mean_ablated - spliced) / (mean_ablated - clean); None when mean-ablation costs nothing
    kl: float | None  # mean KL(clean || spliced) over inputs, nats; None for regression
    agreement: float | None  # share of inputs whose predicted class the splice leaves unchanged
    accuracy_clean: float | None = None
    accuracy_spliced: float | None = None
    loss_kind: str = "cross-entropy"  # "cross-entropy", "kl" or "mse"
    notes: list[str] = field(default_factory=list)
    # The same numbers for the two ablations (the table's other rows).
    kl_mean_ablated: float | None = None
    kl_zero_ablated: float | None = None
    agreement_mean_ablated: float | None = None
    agreement_zero_ablated: float | None = None
    accuracy_mean_ablated: float | None = None
    accuracy_zero_ablated: float | None = None

    def _rows(self) -> list[dict]:
        clean_agree = None if self.agreement is None else 1.0
        return [
            {"variant": "clean", "loss": self.clean_loss, "accuracy": self.accuracy_clean,
             "agreement": clean_agree, "kl": None if self.kl is None else 0.0},
            {"variant": "reconstruction", "loss": self.spliced_loss, "accuracy": self.accuracy_spliced,
             "agreement": self.agreement, "kl": self.kl},
            {"variant": "mean-ablated", "loss": self.mean_ablated_loss, "accuracy": self.accuracy_mean_ablated,
             "agreement": self.agreement_mean_ablated, "kl": self.kl_mean_ablated},
            {"variant": "zero-ablated", "loss": self.zero_ablated_loss, "accuracy": self.accuracy_zero_ablated,
             "agreement": self.agreement_zero_ablated, "kl": self.kl_zero_ablated},
        ]

    def tables(self) -> dict[str, dict[str, list]]:
        """Plain columns: one row per variant (clean, reconstruction, mean-ablated, zero-ablated)."""
        rows = self._rows()
        return {"splice": {k: [r[k] for r in rows] for k in ("variant", "loss", "accuracy", "agreement", "kl")}}

    def images(self) -> dict:
        return {}

    def summary(self) -> dict:
        """JSON-able headline numbers and a one-sentence ``finding``."""
        return {
            "layer": self.layer,
            "n": int(self.n),
            "loss_kind": self.loss_kind,
            "clean_loss": self.clean_loss,
            "spliced_loss": self.spliced_loss,
            "mean_ablated_loss": self.mean_ablated_loss,
            "zero_ablated_loss": self.zero_ablated_loss,
            "recovered": self.recovered,
            "kl": self.kl,
            "agreement": self.agreement,
            "accuracy_clean": self.accuracy_clean,
            "accuracy_spliced": self.accuracy_spliced,
            "notes": list(self.notes),
            "finding": self.finding(),
        }

    def finding(self) -> str:
        what = {"cross-entropy": "the loss", "kl": "the KL divergence from the clean output",
                "mse": "the squared error"}[self.loss_kind]
        a, b = self.clean_loss, self.spliced_loss
        if _close(a, b):
            change = f"leaves {what} at {_num(a)}"
        else:
            change = f"{'raises' if b > a else 'lowers'} {what} from {_num(a)} to {_num(b)}"
        if self.recovered is not None and self.mean_ablated_loss > self.clean_loss:
            change += f" (recovers {self.recovered:.0%} of what mean-ablation loses)"
        elif self.recovered is not None:
            change += f" (mean-ablating the layer does not raise {what}, so no share of it is recovered)"
        else:
            change += f" (mean-ablating the layer changes {what} by less than can be measured)"
        text = f"Replacing {self.layer} by its reconstruction {change}"
        if self.agreement is not None:
            text += f" and keeps {_pct(self.agreement)} of predictions"
        return text + "."


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def _num(v: float) -> str:
    return f"{v:.3f}" if v == 0 or abs(v) >= 0.01 else f"{v:.3g}"


def _pct(v: float) -> str:
    s = f"{100 * v:.1f}"
    if s == "100.0" and v < 1:
        s = "99.9"
    return f"{s}%"


# ------------------------------------------------------------------------------ replacing an output
def _replace_tensor(output, new: torch.Tensor):
    """``output`` with its first tensor (the one :func:`first_tensor` reads) replaced by ``new``."""
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, (tuple, list)):
        for i, v in enumerate(output):
            if isinstance(v, torch.Tensor):
                items = list(output)
                items[i] = new
                return type(output)(items) if isinstance(output, list) else (
                    type(output)(*items) if hasattr(output, "_fields") else tuple(items))
    if isinstance(output, Mapping):
        for k, v in output.items():
            if isinstance(v, torch.Tensor):
                out = dict(output)
                out[k] = new
                try:
                    return type(output)(out)
                except Exception:
                    return out
    raise OptionError("The layer's output holds no tensor to replace.")


def _first(output) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((v for v in output if isinstance(v, torch.Tensor)), None)
    if isinstance(output, Mapping):
        return next((v for v in output.values() if isinstance(v, torch.Tensor)), None)
    return None


@contextlib.contextmanager
def _replaced(subject, info, replace: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Forward passes inside the context see ``replace(output)`` instead of the layer's output.

    ``layer#k`` (a module called several times per forward pass) replaces the k-th call only:
    a pre-hook on the whole model resets the call counter at every forward pass.
    """
    module = subject.model.get_submodule(info.module_name)
    count = [0]

    def reset(mod, inputs):
        count[0] = 0

    def hook(mod, inputs, output):
        k = count[0]
        count[0] += 1
        if info.call is not None and k != info.call:
            return None
        t = _first(output)
        if t is None:
            return None
        return _replace_tensor(output, replace(t))

    handles = []
    try:
        handles.append(subject.model.register_forward_pre_hook(reset))
        handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def _checked(result, out: torch.Tensor, layer: str) -> torch.Tensor:
    """The reconstruction as a fresh tensor like ``out``; a clear error when its shape is wrong."""
    if not isinstance(result, torch.Tensor):
        try:
            result = torch.as_tensor(result)
        except Exception:
            raise OptionError(f"reconstruct must return a tensor of shape {tuple(out.shape)} for layer "
                              f"{layer!r}; it returned a {type(result).__name__}.") from None
    if tuple(result.shape) != tuple(out.shape):
        raise OptionError(
            f"reconstruct returned shape {tuple(result.shape)} for layer {layer!r}, but the layer's "
            f"output has shape {tuple(out.shape)} (N, C, ...): the reconstruction must have the "
            "same shape (for a row-wise dictionary, rebuild it with from_rows(rows, a.shape))."
        )
    # A fresh contiguous copy: an in-place module later in the forward pass (ReLU(inplace=True))
    # may overwrite it, and must never overwrite a tensor the caller or this module keeps.
    return result.detach().to(device=out.device, dtype=out.dtype).clone(memory_format=torch.contiguous_format)


# ------------------------------------------------------------------------------ losses
class _Totals:
    """Running sums for one variant."""

    def __init__(self):
        self.loss = 0.0  # sum over inputs of the task loss (against labels / targets)
        self.kl = 0.0
        self.mse_clean = 0.0
        self.agree = 0
        self.correct = 0


def _log_probs(subject, z: torch.Tensor) -> torch.Tensor:
    """Class log-probabilities (N, K) from what :meth:`Subject.logits` returns."""
    z = z.reshape(len(z), -1).double()
    if subject._probabilities_in_forward:
        return torch.log(z.clamp_min(1e-30))
    if z.shape[1] == 1:  # one-logit binary model: p(class 1) = sigmoid(z)
        return torch.cat([F.logsigmoid(-z), F.logsigmoid(z)], dim=1)
    return torch.log_softmax(z, dim=1)


def splice_loss(subject, data, layer: str, reconstruct: Reconstruct, *, limit: int | None = 1024,
                batch_size: int = 64, progress: bool = False) -> SpliceResult:
    """The model's loss when ``layer``'s output is replaced by ``reconstruct(output)``.

    Parameters
    ----------
    subject : Subject
    data : Dataset
        Inputs (with labels or targets when available) to measure the loss on.
    layer : str
        Layer address; ``module#k`` replaces only the k-th call of a module called several times.
    reconstruct : callable
        Takes the layer's output for a batch, (N, C, *S), and returns a tensor of the same shape,
        e.g. ``lambda a: from_rows(dictionary.reconstruct(to_rows(a)), a.shape)``.
    limit : int, optional
        At most this many examples (both passes use the same ones).

    Returns
    -------
    SpliceResult
        Clean, reconstructed, mean-ablated and zero-ablated losses, the share of the
        mean-ablation loss recovered, KL divergence and prediction agreement.
    """
    if not callable(reconstruct):
        raise OptionError(f"reconstruct must be a callable (N, C, ...) -> (N, C, ...); got {type(reconstruct).__name__}.")
    if batch_size < 1:
        raise OptionError(f"batch_size must be at least 1, got {batch_size}.")
    if limit is not None and limit < 1:
        raise OptionError(f"limit must be at least 1 example, got {limit}.")
    if len(data) == 0:
        raise OptionError("The data has no examples: the loss cannot be measured.")
    subject._require_hooks("a layer's output")
    info = subject.layer(layer)
    if info.output_shape is None:
        raise OptionError(f"Layer {info.name!r} has no tensor output to replace.")
    name = info.name
    classification = subject.task == "classification"
    notes: list[str] = []

    with subject.borrowed():
        # Pass 1: the mean output over the data, per channel and position (float64 sums).
        total, n_mean = None, 0
        for step in stream(subject, data, [name], limit=limit, batch_size=batch_size,
                           desc=f"mean of {name}", progress=progress, spread=True):
            a = step.activations[name]
            a = a[0] if isinstance(a, tuple) else a
            s = a.detach().double().sum(0)
            total = s if total is None else total + s
            n_mean += a.shape[0]
        if n_mean == 0 or total is None:
            raise OptionError("No examples were read from the data: the loss cannot be measured.")
        mean = (total / n_mean).to(subject.dtype)

        def spliced(out: torch.Tensor) -> torch.Tensor:
            return _checked(reconstruct(out.detach()), out, name)

        def mean_ablated(out: torch.Tensor) -> torch.Tensor:
            return mean.to(device=out.device, dtype=out.dtype).expand_as(out).clone()

        def zero_ablated(out: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(out)

        replacements = {"reconstruction": spliced, "mean-ablated": mean_ablated, "zero-ablated": zero_ablated}

        # Pass 2: clean and spliced outputs, batch by batch.
        totals = {v: _Totals() for v in VARIANTS}
        n = 0
        labels_ok = True  # every batch has usable labels / targets
        label_problem = ""
        for step in stream(subject, data, (), limit=limit, batch_size=batch_size,
                           desc=f"splicing {name}", progress=progress, spread=True):
            x, y = step.batch.x, step.batch.y
            outs = {"clean": step.logits}
            with torch.no_grad():
                for v, fn in replacements.items():
                    with _replaced(subject, info, fn):
                        outs[v] = subject.logits(x)
            m = len(x)
            n += m
            if classification:
                logp = {v: _log_probs(subject, z) for v, z in outs.items()}
                k = logp["clean"].shape[1]
                target = None
                if y is None:
                    labels_ok, label_problem = False, label_problem or "the data has no labels"
                elif y.is_floating_point() or y.ndim != 1 or len(y) != m:
                    labels_ok, label_problem = False, label_problem or "the labels are not one class index per example"
                elif len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
                    labels_ok = False
                    label_problem = label_problem or (f"labels outside the model's {k} classes "
                                                      f"(0..{k - 1}) were found")
                else:
                    target = y.to(device=logp["clean"].device, dtype=torch.long)
                p_clean = logp["clean"].exp()
                pred_clean = logp["clean"].argmax(1)
                for v, lp in logp.items():
                    t = totals[v]
                    t.kl += float((p_clean * (logp["clean"] - lp)).sum(1).clamp_min(0).sum())
                    pred = lp.argmax(1)
                    t.agree += int((pred == pred_clean).sum())
                    if target is not None:
                        t.loss += float(F.nll_loss(lp, target, reduction="sum"))
                        t.correct += int((pred == target).sum())
            else:
                clean = outs["clean"].reshape(m, -1).double()
                target = None
                if y is None:
                    labels_ok, label_problem = False, label_problem or "the data has no targets"
                elif not y.is_floating_point():
                    labels_ok = False
                    label_problem = label_problem or (
                        "the data has class labels, not numeric targets; a one-output binary classifier "
                        "needs classes=... or task='classification'")
                elif y.numel() != clean.numel():
                    labels_ok = False
                    label_problem = label_problem or (f"targets of shape {tuple(y.shape)} do not match "
                                                      f"outputs of shape {tuple(outs['clean'].shape)}")
                else:
                    target = y.reshape(m, -1).to(device=clean.device, dtype=torch.double)
                for v, z in outs.items():
                    z = z.reshape(m, -1).double()
                    t = totals[v]
                    t.mse_clean += float(((z - clean) ** 2).mean(1).sum())
                    if target is not None:
                        t.loss += float(((z - target) ** 2).mean(1).sum())

    if n == 0:
        raise OptionError("No examples were read from the data: the loss cannot be measured.")

    if classification:
        if labels_ok:
            kind = "cross-entropy"
            loss = {v: totals[v].loss / n for v in VARIANTS}
        else:
            kind = "kl"
            loss = {v: totals[v].kl / n for v in VARIANTS}
            notes.append(f"No cross-entropy against labels ({label_problem}): the loss is the KL divergence "
                         "of each output distribution from the clean one.")
        kl = {v: totals[v].kl / n for v in VARIANTS}
        agree = {v: totals[v].agree / n for v in VARIANTS}
        acc = {v: totals[v].correct / n if labels_ok else None for v in VARIANTS}
    else:
        kind = "mse"
        if labels_ok:
            loss = {v: totals[v].loss / n for v in VARIANTS}
        else:
            loss = {v: totals[v].mse_clean / n for v in VARIANTS}
            notes.append(f"Regression without usable targets ({label_problem}): the loss is the mean squared "
                         "difference from the clean output.")
        kl = agree = acc = {v: None for v in VARIANTS}

    clean, spl, mab = loss["clean"], loss["reconstruction"], loss["mean-ablated"]
    den = mab - clean
    recovered = None if abs(den) <= 1e-9 * max(1.0, abs(mab), abs(clean)) else (mab - spl) / den
    if recovered is not None and not math.isfinite(recovered):
        recovered = None
    if recovered is not None and den < 0:
        notes.append("Mean-ablating the layer lowers the loss (an untrained model, or a layer the model is "
                     "better off without on this data): 'recovered' is not a share of anything lost.")
    if recovered is None:
        notes.append("Mean-ablating the layer does not change the loss measurably, so 'recovered' is undefined.")
    if n < (limit or n) and n < len(data):
        notes.append(f"Only {n} examples could be read.")

    return SpliceResult(
        layer=name, n=n, clean_loss=clean, spliced_loss=spl, mean_ablated_loss=mab,
        zero_ablated_loss=loss["zero-ablated"], recovered=recovered,
        kl=kl["reconstruction"], agreement=agree["reconstruction"],
        accuracy_clean=acc["clean"], accuracy_spliced=acc["reconstruction"],
        loss_kind=kind, notes=notes,
        kl_mean_ablated=kl["mean-ablated"], kl_zero_ablated=kl["zero-ablated"],
        agreement_mean_ablated=agree["mean-ablated"], agreement_zero_ablated=agree["zero-ablated"],
        accuracy_mean_ablated=acc["mean-ablated"], accuracy_zero_ablated=acc["zero-ablated"],
    )
