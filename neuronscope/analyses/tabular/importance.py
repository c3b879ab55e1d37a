"""Which input columns matter, for networks on plain numeric vectors.

Several methods, reported side by side and never averaged, because they answer different
questions:

- permutation importance (Breiman 2001; Fisher, Rudin & Dominici 2019): how much the model's
  score drops when a column (or a group of columns) is shuffled, breaking its link to the rest;
- Shapley values by permutation sampling (Štrumbelj & Kononenko 2014), interventional, over a
  background set: how much each column moves each prediction away from the background average;
- integrated gradients (Sundararajan et al. 2017) from the data mean;
- partial dependence (Friedman 2001) with ICE curves (Goldstein et al. 2015);
- Friedman's H² interaction statistic (Friedman & Popescu 2008).

Classifiers are explained through the logit of a class (the predicted class by default);
permutation scores read probabilities. Regression models are explained through their output.
Everything runs as a few large batched forward passes, never one model call per row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats

from ...data import Batch
from ...errors import DataError, OptionError, UnsupportedError, did_you_mean
from ...progress import progress_bar
from ...subject import Subject
from ..attribution.targets import class_index, class_logits, outputs

#: Rows per forward pass when many perturbed copies of the data are scored at once.
MAX_ROWS = 1 << 15

METHOD_TITLES = {"permutation": "permutation", "shapley": "Shapley values",
                 "integrated_gradients": "integrated gradients"}


# ----------------------------------------------------------------------------------- results


@dataclass
class Importance:
    """One number per column (or group of columns) with a 95% interval; ``rows()`` for importance.csv."""

    method: str
    columns: list[str]
    values: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    metric: str = ""  # what ``values`` measure, in words
    n: int = 0  # rows used
    details: dict = field(default_factory=dict)

    def rows(self) -> list[dict]:
        return [{"column": c, "method": self.method, "value": float(v), "ci_low": float(lo), "ci_high": float(hi)}
                for c, v, lo, hi in zip(self.columns, self.values, self.ci_low, self.ci_high)]

    def ranking(self) -> list[str]:
        """Columns, most important first."""
        return [self.columns[i] for i in np.argsort(-self.values, kind="stable")]

    def ranks(self) -> dict[str, int]:
        """Column -> rank (1 = most important)."""
        return {c: r + 1 for r, c in enumerate(self.ranking())}

    def tables(self) -> dict[str, dict[str, list]]:
        rows = self.rows()
        return {"importance": {k: [r[k] for r in rows] for k in ("column", "method", "value", "ci_low", "ci_high")}}

    def images(self) -> dict:
        return {}

    def summary(self) -> dict:
        top = self.ranking()[:5]
        return {"method": self.method, "metric": self.metric, "n": self.n, "top": top,
                **{k: v for k, v in self.details.items() if isinstance(v, (int, float, str, type(None)))},
                "finding": f"By {METHOD_TITLES.get(self.method, self.method)}, "
                           + _and([repr(c) for c in top[:3]]) + f" matter{'s' if len(top) == 1 else ''} most."}


@dataclass
class Attributions:
    """Per-row values (N, F) whose global summary is the mean |value| per column, with a 95% interval."""

    method: str
    columns: list[str]
    values: np.ndarray  # (N, F)
    outputs: np.ndarray  # (N,) f(x) for the explained output
    reference: np.ndarray  # (N,) what the values are measured from: E_background f, or f(baseline)
    target: list[str]  # per row, what was explained
    details: dict = field(default_factory=dict)

    @property
    def importance(self) -> Importance:
        a = np.abs(self.values)
        lo, mean, hi = _t_interval(a, axis=0)
        return Importance(self.method, self.columns, mean, lo, hi, metric="mean |value|", n=len(a),
                          details=self.details)

    def completeness_error(self) -> np.ndarray:
        """Per row, |sum of values - (f(x) - reference)| (0 up to rounding for exact methods)."""
        return np.abs(self.values.sum(1) - (self.outputs - self.reference))

    def rows(self) -> list[dict]:
        return self.importance.rows()

    def tables(self) -> dict[str, dict[str, list]]:
        per_row = {"row": list(range(len(self.values))), "target": list(self.target),
                   "output": self.outputs.tolist(), "reference": self.reference.tolist(),
                   **{c: self.values[:, j].tolist() for j, c in enumerate(self.columns)}}
        return {**self.importance.tables(), "values": per_row}

    def images(self) -> dict:
        return {}

    def summary(self) -> dict:
        return {**self.importance.summary(), "max_completeness_error": float(self.completeness_error().max())}


@dataclass
class PartialDependence:
    """A partial dependence curve and ICE curves for one column."""

    column: str
    grid: np.ndarray  # (G,)
    pd: np.ndarray  # (G,) mean over all rows used
    ice: np.ndarray  # (M, G) one curve per sampled row
    target: str
    n: int

    def centered_ice(self) -> np.ndarray:
        """ICE curves shifted to start at 0 (parallel curves mean no interaction with other columns)."""
        return self.ice - self.ice[:, :1]

    def slope(self) -> float:
        """Least-squares slope of the PD curve over its grid."""
        return float(np.polyfit(self.grid, self.pd, 1)[0]) if len(self.grid) > 1 else 0.0

    def tables(self) -> dict[str, dict[str, list]]:
        t = {"grid": self.grid.tolist(), "pd": self.pd.tolist()}
        t.update({f"ice_{i}": c.tolist() for i, c in enumerate(self.ice)})
        return {f"pd_{self.column}": t}

    def images(self) -> dict:
        return {}

    def summary(self) -> dict:
        return {"column": self.column, "target": self.target, "n": self.n, "grid": len(self.grid),
                "range": float(self.pd.max() - self.pd.min()), "slope": self.slope()}


@dataclass
class Interactions:
    """Friedman's H² per pair of columns: the share of the pair's joint effect not explained additively."""

    pairs: list[tuple[str, str]]
    h2: np.ndarray
    target: str
    n: int

    def rows(self) -> list[dict]:
        return [{"column_a": a, "column_b": b, "h2": float(h)} for (a, b), h in zip(self.pairs, self.h2)]

    def tables(self) -> dict[str, dict[str, list]]:
        rows = self.rows()
        return {"interactions": {k: [r[k] for r in rows] for k in ("column_a", "column_b", "h2")}}

    def images(self) -> dict:
        return {}

    def summary(self) -> dict:
        if not self.pairs:
            return {"n": self.n, "finding": "No pairs were checked."}
        k = int(np.argmax(self.h2))
        a, b = self.pairs[k]
        return {"n": self.n, "target": self.target, "strongest": [a, b], "h2": float(self.h2[k]),
                "finding": f"The strongest interaction is {a!r} × {b!r} (H² = {self.h2[k]:.2f})."}


@dataclass
class ColumnImportance:
    """Every method side by side: values, ranks, and how far the methods agree (Spearman)."""

    columns: list[str]
    results: dict[str, Importance]
    agreement: dict[tuple[str, str], float]

    def ranks(self) -> dict[str, dict[str, int]]:
        return {m: r.ranks() for m, r in self.results.items()}

    def rows(self) -> list[dict]:
        return [row for r in self.results.values() for row in r.rows()]

    def tables(self) -> dict[str, dict[str, list]]:
        rows = self.rows()
        ranks = self.ranks()
        t = {k: [r[k] for r in rows] for k in ("column", "method", "value", "ci_low", "ci_high")}
        t["rank"] = [ranks[r["method"]][r["column"]] for r in rows]
        agree = {"method_a": [a for a, _ in self.agreement], "method_b": [b for _, b in self.agreement],
                 "spearman": list(self.agreement.values())}
        return {"importance": t, "agreement": agree}

    def images(self) -> dict:
        return {}

    def summary(self) -> dict:
        return {"methods": list(self.results), "ranks": self.ranks(),
                "agreement": {f"{a}~{b}": v for (a, b), v in self.agreement.items()}, "finding": self.finding()}

    def finding(self) -> str:
        ranks = self.ranks()
        methods = list(ranks)
        if not methods:
            return "No method was run."
        shared = [c for c in self.results[methods[0]].ranking() if all(c in ranks[m] for m in methods)]
        k = min(2, len(shared))
        common = [c for c in shared if all(ranks[m][c] <= k for m in methods)]
        if common:
            where = "under every method" if len(methods) > 1 else f"by {METHOD_TITLES.get(methods[0], methods[0])}"
            text = f"{_and([repr(c) for c in common])} matter{'s' if len(common) == 1 else ''} most {where}"
        else:
            text = "The methods disagree on what matters most: " + "; ".join(
                f"{self.results[m].ranking()[0]!r} by {METHOD_TITLES.get(m, m)}" for m in methods)
        if len(methods) > 1:
            half = max(k, len(shared) // 2)
            best = None
            for c in shared:
                rs = {m: ranks[m][c] for m in methods}
                hi_m, lo_m = min(rs, key=rs.get), max(rs, key=rs.get)
                gap = rs[lo_m] - rs[hi_m]
                if rs[hi_m] <= half and gap >= 2 and (best is None or gap > best[0]):
                    best = (gap, c, hi_m, rs[hi_m], lo_m, rs[lo_m])
            if best:
                _, c, hi_m, r1, lo_m, r2 = best
                text += (f"; {c!r} ranks {_ordinal(r1)} by {METHOD_TITLES.get(hi_m, hi_m)} but "
                         f"{_ordinal(r2)} by {METHOD_TITLES.get(lo_m, lo_m)}")
        return text + "."


# ----------------------------------------------------------------------------------- helpers


def _and(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _t_interval(a: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, mean, high) of a 95% t interval for the mean along ``axis`` (NaN bounds with one sample)."""
    a = np.asarray(a, dtype=np.float64)
    n = a.shape[axis]
    mean = a.mean(axis)
    if n < 2:
        nan = np.full_like(mean, np.nan)
        return nan, mean, nan
    half = stats.t.ppf(0.975, n - 1) * a.std(axis, ddof=1) / math.sqrt(n)
    return mean - half, mean, mean + half


