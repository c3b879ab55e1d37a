"""The attribution page and the attribution block of each unit page.

Reads only the store's "attribution" section (the explanations, randomisation, batching, drivers
and units tables, the pictures and the summary), plus the "examples" section's summary to know
which unit pages exist.
"""

from __future__ import annotations

import re
from collections import defaultdict

from markupsafe import Markup, escape

from ..store import Store
from ..units import slug
from .svg import finite as _num

#: Integrated gradients missing f(x) - f(baseline) by more than this share get a warning badge
#: (the pipeline's COMPLETENESS_TOLERANCE).
COMPLETENESS_TOLERANCE = 0.05
#: Units listed per class after the drivers' sentence (those the sentence does not name).
DRIVERS_LISTED = 6




def _badge(level: str, text: str, title: str = "") -> dict:
    """level: "ok" (evidence for), "fail" (evidence against), "warn" (weak), "" (neutral)."""
    return {"level": level, "text": text, "title": title}


def _trust(m: dict, check: dict | None) -> list[dict]:
    """The badge row of one method: randomisation check, deletion/insertion, completeness."""
    badges = []
    rho = _num(m.get("randomisation"))
    if rho is None and check is not None:
        rho = _num(check.get("final"))
    flagged = m.get("randomisation_flagged", check.get("flagged") if check else None)
    if rho is not None or flagged is not None:
        mode = m.get("randomisation_mode") or (check or {}).get("mode")
        how = ("every parameterised layer randomised at once (eMPRT)" if mode == "emprt"
               else "layers randomised one by one from the output (cascade)")
        extra = []
        if check:
            if check.get("threshold") is not None:
                extra.append(f"flagged at ρ ≥ {check['threshold']:g}")
            if check.get("n_inputs"):
                extra.append(f"on {check['n_inputs']} inputs")
            if check.get("layers_randomised"):
                extra.append(f"{check['layers_randomised']} layers")
        title = (f"Mean Spearman rank correlation of |maps| between the trained model and the fully randomised one "
                 f"({how}{'; ' + ', '.join(extra) if extra else ''}). Near 1: the map does not depend on what the model "
                 "learned (Adebayo et al. 2018).")
        r = "?" if rho is None else f"{rho:.2f}"
        badges.append(_badge("fail", f"FAILS sanity check (ρ={r})", title) if flagged
                      else _badge("ok", f"passes: maps change when weights are randomised (ρ={r})", title))
    else:
        badges.append(_badge("", "randomisation check not run"))
    dg, ig = _num(m.get("deletion_gain")), _num(m.get("insertion_gain"))
    if dg is not None or ig is not None:
        title = ("Deletion: how much faster the score falls when the pixels it ranks first are replaced by the baseline "
                 "than when random ones are; insertion: how much faster it rises when they are put back first "
                 "(Petsiuk et al. 2018). Area under the curve, in units of the score, mean over the inputs; "
                 "above 0 beats random.")
        good = [g for g in (dg, ig) if g is not None and g > 0]
        bad = [g for g in (dg, ig) if g is not None and g <= 0]
        level = "ok" if not bad else ("fail" if not good else "warn")
        parts = [f"{name} {'+' if g > 0 else ''}{g:.3g}" for name, g in (("deletion", dg), ("insertion", ig))
                 if g is not None]
        badges.append(_badge(level, " · ".join(parts) + " vs random", title))
    c = _num(m.get("completeness_rel_max"))
    if c is not None:
        title = ("Integrated gradients add up to f(x) - f(baseline) when the path integral is exact; this is the largest "
                 "miss over the inputs, as a share of f(x) - f(baseline).")
        badges.append(_badge("ok", f"complete within {c:.1%}", title) if c <= COMPLETENESS_TOLERANCE
                      else _badge("warn", f"completeness error up to {c:.1%}: raise n_steps", title))
    return badges


