"""Findings: the report's answer in sentences, each from measured numbers against a stated threshold.

:func:`collect` reads a results store and returns one dict per finding, the content of
``findings.json`` and of the overview::

    {"kind": "shortcut", "severity": "warning", "text": "...", "numbers": {...},
     "units": [...], "classes": [...], "columns": [...], "region": [y0, x0, y1, x1] or None,
     "links": ["shortcuts.html#triangle", ...]}

Nothing here is a template filled regardless of the data: a finding appears only when its numbers
cross the threshold listed in :data:`THRESHOLDS` (also shown on the report's methods page).
"""

from __future__ import annotations

from collections import defaultdict

from .store import Store
from .website.unit_pages import unit_link

#: kind -> (threshold in words, source)
THRESHOLDS = {
    "shortcut": ("pasting the place a class's attribution concentrates on (or a moving patch, or its colour) onto "
                 "other images turns >= 25% of them into the class, and >= 3x the rate of pasting other content "
                 "there, plus 5 points; a patch's window also holds >= 4x its area of the class's attribution",
                 "Geirhos et al. 2020; this report's shortcut checks"),
    "low_accuracy": ("accuracy within 5 points of chance, or below it", "sanity"),
    "noisy_filters": (">= 25% of first-layer filters no smoother than the 5th percentile of freshly initialised "
                      "filters of the same shape", "cs231n, Understanding and Visualizing CNNs"),
    "dead_units": ("a ReLU-like unit whose score never rose above zero on the data", "dataset examples"),
    "fixed_place_unit": (">= 80% of a unit's top examples peak at the same position", "dataset examples"),
    "class_selective_unit": ("class-selectivity index >= 0.5 (Morcos et al. 2018)", "dataset examples"),
    "logistic_reading": ("a one-layer network with a logistic (or softmax, or identity) output whose weights are a "
                         "maximum-likelihood fit: score < 1e-4, no separation", "tabular"),
    "logistic_like": ("a logistic regression on the network's own predictions agrees with it on >= 95% of "
                      "held-out rows", "tabular"),
    "columns": ("the sentences of the Columns page (importance, interactions, the surrogate), each with its own "
                "measured numbers", "tabular"),
    "untrusted_attribution": ("maps of a method keep a rank correlation >= 0.5 with maps of the randomised model "
                              "(Adebayo et al. 2018)", "attribution"),
    "unreachable_units": ("a unit still at or below zero after the redirected-ReLU warm-up and no input turns it on",
                          "feature visualization"),
    "fixed_place_direction": (">= 80% of a factor's or dictionary feature's top examples peak at one position",
                              "directions"),
    "basis": ("neurons' top-example purity against random directions' (Mann-Whitney p < 0.01 and a gap >= 5 "
              "points: privileged; p >= 0.05: not)", "directions"),
}

SEVERITY_ORDER = {"warning": 0, "notice": 1, "info": 2}


def _finding(kind, severity, text, *, numbers=None, units=(), classes=(), columns=(), region=None, links=()):
    return {"kind": kind, "severity": severity, "text": text, "numbers": numbers or {}, "units": list(units),
            "classes": list(classes), "columns": list(columns), "region": region, "links": list(links)}


