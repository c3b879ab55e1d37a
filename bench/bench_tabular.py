#!/usr/bin/env python
"""Benchmark (issue 6): explaining 100 rows of the breast-cancer table with the demo's MLP.

neuronscope's Shapley sampler (``shapley_sampling``, engine "batched") against
``shap.KernelExplainer``, both estimating the SAME quantity: interventional Shapley values of the
class-1 ("malignant") logit, on raw rows, over the same 50 background rows with uniform weights.
The background is ``shap.kmeans(training rows, 50)`` (scikit-learn k-means on the raw columns,
centroids snapped to observed values): its 50 centroids are used as plain rows, uniform weights,
for both (the k-means cluster weights are dropped; KernelExplainer gets a numpy array, so it weighs
them equally too). The explained function handed to KernelExplainer is the one neuronscope
explains (``class_logits(subject)[:, 1]``), taking raw rows as a numpy array.

Reference: the same Shapley values from many random orderings (antithetic pairs: an ordering and
its reverse), every ordering walked from each of the 50 background rows, computed by code in this
script that does not use neuronscope's sampler: the first layer's pre-activation along a walk is a
cumulative sum of per-column terms, and the rest of the network is applied to it (the network's
weights are read from the module; the function is checked against neuronscope's to float
rounding). Its standard error per value comes from the spread of the pair estimates; errors are
reported as measured (RMSE and max |error| over all 100 x 30 values) and, for RMSE, with the
reference's own noise taken out in quadrature.

Curves (time, error): neuronscope at ``n_permutations`` 2..256; KernelExplainer at ``nsamples`` 100
.. 2048 and "auto", with ``l1_reg=0`` (every column estimated: the plain Kernel SHAP estimate of
the same quantity) and with its default ``l1_reg`` ("num_features(10)" in shap >= 0.47: only 10
columns get non-zero values). Target: neuronscope's curve dominates: at each KernelExplainer
point's time, neuronscope's error (log-log interpolation on its curve) at most half KernelExplainer's;
at its error, neuronscope's time at most half. Beyond neuronscope's slowest point the error at
that point is used as a bound (more orderings do not raise the expected error); above its largest
error, the time of its fastest point is used as a bound.

Fast approximations, with their error against the same reference and their time: gradient x
(input - background mean), integrated gradients from the background mean (neuronscope's
``integrated_gradients_importance``, 50 steps), and Captum's ``DeepLiftShap`` with the 50
background rows (the network cut before its Sigmoid, so it explains the logit).

Permutation importance: neuronscope's ``permutation_importance`` (10 repeats, log-likelihood of the
true class) against ``sklearn.inspection.permutation_importance`` (10 repeats) on the same 100
rows with the same score (a callable scorer computing what neuronscope computes) and the network
wrapped in a minimal scikit-learn-compatible estimator.

Timing follows ``bench_attribution.py``: wait for quiet before each run, record the cores other
processes used, rerun a disturbed run (kept: the least disturbed), repetitions interleaved (ABBA),
medians. A cProfile of one sampler call says where its time goes, next to the model's own cost
(one no-grad forward pass of the same rows).

Usage: ``.venv/bin/python bench/bench_tabular.py [--quick] [--json bench/results/tabular.json]
[--md bench/results/tabular.md]`` (about 8 minutes on 2 cores, waiting up to ``--quiet-wait`` 5 s for quiet before each timed run; ``--quick`` under a minute).
Needs shap (``pip install shap``: a benchmark-only dependency, the ``bench`` extra) and the demo
build (``--demo``, default /tmp/demo-data, made by ``neuronscope demo``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench_attribution import THRESHOLD, clean_timed  # noqa: E402  (same timing rules)
from bench_examples import machine  # noqa: E402
from neuronscope.analyses.attribution.targets import class_logits  # noqa: E402
from neuronscope.analyses.tabular.importance import (  # noqa: E402
    _rows, integrated_gradients_importance, permutation_importance, shapley_sampling)
from neuronscope.demo.run import data_for, subject_for  # noqa: E402

TARGET = "malignant"  # class 1


def settings(quick: bool) -> dict:
    if quick:
        return dict(rows=20, ref_pairs=64, ns_perms=[2, 8, 32], ke_samples=[100, 500], ke_default=[100],
                    reps=1, perm_repeats=10)
    return dict(rows=100, ref_pairs=2048, ns_perms=[2, 4, 8, 16, 32, 64, 128, 256],
                ke_samples=[100, 200, 500, 1000, 2048, "auto"], ke_default=[100, 500, 2048, "auto"],
                reps=3, perm_repeats=10)


# ------------------------------------------------------------------------------------ setup
def load(demo: Path, rows: int):
    import shap

    manifest = json.loads((demo / "demo.json").read_text())
    entry = next(m for m in manifest["models"] if m["name"] == "cancer_mlp")
    subject = subject_for(entry, demo)
    x, y = _rows(data_for(entry, demo))
    test = entry["test_rows"]
    held = set(test)
    train = [i for i in range(len(x)) if i not in held]
    xt, yt = x[test[:rows]], y[test[:rows]]
    km = shap.kmeans(x[train].double().numpy(), 50)
    bg = torch.tensor(km.data, dtype=torch.float32)
    fn = class_logits(subject)
    return entry, subject, xt, yt, bg, fn


def numpy_fn(fn):
    """The explained output (class-1 logit) as a numpy function of raw rows, for KernelExplainer."""
    def f(a):
        with torch.no_grad():
            return fn(torch.as_tensor(np.asarray(a), dtype=torch.float32))[:, 1].double().numpy()
    return f


class Walker:
    """Reference Shapley values by random orderings, independent of neuronscope's sampler."""

    def __init__(self, subject, entry, fn, xt, bg):
        m = subject.model
        lin = [mod for mod in m if isinstance(mod, torch.nn.Linear)]
        assert len(lin) == 3 and isinstance(m[-1], torch.nn.Sigmoid), m
        mean, std = torch.tensor(entry["mean"]), torch.tensor(entry["std"])
        w1 = lin[0].weight.detach() / std  # raw rows -> first pre-activation
        self.b1 = lin[0].bias.detach() - w1 @ mean
        self.w1 = w1
        self.w2, self.b2 = lin[1].weight.detach(), lin[1].bias.detach()
        self.w3, self.b3 = lin[2].weight.detach()[0], lin[2].bias.detach()[0]
        self.x, self.bg = xt, bg
        with torch.no_grad():
            want = fn(xt)[:, 1]
        self.check = float((self.logit(xt @ w1.T + self.b1) - want).abs().max())
        assert self.check < 1e-3, self.check
        n, f = xt.shape
        self.c = (xt[:, None, :] - bg[None]).unsqueeze(-1) * w1.T[None, None]  # (n, b, f, H): per-column terms
        self.h0 = bg @ w1.T + self.b1  # (b, H)
        self.f0 = self.logit(self.h0)  # (b,)
        self.fx = self.logit(xt @ w1.T + self.b1)  # (n,)

    def logit(self, h):
        return torch.relu(torch.relu(h) @ self.w2.T + self.b2) @ self.w3 + self.b3

    def one(self, order):
        """Values (n, f) from one ordering per row, averaged over the background rows."""
        n, b, f, hdim = self.c.shape
        cp = self.c.gather(2, order[:, None, :, None].expand(n, b, f, hdim))
        v = self.logit(self.h0[None, :, None, :] + cp[:, :, :-1].cumsum(2))  # (n, b, f-1)
        path = torch.cat([self.f0[None, :, None].expand(n, b, 1), v, self.fx[:, None, None].expand(n, b, 1)], 2)
        gain = (path[..., 1:] - path[..., :-1]).mean(1)  # (n, f): gain of step k
        return torch.zeros(n, f).scatter_(1, order, gain)

    def run(self, pairs: int, seed: int = 12345, log=None):
        n, f = self.x.shape
        g = torch.Generator().manual_seed(seed)
        s1 = torch.zeros(n, f, dtype=torch.float64)
        s2 = torch.zeros(n, f, dtype=torch.float64)
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(pairs):
                order = torch.argsort(torch.rand(n, f, generator=g), 1)
                pair = (0.5 * (self.one(order) + self.one(order.flip(1)))).double()
                s1 += pair
                s2 += pair * pair
                if log and (i + 1) % max(1, pairs // 8) == 0:
                    log(f"    reference: {i + 1}/{pairs} pairs, {time.perf_counter() - t0:.0f} s")
        mean = s1 / pairs
        var = (s2 / pairs - mean * mean).clamp_min(0) * pairs / max(1, pairs - 1)
        return mean.numpy(), np.sqrt(var.numpy() / pairs), time.perf_counter() - t0


# ------------------------------------------------------------------------------------ helpers
def errors(a: np.ndarray, ref: np.ndarray, se: np.ndarray) -> dict:
    d = np.asarray(a, dtype=np.float64) - ref
    rmse = float(np.sqrt((d ** 2).mean()))
    noise = float((se ** 2).mean())
    return {"rmse": rmse, "rmse_debiased": float(np.sqrt(max(0.0, rmse ** 2 - noise))), "max_abs": float(np.abs(d).max())}


def timed_runs(fns: dict, reps: int, quiet_s: float, tries: int, log, ref, se) -> dict:
    """ABBA over ``reps``; each function gets the repetition index (its seed) and returns values."""
    out = {k: [] for k in fns}
    names = list(fns)
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            wall, foreign, steal, n, res = clean_timed(lambda: fns[name](r), quiet_s, tries)
            e = errors(res, ref, se)
            out[name].append({"wall": wall, "foreign": foreign, "steal": steal, "runs": n, **e})
            log(f"    rep {r + 1}/{reps} {name:<28} {wall:7.3f} s  rmse {e['rmse']:.4f}  (other processes "
                f"{foreign:.2f} cores, steal {steal:.2f}{f', run {n} times' if n > 1 else ''})")
    return {k: summarize(v) for k, v in out.items()}


def summarize(runs: list[dict]) -> dict:
    med = {k: statistics.median(r[k] for r in runs) for k in ("wall", "rmse", "rmse_debiased", "max_abs")}
    return {**med, "foreign_max": max(r["foreign"] for r in runs), "steal_max": max(r["steal"] for r in runs),
            "runs": runs}


def dominance(ns: dict, ke: dict) -> list[dict]:
    """Per KernelExplainer point: neuronscope's error at its time and time at its error."""
    pts = sorted(ns.values(), key=lambda v: v["wall"])
    t = [p["wall"] for p in pts]
    e = [max(p["rmse_debiased"], 1e-12) for p in pts]
    out = []
    for name, k in ke.items():
        tk, ek = k["wall"], max(k["rmse_debiased"], 1e-12)
        if tk >= t[0]:
            # error at tk: the curve's error (non-increasing in time), interpolated, or its last point
            e_at = float(np.exp(np.interp(np.log(tk), np.log(t), np.log(np.minimum.accumulate(e)))))
            e_how = "interpolated" if tk <= t[-1] else "bound (slowest point)"
        else:
            e_at, e_how = float("nan"), "below the fastest point"
        # time at ek: on the (error -> time) curve; above its largest error, its fastest point bounds it
        em = np.minimum.accumulate(e)
        if ek >= em[0]:
            t_at, t_how = t[0], "bound (fastest point)"
        elif ek < em[-1]:
            t_at, t_how = float("nan"), "below the curve's smallest error"
        else:
            ok = np.where(em <= ek)[0][0]  # first point at or below ek; interpolate with the one before
            a, b = ok - 1, ok
            w = (np.log(ek) - np.log(em[a])) / (np.log(em[b]) - np.log(em[a])) if em[b] != em[a] else 1.0
            t_at, t_how = float(np.exp(np.log(t[a]) + w * (np.log(t[b]) - np.log(t[a])))), "interpolated"
        p1 = bool(e_at <= ek / 2) if e_at == e_at else False
        p2 = bool(t_at <= tk / 2) if t_at == t_at else False
        out.append({"kernel": name, "kernel_s": tk, "kernel_rmse": ek, "ns_rmse_at_time": e_at, "how_e": e_how,
                    "error_ratio": e_at / ek if ek else float("nan"), "ns_s_at_error": t_at, "how_t": t_how,
                    "time_ratio": t_at / tk, "pass_error": p1, "pass_time": p2, "pass": p1 and p2})
    return out


# ------------------------------------------------------------------------------------ runners
def ns_runner(subject, xt, bg, p):
    def run(r):
        return shapley_sampling(subject, xt, bg, target=TARGET, n_permutations=p, seed=100 + r).values
    return run


def ke_runner(f, bg, xt, ns, l1):
    import shap

    def run(r):
        np.random.seed(200 + r)
        kw = {} if l1 is None else {"l1_reg": l1}
        return shap.KernelExplainer(f, bg.double().numpy()).shap_values(xt.double().numpy(), nsamples=ns,
                                                                        silent=True, **kw)
    return run


def fast_runners(subject, fn, xt, bg):
    from captum.attr import DeepLiftShap

    mu = bg.mean(0)

    def gradxinput(r):
        xr = xt.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(xr)[:, 1].sum(), xr)
        return (g * (xt - mu)).detach().double().numpy()

    def ig(r):
        return integrated_gradients_importance(subject, xt, baseline=bg, target=TARGET, n_steps=50).values

    class Logit(torch.nn.Module):  # normalization + the network before its Sigmoid
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(*list(subject.model)[:-1])
            self.register_buffer("mean", subject.mean.reshape(1, -1))
            self.register_buffer("std", subject.std.reshape(1, -1))

        def forward(self, x):
            return self.body((x - self.mean) / self.std)

    net = Logit().eval()
    with torch.no_grad():
        assert float((net(xt)[:, 0] - fn(xt)[:, 1]).abs().max()) < 1e-3

    def deeplift(r):
        return DeepLiftShap(net).attribute(xt, baselines=bg, target=0).detach().double().numpy()

    return {"gradient x (input - bg mean)": gradxinput, "integrated gradients (bg mean, 50 steps)": ig,
            "DeepLiftShap (Captum, 50 bg rows)": deeplift}