def _check_tabular(subject: Subject) -> list[str]:
    if len(subject.input_shape) != 1:
        raise UnsupportedError(
            f"Column importance is for models on plain numeric vectors; this model takes inputs of shape "
            f"{subject.input_shape}. For images use the attribution maps instead.")
    f = subject.input_shape[0]
    return list(subject.columns) if subject.columns else [f"x{j}" for j in range(f)]


def _rows(data, limit: int | None = None, what: str = "data") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Raw inputs (and labels when there are any) from a Dataset, a Batch, a tensor/array or an (x, y) pair."""
    if hasattr(data, "batches"):
        parts = list(data.batches(4096, limit=limit))
        if not parts:
            raise DataError(f"The {what} has no usable rows.")
        b = Batch.cat(parts)
        x, y = b.x, b.y
    elif isinstance(data, Batch):
        x, y = data.x, data.y
    elif isinstance(data, tuple) and len(data) == 2 and np.ndim(data[0]) == 2:  # (x, y); y may be None
        x = torch.as_tensor(np.asarray(data[0]) if not isinstance(data[0], torch.Tensor) else data[0])
        y = None if data[1] is None else torch.as_tensor(np.asarray(data[1]) if not isinstance(data[1], torch.Tensor)
                                                         else data[1])
    else:
        x, y = torch.as_tensor(np.asarray(data, dtype=np.float32) if isinstance(data, list) else data), None
    x = x.float()
    if x.dim() != 2:
        raise DataError(f"The {what} must be a table of rows (N, columns); got shape {tuple(x.shape)}.")
    if limit is not None:
        x = x[: int(limit)]
        y = None if y is None else y[: int(limit)]
    if len(x) == 0:
        raise DataError(f"The {what} has no rows.")
    return x, y


def _column_index(name, columns: list[str]) -> int:
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        if not 0 <= int(name) < len(columns):
            raise OptionError(f"Column {int(name)} is out of range: the model has {len(columns)} columns, "
                              f"0..{len(columns) - 1}.")
        return int(name)
    if name not in columns:
        raise OptionError(f"Unknown column {name!r}. " + did_you_mean(str(name), columns, "column"))
    return columns.index(name)


def _explained(subject: Subject) -> Callable[[torch.Tensor], torch.Tensor]:
    """Raw inputs -> (M, K): class logits for classifiers, outputs for regression."""
    return class_logits(subject) if subject.task == "classification" else outputs(subject)


def _target_indices(subject: Subject, x: torch.Tensor, target) -> tuple[torch.Tensor, list[str]]:
    """Per row, the output index explained and a label for people."""
    n = len(x)
    if subject.task == "classification":
        names = subject.classes
        if target is None or target == "predicted":
            with torch.no_grad():
                k = subject.predict(x).reshape(-1).long().cpu()
            return k, [f"class {names[i]} (predicted)" for i in k.tolist()]
        if target == "majority":  # the class predicted most often: one class for a whole curve
            with torch.no_grad():
                k = int(torch.bincount(subject.predict(x).reshape(-1).long().cpu()).argmax())
            return torch.full((n,), k, dtype=torch.long), [f"class {names[k]}"] * n
        k = class_index(subject, target)
        return torch.full((n,), k, dtype=torch.long), [f"class {names[k]}"] * n
    d = subject.output_dim
    k = 0 if target in (None, "predicted", "majority") else int(target)
    if not 0 <= k < d:
        raise OptionError(f"Output {k} is out of range: the model has {d} output(s), 0..{d - 1}.")
    return torch.full((n,), k, dtype=torch.long), [f"output {k}"] * n


def _scores(subject: Subject, x: torch.Tensor, index: torch.Tensor, chunk: int = MAX_ROWS) -> torch.Tensor:
    """f(x)[i, index[i]] for many rows, in chunks, without gradients."""
    fn = _explained(subject)
    out = []
    with torch.no_grad():
        for s in range(0, len(x), chunk):
            z = fn(x[s:s + chunk])
            out.append(z.gather(1, index[s:s + chunk].to(z.device)[:, None])[:, 0].float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


# ----------------------------------------------------------------------------------- permutation


def _score_fn(subject: Subject, metric: str, y: torch.Tensor):
    """(name, higher_is_better_score(outputs_block) -> float tensor per block) for permutation importance."""
    if subject.task == "classification":
        y = y.long().reshape(-1)

        def probs(x):
            return subject.probabilities(x).float().cpu()

        if metric in ("auto", "log_loss"):
            def score(p):  # p (B, N, K) -> (B,) negative mean log-loss
                return p.gather(2, y[None, :, None].expand(len(p), -1, 1))[..., 0].clamp_min(1e-12).log().mean(1)
            return "log_loss", probs, score
        if metric == "accuracy":
            def score(p):
                return (p.argmax(2) == y[None]).float().mean(1)
            return "accuracy", probs, score
        raise OptionError(f"metric for a classifier must be 'auto', 'log_loss' or 'accuracy', not {metric!r}.")
    if metric not in ("auto", "r2"):
        raise OptionError(f"metric for a regression model must be 'auto' or 'r2', not {metric!r}.")
    y = y.float().reshape(len(y), -1)
    tot = ((y - y.mean(0)) ** 2).sum(0).clamp_min(1e-12)

    def out(x):
        return subject.forward(x).float().reshape(len(x), -1).cpu()

    def score(o):  # o (B, N, D) -> (B,) R² averaged over outputs
        return (1 - ((o - y[None]) ** 2).sum(1) / tot).mean(1)
    return "r2", out, score


def permutation_importance(subject: Subject, data, *, repeats: int = 10,
                           groups: Mapping[str, Sequence[str]] | None = None, metric: str = "auto",
                           limit: int | None = None, seed: int = 0, progress: bool = False) -> Importance:
    """Drop in score when a column (or a group, e.g. one-hot dummies) is shuffled (Breiman 2001;
    Fisher, Rudin & Dominici 2019).

    The score is the mean log-likelihood of the true class for classifiers (``metric="auto"`` or
    ``"log_loss"``: smooth, so small effects are seen; ``"accuracy"`` on request) and R² for
    regression. Values are ``score(data) - score(shuffled)``: positive when the model relies on the
    column. The interval is a 95% t interval over ``repeats`` shuffles. Without labels the model's
    own predictions on the unshuffled data are the labels. Columns not named in ``groups`` are
    shuffled one at a time. All repeats × columns run as a few large batched forward passes.
    """
    columns = _check_tabular(subject)
    if repeats < 1:
        raise OptionError(f"repeats must be at least 1, got {repeats}.")
    x, y = _rows(data, limit)
    n, f = x.shape
    if y is None:
        with torch.no_grad():
            y = subject.predict(x).cpu()
    sets: list[tuple[str, list[int]]] = []
    grouped: set[int] = set()
    for name, members in (groups or {}).items():
        if isinstance(members, str):
            members = [members]
        idx = [_column_index(m, columns) for m in members]
        if not idx:
            raise OptionError(f"Group {name!r} has no columns.")
        sets.append((str(name), idx))
        grouped.update(idx)
    sets += [(columns[j], [j]) for j in range(f) if j not in grouped]

    name, read, score = _score_fn(subject, metric, y)
    with torch.no_grad():
        base = float(score(read(x)[None])[0])
    g = torch.Generator().manual_seed(seed)
    jobs = [(r, s) for r in range(repeats) for s in range(len(sets))]
    per_block = max(1, MAX_ROWS // n)
    drops = np.zeros((repeats, len(sets)))
    bar = progress_bar(len(jobs), "permutation importance", "shuffle", enabled=progress)
    for start in range(0, len(jobs), per_block):
        block = jobs[start:start + per_block]
        xb = x.repeat(len(block), 1, 1)  # (B, N, F)
        perms = torch.argsort(torch.rand(len(block), n, generator=g), dim=1)
        for b, (_, s) in enumerate(block):
            cols = sets[s][1]
            xb[b][:, cols] = x[perms[b]][:, cols]
        with torch.no_grad():
            out = read(xb.reshape(-1, f))
        sc = score(out.reshape(len(block), n, -1)).numpy()
        for b, (r, s) in enumerate(block):
            drops[r, s] = base - sc[b]
        bar.update(len(block))
    bar.close()
    lo, mean, hi = _t_interval(drops, axis=0)
    words = {"log_loss": "increase in log-loss", "accuracy": "drop in accuracy", "r2": "drop in R²"}[name]
    return Importance("permutation", [s[0] for s in sets], mean, lo, hi, metric=words, n=n,
                      details={"score": name, "baseline_score": base if name != "log_loss" else -base,
                               "repeats": repeats, "per_repeat": drops, "groups": {k: v for k, v in sets}})


# ----------------------------------------------------------------------------------- Shapley


def shapley_sampling(subject: Subject, x, background, *, target="predicted", n_permutations: int = 10,
                     max_background: int = 100, engine: str = "batched", seed: int = 0,
                     progress: bool = False) -> Attributions:
    """Interventional Shapley values by permutation sampling (Štrumbelj & Kononenko 2014).

    ``engine="batched"`` (default): each row gets ``n_permutations`` random column orderings in
    antithetic pairs (an ordering and its reverse, which lowers the variance); each ordering is
    walked from every background row to the row, switching one column at a time, and the change in
    the explained output is credited to the column switched. All walks of a chunk of rows are one
    forward pass. Unbiased, and exactly efficient: per row the values sum to f(x) minus the mean
    of f over the background used. ``engine="captum"`` runs Captum's ShapleyValueSampling against
    every background row instead (slower; one ordering shared by the whole batch, no antithetic
    pairs; same expectation).
    """
    columns = _check_tabular(subject)
    x, _ = _rows(x, what="rows to explain")
    bg, _ = _rows(background, what="background")
    g = torch.Generator().manual_seed(seed)
    if len(bg) > max_background:
        bg = bg[torch.randperm(len(bg), generator=g)[:max_background]]
    n, f = x.shape
    b = len(bg)
    idx, labels = _target_indices(subject, x, target)
    fx = _scores(subject, x, idx)
    fb = _scores(subject, bg.repeat(n, 1), idx.repeat_interleave(b)).reshape(n, b)
    if engine == "captum":
        phi = _shapley_captum(subject, x, bg, idx, n_permutations)
    elif engine == "batched":
        half = max(1, (n_permutations + 1) // 2)
        ranks = torch.argsort(torch.rand(n, half, f, generator=g), dim=2)
        ranks = torch.cat([ranks, f - 1 - ranks], dim=1)  # antithetic: each ordering and its reverse
        p = ranks.shape[1]
        per_row = max(1, p * b * max(f - 1, 1))
        step = max(1, MAX_ROWS // per_row)
        parts = []
        bar = progress_bar(n, "Shapley sampling", "row", enabled=progress)
        for s in range(0, n, step):
            parts.append(_shapley_walks(subject, x[s:s + step], bg, idx[s:s + step], ranks[s:s + step],
                                        fx[s:s + step], fb[s:s + step]))
            bar.update(len(parts[-1]))
        bar.close()
        phi = torch.cat(parts)
    else:
        raise OptionError(f"engine must be 'batched' or 'captum', not {engine!r}.")
    return Attributions("shapley", columns, phi.numpy().astype(np.float64), fx.numpy().astype(np.float64),
                        fb.mean(1).numpy().astype(np.float64), labels,
                        details={"n_permutations": n_permutations, "background": b, "engine": engine})


def _shapley_walks(subject, x, bg, idx, ranks, fx, fb) -> torch.Tensor:
    """Shapley estimates for a chunk of rows: every ordering walked from every background row."""
    n, p, f = ranks.shape
    b = len(bg)
    if f > 1:
        steps = torch.arange(1, f)
        mask = (ranks[:, :, None, :] < steps[None, None, :, None]).float()  # (n, p, f-1, f): switched by step k
        z = bg[None, None, :, None, :] + mask[:, :, None] * (x[:, None, None, None, :] - bg[None, None, :, None, :])
        inner = _scores(subject, z.reshape(-1, f), idx.repeat_interleave(p * b * (f - 1))).reshape(n, p, b, f - 1)
    else:
        inner = torch.zeros(n, p, b, 0)
    path = torch.cat([fb[:, None, :, None].expand(n, p, b, 1), inner, fx[:, None, None, None].expand(n, p, b, 1)], -1)
    gain = path[..., 1:] - path[..., :-1]  # (n, p, b, f): gain of the step at each rank
    phi = gain.gather(3, ranks[:, :, None, :].expand(n, p, b, f))  # per column: the step where it was switched
    return phi.double().mean((1, 2)).float()


def _shapley_captum(subject, x, bg, idx, n_permutations) -> torch.Tensor:
    from captum.attr import ShapleyValueSampling

    n, f = x.shape
    b = len(bg)
    fn = _explained(subject)
    inputs = x.repeat_interleave(b, 0)
    base = bg.repeat(n, 1)
    with torch.no_grad():
        a = ShapleyValueSampling(fn).attribute(inputs, baselines=base, target=idx.repeat_interleave(b).tolist(),
                                               n_samples=n_permutations, perturbations_per_eval=f)
    return a.reshape(n, b, f).mean(1).float().cpu()


# ----------------------------------------------------------------------------------- integrated gradients


def integrated_gradients_importance(subject: Subject, x, *, baseline=None, target="predicted", n_steps: int = 50,
                                    internal_batch_size: int | None = None) -> Attributions:
    """Integrated gradients (Sundararajan et al. 2017) per row, via Captum, from ``baseline``
    (default: the mean of ``x``; pass a tensor of F values, or rows whose mean is taken).

    Per row the values sum to f(x) - f(baseline) up to the integration error, which
    :meth:`Attributions.completeness_error` reports.
    """
    from captum.attr import IntegratedGradients

    columns = _check_tabular(subject)
    x, _ = _rows(x, what="rows to explain")
    n, f = x.shape
    if baseline is None:
        base = x.mean(0, keepdim=True)
    else:
        base = baseline.x if isinstance(baseline, Batch) else baseline
        base = _rows(base, what="baseline")[0] if hasattr(base, "batches") else torch.as_tensor(base).float()
        base = base.reshape(-1, f).mean(0, keepdim=True)
    idx, labels = _target_indices(subject, x, target)
    fn = _explained(subject)
    ig = IntegratedGradients(fn)
    a = ig.attribute(x.clone().requires_grad_(False), baselines=base.expand(n, f).contiguous(), target=idx.tolist(),
                     n_steps=n_steps, internal_batch_size=internal_batch_size or max(n, MAX_ROWS // 4))
    fx = _scores(subject, x, idx)
    fref = _scores(subject, base.expand(n, f).contiguous(), idx)
    return Attributions("integrated_gradients", columns, a.detach().double().cpu().numpy(),
                        fx.numpy().astype(np.float64), fref.numpy().astype(np.float64), labels,
                        details={"n_steps": n_steps})


# ----------------------------------------------------------------------------------- partial dependence


def _grid(values: torch.Tensor, grid: int) -> np.ndarray:
    v = values.double().numpy()
    distinct = np.unique(v)
    if len(distinct) <= grid:
        return distinct
    return np.unique(np.quantile(v, np.linspace(0.05, 0.95, grid)))


def partial_dependence(subject: Subject, data, column, *, grid: int = 20, ice: int = 50, target="majority",
                       limit: int | None = 1000, seed: int = 0) -> PartialDependence:
    """Partial dependence of the explained output on one column (Friedman 2001), with ICE curves
    for ``ice`` sampled rows (Goldstein et al. 2015).

    The grid holds the column's 5%..95% quantiles (its distinct values when it has few). Classifiers
    are read through one class's logit: the class predicted most often (``target="majority"``) or
    the one named. Every row × grid value is one batched pass.
    """
    columns = _check_tabular(subject)
    j = _column_index(column, columns)
    x, _ = _rows(data, limit)
    n, f = x.shape
    gvals = torch.as_tensor(_grid(x[:, j], grid), dtype=x.dtype)
    if target == "predicted" and subject.task == "classification":
        target = "majority"  # one class per curve
    idx, labels = _target_indices(subject, x, target)
    xg = x.repeat(len(gvals), 1, 1)  # (G, N, F)
    xg[:, :, j] = gvals[:, None]
    vals = _scores(subject, xg.reshape(-1, f), idx.repeat(len(gvals))).reshape(len(gvals), n).T  # (N, G)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(n, generator=g)[: min(ice, n)]
    return PartialDependence(columns[j], gvals.double().numpy(), vals.double().mean(0).numpy(),
                             vals[pick].double().numpy(), labels[0], n)


def _pd_at_data(subject, x, cols: list[int], idx) -> np.ndarray:
    """PD of ``cols`` evaluated at each row's own values: mean over rows l of f(x_l with cols from row i)."""
    n, f = x.shape
    xs = x.repeat(n, 1, 1)  # (i, l, F)
    xs[:, :, cols] = x[:, None, cols]
    v = _scores(subject, xs.reshape(-1, f), idx.repeat(n)).reshape(n, n).double()
    pd = v.mean(1).numpy()
    return pd - pd.mean()