def _columns(summary: dict, row: dict) -> list[str]:
    n = len(row["map"] or [])
    cols = summary.get("columns") or []
    if row.get("layer") and len(cols) != n:
        return [f"{row['layer']}:{k}" for k in range(n)]
    return list(cols) if len(cols) == n else [f"x{k}" for k in range(n)]


def _unit_pages(store: Store) -> set[str]:
    """Addresses of the units that have a page (the examples section's layers)."""
    entry = store.sections().get("examples")
    if entry is None:
        return set()
    return {f"{info['layer']}:{u}" for info in entry["summary"].get("layers", []) for u in range(info.get("units", 0))}


def unit_link(address: str) -> str:
    layer, u = address.rsplit(":", 1)
    return f"units/{slug(layer)}/{u}.html"


def _linked(sentence: str, units: list[dict]) -> Markup:
    """The sentence escaped, with every unit address in it that has a page made a link."""
    links = {u["address"]: u["link"] for u in units if u["link"]}
    text = str(escape(sentence))
    if not links:
        return Markup(text)
    names = sorted((str(escape(a)) for a in links), key=len, reverse=True)
    by_escaped = {str(escape(a)): a for a in links}
    pattern = re.compile("(?<![\\w.:#~])(" + "|".join(map(re.escape, names)) + ")(?![\\w])")
    return Markup(pattern.sub(lambda mt: f"<a href='{escape(links[by_escaped[mt.group(1)]])}'><code>{mt.group(1)}"
                                         "</code></a>", text))


def _drivers(store: Store, entry: dict, summary: dict, pages: set[str]) -> list[dict]:
    info = summary.get("drivers") or {}
    sentences = info.get("sentences") or {}
    by_class: dict[str, list[dict]] = defaultdict(list)
    order: dict[str, int] = {}
    for r in store.rows("attribution", "drivers"):
        r["link"] = unit_link(r["address"]) if r["address"] in pages else None
        by_class[r["class"]].append(r)
        order.setdefault(r["class"], r.get("class_index") if r.get("class_index") is not None else len(order))
    names = list(sentences) + [c for c in sorted(by_class, key=order.get) if c not in sentences]
    out = []
    for name in names:
        units = sorted(by_class.get(name, []), key=lambda r: r["rank"])
        sentence = sentences.get(name)
        if sentence is None:
            top = [f"{u['address']} ({u['share']:.0%})" for u in units[:3] if (_num(u["contribution"]) or 0) > 0]
            sentence = (f"class {name!r} rests mostly on " + ", ".join(top)) if top else \
                f"no unit of {info.get('layer', 'the layer')} adds to class {name!r} on average."
        named = set(re.findall(r"[^\s,(]+:\d+", sentence))
        out.append({"class": name, "sentence": _linked(sentence, units), "units": units,
                    "more": [u for u in units if u["address"] not in named][:DRIVERS_LISTED]})
    return out


def _unit_attributions(store: Store, entry: dict, summary: dict, images: dict, pages: set[str]) -> dict[str, dict]:
    titles = {m["name"]: m.get("title") or m["name"] for m in summary.get("methods", [])}
    signed = {m["name"]: m.get("signed") for m in summary.get("methods", [])}
    out: dict[str, dict] = {}
    for r in sorted(store.rows("attribution", "units"), key=lambda r: (r["address"], r["rank"])):
        name = r.get("image") or f"units/{slug(r['layer'])}/{r['unit']}/{r['rank']}"
        method = r.get("method") or summary.get("unit_method")
        u = out.setdefault(r["address"], {"address": r["address"], "layer": r["layer"], "unit": r["unit"],
                                          "method": method, "method_title": titles.get(method, str(method).replace("_", " ")),
                                          "signed": signed.get(method, True),
                                          "link": unit_link(r["address"]) if r["address"] in pages else None,
                                          "examples": []})
        u["examples"].append({"rank": r["rank"], "id": r["id"], "score": r.get("score"), "picture": images.get(name)})
    return {a: u for a, u in out.items() if any(e["picture"] for e in u["examples"])}


