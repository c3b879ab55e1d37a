"""Shortcuts: does a class rest on something small and beside the point, and does it *cause* the decision?

A heatmap alone is not evidence (Adebayo et al. 2018; Geirhos et al. 2020, "Shortcut learning in
deep neural networks"). For every class ``c`` of an image classifier this module looks for a
candidate and then tests it causally:

1. **Where the evidence for c sits.** Integrated gradients of logit ``c`` (Captum, from the data's
   mean image) on up to ``per_class`` images the model calls ``c``; each map's |attribution|
   summed over channels and scaled to sum 1. On the mean map, square windows of several sizes are
   scored by ``share * ln(share / area)`` (mass inside, weighted by how much more than its area it
   holds); the best is the class's **fixed region**. Its *consistency* is the share of the images
   whose own map puts at least 3x the window's area inside it.
2. **Pasting** (the causal test). The region's content, taken from the images of ``c`` that put
   the most mass in it, is pasted onto images the model calls another class, at the same place;
   the **flip rate** is how often the prediction becomes ``c``. The control pastes the same
   donors' content from a random other place of the same size into the same region.
3. **Removing.** The region of those images of ``c`` is filled with the image's mean colour; the
   **drop rate** is how often the prediction stops being ``c``, against filling a random window of
   the same size elsewhere.
4. **Moving patches.** When each image of ``c`` concentrates its mass in a small window but not
   at one place, the donors' own windows are pasted at their own places (per-image regions).
5. **Colour casts** (not spatial). Images of other classes are shifted by the difference between
   the mean colour of ``c``'s images and theirs; the control shifts by the same amounts with the
   channels rotated (red's shift on green, and so on).

6. **Drawing it** (fixed patches only). The window content the model wants there is grown by
   optimization from the data's own contents of that window and pasted onto held-out images of
   other classes (:mod:`.featvis.patch`): a picture of the shortcut that no donor image chose.

A shortcut is reported when a test flips at least ``FLIP`` of the other images to ``c`` and at
least ``RATIO`` times its control's rate plus 0.05; for a patch, its window must also hold at
least ``ENRICHED`` times its area of the evidence (a class whose evidence is spread over the
object, such as a triangle's apex, is not a patch even when pasting part of it helps). What this cannot detect: shortcuts spread over
much of the image (a background texture, a frame), ones that need two cues together, ones that
only a few training images had (too rare to flip predictions), and any shortcut in inputs that
are not images. It never reads how the data was made.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import NeuronscopeError, UnsupportedError
from ..progress import progress_bar
from .stream import spread_batches
from ..notebook import NotebookMixin

#: Thresholds of a finding (see the module docstring).
FLIP, RATIO, CONSISTENT, ENRICHED = 0.25, 3.0, 3.0, 4.0
#: The images held at once (spread over the data) stay under this many bytes.
SAMPLE_BYTES = 256 * 2**20
#: Window sides tried, as fractions of the image's shorter side.
SIDES = (1 / 16, 1 / 10, 1 / 8, 1 / 6, 1 / 5, 1 / 4)


@dataclass
class ClassCheck:
    """The shortcut tests of one class."""

    cls: str
    index: int
    n: int  # images of the class attributed
    region: tuple[int, int, int, int] | None = None  # [y0, x0, y1, x1), input pixels
    share: float | None = None  # mean attribution mass inside the region
    area: float | None = None  # region area / image area
    consistency: float | None = None  # images putting >= CONSISTENT x area inside
    per_image_share: float | None = None  # mean of each image's best window share (moving patches)
    tests: dict[str, dict] = field(default_factory=dict)  # name -> {"rate", "control", "n"}
    verdict: str | None = None  # "fixed patch", "moving patch", "colour cast" or None
    drawn: dict | None = None  # a fixed patch's window content grown by optimization (featvis.patch)

    def row(self) -> dict:
        def t(name, key):
            return self.tests.get(name, {}).get(key)

        return {"class": self.cls, "n": self.n, "region": list(self.region) if self.region else None,
                "share": self.share, "area": self.area, "consistency": self.consistency,
                "per_image_share": self.per_image_share,
                "paste_flip": t("paste", "rate"), "paste_control": t("paste", "control"),
                "remove_drop": t("remove", "rate"), "remove_control": t("remove", "control"),
                "moving_flip": t("moving", "rate"), "moving_control": t("moving", "control"),
                "colour_flip": t("colour", "rate"), "colour_control": t("colour", "control"),
                "drawn_flip": t("drawn", "rate"), "drawn_control": t("drawn", "control"),
                "drawn_agreement": (self.drawn or {}).get("agreement"), "verdict": self.verdict}


@dataclass
class ShortcutReport(NotebookMixin):
    classes: list[ClassCheck]
    image_shape: tuple[int, ...]
    recipients: int
    seconds: float
    pictures: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def found(self) -> list[ClassCheck]:
        return [c for c in self.classes if c.verdict]

    def findings(self) -> list[dict]:
        """Structured findings (``kind="shortcut"``) for findings.json and the overview."""
        out = []
        h, w = self.image_shape[-2:]
        for c in self.found():
            if c.verdict == "colour cast":
                t = c.tests["colour"]
                text = (f"Class '{c.cls}' rests on a colour cast: shifting images of other classes toward the mean "
                        f"colour of '{c.cls}' images turns {t['rate']:.0%} of them into '{c.cls}' "
                        f"(the same shift with the colour channels rotated: {t['control']:.0%}).")
                region = None
            else:
                key = "paste" if c.verdict == "fixed patch" else "moving"
                t = c.tests[key]
                where = (f"{c.share:.0%} of the attribution for class '{c.cls}' falls inside {c.area:.1%} of the image "
                         f"(rows {c.region[0]}-{c.region[2] - 1}, columns {c.region[1]}-{c.region[3] - 1})"
                         if c.verdict == "fixed patch" else
                         f"each image of class '{c.cls}' puts {c.per_image_share:.0%} of its attribution in a small "
                         "window that moves from image to image")
                text = (f"This network relies on a shortcut for class '{c.cls}': {where}; pasting that content onto "
                        f"images of other classes turns {t['rate']:.0%} of them into '{c.cls}' (pasting other content "
                        f"of the same size there: {t['control']:.0%})")
                r = c.tests.get("remove")
                if c.verdict == "fixed patch" and r:
                    text += (f", and covering it on '{c.cls}' images changes {r['rate']:.0%} of their predictions "
                             f"(covering elsewhere: {r['control']:.0%})")
                text += "."
                d = c.tests.get("drawn")
                if d:
                    text += (f" Grown by optimization from the data's own contents of that window, what the model wants "
                             f"there turns {d['rate']:.0%} of {d['n']} held-out images of other classes into '{c.cls}' "
                             f"(the data's mean window: {d['control']:.0%}); {c.drawn['starts']} random starts agree "
                             f"(r = {c.drawn['agreement']:.2f}).")
                region = list(c.region) if c.verdict == "fixed patch" else None
            out.append({"kind": "shortcut", "severity": "warning", "text": text, "classes": [c.cls],
                        "region": region, "shortcut": c.verdict,
                        "numbers": {k: v for k, v in c.row().items() if k not in ("class", "region", "verdict")},
                        "image": [h, w], "links": ["shortcuts.html#" + c.cls]})
        return out

    def tables(self) -> dict[str, dict[str, list]]:
        rows = [c.row() for c in self.classes]
        keys = list(rows[0]) if rows else ["class"]
        cols = {k: [r[k] for r in rows] for k in keys}
        if "region" in cols:
            cols["region"] = [",".join(map(str, r)) if r else None for r in cols["region"]]
        return {"classes": cols}

    def images(self) -> dict:
        return dict(self.pictures)

    def summary(self) -> dict:
        f = self.findings()
        return {"classes": [c.row() for c in self.classes], "found": [c.cls for c in self.found()],
                "recipients": self.recipients, "seconds": self.seconds, "notes": self.notes,
                "thresholds": {"flip": FLIP, "ratio": RATIO, "consistent": CONSISTENT, "enriched": ENRICHED},
                "structured": f, "findings": [x["text"] for x in f],
                "finding": None if f else (f"No shortcut found: for no class did pasting the place its attribution "
                                           f"concentrates on, a moving patch, or its colour turn {FLIP:.0%} of other "
                                           "images into it.")}


# ------------------------------------------------------------------------------------------ the checks
def find_shortcuts(subject, data, *, per_class: int = 32, recipients: int = 128, n_steps: int = 16,
                   draw_steps: int = 128, seed: int = 0, progress: bool = False) -> ShortcutReport:
    """Look for a shortcut behind every class of an image classifier (see the module docstring).

    Works on a sample spread over the data (at most 256 MiB of images); ``progress`` shows a bar
    over the classes. For a fixed patch, ``draw_steps`` steps grow the window content the model
    wants (:func:`featvis.patch.class_patch`; 0: not drawn)."""
    from .attribution.explain import explain
    from .featvis.patch import class_patch, patch_picture

    if subject.task != "classification" or len(subject.input_shape) != 3:
        raise UnsupportedError("Shortcut checks need an image classifier.")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    x, pred = sample_predictions(subject, data, limit=max(per_class * len(subject.classes) * 4, 1024))
    if len(x) == 0:
        raise NeuronscopeError("No readable examples in the data: nothing to check.")
    h, w = x.shape[-2:]
    checks, pictures, notes = [], {}, []
    bar = progress_bar(total=len(subject.classes), desc="shortcut checks", unit="class", enabled=progress)
    for k, name in enumerate(subject.classes):
        bar.update(1)
        mine = np.flatnonzero(pred == k)
        others = np.flatnonzero(pred != k)
        check = ClassCheck(name, k, int(min(len(mine), per_class)))
        checks.append(check)
        if len(mine) < 4 or len(others) < 8:
            continue
        mine = mine[np.linspace(0, len(mine) - 1, min(len(mine), per_class)).astype(int)]
        rec = others[np.linspace(0, len(others) - 1, min(len(others), recipients)).astype(int)]
        e = explain(subject, torch.as_tensor(x[mine]), target=k, method="integrated_gradients", data=data,
                    n_steps=n_steps, curves=False, randomisation=False)
        maps = np.abs(e["integrated_gradients"].maps.detach().double().cpu().numpy()).sum(1)  # (n, H, W), from any device
        maps /= np.maximum(maps.reshape(len(maps), -1).sum(1), 1e-12)[:, None, None]
        region, share, area, side = _best_window(maps.mean(0))
        y0, x0, y1, x1 = region
        own = maps[:, y0:y1, x0:x1].sum((1, 2))
        check.region, check.share, check.area = region, float(share), float(area)
        check.consistency = float((own >= CONSISTENT * area).mean())
        donors = mine[np.argsort(-own)][:8]
        xs = torch.as_tensor(x)
        # 2. paste the region's content onto other images; control: content from elsewhere
        pasted = xs[rec].clone()
        control = xs[rec].clone()
        for i in range(len(rec)):
            d = donors[i % len(donors)]
            pasted[i, :, y0:y1, x0:x1] = xs[d, :, y0:y1, x0:x1]
            cy, cx = _elsewhere(rng, h, w, side, region)
            control[i, :, y0:y1, x0:x1] = xs[d, :, cy:cy + side, cx:cx + side]
        check.tests["paste"] = {"rate": _rate(subject, pasted, k), "control": _rate(subject, control, k),
                                "n": len(rec)}
        # 3. remove it from the class's own images (the ones that rest on it most)
        keep = mine[np.argsort(-own)][:max(4, len(mine) // 2)]
        covered, elsewhere = xs[keep].clone(), xs[keep].clone()
        fill = xs[keep].mean((2, 3), keepdim=True)
        covered[:, :, y0:y1, x0:x1] = fill.expand(-1, -1, y1 - y0, x1 - x0)
        for i in range(len(keep)):
            cy, cx = _elsewhere(rng, h, w, side, region)
            elsewhere[i, :, cy:cy + side, cx:cx + side] = fill[i].expand(-1, side, side)
        check.tests["remove"] = {"rate": 1 - _rate(subject, covered, k), "control": 1 - _rate(subject, elsewhere, k),
                                 "n": len(keep)}
        # 4. moving patches: each donor's own best window, pasted at its own place
        windows = [_best_window(m, sides=(side,))[0] for m in maps]
        check.per_image_share = float(np.mean([m[a:c, b:d].sum() for m, (a, b, c, d) in zip(maps, windows)]))
        if check.per_image_share >= 2 * share and check.per_image_share >= 0.25:
            order = np.argsort(-np.array([m[a:c, b:d].sum() for m, (a, b, c, d) in zip(maps, windows)]))[:8]
            moved, moved_control = xs[rec].clone(), xs[rec].clone()
            for i in range(len(rec)):
                j = order[i % len(order)]
                a, b, c2, d2 = windows[j]
                moved[i, :, a:c2, b:d2] = xs[mine[j], :, a:c2, b:d2]
                cy, cx = _elsewhere(rng, h, w, side, windows[j])
                moved_control[i, :, a:c2, b:d2] = xs[mine[j], :, cy:cy + side, cx:cx + side]
            check.tests["moving"] = {"rate": _rate(subject, moved, k), "control": _rate(subject, moved_control, k),
                                     "n": len(rec)}
        # 5. colour cast (needs several channels): the control shifts by the same amounts, channels rotated
        if x.shape[1] > 1:
            delta = xs[mine].mean((0, 2, 3)) - xs[rec].mean((0, 2, 3))
            lo, hi = subject.value_range
            shifted = (xs[rec] + delta[None, :, None, None]).clamp(lo, hi)
            rates = [_rate(subject, (xs[rec] + delta.roll(r)[None, :, None, None]).clamp(lo, hi), k)
                     for r in range(1, x.shape[1])]
            check.tests["colour"] = {"rate": _rate(subject, shifted, k), "control": float(np.mean(rates)),
                                     "n": len(rec)}
        check.verdict = _verdict(check)
        if check.verdict in ("fixed patch", "moving patch"):
            pictures[f"shortcuts/{k}"] = _picture(subject, xs, donors[0], rec[0], pasted[0], region,
                                                  maps.mean(0))
        if check.verdict == "fixed patch" and draw_steps:
            cp = class_patch(subject, k, region, x, pred, steps=draw_steps, seed=seed)
            check.tests["drawn"] = {"rate": cp.flip, "control": cp.control, "n": cp.held_out}
            check.drawn = {"agreement": cp.agreement, "starts": len(cp.patches)}
            pictures[f"shortcuts/{k}-drawn"] = patch_picture(subject, x, cp, rec[:32])
    bar.close()
    return ShortcutReport(checks, tuple(x.shape[1:]), int(min(recipients, len(x))), time.perf_counter() - t0,
                          pictures, notes)


def _verdict(c: ClassCheck) -> str | None:
    def strong(t):
        return t is not None and t["rate"] >= FLIP and t["rate"] >= RATIO * t["control"] + 0.05

    # A patch is small by definition: its window must hold ENRICHED x its area of the evidence.
    fixed = strong(c.tests.get("paste")) and c.share is not None and c.share >= ENRICHED * c.area
    moving = (strong(c.tests.get("moving")) and c.per_image_share is not None
              and c.per_image_share >= ENRICHED * c.area)
    if moving and c.per_image_share >= 2 * c.share:
        return "moving patch"  # a fixed window can catch a moving patch too, in donors where it sat there
    if fixed:
        return "fixed patch"
    if moving:
        return "moving patch"
    if strong(c.tests.get("colour")):
        return "colour cast"
    return None


def sample_predictions(subject, data, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``limit`` raw inputs spread over the data (and at most ``SAMPLE_BYTES`` of them), and the
    model's predicted class of each."""
    limit = min(limit, max(64, SAMPLE_BYTES // (4 * int(np.prod(subject.input_shape)))))
    xs, preds = [], []
    with torch.no_grad():
        for b in spread_batches(data, limit, 128):
            xs.append(b.x.numpy())
            preds.append(subject.predict(b.x).cpu().numpy())
    if not xs:
        return np.zeros((0, *subject.input_shape), np.float32), np.zeros(0, int)
    return np.concatenate(xs), np.concatenate(preds)


def _rate(subject, x: torch.Tensor, k: int) -> float:
    with torch.no_grad():
        return float((subject.predict(x) == k).float().mean())


def _best_window(m: np.ndarray, sides=None) -> tuple[tuple[int, int, int, int], float, float, int]:
    """The square window maximizing share * ln(share / area) on a map that sums to 1."""
    h, w = m.shape
    total = m.sum()
    m = m / total if total > 0 else np.full_like(m, 1.0 / m.size)
    integral = np.pad(m.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    best = None
    for s in sides or sorted({max(2, round(min(h, w) * f)) for f in SIDES}):
        if s >= min(h, w):
            continue
        sums = integral[s:, s:] - integral[:-s, s:] - integral[s:, :-s] + integral[:-s, :-s]
        y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
        share, area = float(sums[y, x]), s * s / (h * w)
        score = share * math.log(max(share, 1e-12) / area)
        if best is None or score > best[0]:
            best = (score, (int(y), int(x), int(y + s), int(x + s)), share, area, s)
    return best[1], best[2], best[3], best[4]


def _elsewhere(rng, h: int, w: int, side: int, region) -> tuple[int, int]:
    """A random window of ``side`` that does not overlap ``region``."""
    y0, x0, y1, x1 = region
    for _ in range(100):
        cy, cx = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        if cy + side <= y0 or cy >= y1 or cx + side <= x0 or cx >= x1:
            return cy, cx
    return 0, 0


def _picture(subject, xs, donor, recipient, pasted, region, mean_map):
    """donor (region boxed) | mean attribution | another image | the same with the region pasted."""
    from .. import imaging
    from .receptive_field import Box, draw_box

    lo_hi = subject.value_range
    y0, x0, y1, x1 = region
    box = Box(y0, x0, y1, x1)
    tiles = [draw_box(imaging.input_rgb(xs[donor].numpy(), lo_hi).copy(), box),
             imaging.magnitude_colormap(mean_map),
             imaging.input_rgb(xs[recipient].numpy(), lo_hi),
             draw_box(imaging.input_rgb(pasted.numpy(), lo_hi).copy(), box)]
    size = max(1, 96 // max(tiles[0].shape[:2]))
    return imaging.tile_grid(np.stack([imaging.upscale_nearest(t, size) for t in tiles]), ncols=4, pad=2)
