"""The statistical reading of a one-layer network: logistic (or linear) regression.

A network whose output is one ``nn.Linear`` on its (normalized) inputs, read through a final
Sigmoid/Softmax/LogSoftmax, *is* a logistic regression (a multinomial one for K > 2 classes; a
linear regression without a squash). When its weights are the maximum-likelihood fit, the usual
Wald inference applies: standard errors from the inverse Fisher information at the network's own
weights, z = coef / se, two-sided normal p-values and 95% intervals, as statsmodels' ``Logit``
and ``MNLogit`` report them (``OLS`` with t statistics and n - P degrees of freedom).

The reading only holds when the weights are a maximum of the likelihood: the score must vanish
(no weight decay, no early stopping) and a maximum must exist, which fails when a hyperplane
separates the classes (Albert & Anderson 1984); separation is detected with the linear program
of Konis (2007). Either failure, or a singular information matrix, marks the reading invalid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import optimize, stats
from torch import nn

from neuronscope.errors import OptionError, UnsupportedError

Z975 = 1.959963984540054  # the normal 0.975 quantile, as statsmodels uses
COND_LIMIT = 1e10  # information matrix condition number (unit-RMS columns) above which se is unreliable
SINGULAR_LIMIT = 1e15  # ... and above which it is not computed at all


@dataclass
class LogisticReading:
    """Coefficients and Wald inference of a one-layer network, with whether they can be trusted."""

    kind: str  # "logit", "mnlogit" or "ols"
    columns: list[str]  # "const" first
    classes: list[str] | None
    reference: str | None
    coef: np.ndarray  # (P,) or (K-1, P) for mnlogit
    se: np.ndarray
    z: np.ndarray
    p: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    odds_ratio: np.ndarray | None
    original: dict | None
    valid: bool
    reasons: list[str] = field(default_factory=list)
    score_norm: float = 0.0
    separation: bool = False
    n: int = 0
    df_resid: int | None = None  # ols only
    scale: np.ndarray | None = None  # per-column std the model divides by (for the sentences)

    # ----------------------------------------------------------------- rows and tables
    def _labels(self) -> list[str | None]:
        """The class each row of a 2-D coefficient array belongs to (None for 1-D)."""
        if self.kind == "mnlogit":
            return [c for c in self.classes if c != self.reference]
        return [None]

    def rows(self, original: bool = False) -> list[dict]:
        """One dict per (class,) column: the logistic.csv format, plus valid and reason.

        ``original`` gives the numbers in the columns' original units (when the model normalizes).
        """
        src = self.original if original and self.original is not None else {
            k: getattr(self, k) for k in ("coef", "se", "z", "p", "ci_low", "ci_high", "odds_ratio")}
        reason = "" if self.valid else "; ".join(self.reasons)
        out = []
        for r, label in enumerate(self._labels()):
            for j, col in enumerate(self.columns):
                def at(name):
                    a = src.get(name)
                    if a is None:
                        return None
                    return float(np.atleast_2d(a)[r, j])
                row = {"column": col}
                if label is not None:
                    row["class"] = label
                row.update({k: at(k) for k in ("coef", "se", "z", "p", "ci_low", "ci_high")})
                if self.kind != "ols":
                    row["odds_ratio"] = at("odds_ratio")
                row.update(valid=self.valid, reason=reason)
                out.append(row)
        return out

    def tables(self) -> dict[str, dict[str, list]]:
        def columnar(rows):
            return {k: [r[k] for r in rows] for k in rows[0]} if rows else {}
        out = {"logistic": columnar(self.rows())}
        if self.original is not None:
            out["logistic_original"] = columnar(self.rows(original=True))
        return out

    def images(self) -> dict:
        return {}

    def summary(self) -> dict:
        return {"kind": self.kind, "valid": self.valid, "reasons": list(self.reasons), "n": self.n,
                "score_norm": _finite(self.score_norm), "separation": self.separation,
                "classes": self.classes, "reference": self.reference,
                "sentence": self.sentence(), "sentences": self.sentences()}

    # ----------------------------------------------------------------- words
    def _best(self):
        """The numbers in the model's units and the row/column of the non-constant coefficient
        with the largest |z| (per std the model divides by: a scale users chose)."""
        src = {k: getattr(self, k) for k in ("coef", "se", "z", "p", "ci_low", "ci_high")}
        z = np.abs(np.atleast_2d(src["z"])[:, 1:])
        if z.size == 0 or not np.isfinite(z).any():
            return src, None
        r, j = np.unravel_index(np.nanargmax(np.where(np.isfinite(z), z, -1)), z.shape)
        return src, (int(r), int(j) + 1)

    def _describe(self, src, r: int, j: int) -> str:
        def get(name):
            return float(np.atleast_2d(src[name])[r, j])
        col = self.columns[j]
        s = 1.0 if self.scale is None else float(self.scale[j - 1])
        unit = "unit of" if s == 1.0 else f"{_fmt(s)} increase in"
        if self.kind == "ols":
            return (f"each {unit} {col!r} adds {_fmt(get('coef'))} to the output "
                    f"(95% CI {_fmt(get('ci_low'))} to {_fmt(get('ci_high'))}, p = {_fmt(get('p'), 2)})")
        if self.kind == "logit":
            target = f"{self.classes[1]!r}"
        else:
            target = f"{self._labels()[r]!r} against {self.reference!r}"
        return (f"each {unit} {col!r} multiplies the odds of {target} by {_fmt(math.exp(get('coef')))} "
                f"(95% CI {_fmt(math.exp(get('ci_low')))}-{_fmt(math.exp(get('ci_high')))}, "
                f"p = {_fmt(get('p'), 2)})")

    def sentence(self) -> str:
        what = "a linear regression" if self.kind == "ols" else (
            "a multinomial logistic regression" if self.kind == "mnlogit" else "a logistic regression")
        if not self.valid:
            return f"This network cannot be read as {what}: " + "; ".join(self.reasons) + "."
        src, best = self._best()
        if best is None:
            return f"This network is {what}, but no coefficient has a finite z statistic."
        return f"This network is {what}: " + self._describe(src, *best) + "."

    def sentences(self) -> list[str]:
        """One sentence per non-constant coefficient (empty when the reading is invalid)."""
        if not self.valid:
            return []
        src = {k: getattr(self, k) for k in ("coef", "se", "z", "p", "ci_low", "ci_high")}
        rows = len(self._labels())
        return [self._describe(src, r, j)[0].upper() + self._describe(src, r, j)[1:] + "."
                for r in range(rows) for j in range(1, len(self.columns))]


def _fmt(v: float, digits: int = 3) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.{digits}g}"


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


# --------------------------------------------------------------------- is it one layer?
def _the_linear(subject) -> tuple[nn.Linear | None, str]:
    """The single Linear a one-layer network is made of, or None and what the network is instead."""
    owners = [(name, m) for name, m in subject.model.named_modules()
              if any(True for _ in m.parameters(recurse=False))]
    if len(subject.input_shape) != 1:
        return None, f"it takes inputs of shape {subject.input_shape}, not a vector of columns"
    if len(owners) != 1 or not isinstance(owners[0][1], nn.Linear):
        kinds = ", ".join(type(m).__name__ for _, m in owners[:8]) + (" ..." if len(owners) > 8 else "")
        return None, f"it has {len(owners)} modules with weights ({kinds or 'none'})"
    lin = owners[0][1]
    if lin.in_features != subject.input_shape[0]:
        return None, (f"its Linear takes {lin.in_features} inputs but the model takes "
                      f"{subject.input_shape[0]} columns")
    return lin, ""


def _affine_probe(subject, lin: nn.Linear) -> str:
    """'' when the logits equal the Linear applied to the normalized inputs; else what differs."""
    if subject._probabilities_in_forward:
        return "its forward applies a softmax that is not a module, so its logits cannot be read"
    if subject.squash == "sigmoid" and subject.output_dim != 1:
        return "it has several sigmoid outputs (a multi-label model), not one logistic output"
    g = torch.Generator().manual_seed(0)
    zn = 3.0 * torch.randn(64, subject.input_shape[0], generator=g, dtype=torch.float64)
    mean, std = _norm(subject)
    raw = zn * torch.from_numpy(std) + torch.from_numpy(mean)
    with torch.no_grad(), subject.borrowed():
        got = subject.logits(raw.to(subject.dtype)).reshape(64, -1).double()
        z = subject.prepare(raw.to(subject.dtype))
        want = nn.functional.linear(z, lin.weight, lin.bias).double()
    if got.shape != want.shape:
        return f"its output has {got.shape[1]} values but its Linear gives {want.shape[1]}"
    tol = (1e-10 if subject.dtype == torch.float64 else 1e-4) * (1 + want.abs().max().item())
    if not torch.allclose(got, want, rtol=0, atol=tol):
        return ("its output is not the Linear applied to its inputs (something without weights, "
                "such as an activation, sits between them)")
    return ""


def is_one_layer(subject) -> bool:
    """True when the network's logits are one nn.Linear of its (normalized) inputs, nothing else."""
    lin, _ = _the_linear(subject)
    return lin is not None and _affine_probe(subject, lin) == ""