def interaction_strength(subject: Subject, data, pairs=None, *, top: int = 4, target="majority",
                         limit: int = 200, seed: int = 0, importance: Importance | None = None) -> Interactions:
    """Friedman's H² for pairs of columns (Friedman & Popescu 2008):

    H²_jk = Σ_i [PD_jk(x_ij, x_ik) - PD_j(x_ij) - PD_k(x_ik)]² / Σ_i PD_jk(x_ij, x_ik)²,

    with centred partial dependences evaluated at the data. 0 means the pair acts additively; near
    1, the pair's joint effect is all interaction. Cost is n² model evaluations per partial
    dependence, so at most ``limit`` rows are used. ``pairs=None`` checks every pair among the
    ``top`` columns by permutation importance (``importance`` can pass one already computed).
    """
    columns = _check_tabular(subject)
    x, y = _rows(data)
    g = torch.Generator().manual_seed(seed)
    if len(x) > limit:
        keep = torch.randperm(len(x), generator=g)[:limit]
        x, y = x[keep], None if y is None else y[keep]
    if pairs is None:
        imp = importance or permutation_importance(subject, (x, y), repeats=3, seed=seed)
        order = [c for c in imp.ranking() if c in columns][:top]
        pairs = [(a, b) for i, a in enumerate(order) for b in order[i + 1:]]
    resolved = []
    for pair in pairs:
        if len(pair) != 2:
            raise OptionError(f"Each pair must name two columns, got {pair!r}.")
        a, b = (_column_index(c, columns) for c in pair)
        if a == b:
            raise OptionError(f"A pair needs two different columns, got {pair!r}.")
        resolved.append((a, b))
    if target == "predicted" and subject.task == "classification":
        target = "majority"
    idx, labels = _target_indices(subject, x, target)
    single: dict[int, np.ndarray] = {}
    h2 = []
    for a, b in resolved:
        for c in (a, b):
            if c not in single:
                single[c] = _pd_at_data(subject, x, [c], idx)
        joint = _pd_at_data(subject, x, [a, b], idx)
        den = float((joint ** 2).sum())
        h2.append(float(((joint - single[a] - single[b]) ** 2).sum()) / den if den > 1e-12 else 0.0)
    return Interactions([(columns[a], columns[b]) for a, b in resolved], np.asarray(h2), labels[0] if labels else "",
                        len(x))