def permutation_case(subject, xt, yt, repeats, reps, quiet_s, tries, log) -> dict:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.inspection import permutation_importance as sk_permutation_importance

    class Wrapped(ClassifierMixin, BaseEstimator):
        """The network as a fitted scikit-learn classifier (predict_proba on raw rows)."""

        def fit(self, x, y=None):
            return self

        def __sklearn_is_fitted__(self):
            return True

        def predict_proba(self, x):
            with torch.no_grad():
                return subject.probabilities(torch.as_tensor(np.asarray(x), dtype=torch.float32)).double().numpy()

        def predict(self, x):
            return self.predict_proba(x).argmax(1)

    def scorer(est, x, y):  # what neuronscope scores: mean log-likelihood of the true class, p >= 1e-12
        p = est.predict_proba(x)[np.arange(len(y)), np.asarray(y, int)]
        return float(np.log(np.clip(p, 1e-12, None)).mean())

    est = Wrapped()
    xn, yn = xt.double().numpy(), yt.long().numpy()
    fns = {"neuronscope permutation_importance": lambda r: permutation_importance(subject, (xt, yt), repeats=repeats,
                                                                                  seed=r).values,
           "sklearn permutation_importance": lambda r: sk_permutation_importance(est, xn, yn, scoring=scorer,
                                                                                 n_repeats=repeats,
                                                                                 random_state=r).importances_mean}
    runs = {k: [] for k in fns}
    vals = {}
    names = list(fns)
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            wall, foreign, steal, n, res = clean_timed(lambda: fns[name](r), quiet_s, tries)
            runs[name].append({"wall": wall, "foreign": foreign, "steal": steal, "runs": n})
            vals[name] = np.asarray(res, float)
            log(f"    rep {r + 1}/{reps} {name:<36} {wall:7.3f} s  (other processes {foreign:.2f} cores)")
    from scipy.stats import spearmanr

    a, b = vals[names[0]], vals[names[1]]
    return {"rows": len(xt), "repeats": repeats,
            "times": {k: {"wall": statistics.median(r["wall"] for r in v), "runs": v} for k, v in runs.items()},
            "values": {k: v.tolist() for k, v in vals.items()},
            "max_abs_diff": float(np.abs(a - b).max()), "max_value": float(np.abs(b).max()),
            "spearman": float(spearmanr(a, b).statistic)}


