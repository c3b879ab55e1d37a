#!/usr/bin/env python
"""Benchmark: the dataset-examples pass against a plain forward pass, measured in the same run.

The pass under test is ``neuronscope.analyses.examples.examples(subject, data, layers, k=16,
pictures=False, progress=False, batch_size=B)`` over ALL Conv2d/Linear layers of the model. Each
case times reference loops and the pass interleaved (ABBA order across repetitions), reports
medians per image and the ratio of medians:

1. in memory (a labelled ``.npz`` loaded by ``open_data``): a 4-conv CNN at 64x64 and a
   ResNet-18-style net at 128x128. References: ``model(subject.prepare(batch.x))`` over
   ``data.batches(B)`` of the same file (the target's reference), and slicing a preloaded tensor
   (shows what reading the data costs);
2. from an image folder of PNGs (decoding included): a plain ``DataLoader`` (num_workers=0, same
   batch size) + forward over the same folder;
3. peak memory of the pass at two data-set sizes (CNN at 32x32, ``.npy`` memory-mapped so the
   data's pages are file-backed and not in RssAnon), each in a fresh subprocess;
4. where the remaining time goes: wall-time decomposition (forward only, + capture hooks,
   + per-layer reduction, full pass) and a cProfile of one pass.

Usage: ``.venv/bin/python bench/bench_examples.py [--quick] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from neuronscope import Subject  # noqa: E402
from neuronscope.analyses import examples as exmod  # noqa: E402
from neuronscope.analyses.examples import examples  # noqa: E402
from neuronscope.analyses.stream import stream  # noqa: E402
from neuronscope.data import open_data  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")
K = 16
BATCH = 64


# ------------------------------------------------------------------------------------ models
class CNN4(nn.Module):
    """conv 3->32->64->128->128 (3x3, ReLU, 2x2 max-pool each), then a linear classifier."""

    def __init__(self, size: int = 64, n_classes: int = 10, widths=(32, 64, 128, 128)):
        super().__init__()
        layers, c = [], 3
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * (size // 16) ** 2, n_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class ResNet18(nn.Module):
    """ResNet-18 layout (BasicBlock, [2, 2, 2, 2], 64..512 channels), written out here."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], 64
        for i, cout in enumerate((64, 128, 256, 512)):
            stages.append(nn.Sequential(BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, n_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def make_model(name: str, size: int) -> nn.Module:
    torch.manual_seed(0)
    model = CNN4(size) if name == "cnn" else ResNet18()
    if name == "resnet":  # give BatchNorm non-trivial running statistics, as a trained net has
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def weighted_layers(subject: Subject) -> list[str]:
    return [i.name for i in subject.layers
            if isinstance(subject.model.get_submodule(i.module_name), (nn.Conv2d, nn.Linear))]


# ------------------------------------------------------------------------------------ data
def images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(n, 3, size, size) float32 in [0, 1]: smooth random blobs plus pixel noise."""
    low = rng.random((n, 3, 8, 8), dtype=np.float32)
    up = np.repeat(np.repeat(low, size // 8, axis=2), size // 8, axis=3)
    return np.clip(0.8 * up + 0.2 * rng.random((n, 3, size, size), dtype=np.float32), 0, 1)


def write_array(path: Path, n: int, size: int, *, labels: bool, seed: int = 0, chunk: int = 2000) -> Path:
    """.npz with x and y (labels) or a memory-mappable .npy (x only), written in chunks."""
    rng = np.random.default_rng(seed)
    if labels:
        x = np.concatenate([images(rng, min(chunk, n - s), size) for s in range(0, n, chunk)])
        np.savez(path, x=x, y=rng.integers(0, 10, n))
    else:
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, 3, size, size))
        for s in range(0, n, chunk):
            mm[s:s + chunk] = images(rng, min(chunk, n - s), size)
        mm.flush()
        del mm
    return path


def write_pngs(root: Path, n: int, size: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(10):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
    ys = rng.integers(0, 10, n)
    for s in range(0, n, 1000):
        x = images(rng, min(1000, n - s), size)
        for j, a in enumerate((x * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)):
            Image.fromarray(a).save(root / str(ys[s + j]) / f"img{s + j:06d}.png")
    return root


class PngFolder(torch.utils.data.Dataset):
    """The minimal Dataset a user would write: open a PNG with Pillow, RGB, float tensor in [0, 1]."""

    def __init__(self, root: Path):
        self.items = sorted((p, int(p.parent.name)) for p in Path(root).glob("*/*.png"))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, y = self.items[i]
        with Image.open(path) as im:
            a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))), y


# ------------------------------------------------------------------------------------ timing
def _cpu_busy_s() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / HZ  # user nice system irq softirq


def _steal_s() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[7] / HZ if len(v) > 7 else 0.0


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def foreign_load(seconds: float = 1.0) -> float:
    """Cores kept busy by other processes over ``seconds``."""
    b0, o0, t0 = _cpu_busy_s(), _own_cpu_s(), time.perf_counter()
    time.sleep(seconds)
    return max(0.0, (_cpu_busy_s() - b0 - (_own_cpu_s() - o0)) / (time.perf_counter() - t0))


def wait_quiet(limit_s: float, threshold: float = 0.25) -> float:
    """Wait (at most limit_s) until other processes use under ``threshold`` cores; returns the load seen."""
    deadline = time.monotonic() + limit_s
    while True:
        load = foreign_load(0.5)
        if load < threshold or time.monotonic() > deadline:
            return load
        time.sleep(5)


def timed(fn) -> tuple[float, float, float, int]:
    """(wall seconds, cores used by other processes meanwhile, cores stolen by the hypervisor,
    minor page faults of this process)."""
    import resource

    gc.collect()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    b0, o0, s0, t0 = _cpu_busy_s(), _own_cpu_s(), _steal_s(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    return (wall, max(0.0, (_cpu_busy_s() - b0 - (_own_cpu_s() - o0)) / wall), (_steal_s() - s0) / wall, faults)


def interleave(fns: dict, reps: int, quiet_s: float, log, n: int) -> dict[str, list[tuple]]:
    """Run every function ``reps`` times, ABBA order (reversed on odd repetitions)."""
    out = {k: [] for k in fns}
    names = list(fns)
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            wait_quiet(quiet_s)
            wall, foreign, steal, faults = timed(fns[name])
            out[name].append((wall, foreign, steal, faults / n))
            log(f"    rep {r + 1}/{reps} {name:<30} {wall:8.2f} s  (other processes: {foreign:.2f} cores, "
                f"steal {steal:.2f}, {faults / n:.0f} page faults/img)")
    return out


# ------------------------------------------------------------------------------------ loops
def forward_tensor(model, x: torch.Tensor, b: int):
    def run():
        with torch.no_grad():
            for s in range(0, len(x), b):
                model(x[s:s + b])
    return run


def forward_data(model, subject, data, b: int):
    def run():
        with torch.no_grad():
            for batch in data.batches(b):
                model(subject.prepare(batch.x))
    return run


def forward_loader(model, root: Path, b: int):
    def run():
        loader = torch.utils.data.DataLoader(PngFolder(root), batch_size=b, shuffle=False, num_workers=0)
        with torch.no_grad():
            for x, _ in loader:
                model(x)
    return run


def read_loader(root: Path, b: int):
    def run():
        for _ in torch.utils.data.DataLoader(PngFolder(root), batch_size=b, shuffle=False, num_workers=0):
            pass
    return run


def read_data(data, b: int):
    def run():
        for _ in data.batches(b):
            pass
    return run


def the_pass(subject, data, layers, b: int):
    def run():
        return examples(subject, data, layers, k=K, pictures=False, progress=False, batch_size=b)
    return run


def fast_reduce_activation(act: torch.Tensor, budget: int = 1 << 20):
    """What-if (bench only, never installed in the library): ``reduce_activation``'s outputs,
    bit-identical, computed on slices of the batch of about ``budget`` values so temporaries stay
    small, cached and reused (no fresh pages each batch), with the zero count as an int32 sum of
    ``== 0`` instead of ``count_nonzero`` (which builds an int64 copy of the whole feature map)."""
    flat = act.reshape(act.shape[0], act.shape[1] if act.ndim > 1 else 1, -1)
    per = max(1, budget // max(1, flat[0].numel()))
    parts = []
    for c in flat.split(per, 0):
        m, w = c.max(2)
        parts.append((m, w, c.mean(2), c.eq(0).sum(2, dtype=torch.int32)))
    if len(parts) == 1:
        m, w, mu, z = parts[0]
    else:
        m, w, mu, z = (torch.cat(p) for p in zip(*parts))
    return m, w, mu, z.long()


def patched_pass(subject, data, layers, b: int, reduce_fn):
    """The pass with ``reduce_fn`` in place of ``reduce_activation`` for the duration of the call."""
    def run():
        orig = exmod.reduce_activation
        exmod.reduce_activation = reduce_fn
        try:
            return examples(subject, data, layers, k=K, pictures=False, progress=False, batch_size=b)
        finally:
            exmod.reduce_activation = orig
    return run


def stream_reduced(subject, data, layers, b: int):
    """stream() with the pass's hooks (each layer output reduced in its hook), no reducers fed."""
    def run():
        for _ in stream(subject, data, layers, batch_size=b, reduce=exmod.reduce_activation, progress=False):
            pass
    return run


# ------------------------------------------------------------------------------------ cases
def summarize(case: str, n: int, runs: dict, ref: str, pas: str, target: float | None, extra_refs=()) -> list[dict]:
    rows = []
    med = {k: statistics.median(w[0] for w in v) for k, v in runs.items()}
    for r in (ref, *extra_refs):
        rows.append({"case": case, "n": n, "reference": r, "ref_ms": 1e3 * med[r] / n, "pass_ms": 1e3 * med[pas] / n,
                     "ratio": med[pas] / med[r], "target": target if r == ref else None,
                     "runs": {} if rows else {k: [tuple(round(x, 3) for x in w) for w in v] for k, v in runs.items()}})
    return rows


def case_in_memory(model_name: str, size: int, n: int, reps: int, tmp: Path, quiet_s: float, log) -> tuple[list, dict]:
    log(f"== in memory: {model_name} {size}x{size}, N={n}, B={BATCH}")
    path = write_array(tmp / f"{model_name}_{n}.npz", n, size, labels=True)
    model = make_model(model_name, size)
    subject = Subject(model, (3, size, size), classes=[str(i) for i in range(10)])
    data = open_data(path, input_shape=subject.input_shape)
    layers = weighted_layers(subject)
    units = sum(subject.layer(l).output_shape[0] for l in layers)
    x = torch.from_numpy(np.load(path)["x"])  # the preloaded-tensor reference
    # warm-up: oneDNN primitives, allocator, the Subject's probe
    warm = open_data(write_array(tmp / f"warm_{model_name}.npz", 4 * BATCH, size, labels=True), input_shape=subject.input_shape)
    examples(subject, warm, layers, k=K, pictures=False, progress=False, batch_size=BATCH)
    forward_tensor(model, x[:4 * BATCH], BATCH)()
    runs = interleave({"forward, preloaded tensor": forward_tensor(model, x, BATCH),
                       "forward, same data.batches": forward_data(model, subject, data, BATCH),
                       "examples pass": the_pass(subject, data, layers, BATCH)}, reps, quiet_s, log, n)
    info = {"layers": len(layers), "units": units, "params": sum(p.numel() for p in model.parameters())}
    rows = summarize(f"in memory: {model_name} {size}x{size}", n, runs, "forward, same data.batches", "examples pass",
                     1.1, extra_refs=("forward, preloaded tensor",))
    for r in rows:
        r.update(info)
    del x
    return rows, info


def case_folder(n: int, reps: int, tmp: Path, quiet_s: float, log) -> list:
    size = 64
    log(f"== image folder: cnn {size}x{size}, N={n} PNGs, B={BATCH}, DataLoader num_workers=0")
    root = write_pngs(tmp / "pngs", n, size)
    model = make_model("cnn", size)
    subject = Subject(model, (3, size, size), classes=[str(i) for i in range(10)])
    data = open_data(root, input_shape=subject.input_shape)
    assert len(data) == n and len(PngFolder(root)) == n
    layers = weighted_layers(subject)
    examples(subject, open_data(root / "0", input_shape=subject.input_shape), layers, k=K, pictures=False,
             progress=False, batch_size=BATCH)  # warm-up; the PNGs were just written: all in the page cache
    runs = interleave({"DataLoader + forward": forward_loader(model, root, BATCH),
                       "examples pass (folder)": the_pass(subject, data, layers, BATCH),
                       "read only: DataLoader": read_loader(root, BATCH),
                       "read only: data.batches": read_data(data, BATCH)}, reps, quiet_s, log, n)
    rows = summarize(f"image folder: cnn {size}x{size}", n, runs, "DataLoader + forward", "examples pass (folder)", 1.1)
    for r in rows:
        r.update(layers=len(layers), units=sum(subject.layer(l).output_shape[0] for l in layers))
    decode = summarize("image folder: reading + decoding only", n, runs, "read only: DataLoader", "read only: data.batches", None)
    decode[0]["runs"] = {}
    return rows + decode


def reduce_micro(subject, data, layers, reps: int = 7) -> dict:
    """Per-batch cost of the capture copy and of each reduce_activation variant on one real batch
    of activations (every layer; best of ``reps`` after a warm-up): far less noisy than whole passes."""
    import resource

    batch = next(iter(data.batches(BATCH)))
    with torch.no_grad():
        acts = subject.activations(batch.x, layers)
    b = len(batch.ids)
    for a in acts.values():
        ref, alt = exmod.reduce_activation(a), fast_reduce_activation(a)
        assert all(torch.equal(x, y) for x, y in zip(ref, alt)), "what-if reduction differs from the library's"
    out = {"activation MiB per batch": sum(a.numel() * a.element_size() for a in acts.values()) / 2**20}
    variants = {"reduce_activation (library), all layers": exmod.reduce_activation,
                "  of which max + argmax (flat.max(2))": lambda a: a.reshape(a.shape[0], a.shape[1], -1).max(2),
                "  of which mean": lambda a: a.reshape(a.shape[0], a.shape[1], -1).mean(2),
                "  of which zero count (count_nonzero)": lambda a: torch.count_nonzero(a.reshape(a.shape[0], a.shape[1], -1), dim=2),
                "what-if: chunked, int32 zero count (identical output)": fast_reduce_activation,
                "(old, before f4fcf8a: copy of the map in the hook, tensor.clone)": lambda a: a.clone()}
    for name, fn in variants.items():
        for a in acts.values():
            fn(a)
        best, faults = float("inf"), 0
        for _ in range(reps):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            for a in acts.values():
                fn(a)
            dt = time.perf_counter() - t0
            if dt < best:
                best, faults = dt, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        out[name] = {"ms_per_image": 1e3 * best / b, "faults_per_image": faults / b}
    return out


def decomposition(model_name: str, size: int, n: int, reps: int, tmp: Path, quiet_s: float, log) -> dict:
    """Wall time of the pass built up step by step, and a cProfile of one full pass."""
    log(f"== decomposition + profile: {model_name} {size}x{size}, N={n}")
    path = write_array(tmp / f"prof_{model_name}_{n}.npz", n, size, labels=True, seed=1)
    model = make_model(model_name, size)
    subject = Subject(model, (3, size, size), classes=[str(i) for i in range(10)])
    data = open_data(path, input_shape=subject.input_shape)
    layers = weighted_layers(subject)
    examples(subject, data, layers, k=K, pictures=False, progress=False, batch_size=BATCH, limit=2 * BATCH)
    runs = interleave({"forward (data.batches)": forward_data(model, subject, data, BATCH),
                       "+ hooks reducing each feature map (stream)": stream_reduced(subject, data, layers, BATCH),
                       "+ reducers = full examples pass": the_pass(subject, data, layers, BATCH),
                       "what-if: full pass, chunked reduce_activation":
                           patched_pass(subject, data, layers, BATCH, fast_reduce_activation)},
                      reps, quiet_s, log, n)
    micro = reduce_micro(subject, data, layers)
    steps = {k: 1e3 * statistics.median(w[0] for w in v) / n for k, v in runs.items()}
    faults = {k: statistics.median(w[3] for w in v) for k, v in runs.items()}
    wait_quiet(quiet_s)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.runcall(the_pass(subject, data, layers, BATCH))
    wall = time.perf_counter() - t0
    return {"model": model_name, "size": size, "n": n, "steps_ms_per_image": steps, "faults_per_image": faults, "micro": micro,
            "profile": profile_table(prof, wall, n), "profile_wall_s": wall}


def _profile_rows():
    """(label, function or functions): cumulative time under cProfile, matched by code object.
    Functions the library does not have (an older or newer version) are left out."""
    from neuronscope import data as datamod
    from neuronscope import subject as submod
    from neuronscope.analyses import activations, reducers, sketch

    def get(obj, *path):
        for p in path:
            obj = getattr(obj, p, None)
        return obj

    rows = [
        ("whole pass: examples()", exmod.examples),
        ("data reading: ArrayData._load / ImageFolder._load", (datamod.ArrayData._load, datamod.ImageFolder._load)),
        ("forward incl. hooks: Subject._forward_normalized", submod.Subject._forward_normalized),
        ("  hooks: Capture._record", submod.Capture._record),
        ("    reduce_activation (max+argmax, mean, count_nonzero), in the hooks", exmod.reduce_activation),
        ("reducers: ExamplesReducer.add_batch", exmod.ExamplesReducer.add_batch),
        ("  _to_numpy (reduced tensors to float64 numpy)", get(exmod, "_to_numpy")),
        ("  id_keys (blake2b per id)", reducers.id_keys),
        ("  _calibrate (once: edges from the first 256, replays them)", exmod.ExamplesReducer._calibrate),
        ("  LayerExamples.add (all numpy reducers)", exmod.LayerExamples.add),
        ("    KeepBest.update_dense (top, bottom)", get(reducers, "KeepBest", "update_dense")),
        ("    KeepBest.update (range samples)", reducers.KeepBest.update),
        ("      KeepBest._merge_in (sorting entrants in; top, bottom, range)", get(reducers, "KeepBest", "_merge_in")),
        ("    Histogram.bin_of + Histogram.add", (reducers.Histogram.bin_of, reducers.Histogram.add)),
        ("    QuantileSketch.add (incl. _compact)", sketch.QuantileSketch.add),
        ("    UnitStats.add_reduced", activations.UnitStats.add_reduced),
        ("  _prune (every 64 batches)", exmod.ExamplesReducer._prune),
        ("_pass_key (hash of weights and ids)", exmod._pass_key),
        ("layer_specs", exmod.layer_specs),
        ("finish_examples (result tables)", exmod.finish_examples),
    ]
    return [(label, f) for label, f in rows if f is not None]


def profile_table(prof: cProfile.Profile, wall: float, n: int) -> list[dict]:
    st = pstats.Stats(prof).stats
    index = {}
    for (f, line, fn), v in st.items():
        index[(os.path.realpath(f), line, fn)] = v
    out = []
    for label, funcs in _profile_rows():
        funcs = funcs if isinstance(funcs, tuple) else (funcs,)
        hits = []
        for fn in funcs:
            c = fn.__code__
            v = index.get((os.path.realpath(c.co_filename), c.co_firstlineno, c.co_name))
            if v is not None:
                hits.append(v)
        if not hits:
            continue
        cum = sum(v[3] for v in hits)
        out.append({"what": label, "cum_s": cum, "ms_per_image": 1e3 * cum / n, "share": cum / wall,
                    "calls": sum(v[1] for v in hits)})
    return out


# ------------------------------------------------------------------------------------ memory
def memory_child(path: str, size: int) -> None:
    """Runs in a fresh process: RssAnon / tracemalloc peaks of a plain forward, then of the pass."""
    import tracemalloc

    from procmem import status  # bench/ is on sys.path: this child runs the script itself

    model = make_model("cnn", size)
    subject = Subject(model, (3, size, size), classes=[str(i) for i in range(10)])
    data = open_data(path, input_shape=subject.input_shape)
    layers = weighted_layers(subject)
    n = len(data)
    holder = {}
    orig = exmod.ExamplesReducer.result

    def result(self):
        holder["r"] = self
        return orig(self)

    exmod.ExamplesReducer.result = result
    peak = {"v": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak["v"] = max(peak["v"], status("RssAnon"))
            time.sleep(0.005)

    def measure(fn):
        gc.collect()
        before = status("RssAnon")
        peak["v"] = before
        stop.clear()
        th = threading.Thread(target=sample, daemon=True)
        th.start()
        tracemalloc.start()
        tracemalloc.reset_peak()
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
        _, tm_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        stop.set()
        th.join()
        return {"rss_anon_before": before, "rss_anon_peak": peak["v"], "tracemalloc_peak": tm_peak, "wall_s": wall}

    fwd = measure(forward_data(model, subject, data, BATCH))
    res = measure(the_pass(subject, data, layers, BATCH))
    r = holder["r"]
    state = r.state_dict()
    state_bytes = int(sum(np.asarray(v).nbytes for v in state.values()))
    print(json.dumps({"n": n, "forward": fwd, "pass": res, "reducer_state_bytes": state_bytes,
                      "ids_held": len(r.ids), "vm_hwm": status("VmHWM"), "rss_file_end": status("RssFile")}))


def case_memory(sizes: list[int], tmp: Path, quiet_s: float, log) -> list[dict]:
    size = 32
    out = []
    for n in sizes:
        log(f"== memory: cnn {size}x{size}, N={n} (.npy, memory-mapped), fresh subprocess")
        path = write_array(tmp / f"mem_{n}.npy", n, size, labels=False)
        wait_quiet(quiet_s)
        proc = subprocess.run([sys.executable, __file__, "--_memory-child", str(path), str(size)],
                              capture_output=True, text=True, check=True)
        rec = json.loads(proc.stdout.strip().splitlines()[-1])
        log(f"    pass peak RssAnon {rec['pass']['rss_anon_peak'] / 2**20:.1f} MiB, tracemalloc peak "
            f"{rec['pass']['tracemalloc_peak'] / 2**20:.1f} MiB, {rec['pass']['wall_s']:.1f} s")
        out.append(rec)
        path.unlink()
    return out


# ------------------------------------------------------------------------------------ report
def machine() -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "neuronscope"], cwd=REPO, capture_output=True,
                               text=True).stdout.strip()
        commit += " (neuronscope/ modified)" if dirty else ""
    except OSError:
        commit = "unknown"
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "numpy": np.__version__, "commit": commit,
            "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "python": platform.python_version(), "mkldnn": torch.backends.mkldnn.is_available()}


def mib(b: float) -> str:
    return f"{b / 2**20:.1f}"


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} (threads {m['threads']}), numpy {m['numpy']}, "
             f"python {m['python']}; neuronscope at {m.get('commit', '?')}. Mode: {res['mode']}; batch size {BATCH}; k={K}; layers: every Conv2d/Linear; "
             f"total wall time {res['wall_s'] / 60:.1f} min.", ""]
    if res["speed"]:
        lines += ["| case | N | layers / units | reference | ref ms/img (img/s) | pass ms/img (img/s) | ratio | target | met |",
                  "|---|---|---|---|---|---|---|---|---|"]
    for r in res["speed"]:
        lu = f"{r['layers']} / {r['units']}" if "layers" in r else "-"
        tgt = f"<= {r['target']}x" if r["target"] else "(info)"
        met = ("yes" if r["ratio"] <= r["target"] else f"no (+{100 * (r['ratio'] / r['target'] - 1):.0f}% over)") if r["target"] else ""
        lines.append(f"| {r['case']} | {r['n']} | {lu} | {r['reference']} | {r['ref_ms']:.3f} ({1e3 / r['ref_ms']:.0f}) | "
                     f"{r['pass_ms']:.3f} ({1e3 / r['pass_ms']:.0f}) | {r['ratio']:.2f}x | {tgt} | {met} |")
    if res["speed"]:
        lines += ["", "Runs in order of repetition (wall s; cores used by other processes / stolen by the hypervisor "
                      "during the run; minor page faults per image):", ""]
    for r in res["speed"]:
        for k, v in r["runs"].items():
            lines.append(f"- {r['case']} / {k}: " + ", ".join(f"{w:.2f} s ({f:.2f}/{st:.2f}, {pf:.0f})" for w, f, st, pf in v))
    if res.get("memory"):
        lines += ["", "| cnn 32x32, .npy memmap | N | pass: peak RssAnon MiB | pass: growth over its start MiB | "
                      "pass: tracemalloc peak MiB | plain forward: peak RssAnon MiB | plain forward: growth MiB | "
                      "reducer state MiB | ids held |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in res["memory"]:
            p, f = r["pass"], r["forward"]
            lines.append(f"| examples pass | {r['n']} | {mib(p['rss_anon_peak'])} | {mib(p['rss_anon_peak'] - p['rss_anon_before'])} | "
                         f"{mib(p['tracemalloc_peak'])} | {mib(f['rss_anon_peak'])} | {mib(f['rss_anon_peak'] - f['rss_anon_before'])} | "
                         f"{mib(r['reducer_state_bytes'])} | {r['ids_held']} |")
        if len(res["memory"]) >= 2:
            a, b = res["memory"][0], res["memory"][-1]
            d = b["pass"]["rss_anon_peak"] - a["pass"]["rss_anon_peak"]
            lines += ["", f"Peak RssAnon difference {b['n']} vs {a['n']} inputs: {mib(d)} MiB "
                          f"(tracemalloc peak: {mib(b['pass']['tracemalloc_peak'] - a['pass']['tracemalloc_peak'])} MiB)."]
    for d in res.get("decomposition", []):
        lines += ["", f"Decomposition, {d['model']} {d['size']}x{d['size']}, N={d['n']} (median ms per image):", "",
                  "| step | ms/img | added | page faults/img |", "|---|---|---|---|"]
        prev = None
        for k, v in d["steps_ms_per_image"].items():
            pf = d["faults_per_image"][k]
            if k.startswith("what-if"):
                base = d["steps_ms_per_image"]["forward (data.batches)"]
                lines.append(f"| {k} (bench-only patch) | {v:.3f} | ratio to forward {v / base:.2f}x | {pf:.0f} |")
                continue
            lines.append(f"| {k} | {v:.3f} | {'' if prev is None else f'{v - prev:+.3f}'} | {pf:.0f} |")
            prev = v
        base = d["steps_ms_per_image"]["forward (data.batches)"]
        lines.append(f"| full pass / forward | {d['steps_ms_per_image']['+ reducers = full examples pass'] / base:.2f}x | | |")
        mi = d["micro"]
        lines += ["", f"One real batch of {BATCH} ({mi['activation MiB per batch']:.0f} MiB of activations over all "
                      f"captured layers), best of 7, ms per image:", "",
                  "| per-batch work on the captured activations | ms/img | page faults/img |", "|---|---|---|"]
        for k, v in mi.items():
            if isinstance(v, dict):
                lines.append(f"| {k} | {v['ms_per_image']:.3f} | {v['faults_per_image']:.0f} |")
        lines += ["", f"cProfile of one full pass ({d['profile_wall_s']:.1f} s under the profiler):", "",
                  "| function (cumulative) | s | ms/img | share of pass | calls |", "|---|---|---|---|---|"]
        for p in d["profile"]:
            lines.append(f"| {p['what']} | {p['cum_s']:.2f} | {p['ms_per_image']:.3f} | {100 * p['share']:.1f}% | {p['calls']} |")
    return "\n".join(lines)


# glibc malloc settings for the control run: big buffers stay in the heap and are reused (like
# jemalloc/tcmalloc would), so no loop pays for fresh pages; see BENCHMARKS.md.
PINNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736",
                 "MALLOC_TOP_PAD_": "536870912"}


