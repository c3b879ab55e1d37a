"""The "Directions" page: one layer looked at as a space (factors, dictionary features, random
directions), the neurons-vs-directions comparison, the class links and the map of the codes.

Reads only the store's "directions" section (and "featvis" for the directions' pictures).
"""

from __future__ import annotations

from collections import defaultdict

from ..analyses.directions.codemap import colour
from ..store import Store
from ..units import slug
from .unit_pages import unit_link

EMPTY = {"dr": None, "dr_links": {}, "dr_channels": 0}


def _rows(table: dict[str, list]) -> list[dict]:
    keys = list(table)
    return [dict(zip(keys, vals)) for vals in zip(*table.values())] if keys else []


def context(store: Store) -> dict:
    entry = store.sections()["directions"]
    s = entry["summary"]
    tables = entry["tables"]
    images = entry.get("images", {})
    units = {r["unit"]: r for r in _rows(store.table("directions", "units"))}
    # the strongest class of each direction (from the class links), for unit pages and the grids
    links: dict[str, dict] = {}
    matrix: dict[str, dict] = defaultdict(dict)
    if "class_links" in tables:
        by_unit: dict[str, list] = defaultdict(list)
        for r in _rows(store.table("directions", "class_links")):
            by_unit[r["unit"]].append(r)
            matrix[r["unit"]][r["class"]] = r["contribution"]
        for unit, rows in by_unit.items():
            best = max(rows, key=lambda r: r["contribution"])
            positive = sum(r["contribution"] for r in rows if r["contribution"] > 0)
            if best["contribution"] > 0:
                links[unit] = {"cls": best["class"], "share": best["contribution"] / positive}
    fv = {}
    if store.has("featvis"):
        fimages = store.sections()["featvis"].get("images", {})
        for r in _rows(store.table("featvis", "targets")):
            if r["kind"] == "direction":
                name = r["address"].rsplit(":", 1)[1]
                pic = fimages.get(f"{slug(r['layer'])}/{name}-pos")
                fv[r["address"]] = {**r, "picture": pic}
    groups = []
    for g in s["groups"]:
        if not g["pages"]:
            continue
        shown = []
        for u in g["shown"]:
            address = next((a for a, r in units.items() if r["layer"] == g["layer"] and r["index"] == u), None)
            if address is None:
                continue
            row = units[address]
            base = f"{slug(g['layer'])}/{u}"
            shown.append({**row, "link": unit_link(address), "top": images.get(f"{base}-top"),
                          "link_class": links.get(address), "fv": fv.get(address)})
        groups.append({**g, "units_list": shown})
    factors = _rows(store.table("directions", "factors"))
    for f in factors:
        f["link"] = unit_link(f["address"])
        f["class"] = links.get(f["address"])
        f["fv"] = fv.get(f["address"])
        base = f"{slug(s['layer'] + ':' + s['factorization']['method'])}/{f['factor']}"
        f["top"] = images.get(f"{base}-top")
        f["patches"] = images.get(f"{base}-patches")
    splice = _rows(store.table("directions", "splice")) if "splice" in tables else []
    basis = _rows(store.table("directions", "basis")) if "basis" in tables else []
    classes = s.get("classes") or []
    link_matrix = [{"unit": f["address"], "link": f["link"], "cells": [matrix[f["address"]].get(c) for c in classes]}
                   for f in factors] if matrix else []
    cmap = None
    if s.get("codemap") and "points" in tables:
        pts = _rows(store.table("directions", "points"))
        palette = s["codemap"].get("palette", {})
        names = list(palette)

        def col(name):
            return palette.get(name, colour(None)) if name is not None else colour(None)

        def title(p):
            return f"{p['id']}: label {p['label']}, predicted {p['prediction']}"

        cmap = {"summary": s["codemap"], "palette": palette, "names": names,
                "tsne": images.get("codemap/tsne"), "pca": images.get("codemap/pca"),
                "by_label": ([p["tsne_x"] for p in pts], [p["tsne_y"] for p in pts],
                             [col(p["label"]) for p in pts], [title(p) for p in pts]),
                "by_prediction": ([p["tsne_x"] for p in pts], [p["tsne_y"] for p in pts],
                                  [col(p["prediction"]) for p in pts], [title(p) for p in pts])}
    basis_groups = s["basis"].get("groups", []) if s.get("basis") else []
    return {"dr": s, "dr_groups": groups, "dr_factors": factors, "dr_splice": splice, "dr_basis": basis,
            "dr_basis_groups": basis_groups, "dr_links": links, "dr_matrix": link_matrix, "dr_classes": classes,
            "dr_map": cmap, "dr_channels": s["factorization"]["channels"]}
