"""Is this layer's basis privileged? Neurons against random directions and dictionary features.

Szegedy et al. (2013, "Intriguing properties of neural networks") found that random directions of
a layer look as interpretable as its neurons; Olah et al. (2017) and Elhage et al. (2022, "Toy
Models of Superposition") argue that a basis is *privileged* only when something in the network
(a ReLU acting per unit, for instance) makes single units special. We measure it on the user's
layer instead of assuming it, with two numbers per unit, computed from the same examples pass:

- **purity**: the share of its top-k examples that carry its most common label (1/k-noisy);
- **class information** (eta squared): the share of the variance of its per-example score that
  the class explains (between-class variance / total variance). Unlike the Morcos selectivity
  index it does not change when a score is shifted or rescaled, so a random direction, which
  goes negative, is judged on the same footing as a ReLU unit.

Groups are compared with the Mann-Whitney U test (two-sided). The basis is called privileged when
the neurons' purity is higher than the random directions' with p < 0.01 and the median gap is at
least 0.05; "not privileged" when p >= 0.05; "unclear" otherwise. Dead units (never above zero)
and dead dictionary features are left out of their group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .book import TITLES
from ...notebook import NotebookMixin

#: Thresholds of the verdict (see the module docstring).
PRIVILEGED_P, NOT_PRIVILEGED_P, MIN_GAP = 0.01, 0.05, 0.05


def class_information(lr) -> np.ndarray | None:
    """Per unit, eta squared: between-class variance of its scores over their total variance."""
    if lr.class_means is None or lr.class_count is None:
        return None
    n_c = lr.class_count.astype(np.float64)
    cm = np.nan_to_num(lr.class_means)
    between = (n_c[:, None] * (cm - lr.mean[None, :]) ** 2).sum(0) / max(n_c.sum(), 1)
    total = lr.std ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.clip(between / total, 0, 1), 0.0)


@dataclass
class GroupStats:
    kind: str  # "neuron", "random", "sae", "nmf", "pca", "dir"
    units: list[str]  # addresses (random ones are layer:randN)
    purity: np.ndarray
    information: np.ndarray

    def describe(self) -> dict:
        def q(a, p):
            return float(np.quantile(a, p)) if len(a) else None

        return {"kind": self.kind, "title": TITLES.get(self.kind, self.kind), "n": len(self.units),
                "purity_median": q(self.purity, 0.5), "purity_q25": q(self.purity, 0.25),
                "purity_q75": q(self.purity, 0.75), "information_median": q(self.information, 0.5),
                "information_q75": q(self.information, 0.75),
                "pure_share": float((self.purity >= 0.9).mean()) if len(self.purity) else None}


@dataclass
class BasisComparison(NotebookMixin):
    """Per layer: purity and class information of neurons, random directions and dictionary features."""

    layer: str
    k: int  # top examples per unit the purity is computed on
    groups: dict[str, GroupStats]
    tests: dict[str, dict] = field(default_factory=dict)  # "neuron-random": {"p", "gap"}
    verdict: str = "unclear"  # "privileged", "not privileged", "unclear", "no labels"

    def tables(self) -> dict[str, dict[str, list]]:
        rows: dict[str, list] = {k: [] for k in ("layer", "kind", "unit", "purity", "information")}
        for g in self.groups.values():
            for u, p, e in zip(g.units, g.purity, g.information):
                for col, v in zip(rows, (self.layer, g.kind, u, float(p), float(e))):
                    rows[col].append(v)
        return {"basis": rows}

    def summary(self) -> dict:
        return {"layer": self.layer, "k": self.k, "verdict": self.verdict,
                "groups": [g.describe() for g in self.groups.values()], "tests": self.tests,
                "finding": self.finding()}

    def finding(self) -> str:
        g = {k: v.describe() for k, v in self.groups.items()}
        if self.verdict == "no labels":
            return f"{self.layer}: without labels, neurons and directions cannot be compared by class purity."
        n, r = g.get("neuron"), g.get("random")
        if n is None or r is None:
            return ""
        text = (f"In {self.layer}, the top-{self.k} examples of a neuron share one label {n['purity_median']:.0%} of "
                f"the time (median), against {r['purity_median']:.0%} for random directions")
        t = self.tests.get("neuron-random", {})
        p = t.get("p")
        ptext = f" (Mann-Whitney p = {p:.2g})" if p is not None else ""
        if self.verdict == "privileged":
            text += f"{ptext}: its basis is privileged; single neurons are more meaningful than arbitrary directions."
        elif self.verdict == "not privileged":
            text += f"{ptext}: its basis is not privileged; look at directions, not only at single neurons."
        else:
            text += f"{ptext}: the difference is small."
        s = g.get("sae")
        if s is not None and s["n"]:
            text += f" Dictionary features: {s['purity_median']:.0%}."
        return text


def compare_basis(result, layer: str) -> BasisComparison:
    """Compare the groups ``layer:neuron``, ``layer:random``, ``layer:sae`` ... of a
    :func:`~.examples.direction_examples` result."""
    from scipy.stats import mannwhitneyu

    groups: dict[str, GroupStats] = {}
    for name, lr in result.layers.items():
        source, kind = name.rsplit(":", 1)
        if source != layer:
            continue
        mix = lr.top_label_mix()
        info = class_information(lr)
        if mix is None or info is None:
            return BasisComparison(layer, result.k, {}, verdict="no labels")
        dead = lr.dead() | (lr.max <= 0) if kind in ("sae", "nmf") else lr.dead()
        alive = ~dead
        idx = np.flatnonzero(alive & (mix.sum(1) > 0))
        groups[kind] = GroupStats(kind, [lr.spec.address(int(u)) for u in idx], mix.max(1)[idx], info[idx])
    out = BasisComparison(layer, result.k, groups)
    n, r = groups.get("neuron"), groups.get("random")
    for other in [k for k in groups if k != "neuron"]:
        o = groups[other]
        if n is None or len(n.purity) < 3 or len(o.purity) < 3:
            continue
        p = float(mannwhitneyu(n.purity, o.purity, alternative="two-sided").pvalue)
        gap = float(np.median(n.purity) - np.median(o.purity))
        out.tests[f"neuron-{other}"] = {"p": p, "gap": gap}
    t = out.tests.get("neuron-random")
    if t is not None and r is not None:
        if t["p"] < PRIVILEGED_P and t["gap"] >= MIN_GAP:
            out.verdict = "privileged"
        elif t["p"] >= NOT_PRIVILEGED_P:
            out.verdict = "not privileged"
    return out
