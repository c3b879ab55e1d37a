#!/usr/bin/env python
"""Benchmark: the data pass of the dataset examples on Ray against the one-process pass.

The pass is what ``neuronscope report`` runs first: model sanity plus dataset examples of the
default layers, over an image folder of 10,000 PNGs (the demo's shapes at 32x32, decoded every
time: the per-dataset decoded-image cache is off on both sides). Same model, data, batch size
and reducers on both sides; the reference is the one-process pass measured in the same run.

1. one process (2 torch threads; after a warm-up pass, runs interleaved with the Ray ones);
2. Ray, 1 worker holding both CPUs (2 threads): Ray's overhead, target <= 1.15x;
3. Ray, 2 workers of one CPU each: the speed-up (2 cores: at most ~2x).

Each Ray configuration's first pass includes starting the workers (importing torch, receiving the
model and the data object); three more reuse them, each followed by a one-process pass, and the
ratios compare medians. Also reported: what the driver
receives (one merged state per worker), the merge time, the per-image cost split (decode, forward, reducers), and a
projection for ImageNet on 8 GPUs from those figures.

Usage: ``.venv/bin/python bench/bench_ray.py [--images N] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neuronscope import Subject  # noqa: E402
from neuronscope.analyses.examples import examples_reducer, reduce_activation  # noqa: E402
from neuronscope.analyses.sanity import SanityReducer  # noqa: E402
from neuronscope.analyses.stream import run_pass  # noqa: E402
from neuronscope.data import open_data  # noqa: E402
from neuronscope.demo import shapes  # noqa: E402
from neuronscope.demo.build import _save_image_folder  # noqa: E402
from neuronscope.demo.models import shapes_cnn  # noqa: E402

BATCH = 64


def folder(n: int) -> Path:
    root = Path(tempfile.gettempdir()) / f"neuronscope-bench-ray-{n}"
    if not (root / "done").exists():
        split = shapes.make_test(n, seed=7)
        _save_image_folder(root / "images", split.x, split.y, shapes.CLASSES)
        (root / "done").write_text("ok")
    return root / "images"


def subject() -> Subject:
    torch.manual_seed(0)
    return Subject(shapes_cnn(), (3, 32, 32), classes=list(shapes.CLASSES), name="shapes")


def data(path: Path):
    d = open_data(path, input_shape=(3, 32, 32))
    d.cache_bytes = 0  # decode every time, on both sides (workers receive this instance's setting)
    return d


def one_pass(s, d, engine=None) -> tuple[float, dict]:
    layers = s.default_layers()
    reducers = {"sanity": SanityReducer(s), "examples": examples_reducer(s, d, layers)}
    t = time.perf_counter()
    n = run_pass(s, d, layers, reducers, reduce=reduce_activation, batch_size=BATCH, progress=False, engine=engine)
    seconds = time.perf_counter() - t
    assert n == len(d), (n, len(d))
    return seconds, reducers


class Timed:
    """A reducer whose ``add`` calls are timed (everything else passes through)."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def add(self, step):
        t = time.perf_counter()
        self.inner.add(step)
        self.seconds += time.perf_counter() - t

    def __getattr__(self, name):
        return getattr(self.inner, name)


def split_costs(s, d) -> dict:
    """Seconds per image: decoding alone, then in a one-process pass the reducers (their ``add``
    calls, timed) and the rest (forward with capture and feeding)."""
    layers = s.default_layers()
    t = time.perf_counter()
    for _ in d.batches(BATCH):
        pass
    decode = time.perf_counter() - t
    reducers = {"sanity": Timed(SanityReducer(s)), "examples": Timed(examples_reducer(s, d, layers))}
    t = time.perf_counter()
    run_pass(s, d, layers, reducers, reduce=reduce_activation, batch_size=BATCH, progress=False)
    total = time.perf_counter() - t
    red = sum(r.seconds for r in reducers.values())
    n = len(d)
    return {"decode": decode / n, "forward": max(total - decode - red, 0.0) / n, "reducers": red / n,
            "units": sum(s.layer(name).channels or 1 for name in layers)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import ray

    from neuronscope.engines.ray_engine import SHARD, RayEngine

    torch.set_num_threads(2)
    path = folder(args.images)
    s = subject()
    cpus = os.cpu_count()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    out = {"machine": f"{platform.processor() or platform.machine()}, {cpus} cores, torch {torch.__version__}, "
                      f"ray {ray.__version__}", "images": args.images, "batch": BATCH, "shard": SHARD}

    one_pass(s, data(path))  # warm-up (imports, the file cache), not counted
    runs, engines, local = {}, {}, []
    for workers in (1, 2):  # one pool at a time: the cluster has 2 CPUs
        local += [one_pass(s, data(path))[0] for _ in range(2)]
        eng = RayEngine(workers=workers)
        d = data(path)
        runs[f"ray{workers}_cold"] = one_pass(s, d, eng)[0]
        warm = []
        for _ in range(3):  # interleaved with the reference, which drifts on this machine
            warm.append(one_pass(s, d, eng)[0])
            local.append(one_pass(s, data(path))[0])
        runs[f"ray{workers}"] = warm
        engines[workers] = dict(eng.last)
        eng.shutdown_workers()
    runs["local"] = local
    local_s = statistics.median(local)
    ray1, ray2 = statistics.median(runs["ray1"]), statistics.median(runs["ray2"])
    out["seconds"] = runs
    out["ratio_1_worker_vs_local"] = ray1 / local_s
    out["ratio_1_worker_vs_local_cold"] = runs["ray1_cold"] / local_s
    out["speedup_2_workers_vs_1"] = ray1 / ray2
    out["speedup_2_workers_vs_local"] = local_s / ray2
    out["driver"] = {k: engines[2][k] for k in ("shards", "states_merged", "received_bytes", "merge_seconds")}
    costs = split_costs(s, data(path))
    out["per_image"] = costs
    # ImageNet on 8 GPU workers: the forward moves to the GPU; decoding and reducers stay on the
    # worker's CPUs. Reducer cost grows with the units analysed (per image per unit, measured here).
    per_unit = costs["reducers"] / costs["units"]
    # every worker merges its own shards and sends one state at the end
    state_per_unit = engines[2]["received_bytes"] / engines[2]["states_merged"] / costs["units"]
    merge_per_unit = engines[2]["merge_seconds"] / engines[2]["states_merged"] / costs["units"]
    n_img = 1_281_167
    proj = {}
    for units in (10_000, 30_000):
        per_img = costs["decode"] * (224 * 224) / (32 * 32) * 0.25 + per_unit * units
        proj[units] = {"hours_8_workers": n_img * per_img / 8 / 3600,
                       "driver_receives_gb": 8 * state_per_unit * units / 1e9,
                       "driver_merge_seconds": 8 * merge_per_unit * units}
    out["projection"] = {"assumptions": "decode cost scaled by pixel count x0.25 (JPEG at 224 decodes ~4x faster "
                                        "per pixel than these PNGs through PIL; unmeasured here), one CPU core per "
                                        "GPU worker for decoding and reducers, the GPU forward hidden behind them",
                         "per_unit_reducer_seconds": per_unit, "by_units": proj}
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
