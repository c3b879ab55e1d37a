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


def finite(v) -> float | None:
    """``v`` as a float, or None when it is missing, not a number or infinite."""
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
    pairs = [(str(l), finite(v) or 0.0) for l, v in zip(labels, values)]
    if not pairs:
        return Markup("")
    start = finite(start) or 0.0
    pairs.sort(key=lambda p: -abs(p[1]))  # stable: ties keep the column order
    steps = pairs[:top]
    rest = pairs[top:]
    if rest:
        steps.append((f"others ({len(rest)})", math.fsum(v for _, v in rest)))
    total = math.fsum(v for _, v in steps)
    end = finite(end)
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


def _range(values, *, include_zero: bool = False) -> tuple[float, float]:
    """The finite min and max of ``values`` (widened when they are equal)."""
    vs = [v for v in (finite(v) for v in values) if v is not None]
    if include_zero:
        vs.append(0.0)
    if not vs:
        return 0.0, 1.0
    lo, hi = min(vs), max(vs)
    if hi - lo <= 1e-12 * max(abs(lo), abs(hi), 1.0):
        pad = max(abs(lo) * 0.1, 1e-3)
        lo, hi = lo - pad, hi + pad
    return lo, hi


def intervals(labels: list[str], values: list[float], lows: list[float | None] | None = None,
              highs: list[float | None] | None = None, *, width: int = 340, fmt: str = "{:.3g}",
              zero: bool = True) -> Markup:
    """Dot and whisker per label, in the given order: the value as a dot, [low, high] as a line,
    a dashed line at zero (``zero``) and the value written on the right.

    Each dot is a ``circle.dot`` carrying its value in ``data-v``; each interval a ``line.ci``."""
    n = len(labels)
    if not n:
        return Markup("")
    lows = list(lows) if lows is not None else [None] * n
    highs = list(highs) if highs is not None else [None] * n
    row = 18
    label_w = min(170, 7 * max(len(str(l)) for l in labels) + 8)
    plot = max(width - label_w - 56, 40)
    lo, hi = _range([*values, *lows, *highs], include_zero=zero)
    span = hi - lo

    def X(v: float) -> float:
        return label_w + 6 + (v - lo) / span * (plot - 12)

    h = row * n + 16
    parts = []
    if zero:
        parts.append(f"<line class='zero' x1='{X(0):.1f}' x2='{X(0):.1f}' y1='0' y2='{row * n}' stroke='#8c959f' "
                     f"stroke-width='0.8' stroke-dasharray='3 2'/>")
    for i, (label, v, a, b) in enumerate(zip(labels, values, lows, highs)):
        y = i * row + row / 2
        v, a, b = finite(v), finite(a), finite(b)
        if i % 2:
            parts.append(f"<rect x='0' y='{i * row}' width='{width}' height='{row}' fill='#f6f8fa'/>")
        parts.append(f"<text x='{label_w - 4}' y='{y + 4:.1f}' text-anchor='end'>{html.escape(str(label))}</text>")
        ci = "" if a is None or b is None else f" (95% CI {fmt.format(a)} to {fmt.format(b)})"
        if a is not None and b is not None:
            parts.append(f"<line class='ci' x1='{X(a):.1f}' x2='{X(b):.1f}' y1='{y:.1f}' y2='{y:.1f}' "
                         f"stroke='#57606a' stroke-width='1.6'><title>{html.escape(str(label))}{ci}</title></line>")
            for e in (a, b):
                parts.append(f"<line x1='{X(e):.1f}' x2='{X(e):.1f}' y1='{y - 3:.1f}' y2='{y + 3:.1f}' "
                             f"stroke='#57606a' stroke-width='1'/>")
        if v is not None:
            parts.append(f"<circle class='dot' cx='{X(v):.1f}' cy='{y:.1f}' r='3.6' fill='#2563eb' data-v='{v!r}'>"
                         f"<title>{html.escape(str(label))}: {html.escape(fmt.format(v))}{html.escape(ci)}</title></circle>")
        parts.append(f"<text x='{label_w + plot + 4}' y='{y + 4:.1f}'>{html.escape('–' if v is None else fmt.format(v))}"
                     f"</text>")
    axis = row * n + 12
    parts.append(f"<text x='{X(lo):.1f}' y='{axis}'>{html.escape(fmt.format(lo))}</text>"
                 f"<text x='{X(hi):.1f}' y='{axis}' text-anchor='end'>{html.escape(fmt.format(hi))}</text>")
    if zero and X(lo) + 30 < X(0) < X(hi) - 30:
        parts.append(f"<text x='{X(0):.1f}' y='{axis}' text-anchor='middle'>0</text>")
    return Markup(f"<svg class='intervals' viewBox='0 0 {width} {h}' width='{width}' height='{h}'>"
                  + "".join(parts) + "</svg>")


