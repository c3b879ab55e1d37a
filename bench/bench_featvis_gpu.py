#!/usr/bin/env python
"""Benchmark: feature visualization on an accelerator, batched against the real Lucent run one
channel at a time, on a ResNet-18-style network at 128x128 (issue 4's GPU comparison).

Model: the hand-written ResNet-18 of ``bench_examples.py`` (BasicBlock, [2, 2, 2, 2], 64..512
channels, BatchNorm with non-trivial running statistics), seeded random weights, eval mode,
ImageNet normalization in the Subject. Layers: the outputs of the four stages, ``layer1`` (64 x
32 x 32 at 128 px) to ``layer4`` (512 x 4 x 4).

1. **Batched vs sequential** (target: >= 8x on a GPU for 16 channels of the last stage). 16
   channels in one ``render(subject, channel(layer, range(16)), steps=256)`` (every other option
   at its default) against (a) the real Lucent 0.1.8, ``render_vis(model, f"{layer}:{c}",
   param_f=lambda: param.image(128), fixed_image_size=128, thresholds=(256,))`` for each channel
   (its defaults otherwise: Fourier + decorrelated colour, its standard transforms through kornia,
   its normalize, Adam lr 0.05, hooks on every module, the whole model, trainable weights), and
   (b) ours one channel at a time. Lucent's hooks are removed after each render (it never
   removes them; left in place, every later render would run with one more set). Channels
   alternate Lucent / ours.
2. **Floor** (target: render per step <= 1.1x). ``steps`` x one forward + backward of the batch of
   16 through the network up to the layer (weights frozen, input leaf, backward of minus the sum of
   the 16 channel means) against the batched render, ABBA, medians.
3. **A whole stage in one run**: every channel of ``layer4`` (512) in one batched render, against
   Lucent's median seconds per channel times 512.

Time is read with the device synchronized before and after every timed call. On a CPU the script
runs too (``--device cpu``; slow at 128 px on 2 cores: use ``--quick``), which is how it is tested.

Usage: ``python bench/bench_featvis_gpu.py [--quick] [--device cuda] [--json out.json]``. Lucent
comes from ``.bench-site`` (see ``bench/lucent_site.py`` for the one-line install).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench_examples import make_model as _make_model  # noqa: E402  (the same ResNet-18 as issue 3)
from lucent_site import import_lucent, render_channel  # noqa: E402
from neuronscope import Subject  # noqa: E402
from neuronscope.analyses.featvis.objectives import channel  # noqa: E402
from neuronscope.analyses.featvis.render import render  # noqa: E402

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
STAGES = ["layer1", "layer2", "layer3", "layer4"]


def make_model(device) -> nn.Module:
    return _make_model("resnet", 128).to(device)


class Prefix(nn.Module):
    """The network run up to the end of one stage: the floor's model."""

    def __init__(self, model, stage: str):
        super().__init__()
        self.model, self.n = model, STAGES.index(stage) + 1

    def forward(self, x):
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        for stage in STAGES[: self.n]:
            x = getattr(m, stage)(x)
        return x


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def floor_loop(model, subject, stage: str, batch: int, steps: int, size: int):
    pre = Prefix(model, stage)
    rows = torch.arange(batch, device=subject.device)
    x0 = subject.prepare(0.45 + 0.1 * torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(subject.device))

    def run():
        with subject.borrowed():  # eval mode, weights frozen
            x = x0.clone().requires_grad_(True)
            for _ in range(steps):
                x.grad = None
                a = pre(x)
                value = a[rows, rows % a.shape[1]].reshape(batch, -1).mean(1)
                (-value.sum()).backward()
    return run


def ours(subject, stage: str, channels, steps: int):
    def run():
        render(subject, channel(stage, channels), steps=steps, progress=False)
    return run


