#!/usr/bin/env python
"""Benchmark (issue 7): the sparse dictionary (TopK SAE) on the demo's last conv layer.

Layer ``relu3`` of the demo's shapes CNN (64 channels, 8x8 map): the 2,000 test images give
128,000 activation rows of 64 numbers.

1. **Targets** (from the issue), on the metrics ``learn_dictionary`` returns (measured on a fresh,
   reshuffled pass over the same rows it trained on, first 65,536 rows): explained variance >= 0.9,
   mean L0 <= 10% of the dictionary size, dead fraction <= 10%. Two runs: the default
   ``learn_dictionary(subject, data, "relu3")`` (512 features, k=26, 500 steps of 1,024 rows,
   lr 3e-3, resampling every 200 steps, seed 0, limit 2048 -> all 2,000 images) and the same with
   1,000 steps. Both are the library's own call; the step times come from its ``on_step`` hook
   (``progress_bar`` is replaced by a recorder of time stamps) and the number of forward passes
   from a subclass of ``ActivationRows`` that only remembers its instances.
2. **Throughput**: rows per second of training, ``steps x batch_rows / time``, (a) over the whole
   training loop (from the call to the last step: includes the first epoch's forward passes) and
   (b) on the cached epochs alone (steps after the first epoch: mean step time, reshuffles
   included). Time to EV >= 0.9: the first step where the running mean over 20 steps of the
   per-batch explained variance (``history["explained_variance"]``) reaches 0.9, converted to
   seconds with the cached per-step time, and the elapsed time at that step as measured.
   Reference, same run: producing the activations, one pass of the 2,000 images to relu3 through
   neuronscope's ``stream`` (what ``ActivationRows`` reads: loading, normalisation, forward with a
   hook) and the model alone on preloaded batches (conv1 .. relu3, no_grad); medians of 3.
   Training throughput is reported as a ratio to both production rates.
3. **Memory vs dataset size**: each configuration in a FRESH subprocess (warmed up on 64 images
   and 2 steps of random rows), the same training as ``learn_dictionary`` (512 features, k=26,
   lr 3e-3, 200 steps, seed 0, evaluation pass included) on ``ActivationRows`` with
   ``cache_rows=0`` (streams the model every epoch; bound: the ``buffer`` of 65,536 rows) at
   limit 500 / 1,024 / 2,000 images, and with the default ``cache_rows`` (262,144) at 500 and 2,000.
   Peak RSS growth = the kernel's ``VmHWM`` reset to the current RSS just before training
   (``/proc/self/clear_refs``) minus that RSS; also ``tracemalloc``'s peak (Python objects only:
   CPU tensors come from torch's allocator, which tracemalloc does not see) and
   ``getrusage().ru_maxrss`` before/after (a child inherits the parent's high-water mark there,
   so it is shown, not used).
4. **NMF** (``factorize(..., method="nmf", k=6, limit=2048)``): time and reconstruction error
   ||A - WH||_F / ||A||_F, with the default dictionary's same relative error on all 128,000 rows.

Before every timed part (and every memory subprocess) the script waits up to ``--quiet-wait``
seconds (default 30) for other processes to go idle, then records the load average
(``os.getloadavg``) and the cores other processes used meanwhile (``/proc/stat``); nothing is
rerun. torch uses 2 threads (`--threads`).

Usage: ``.venv/bin/python bench/bench_directions.py [--data-root /tmp/demo-data] [--json
bench/results/directions.json] [--md bench/results/directions.md] [--quick]`` (about 3 minutes on
2 cores; builds the demo data first, ~80 s, if ``--data-root`` has none). ``--quick``: fewer
steps, figures too small to judge by.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench_examples import machine, timed, wait_quiet  # noqa: E402  (same machine record and timing)
from procmem import reset_peak, status  # noqa: E402 (bench/ is on sys.path when run as a script)

LAYER = "relu3"
EV_TARGET, L0_SHARE_TARGET, DEAD_TARGET = 0.9, 0.10, 0.10
RUNNING = 20  # window of the running mean for the time to EV >= 0.9


def settings(quick: bool) -> dict:
    if quick:
        return dict(runs=[150, 200], mem_steps=30, mem_limits=[500, 2000], cached_limits=[2000], fwd_reps=1)
    return dict(runs=[500, 1000], mem_steps=100, mem_limits=[500, 1024, 2000], cached_limits=[2000],
                fwd_reps=3)


# ------------------------------------------------------------------------------------ setup
def ensure_data(root: Path, log) -> float:
    if (root / "demo.json").exists():
        return 0.0
    from neuronscope.demo.build import build_demo

    log(f"building the demo data in {root} (~80 s)")
    t0 = time.perf_counter()
    build_demo(root, progress=False, seed=0)
    return time.perf_counter() - t0


def load(root: Path):
    from neuronscope.demo.run import data_for, subject_for

    entry = next(m for m in json.loads((root / "demo.json").read_text())["models"] if m["name"] == "shapes")
    return subject_for(entry, root), data_for(entry, root)


def load_now() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


QUIET = {"s": 30.0}  # wait at most this long for other processes to go idle before each timed part


def measured(fn) -> tuple[float, dict, object]:
    box = {}
    waited = wait_quiet(QUIET["s"])
    l0 = load_now()
    wall, foreign, steal, _ = timed(lambda: box.setdefault("r", fn()))
    return wall, {"other_cores_before": round(waited, 3), "loadavg_before": l0, "loadavg_after": load_now(), "other_cores": round(foreign, 3),
                  "steal_cores": round(steal, 3)}, box.get("r")


# ------------------------------------------------------------------------------------ 2. reference
def to_relu3(m, x):
    x = m.pool1(m.relu1(m.bn1(m.conv1(x))))
    x = m.pool2(m.relu2(m.bn2(m.conv2(x))))
    return m.relu3(m.bn3(m.conv3(x)))


def forward_reference(subject, data, reps: int, log) -> tuple[dict, torch.Tensor]:
    from neuronscope.analyses.directions.rows import to_rows
    from neuronscope.analyses.stream import stream

    keep: list[torch.Tensor] = []

    def via_stream(collect=False):
        n = 0
        with subject.borrowed():
            for st in stream(subject, data, [LAYER], limit=2048, progress=False, spread=True):
                a = st.activations[LAYER]
                n += a.shape[0] * a.shape[2] * a.shape[3]
                if collect:
                    keep.append(to_rows(a.detach()).float())
        return n

    batches = [subject.prepare(b.x) for b in data.batches(64)]

    def model_alone():
        n = 0
        with subject.borrowed(), torch.no_grad():
            for x in batches:
                a = to_relu3(subject.model, x)
                n += a.shape[0] * a.shape[2] * a.shape[3]
        return n

    via_stream(collect=True)  # warm-up, and the rows for the relative errors
    rows = torch.cat(keep)
    with torch.no_grad(), subject.borrowed():  # check the hand-written truncation against the hook
        a = to_relu3(subject.model, batches[0])
        ref = next(iter(stream(subject, data, [LAYER], limit=64, progress=False))).activations[LAYER]
        check = float((a - ref).abs().max())
    model_alone()
    out = {"stream": [], "model": [], "check_max_abs": check}
    for r in range(reps):
        for name, fn in ((("stream", via_stream), ("model", model_alone)) if r % 2 == 0 else
                         (("model", model_alone), ("stream", via_stream))):
            wall, env, n = measured(fn)
            out[name].append({"wall": wall, "rows": n, **env})
            log(f"    forward to {LAYER} ({name}): {wall:.3f} s, {n:,} rows, other cores {env['other_cores']:.2f}")
    for name in ("stream", "model"):
        w = statistics.median(r["wall"] for r in out[name])
        n = out[name][0]["rows"]
        out[name + "_median_s"] = w
        out[name + "_rows_per_s"] = n / w
    out["rows"] = int(rows.shape[0])
    return out, rows


# ------------------------------------------------------------------------------------ 1./2. SAE runs
class Recorder:
    def __init__(self):
        self.stamps: list[float] = []

    def update(self, n=1):
        self.stamps.append(time.perf_counter())

    def close(self):
        pass


def sae_run(subject, data, steps: int, rows_all: torch.Tensor, log) -> tuple[dict, object]:
    import neuronscope.analyses.directions.rows as rows_mod
    import neuronscope.progress as progress_mod
    from neuronscope.analyses.directions.sae import learn_dictionary

    rec = Recorder()
    made: list = []
    Base = rows_mod.ActivationRows

    class Counted(Base):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    saved = (progress_mod.progress_bar, rows_mod.ActivationRows)
    progress_mod.progress_bar = lambda **kw: rec
    rows_mod.ActivationRows = Counted
    try:
        box = {}

        def call():
            box["t_call"] = time.perf_counter()
            return learn_dictionary(subject, data, LAYER, steps=steps, progress=True)

        wall, env, (d, m) = measured(call)
        t_end = box["t_call"] + wall
    finally:
        progress_mod.progress_bar, rows_mod.ActivationRows = saved
    ar = made[0]
    t_call = box["t_call"]
    st = np.array(rec.stamps)
    br = ar.batch_rows
    epoch_steps = -(-ar.positions * ar.examples // br) if ar.examples else None
    train_s = st[-1] - t_call
    first = epoch_steps if epoch_steps and epoch_steps < steps else None
    cached_step = float((st[-1] - st[first - 1]) / (steps - first)) if first else None
    intervals = np.diff(st)
    median_step = float(np.median(intervals[first:])) if first else float(np.median(intervals))
    ev = np.array(m.history["explained_variance"])
    run = np.convolve(ev, np.ones(RUNNING) / RUNNING, mode="valid")  # run[i] = mean ev[i .. i+19]
    hit = np.nonzero(run >= EV_TARGET)[0]
    reach = int(hit[0] + RUNNING) if len(hit) else None  # 1-based step where the window ending there reaches 0.9
    with torch.no_grad():
        rel = float((rows_all - d.reconstruct(rows_all)).norm() / rows_all.norm())
        c = rows_all - rows_all.mean(0)
        ev_all = float(1 - ((rows_all - d.reconstruct(rows_all)) ** 2).sum() / (c ** 2).sum())
    res = {
        "steps": steps, "features": d.features, "k": d.k, "batch_rows": br, "wall_s": wall, **env,
        "train_s": float(train_s), "eval_s": float(t_end - st[-1]), "passes": ar.passes,
        "examples": ar.examples, "rows_per_epoch": ar.positions * ar.examples, "epoch_steps": epoch_steps,
        "explained_variance": m.explained_variance, "l0": m.l0, "l0_share": m.l0 / d.features,
        "dead_fraction": m.dead_fraction, "eval_rows": m.rows,
        "ev_all_rows": ev_all, "rel_error_all_rows": rel,
        "resampled": m.history["resampled"],
        "met": {"explained_variance": m.explained_variance >= EV_TARGET, "l0_share": m.l0 / d.features <= L0_SHARE_TARGET,
                "dead_fraction": m.dead_fraction <= DEAD_TARGET},
        "rows_per_s_overall": steps * br / float(train_s),
        "cached_step_s": cached_step, "median_step_s": median_step,
        "rows_per_s_cached": br / cached_step if cached_step else None,
        "reach_ev_step": reach,
        "reach_ev_s_from_step_time": reach * (cached_step or median_step) if reach else None,
        "reach_ev_s_elapsed": float(st[reach - 1] - t_call) if reach else None,
        "history_ev_every_10": [round(float(x), 4) for x in ev[9::10]],
        "history_dead_every_10": [round(float(x), 4) for x in np.array(m.history["dead_fraction"])[9::10]],
        "final_batch_ev_mean20": float(ev[-RUNNING:].mean()),
    }
    res["met"]["all"] = all(res["met"].values())
    log(f"    {steps} steps: {wall:.1f} s (train {train_s:.1f}), EV {m.explained_variance:.4f}, L0 {m.l0:.1f}/"
        f"{d.features}, dead {m.dead_fraction:.3f}, passes {ar.passes}, reach EV 0.9 at step {reach}")
    return res, d


# ------------------------------------------------------------------------------------ 3. memory
def memory_child(spec: dict) -> None:
    """Fresh process: warm up, then one training run; prints a JSON line."""
    torch.set_num_threads(spec["threads"])
    from neuronscope.analyses.directions.rows import ActivationRows
    from neuronscope.analyses.directions.sae import train_dictionary

    subject, data = load(Path(spec["root"]))
    # warm-up: torch/oneDNN lazy initialisation and the data reader, not counted
    warm = ActivationRows(subject, data, LAYER, limit=64, batch_rows=1024, cache_rows=0)
    next(iter(warm()))
    train_dictionary([torch.rand(1024, 64) for _ in range(2)], 64, features=512, k=26, steps=2, lr=3e-3)
    del warm
    gc.collect()
    rows = ActivationRows(subject, data, LAYER, limit=spec["limit"], batch_rows=1024, cache_rows=spec["cache_rows"],
                          seed=0)
    ru0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    reset = reset_peak()
    before = status("VmRSS")
    t0 = time.perf_counter()
    d, m = train_dictionary(rows, rows.dim, features=512, k=26, steps=spec["steps"], lr=3e-3, seed=0,
                            resample_dead_every=200, layer=rows.layer)
    wall = time.perf_counter() - t0
    peak = status("VmHWM")
    _, tm_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    cache = rows._cache
    print(json.dumps({"before": before, "peak": peak, "delta": max(0, peak - before), "peak_reset": reset,
                      "tracemalloc_peak": tm_peak, "ru_maxrss_before": ru0,
                      "ru_maxrss_after": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "wall_s": wall, "passes": rows.passes, "examples": rows.examples,
                      "rows_per_epoch": rows.examples * rows.positions,
                      "cache_bytes": 0 if cache is None else cache.numel() * cache.element_size(),
                      "explained_variance": m.explained_variance, "l0": m.l0, "dead_fraction": m.dead_fraction}))


def memory_run(root: Path, limit: int, cache_rows: int, steps: int, log) -> dict:
    spec = {"root": str(root), "limit": limit, "cache_rows": cache_rows, "steps": steps, "threads": torch.get_num_threads()}
    wait_quiet(QUIET["s"])
    l0 = load_now()
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                       cwd=REPO)
    if p.returncode != 0:
        raise RuntimeError(f"memory child failed: {p.stderr[-2000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out.update(limit=limit, cache_rows=cache_rows, steps=steps, loadavg_before=l0, loadavg_after=load_now(),
               child_s=time.perf_counter() - t0)
    log(f"    limit {limit}, cache_rows {cache_rows}: peak growth {out['delta'] / 2**20:.1f} MiB, tracemalloc "
        f"{out['tracemalloc_peak'] / 2**20:.2f} MiB, passes {out['passes']}, {out['wall_s']:.1f} s")
    return out


# ------------------------------------------------------------------------------------ 4. NMF
def nmf_run(subject, data, log) -> dict:
    from neuronscope.analyses.directions.factorize import factorize

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wall, env, f = measured(lambda: factorize(subject, data, LAYER, method="nmf", k=6, limit=2048))
    log(f"    NMF k=6: {wall:.1f} s, reconstruction {f.reconstruction:.4f}")
    return {"wall_s": wall, **env, "k": f.k, "reconstruction": float(f.reconstruction), "n_positions": f.n_positions,
            "notes": list(f.notes), "warnings": sorted({str(w.message)[:200] for w in caught})}


# ------------------------------------------------------------------------------------ report
def mib(b) -> str:
    return f"{b / 2**20:.1f}"


def yn(ok: bool) -> str:
    return "yes" if ok else "**no**"


def markdown(res: dict) -> str:
    m = res["machine"]
    fw = res["forward"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} (threads {m['threads']}), numpy {m['numpy']}, "
             f"python {m['python']}; neuronscope at {m.get('commit', '?')}. Mode: {res['mode']}. Load average "
             f"(1/5/15 min) at start {res['loadavg_start']}, at end {res['loadavg_end']}; total wall time "
             f"{res['wall_s'] / 60:.1f} min.", "",
             f"Layer `{LAYER}` of the demo's shapes CNN: {fw['rows']:,} rows x 64 channels (2,000 test images x 8x8).",
             "", "**1. Targets** (metrics from `learn_dictionary`: a fresh reshuffled pass, first 65,536 rows; EV on "
             "all 128,000 rows in its own column):", "",
             "| run | features / k | wall s | EV (target >= 0.9) | L0 | L0 / features (<= 10%) | dead (<= 10%) | "
             "EV, all rows | met |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["sae"]:
        lines.append(f"| learn_dictionary, {r['steps']} steps | {r['features']} / {r['k']} | {r['wall_s']:.1f} | "
                     f"{r['explained_variance']:.4f} ({yn(r['met']['explained_variance'])}) | {r['l0']:.1f} | "
                     f"{100 * r['l0_share']:.1f}% ({yn(r['met']['l0_share'])}) | {100 * r['dead_fraction']:.1f}% "
                     f"({yn(r['met']['dead_fraction'])}) | {r['ev_all_rows']:.4f} | {yn(r['met']['all'])} |")
    lines += ["", "**2. Throughput** against producing the activations, same run (medians of "
              f"{len(fw['stream'])}): one pass of the 2,000 images to `{LAYER}` via `stream` "
              f"{fw['stream_median_s']:.3f} s = {fw['stream_rows_per_s']:,.0f} rows/s; the model alone on preloaded "
              f"batches {fw['model_median_s']:.3f} s = {fw['model_rows_per_s']:,.0f} rows/s.", "",
              "| run | train s (call -> last step) | forward passes | rows/s overall | / stream rate | "
              "ms/step, cached epochs | rows/s cached | / stream rate | / model rate | step reaching EV 0.9 "
              f"(mean of {RUNNING}) | s at step time | s elapsed |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["sae"]:
        rc = r["rows_per_s_cached"]
        if rc is None:
            lines.append(f"| {r['steps']} steps | {r['train_s']:.1f} | {r['passes']} | (no cached epoch) |")
            continue
        lines.append(
            f"| {r['steps']} steps | {r['train_s']:.1f} | {r['passes']} | {r['rows_per_s_overall']:,.0f} | "
            f"{r['rows_per_s_overall'] / fw['stream_rows_per_s']:.3f}x | "
            f"{1e3 * r['cached_step_s']:.1f} | {rc:,.0f} | {rc / fw['stream_rows_per_s']:.3f}x | "
            f"{rc / fw['model_rows_per_s']:.3f}x | {r['reach_ev_step']} | "
            + (f"{r['reach_ev_s_from_step_time']:.1f} | {r['reach_ev_s_elapsed']:.1f} |" if r["reach_ev_step"]
               else "not reached | - |"))
    lines += ["", "**3. Memory vs dataset size** (fresh subprocess per row, same training, "
              f"{res['memory'][0]['steps']} steps, evaluation pass included; peak RSS growth = VmHWM reset before "
              "training minus RSS then):", "",
              "| cache_rows | images | rows/epoch | forward passes | cache held MiB | peak RSS growth MiB | "
              "tracemalloc peak MiB | ru_maxrss before -> after MiB | EV |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["memory"]:
        lines.append(f"| {r['cache_rows']:,} | {r['examples']:,} | {r['rows_per_epoch']:,} | {r['passes']} | "
                     f"{mib(r['cache_bytes'])} | {mib(r['delta'])} | {r['tracemalloc_peak'] / 2**20:.2f} | "
                     f"{mib(r['ru_maxrss_before'])} -> {mib(r['ru_maxrss_after'])} | {r['explained_variance']:.3f} |")
    mr = res["memory_ratios"]
    lines += ["", f"Streaming (`cache_rows=0`): {mr['stream_max_over_min_images']}x the images -> "
              f"{mr['stream_peak_ratio']:.2f}x the peak RSS growth (largest / smallest), tracemalloc {mr['stream_tm_ratio']:.2f}x. "
              f"Bound: `buffer` 65,536 rows x 64 x 4 B = {mib(65536 * 64 * 4)} MiB per copy of the pool. Cached "
              f"(default `cache_rows` 262,144): bound 262,144 x 64 x 4 B = {mib(262144 * 64 * 4)} MiB of cache "
              f"(an epoch's reshuffle copies it once more); cached peak / streamed peak at 2,000 images: "
              f"{mr['cached_over_stream_2000']:.2f}x."]
    n = res["nmf"]
    d = res["sae"][0]
    lines += ["", f"**4. NMF** (`factorize`, k=6, limit 2048): {n['wall_s']:.1f} s on {n['n_positions']:,} rows, "
              f"reconstruction ||A - WH|| / ||A|| = {n['reconstruction']:.4f}; the default dictionary's "
              f"||A - A_hat|| / ||A|| on the same 128,000 rows: {d['rel_error_all_rows']:.4f} "
              f"({d['features']} features, {d['k']} active per row, {d['wall_s']:.1f} s)."
              + (f" Warnings: {'; '.join(n['warnings'])}." if n["warnings"] else "")]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", type=Path, default=Path("/tmp/demo-data"))
    ap.add_argument("--json", type=Path, default=REPO / "bench/results/directions.json")
    ap.add_argument("--md", type=Path, default=REPO / "bench/results/directions.md")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--quiet-wait", type=float, default=30.0,
                    help="seconds to wait at most for other processes to go idle before each timed part")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        memory_child(json.loads(args.child))
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    QUIET["s"] = args.quiet_wait
    s = settings(args.quick)
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    res = {"mode": "quick" if args.quick else "full", "machine": machine(), "loadavg_start": load_now(),
           "settings": s, "layer": LAYER,
           "targets": {"explained_variance_min": EV_TARGET, "l0_share_max": L0_SHARE_TARGET, "dead_fraction_max": DEAD_TARGET}}
    res["demo_build_s"] = ensure_data(args.data_root, log)

    log("3. memory, fresh subprocesses")  # first, while this process is still small
    mem = [memory_run(args.data_root, lim, 0, s["mem_steps"], log) for lim in s["mem_limits"]]
    mem += [memory_run(args.data_root, lim, 262144, s["mem_steps"], log) for lim in s["cached_limits"]]
    res["memory"] = mem
    st = [r for r in mem if r["cache_rows"] == 0]
    lo, hi = min(st, key=lambda r: r["examples"]), max(st, key=lambda r: r["examples"])
    c2000 = [r for r in mem if r["cache_rows"] and r["examples"] == hi["examples"]]
    res["memory_ratios"] = {"stream_max_over_min_images": round(hi["examples"] / lo["examples"], 2),
                            "stream_peak_ratio": hi["delta"] / max(lo["delta"], 1),
                            "stream_tm_ratio": hi["tracemalloc_peak"] / max(lo["tracemalloc_peak"], 1),
                            "cached_over_stream_2000": (c2000[0]["delta"] / max(hi["delta"], 1)) if c2000 else float("nan")}

    subject, data = load(args.data_root)
    log("2. reference: one forward pass to relu3")
    res["forward"], rows_all = forward_reference(subject, data, s["fwd_reps"], log)

    log("1./2. learn_dictionary")
    res["sae"] = []
    for steps in s["runs"]:
        r, _ = sae_run(subject, data, steps, rows_all, log)
        res["sae"].append(r)
    log("4. NMF")
    res["nmf"] = nmf_run(subject, data, log)
    res["loadavg_end"] = load_now()
    res["wall_s"] = time.perf_counter() - t0
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1, default=str))
    md = markdown(res)
    print(md)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(md + "\n")


if __name__ == "__main__":
    main()
