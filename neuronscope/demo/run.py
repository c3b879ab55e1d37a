"""`neuronscope demo`: build the demo models and data, then report on each the way a user would.

Every model goes through the public path (``load_model`` on ``file.py:factory`` + state dict,
``open_data`` on the saved folder/array/table, :func:`neuronscope.pipeline.report`), so the demo
proves the main job rather than a special case.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..data import open_data
from ..loading import load_model
from ..pipeline import ReportOptions, report
from ..website import render_index, site_size
from ..subject import Subject
from .build import build_demo

INTRO = (
    "Six small models trained here on generated and scikit-learn data. The headline: a CNN on "
    "shapes that learned a shortcut (a small marker that, in training, came with one class) and its "
    "clean twin trained on the same images without the marker. Each card opens that model's report."
)


#: The demo's budget: every analysis runs, with fewer units drawn than a user's default report.
BUDGET = dict(featvis_units=4, featvis_steps=128, featvis_seeds=2, directions_featvis=4, attribution_inputs=8,
              dictionary_steps=500)


def describe_budget() -> str:
    b = BUDGET
    return (f"{b['featvis_units']} units per layer visualized ({b['featvis_steps']} steps, {b['featvis_seeds']} random "
            f"starts each) plus every class and factor, {b['directions_featvis']} dictionary features drawn, "
            f"{b['attribution_inputs']} inputs explained, a dictionary trained for {b['dictionary_steps']} steps")


def subject_for(entry: dict, root: Path) -> Subject:
    """The Subject for one demo manifest entry, loaded as a user would load it."""
    loaded = load_model(entry["factory"], weights=root / entry["weights"])
    return Subject(loaded.module, entry["input_shape"], value_range=tuple(entry.get("value_range", (0, 1))),
                   mean=entry.get("mean"), std=entry.get("std"), classes=entry.get("classes"),
                   columns=entry.get("columns"), task=entry.get("task"), name=entry["name"],
                   notes=loaded.notes)


def data_for(entry: dict, root: Path):
    return open_data(root / entry["data"], input_shape=entry["input_shape"],
                     value_range=tuple(entry.get("value_range", (0, 1))), target=entry.get("target"),
                     classes=entry.get("classes") if not entry.get("target") else None)


#: How the demo's measured numbers read on the cards and overview pages.
METRIC_LABELS = {
    "test_accuracy": "test accuracy (images without the marker)",
    "test_accuracy_all": "test accuracy (all test images; 25% of each class carry the marker)",
    "flip_rate": "other-class test images predicted as the shortcut class once the marker is added",
    "base_rate": "the same, without the marker",
    "other_accuracy": "accuracy on the other classes",
    "other_accuracy_marked": "accuracy on the other classes with the marker added",
    "shortcut_class": "shortcut class",
    "train_marker_rate": "shortcut-class training images carrying the marker",
    "train_accuracy": "training accuracy",
    "loss": "final mean log-loss",
    "grad_max_abs": "largest |gradient| of the loss at the fitted weights",
    "weight_max_abs": "largest |weight|",
    "iterations": "L-BFGS iterations",
    "n_train": "training examples",
}


def facts(entry: dict) -> dict[str, str]:
    """The demo's measured numbers as labelled, formatted strings."""
    out = {}
    metrics = entry.get("metrics") or {}
    for k, v in metrics.items():
        label = METRIC_LABELS.get(k, k.replace("_", " "))
        if k == "test_accuracy" and "flip_rate" not in metrics:
            label = "test accuracy"  # only the shapes models have images with and without the marker
        if isinstance(v, float):
            out[label] = f"{v:.1%}" if 0 <= v <= 1 and ("acc" in k or "rate" in k) else f"{v:.4g}"
        elif isinstance(v, (int, str)):
            out[label] = f"{v:,}" if isinstance(v, int) else v
    return out


def run_demo(out: Path, *, force: bool = False, progress: bool = True) -> Path:
    """Build (or reuse) the demo, report on every model, and write an index linking them."""
    t0 = time.perf_counter()
    out = Path(out)
    manifest = build_demo(out / "demo-data", force=force, progress=progress)
    t_build = time.perf_counter() - t0
    root = out / "demo-data"
    cards = []
    for entry in manifest["models"]:
        t = time.perf_counter()
        subject = subject_for(entry, root)
        data = data_for(entry, root)
        if not entry.get("classes") and data.classes is not None:
            subject.classes = data.classes
        # BUDGET keeps the demo near three minutes on 2 cores; the examples pass puts the telling
        # units (the shortcut's fixed-place ones) first, so they are among those drawn.
        opts = ReportOptions(progress=progress, title=entry.get("title"), story=entry.get("story"),
                             extra=facts(entry), **BUDGET)
        index = report(subject, data, out / entry["name"], opts)
        seconds = time.perf_counter() - t
        size, pages = site_size(out / entry["name"])
        if progress:
            print(f"  report {entry['name']}: {seconds:.1f} s, {size / 2**20:.1f} MB, {pages} pages", file=sys.stderr)
        cards.append({"name": entry["name"], "title": entry.get("title", entry["name"]),
                      "story": entry.get("story", ""), "link": f"{entry['name']}/{index.name}",
                      "facts": {**facts(entry), "report": f"{size / 2**20:.1f} MB, {pages} pages, {seconds:.0f} s"}})
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file() and "demo-data" not in f.parts)
    footer = (f"Budget (to stay near three minutes on 2 cores): {describe_budget()}. Models "
              f"{'trained' if t_build > 5 else 'reused'} in {t_build:.0f} s, reports written in "
              f"{time.perf_counter() - t0 - t_build:.0f} s, {total / 2**20:.1f} MB in all.")
    index = render_index(out, "neuronscope demo", INTRO, cards, footer)
    if progress:
        print(f"demo finished in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return index
