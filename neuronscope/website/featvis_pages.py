"""The feature-visualization page and the visualization block of each unit page.

Reads the store's "featvis" section (the targets table and the pictures), and from the "shortcuts"
section the window a fixed-patch class wants (drawn there), shown beside that class.
"""

from __future__ import annotations

from collections import defaultdict

from ..store import Store
from ..units import slug
from .unit_pages import unit_link


def _picture_base(row: dict) -> str:
    if row["kind"] == "class":
        return f"classes/{row['index']}"
    tail = row["address"].rsplit(":", 1)[1]
    if row["kind"] == "neuron":
        tail = tail.replace("@", "-at-").replace(",", "-")
    return f"{slug(row['layer'])}/{tail}"


def context(store: Store) -> dict:
    """Rows of the targets table with their pictures, by unit address and by layer."""
    entry = store.sections()["featvis"]
    images = entry.get("images", {})
    table = store.table("featvis", "targets")
    keys = list(table)
    by_unit, layers, classes, fixed = {}, defaultdict(list), [], {}
    for vals in zip(*table.values()):
        row = dict(zip(keys, vals))
        base = _picture_base(row)
        row["pictures"] = {kind: images[f"{base}-{kind}"] for kind in ("pos", "neg", "div") if f"{base}-{kind}" in images}
        if row["kind"] == "neuron":  # a unit drawn at its fixed place: shown on the unit's page
            fixed[row["address"].split("@")[0]] = row
            continue
        by_unit[row["address"]] = row
        if row["kind"] == "class":
            classes.append(row)
            continue
        row["link"] = unit_link(row["address"])
        layers[row["layer"] + (" directions" if row["kind"] == "direction" else "")].append(row)
    if "profiles" in entry["tables"]:
        prof = store.table("featvis", "profiles")
        pk = list(prof)
        for vals in zip(*prof.values()):
            p = dict(zip(pk, vals))
            by_unit[p["address"]].setdefault("profile", []).append(p)
    grids = [{"layer": layer, "grid": images.get(f"{slug(layer.replace(' directions', '-directions'))}/grid"), "units": rows}
             for layer, rows in layers.items()]
    return {"fv": entry["summary"], "fv_by_unit": by_unit, "fv_fixed": fixed, "fv_layers": grids, "fv_classes": classes,
            "fv_class_grid": images.get("classes/grid"), "fv_drawn": drawn_windows(store)}


def drawn_windows(store: Store) -> dict[str, dict]:
    """Class name -> the window content it wants, as the shortcut search drew it (fixed patches only)."""
    sc = store.sections().get("shortcuts")
    out = {}
    for i, c in enumerate((sc or {}).get("summary", {}).get("classes", [])):
        picture = sc.get("images", {}).get(f"shortcuts/{i}-drawn")
        if picture and c.get("drawn_flip") is not None:
            out[c["class"]] = {"picture": picture, "flip": c["drawn_flip"], "control": c["drawn_control"],
                               "agreement": c["drawn_agreement"], "region": c["region"]}
    return out
