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
