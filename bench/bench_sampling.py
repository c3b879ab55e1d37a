#!/usr/bin/env python
"""Benchmark: what keying the sampled methods' draws to each example costs, against Captum.

neuronscope's SmoothGrad and gradient SHAP (``neuronscope.analyses.attribution.sampling``) draw
sample j of an example from its own generator, seeded by (seed, id, j), and hand the noisy rows
to Captum's ``Saliency``; Captum's ``NoiseTunnel`` draws a whole pass's noise at once from the
global generator. Same model, inputs, samples and rows per pass, measured in the same run:

- ``floor``: samples x (forward + backward of the batch of N to the input), the model's own cost;
- ``captum k``: ``NoiseTunnel(Saliency).attribute(nt_type="smoothgrad", nt_samples_batch_size=k)``;
- ``keyed k``: ``sampled_gradients(rows_per_pass=k * N)``, the same rows per pass;
- ``draws alone``: only the keyed draws of every row (no model), to show where any gap is.

Models: the 4-conv CNN at 64x64 (N = 32) and the ResNet-18-style net at 128x128 (N = 8) of
``bench_examples.py``, 50 samples, stdev 0.15 of [0, 1]; k = 1 and 4 samples per input per pass
(the automatic choice on these CPUs is 1 or 2, ``BENCHMARKS.md``). ABBA order, medians of
``--reps`` (3) runs, each after waiting for a quiet machine. Target: keyed within 1.05x of Captum
at the same pass size.

Usage: ``.venv/bin/python bench/bench_sampling.py [--reps 3] [--models cnn,resnet] [--json out.json]``
(about 6 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench_attribution import floor_grad  # noqa: E402  (the same floor as the batching bench)
from bench_examples import images, interleave, machine, make_model  # noqa: E402
from neuronscope.analyses.attribution.sampling import _draw, sampled_gradients  # noqa: E402

STDEV, SAMPLES = 0.15, 50
MODELS = {"cnn": dict(size=64, n=32), "resnet": dict(size=128, n=8)}


def captum(model, x, target, k: int):
    from captum.attr import NoiseTunnel, Saliency

    def run():
        xs = x.detach().clone().requires_grad_(True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return NoiseTunnel(Saliency(model)).attribute(xs, nt_type="smoothgrad", nt_samples=SAMPLES,
                                                          nt_samples_batch_size=k, stdevs=STDEV, target=target,
                                                          abs=False)
    return run


def keyed(model, x, target, k: int):
    keys, idx = [f"input-{i}" for i in range(len(x))], target.tolist()
    return lambda: sampled_gradients(model, x, idx, keys, samples=SAMPLES, stdev=STDEV, seed=0,
                                     rows_per_pass=k * len(x))


def draws_alone(x):
    shape = tuple(x.shape[1:])
    return lambda: [_draw(0, f"input-{i}", j, shape, False) for i in range(len(x)) for j in range(SAMPLES)]


def case(name: str, reps: int, quiet_s: float, log) -> dict:
    s = MODELS[name]
    model = make_model(name, s["size"])
    x = torch.from_numpy(images(np.random.default_rng(7), s["n"], s["size"]))
    with torch.no_grad():
        target = model(x).argmax(1)
    fns = {"floor": floor_grad(model, x, target, SAMPLES)}
    for k in (1, 4):
        fns[f"captum k={k}"] = captum(model, x, target, k)
        fns[f"keyed k={k}"] = keyed(model, x, target, k)
    fns["draws alone"] = draws_alone(x)
    for fn in fns.values():  # warm-up: lazy initialisation, first backward, allocator
        fn()
    log(f"{name}: {s['n']} images {s['size']}x{s['size']}, {SAMPLES} samples")
    runs = interleave(fns, reps, quiet_s, log, s["n"])
    med = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
    ratios = {f"keyed / captum, k={k}": med[f"keyed k={k}"] / med[f"captum k={k}"] for k in (1, 4)}
    ratios.update({f"keyed / floor, k={k}": med[f"keyed k={k}"] / med["floor"] for k in (1, 4)})
    ratios.update({f"captum / floor, k={k}": med[f"captum k={k}"] / med["floor"] for k in (1, 4)})
    ratios["draws alone / floor"] = med["draws alone"] / med["floor"]
    return {"model": name, **s, "samples": SAMPLES, "median_s": med, "ratios": ratios,
            "runs": {k: [list(r) for r in v] for k, v in runs.items()},
            "met": all(v <= 1.05 for k, v in ratios.items() if k.startswith("keyed / captum"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--models", default="cnn,resnet")
    ap.add_argument("--quiet-s", type=float, default=60.0, help="longest wait for a quiet machine before a run")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = {"machine": machine(), "cases": []}
    for name in args.models.split(","):
        out["cases"].append(case(name, args.reps, args.quiet_s, lambda m: print(m, flush=True)))
    for c in out["cases"]:
        print(f"\n{c['model']}: " + ", ".join(f"{k} {v * 1e3 if v < 1 else v:.2f}{' ms' if v < 1 else ' s'}"
                                              for k, v in c["median_s"].items()))
        for k, v in c["ratios"].items():
            print(f"  {k}: {v:.3f}x")
        print("  target (keyed <= 1.05x captum at the same pass size):", "MET" if c["met"] else "NOT MET")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
