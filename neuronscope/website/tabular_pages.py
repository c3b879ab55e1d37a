"""The "Columns" page: what a network on plain numeric vectors does with each input column.

Reads only the store's "tabular" section (the logistic reading, column importance, partial
dependence, interactions, the surrogate and the hidden units' weights), plus the "examples"
section's summary to know which unit pages exist. Everything is optional: a part missing from
the section is simply left out.
"""

from __future__ import annotations

import math
from collections import defaultdict

from ..store import Store
from . import svg
from .attribution_pages import _linked, _unit_pages, unit_link
from .svg import finite as _num

#: What each importance method measures, in words (the page's captions).
METHODS = {
    "permutation": ("Permutation", "how much the model's score drops when the column is shuffled"),
    "shapley": ("Shapley values", "mean |contribution| of the column to a prediction, against a background set"),
    "integrated_gradients": ("Integrated gradients", "mean |attribution| from the data's mean"),
}
#: Hidden units drawn in the heatmap (the first ones, in the table's order).
HIDDEN_UNITS = 48
#: Columns whose partial dependence is drawn (in importance order).
PD_COLUMNS = 24




def fmt(v, kind: str = "num") -> str:
    """A number the way a regression table prints it: 4 decimals (scientific when tiny or huge),
    p-values to 3 decimals ("<0.001"), "–" when undefined."""
    v = _num(v)
    if v is None:
        return "–"
    if kind == "p":
        return "<0.001" if v < 0.001 else f"{v:.3f}"
    a = abs(v)
    if a and (a >= 1e5 or a < 1e-3):
        return f"{v:.3e}"
    return f"{v:.4f}"


# ----------------------------------------------------------------------------- the reading

WHAT = {"logit": "a logistic regression", "mnlogit": "a multinomial logistic regression", "ols": "a linear regression"}


def _coef_table(rows: list[dict], kind: str) -> list[dict]:
    """Rows grouped by class (one group for logit and ols), each cell already formatted."""
    groups: dict[object, list[dict]] = defaultdict(list)
    order: list = []
    for r in rows:
        c = r.get("class")
        if c not in groups:
            order.append(c)
        groups[c].append({
            "column": r.get("column"), "coef": fmt(r.get("coef")), "se": fmt(r.get("se")), "z": fmt(r.get("z")),
            "p": fmt(r.get("p"), "p"), "ci_low": fmt(r.get("ci_low")), "ci_high": fmt(r.get("ci_high")),
            "odds_ratio": fmt(r.get("odds_ratio")) if kind != "ols" else None,
            "significant": (_num(r.get("p")) is not None and _num(r.get("p")) < 0.05 and r.get("column") != "const"),
        })
    return [{"class": c, "rows": groups[c]} for c in order]


def _reading(store: Store, entry: dict, summary: dict) -> dict | None:
    r = summary.get("reading")
    rows = store.rows("tabular", "logistic")
    if r is None and not rows:
        return None
    r = dict(r or {})
    for k in ("n", "score_norm", "reference", "classes", "separation", "why"):
        r.setdefault(k, None)
    kind = r.get("kind")
    if kind is None and rows:  # rows but no summary: guess from the table
        kind = "mnlogit" if "class" in rows[0] else ("logit" if "odds_ratio" in rows[0] else "ols")
    r["kind"] = kind
    if kind is None:
        why = (r.get("why") or "").strip()
        if why and not why.endswith("."):
            why += "."
        r["why_text"] = why if why[:1].isupper() else ("No exact reading: " + (why or "the network is not a single "
                                                                              "linear layer."))
        return r
    if "valid" not in r:
        r["valid"] = bool(rows) and all(bool(x.get("valid", True)) for x in rows)
    reasons = list(r.get("reasons") or [])
    if not r["valid"] and not reasons:
        reasons = sorted({x["reason"] for x in rows if x.get("reason")})
    r["reasons"] = reasons
    r["what"] = WHAT.get(kind, kind)
    r["stat"] = "t" if kind == "ols" else "z"
    r["odds"] = kind != "ols"
    sentences = r.get("sentences") or ([r["sentence"]] if r.get("sentence") and r["valid"] else [])
    r["sentences"] = list(sentences)
    r["table"] = _coef_table(rows, kind)
    r["table_original"] = _coef_table(store.rows("tabular", "logistic_original"), kind)
    return r


# ----------------------------------------------------------------------------- importance

def _method_names(summary: dict, rows: list[dict]) -> list[str]:
    named = []
    for m in (summary.get("importance") or {}).get("methods") or []:
        named.append(m.get("name") if isinstance(m, dict) else m)
    for r in rows:
        if r["method"] not in named:
            named.append(r["method"])
    return [m for m in named if any(r["method"] == m for r in rows)]