# --------------------------------------------------------------------- the reading
def _norm(subject) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std the model applies (0 and 1 where it applies none), float64."""
    f = subject.input_shape[0]
    mean = np.zeros(f) if subject.mean is None else np.broadcast_to(
        subject.mean.detach().cpu().double().numpy().ravel(), (f,)).copy()
    std = np.ones(f) if subject.std is None else np.broadcast_to(
        subject.std.detach().cpu().double().numpy().ravel(), (f,)).copy()
    return mean, std


def _load(subject, data, limit) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for batch in data.batches(1024, limit=limit):
        if batch.y is None:
            raise OptionError("The logistic reading needs labelled data: give the data's target column.")
        xs.append(batch.x.detach().cpu().double().reshape(len(batch), -1))
        ys.append(batch.y.detach().cpu())
    if not xs:
        raise OptionError("The logistic reading needs data, and the data is empty.")
    x, y = torch.cat(xs).numpy(), torch.cat(ys).numpy()
    if subject.task == "classification":
        y = _class_indices(y, getattr(data, "classes", None), subject.classes)
    return x, y.astype(np.float64)


def _class_indices(y: np.ndarray, data_classes, classes: list[str]) -> np.ndarray:
    """Labels as indices into the subject's classes (matched by name when the data names them)."""
    y = y.astype(np.int64)
    if data_classes and list(data_classes) != list(classes) and set(data_classes) <= set(classes):
        y = np.array([classes.index(data_classes[v]) for v in y], dtype=np.int64)
    if y.size and (y.min() < 0 or y.max() >= len(classes)):
        raise OptionError(f"The data's labels run from {y.min()} to {y.max()}, but the model has "
                          f"{len(classes)} classes ({', '.join(classes)}).")
    return y