def profile_sampler(subject, fn, xt, bg, p) -> dict:
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    shapley_sampling(subject, xt, bg, target=TARGET, n_permutations=p, seed=7)
    prof.disable()
    wall = time.perf_counter() - t0
    st = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, line, name), (cc, nc, tt, ct, _) in st.stats.items():
        rows.append({"function": f"{Path(file).name}:{line}({name})", "tottime": tt, "cumtime": ct, "calls": nc})
    rows.sort(key=lambda r: -r["tottime"])
    # the model's own cost: one no-grad forward pass of the rows the sampler scores
    n, f = xt.shape
    per = p * len(bg) * (f - 1)
    chunk = 1 << 15
    z = bg[torch.randint(len(bg), (chunk,), generator=torch.Generator().manual_seed(0))]
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, n * per, chunk):
            fn(z[: min(chunk, n * per - s)])
    floor = time.perf_counter() - t0
    return {"n_permutations": p, "wall": wall, "rows_scored": n * per, "forward_floor": floor, "top": rows[:12]}


# ------------------------------------------------------------------------------------ report
def markdown(res: dict) -> str:
    m = res["machine"]
    s = res["settings"]
    ref = res["reference"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} (threads {m['threads']}), numpy {m['numpy']}, "
             f"shap {res['shap']}, scikit-learn {res['sklearn']}, captum {res['captum']}; neuronscope at "
             f"{m.get('commit', '?')}. Mode: {res['mode']}; {s['rows']} rows explained, 50 background rows; "
             f"{s['reps']} repetition(s), medians; total wall time {res['wall_s'] / 60:.1f} min.", "",
             f"Explained output: class-1 logit ({TARGET}). Reference: {2 * ref['pairs']} orderings "
             f"({ref['pairs']} antithetic pairs), {ref['seconds']:.0f} s; its standard error per value: RMS "
             f"{ref['se_rms']:.5f}, max {ref['se_max']:.5f} (values: RMS {ref['value_rms']:.3f}); efficiency "
             f"(sum = f(x) - mean f(bg)) off by at most {ref['efficiency_max']:.1e}; model check {ref['check']:.1e}.",
             "", "| method | setting | time s | RMSE | RMSE (ref noise removed) | max abs | other cores (max) |",
             "|---|---|---|---|---|---|---|"]
    for group, title in (("neuronscope", "neuronscope shapley_sampling (batched)"),
                         ("kernel_l1_0", "shap.KernelExplainer, l1_reg=0"),
                         ("kernel_default", "shap.KernelExplainer, default l1_reg"), ("fast", None)):
        for name, v in res["curves"].get(group, {}).items():
            lines.append(f"| {title or name} | {name if title else '-'} | {v['wall']:.3f} | {v['rmse']:.4f} | "
                         f"{v['rmse_debiased']:.4f} | {v['max_abs']:.4f} | {v['foreign_max']:.2f} |")
    for key, title in (("kernel_l1_0", "l1_reg=0"), ("kernel_default", "default l1_reg")):
        if key not in res["dominance"]:
            continue
        lines += ["", f"Target vs KernelExplainer ({title}): at its time at most half its error; at its error at most "
                  "half its time (RMSE with the reference's noise removed; log-log interpolation).", "",
                  "| nsamples | Kernel s | Kernel RMSE | neuronscope RMSE at that time | ratio | neuronscope s at that RMSE "
                  "| ratio | met |", "|---|---|---|---|---|---|---|---|"]
        for d in res["dominance"][key]:
            lines.append(f"| {d['kernel']} | {d['kernel_s']:.2f} | {d['kernel_rmse']:.4f} | {d['ns_rmse_at_time']:.4f} "
                         f"({d['how_e']}) | {d['error_ratio']:.2f} | {d['ns_s_at_error']:.3f} ({d['how_t']}) | "
                         f"{d['time_ratio']:.3f} | {'PASS' if d['pass'] else 'FAIL'} |")
    if "permutation" in res:
        pi = res["permutation"]
        lines += ["", f"Permutation importance, {pi['rows']} rows, {pi['repeats']} repeats, score = mean log-likelihood "
                  "of the true class:", "", "| implementation | time s |", "|---|---|"]
        for k, v in pi["times"].items():
            lines.append(f"| {k} | {v['wall']:.3f} |")
        lines += ["", f"Values agree in distribution: max |difference| {pi['max_abs_diff']:.4f} (largest value "
                  f"{pi['max_value']:.4f}), Spearman {pi['spearman']:.3f} (different shuffles)."]
    if "profile" in res:
        pr = res["profile"]
        lines += ["", f"Profile of one sampler call ({pr['n_permutations']} orderings, {pr['rows_scored']:,} rows "
                  f"scored): {pr['wall']:.3f} s under cProfile; one no-grad forward pass of as many rows: "
                  f"{pr['forward_floor']:.3f} s.", "", "| function | tottime s | cumtime s | calls |", "|---|---|---|---|"]
        for r in pr["top"][:8]:
            lines.append(f"| `{r['function']}` | {r['tottime']:.3f} | {r['cumtime']:.3f} | {r['calls']} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--demo", type=Path, default=Path("/tmp/demo-data"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    ap.add_argument("--quiet-wait", type=float, default=None)
    ap.add_argument("--reps", type=int)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import captum
    import shap
    import sklearn

    q = args.quick
    s = settings(q)
    if args.reps:
        s["reps"] = args.reps
    quiet_s = args.quiet_wait if args.quiet_wait is not None else (0 if q else 5)
    tries = 1 if q else 2
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    entry, subject, xt, yt, bg, fn = load(args.demo, s["rows"])
    f = numpy_fn(fn)
    res = {"mode": "quick" if q else "full", "machine": machine(), "shap": shap.__version__,
           "sklearn": sklearn.__version__, "captum": captum.__version__, "settings": s, "threshold": THRESHOLD,
           "background": "shap.kmeans(training rows, 50).data, uniform weights (cluster weights dropped)",
           "explained": "class-1 logit", "curves": {}, "dominance": {}}

    log(f"reference: {2 * s['ref_pairs']} orderings")
    walker = Walker(subject, entry, fn, xt, bg)
    ref, se, secs = walker.run(s["ref_pairs"], log=log)
    eff = np.abs(ref.sum(1) - (walker.fx.double().numpy() - walker.f0.double().mean().item())).max()
    res["reference"] = {"pairs": s["ref_pairs"], "seconds": secs, "se_rms": float(np.sqrt((se ** 2).mean())),
                        "se_max": float(se.max()), "value_rms": float(np.sqrt((ref ** 2).mean())),
                        "efficiency_max": float(eff), "check": walker.check, "values": ref.tolist(), "se": se.tolist()}

    log("neuronscope curve")
    ns = timed_runs({str(p): ns_runner(subject, xt, bg, p) for p in s["ns_perms"]}, s["reps"], quiet_s, tries, log,
                    ref, se)
    res["curves"]["neuronscope"] = ns
    log("KernelExplainer, l1_reg=0")
    res["curves"]["kernel_l1_0"] = timed_runs({str(n): ke_runner(f, bg, xt, n, 0) for n in s["ke_samples"]},
                                              s["reps"], quiet_s, tries, log, ref, se)
    log("KernelExplainer, default l1_reg")
    res["curves"]["kernel_default"] = timed_runs({str(n): ke_runner(f, bg, xt, n, None) for n in s["ke_default"]},
                                                 s["reps"], quiet_s, tries, log, ref, se)
    for key in ("kernel_l1_0", "kernel_default"):
        res["dominance"][key] = dominance(ns, res["curves"][key])
    log("fast approximations")
    res["curves"]["fast"] = timed_runs(fast_runners(subject, fn, xt, bg), s["reps"], quiet_s, tries, log, ref, se)
    log("permutation importance")
    res["permutation"] = permutation_case(subject, xt, yt, s["perm_repeats"], s["reps"], quiet_s, tries, log)
    log("profile")
    res["profile"] = profile_sampler(subject, fn, xt, bg, 32)
    res["wall_s"] = time.perf_counter() - t0
    md = markdown(res)
    print(md)
    if args.md:
        args.md.write_text(md + "\n")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
