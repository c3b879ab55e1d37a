"""Small inline SVG charts for the report (no JavaScript, no CDN: they work from file://)."""

from __future__ import annotations

import html

from markupsafe import Markup


def histogram(counts: list[int], edges: list[float], *, marks: dict[str, float] | None = None,
              width: int = 420, height: int = 120) -> Markup:
    """Bars for ``counts`` over bins ``edges`` (len(counts) + 1 edges); ``marks`` draws labelled
    vertical lines (e.g. quantiles, or the optimized activation later)."""
    if not counts or max(counts) == 0:
        return Markup("<p class='muted'>no data</p>")
    lo, hi = edges[0], edges[-1]
    span = (hi - lo) or 1.0
    peak = max(counts)
    pad, ph = 4, height - 22
    bars = []
    for c, a, b in zip(counts, edges[:-1], edges[1:]):
        x0 = pad + (a - lo) / span * (width - 2 * pad)
        w = max((b - a) / span * (width - 2 * pad) - 0.5, 0.5)
        h = (c / peak) * ph if c else 0
        bars.append(f"<rect x='{x0:.1f}' y='{ph - h + 2:.1f}' width='{w:.1f}' height='{h:.1f}'>"
                     f"<title>{a:.4g} to {b:.4g}: {c}</title></rect>")
    for name, v in (marks or {}).items():
        if lo <= v <= hi:
            x = pad + (v - lo) / span * (width - 2 * pad)
            bars.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='0' y2='{ph + 2}' class='mark'/>"
                        f"<text x='{x + 2:.1f}' y='10' class='mark'>{html.escape(name)}</text>")
    bars.append(f"<text x='{pad}' y='{height - 4}'>{lo:.3g}</text>"
                f"<text x='{width - pad}' y='{height - 4}' text-anchor='end'>{hi:.3g}</text>")
    return Markup(f"<svg class='hist' viewBox='0 0 {width} {height}' width='{width}' height='{height}'>"
                  + "".join(bars) + "</svg>")


def bars(labels: list[str], values: list[float], *, signed: bool = False, width: int = 360, fmt: str = "{:.2f}") -> Markup:
    """Horizontal labelled bars; ``signed`` centres zero (blue negative, red positive)."""
    if not values:
        return Markup("")
    row, label_w = 16, min(160, 7 * max(len(str(l)) for l in labels) + 8)
    top = max(abs(v) for v in values) or 1.0
    plot = width - label_w - 50
    parts = []
    for i, (l, v) in enumerate(zip(labels, values)):
        y = i * row
        if signed:
            mid = label_w + plot / 2
            w = abs(v) / top * plot / 2
            x = mid if v >= 0 else mid - w
            cls = "pos" if v >= 0 else "neg"
        else:
            x, w, cls = label_w, max(v, 0) / top * plot, "pos"
        parts.append(f"<text x='{label_w - 4}' y='{y + 12}' text-anchor='end'>{html.escape(str(l))}</text>"
                     f"<rect x='{x:.1f}' y='{y + 3}' width='{w:.1f}' height='{row - 6}' class='{cls}'/>"
                     f"<text x='{label_w + plot + 4}' y='{y + 12}'>{html.escape(fmt.format(v))}</text>")
    h = row * len(values)
    return Markup(f"<svg class='bars' viewBox='0 0 {width} {h}' width='{width}' height='{h}'>" + "".join(parts) + "</svg>")