def _separation(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, bool] | None:
    """A (K-1, P) direction that (quasi-)separates the classes and whether the separation is
    complete, or None (Konis 2007 LP).

    Maximize the summed margins sum_i x_i'(b_{y_i} - b_j), j != y_i, subject to every such margin
    being >= 0 and |b| <= 1 (b_0 = 0). The optimum is 0 exactly when no direction separates the
    classes completely or quasi-completely; then a maximum-likelihood estimate exists (Albert &
    Anderson 1984). ``x`` should have unit-RMS columns so that the tolerances mean something.
    """
    n, p = x.shape
    m = k - 1
    rows = []
    for j in range(k):
        idx = np.flatnonzero(y != j)  # constraints "own class beats class j"
        if idx.size == 0:
            continue
        a = np.zeros((idx.size, m * p))
        own = y[idx].astype(int)
        for c in range(1, k):
            sel = own == c
            a[sel, (c - 1) * p:c * p] += x[idx[sel]]
        if j > 0:
            a[:, (j - 1) * p:j * p] -= x[idx]
        rows.append(a)
    a = np.concatenate(rows)
    res = optimize.linprog(-a.sum(0), A_ub=-a, b_ub=np.zeros(len(a)), bounds=(-1, 1), method="highs")
    if res.status != 0:
        return None
    margins = a @ res.x
    if not (margins.max() > 1e-6 and margins.min() > -1e-7):
        return None
    # Complete separation when even the smallest margin can be made positive: maximize it.
    c = np.zeros(m * p + 1)
    c[-1] = -1.0
    strict = optimize.linprog(c, A_ub=np.concatenate([-a, np.ones((len(a), 1))], 1),
                              b_ub=np.zeros(len(a)), bounds=[(-1, 1)] * (m * p) + [(None, 1)],
                              method="highs")
    complete = strict.status == 0 and -strict.fun > 1e-9
    return res.x.reshape(m, p), bool(complete)


