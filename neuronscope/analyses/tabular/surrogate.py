"""How far a network on plain numeric vectors is from a logistic (or linear) regression.

Two readings:

- a *global surrogate* (model extraction, Craven & Shavlik 1996): a logistic regression
  (multinomial for K > 2 classes, linear for regression) fitted to the network's own outputs, not to
  the true labels, on z-scored columns. A group-lasso path (Yuan & Lin 2006; an L1 path per column,
  all classes together) orders the columns; the model on each column set is refitted and its
  fidelity to the network measured on held-out rows. The smallest set reaching the target says how
  simple the network's behaviour is; when even every column falls short, no logistic regression
  imitates it;
- a *local linear reading* per row (in the spirit of Ribeiro et al. 2016): gradient x (input - mean)
  of the explained logit, the first-order linear model of the network around each row.

The surrogate is fitted with our own small optimizer on the network's probabilities (soft labels):
cross-entropy against soft targets is the exact criterion, while scikit-learn's LogisticRegression
only takes hard labels (duplicated, weighted rows would multiply the data K times and its L1 solvers
give no group penalty across classes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import optimize, special

from ...data import Batch
from ...errors import OptionError, UnsupportedError
from ...subject import Subject
from .importance import _check_tabular, _explained, _rows, _target_indices

#: Ridge on the refitted coefficients (per row of mean loss): keeps them finite when the network's
#: probabilities are (nearly) 0 or 1 on rows a hyperplane separates, and is otherwise negligible.
RIDGE = 1e-4
HELD_OUT = 0.3  # share of rows held out to measure fidelity
MIN_SPLIT = 50  # below this many rows, fidelity is measured on the rows fitted
PATH_STEPS = 30
PATH_RATIO = 1e-3
CHUNK = 4096

KINDS = {"logistic": "logistic regression", "multinomial": "multinomial logistic regression",
         "linear": "linear regression"}


# ----------------------------------------------------------------------------------- results


@dataclass
class Surrogate:
    """A logistic/multinomial/linear regression imitating the network, and how well it does."""

    kind: str  # "logistic", "multinomial" or "linear"
    columns: list[str]  # the columns the chosen surrogate uses, largest coefficient first
    coef: np.ndarray  # (P,), or (K, P) multinomial / (D, P) several outputs; per data std of a column
    intercept: np.ndarray  # (1,), (K,) or (D,)
    agreement: float  # share of evaluated rows where surrogate and network predict the same class
    log_loss: float  # cross-entropy of the surrogate against the network's probabilities
    network_entropy: float  # the network's mean entropy on the same rows: the floor of log_loss
    r2: float | None  # regression: R² of the surrogate against the network's outputs
    held_out: bool  # fidelity measured on rows not used to fit
    path: list[dict]  # fidelity per column set: columns (count), names, agreement, log_loss, r2
    all_columns: list[str] = field(default_factory=list)
    classes: list[str] | None = None
    target: float = 0.95  # the fidelity asked for (agreement; R² for regression)
    reached: bool = False
    split: str = ""
    n: int = 0
    center: np.ndarray | None = None  # data mean of every column (raw units)
    scale: np.ndarray | None = None  # data std of every column (raw units)
    full: dict = field(default_factory=dict)  # the surrogate on every column: coef, intercept, fidelity

    # ----------------------------------------------------------------- numbers
    def _says(self, entry: dict) -> str:
        if self.kind == "linear":
            return f"R² = {entry['r2']:.2f}" if entry.get("r2") is not None else "R² = nan"
        return f"{_pct(entry['agreement'])} agreement"

    def coef_original(self) -> np.ndarray:
        """The coefficients per raw unit of each column (coef / the column's data std)."""
        idx = [self.all_columns.index(c) for c in self.columns]
        return self.coef / self.scale[idx]

    def rows(self) -> list[dict]:
        """One dict per (class or output,) column of the chosen surrogate."""
        coef = np.atleast_2d(self.coef)
        orig = np.atleast_2d(self.coef_original()) if self.scale is not None else coef * np.nan
        labels = self._labels(len(coef))
        out = []
        for r, label in enumerate(labels):
            base = {} if label is None else {"class": label}
            out.append({"column": "const", **base, "coef": float(self.intercept[r]), "coef_original": None})
            for j, c in enumerate(self.columns):
                out.append({"column": c, **base, "coef": float(coef[r, j]), "coef_original": float(orig[r, j])})
        return out

    def _labels(self, rows: int) -> list[str | None]:
        if rows == 1:
            return [None]
        if self.kind == "multinomial" and self.classes:
            return list(self.classes)
        return [f"output {d}" for d in range(rows)]

    def tables(self) -> dict[str, dict[str, list]]:
        rows = self.rows()
        keys = list(dict.fromkeys(k for r in rows for k in r))
        path = [{**e, "names": "; ".join(e["names"])} for e in self.path]
        return {"surrogate": {k: [r.get(k) for r in rows] for k in keys},
                "surrogate_path": {k: [e[k] for e in path] for k in ("columns", "names", "agreement", "log_loss", "r2")}}

    def images(self) -> dict:
        return {}

    def summary(self) -> dict:
        def num(v):
            return None if v is None or not math.isfinite(v) else float(v)
        return {"kind": self.kind, "columns": list(self.columns), "n_columns": len(self.columns),
                "agreement": num(self.agreement), "log_loss": num(self.log_loss),
                "network_entropy": num(self.network_entropy), "r2": num(self.r2),
                "target": self.target, "reached": self.reached, "held_out": self.held_out, "split": self.split,
                "n": self.n, "full_agreement": num(self.full.get("agreement")), "full_r2": num(self.full.get("r2")),
                "baseline_agreement": num(self.path[0].get("agreement")) if self.path else None,
                "sentence": self.sentence()}

    # ----------------------------------------------------------------- words
    def sentence(self) -> str:
        where = "on held-out rows" if self.held_out else "on the rows it was fitted to"
        k, f = len(self.columns), len(self.all_columns)
        if self.reached:
            names = ", ".join(self.columns[:5]) + (", ..." if k > 5 else "")
            tail = "" if k == f else f" (all {f} columns: {self._says(self.full).replace(' agreement', '')})"
            return (f"This network behaves like a {KINDS[self.kind]} on {k} column{'s' * (k != 1)} ({names}) "
                    f"with {self._says(self.__dict__)} {where}{tail}.")
        want = f"R² = {self.target:.2f}" if self.kind == "linear" else f"{_pct(self.target)} agreement"
        return (f"No {KINDS[self.kind]} on these columns imitates it well: at best {self._says(self.__dict__)} "
                f"{where} (with {k} of {f} columns), short of the {want} asked for.")


@dataclass
class LocalLinear:
    """Per row, gradient x (input - mean) of the explained output: the local linear reading."""

    ids: list
    columns: list[str]
    values: np.ndarray  # (N, F)
    gradients: np.ndarray | None = None  # (N, F) the local slopes, per raw unit
    mean: np.ndarray | None = None  # (F,) the point the values are measured from
    target: list[str] = field(default_factory=list)

    def column_rows(self) -> list[dict]:
        """Per column: mean |value|, mean value, mean slope, and its sign stability: the share of rows
        whose slope has the usual sign among rows explaining the same output (explaining the predicted
        class, a binary model's rows of either class then each count against their own class)."""
        groups = [np.asarray(self.target) == t for t in dict.fromkeys(self.target)] if self.target else \
            [np.ones(len(self.values), dtype=bool)]
        out = []
        for j, c in enumerate(self.columns):
            v = self.values[:, j]
            g = self.gradients[:, j] if self.gradients is not None else v
            steady = sum(max(int((g[m] > 0).sum()), int((g[m] < 0).sum())) for m in groups)
            out.append({"column": c, "mean_abs": float(np.abs(v).mean()), "mean": float(v.mean()),
                        "slope_mean": float(g.mean()), "sign_stability": steady / max(len(v), 1)})
        return out

    def rows(self) -> list[dict]:
        """One dict per row: its id, what was explained and one value per column."""
        return [{"id": i, "target": t, **{c: float(self.values[r, j]) for j, c in enumerate(self.columns)}}
                for r, (i, t) in enumerate(zip(self.ids, self.target or [""] * len(self.ids)))]

    def tables(self) -> dict[str, dict[str, list]]:
        cols = self.column_rows()
        per_row = {"id": [str(i) for i in self.ids], "target": list(self.target or [""] * len(self.ids)),
                   **{c: self.values[:, j].tolist() for j, c in enumerate(self.columns)}}
        return {"local_linear": per_row,
                "local_linear_columns": {k: [r[k] for r in cols] for k in cols[0]} if cols else {}}

    def images(self) -> dict:
        return {}

    def summary(self) -> dict:
        cols = sorted(self.column_rows(), key=lambda r: -r["mean_abs"])
        out = {"n": len(self.values), "columns": cols}
        if cols:
            top = cols[0]
            steady = "keeps one sign" if top["sign_stability"] >= 0.95 else "changes sign"
            out["finding"] = (f"Locally, {top['column']!r} moves the explained output most (mean |value| "
                              f"{top['mean_abs']:.3g}); its slope {steady} across rows "
                              f"({_pct(top['sign_stability'])} of rows share the usual sign).")
        return out


# ----------------------------------------------------------------------------------- helpers


def _pct(a: float) -> str:
    """A share as a percentage that never rounds a shortfall up to 100%."""
    if a is None or not math.isfinite(a):
        return "nan%"
    s = f"{100 * a:.0f}%"
    if s == "100%" and a < 1:
        s = f"{100 * a:.1f}%" if f"{100 * a:.1f}" != "100.0" else ">99.9%"
    return s


def _network_outputs(subject: Subject, x: torch.Tensor) -> np.ndarray:
    """The network's class probabilities (float64, from its logits) or regression outputs, (N, K/D)."""
    parts = []
    with torch.no_grad(), subject.borrowed():
        for s in range(0, len(x), CHUNK):
            xs = x[s:s + CHUNK]
            if subject.task == "classification":
                z = subject.logits(xs).reshape(len(xs), -1).double()
                parts.append(subject.to_probabilities(z).cpu().numpy())
            else:
                parts.append(subject.forward(xs).reshape(len(xs), -1).double().cpu().numpy())
    return np.concatenate(parts)


def _scores(kind: str, z: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Full logits (N, K) of a logistic/multinomial model, or outputs (N, D) of a linear one."""
    s = z @ w + b
    return np.concatenate([np.zeros((len(s), 1)), s], 1) if kind == "logistic" else s


def _loss_grad(kind: str, z: np.ndarray, t: np.ndarray, w: np.ndarray, b: np.ndarray):
    """Mean loss against the network's outputs and its gradients in w (P, M) and b (M,)."""
    n = len(z)
    s = z @ w + b
    if kind == "linear":
        r = s - t
        loss, ds = 0.5 * float((r ** 2).sum()) / n, r / n
    elif kind == "logistic":
        s1 = s[:, 0]  # cross-entropy with soft targets: softplus(s) - t1 s
        loss = float((np.logaddexp(0.0, s1) - t[:, 1] * s1).sum()) / n
        ds = (special.expit(s1) - t[:, 1])[:, None] / n
    else:
        lse = special.logsumexp(s, axis=1)
        loss = float((lse - (t * s).sum(1)).sum()) / n
        ds = (np.exp(s - lse[:, None]) - t) / n
    return loss, z.T @ ds, ds.sum(0)


def _start(kind: str, t: np.ndarray) -> np.ndarray:
    """The best intercept with no columns."""
    if kind == "linear":
        return t.mean(0)
    m = np.clip(t.mean(0), 1e-12, 1.0)
    if kind == "logistic":
        return np.array([math.log(m[1] / m[0])])
    return np.log(m) - np.log(m).mean()


def _width(kind: str, t: np.ndarray) -> int:
    return 1 if kind == "logistic" else t.shape[1]


def _group_path(kind: str, z: np.ndarray, t: np.ndarray, steps: int = PATH_STEPS, iters: int = 300) -> list[list[int]]:
    """Column sets along a group-lasso path (one group per column, all classes together), solved by
    FISTA with warm starts; each set ordered by when its columns entered."""
    n, p = z.shape
    if kind == "linear":  # unit-scale outputs: the tolerances then mean the same for any output scale
        t = (t - t.mean(0)) / np.where(t.std(0) > 0, t.std(0), 1.0)
    m = _width(kind, t)
    b = _start(kind, t)
    w = np.zeros((p, m))
    _, gw, _ = _loss_grad(kind, z, t, w, b)
    lam_max = float(np.linalg.norm(gw, axis=1).max()) if p else 0.0
    if lam_max <= 0:
        return []
    curvature = {"linear": 1.0, "logistic": 0.25, "multinomial": 0.5}[kind]
    step = 1.0 / (curvature * np.linalg.norm(np.hstack([z, np.ones((n, 1))]), 2) ** 2 / n)
    entered: list[int] = []
    sets = []
    for lam in np.geomspace(lam_max, lam_max * PATH_RATIO, steps)[1:]:
        wy, by, tk = w.copy(), b.copy(), 1.0
        for it in range(iters):
            _, gw, gb = _loss_grad(kind, z, t, wy, by)
            v = wy - step * gw
            norms = np.linalg.norm(v, axis=1, keepdims=True)
            w_new = v * np.maximum(0.0, 1.0 - step * lam / np.maximum(norms, 1e-300))
            b_new = by - step * gb
            t_next = (1 + math.sqrt(1 + 4 * tk * tk)) / 2
            mom = (tk - 1) / t_next
            wy, by = w_new + mom * (w_new - w), b_new + mom * (b_new - b)
            moved = float(np.abs(w_new - w).max()) if w.size else 0.0
            w, b, tk = w_new, b_new, t_next
            if it > 5 and moved < 1e-7 * (1 + float(np.abs(w).max())):
                break
        active = [j for j in np.flatnonzero(np.linalg.norm(w, axis=1) > 0).tolist()]
        entered = [j for j in entered if j in active] + [j for j in active if j not in entered]
        sets.append(list(entered))
    return sets


def _refit(kind: str, z: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(w (P, M), b (M,)) of the surrogate on these columns: least squares, or soft-label
    cross-entropy with a tiny ridge by L-BFGS."""
    n, p = z.shape
    if kind == "linear":
        sol = np.linalg.lstsq(np.hstack([z, np.ones((n, 1))]), t, rcond=None)[0]
        return sol[:p], sol[p]
    m = _width(kind, t)

    def fun(theta):
        w, b = theta[:p * m].reshape(p, m), theta[p * m:]
        loss, gw, gb = _loss_grad(kind, z, t, w, b)
        return loss + 0.5 * RIDGE * float((w ** 2).sum()), np.concatenate([(gw + RIDGE * w).ravel(), gb])

    theta0 = np.concatenate([np.zeros(p * m), _start(kind, t)])
    res = optimize.minimize(fun, theta0, jac=True, method="L-BFGS-B",
                            options={"maxiter": 2000, "gtol": 1e-9, "ftol": 1e-14})
    w, b = res.x[:p * m].reshape(p, m), res.x[p * m:]
    if kind == "multinomial":
        b = b - b.mean()
    return w, b


def _fidelity(kind: str, z: np.ndarray, t: np.ndarray, w: np.ndarray, b: np.ndarray) -> dict:
    s = _scores(kind, z, w, b)
    if kind == "linear":
        ss = float(((t - t.mean(0)) ** 2).sum())
        res = float(((t - s) ** 2).sum())
        r2 = 1.0 - res / ss if ss > 0 else (1.0 if res < 1e-12 else 0.0)
        return {"agreement": None, "log_loss": None, "r2": r2}
    logq = s - special.logsumexp(s, axis=1, keepdims=True)
    return {"agreement": float((s.argmax(1) == t.argmax(1)).mean()),
            "log_loss": float(-(t * logq).sum(1).mean()), "r2": None}


def _entropy(t: np.ndarray) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(-np.where(t > 0, t * np.log(t), 0.0).sum(1).mean())


# ----------------------------------------------------------------------------------- the surrogate


def surrogate(subject: Subject, data, *, target_agreement: float = 0.95, limit: int | None = 5000,
              seed: int = 0) -> Surrogate:
    """Fit a regression to the network's own outputs and find the fewest columns that imitate it.

    Classifiers get a logistic (2 classes) or multinomial logistic regression fitted by cross-entropy
    against the network's probabilities; regression models a least-squares linear regression against
    its outputs. Columns are z-scored over the data. ``target_agreement`` is the share of rows on
    which the surrogate must predict the network's class (for regression, the R² it must reach).
    A random 30% of the rows (``seed``) is held out to measure fidelity when there are at least 50.
    """
    columns = _check_tabular(subject)
    if not 0 < target_agreement <= 1:
        raise OptionError(f"target_agreement must be in (0, 1], got {target_agreement}.")
    if subject.task == "classification":
        if subject.squash == "sigmoid" and subject.output_dim != 1:
            raise UnsupportedError("This network has several sigmoid outputs (a multi-label model); a "
                                   "logistic surrogate imitates one class distribution, not several labels.")
        kind = "logistic" if len(subject.classes) == 2 else "multinomial"
    else:
        kind = "linear"
    x, _ = _rows(data, limit)
    t = _network_outputs(subject, x)
    xn = x.double().cpu().numpy()
    center = xn.mean(0)
    scale = xn.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    z = (xn - center) / scale

    n = len(z)
    order = np.random.default_rng(seed).permutation(n)
    if n >= MIN_SPLIT:
        n_eval = int(round(HELD_OUT * n))
        ev, fit = np.sort(order[:n_eval]), np.sort(order[n_eval:])
        held_out = True
        split = (f"a random {n_eval} of {n} rows (seed {seed}) held out to measure fidelity; "
                 f"fitted on the other {n - n_eval}")
    else:
        ev = fit = np.arange(n)
        held_out = False
        split = f"only {n} rows: fitted and measured on the same rows"

    sets = _group_path(kind, z[fit], t[fit])
    candidates: dict[int, list[int]] = {0: []}
    for s in sets:
        candidates.setdefault(len(s), s)
    candidates[len(columns)] = list(range(len(columns)))
    path, fits = [], {}
    for k in sorted(candidates):
        cols = candidates[k]
        w, b = _refit(kind, z[fit][:, cols], t[fit])
        # name columns by the size of their coefficients in the refit, largest first
        rank = np.argsort(-np.linalg.norm(w, axis=1), kind="stable") if cols else []
        cols = [cols[i] for i in rank]
        w = w[list(rank)] if cols else w
        fid = _fidelity(kind, z[ev][:, cols], t[ev], w, b)
        fits[k] = (cols, w, b)
        path.append({"columns": k, "names": [columns[j] for j in cols], **fid})

    key = "r2" if kind == "linear" else "agreement"
    chosen = next((e for e in path if e["columns"] > 0 and e[key] >= target_agreement), None)
    reached = chosen is not None
    if chosen is None:
        chosen = max((e for e in path if e["columns"] > 0), key=lambda e: (e[key], -e["columns"]))
    cols, w, b = fits[chosen["columns"]]

    def shaped(w):
        return w[:, 0] if w.shape[1] == 1 else w.T.copy()

    full_cols, full_w, full_b = fits[len(columns)]
    full_order = np.argsort(full_cols)
    full = {"columns": list(columns), "coef": shaped(full_w[full_order]), "intercept": np.atleast_1d(full_b),
            **{k: v for k, v in path[-1].items() if k in ("agreement", "log_loss", "r2")}}
    nan = float("nan")
    cls = kind != "linear"
    return Surrogate(
        kind=kind, columns=[columns[j] for j in cols], coef=shaped(w), intercept=np.atleast_1d(b),
        agreement=chosen["agreement"] if cls else nan, log_loss=chosen["log_loss"] if cls else nan,
        network_entropy=_entropy(t[ev]) if cls else nan, r2=chosen["r2"], held_out=held_out, path=path,
        all_columns=list(columns), classes=subject.classes if cls else None, target=float(target_agreement),
        reached=reached, split=split, n=n, center=center, scale=scale, full=full)


# ----------------------------------------------------------------------------------- local linear


def local_linear(subject: Subject, x, *, ids=None, target="predicted", mean=None) -> LocalLinear:
    """Per row, gradient x (input - mean) of the explained logit (class logits for classifiers, the
    output for regression): the network's first-order linear reading around each row.

    For a linear model this is exactly w_j (x_j - mean_j). ``mean`` (raw units, one per column)
    defaults to the rows' own mean; ``target`` is "predicted", "majority", a class or an output index.
    """
    columns = _check_tabular(subject)
    if ids is None and isinstance(x, Batch):
        ids = list(x.ids)
    elif ids is None and hasattr(x, "batches"):
        ids = [i for b in x.batches(CHUNK) for i in b.ids]
    xs, _ = _rows(x)
    if isinstance(x, (torch.Tensor, np.ndarray)) and x.dtype in (torch.float64, np.float64):
        xs = torch.as_tensor(x)  # keep double precision for a double model
    n, f = xs.shape
    ids = list(range(n)) if ids is None else list(ids)
    if len(ids) != n:
        raise OptionError(f"{len(ids)} ids given for {n} rows.")
    mu = xs.double().mean(0) if mean is None else torch.as_tensor(np.asarray(mean, dtype=np.float64)).reshape(-1)
    if mu.numel() != f:
        raise OptionError(f"mean has {mu.numel()} values but the model takes {f} columns.")
    idx, labels = _target_indices(subject, xs, target)
    fn = _explained(subject)
    grads = []
    with subject.borrowed():
        for s in range(0, n, CHUNK):
            xc = xs[s:s + CHUNK].to(subject.dtype).clone().requires_grad_(True)
            with torch.enable_grad():
                out = fn(xc)
                picked = out.gather(1, idx[s:s + CHUNK].to(out.device)[:, None]).sum()
                (g,) = torch.autograd.grad(picked, xc)
            grads.append(g.detach().double().cpu())
    g = torch.cat(grads).numpy()
    values = g * (xs.double().numpy() - mu.numpy())
    return LocalLinear(ids, columns, values, g, mu.numpy(), labels)