def pinned_control(q: bool, reps: int, quiet_s: float, log) -> dict:
    """Re-run the in-memory cases (smaller N) and the CNN decomposition in a subprocess with glibc's
    malloc told to keep and reuse big buffers: the compute-only ratio, free of page-fault noise."""
    out = Path(tempfile.mkdtemp(prefix="nsbench-pinned-")) / "pinned.json"
    log("== control: glibc malloc pinned (" + " ".join(f"{k}={v}" for k, v in PINNED_MALLOC.items()) + "), subprocess")
    cmd = [sys.executable, __file__, "--only", "cnn,resnet,profile", "--profile-models", "cnn", "--reps", str(reps),
           "--quiet-wait", str(quiet_s), "--json", str(out), "--tag", "malloc pinned"]
    cmd += ["--quick"] if q else ["--n-cnn", "5000", "--n-resnet", "1000"]
    subprocess.run(cmd, env={**os.environ, **PINNED_MALLOC}, check=True, stdout=subprocess.DEVNULL)
    res = json.loads(out.read_text())
    shutil.rmtree(out.parent, ignore_errors=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="~1-minute smoke version (small N, one repetition)")
    ap.add_argument("--only", default="cnn,resnet,folder,memory,profile,pinned",
                    help="comma-separated subset of cnn,resnet,folder,memory,profile,pinned "
                         "(pinned: the in-memory cases again with glibc malloc pinned; not in --quick by default)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per loop (default 3; --quick 1)")
    ap.add_argument("--quiet-wait", type=float, default=None,
                    help="seconds to wait, before each timed run, for other processes to go idle (default 60; --quick 0)")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--n-cnn", type=int, help="N for the in-memory CNN case (default 10000; --quick 512)")
    ap.add_argument("--n-resnet", type=int, help="N for the in-memory ResNet case (default 2000; --quick 128)")
    ap.add_argument("--profile-models", default="cnn,resnet", help="models for the decomposition/profile section")
    ap.add_argument("--tag", default="", help="label appended to every case name")
    ap.add_argument("--_memory-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._memory_child:
        memory_child(args._memory_child[0], int(args._memory_child[1]))
        return
    only = set(args.only.split(","))
    q = args.quick
    if q and args.only == ap.get_default("only"):
        only.discard("pinned")  # keep the smoke run near a minute; ask for it with --only
    reps = args.reps or (1 if q else 3)
    quiet_s = args.quiet_wait if args.quiet_wait is not None else (0 if q else 60)
    sizes = dict(cnn=args.n_cnn or (512 if q else 10000), resnet=args.n_resnet or (128 if q else 2000),
                 folder=256 if q else 5000, memory=[1000, 4000] if q else [10000, 20000, 40000],
                 prof_cnn=512 if q else 2000, prof_resnet=128 if q else 640)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    res = {"mode": "quick" if q else "full", "machine": machine(), "speed": [], "decomposition": [],
           "malloc": {k: os.environ[k] for k in PINNED_MALLOC if k in os.environ}}
    tmp = Path(tempfile.mkdtemp(prefix="nsbench-"))
    try:
        if "cnn" in only:
            rows, _ = case_in_memory("cnn", 64, sizes["cnn"], reps, tmp, quiet_s, log)
            res["speed"] += rows
        if "resnet" in only:
            rows, _ = case_in_memory("resnet", 128, sizes["resnet"], reps, tmp, quiet_s, log)
            res["speed"] += rows
        if "folder" in only:
            res["speed"] += case_folder(sizes["folder"], reps, tmp, quiet_s, log)
        if "memory" in only:
            res["memory"] = case_memory(sizes["memory"], tmp, quiet_s, log)
        if "profile" in only:
            models = args.profile_models.split(",")
            if "cnn" in models:
                res["decomposition"].append(decomposition("cnn", 64, sizes["prof_cnn"], 1 if q else 3, tmp, quiet_s, log))
            if "resnet" in models:
                res["decomposition"].append(decomposition("resnet", 128, sizes["prof_resnet"], 1 if q else 2, tmp, quiet_s, log))
        for r in res["speed"]:
            r["case"] += f" [{args.tag}]" if args.tag else ""
        for d in res["decomposition"]:
            d["model"] += f" [{args.tag}]" if args.tag else ""
        if "pinned" in only:
            ctl = pinned_control(q, reps, quiet_s, log)
            res["speed"] += ctl["speed"]
            res["decomposition"] += ctl["decomposition"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["wall_s"] = time.perf_counter() - t0
    print(markdown(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