def collect(store: Store) -> list[dict]:
    """Every finding the store's sections support, most serious first."""
    sections = store.sections()
    out: list[dict] = []
    fixed = _fixed_place_units(store) if "examples" in sections else {}

    if "shortcuts" in sections:
        for f in sections["shortcuts"]["summary"].get("structured", []):
            f = dict(f)
            if f.get("region"):  # units that always peak inside the region: the detectors of the shortcut
                depth = {l["layer"]: i for i, l in enumerate(sections["examples"]["summary"]["layers"])}
                inside = sorted((u for u, (pos, box) in fixed.items() if box is not None and _inside(box, f["region"])),
                                key=lambda u: -depth.get(u.rsplit(":", 1)[0], 0))  # deepest layers first
                if inside:
                    f["units"] = inside
                    f["text"] = f["text"] + (f" Units {_list(inside[:4])} respond to what sits there (their top "
                                             "examples peak on it).")
                    f["links"] = f["links"] + [unit_link(u) for u in inside[:4]]
            out.append(_finding(**{k: f[k] for k in ("kind", "severity", "text", "numbers", "units", "classes",
                                                      "region", "links") if k in f}))
    if "sanity" in sections:
        s = sections["sanity"]["summary"]
        if s.get("warning"):
            out.append(_finding("low_accuracy", "warning", s["warning"], numbers={"accuracy": s.get("accuracy"),
                                "chance": s.get("chance")}, links=["sanity.html"]))
        elif s.get("finding"):
            out.append(_finding("accuracy", "info", s["finding"], numbers={k: s.get(k) for k in ("accuracy", "chance",
                                                                                                 "r2", "n")},
                                links=["sanity.html"]))
    if "filters" in sections:
        s = sections["filters"]["summary"]
        frac = s.get("noisy_fraction")
        if frac is not None and frac >= 0.25:
            out.append(_finding("noisy_filters", "notice", s["finding"], numbers={
                "noisy_fraction": frac, "noisy": s.get("noisy_count"), "filters": s.get("filters")},
                units=[s["layer"]], links=["filters.html"]))
    if "examples" in sections:
        s = sections["examples"]["summary"]
        dead = _dead_units(store)
        for layer in s["layers"]:
            name = layer["layer"]
            if layer.get("dead"):
                units = dead.get(name, [])
                out.append(_finding("dead_units", "notice",
                                    f"{layer['dead']} of {layer['units']} units of {name} never fire on this data "
                                    f"({layer['n']} examples).", numbers={"dead": layer["dead"], "units": layer["units"]},
                                    units=units, links=[f"examples.html#{name}"] + [unit_link(u) for u in units[:3]]))
            best = (layer.get("most_selective") or [None])[0]
            if best and best["selectivity"] >= 0.5:
                out.append(_finding("class_selective_unit", "info",
                                    f"{layer.get('selective', 1)} of {layer['units']} units of {name} prefer one class; "
                                    f"the most selective, {best['unit']}, fires mostly for '{best['class']}' "
                                    f"(selectivity {best['selectivity']:.2f}).",
                                    numbers={"selective": layer.get("selective"), "selectivity": best["selectivity"]},
                                    units=[best["unit"]], classes=[best["class"]], links=[unit_link(best["unit"])]))
        by_place: dict[tuple, list[str]] = defaultdict(list)
        for u, (pos, _) in fixed.items():
            by_place[(u.rsplit(":", 1)[0], pos)].append(u)
        for (layer, pos), units in by_place.items():
            if any(set(units) & set(f["units"]) for f in out if f["kind"] == "shortcut"):
                continue  # already named as the shortcut's detectors
            out.append(_finding("fixed_place_unit", "notice",
                                f"{_list(units[:4])}{' and others' if len(units) > 4 else ''} "
                                f"{'always peaks' if len(units) == 1 else 'always peak'} at the same place ({pos}): "
                                f"{'it responds' if len(units) == 1 else 'they respond'} to something at a fixed "
                                "position (a watermark, a border, a marker), not to an object wherever it is.",
                                numbers={"units": len(units)}, units=units, links=[unit_link(u) for u in units[:3]]))
    if "tabular" in sections:
        s = sections["tabular"]["summary"]
        reading = s.get("reading") or {}
        if reading.get("kind") and reading.get("valid"):
            out.append(_finding("logistic_reading", "info",
                                f"This one-layer network is exactly a {reading['kind']} model: its weights are the "
                                "coefficients, with standard errors from the Fisher information (equal to statsmodels').",
                                numbers={k: reading.get(k) for k in ("kind", "score", "condition")},
                                columns=s.get("columns") or [], links=["tabular.html"]))
        sur = s.get("surrogate") or {}
        if sur.get("reached") and not reading.get("valid"):
            out.append(_finding("logistic_like", "info", sur.get("sentence", ""),
                                numbers={"agreement": sur.get("agreement"), "n_columns": sur.get("n_columns")},
                                columns=sur.get("columns") or [], links=["tabular.html"]))
        said = {f["text"] for f in out}
        for text in s.get("findings", []):  # the section's own measured sentences (importance, interactions...)
            if text not in said:
                out.append(_finding("columns", "info", text, columns=s.get("columns") or [], links=["tabular.html"]))
    if "attribution" in sections:
        for text in sections["attribution"]["summary"].get("findings", []):
            if "randomised" in text:
                out.append(_finding("untrusted_attribution", "notice", text, links=["attribution.html"]))
    if "featvis" in sections:
        s = sections["featvis"]["summary"]
        if s.get("unreachable"):
            units = s["unreachable"]
            out.append(_finding("unreachable_units", "info",
                                f"No input turns on {_list(units[:4])}{' and others' if len(units) > 4 else ''}: "
                                "they are reported as unreachable rather than drawn as flat grey pictures.",
                                numbers={"unreachable": len(units)}, units=units, links=["featvis.html"]))
    if "directions" in sections:
        s = sections["directions"]["summary"]
        for text in s.get("findings", []):
            if "peaks at the same place" in text:
                unit = text.split(" ", 1)[0]
                out.append(_finding("fixed_place_direction", "notice", text, units=[unit],
                                    links=["directions.html", unit_link(unit)]))
        basis = s.get("basis") or {}
        if basis.get("finding"):
            out.append(_finding("basis", "info", basis["finding"], numbers={"verdict": basis.get("verdict")},
                                units=[s["layer"]], links=["directions.html#basis"]))
    out.sort(key=lambda f: SEVERITY_ORDER.get(f["severity"], 3))
    return out


def _list(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _inside(box, region) -> bool:
    """A receptive field that sees at least half of a region [y0, x0, y1, x1)."""
    h = min(box[2], region[2]) - max(box[0], region[0])
    w = min(box[3], region[3]) - max(box[1], region[1])
    return h > 0 and w > 0 and h * w >= 0.5 * (region[2] - region[0]) * (region[3] - region[1])


def _dead_units(store) -> dict[str, list[str]]:
    t = store.table("examples", "units")
    out: dict[str, list[str]] = defaultdict(list)
    for layer, unit, dead in zip(t["layer"], t["unit"], t["dead"]):
        if dead:
            out[layer].append(unit)
    return out


def _fixed_place_units(store) -> dict[str, tuple]:
    """unit -> (peak position "y,x", receptive field of that position [y0, x0, y1, x1) or None)."""
    t = store.table("examples", "units")
    ex = store.table("examples", "examples")
    boxes = {}
    if "box_y0" in ex:
        for u, kind, rank, *b in zip(ex["unit"], ex["kind"], ex["rank"], ex["box_y0"], ex["box_x0"], ex["box_y1"],
                                     ex["box_x1"]):
            if kind == "top" and rank == 0 and b[0] is not None:
                boxes[u] = tuple(int(v) for v in b)
    out = {}
    for unit, share, peak in zip(t["unit"], t["peak_share"], t["peak_at"]):
        if share is not None and share >= 0.8 and peak:
            out[unit] = (peak, boxes.get(unit))
    return out
