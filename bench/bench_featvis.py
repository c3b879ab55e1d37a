#!/usr/bin/env python
"""Benchmark: feature visualization (``featvis.render``) against the model's own cost and against a
Lucent-style sequential loop, measured in the same run.

Model: the 4-conv CNN of ``bench_examples.py`` (conv 3->32->64->128->128, 3x3, ReLU, 2x2 max-pool
each, then a linear classifier), seeded random weights, eval mode, 64x64 inputs, ImageNet
normalization in the Subject. Layers: the four Conv2d outputs (``features.0/3/6/9``).

1. **Floor** (target: render per step <= 1.1x floor). For each layer, ``steps`` times one forward
   and backward of the batch being optimized (16 images, one per channel 0..15) through a
   ``nn.Sequential`` prefix of the model that ends at the layer: input leaf requires grad, weights
   frozen, eval mode, backward of minus the sum of the 16 channel means (the objective ``render``
   optimizes). Against it: ``render(subject, channel(layer, range(16)), steps=steps,
   progress=False)`` with every other argument at its default (Fourier param, standard transforms,
   Adam lr 0.05, 16 redirected-ReLU warm-up steps, truncate=True, pick=True), wall time / steps.
   render computes only each image's own channel of the last layer (``featvis.tap``), so two more
   runs in the same ABBA rounds say how much of the result that is: the **picked floor** (the same
   prefix with its last conv computing only those channels: the least work render's model part
   can be) and ``render(..., pick=False)`` (every channel, the floor's work plus the input side).
2. **Batched vs sequential** (target: batched >= 1.3x faster than the Lucent-style loop). The same
   channels rendered one at a time, each for ``steps`` steps: (a) ``render(subject, channel(layer,
   c), ...)`` (truncate=True), and (b) a Lucent-style loop written here (torch-lucent is not
   installable in this environment and torchvision does not import): batch-1 Fourier image param
   with Lucent's scaling, colour decorrelation and sigmoid, the same transforms object as
   ``render``, Lucent's normalize, Adam lr 0.05, forward hooks on EVERY module (``hook_model``), the
   full model every step, loss ``-act[:, c].mean()``, weights left trainable as Lucent leaves them.
   (a) and (b) alternate per channel (ABBA). All 16 channels on the last conv layer; 8 on the
   others by default (``--seq-channels``), totals scaled to 16 (every channel of a layer costs the
   same). Control: (b) with the weights frozen, last layer, channels 0..3.
3. **Where the time goes**: per-step cost of a bench-side replica of render's step built up piece
   by piece from the library's own parts (floor, + Subject.prepare and the truncating Tap,
   + Fourier param, + transforms, + Adam, + history; and the redirected-ReLU warm-up step), with
   minor page faults per step, on the last and the first conv layer; a torch.profiler op table of
   one render's steady-state steps (warmup=0) on the last layer. ``--pinned`` adds a control run of
   floor vs render and the decomposition with glibc malloc told to keep big buffers.

Every timed run records the cores other processes used meanwhile; a run disturbed by more than
0.25 cores is made again (up to 3 times, after waiting up to ``--quiet-wait`` s for quiet), since on
2 cores one busy neighbour makes 2 OpenMP threads wait at every barrier (10x slower steps seen).

Usage: ``.venv/bin/python bench/bench_featvis.py [--quick] [--steps N] [--pinned] [--json out.json]``
(about 6 minutes on 2 cores; ``--quick`` under a minute; raw results in bench/results/featvis.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench_examples import CNN4, machine, timed, wait_quiet  # noqa: E402  (same model and timing helpers as issue 3)
from lucent_site import import_lucent, render_channel  # noqa: E402
from neuronscope import Subject  # noqa: E402
from neuronscope.analyses.featvis.objectives import channel  # noqa: E402
from neuronscope.analyses.featvis.param import make_param, to_range  # noqa: E402
from neuronscope.analyses.featvis.redirect import RedirectedReLU  # noqa: E402
from neuronscope.analyses.featvis.render import render  # noqa: E402
from neuronscope.analyses.featvis.tap import Tap, picked_forward  # noqa: E402
from neuronscope.analyses.featvis.transforms import make_transforms  # noqa: E402

SIZE = 64
N_CH = 16
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
LAYERS = ["features.0", "features.3", "features.6", "features.9"]
LAST = LAYERS[-1]
REAL = "Lucent 0.1.8"
try:  # the real Lucent, when installed beside the repository (bench/lucent_site.py)
    LUCENT = import_lucent()
except ImportError:
    LUCENT = None
# glibc malloc told to keep big buffers and reuse them (as jemalloc/tcmalloc would): the --pinned
# control, same settings as bench_examples.py.
PINNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736",
                 "MALLOC_TOP_PAD_": "536870912"}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return CNN4(SIZE).eval()


def make_subject(model: nn.Module) -> Subject:
    return Subject(model, (3, SIZE, SIZE), mean=MEAN, std=STD)


def prefix(model: nn.Module, layer: str) -> nn.Sequential:
    """The model's children run up to and including ``layer`` (a module of ``model.features``)."""
    mods = []
    for name, m in model.features.named_children():
        mods.append(m)
        if f"features.{name}" == layer:
            return nn.Sequential(*mods)
    raise KeyError(layer)


