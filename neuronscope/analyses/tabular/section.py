"""tabular(): for a network on plain numeric vectors, which columns matter and how far it is from
a logistic regression, in one result.

A one-layer network *is* a logistic regression (or OLS, or a multinomial logit): its exact reading
comes first, or the reason it does not hold (separation, not a maximum-likelihood fit). Deeper
networks get column importance by several methods side by side, partial dependence and ICE curves
for the top columns, interaction strengths for the top pairs, a logistic surrogate fitted to the
network's own predictions (how far it is from the exact reading) and their first layer's weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ...data import Batch
from ...errors import UnsupportedError
from .hidden import HiddenUnits, hidden_units
from .importance import ColumnImportance, Interactions, PartialDependence, column_importance, interaction_strength, \
    partial_dependence
from .logistic import LogisticReading, is_one_layer, logistic_reading
from .surrogate import LocalLinear, Surrogate, local_linear, surrogate
from ...notebook import NotebookMixin


@dataclass
class TabularReport(NotebookMixin):
    columns: list[str]
    task: str
    reading: LogisticReading | None
    why_no_reading: str | None
    importance: ColumnImportance | None
    dependence: list[PartialDependence] = field(default_factory=list)
    interactions: Interactions | None = None
    surrogate: Surrogate | None = None
    hidden: HiddenUnits | None = None
    local: LocalLinear | None = None  # gradient x (input - mean) per row: the local linear reading
    seconds: float = 0.0

    def findings(self) -> list[str]:
        out = []
        if self.reading is not None:
            out.append(self.reading.sentence() if self.reading.valid else
                       "This network is one linear layer, but its logistic-regression reading does not hold: "
                       + " ".join(self.reading.reasons))
        if self.surrogate is not None:
            out.append(self.surrogate.sentence())
        if self.importance is not None:
            out.append(self.importance.finding())
        return out

    def logistic_rows(self) -> list[dict]:
        """The rows of logistic.csv (column, coef, se, z, p, ci_low, ci_high, odds_ratio, valid, reason)."""
        return self.reading.rows() if self.reading is not None else []

    def importance_rows(self) -> list[dict]:
        """The rows of importance.csv (column, method, value, ci_low, ci_high)."""
        return self.importance.rows() if self.importance is not None else []

    def tables(self) -> dict:
        out: dict = {}
        for part in (self.reading, self.importance, self.surrogate, self.hidden, self.local):
            if part is not None:
                out.update(part.tables())
        if self.dependence:
            pd = {"column": [], "x": [], "pd": []}
            ice = {"column": [], "row": [], "x": [], "value": []}
            for d in self.dependence:
                for x, v in zip(d.grid.tolist(), d.pd.tolist()):
                    pd["column"].append(d.column)
                    pd["x"].append(x)
                    pd["pd"].append(v)
                for r, curve in enumerate(d.ice):
                    for x, v in zip(d.grid.tolist(), curve.tolist()):
                        for k, val in (("column", d.column), ("row", r), ("x", x), ("value", v)):
                            ice[k].append(val)
            out["pd"], out["ice"] = pd, ice
        if self.interactions is not None and self.interactions.pairs:
            out["interactions"] = {"a": [a for a, _ in self.interactions.pairs],
                                   "b": [b for _, b in self.interactions.pairs],
                                   "h2": [float(h) for h in self.interactions.h2]}
        return out

    def images(self) -> dict:
        return self.hidden.images() if self.hidden is not None else {}

    def summary(self) -> dict:
        s = {"findings": self.findings(), "columns": self.columns, "task": self.task,
             "reading": self.reading.summary() if self.reading is not None else {"kind": None,
                                                                               "why": self.why_no_reading},
             "seconds": round(self.seconds, 2)}
        if self.importance is not None:
            s["importance"] = self.importance.summary()
        if self.surrogate is not None:
            s["surrogate"] = self.surrogate.summary()
        if self.hidden is not None:
            s["hidden"] = self.hidden.summary()
        if self.local is not None:
            s["local"] = self.local.summary()
        if self.interactions is not None:
            s["interactions"] = self.interactions.summary()
        if self.dependence:
            s["dependence"] = [d.summary() for d in self.dependence]
        return s


def tabular(subject, data, *, importance: bool = True, groups: dict[str, list[str]] | None = None,
            pd_columns: int = 4, pairs: int = 3, limit: int | None = 2000, seed: int = 0,
            progress: bool = False) -> TabularReport:
    """Everything neuronscope reads from a network on numeric vectors (see the module docstring).

    ``groups``: columns permuted together (e.g. one-hot dummies: ``{"embarked": ["embark_C",
    "embark_Q", "embark_S"]}``); ``pd_columns``: partial dependence for this many top columns;
    ``pairs``: interaction strength for the top pairs among them.
    """
    if len(subject.input_shape) != 1:
        raise UnsupportedError(f"tabular() is for networks on numeric vectors; this model takes inputs of shape "
                               f"{subject.input_shape}. For images use explain() and visualize().")
    t0 = time.perf_counter()
    columns = subject.columns or [f"x{j}" for j in range(subject.input_shape[0])]
    reading, why = None, None
    if is_one_layer(subject):
        reading = logistic_reading(subject, data, limit=limit)
    else:
        why = ("The network has hidden layers, so no coefficient table describes it exactly (a one-layer network with "
               "a logistic output is a logistic regression; deeper ones are not). Below: which columns matter, by "
               "several methods, and how close a logistic regression on its own predictions comes.")
    imp = column_importance(subject, data, groups=groups, limit=limit, seed=seed, progress=progress) if importance \
        else None
    dependence, inter = [], None
    if imp is not None and pd_columns:
        first = next(iter(imp.results.values()))
        top = [c for c in first.ranking() if c in columns][:pd_columns]
        dependence = [partial_dependence(subject, data, c, seed=seed) for c in top]
        if pairs and len(top) > 1:
            cand = [(a, b) for i, a in enumerate(top) for b in top[i + 1:]][:pairs]
            inter = interaction_strength(subject, data, cand, seed=seed)
    sur = hid = local = None
    if reading is None:  # a deeper network: how close a logistic regression comes, and its first layer
        sur = surrogate(subject, data, seed=seed)
        rows = Batch.cat(list(data.batches(200, limit=200)))
        local = local_linear(subject, rows)
        try:
            hid = hidden_units(subject)
        except UnsupportedError:  # a first layer that is not Linear
            hid = None
    return TabularReport(columns, subject.task, reading, why, imp, dependence, inter, sur, hid, local,
                         time.perf_counter() - t0)


__all__ = ["TabularReport", "tabular"]
