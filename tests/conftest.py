"""Fixtures shared by several test files."""

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module on one torch thread: on tiny models a second OpenMP thread only adds barrier
    waits, which get slow on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def demo_built(tmp_path_factory) -> tuple[Path, dict]:
    """The demo's data sets and trained models (seed 0), built once for the session."""
    from neuronscope.demo.build import build_demo

    root = tmp_path_factory.mktemp("demo") / "demo-data"  # where `neuronscope demo --out DIR` builds
    return root, build_demo(root, progress=False, seed=0)


@pytest.fixture(scope="session")
def demo_report(demo_built) -> Path:
    """The demo's report folder (index.html linking every model), written once for the session."""
    from neuronscope.cli import main

    out = demo_built[0].parent
    assert main(["-q", "demo", "--out", str(out)]) == 0
    return out


WIDE_UNITS = 600


@pytest.fixture(scope="session")
def wide_report(tmp_path_factory) -> Path:
    """A report on a model with a 600-unit layer (three layer pages): how the site scales."""
    import numpy as np
    from PIL import Image
    from torch import nn

    from neuronscope import Subject
    from neuronscope.data import open_data
    from neuronscope.pipeline import ReportOptions, report

    root = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(0)
    for c in ("dark", "light"):
        (root / "imgs" / c).mkdir(parents=True)
        for i in range(8):
            arr = np.clip((60 if c == "dark" else 190) + rng.normal(0, 40, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / "imgs" / c / f"{i}.png")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, WIDE_UNITS, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(WIDE_UNITS, 2))
    s = Subject(model, (3, 12, 12), classes=["dark", "light"], name="wide")
    report(s, open_data(root / "imgs", input_shape=(3, 12, 12)), root / "report",
           ReportOptions(progress=False, layers=["1"], featvis_units=0, attribution_inputs=0, directions=False,
                         shortcuts=False))
    return root / "report"