def out_shape(model: nn.Module, layer: str) -> list[int]:
    with torch.no_grad():
        return list(prefix(model, layer)(torch.zeros(1, 3, SIZE, SIZE)).shape[1:])


# ------------------------------------------------------------------------------------ loops
def floor_loop(model, subject, layer: str, batch: int, steps: int, picked: bool = False):
    """``steps`` x (forward of the truncated model + backward of the objective's sum). ``picked``:
    the floor of the work render does, its last conv computing only each image's own channel
    (``tap.picked_forward``)."""
    pre = prefix(model, layer)
    head, last = pre[:-1], pre[-1]
    target = torch.arange(batch) % N_CH
    rows = torch.arange(batch)
    g = torch.Generator().manual_seed(0)
    x0 = subject.prepare(0.45 + 0.1 * torch.rand(batch, 3, SIZE, SIZE, generator=g))

    def run():
        with subject.borrowed():  # eval, weights frozen
            x = x0.clone().requires_grad_(True)
            for _ in range(steps):
                x.grad = None
                own = picked_forward(last, head(x), target) if picked else pre(x)[rows, target]
                value = own.reshape(batch, -1).mean(1)
                (-value.sum()).backward()
    return run


def batched_render(subject, layer: str, steps: int, **kw):
    def run():
        return render(subject, channel(layer, range(N_CH)), steps=steps, progress=False, **kw)
    return run


def single_render(subject, layer: str, c: int, steps: int):
    def run():
        return render(subject, channel(layer, c), steps=steps, progress=False)
    return run


