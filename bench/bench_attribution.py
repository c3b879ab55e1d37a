#!/usr/bin/env python
"""Benchmark: batch sizes for Captum's attribution methods, automatic (``batching``) vs fixed
settings vs Captum's defaults vs the model's own cost, measured in the same run.

Models: the 4-conv CNN at 64x64 and the ResNet-18-style net at 128x128 of ``bench_examples.py``
(seeded weights, eval mode), a batch of N = 32 of its synthetic images, target = the predicted
class. For each model and method:

1. **Integrated gradients** (n_steps 50, zero baseline). The floor: 50 x (forward + backward of the
   batch of 32 to the input), warm, same process. Captum's default (``internal_batch_size=None``:
   all 1,600 rows in one pass); fixed ``internal_batch_size`` = k x 32 rows for k steps per pass;
   the automatic choice (``batching.gradient_batch``, then Captum with that size: timed with the
   choice cached, plus the calibration timed alone, so cold = calibration + warm); and
   ``explain(subject, x, target="predicted", method="integrated_gradients")`` with the checks off,
   cold (batching cache cleared) and warm, when the package has it.
2. **Occlusion** (window 8x8 stride 8 on the CNN, 16x16 stride 16 on the ResNet: 64 windows,
   zero baseline): Captum's default ``perturbations_per_eval=1`` and fixed 2, 4, 8, 16 vs the
   automatic ``batching.perturbation_batch``; the floor is the same number of forward passes as
   Captum makes at 1 (64 + 1), each of the batch of 32, no grad.
3. **SmoothGrad** (``NoiseTunnel(Saliency)``, nt_samples 50, stdev 0.15): Captum's default
   (``nt_samples_batch_size=None``: all samples in one pass), fixed samples per pass, automatic
   (``gradient_batch(...).per_input`` as ``nt_samples_batch_size``); floor as for IG (the same 50
   forward + backward passes; measured once per model and shared).

Peak memory: every configuration once more in a FRESH subprocess (warmed up on 2 rows): peak RSS
minus the RSS just before the attribution call (for the automatic setting the calibration is
inside). The peak is the kernel's ``VmHWM``, reset to the current RSS just before the call
(``/proc/self/clear_refs``), not ``getrusage().ru_maxrss``: a child started from this (large)
process inherits the parent's high-water mark in ``ru_maxrss`` (seen here: 2 GiB in a child using
11 MiB), which would hide every configuration below it. On the ResNet, to keep the run short, the chunked settings' memory runs
stop after two passes (n_steps / samples cut to two passes' worth: the peak of a chunked run is one
pass's, the same in every pass), and Captum's default (IG and SmoothGrad: 1,600 rows, ~12 GB) is
timed only there (its whole run in the fresh process) instead of in-process; its attributions are
saved from that run for the comparisons. Attribution differences: max |a - default| / max |default|;
SmoothGrad draws its noise per pass, so chunked runs equal the default only in distribution: the
table gives the difference next to that between two seeds of the smallest setting.

Targets (PASS/FAIL): automatic (warm) within 1.05x of the best fixed setting (Captum's default
counts as one); peak memory at most 1/5 of Captum's default (IG, SmoothGrad); identical
attributions, relative difference < 1e-5 (IG, occlusion). A control gives how far the model's
outputs move with the batch size alone (different kernels per shape): occlusion attributions are
differences of outputs, so on a deep net a batch setting can differ from the default by that much
without any error in the batching.

Timing follows ``bench_examples.py``: wait for quiet before each run, record the cores other
processes used, rerun a run disturbed by more than 0.25 cores (at most 3 tries, keep the least
disturbed), ABBA order, medians. CNN: 3 repetitions; ResNet: 1, with fewer fixed sizes (IG k =
1, 4, 16; occlusion 1, 4, 16; SmoothGrad 1, 4).

Usage: ``.venv/bin/python bench/bench_attribution.py [--quick] [--only ig,occlusion,smoothgrad,memory]
[--models cnn,resnet] [--json out.json]`` (about 15 minutes on 2 cores, ``--quick`` about 2).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench_examples import images, machine, make_model, timed, wait_quiet  # noqa: E402  (same models and timing)
from neuronscope import Subject  # noqa: E402
from neuronscope.analyses.attribution import batching  # noqa: E402
from procmem import reset_peak, status  # noqa: E402 (bench/ is on sys.path when run as a script)

STDEV = 0.15
THRESHOLD = 0.25  # cores used by other processes above which a timed run is made again


# ------------------------------------------------------------------------------------ settings
def settings(quick: bool) -> dict:
    """Per model: image size, N, steps/samples, occlusion window, fixed sizes, repetitions."""
    if quick:
        common = dict(n=4, steps=8, samples=8)
        return {"cnn": dict(common, size=64, window=16, ig_k=[1, 2, 4, 8], occ_p=[1, 2, 4, 8, 16], sg_b=[1, 2, 4],
                            reps=1, default_in_child=False, memory_passes=None, memory_all=False),
                "resnet": dict(common, size=128, window=32, ig_k=[1, 4], occ_p=[1, 4, 16], sg_b=[1, 4],
                               reps=1, default_in_child=True, memory_passes=2, memory_all=False)}
    common = dict(n=32, steps=50, samples=50)
    return {"cnn": dict(common, size=64, window=8, ig_k=[1, 2, 4, 8, 16], occ_p=[1, 2, 4, 8, 16],
                        sg_b=[1, 2, 4, 8, 16], reps=3, default_in_child=False, memory_passes=None, memory_all=True),
            "resnet": dict(common, size=128, window=16, ig_k=[1, 4, 16], occ_p=[1, 4, 16], sg_b=[1, 4],
                           reps=1, default_in_child=True, memory_passes=2, memory_all=True)}


def setup(model_name: str, s: dict):
    model = make_model(model_name, s["size"])
    x = torch.from_numpy(images(np.random.default_rng(7), s["n"], s["size"]))
    with torch.no_grad():
        target = model(x).argmax(1)
    return model, x, target


def windows(s: dict) -> int:
    return (s["size"] // s["window"]) ** 2


def bench_key(model_name: str, method: str, s: dict) -> tuple:
    return ("bench", model_name, s["n"], s["size"], method)


# ------------------------------------------------------------------------------------ runners
def floor_grad(model, x, target, passes: int):
    """``passes`` x forward + backward of the batch to the input (what each IG pass does at N rows)."""
    def run():
        for _ in range(passes):
            xr = x.detach().requires_grad_(True)
            out = model(xr)
            torch.autograd.grad(out.gather(1, target[:, None]).sum(), xr)
    return run


def floor_forward(model, x, passes: int):
    def run():
        with torch.no_grad():
            for _ in range(passes):
                model(x)
    return run


def auto_choice(method: str, model, x, evals: int, key):
    if method == "occlusion":
        return batching.perturbation_batch(model, x, perturbations=evals, key=key, model=model)
    return batching.gradient_batch(model, x, evaluations=evals, key=key, model=model)


def runner(method: str, model, x, target, param, evals: int, s: dict, key=None, seed: int = 0, record=None):
    """A function computing the attributions of ``method`` with batching ``param``: None = Captum's
    default, an int = k steps (IG: internal_batch_size k*N) / samples per pass (SmoothGrad) /
    perturbations per eval (occlusion), "auto" = the (cached) automatic choice."""
    from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency

    n = len(x)

    def size():
        if param != "auto":
            return param
        c = auto_choice(method, model, x, evals, key)
        if record is not None:
            record.append({"size": c.size, "rows": c.rows, "per_input": c.per_input, "source": c.source})
        return c.per_input

    if method == "ig":
        def run():
            k = size()
            return IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=evals,
                                                        internal_batch_size=None if k is None else k * n)
    elif method == "smoothgrad":
        def run():
            b = size()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=evals,
                                                              nt_samples_batch_size=b, stdevs=STDEV, target=target,
                                                              abs=False)
    elif method == "occlusion":
        w = s["window"]

        def run():
            p = size()
            return Occlusion(model).attribute(x, sliding_window_shapes=(3, w, w), strides=(3, w, w), baselines=0.0,
                                              target=target, perturbations_per_eval=p or 1)
    else:
        raise ValueError(method)
    return run


def explain_runner(model, x, s: dict, cold: bool):
    """``explain`` with only integrated gradients and its checks off; None when the package lacks it."""
    try:
        from neuronscope.analyses.attribution.explain import explain
    except Exception:  # noqa: BLE001 (not written yet, or broken: the bench still runs)
        return None
    params = inspect.signature(explain).parameters
    kw = {"n_steps": s["steps"]}
    if "checks" in params:
        kw["checks"] = False
    for name in ("curves", "randomisation"):
        if name in params:
            kw[name] = False
    subject = Subject(model, (3, s["size"], s["size"]), classes=[str(i) for i in range(10)])

    def run():
        if cold:  # forget explain's calibrations, keep the bench's own
            for k in [k for k in batching._CACHE if not (isinstance(k[1], tuple) and k[1][:1] == ("bench",))]:
                del batching._CACHE[k]
        return explain(subject, x, target="predicted", method="integrated_gradients", **kw)
    return run, kw


# ------------------------------------------------------------------------------------ timing
def clean_timed(fn, quiet_s: float, tries: int) -> tuple[float, float, float, int, object]:
    """(wall s, other-process cores, steal cores, runs made, result) of the least disturbed run."""
    best, out = None, None
    for i in range(tries):
        wait_quiet(quiet_s)
        box = {}
        wall, foreign, steal, _ = timed(lambda: box.setdefault("r", fn()))
        if best is None or foreign + steal < best[1] + best[2]:
            best, out = (wall, foreign, steal), box.get("r")
        if foreign + steal < THRESHOLD:
            break
    return best + (i + 1, out)


def abba(fns: dict, reps: int, quiet_s: float, tries: int, log) -> tuple[dict, dict]:
    runs, results = {k: [] for k in fns}, {}
    names = list(fns)
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            wall, foreign, steal, n, res = clean_timed(fns[name], quiet_s, tries)
            runs[name].append((wall, foreign, steal))
            results[name] = res
            log(f"    rep {r + 1}/{reps} {name:<36} {wall:8.2f} s  (other processes {foreign:.2f} cores, "
                f"steal {steal:.2f}{f', run {n} times' if n > 1 else ''})")
            del res
            gc.collect()
    return runs, results


def med(v) -> float:
    return statistics.median(w for w, *_ in v)


def rounding(model, x, ref, repeat: int) -> float:
    """How much the model's outputs move with the batch size alone (oneDNN picks kernels per shape),
    relative to the attributions: the floor under any difference between batch settings."""
    with torch.no_grad():
        a = model(x)
        b = model(x.repeat((repeat,) + (1,) * (x.dim() - 1)))[: len(x)]
    return float((a - b).abs().max() / ref.abs().max().clamp_min(1e-30))


def rel_diff(a, ref) -> float | None:
    if a is None or ref is None:
        return None
    a = a.detach() if isinstance(a, torch.Tensor) else a
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


# ------------------------------------------------------------------------------------ memory child
def memory_child(spec: dict) -> None:
    """Fresh process: warm up on 2 rows, then one run of the configuration; prints a JSON line."""
    s = spec["s"]
    model, x, target = setup(spec["model"], s)
    method, param, evals = spec["method"], spec["param"], spec["evals"]
    # warm-up: lazy initialisation of torch/oneDNN/Captum on 2 rows, so it is not counted
    floor_grad(model, x[:2], target[:2], 1)()
    runner(method if method in ("ig", "smoothgrad", "occlusion") else "ig", model, x[:2], target[:2], 1,
           2, dict(s, window=s["size"] // 2))()
    gc.collect()
    before = status("VmRSS")
    reset = reset_peak()
    t0 = time.perf_counter()
    choice = None
    if method == "floor_grad":
        floor_grad(model, x, target, spec["run_evals"])()
        attr = None
    elif method == "floor_forward":
        floor_forward(model, x, spec["run_evals"])()
        attr = None
    else:
        if param == "auto":
            c = auto_choice(method, model, x, evals, None)  # cold: the calibration counts
            choice = {"size": c.size, "rows": c.rows, "per_input": c.per_input, "bytes_per_row": c.bytes_per_row,
                      "memory_limit": c.memory_limit, "calibration_rows": c.calibration_rows, "reason": c.reason}
            param = c.per_input
        run_evals = spec["run_evals"] if spec["run_evals"] is None or param is None else min(evals, spec["run_evals"] * param)
        attr = runner(method, model, x, target, param, run_evals or evals, s)()
    wall = time.perf_counter() - t0
    peak = status("VmHWM")
    if spec.get("save") and attr is not None:
        torch.save(attr.detach(), spec["save"])
    print(json.dumps({"before": before, "peak": peak, "delta": max(0, peak - before), "wall_s": wall,
                      "peak_reset": reset, "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "choice": choice}))


def memory_run(model_name: str, s: dict, method: str, param, evals: int, run_evals, quiet_s: float, log,
               save: str | None = None) -> dict:
    spec = {"model": model_name, "s": s, "method": method, "param": param, "evals": evals, "run_evals": run_evals,
            "save": save}
    wait_quiet(quiet_s)
    proc = subprocess.run([sys.executable, __file__, "--_child", json.dumps(spec)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        log(f"    memory run failed: {proc.stderr.strip().splitlines()[-1:] }")
        return {"error": proc.stderr.strip()[-500:]}
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    log(f"    memory {method} {param!s:<6} peak RSS +{rec['delta'] / 2**20:8.1f} MiB  ({rec['wall_s']:.1f} s"
        f"{'' if run_evals is None or param is None else f', {run_evals} passes'})")
    return rec


# ------------------------------------------------------------------------------------ cases
def case(model_name: str, method: str, s: dict, reps: int, quiet_s: float, tries: int, memory: bool, shared: dict,
         tmp: Path, log) -> dict:
    model, x, target = setup(model_name, s)
    n = s["n"]
    evals = {"ig": s["steps"], "smoothgrad": s["samples"], "occlusion": windows(s)}[method]
    fixed = {"ig": s["ig_k"], "smoothgrad": s["sg_b"], "occlusion": s["occ_p"]}[method]
    key = bench_key(model_name, method, s)
    log(f"== {method}: {model_name} {s['size']}x{s['size']}, N={n}, {evals} "
        f"{'windows' if method == 'occlusion' else 'steps' if method == 'ig' else 'samples'}, {reps} rep(s)")

    # warm-up: lazy initialisation, and each method once on a short job (2 steps / samples, 4 windows)
    floor_grad(model, x, target, 2)()
    floor_forward(model, x, 2)()
    runner(method, model, x, target, 1, 2 if method != "occlusion" else 4, dict(s, window=s["size"] // 2))()

    batching._CACHE.pop(next((k for k in batching._CACHE if k[1] == key), None), None)
    t0 = time.perf_counter()
    choice = auto_choice(method, model, x, evals, key)  # cold: measured here, cached for the timed runs
    first_calibration_s = time.perf_counter() - t0
    log(f"    automatic: {choice.reason} [{choice.calibration_rows} rows, {first_calibration_s:.2f} s]")

    def calibration():
        batching._CACHE.pop(next((k for k in batching._CACHE if k[1] == key), None), None)
        return auto_choice(method, model, x, evals, key)

    fns, labels = {}, {}
    default_label = "Captum default" + ("" if method != "occlusion" else " (1)")
    if method == "occlusion":
        fns["floor"] = floor_forward(model, x, evals + 1)
    elif "floor" not in shared:
        fns["floor"] = floor_grad(model, x, target, evals)
    default_in_child = s["default_in_child"] and method != "occlusion"
    if method != "occlusion" and not default_in_child:
        fns[default_label] = runner(method, model, x, target, None, evals, s)
    for p in fixed:
        if method == "occlusion" and p == 1:
            fns[default_label] = runner(method, model, x, target, 1, evals, s)
            labels[default_label] = p
            continue
        name = f"fixed {p * n if method == 'ig' else p}"  # the value handed to Captum
        fns[name] = runner(method, model, x, target, p, evals, s)
        labels[name] = p
    used = []
    fns["automatic (choice cached)"] = runner(method, model, x, target, "auto", evals, s, key=key, record=used)
    fns["automatic: calibration alone"] = calibration
    ex = None
    if method == "ig":
        cold, warm = explain_runner(model, x, s, True), explain_runner(model, x, s, False)
        if cold is not None:
            try:
                warm[0]()  # make sure it works (and warm its own cache)
                fns["explain, cold"], fns["explain, warm"] = cold[0], warm[0]
                ex = {"kwargs": cold[1]}
            except Exception as e:  # noqa: BLE001
                ex = {"error": f"{type(e).__name__}: {e}"}
                log(f"    explain unavailable: {ex['error']}")
        else:
            ex = {"error": "neuronscope.analyses.attribution.explain not importable"}
    runs, results = abba(fns, reps, quiet_s, tries, log)
    if "floor" in runs and method != "occlusion":
        shared.setdefault("floor", runs["floor"])
    floor_runs = runs.get("floor") or (shared.get("floor") if method != "occlusion" else None)

    # memory, fresh subprocess per configuration
    mem = {}
    ref_attr = results.get(default_label)
    if memory or default_in_child:
        configs = {}
        if memory:
            configs["floor"] = ("floor_forward", None, evals + 1) if method == "occlusion" else ("floor_grad", None, 2)
        configs[default_label] = (method, None if method != "occlusion" else 1, None)
        if memory:
            for name, p in labels.items():
                configs[name] = (method, p, None)
            configs["automatic (cold, with calibration)"] = (method, "auto", None)
        for name, (m, p, runs_) in configs.items():
            if name != default_label and not (s["memory_all"] or name.startswith("automatic")):
                continue  # --quick: only the default and the automatic setting
            passes = s["memory_passes"] if (method != "occlusion" and p is not None) else None
            save = str(tmp / f"{model_name}_{method}_default.pt") if name == default_label and default_in_child else None
            run_evals = runs_ if m.startswith("floor") else passes
            mem[name] = memory_run(model_name, s, m, p, evals, run_evals, quiet_s, log, save=save)
            if save and Path(save).exists():
                ref_attr = torch.load(save)
    # SmoothGrad: the noise level, two seeds of the smallest setting
    seed_diff = None
    if method == "smoothgrad":
        a0 = results.get(f"fixed {fixed[0]}")  # SmoothGrad: labels are samples per pass
        a1 = runner(method, model, x, target, fixed[0], evals, s, seed=1)()
        seed_diff = rel_diff(a1, a0)

    rows = []
    timing_names = [k for k in runs if k not in ("automatic: calibration alone",)]
    if default_in_child and default_label in mem and "wall_s" in mem[default_label]:
        timing_names.insert(1 if "floor" in runs else 0, default_label)
    for name in timing_names:
        if name in runs:
            t, src = med(runs[name]), "in-process"
        else:
            t, src = mem[name]["wall_s"], "its memory run (fresh process)"
        if name == "floor":
            rws = n
        elif name == default_label:
            rws = n * (evals if method != "occlusion" else 1)
        elif name.startswith("fixed"):
            rws = labels[name] * n
        elif name.startswith("automatic"):
            rws = used[-1]["rows"] if used else choice.rows
        else:
            rws = None
        m_ = mem.get(name) or (mem.get("automatic (cold, with calibration)") if name.startswith("automatic") else None)
        attr = results.get(name)
        if name.startswith("explain") and attr is not None:
            r_ = getattr(attr, "results", {}).get("integrated_gradients")
            attr = getattr(r_, "maps", None)
        rows.append({"config": name, "rows": rws, "s": t, "time_from": src, "runs": runs.get(name, []),
                     "peak_delta": (m_ or {}).get("delta"), "rel_diff": None if name == default_label else rel_diff(
                         attr, ref_attr) if attr is not None else None})
    if floor_runs is not None and "floor" not in runs:
        rows.insert(0, {"config": "floor (shared with IG)", "rows": n, "s": med(floor_runs), "time_from": "in-process",
                        "runs": floor_runs, "peak_delta": None, "rel_diff": None})
    floor_s = med(floor_runs) if floor_runs else None
    for r in rows:
        r["ratio_floor"] = r["s"] / floor_s if floor_s else None

    fixed_rows = [r for r in rows if r["config"].startswith("fixed") or r["config"] == default_label]
    best = min(fixed_rows, key=lambda r: r["s"])
    auto = next(r for r in rows if r["config"] == "automatic (choice cached)")
    calib_s = med(runs["automatic: calibration alone"])
    auto_mem = (mem.get("automatic (cold, with calibration)") or {}).get("delta")
    default_mem = (mem.get(default_label) or {}).get("delta")
    targets = [{"what": f"automatic (warm) vs best fixed ({best['config']})", "value": auto["s"] / best["s"],
                "limit": 1.05, "fmt": "{:.3f}x", "met": auto["s"] / best["s"] <= 1.05},
               {"what": "automatic cold (calibration + run) vs best fixed (info)",
                "value": (auto["s"] + calib_s) / best["s"], "limit": None, "fmt": "{:.3f}x", "met": None}]
    if method != "occlusion" and auto_mem is not None and default_mem:
        targets.append({"what": "peak memory automatic / Captum default", "value": auto_mem / default_mem, "limit": 0.2,
                        "fmt": "{:.3f}", "met": auto_mem / default_mem <= 0.2})
    elif auto_mem is not None and default_mem:
        targets.append({"what": "peak memory automatic / Captum default (info: the default is the smallest)",
                        "value": auto_mem / default_mem, "limit": None, "fmt": "{:.2f}", "met": None})
    diffs = [r["rel_diff"] for r in rows if r["rel_diff"] is not None and not r["config"].startswith("explain")]
    if method != "smoothgrad" and diffs:
        targets.append({"what": "largest relative difference to Captum default (all settings)", "value": max(diffs),
                        "limit": 1e-5, "fmt": "{:.2e}", "met": max(diffs) < 1e-5})
    elif diffs:
        targets.append({"what": f"largest relative difference to Captum default (info; two seeds of fixed "
                                f"{fixed[0]} differ by {seed_diff:.2e})", "value": max(diffs), "limit": None,
                        "fmt": "{:.2e}", "met": None})
    if ref_attr is not None and method == "occlusion":  # occlusion maps are differences of outputs
        r = max(2, max(fixed))
        targets.append({"what": f"control: the model's own batch-size rounding, max |f(x) in a batch of N - f(x) in a "
                                f"batch of {r}N| over max |default attribution|", "value": rounding(model, x, ref_attr, r),
                        "limit": None, "fmt": "{:.2e}", "met": None})
    return {"model": model_name, "method": method, "size": s["size"], "n": n, "evals": evals, "reps": reps,
            "rows": rows, "targets": targets, "calibration_s": calib_s, "first_calibration_s": first_calibration_s,
            "choice": {"size": choice.size, "rows": choice.rows, "per_input": choice.per_input,
                       "reason": choice.reason, "calibration_rows": choice.calibration_rows,
                       "per_row_ms": {str(k): 1e3 * v for k, v in choice.per_row_s.items()},
                       "bytes_per_row": choice.bytes_per_row, "memory_limit": choice.memory_limit},
            "choices_used": used, "memory": mem, "explain": ex, "seed_diff": seed_diff,
            "memory_passes": s["memory_passes"] if method != "occlusion" else None}


# ------------------------------------------------------------------------------------ report
def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} (threads {m['threads']}), numpy "
             f"{m['numpy']}, python {m['python']}, captum {res['captum']}; neuronscope at {m.get('commit', '?')}. "
             f"Mode: {res['mode']}; total wall time {res['wall_s'] / 60:.1f} min.", ""]
    unit = {"ig": "internal_batch_size (rows)", "smoothgrad": "nt_samples_batch_size", "occlusion":
            "perturbations_per_eval"}
    for c in res["cases"]:
        what = {"ig": f"integrated gradients, n_steps {c['evals']}", "occlusion": f"occlusion, {c['evals']} windows",
                "smoothgrad": f"SmoothGrad, nt_samples {c['evals']}"}[c["method"]]
        lines += [f"### {c['model']} {c['size']}x{c['size']}, batch {c['n']}: {what} ({c['reps']} rep(s))", "",
                  f"| setting ({unit[c['method']]}) | rows per pass | s (median) | vs floor | peak RSS growth MiB "
                  "| max rel. diff vs default | time from |",
                  "|---|---|---|---|---|---|---|"]
        for r in c["rows"]:
            pk = "-" if r["peak_delta"] is None else f"{r['peak_delta'] / 2**20:.0f}"
            df = "-" if r["rel_diff"] is None else f"{r['rel_diff']:.1e}"
            rf = "-" if r["ratio_floor"] is None else f"{r['ratio_floor']:.2f}x"
            lines.append(f"| {r['config']} | {r['rows'] if r['rows'] is not None else '-'} | {r['s']:.2f} | {rf} | "
                         f"{pk} | {df} | {r['time_from']} |")
        ch = c["choice"]
        lines += ["", f"Automatic choice: {ch['reason']}. Calibration: {ch['calibration_rows']} rows, "
                      f"{c['calibration_s']:.2f} s (median; first {c['first_calibration_s']:.2f} s), estimated "
                      f"{ch['bytes_per_row'] / 2**20:.2f} MiB per row, limit {ch['memory_limit'] / 2**20:.0f} MiB per "
                      "pass." + (f" Memory runs of chunked settings stopped after {c['memory_passes']} passes."
                                 if c.get("memory_passes") else ""), ""]
        am = c["memory"].get("automatic (cold, with calibration)") or {}
        if am.get("choice"):
            lines += [f"In its fresh memory process the automatic setting chose {am['choice']['size']} "
                      f"({am['choice']['rows']} rows).", ""]
        if c.get("explain") and c["explain"].get("error"):
            lines += [f"explain: not timed ({c['explain']['error']}).", ""]
        elif c.get("explain"):
            lines += [f"explain called with {c['explain']['kwargs']}.", ""]
        lines += ["| target | value | limit | met |", "|---|---|---|---|"]
        for t in c["targets"]:
            met = "" if t["met"] is None else ("PASS" if t["met"] else "FAIL")
            lim = "(info)" if t["limit"] is None else str(t["limit"])
            lines.append(f"| {t['what']} | {t['fmt'].format(t['value'])} | {lim} | {met} |")
        lines += ["", "Runs (wall s; cores used by other processes / stolen):", ""]
        for r in c["rows"]:
            if r["runs"]:
                lines.append(f"- {r['config']}: " + ", ".join(f"{w:.2f} ({f:.2f}/{st:.2f})" for w, f, st in r["runs"]))
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: N=4, 8 steps/samples, 16 windows, 1 repetition, "
                                                         "memory only for default and automatic")
    ap.add_argument("--only", default="ig,occlusion,smoothgrad,memory",
                    help="comma-separated subset of ig,occlusion,smoothgrad,memory")
    ap.add_argument("--models", default="cnn,resnet", help="comma-separated subset of cnn,resnet")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default: CNN 3, ResNet 1; --quick 1)")
    ap.add_argument("--quiet-wait", type=float, default=None,
                    help="seconds to wait for other processes to go idle before each run (default 30; --quick 0)")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        memory_child(json.loads(args._child))
        return
    import captum
    import warnings

    warnings.filterwarnings("ignore", module="captum")
    q = args.quick
    only = set(args.only.split(","))
    quiet_s = args.quiet_wait if args.quiet_wait is not None else (0 if q else 30)
    tries = 1 if q else 3
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    res = {"mode": "quick" if q else "full", "machine": machine(), "captum": captum.__version__, "cases": []}
    tmp = Path(tempfile.mkdtemp(prefix="nsbench-attr-"))
    try:
        for model_name in args.models.split(","):
            s = settings(q)[model_name]
            reps = args.reps or s["reps"]
            shared: dict = {}
            for method in ("ig", "smoothgrad", "occlusion"):
                if method in only:
                    res["cases"].append(case(model_name, method, s, reps, quiet_s, tries, "memory" in only, shared,
                                             tmp, log))
    finally:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    res["wall_s"] = time.perf_counter() - t0
    print(markdown(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