def _invert(info: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, float]:
    """Inverse of an information matrix (computed on unit-RMS parameters) and its condition number."""
    d = 1.0 / scale
    scaled = info * np.outer(d, d)
    with np.errstate(all="ignore"):
        cond = float(np.linalg.cond(scaled)) if np.isfinite(scaled).all() else math.inf
    if not math.isfinite(cond) or cond > SINGULAR_LIMIT:
        return np.full_like(info, np.nan), cond
    return np.linalg.inv(scaled) * np.outer(d, d), cond


def _wald(coef: np.ndarray, cov: np.ndarray, df: int | None, shape) -> dict:
    """se, z, p and 95% interval from a covariance; t with ``df`` degrees of freedom when given."""
    se = np.sqrt(np.where(np.diag(cov) >= 0, np.diag(cov), np.nan))
    with np.errstate(all="ignore"):
        z = coef / se
    if df is None:
        p, q = 2 * stats.norm.sf(np.abs(z)), Z975
    else:
        p, q = 2 * stats.t.sf(np.abs(z), df), stats.t.ppf(0.975, df)
    out = {"coef": coef, "se": se, "z": z, "p": p, "ci_low": coef - q * se, "ci_high": coef + q * se}
    return {k: v.reshape(shape) for k, v in out.items()}