# Lucent-style stand-in (lucent/optvis: param.image(fft=True, decorrelate=True), render_vis,
# hook_model, objectives.channel), written out because torch-lucent cannot be installed here.
_SVD_SQRT = np.asarray([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32)
_COLOUR = torch.from_numpy(_SVD_SQRT / np.max(np.linalg.norm(_SVD_SQRT, axis=0)))


def _rfft2d_freqs(h: int, w: int) -> np.ndarray:
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[: w // 2 + 2] if w % 2 == 1 else np.fft.fftfreq(w)[: w // 2 + 1]
    return np.sqrt(fx * fx + fy * fy)


def _lucent_image(h: int, w: int, seed: int):
    """``param.image(w, h, fft=True, decorrelate=True)``: (params, image_f)."""
    gen = torch.Generator().manual_seed(seed)
    freqs = _rfft2d_freqs(h, w)
    spectrum = (torch.randn(1, 3, *freqs.shape, 2, generator=gen) * 0.01).requires_grad_(True)
    scale = torch.tensor(1.0 / np.maximum(freqs, 1.0 / max(w, h)) ** 1).float()[None, None, ..., None]

    def image_f():
        z = torch.view_as_complex(scale * spectrum)
        image = torch.fft.irfftn(z, s=(h, w), norm="ortho")[:1, :3, :h, :w] / 4.0
        t = torch.matmul(image.permute(0, 2, 3, 1), _COLOUR.T)  # _linear_decorrelate_color
        return torch.sigmoid(t.permute(0, 3, 1, 2))
    return [spectrum], image_f


class _ModuleHook:
    def __init__(self, module):
        self.hook = module.register_forward_hook(self.hook_fn)
        self.module = None
        self.features = None

    def hook_fn(self, module, input, output):
        self.module = module
        self.features = output

    def close(self):
        self.hook.remove()


def _hook_model(model):
    """Lucent's ``hook_model``: a forward hook on every module, recursively, names joined by '_'."""
    features = OrderedDict()

    def hook_layers(net, prefix=[]):  # noqa: B006 (as in Lucent)
        if hasattr(net, "_modules"):
            for name, layer in net._modules.items():
                if layer is None:
                    continue
                features["_".join(prefix + [name])] = _ModuleHook(layer)
                hook_layers(layer, prefix=prefix + [name])

    hook_layers(model)

    def hook(layer):
        return features[layer].features
    return hook, features


def lucent_render(model, layer: str, c: int, steps: int, *, frozen: bool = False, seed: int = 0):
    """One Lucent-style ``render_vis(model, f"{layer}:{c}")`` at the model's input size (no upsampling
    to 224, no progress bar, no image display). Weights stay trainable unless ``frozen``."""
    def run():
        params, image_f = _lucent_image(SIZE, SIZE, seed)
        optimizer = torch.optim.Adam(params, lr=5e-2)
        tf = make_transforms("standard")  # the same transforms render() uses
        g = torch.Generator().manual_seed(seed + 1)
        mean = torch.tensor(MEAN)[:, None, None]
        std = torch.tensor(STD)[:, None, None]

        def transform_f(x):
            return (tf(x, g) - mean) / std  # + transform.normalize()

        grads = [p.requires_grad for p in model.parameters()]
        if frozen:
            for p in model.parameters():
                p.requires_grad_(False)
        hook, features = _hook_model(model)
        name = layer.replace(".", "_")
        try:
            for _ in range(steps):
                optimizer.zero_grad()
                model(transform_f(image_f()))
                loss = -hook(name)[:, c].mean()  # objectives.channel
                loss.backward()
                optimizer.step()
            image = image_f().detach().numpy().transpose(0, 2, 3, 1)  # tensor_to_img_array at the threshold
        finally:
            for h in features.values():  # Lucent never removes them; we do, so renders do not pile hooks up
                h.close()
            for p, r in zip(model.parameters(), grads):
                p.requires_grad_(r)
                p.grad = None
        return image
    return run


# ------------------------------------------------------------------------------------ timing
def clean_timed(fn, quiet_s: float, tries: int = 3, threshold: float = 0.25) -> tuple[float, float, float, int, int]:
    """``timed(fn)``; when other processes (or the hypervisor, as steal) took more than ``threshold``
    cores meanwhile, wait for quiet and run again (at most ``tries`` runs in all), keeping the least
    disturbed run. On 2 cores with 2 OpenMP threads, one busy foreign process can slow a step 10x
    (threads wait at every barrier for a descheduled peer), so disturbed runs are not kept when a
    clean one can be had.
    Returns (wall s, other-process cores, steal cores, minor page faults, runs made)."""
    best = None
    for i in range(tries):
        if i:
            wait_quiet(quiet_s)
        wall, foreign, steal, faults = timed(fn)
        if best is None or foreign + steal < best[1] + best[2]:
            best = (wall, foreign, steal, faults)
        if foreign + steal < threshold:
            break
    RETRIES["runs"] += i
    return best + (i + 1,)


RETRIES = {"runs": 0}  # runs made again because other processes were busy


def abba(fns: dict, reps: int, quiet_s: float, log) -> dict[str, list[tuple]]:
    out = {k: [] for k in fns}
    names = list(fns)
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            wall, foreign, steal, faults, n = clean_timed(fns[name], quiet_s)
            out[name].append((wall, foreign, steal, faults))
            log(f"    rep {r + 1}/{reps} {name:<34} {wall:8.2f} s  (other processes {foreign:.2f} cores, "
                f"steal {steal:.2f}"
                f"{f', run {n} times' if n > 1 else ''})")
    return out


def med(runs) -> float:
    return statistics.median(w for w, *_ in runs)


def warm_up(model, subject, log) -> None:
    """One short run of every loop and layer: oneDNN primitives, allocator pools, lazy imports."""
    log("== warm-up")
    for layer in LAYERS:
        floor_loop(model, subject, layer, N_CH, 4)()
        floor_loop(model, subject, layer, N_CH, 4, picked=True)()
        floor_loop(model, subject, layer, 1, 4)()
        batched_render(subject, layer, 4)()
        single_render(subject, layer, 0, 4)()
        lucent_render(model, layer, 0, 4)()
        if LUCENT:
            render_channel(LUCENT, model, layer, 0, 4, SIZE)()


def case_floor(model, subject, layer: str, steps: int, reps: int, quiet_s: float, log) -> dict:
    log(f"== floor vs batched render: {layer}, batch {N_CH}, {steps} steps, {reps} rep(s)")
    runs = abba({"floor": floor_loop(model, subject, layer, N_CH, steps),
                 "render": batched_render(subject, layer, steps),
                 "picked floor": floor_loop(model, subject, layer, N_CH, steps, picked=True),
                 "render, pick=False": batched_render(subject, layer, steps, pick=False)}, reps, quiet_s, log)
    f1 = abba({"floor batch 1": floor_loop(model, subject, layer, 1, steps)}, 1, 0, log)
    floor_ms, render_ms = 1e3 * med(runs["floor"]) / steps, 1e3 * med(runs["render"]) / steps
    picked_ms, whole_ms = 1e3 * med(runs["picked floor"]) / steps, 1e3 * med(runs["render, pick=False"]) / steps
    return {"layer": layer, "shape": out_shape(model, layer), "batch": N_CH, "steps": steps, "reps": reps,
            "floor_ms_per_step": floor_ms, "render_ms_per_step": render_ms, "ratio": render_ms / floor_ms,
            "picked_floor_ms_per_step": picked_ms, "ratio_to_picked_floor": render_ms / picked_ms,
            "render_whole_layer_ms_per_step": whole_ms, "ratio_whole_layer": whole_ms / floor_ms,
            "floor1_ms_per_step": 1e3 * med(f1["floor batch 1"]) / steps,
            "floor_faults_per_step": statistics.median(r[3] for r in runs["floor"]) / steps,
            "render_faults_per_step": statistics.median(r[3] for r in runs["render"]) / steps,
            "batched_s": med(runs["render"]), "runs": {**runs, **f1}}


def case_sequential(model, subject, layer: str, steps: int, n_channels: int, quiet_s: float, log,
                    frozen_channels: int = 0) -> dict:
    """Channels 0..n-1 rendered one at a time, ours and Lucent-style alternating (ABBA per channel).
    Totals are given for all N_CH channels: the measured sum, times N_CH / n when n < N_CH (every
    channel of a layer costs the same: same shapes, same ops). The first ``frozen_channels`` also run
    the control, Lucent-style with the weights frozen, in the same rotation."""
    channels = list(range(n_channels))
    kinds = {"ours (truncate=True)": lambda c: single_render(subject, layer, c, steps),
             "lucent-style": lambda c: lucent_render(model, layer, c, steps)}
    if LUCENT:
        kinds[REAL] = lambda c: render_channel(LUCENT, model, layer, c, steps, SIZE)
    log(f"== sequential single-channel renders: {layer}, channels 0..{n_channels - 1}, {steps} steps each"
        + (f" (+ Lucent-style frozen on 0..{frozen_channels - 1})" if frozen_channels else ""))
    if frozen_channels:
        kinds["lucent-style frozen"] = lambda c: lucent_render(model, layer, c, steps, frozen=True)
    runs = {k: [] for k in kinds}
    for i, c in enumerate(channels):
        names = [k for k in kinds if c < frozen_channels or k != "lucent-style frozen"]
        for k in (names if i % 2 == 0 else names[::-1]):
            wall, foreign, steal, *_ = clean_timed(kinds[k](c), quiet_s)
            runs[k].append((wall, foreign, steal))
        log(f"    channel {c:>2}: " + ", ".join(f"{k} {runs[k][-1][0]:6.2f} s" for k in names)
            + " (other processes " + "/".join(f"{runs[k][-1][1]:.2f}" for k in names) + " cores)")
    out = {"layer": layer, "steps": steps, "channels": channels, "runs": runs}
    for k in kinds:
        out[k] = summary(runs[k], steps)
    return out


def summary(runs, steps: int) -> dict:
    walls = [w for w, *_ in runs]
    return {"measured_s": sum(walls), "n": len(walls), "total_s": sum(walls) * N_CH / len(walls),
            "median_s_per_channel": statistics.median(walls), "min_s": min(walls), "max_s": max(walls),
            "ms_per_step": 1e3 * statistics.median(walls) / steps}


# ------------------------------------------------------------------------------------ profile
DECOMP = ["floor: truncated model fwd+bwd", "+ Subject.prepare + Tap (hooks, early exit)",
          "+ last layer computes each image's own channel only (pick)", "+ Fourier param",
          "+ transforms (pad, warp, crop)", "+ Adam (zero_grad, step)", "+ history (value to numpy) = render loop",
          "what-if: redirected ReLU on every step"]


def replica(model, subject, layer: str, level: int, steps: int):
    """render()'s step rebuilt from the library's own pieces, up to ``level`` (see DECOMP)."""
    def run():
        obj = channel(layer, range(N_CH))
        target = torch.arange(N_CH)
        if level == 0:
            return floor_loop(model, subject, layer, N_CH, steps)()
        g0 = torch.Generator().manual_seed(0)
        raw0 = 0.45 + 0.1 * torch.rand(N_CH, 3, SIZE, SIZE, generator=g0)
        picks = target if level >= 2 else None
        with subject.borrowed(), Tap(subject, obj.layers, needs_output=False, picks=picks) as tap:
            p = make_param("fourier", N_CH, subject.input_shape, seed=0)
            tf = make_transforms("standard")
            g = torch.Generator().manual_seed(1)
            opt = torch.optim.Adam(p.parameters(), lr=0.05)
            for _ in range(steps):
                if level <= 2:
                    x = raw0.clone().requires_grad_(True)
                else:
                    opt.zero_grad(set_to_none=True)
                    images = p()
                    x = to_range(tf(images, g) if level >= 4 else images, subject.value_range)
                with RedirectedReLU() if level >= 7 else contextlib.nullcontext():
                    ctx = tap.context(x, target, target, "logits")
                value = obj(ctx)
                (-value.sum()).backward()
                if level >= 5:
                    opt.step()
                if level >= 6:
                    value.detach().float().cpu().numpy()
    return run


def decomposition(model, subject, layer: str, steps: int, reps: int, log) -> dict:
    log(f"== decomposition: {layer}, batch {N_CH}, {steps} steps, median of {reps}, interleaved")
    rows = OrderedDict()
    fns = {name: replica(model, subject, layer, lv, steps) for lv, name in enumerate(DECOMP)}
    fns["render(), warmup=0"] = batched_render(subject, layer, steps, warmup=0)
    for r in range(reps):  # interleaved: every variant once per round
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            wall, foreign, _, faults, _ = clean_timed(fns[name], quiet_s=5)
            rows.setdefault(name, []).append((1e3 * wall / steps, foreign, faults / steps))
    out = {k: statistics.median(v for v, *_ in vs) for k, vs in rows.items()}
    faults = {k: statistics.median(f for *_, f in vs) for k, vs in rows.items()}
    for k, v in out.items():
        log(f"    {k:<48} {v:8.2f} ms/step  {faults[k]:7.0f} page faults/step")
    return {"layer": layer, "steps": steps, "reps": reps, "ms_per_step": out, "faults_per_step": faults,
            "foreign_max": max(f for vs in rows.values() for _, f, _ in vs), "runs": rows}


def pieces(model, subject, layers: list[str], log, iters: int = 10, rounds: int = 5) -> dict:
    """Each part render's step adds to the floor, timed alone (forward + backward where it has one)
    on the batch of 16, ``rounds`` interleaved rounds of ``iters`` calls, median per call. The
    input-side parts do not depend on the layer; the Tap's forward overhead and the redirected
    ReLU's extra cost (warm-up steps only) do."""
    log(f"== pieces: each part of the step alone, batch {N_CH}, median of {rounds} x {iters} calls")
    g = torch.Generator().manual_seed(0)
    img = 0.45 + 0.1 * torch.rand(N_CH, 3, SIZE, SIZE, generator=g)
    p = make_param("fourier", N_CH, subject.input_shape, seed=0)
    opt = torch.optim.Adam(p.parameters(), lr=0.05)
    tf = make_transforms("standard")
    gt = torch.Generator().manual_seed(1)
    p().sum().backward()  # Adam needs a gradient to step on
    rows_, target = torch.arange(N_CH), torch.arange(N_CH)

    def fourier():
        p.spectrum.grad = None
        p().sum().backward()

    def transforms():
        tf(img.clone().requires_grad_(True), gt).sum().backward()

    def prepare():
        subject.prepare(to_range(img.clone().requires_grad_(True), subject.value_range)).sum().backward()

    def adam():
        opt.step()

    fns = {"Fourier param: p() fwd + bwd": (fourier, None),
           "transforms: pad + warp + crop, fwd + bwd": (transforms, None),
           "to_range + Subject.prepare, fwd + bwd": (prepare, None),
           "Adam step (3x64x33x2 spectrum x 16)": (adam, None)}
    for layer in layers:
        pre = prefix(model, layer)
        obj = channel(layer, range(N_CH))
        x0 = subject.prepare(img)

        def step(pre=pre, x0=x0):
            x = x0.clone().requires_grad_(True)
            a = pre(x)
            (-a[rows_, target].reshape(N_CH, -1).mean(1).sum()).backward()

        def redirected(pre=pre, x0=x0):
            x = x0.clone().requires_grad_(True)
            with RedirectedReLU():
                a = pre(x)
            (-a[rows_, target].reshape(N_CH, -1).mean(1).sum()).backward()

        def fwd(pre=pre, x0=x0):
            with torch.no_grad():
                pre(x0)

        def tap_fwd():
            with torch.no_grad():
                TAPS[0].run(img)

        fns[f"{layer}: floor step (truncated fwd + bwd)"] = (step, None)
        fns[f"{layer}: same step with RedirectedReLU"] = (redirected, None)
        fns[f"{layer}: truncated forward, no grad"] = (fwd, None)
        fns[f"{layer}: Tap.run forward (prepare, hooks, early exit), no grad"] = (tap_fwd, obj)
    TAPS = []
    res = {}
    with subject.borrowed():
        for r in range(rounds):
            for name, (fn, obj) in (list(fns.items()) if r % 2 == 0 else list(fns.items())[::-1]):
                ctx = Tap(subject, obj.layers, needs_output=False) if obj is not None else contextlib.nullcontext()
                with ctx as tap:
                    TAPS[:] = [tap]
                    fn()  # warm
                    wall, *_ = timed(lambda: [fn() for _ in range(iters)])
                res.setdefault(name, []).append(1e3 * wall / iters)
    out = {k: statistics.median(v) for k, v in res.items()}
    for k, v in out.items():
        log(f"    {k:<66} {v:8.2f} ms")
    return {"iters": iters, "rounds": rounds, "ms": out, "runs": res}


OP_GROUPS = [  # (group, predicate on the aten op name), first match wins
    ("conv forward", lambda n: n in ("aten::mkldnn_convolution", "aten::convolution", "aten::_convolution",
                                     "aten::conv2d", "aten::_convolution_mode")),
    ("conv backward", lambda n: n == "aten::convolution_backward"),
    ("relu / max-pool fwd+bwd", lambda n: any(s in n for s in ("relu", "clamp_min", "threshold", "max_pool"))),
    ("objective: channel pick (index, index_put backward, zeros)", lambda n: any(
        s in n for s in ("aten::index", "index_put", "aten::fill_", "aten::zero_", "aten::zeros"))),
    ("Fourier param (irfft2 fwd/bwd, view_as_complex, sigmoid)", lambda n: any(
        s in n for s in ("fft", "sigmoid", "complex", "view_as_real"))),
    ("transforms (affine_grid, grid_sample fwd/bwd, pad)", lambda n: any(
        s in n for s in ("grid_sampler", "affine_grid", "constant_pad", "aten::pad", "linspace"))),
    ("Adam (Optimizer.step)", lambda n: n.startswith("Optimizer.") or "_foreach" in n or n in (
        "aten::addcdiv_", "aten::lerp_", "aten::addcmul_", "aten::sqrt")),
]


def op_profile(subject, layer: str, steps: int, log) -> dict:
    """torch.profiler over one render: self time per op group, and what is left (Python, dispatch)."""
    import torch.profiler as tp

    log(f"== torch.profiler: render {layer}, batch {N_CH}, {steps} steps, warmup=0 (the steady-state step)")
    wait_quiet(15)
    t0 = time.perf_counter()
    with tp.profile(activities=[tp.ProfilerActivity.CPU]) as prof:
        batched_render(subject, layer, steps, warmup=0)()
    wall = time.perf_counter() - t0
    groups = OrderedDict((g, 0.0) for g, _ in OP_GROUPS)
    groups["other aten ops (mul, add, copy, cat, ...)"] = 0.0
    top = []
    adam_total = 0.0
    for e in prof.key_averages():
        if e.key.startswith("Optimizer.step"):
            adam_total += e.cpu_time_total / 1e3
            continue
        if e.key.startswith("Optimizer."):
            continue
        self_ms = e.self_cpu_time_total / 1e3
        top.append((e.key, self_ms, e.count))
        for g, pred in OP_GROUPS:
            if pred(e.key):
                groups[g] += self_ms
                break
        else:
            groups["other aten ops (mul, add, copy, cat, ...)"] += self_ms
    # Adam's ops also match other groups (mul_, add_, sqrt): count Optimizer.step's total instead.
    top.sort(key=lambda t: -t[1])
    ops_ms = sum(ms for _, ms, _ in top)
    groups["Adam (Optimizer.step)"] = adam_total
    return {"layer": layer, "steps": steps, "wall_ms": 1e3 * wall, "ops_self_ms": ops_ms,
            "groups_ms_per_step": {k: v / steps for k, v in groups.items()},
            "outside_ops_ms_per_step": (1e3 * wall - ops_ms) / steps,
            "top_ops": [{"op": k, "self_ms_per_step": ms / steps, "calls_per_step": n / steps}
                        for k, ms, n in top[:15]]}


# ------------------------------------------------------------------------------------ report
def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} (threads {m['threads']}, interop "
             f"{m['interop_threads']}), numpy {m['numpy']}, python {m['python']}; "
             f"neuronscope at {m.get('commit', '?')}. Mode: {res['mode']}; {res['steps']} steps; {N_CH} channels; "
             f"total wall time {res['wall_s'] / 60:.1f} min "
             f"({res.get('reruns_for_load', 0)} runs repeated because other processes were busy).", ""]
    lines += ["Target 1: render per step vs the floor (same batch of 16, truncated model fwd+bwd). Beside it, "
              "the floor of only the work render does (the last conv computing each image's own channel) and "
              "render with pick=False (every channel of the last layer, as the floor):", "",
              "| layer | output | floor ms/step | render ms/step | ratio | target | met | reps "
              "| picked floor ms/step | render / picked floor | render pick=False ms/step | its ratio to the floor "
              "| page faults/step floor / render |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["floor"]:
        met = "yes" if r["ratio"] <= 1.1 else f"no (+{100 * (r['ratio'] / 1.1 - 1):.0f}% over)"
        lines.append(f"| {r['layer']} | {'x'.join(map(str, r['shape']))} | {r['floor_ms_per_step']:.2f} | "
                     f"{r['render_ms_per_step']:.2f} | {r['ratio']:.2f}x | <= 1.1x | {met} | {r['reps']} | "
                     f"{r['picked_floor_ms_per_step']:.2f} | {r['ratio_to_picked_floor']:.2f}x | "
                     f"{r['render_whole_layer_ms_per_step']:.2f} | {r['ratio_whole_layer']:.2f}x | "
                     f"{r['floor_faults_per_step']:.0f} / {r['render_faults_per_step']:.0f} |")
    floors = {r["layer"]: r for r in res["floor"]}
    if res["sequential"]:
        lines += ["", f"Target 2: {N_CH} channels, one batched render vs {N_CH} sequential single-channel renders "
                      f"(seconds for all {N_CH}; sequential = sum of the single renders, times {N_CH} / n when only n "
                      f"channels were rendered):", "",
                  "| layer | n | batched (s) | ours sequential, truncate=True (s) "
                  "| Lucent-style sequential, full model (s) | "
                  "batching gain (ours seq / batched) | truncation + loop gain (Lucent-style / ours seq) | "
                  "Lucent-style / batched | target | met | Lucent-style step / batch-1 floor |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in res["sequential"]:
            f = floors[s["layer"]]
            ours, luc = s["ours (truncate=True)"], s["lucent-style"]
            gain = luc["total_s"] / f["batched_s"]
            lines.append(f"| {s['layer']} | {ours['n']} | {f['batched_s']:.1f} | {ours['total_s']:.1f} | "
                         f"{luc['total_s']:.1f} | "
                         f"{ours['total_s'] / f['batched_s']:.2f}x | {luc['total_s'] / ours['total_s']:.2f}x | "
                         f"**{gain:.2f}x** | >= 1.3x | {'yes' if gain >= 1.3 else 'no'} | "
                         f"{luc['ms_per_step'] / f['floor1_ms_per_step']:.2f}x |")
        real = [s for s in res["sequential"] if REAL in s]
        if real:
            lines += ["", f"Target 2 against the real {REAL} (render_vis at the model's own size, hooks removed after "
                          "each render), in the same rotation:", "",
                      f"| layer | n | batched (s) | {REAL} sequential (s) | {REAL} / batched | target | met "
                      f"| {REAL} ms/step, batch 1 | its step / batch-1 floor |", "|---|---|---|---|---|---|---|---|---|"]
            for s in real:
                f, luc = floors[s["layer"]], s[REAL]
                gain = luc["total_s"] / f["batched_s"]
                lines.append(f"| {s['layer']} | {luc['n']} | {f['batched_s']:.1f} | {luc['total_s']:.1f} | **{gain:.2f}x** "
                             f"| >= 1.3x | {'yes' if gain >= 1.3 else 'no'} | {luc['ms_per_step']:.2f} | "
                             f"{luc['ms_per_step'] / f['floor1_ms_per_step']:.2f}x |")
        lines += ["", "Per step (ms; sequential: median channel):", "",
                  "| layer | floor, batch 16 | render, batch 16 | floor, batch 1 | ours, batch 1 "
                  "| Lucent-style, batch 1 |",
                  "|---|---|---|---|---|---|"]
        for s in res["sequential"]:
            f = floors[s["layer"]]
            lines.append(f"| {s['layer']} | {f['floor_ms_per_step']:.2f} | {f['render_ms_per_step']:.2f} | "
                         f"{f['floor1_ms_per_step']:.2f} | {s['ours (truncate=True)']['ms_per_step']:.2f} | "
                         f"{s['lucent-style']['ms_per_step']:.2f} |")
    for s in res["sequential"]:
        if "lucent-style frozen" not in s:
            continue
        k = s["lucent-style frozen"]["n"]
        fr = s["lucent-style frozen"]["ms_per_step"]
        tr = summary(s["runs"]["lucent-style"][:k], s["steps"])["ms_per_step"]
        ours = summary(s["runs"]["ours (truncate=True)"][:k], s["steps"])["ms_per_step"]
        f1 = floors[s["layer"]]["floor1_ms_per_step"]
        lines += ["", f"Control, {s['layer']}, channels 0..{k - 1} in the same rotation (median channel): Lucent-style "
                      f"with the weights frozen {fr:.2f} ms/step ({fr / f1:.2f}x the batch-1 floor) vs trainable as in "
                      f"Lucent {tr:.2f} ({tr / f1:.2f}x); ours {ours:.2f} ({ours / f1:.2f}x)."]
    lines += ["", "Runs (wall s; cores used by other processes / stolen during the run):", ""]
    for r in res["floor"]:
        for k, v in r["runs"].items():
            lines.append(f"- {r['layer']} / {k}: " + ", ".join(f"{w:.2f} ({f:.2f}/{st:.2f})" for w, f, st, *_ in v))
    for s in res["sequential"]:
        for k, v in s["runs"].items():
            lines.append(f"- {s['layer']} / {k}, per channel: " + ", ".join(f"{w:.2f} ({f:.2f})" for w, f, *_ in v))
    for d in res.get("decomposition", []):
        lines += ["", f"Decomposition, {d['layer']}, batch {N_CH}, {d['steps']} steps, median of {d['reps']} "
                      f"(max other-process load {d['foreign_max']:.2f} cores):", "",
                  "| step | ms/step | added | ratio to floor | page faults/step |", "|---|---|---|---|---|"]
        prev, base = None, d["ms_per_step"][DECOMP[0]]
        for k, v in d["ms_per_step"].items():
            added = "" if prev is None or not k.startswith("+") else f"{v - prev:+.2f}"
            lines.append(f"| {k} | {v:.2f} | {added} | {v / base:.2f}x | {d['faults_per_step'][k]:.0f} |")
            if k.startswith("+") or k.startswith("floor"):
                prev = v
    if res.get("pieces"):
        pc = res["pieces"]
        floors_ = {k.split(":")[0]: v for k, v in pc["ms"].items() if k.endswith("floor step (truncated fwd + bwd)")}
        lines += ["", f"Pieces of the step timed alone, batch {N_CH} (median of {pc['rounds']} rounds x "
                      f"{pc['iters']} calls), "
                      "ms per call and as a share of each layer's floor step:", "",
                  "| piece | ms | " + " | ".join(f"share of {k} floor" for k in floors_) + " |",
                  "|---|---|" + "---|" * len(floors_)]
        for k, v in pc["ms"].items():
            lines.append(f"| {k} | {v:.2f} | " + " | ".join(f"{100 * v / f:.0f}%" for f in floors_.values()) + " |")
    if res.get("profile"):
        p = res["profile"]
        lines += ["", f"torch.profiler, render {p['layer']}, {p['steps']} steps, warmup=0: wall "
                      f"{p['wall_ms'] / p['steps']:.2f} ms/step, inside aten ops {p['ops_self_ms'] / p['steps']:.2f} "
                      "ms/step (self time, caller thread):", "",
                  "| group | ms/step |", "|---|---|"]
        for k, v in p["groups_ms_per_step"].items():
            lines.append(f"| {k} | {v:.2f} |")
        lines.append(f"| outside aten ops (Python, autograd engine, dispatch) | {p['outside_ops_ms_per_step']:.2f} |")
        lines += ["", "| op | self ms/step | calls/step |", "|---|---|---|"]
        for o in p["top_ops"]:
            lines.append(f"| {o['op']} | {o['self_ms_per_step']:.2f} | {o['calls_per_step']:.1f} |")
    if res.get("pinned"):
        lines += ["", "### Control: glibc malloc pinned (subprocess)", "", markdown(res["pinned"])]
    return "\n".join(lines)


def pinned_control(layers: list[str], steps: int, reps: int, quiet_s: float, q: bool, log) -> dict:
    """Floor vs render, the pieces and the decomposition on ``layers``, in a subprocess whose glibc
    malloc keeps and reuses big buffers: what is left once fresh-page faults are gone."""
    import subprocess
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="nsbench-featvis-")) / "pinned.json"
    log("== control: glibc malloc pinned (" + " ".join(f"{k}={v}" for k, v in PINNED_MALLOC.items()) + "), subprocess")
    cmd = [sys.executable, __file__, "--only", "floor,profile", "--layers", ",".join(layers), "--steps", str(steps),
           "--reps", str(reps), "--quiet-wait", str(quiet_s), "--json", str(out), "--tag", "malloc pinned"]
    subprocess.run(cmd + (["--quick"] if q else []), env={**os.environ, **PINNED_MALLOC}, check=True,
                   stdout=subprocess.DEVNULL)
    res = json.loads(out.read_text())
    out.unlink()
    out.parent.rmdir()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 32 steps, 1 repetition, no quiet waits")
    ap.add_argument("--steps", type=int, default=None, help="optimization steps per render (default 256; --quick 32)")
    ap.add_argument("--reps", type=int, default=None,
                    help="ABBA repetitions of floor / render / picked floor / render pick=False on every layer "
                         "(default 3; --quick 1)")
    ap.add_argument("--seq-channels", type=int, default=None,
                    help="channels rendered one at a time on the layers before the last (default 8, totals scaled "
                         "to 16; --quick 4); the last conv layer always renders all 16")
    ap.add_argument("--only", default="floor,sequential,profile",
                    help="comma-separated subset of floor,sequential,profile")
    ap.add_argument("--quiet-wait", type=float, default=None,
                    help="seconds to wait for other processes to go idle before running a disturbed run again "
                         "(default 15; --quick 0)")
    ap.add_argument("--layers", default=",".join(LAYERS), help="comma-separated subset of " + ",".join(LAYERS))
    ap.add_argument("--pinned", action="store_true",
                    help="also rerun floor vs render, the pieces and the decomposition on --layers in a subprocess "
                         "with glibc malloc pinned (" + " ".join(f"{k}={v}" for k, v in PINNED_MALLOC.items())
                         + "); with --only floor,profile --layers features.0,features.9 about 5 minutes in all")
    ap.add_argument("--tag", default="", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "featvis.json",
                    help="raw results (default bench/results/featvis.json)")
    args = ap.parse_args()
    q = args.quick
    steps = args.steps or (32 if q else 256)
    reps = args.reps or (1 if q else 3)
    quiet_s = args.quiet_wait if args.quiet_wait is not None else (0 if q else 15)
    only = set(args.only.split(","))
    seq_n = args.seq_channels or (4 if q else 8)
    layers = [layer for layer in LAYERS if layer in args.layers.split(",")]

    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    model = make_model()
    subject = make_subject(model)
    res = {"mode": ("quick" if q else "full") + (f" [{args.tag}]" if args.tag else ""), "steps": steps,
           "machine": machine(), "floor": [], "sequential": [],
           "malloc": {k: os.environ[k] for k in PINNED_MALLOC if k in os.environ}}
    log(f"torch threads {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}), {steps} steps")
    warm_up(model, subject, log)
    if "floor" in only or "sequential" in only:
        for layer in layers:
            res["floor"].append(case_floor(model, subject, layer, steps, reps, quiet_s, log))
    if "sequential" in only:
        for layer in layers:
            n = N_CH if layer == LAST else min(N_CH, seq_n)
            res["sequential"].append(case_sequential(model, subject, layer, steps, n, quiet_s, log,
                                                     frozen_channels=4 if layer == LAST else 0))
    if "profile" in only:
        dsteps = 8 if q else 16
        res["pieces"] = pieces(model, subject, list(dict.fromkeys(x for x in (layers[0], LAST) if x in layers)), log,
                               rounds=3 if q else 5)
        res["decomposition"] = ([decomposition(model, subject, LAST, dsteps, 1 if q else 3, log)]
                                if LAST in layers else [])
        if LAST in layers:
            res["profile"] = op_profile(subject, LAST, dsteps, log)
    if args.pinned:
        res["pinned"] = pinned_control(layers, steps, reps, quiet_s, q, log)
    res["wall_s"] = time.perf_counter() - t0
    res["reruns_for_load"] = RETRIES["runs"]
    print(markdown(res))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1, default=float))
    log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