def context(store: Store) -> dict:
    """What the attribution page and the unit pages need: the summary ("att"), the methods with
    their trust badges ("att_methods"), one entry per input with its maps ("att_inputs"), the
    classes' driving units ("att_drivers", "att_drivers_info", "att_drivers_image"), the batching
    rows ("att_batching") and the unit attributions by address ("att_units")."""
    entry = store.sections()["attribution"]
    summary = entry["summary"]
    images = entry.get("images", {})
    checks = {r["method"]: r for r in store.rows("attribution", "randomisation")}
    methods = []
    for m in summary.get("methods", []):
        m = dict(m)
        m.setdefault("title", m["name"])
        m["check"] = checks.get(m["name"])
        m["badges"] = _trust(m, m["check"])
        m["failed"] = bool(m.get("randomisation_flagged")) or m["name"] in summary.get("flagged", [])
        methods.append(m)
    by_name = {m["name"]: m for m in methods}
    inputs: dict[int, dict] = {}
    for r in store.rows("attribution", "explanations"):
        i = r["index"]
        inp = inputs.setdefault(i, {k: r.get(k) for k in ("index", "id", "label", "predicted", "target", "target_index",
                                                           "score", "baseline_score")})
        inp.setdefault("maps", {})
        inp["picture"] = images.get(f"inputs/{i}")
        m = by_name.get(r["method"]) or {"name": r["method"], "title": r["method"], "signed": True, "failed": False}
        one = {"method": m["name"], "title": m["title"], "signed": m.get("signed", True), "failed": m["failed"],
               "picture": images.get(f"maps/{i}-{r['method']}"), "layer": r.get("layer"),
               **{k: r.get(k) for k in ("completeness", "completeness_rel", "deletion_auc", "insertion_auc",
                                        "random_deletion_auc", "random_insertion_auc")}}
        notes = []
        if _num(one["deletion_auc"]) is not None:
            notes.append(f"deletion AUC {one['deletion_auc']:.3g}"
                         + (f" (random {one['random_deletion_auc']:.3g})" if _num(one["random_deletion_auc"]) is not None else ""))
        if _num(one["insertion_auc"]) is not None:
            notes.append(f"insertion AUC {one['insertion_auc']:.3g}"
                         + (f" (random {one['random_insertion_auc']:.3g})" if _num(one["random_insertion_auc"]) is not None else ""))
        if _num(one["completeness_rel"]) is not None:
            notes.append(f"completeness error {one['completeness_rel']:.1%}")
        one["note"] = " · ".join(notes)
        if not summary.get("image", True) and r.get("map"):
            labels, values = _columns(summary, r), [_num(v) or 0.0 for v in r["map"]]
            if not one["signed"]:  # magnitudes: the largest ten as plain bars (a waterfall needs signs)
                top = sorted(range(len(values)), key=lambda k: -abs(values[k]))[:10]
                labels, values = [labels[k] for k in top], [values[k] for k in top]
            one["bar_labels"], one["bar_values"] = labels, values
        inp["maps"][r["method"]] = one
    order = {m["name"]: k for k, m in enumerate(methods)}
    rows = []
    for i in sorted(inputs):
        inp = inputs[i]
        inp["maps"] = sorted(inp["maps"].values(), key=lambda m: order.get(m["method"], len(order)))
        rows.append(inp)
    pages = _unit_pages(store)
    drivers = _drivers(store, entry, summary, pages)
    drivers_info = summary.get("drivers") or None
    if drivers and not drivers_info:
        first = drivers[0]["units"][0] if drivers[0]["units"] else {}
        drivers_info = {"layer": first.get("layer"), "method": None}
    return {"att": summary, "att_methods": methods, "att_inputs": rows, "att_drivers": drivers,
            "att_drivers_info": drivers_info if drivers else None, "att_drivers_image": images.get("drivers"),
            "att_batching": store.rows("attribution", "batching"),
            "att_units": _unit_attributions(store, entry, summary, images, pages)}


#: The context when the store has no attribution section (the unit pages still render).
EMPTY = {"att_units": {}}