def lines(xs: list, curves: list[list[float]], *, highlight=(0,), width: int = 240, height: int = 140,
          ylim: tuple[float, float] | None = None, dots: bool = False, fmt: str = "{:.3g}",
          xlabel: str = "", ylabel: str = "") -> Markup:
    """Line chart of ``curves`` over ``xs`` (one list shared by every curve, or one list per curve).

    Curves whose index is in ``highlight`` (an int or several) are drawn thick and on top
    (``path.hl``); the others thin and faint (``path.faint``). Non-finite points break a curve.
    ``ylim`` fixes the vertical range (to compare several charts); ``dots`` marks the
    highlighted curves' points (``circle.pt``)."""
    if not curves:
        return Markup("")
    per_curve = bool(xs) and isinstance(xs[0], (list, tuple))
    xss = [list(x) for x in xs] if per_curve else [list(xs)] * len(curves)
    hl = {highlight} if isinstance(highlight, int) else set(highlight or ())
    x0, x1 = _range([x for xc in xss for x in xc])
    y0, y1 = ylim if ylim is not None else _range([y for c in curves for y in c])
    left, right, top, bottom = 40, 8, 6, 30 if xlabel else 18
    pw, ph = max(width - left - right, 20), max(height - top - bottom, 20)

    def X(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * pw

    def Y(v: float) -> float:
        return top + (1 - (min(max(v, y0), y1) - y0) / (y1 - y0)) * ph

    parts = [f"<rect x='{left}' y='{top}' width='{pw}' height='{ph}' fill='none' stroke='#d0d7de' stroke-width='0.8'/>"]
    if y0 < 0 < y1:
        parts.append(f"<line x1='{left}' x2='{left + pw}' y1='{Y(0):.1f}' y2='{Y(0):.1f}' stroke='#d0d7de' "
                     f"stroke-dasharray='3 2'/>")
    order = [k for k in range(len(curves)) if k not in hl] + [k for k in range(len(curves)) if k in hl]
    for k in order:
        d, pen = [], "M"
        pts = []
        for x, y in zip(xss[k], curves[k]):
            x, y = finite(x), finite(y)
            if x is None or y is None:
                pen = "M"
                continue
            d.append(f"{pen}{X(x):.1f} {Y(y):.1f}")
            pts.append((x, y))
            pen = "L"
        if k in hl:
            parts.append(f"<path class='hl' d='{' '.join(d)}' fill='none' stroke='#2563eb' stroke-width='2.4' "
                         f"stroke-linejoin='round'/>")
            if dots:
                parts += [f"<circle class='pt' cx='{X(x):.1f}' cy='{Y(y):.1f}' r='2.8' fill='#2563eb'>"
                          f"<title>{html.escape(fmt.format(x))}: {html.escape(fmt.format(y))}</title></circle>"
                          for x, y in pts]
        else:
            parts.append(f"<path class='faint' d='{' '.join(d)}' fill='none' stroke='#8c959f' stroke-width='0.8' "
                         f"stroke-opacity='0.45'/>")
    yb = top + ph + 12
    parts.append(f"<text x='{left - 3}' y='{top + 9}' text-anchor='end'>{html.escape(fmt.format(y1))}</text>"
                 f"<text x='{left - 3}' y='{top + ph}' text-anchor='end'>{html.escape(fmt.format(y0))}</text>"
                 f"<text x='{left}' y='{yb}'>{html.escape(fmt.format(x0))}</text>"
                 f"<text x='{left + pw}' y='{yb}' text-anchor='end'>{html.escape(fmt.format(x1))}</text>")
    if xlabel:
        parts.append(f"<text x='{left + pw / 2:.1f}' y='{yb + 12}' text-anchor='middle'>{html.escape(xlabel)}</text>")
    if ylabel:
        parts.append(f"<text x='10' y='{top + ph / 2:.1f}' text-anchor='middle' "
                     f"transform='rotate(-90 10 {top + ph / 2:.1f})'>{html.escape(ylabel)}</text>")
    return Markup(f"<svg class='lines' viewBox='0 0 {width} {height}' width='{width}' height='{height}' "
                  f"data-curves='{len(curves)}'>" + "".join(parts) + "</svg>")


def scatter(xs: list[float], ys: list[float], colours: list[str], titles: list[str],
            links: list[str | None] | None = None, width: int = 420, height: int = 420) -> Markup:
    """One small circle per point (``circle.pt``, filled with its colour), with its title as a
    tooltip and, when ``links`` gives one, wrapped in a link. No axes and no legend: the points are
    scaled to fit with a margin, one factor for both axes (a 2-D layout keeps its shape), y up.

    Titles, colours and links are escaped; a ``javascript:`` (or ``vbscript:``) link is dropped.
    Points with a non-finite coordinate are left out."""
    n = len(xs)
    links = list(links) if links is not None else [None] * n
    pts = [(x, y, i) for i, (x, y) in enumerate(zip((finite(v) for v in xs), (finite(v) for v in ys)))
           if x is not None and y is not None]
    if not pts:
        return Markup("<p class='muted'>no points</p>")
    r = 3.0 if len(pts) <= 400 else 2.2 if len(pts) <= 2000 else 1.5
    margin = r + 4
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    pw, ph = max(width - 2 * margin, 1), max(height - 2 * margin, 1)
    sx = pw / (x1 - x0) if x1 > x0 else math.inf
    sy = ph / (y1 - y0) if y1 > y0 else math.inf
    scale = min(sx, sy)
    scale = 0.0 if not math.isfinite(scale) else scale
    ox = margin + (pw - (x1 - x0) * scale) / 2
    oy = margin + (ph - (y1 - y0) * scale) / 2
    parts = []
    for x, y, i in pts:
        cx = ox + (x - x0) * scale
        cy = height - (oy + (y - y0) * scale)
        fill = html.escape(str(colours[i]) if i < len(colours) else "#57606a", quote=True)
        title = html.escape(str(titles[i]) if i < len(titles) else "")
        dot = (f"<circle class='pt' cx='{cx:.1f}' cy='{cy:.1f}' r='{r}' fill='{fill}' fill-opacity='0.85' "
               f"stroke='#ffffff' stroke-width='0.5'><title>{title}</title></circle>")
        href = links[i] if i < len(links) else None
        scheme = "".join(ch for ch in str(href or "") if ord(ch) > 32).lower()
        if href and not scheme.startswith(("javascript:", "vbscript:")):
            dot = f"<a href='{html.escape(str(href), quote=True)}'>{dot}</a>"
        parts.append(dot)
    return Markup(f"<svg class='scatter' viewBox='0 0 {width} {height}' width='{width}' height='{height}' "
                  f"data-points='{len(pts)}'>" + "".join(parts) + "</svg>")
