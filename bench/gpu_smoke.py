"""A whole report on an accelerator (every section), to check that nothing assumes the CPU.

Usage: ``python bench/gpu_smoke.py OUT [--device cuda]``. A small seeded CNN on 512 random
32x32 images of 4 classes whose class is a planted colour, then ``report`` with the model on the
device. Prints each section's state and seconds from the manifest, and whether the user's model
(left on the CPU) is untouched.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import neuronscope as ns  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("out", type=Path)
ap.add_argument("--device", default="cuda")
args = ap.parse_args()
rng = np.random.default_rng(0)
y = rng.integers(0, 4, 512)
x = rng.uniform(0, 1, (512, 3, 32, 32)).astype(np.float32) * 0.5
for c in range(3):
    x[y == c, c] += 0.5
np.savez(args.out.with_suffix(".npz"), x=x, y=y)
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                      nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 64, 4)).eval()
before = {k: v.clone() for k, v in model.state_dict().items()}
s = ns.Subject(model, (3, 32, 32), classes=["red", "green", "blue", "grey"], device=args.device)
data = ns.open_data(args.out.with_suffix(".npz"), input_shape=(3, 32, 32))
t0 = time.perf_counter()
index = ns.report(s, data, args.out, ns.ReportOptions(featvis_steps=64, featvis_units=4, attribution_inputs=4,
                                                     dictionary_steps=100, progress=False))
print("report", index, f"{time.perf_counter() - t0:.1f} s")
store = ns.Store(args.out)
for name, sec in store.sections().items():
    print(f"  {name:<14} {sec.get('seconds', 0):6.1f} s  {len(sec['tables'])} tables, {len(sec['images'])} images")
print("manifest keys:", sorted(store.manifest), {k: v for k, v in store.manifest.items() if k in ("problems", "notes", "errors")})
same = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
print("user's model untouched:", same, "on", next(model.parameters()).device)