# ----------------------------------------------------------------------------------- all together


def column_importance(subject: Subject, data, *, methods: Sequence[str] = ("permutation", "shapley",
                                                                            "integrated_gradients"),
                      repeats: int = 10, groups: Mapping[str, Sequence[str]] | None = None, limit: int | None = 1000,
                      explain_rows: int = 100, background_rows: int = 50, n_permutations: int = 10,
                      metric: str = "auto", seed: int = 0, progress: bool = False) -> ColumnImportance:
    """Every method side by side (never averaged), their ranks, and their agreement (Spearman).

    Shapley values and integrated gradients explain the first ``explain_rows`` rows, Shapley values
    against ``background_rows`` rows sampled from the data; their global value is mean |value|.
    """
    columns = _check_tabular(subject)
    unknown = [m for m in methods if m not in METHOD_TITLES]
    if unknown:
        raise OptionError(f"Unknown method {unknown[0]!r}. " + did_you_mean(unknown[0], list(METHOD_TITLES), "method"))
    x, y = _rows(data, limit)
    results: dict[str, Importance] = {}
    for m in methods:
        if m == "permutation":
            results[m] = permutation_importance(subject, (x, y), repeats=repeats, groups=groups, metric=metric,
                                                seed=seed, progress=progress)
        elif m == "shapley":
            g = torch.Generator().manual_seed(seed + 1)
            bg = x[torch.randperm(len(x), generator=g)[:background_rows]]
            results[m] = shapley_sampling(subject, x[:explain_rows], bg, n_permutations=n_permutations, seed=seed,
                                          progress=progress).importance
        else:
            results[m] = integrated_gradients_importance(subject, x[:explain_rows], baseline=x).importance
    agreement = {}
    names = list(results)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = [c for c in results[a].columns if c in results[b].columns]
            va = [results[a].values[results[a].columns.index(c)] for c in common]
            vb = [results[b].values[results[b].columns.index(c)] for c in common]
            rho = stats.spearmanr(va, vb).statistic if len(common) > 2 else float("nan")
            agreement[(a, b)] = float(rho)
    return ColumnImportance(columns, results, agreement)