def machine(device) -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
           "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        out.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), cudnn_benchmark=torch.backends.cudnn.benchmark)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3, help="repetitions of the floor / batched-render pair (ABBA)")
    ap.add_argument("--seq-stages", default="layer4,layer3,layer2,layer1", help="stages rendered one channel at a time")
    ap.add_argument("--seq-channels", type=int, default=16)
    ap.add_argument("--whole-stage", action=argparse.BooleanOptionalAction, default=True,
                    help="also render every channel of layer4 in one run")
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 steps, 2 channels, 1 rep, 64 px")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.channels, args.seq_channels, args.reps, args.size = 8, 2, 2, 1, 64
    device = torch.device(args.device)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    model = make_model(device)
    subject = Subject(model, (3, args.size, args.size), mean=MEAN, std=STD)
    lucent = import_lucent()
    notes = lucent[2]
    n, steps, size = args.channels, args.steps, args.size
    result = {"machine": machine(device), "notes": notes, "steps": steps, "size": size, "channels": n,
              "floor": [], "sequential": [], "whole_stage": None}

    def save():  # after every section, so a run cut short still leaves what it measured
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.json.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=1))
            tmp.replace(args.json)

    log("== warm-up (every loop once, short)")
    for stage in STAGES:
        floor_loop(model, subject, stage, n, 4, size)()
        ours(subject, stage, range(n), 4)()
        ours(subject, stage, 0, 4)()
        render_channel(lucent, model, stage, 0, 4, size)()

    for stage in STAGES:
        fl, rn = [], []
        for r in range(args.reps):
            pair = [("floor", floor_loop(model, subject, stage, n, steps, size)), ("render", ours(subject, stage, range(n), steps))]
            for name, fn in (pair if r % 2 == 0 else pair[::-1]):
                (fl if name == "floor" else rn).append(timed(fn, device))
        f, b = statistics.median(fl), statistics.median(rn)
        row = {"stage": stage, "floor_ms_per_step": 1e3 * f / steps, "render_ms_per_step": 1e3 * b / steps,
               "ratio": b / f, "floor_s": fl, "render_s": rn}
        result["floor"].append(row)
        log(f"    {stage}: floor {row['floor_ms_per_step']:.2f} ms/step, render {row['render_ms_per_step']:.2f} ms/step, "
            f"ratio {row['ratio']:.2f}x")
        save()

    batched = {r["stage"]: statistics.median(r["render_s"]) for r in result["floor"]}
    for stage in [s for s in args.seq_stages.split(",") if s]:
        lu, ou = [], []
        for i, c in enumerate(range(args.seq_channels)):
            pair = [("lucent", render_channel(lucent, model, stage, c, steps, size)), ("ours", ours(subject, stage, c, steps))]
            for name, fn in (pair if i % 2 == 0 else pair[::-1]):
                (lu if name == "lucent" else ou).append(timed(fn, device))
        scale = n / args.seq_channels
        row = {"stage": stage, "channels_rendered": args.seq_channels, "lucent_s": lu, "ours_s": ou,
               "lucent_total_s": sum(lu) * scale, "ours_sequential_total_s": sum(ou) * scale,
               "batched_s": batched[stage]}
        row["lucent_over_batched"] = row["lucent_total_s"] / row["batched_s"]
        row["ours_sequential_over_batched"] = row["ours_sequential_total_s"] / row["batched_s"]
        result["sequential"].append(row)
        log(f"    {stage}: {n} channels batched {row['batched_s']:.2f} s; Lucent one by one {row['lucent_total_s']:.2f} s "
            f"({row['lucent_over_batched']:.1f}x); ours one by one {row['ours_sequential_total_s']:.2f} s "
            f"({row['ours_sequential_over_batched']:.1f}x)")
        save()

    if args.whole_stage and result["sequential"]:
        last = STAGES[-1]
        units = subject.layer(last).channels
        seconds = timed(ours(subject, last, range(units), steps), device)
        per_channel = [r for r in result["sequential"] if r["stage"] == last]
        lucent_each = statistics.median(per_channel[0]["lucent_s"]) if per_channel else None
        result["whole_stage"] = {"stage": last, "channels": units, "batched_s": seconds,
                                 "lucent_median_s_per_channel": lucent_each,
                                 "lucent_estimated_s": lucent_each * units if lucent_each else None}
        if device.type == "cuda":
            result["whole_stage"]["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        log(f"    {last}: all {units} channels in one run {seconds:.1f} s"
            + (f"; Lucent would take ~{lucent_each * units:.0f} s ({lucent_each * units / seconds:.0f}x)" if lucent_each else ""))

    save()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
