"""The report: a static site written from the results store (Jinja2, no CDN, opens from file://).

It reads only the :class:`~neuronscope.store.Store`. Each analysis has one page template,
``templates/<section>.html``; a section missing from the store is simply not linked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from ..atomic import atomic_write
from ..store import Store
from ..units import slug
from . import attribution_pages, directions_pages, featvis_pages, references, svg, tabular_pages, unit_pages

#: Pages in navigation order: (section in the store, file, title). "overview" is index.html.
PAGES = [
    ("overview", "index.html", "Overview"),
    ("overview", "model.html", "Model"),
    ("sanity", "sanity.html", "Model sanity"),
    ("filters", "filters.html", "First-layer filters"),
    ("activations", "activations.html", "Activation maps"),
    ("examples", "examples.html", "Dataset examples"),
    ("featvis", "featvis.html", "Feature visualization"),
    ("directions", "directions.html", "Directions"),
    ("attribution", "attribution.html", "Attribution"),
    ("shortcuts", "shortcuts.html", "Shortcuts"),
    ("tabular", "tabular.html", "Columns"),
    ("layer_stats", "layers.html", "Layer statistics"),
]


def _env() -> Environment:
    env = Environment(loader=PackageLoader("neuronscope.website", "templates"),
                      autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v, d=0: "–" if v is None else f"{v:.{d}%}"
    env.filters["num"] = lambda v, d=3: "–" if v is None else (f"{v:,}" if isinstance(v, int) else f"{v:.{d}g}")
    env.filters["shape"] = lambda s: "×".join(map(str, s)) if s else "?"
    env.filters["slug"] = slug
    env.globals.update(svg_histogram=svg.histogram, svg_bars=svg.bars, svg_waterfall=svg.waterfall,
                       svg_intervals=svg.intervals, svg_lines=svg.lines, svg_scatter=svg.scatter)
    return env


def _rows(table: dict[str, list]) -> list[dict]:
    keys = list(table)
    return [dict(zip(keys, vals)) for vals in zip(*table.values())] if keys else []


def findings(store: Store) -> list[dict]:
    """The overview's sentences (see :mod:`neuronscope.findings`), each linking to its evidence."""
    from ..findings import collect

    level = {"warning": "warning", "notice": "info", "info": "info"}
    return [{**f, "link": f["links"][0] if f["links"] else "index.html", "level": level.get(f["severity"], "info")}
            for f in collect(store)]


def render_site(root: str | os.PathLike) -> Path:
    """Write the site for the store at ``root`` into the same folder; returns index.html's path."""
    store = Store(root)
    env = _env()
    sections = store.sections()
    nav = [(file, title) for section, file, title in PAGES if section in sections]
    static = Path(__file__).parent / "static"
    for f in static.iterdir():
        atomic_write(store.root / "assets" / f.name, f.read_bytes())
    images = {sec: e.get("images", {}) for sec, e in sections.items()}
    common = {"m": store.manifest, "nav": nav, "rows": _rows, "root": "",
              "rowsum": lambda row, keys: sum(row[k] for k in keys),
              "img": lambda section, name: images[section][name],
              "has_img": lambda section, name: name in images.get(section, {}),
              "table": lambda section, name: _rows(store.table(section, name))
              if name in sections.get(section, {}).get("tables", {}) else []}
    extra = unit_pages.context(store) if "examples" in sections else {}
    extra.update(featvis_pages.context(store) if "featvis" in sections else {"fv_by_unit": {}, "fv_fixed": {}})
    extra.update(attribution_pages.context(store) if "attribution" in sections else dict(attribution_pages.EMPTY))
    extra.update(tabular_pages.context(store) if "tabular" in sections else dict(tabular_pages.EMPTY))
    extra.update(directions_pages.context(store) if "directions" in sections else dict(directions_pages.EMPTY))
    found = findings(store)
    atomic_write(store.root / "findings.json",
                 json.dumps([{k: v for k, v in f.items() if k not in ("link", "level")} for f in found],
                            indent=1).encode())
    for section, file, title in PAGES:
        if section not in sections:
            continue
        template = "model.html" if file == "model.html" else f"{section}.html"
        page = env.get_template(template).render(
            **common, **extra, page=file, title=title, s=sections[section]["summary"], entry=sections[section],
            findings=found if section == "overview" else [], refs=references.PAGES.get(file))
        atomic_write(store.root / file, page.encode())
    from ..findings import THRESHOLDS

    page = env.get_template("methods.html").render(**common, **extra, page="methods.html", title="Methods",
                                                   thresholds=THRESHOLDS, refs=references.PAGES["methods.html"])
    atomic_write(store.root / "methods.html", page.encode())
    if "ex_layers" in extra:
        unit_pages.render(store, env, {**common, **extra, "root": "../../", "page": "examples.html",
                                       "refs": references.PAGES["unit.html"]})
        unit_pages.render_layers(store, env, {**common, **extra, "root": "../", "page": "examples.html",
                                              "refs": references.PAGES["layers.html"]})
    if "directions" in sections:
        unit_pages.render(store, env, {**common, **extra, **unit_pages.context(store, "directions"), "root": "../../",
                                       "page": "directions.html", "group_page": "directions.html",
                                       "refs": references.PAGES["unit.html"]})
    return store.root / "index.html"


def site_size(root: str | os.PathLike) -> tuple[int, int]:
    """(bytes on disk, HTML pages) of a written report folder."""
    files = [f for f in Path(root).rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files), sum(f.suffix == ".html" for f in files)


def render_index(root: str | os.PathLike, title: str, intro: str, models: list[dict], footer: str = "") -> Path:
    """A page linking several model reports (the demo): each dict has name, title, story, link, facts."""
    page = _env().get_template("collection.html").render(title=title, intro=intro, models=models, footer=footer)
    root = Path(root)
    static = Path(__file__).parent / "static"
    for f in static.iterdir():
        atomic_write(root / "assets" / f.name, f.read_bytes())
    atomic_write(root / "index.html", page.encode())
    return root / "index.html"


__all__ = ["render_site", "render_index", "findings", "site_size"]