def logistic_reading(subject, data, *, limit: int | None = None, score_tol: float = 1e-4) -> LogisticReading:
    """Read a one-layer network as the logistic (multinomial, or linear) regression it is.

    ``score_tol`` bounds the score, the gradient of the mean log-likelihood at the network's
    weights, taken per unit-RMS design column (for OLS also per residual standard deviation) so
    that it does not depend on the columns' units; the weights of a maximum-likelihood fit give ~0.
    """
    lin, what = _the_linear(subject)
    if lin is not None:
        what = _affine_probe(subject, lin)
    if lin is None or what:
        raise UnsupportedError(
            f"The logistic-regression reading needs a network that is one Linear layer on its input "
            f"columns (optionally followed by Sigmoid/Softmax/LogSoftmax); this one is not: {what}. "
            "For deeper networks use the feature-importance analyses (attributions, permutation "
            "importance), which do not assume a linear model.")
    task, k_out = subject.task, subject.output_dim
    if task == "regression":
        if k_out != 1:
            raise UnsupportedError(f"The linear-regression reading needs one output; this model has {k_out}.")
        kind = "ols"
    else:
        kind = "logit" if k_out <= 2 else "mnlogit"

    x_raw, y = _load(subject, data, limit)
    mean, std = _norm(subject)
    n = len(x_raw)
    X = np.concatenate([np.ones((n, 1)), (x_raw - mean) / std], axis=1)
    P = X.shape[1]
    columns = ["const"] + list(subject.columns or getattr(data, "columns", None) or
                               [f"x{j + 1}" for j in range(P - 1)])
    with torch.no_grad():
        B = torch.cat([lin.bias.detach()[:, None] if lin.bias is not None
                       else torch.zeros(lin.out_features, 1, dtype=lin.weight.dtype),
                       lin.weight.detach()], 1).cpu().double().numpy()  # (outputs, P)
    if B.shape[0] > 1:
        B = B[1:] - B[0]  # contrasts against class 0, the identified parameters
    rms = np.sqrt((X ** 2).mean(0))
    rms[rms == 0] = 1.0
    reasons: list[str] = []
    classes = subject.classes if kind != "ols" else None
    m = B.shape[0]
    eta = X @ B.T  # (n, m)
    df = None

    if kind == "ols":
        r = y - eta[:, 0]
        df = n - P
        if df <= 0:
            raise OptionError(f"Linear regression with {P} coefficients needs more than {P} rows; got {n}.")
        sigma2 = float(r @ r) / df
        info = X.T @ X / max(sigma2, 1e-300)
        score = X.T @ r / n / (max(math.sqrt(sigma2), 1e-300) * rms)
        score = score[None]
    else:
        Y = np.zeros((n, m + 1))
        Y[np.arange(n), y.astype(int)] = 1.0
        full = np.concatenate([np.zeros((n, 1)), eta], 1)
        prob = np.exp(full - full.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        prob = prob[:, 1:]
        score = (Y[:, 1:] - prob).T @ X / n / rms  # (m, P)
        info = np.zeros((m * P, m * P))
        for a in range(m):
            for b in range(m):
                w = prob[:, a] * ((a == b) - prob[:, b])
                info[a * P:(a + 1) * P, b * P:(b + 1) * P] = X.T @ (w[:, None] * X)

    score_norm = float(np.abs(score).max())
    separation = False
    if kind != "ols":
        found = _separation(X / rms, y.astype(int), m + 1)
        if found is not None:
            separation = True
            direction, complete = found
            w = np.abs(direction[:, 1:]).max(0)
            cols = [columns[j + 1] for j in np.argsort(-w) if w[j] > 1e-6 * w.max()]
            named = ", ".join(cols[:6]) + (f" and {len(cols) - 6} more" if len(cols) > 6 else "")
            reasons.append(
                f"the classes are {'perfectly' if complete else 'quasi-completely'} separable by columns {named}: the "
                "likelihood has no maximum, the weights grow without bound and standard errors are "
                "meaningless")
    if not math.isfinite(score_norm) or score_norm > score_tol:
        reasons.append(
            f"the score (gradient of the log-likelihood) at the network's weights is {score_norm:.2g}, "
            "not ~0: the fit is not a maximum-likelihood fit (weight decay, early stopping or not "
            "converged)")
    cov, cond = _invert(info, np.tile(rms, m))
    if not separation and cond > COND_LIMIT:
        reasons.append(
            f"the information matrix is {'singular' if not np.isfinite(cov).all() else 'ill-conditioned'} "
            f"(condition number {cond:.2g}): some columns are (nearly) collinear or constant, so "
            "their coefficients are not identified")
    if separation:
        cov = np.full_like(cov, np.nan)  # no maximum: the Wald numbers are undefined

    shape = B.shape if kind == "mnlogit" else (P,)
    model = _wald(B.ravel(), cov, df, shape)
    odds = None
    if kind != "ols":
        with np.errstate(over="ignore"):
            odds = np.exp(model["coef"])

    original = None
    if subject.mean is not None or subject.std is not None:
        A = np.diag(np.concatenate([[1.0], 1.0 / std]))
        A[0, 1:] = -mean / std
        Ak = np.kron(np.eye(m), A)
        original = _wald(Ak @ B.ravel(), Ak @ cov @ Ak.T, df, shape)
        if kind != "ols":
            with np.errstate(over="ignore"):
                original["odds_ratio"] = np.exp(original["coef"])

    return LogisticReading(
        kind=kind, columns=columns, classes=classes,
        reference=classes[0] if kind == "mnlogit" else None,
        odds_ratio=odds, original=original, valid=not reasons, reasons=reasons,
        score_norm=score_norm, separation=separation, n=n, df_resid=df,
        scale=None if subject.std is None else std, **model)