def _importance(store: Store, entry: dict, summary: dict) -> tuple[list[dict], list[str]]:
    """One entry per method, columns in the first method's rank order; and that order."""
    rows = store.rows("tabular", "importance")
    names = _method_names(summary, rows)
    by_method: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        by_method[r["method"]][r["column"]] = r
    if not names:
        return [], []

    def ranked(m):
        got = by_method[m]
        return sorted(got, key=lambda c: (got[c].get("rank") if got[c].get("rank") is not None
                                          else -(_num(got[c]["value"]) or 0.0), c))

    order = ranked(names[0])
    for m in names[1:]:
        order += [c for c in ranked(m) if c not in order]
    out = []
    for m in names:
        got = by_method[m]
        cols = [c for c in order if c in got]
        title, what = METHODS.get(m, (m.replace("_", " "), ""))
        out.append({"name": m, "title": title, "what": what,
                    "rows": [got[c] for c in cols],
                    "svg": svg.intervals(cols, [got[c]["value"] for c in cols], [got[c].get("ci_low") for c in cols],
                                         [got[c].get("ci_high") for c in cols], width=320)})
    return out, order


def _agreement(store: Store, entry: dict, summary: dict) -> list[dict]:
    rows = store.rows("tabular", "agreement")
    if not rows:
        for key, v in ((summary.get("importance") or {}).get("agreement") or {}).items():
            a, _, b = str(key).partition("~")
            rows.append({"method_a": a, "method_b": b, "spearman": v})
    for r in rows:
        r["title_a"] = METHODS.get(r["method_a"], (r["method_a"],))[0]
        r["title_b"] = METHODS.get(r["method_b"], (r["method_b"],))[0]
        rho = _num(r.get("spearman"))
        r["level"] = "" if rho is None else ("ok" if rho >= 0.8 else ("neutral" if rho >= 0.5 else "warn"))
    return rows


# ----------------------------------------------------------------------------- partial dependence

def _pd(store: Store, entry: dict, summary: dict, order: list[str]) -> list[dict]:
    curves: dict[str, list[tuple]] = defaultdict(list)
    for r in store.rows("tabular", "pd"):
        curves[r["column"]].append((r["x"], r["pd"]))
    ice: dict[str, dict] = defaultdict(lambda: defaultdict(list))
    for r in store.rows("tabular", "ice"):
        ice[r["column"]][r["row"]].append((r["x"], r["value"]))
    columns = [c for c in order if c in curves] + [c for c in (summary.get("columns") or []) if c in curves]
    columns += [c for c in curves if c not in columns]
    columns = list(dict.fromkeys(columns))[:PD_COLUMNS]
    ys = [v for c in columns for _, v in curves[c]] + [v for c in columns for pts in ice[c].values() for _, v in pts]
    ylim = svg._range(ys)
    out = []
    for c in columns:
        pd = sorted(curves[c], key=lambda p: (_num(p[0]) is None, _num(p[0]) or 0.0))
        lines = [sorted(pts, key=lambda p: (_num(p[0]) is None, _num(p[0]) or 0.0)) for pts in ice[c].values()]
        xs = [[x for x, _ in pd]] + [[x for x, _ in pts] for pts in lines]
        ys_c = [[y for _, y in pd]] + [[y for _, y in pts] for pts in lines]
        vals = [_num(y) for _, y in pd if _num(y) is not None]
        out.append({"column": c, "n_ice": len(lines), "range": (max(vals) - min(vals)) if vals else None,
                    "svg": svg.lines(xs, ys_c, highlight=0, ylim=ylim, width=250, height=150, xlabel=c)})
    return out


def _interactions(store: Store, entry: dict) -> list[dict]:
    rows = []
    for r in store.rows("tabular", "interactions"):
        a, b = r.get("a", r.get("column_a")), r.get("b", r.get("column_b"))
        rows.append({"a": a, "b": b, "h2": _num(r.get("h2")), "share": min(max(_num(r.get("h2")) or 0.0, 0.0), 1.0)})
    return sorted(rows, key=lambda r: -(_num(r["h2"]) or 0.0))


# ----------------------------------------------------------------------------- surrogate

