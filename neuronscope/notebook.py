"""Results in a notebook: one ``_repr_html_`` for every result object the store can write.

Jupyter calls ``_repr_html_`` on the last value of a cell. Every analysis result already knows
its ``summary()`` (with its sentences), its ``tables()`` and its ``images()``; this renders them the
way the report does, in miniature: the sentences, the first pictures inline (PNG, base64), and
the first rows of each table. Everything the user gave (class names, ids, columns) is escaped.
"""

from __future__ import annotations

import base64
from html import escape

MAX_IMAGES, MAX_ROWS, MAX_COLUMNS = 6, 12, 10


def _cell(v) -> str:
    if isinstance(v, float):
        return "–" if v != v else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return escape(", ".join(_cell(x) for x in v[:6]) + (" ..." if len(v) > 6 else ""))
    return escape("–" if v is None else str(v))


def repr_html(result, title: str | None = None) -> str:
    """HTML for a result object with ``summary()``, ``tables()`` and ``images()``."""
    from .imaging import png_bytes

    summary = result.summary() if hasattr(result, "summary") else {}
    parts = [f"<div class='neuronscope'><h3>{escape(title or type(result).__name__)}</h3>"]
    sentences = ([summary["finding"]] if summary.get("finding") else []) + list(summary.get("findings") or [])
    if sentences:
        parts.append("<ul>" + "".join(f"<li>{escape(str(s))}</li>" for s in sentences[:12]) + "</ul>")
    images = result.images() if hasattr(result, "images") else {}
    shown = 0
    for name, img in images.items():
        if img is None or shown >= MAX_IMAGES:
            continue
        data = base64.b64encode(png_bytes(img)).decode("ascii")
        parts.append(f"<figure style='display:inline-block;margin:4px'><img src='data:image/png;base64,{data}' "
                     f"style='max-width:420px'><figcaption>{escape(name)}</figcaption></figure>")
        shown += 1
    if len(images) > shown:
        parts.append(f"<p>{len(images) - shown} more picture(s): write the report (ns.report) to see them all.</p>")
    tables = result.tables() if hasattr(result, "tables") else {}
    for name, table in tables.items():
        cols = list(table)[:MAX_COLUMNS]
        n = len(table[cols[0]]) if cols else 0
        if not n:
            continue
        head = "".join(f"<th>{escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{_cell(table[c][i])}</td>" for c in cols) + "</tr>"
                       for i in range(min(n, MAX_ROWS)))
        more = f" (first {MAX_ROWS} of {n} rows)" if n > MAX_ROWS else ""
        parts.append(f"<details><summary>{escape(name)}{more}</summary><table><tr>{head}</tr>{body}</table></details>")
    parts.append("</div>")
    return "".join(parts)


class NotebookMixin:
    """Adds ``_repr_html_`` to a result class (summary, tables, images)."""

    def _repr_html_(self) -> str:
        return repr_html(self)
