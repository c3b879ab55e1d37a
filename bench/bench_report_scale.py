#!/usr/bin/env python
"""Benchmark: the report on a layer of thousands of units: build time, size, pages, page weight.

A one-conv model with UNITS channels (default 2,048) on 512 generated 16x16 images; the report's
examples pass and layer statistics only (no feature visualization or attribution), then the
site. Reported: seconds to analyse and to write the site, total size and page count, the largest
page, the layer's card chunk (loaded on the first sort) and the number of layer pages.

Usage: ``.venv/bin/python bench/bench_report_scale.py [--units N] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neuronscope import Subject  # noqa: E402
from neuronscope.data import open_data  # noqa: E402
from neuronscope.pipeline import ReportOptions, analyze  # noqa: E402
from neuronscope.website import render_site, site_size  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=2048)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="neuronscope-scale-"))
    rng = np.random.default_rng(0)
    for c, base in (("dark", 70), ("light", 180)):
        (root / "imgs" / c).mkdir(parents=True)
        for i in range(256):
            arr = np.clip(base + rng.normal(0, 40, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / "imgs" / c / f"{i}.png")
    torch.manual_seed(0)
    u = args.units
    model = nn.Sequential(nn.Conv2d(3, u, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(u, 2))
    s = Subject(model, (3, 16, 16), classes=["dark", "light"], name="wide")
    t = time.perf_counter()
    analyze(s, open_data(root / "imgs", input_shape=(3, 16, 16)), root / "r",
            ReportOptions(progress=False, layers=["1"], featvis_units=0, attribution_inputs=0, directions=False,
                          shortcuts=False))
    analyse = time.perf_counter() - t
    t = time.perf_counter()
    render_site(root / "r")
    render = time.perf_counter() - t
    size, pages = site_size(root / "r")
    largest = max((p.stat().st_size, p.relative_to(root / "r").as_posix()) for p in (root / "r").rglob("*.html"))
    out = {"units": u, "images": 512, "analyse_seconds": analyse, "site_seconds": render, "megabytes": size / 2**20,
           "pages": pages, "largest_page": {"bytes": largest[0], "page": largest[1]},
           "card_chunk_bytes": (root / "r" / "layers" / "1-cards.js").stat().st_size,
           "layer_pages": len(list((root / "r" / "layers").glob("1*.html")))}
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
