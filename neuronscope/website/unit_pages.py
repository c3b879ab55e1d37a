"""The dataset-examples pages: a grid of units per layer, and one page per unit.

Reads only the store's "examples" section (units, examples and histogram tables, pictures).
"""

from __future__ import annotations

import json
from collections import defaultdict

from ..atomic import atomic_write
from ..store import Store
from ..units import slug

KINDS = ("top", "bottom")
#: Units per layer page (a layer with more gets several pages) and cards previewed on the index.
PER_PAGE, PREVIEW = 256, 12


def layer_page(layer: str, part: int = 1) -> str:
    return f"layers/{slug(layer)}{'' if part == 1 else f'-{part}'}.html"


def _interest(u: dict):
    """Units that always peak at one place first, then the most class-selective, then by index."""
    fixed = u.get("peak_share") is not None and u["peak_share"] >= 0.8
    return (not fixed, -(u.get("selectivity") or 0.0), u["index"])


def _group(table: dict[str, list], by: str) -> dict[str, list[dict]]:
    keys = list(table)
    out: dict[str, list[dict]] = defaultdict(list)
    for vals in zip(*table.values()):
        row = dict(zip(keys, vals))
        out[row[by]].append(row)
    return out


def unit_link(unit: str) -> str:
    layer, u = unit.rsplit(":", 1)
    return f"units/{slug(layer)}/{u}.html"


def context(store: Store, section: str = "examples") -> dict:
    """Everything the examples templates need, grouped once; ``section="directions"`` gives the same
    for the directions' examples (groups like ``relu3:nmf`` instead of layers)."""
    entry = store.sections()[section]
    summary = entry["summary"]
    images = entry.get("images", {})
    units = store.table(section, "units")
    examples = _group(store.table(section, "examples"), "unit")
    hists = _group(store.table(section, "histograms"), "unit")
    profiles = _group(store.table(section, "profiles"), "unit") if "profiles" in entry["tables"] else {}
    rows = store.table(section, "rows") if "rows" in entry["tables"] else None
    by_layer: dict[str, list[dict]] = defaultdict(list)
    keys = list(units)
    for vals in zip(*units.values()):
        u = dict(zip(keys, vals))
        name = u["unit"]
        base = f"{slug(u['layer'])}/{u['index']}"
        u["link"] = unit_link(name)
        u["file"] = u["link"].rsplit("/", 1)[1]
        u["pictures"] = {kind: images[f"{base}-{kind}"] for kind in ("top", "bottom", "range", "patches", "filter")
                         if f"{base}-{kind}" in images}
        u["examples"] = {kind: [e for e in examples.get(name, []) if e["kind"] == kind] for kind in KINDS}
        u["ranges"] = _group({k: [e[k] for e in examples.get(name, []) if e["kind"].startswith("range")]
                              for k in ("kind", "id", "score")}, "kind") if examples.get(name) else {}
        u["hist"] = hists.get(name, [])
        labels = [e["label"] for e in u["examples"]["top"] if e["label"] is not None]
        u["class_mix"] = sorted(((c, labels.count(c) / len(labels)) for c in set(labels)),
                                key=lambda cv: -cv[1]) if labels else []
        u["profile"] = profiles.get(name, [])
        by_layer[u["layer"]].append(u)
    layers = []
    for info in summary["layers" if section == "examples" else "groups"]:
        units_list = by_layer[info["layer"]]
        layer = {**info, "units_list": units_list}
        if section == "examples":
            layer["page"] = layer_page(info["layer"])
            layer["preview"] = sorted(units_list, key=_interest)[:PREVIEW]
        layers.append(layer)
    row_index = {}
    if rows is not None:
        cols = [c for c in rows if c != "id"]
        row_index = {"columns": cols, "by_id": {i: [rows[c][n] for c in cols] for n, i in enumerate(rows["id"])}}
    return {"ex_layers": layers, "ex": summary, "ex_rows": row_index}


def render_layers(store: Store, env, ctx: dict) -> None:
    """One page per layer (several for a layer with more than PER_PAGE units): its sortable grid."""
    template = env.get_template("layer.html")
    cards = env.get_template("_grid.html").make_module(vars=ctx)
    for layer in ctx["ex_layers"]:
        units = layer["units_list"]
        parts = max(1, -(-len(units) // PER_PAGE))
        pages = [layer_page(layer["layer"], k + 1).split("/", 1)[1] for k in range(parts)]
        chunk = None
        if parts > 1:  # every card of the layer, for a sort across its pages (a script, not a fetch)
            chunk = f"{slug(layer['layer'])}-cards.js"
            body = json.dumps([str(cards.card(u, ctx["root"])).strip() for u in units])
            atomic_write(store.root / "layers" / chunk, (
                f"(window.neuronscopeCards = window.neuronscopeCards || {{}})[{json.dumps(layer['layer'])}] = {body};\n"
            ).encode())
        for k in range(parts):
            page = template.render(**ctx, title=f"Layer {layer['layer']}", layer=layer, part=k + 1, pages=pages,
                                   per_page=PER_PAGE, units=units[k * PER_PAGE:(k + 1) * PER_PAGE], chunk=chunk)
            atomic_write(store.root / layer_page(layer["layer"], k + 1), page.encode())


def render(store: Store, env, ctx: dict) -> None:
    """One page per unit of ``ctx["ex_layers"]`` (for groups of directions, those that are units)."""
    template = env.get_template("unit.html")
    for layer in ctx["ex_layers"]:
        units = layer["units_list"]
        if "shown" in layer and not layer.get("pages"):
            continue  # random directions and the neurons' copy feed comparisons only
        for n, u in enumerate(units):
            page = template.render(**ctx, title=u["unit"], u=u, layer=layer,
                                   prev=units[n - 1] if n else None, next=units[n + 1] if n + 1 < len(units) else None)
            atomic_write(store.root / u["link"], page.encode())