def _surrogate(store: Store, entry: dict, summary: dict) -> dict | None:
    s = summary.get("surrogate")
    coef = store.rows("tabular", "surrogate")
    if s is None and not coef:
        return None
    s = dict(s or {})
    for k in ("sentence", "agreement", "log_loss", "network_entropy", "r2", "columns"):
        s.setdefault(k, None)
    path = [dict(p) for p in s.get("path") or []] or store.rows("tabular", "surrogate_path")
    for p in path:  # the stored table joins the names with "; "
        if isinstance(p.get("names"), str):
            p["names"] = [n for n in p["names"].split("; ") if n]
    metric = "agreement" if any(_num(p.get("agreement")) is not None for p in path) else (
        "r2" if any(_num(p.get("r2")) is not None for p in path) else None)
    s["metric"] = metric
    s["metric_title"] = {"agreement": "agreement with the network", "r2": "R² against the network"}.get(metric, "")
    s["path"] = path
    s["path_svg"] = None
    if metric and len(path) > 1:
        ks = [p.get("columns") for p in path]
        ys = [p.get(metric) for p in path]
        low = min((v for v in map(_num, ys) if v is not None), default=0.0)
        ylim = (max(0.0, math.floor(low * 10 - 0.5) / 10), 1.0) if metric == "agreement" else None
        s["path_svg"] = svg.lines(ks, [ys], highlight=0, dots=True, width=300, height=160, ylim=ylim,
                                  xlabel="columns used", fmt="{:.3g}")
    coef = [r for r in coef if _num(r.get("coef")) is not None]
    s["coef"] = coef
    shown = [r for r in coef if r.get("column") not in ("const", "intercept")]
    classes = {r.get("class") for r in shown}
    labels = [r["column"] if len(classes) == 1 else f"{r.get('class')} · {r['column']}" for r in shown]
    s["coef_svg"] = svg.bars(labels, [float(r["coef"]) for r in shown], signed=True,
                             width=380, fmt="{:+.3g}") if shown else None
    return s


# ----------------------------------------------------------------------------- hidden units

def _colour(w: float, top: float) -> str:
    t = min(abs(w) / top, 1.0) if top > 0 else 0.0
    r, g, b = (178, 24, 43) if w >= 0 else (33, 102, 172)
    mix = [round(255 + (c - 255) * t) for c in (r, g, b)]
    ink = "#fff" if t > 0.6 else "#1f2328"
    return f"background:rgb({mix[0]},{mix[1]},{mix[2]});color:{ink}"


def _hidden(store: Store, entry: dict, summary: dict, order: list[str], pages: set[str]) -> dict | None:
    info = summary.get("hidden")
    rows = store.rows("tabular", "hidden") or store.rows("tabular", "hidden_weights")
    if info is None and not rows:
        return None
    info = dict(info or {})
    weights: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        weights[r["unit"]][r["column"]] = r.get("weight")
    units_all = list(weights)
    seen = {c for w in weights.values() for c in w}
    columns = [c for c in (summary.get("columns") or []) if c in seen]
    columns += [c for c in order if c in seen and c not in columns]
    columns += sorted(c for c in seen if c not in columns)
    top = max((abs(_num(w) or 0.0) for u in weights.values() for w in u.values()), default=0.0)
    units = []
    for u in units_all[:HIDDEN_UNITS]:
        cells = []
        for c in columns:
            w = _num(weights[u].get(c))
            cells.append({"column": c, "text": "" if w is None else f"{w:+.2f}",
                          "style": "" if w is None else _colour(w, top)})
        units.append({"address": u, "link": unit_link(u) if u in pages else None, "cells": cells})
    layer = info.get("layer") or (units_all[0].rsplit(":", 1)[0] if units_all else None)
    linked = [{"address": u, "link": unit_link(u) if u in pages else None} for u in units_all]
    info.update(layer=layer, columns=columns, units=units, n_units=len(units_all), top=top,
                sentences=[_linked(s, linked) for s in info.get("sentences") or []])
    return info


# ----------------------------------------------------------------------------- the page

def context(store: Store) -> dict:
    """What tabular.html needs: the summary ("tab"), the logistic reading with its formatted
    coefficient tables ("tab_reading", None when there is neither a reading nor its why), the
    importance methods with their interval charts and the column order ("tab_methods",
    "tab_order"), the methods' agreement ("tab_agreement"), one partial-dependence chart per
    column ("tab_pd"), the interactions ("tab_interactions"), the surrogate ("tab_surrogate")
    and the hidden units' heatmap ("tab_hidden")."""
    entry = store.sections()["tabular"]
    summary = entry["summary"]
    methods, order = _importance(store, entry, summary)
    return {"tab": summary, "tab_reading": _reading(store, entry, summary), "tab_methods": methods,
            "tab_order": order, "tab_agreement": _agreement(store, entry, summary),
            "tab_pd": _pd(store, entry, summary, order), "tab_interactions": _interactions(store, entry),
            "tab_surrogate": _surrogate(store, entry, summary),
            "tab_hidden": _hidden(store, entry, summary, order, _unit_pages(store))}


#: The context when the store has no tabular section.
EMPTY = {"tab": {}, "tab_reading": None, "tab_methods": [], "tab_order": [], "tab_agreement": [], "tab_pd": [],
         "tab_interactions": [], "tab_surrogate": None, "tab_hidden": None}

__all__ = ["context", "EMPTY", "fmt"]
