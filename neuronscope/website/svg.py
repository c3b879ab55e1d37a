"""Small inline SVG charts for the report (no JavaScript, no CDN: they work from file://)."""

from __future__ import annotations

import html
import math

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


def _finite(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def waterfall(labels: list[str], values: list[float], start: float, end: float, *, width: int = 440, top: int = 10,
              gap_label: str = "gap", start_label: str = "baseline", end_label: str = "output",
              fmt: str = "{:+.3g}") -> Markup:
    """A horizontal waterfall from ``start`` to ``end``: one bar per value (largest |value| first,
    the ``top`` largest on their own, the rest summed as "others"), each starting where the one
    before ended (red raises, blue lowers). When the bars do not add up to ``end - start``, a grey
    dashed bar labelled ``gap_label`` covers the rest; the last row spans start to end.

    Each step bar carries its value in ``data-v``; the svg carries ``data-start``/``data-end``."""
    pairs = [(str(l), _finite(v) or 0.0) for l, v in zip(labels, values)]
    if not pairs:
        return Markup("")
    start = _finite(start) or 0.0
    pairs.sort(key=lambda p: -abs(p[1]))  # stable: ties keep the column order
    steps = pairs[:top]
    rest = pairs[top:]
    if rest:
        steps.append((f"others ({len(rest)})", math.fsum(v for _, v in rest)))
    total = math.fsum(v for _, v in steps)
    end = _finite(end)
    end = start + total if end is None else end
    gap = end - (start + total)
    scale = max(abs(start), abs(end), *(abs(v) for _, v in steps), 1e-12)
    show_gap = abs(gap) > 1e-6 * scale

    row = 16
    label_w = min(170, 7 * max(len(l) for l, _ in [*steps, (gap_label, 0), (start_label, 0), (end_label, 0)]) + 8)
    plot = max(width - label_w - 64, 40)
    points, cum = [start, end], start
    for _, v in steps:
        cum += v
        points.append(cum)
    lo, hi = min(points), max(points)
    span = (hi - lo) or 1.0

    def X(v: float) -> float:
        return label_w + 4 + (v - lo) / span * (plot - 8)

    parts = []

    def text_row(y: int, label: str, value: str, css: str = "") -> None:
        parts.append(f"<text x='{label_w - 4}' y='{y + 12}' text-anchor='end'{css}>{html.escape(label)}</text>"
                     f"<text x='{label_w + plot + 4}' y='{y + 12}'{css}>{html.escape(value)}</text>")

    y = 0
    x0 = X(start)
    parts.append(f"<rect x='{x0 - 1:.1f}' y='{y + 3}' width='2' height='{row - 6}' fill='#1f2328'><title>"
                 f"{html.escape(start_label)}: {start:.4g}</title></rect>")
    text_row(y, start_label, f"{start:.3g}", " font-weight='600'")
    cum = start
    for label, v in steps:
        y += row
        a, b = X(cum), X(cum + v)
        cls = "pos" if v >= 0 else "neg"
        parts.append(f"<line x1='{a:.1f}' x2='{a:.1f}' y1='{y - row + 3}' y2='{y + 3}' stroke='#8c959f' "
                     f"stroke-width='0.8'/>")
        parts.append(f"<rect x='{min(a, b):.1f}' y='{y + 3}' width='{max(abs(b - a), 0.5):.1f}' height='{row - 6}' "
                     f"class='{cls} step' data-v='{v!r}'><title>{html.escape(label)}: {fmt.format(v)} "
                     f"({cum:.4g} to {cum + v:.4g})</title></rect>")
        text_row(y, label, fmt.format(v))
        cum += v
    if show_gap:
        y += row
        a, b = X(cum), X(end)
        parts.append(f"<line x1='{a:.1f}' x2='{a:.1f}' y1='{y - row + 3}' y2='{y + 3}' stroke='#8c959f' "
                     f"stroke-width='0.8'/>")
        parts.append(f"<rect x='{min(a, b):.1f}' y='{y + 3}' width='{max(abs(b - a), 0.5):.1f}' height='{row - 6}' "
                     f"class='gap' fill='#eaeef2' stroke='#656d76' stroke-width='0.8' stroke-dasharray='2 1.5' data-v='{gap!r}'>"
                     f"<title>{html.escape(gap_label)}: {fmt.format(gap)} (what the bars leave out)</title></rect>")
        text_row(y, gap_label, fmt.format(gap), " font-style='italic'")
    y += row
    a, b = X(start), X(end)
    parts.append(f"<rect x='{min(a, b):.1f}' y='{y + 3}' width='{max(abs(b - a), 0.5):.1f}' height='{row - 6}' "
                 f"fill='#57606a' class='total'><title>{html.escape(end_label)}: {end:.4g} "
                 f"({fmt.format(end - start)} from {html.escape(start_label)})</title></rect>")
    text_row(y, end_label, f"{end:.3g}", " font-weight='600'")
    h = y + row
    for v, dash in ((start, "2 2"), (end, "4 2")):
        parts.append(f"<line x1='{X(v):.1f}' x2='{X(v):.1f}' y1='0' y2='{h}' stroke='#8c959f' stroke-width='0.6' "
                     f"stroke-dasharray='{dash}'/>")
    return Markup(f"<svg class='bars waterfall' viewBox='0 0 {width} {h}' width='{width}' height='{h}' "
                  f"data-start='{start!r}' data-end='{end!r}'>" + "".join(parts) + "</svg>")
