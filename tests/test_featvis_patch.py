"""Class patches (featvis.patch): the window content a class wants, grown inside the data's own
window space, recovers a planted pattern, and a model that does not read the window gets none."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from neuronscope import Subject
from neuronscope.analyses.featvis.patch import class_patch
from neuronscope.errors import OptionError

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE, WIN = 16, (10, 10, 15, 15)
CHECKER = (np.indices((5, 5)).sum(0) % 2).astype(np.float32)


class Checker(nn.Module):
    """Class 'tagged' when the grey window at rows/columns 10-14 matches a checkerboard (signed)."""

    def forward(self, x):
        w = x[:, :, 10:15, 10:15].mean(1)
        score = ((w - w.mean((1, 2), keepdim=True)) * torch.as_tensor(CHECKER * 2 - 1)).sum((1, 2))
        return torch.stack([torch.zeros_like(score), score - 6.0], 1)  # the full checker scores 12.5


class Blind(nn.Module):
    """Class 'tagged' when the left half is bright: never reads the window (columns 10-14)."""

    def forward(self, x):
        d = x[..., : SIZE // 2].mean((1, 2, 3)) - 0.5
        return torch.stack([torch.zeros_like(d), 40 * d], 1)


def sample(n=256, seed=0):
    """Random images; a quarter carry the checker in the window (as a marker would)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 3, SIZE, SIZE)).astype(np.float32)
    x[: n // 4, :, 10:15, 10:15] = CHECKER
    return x


def pearson(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def test_the_patch_a_class_wants_is_the_planted_pattern_and_flips_held_out_images():
    subject = Subject(Checker(), (3, SIZE, SIZE), classes=["plain", "tagged"])
    x = sample()
    pred = subject.predict(torch.as_tensor(x)).numpy()
    cp = class_patch(subject, 1, WIN, x, pred, steps=64, seeds=3, grow_on=32, seed=0)
    grey = cp.patches.mean(1)  # (seeds, 5, 5)
    print("r per start", [round(pearson(g, CHECKER), 3) for g in grey], "flip", cp.flip, "control", cp.control)
    # Chance: a window of uniform noise correlates with the checker at r ~ 0 +- 0.2 (25 pixels).
    # Every start must be far beyond that; a start can stop short of r = 1 once the class's
    # log-probability saturates (the objective no longer asks for more), hence 0.8 each, 0.9 on average.
    rs = [pearson(g, CHECKER) for g in grey]
    assert min(rs) > 0.8 and np.mean(rs) > 0.9, rs
    assert cp.flip >= 0.9 and cp.control <= 0.1, (cp.flip, cp.control)
    assert cp.agreement > 0.7 and cp.held_out >= 32  # over colour too, which the grey detector leaves free
    assert cp.nearest < len(x) // 4 and cp.nearest_correlation > 0.9  # the closest real window carries it
    assert (cp.patch >= 0).all() and (cp.patch <= 1).all()  # in the model's value range
    # the log-probability rose from where the starts began
    assert (cp.values > np.log(0.5)).all()


def test_a_model_that_never_reads_the_window_gets_a_patch_that_flips_nothing():
    subject = Subject(Blind(), (3, SIZE, SIZE), classes=["plain", "tagged"])
    x = sample()
    pred = subject.predict(torch.as_tensor(x)).numpy()
    cp = class_patch(subject, 1, WIN, x, pred, steps=32, seeds=2, grow_on=32)
    assert abs(cp.flip - cp.control) <= 0.05, (cp.flip, cp.control)


def test_a_window_outside_the_image_is_refused():
    subject = Subject(Blind(), (3, SIZE, SIZE), classes=["plain", "tagged"])
    x = sample(32)
    with pytest.raises(OptionError, match="does not fit"):
        class_patch(subject, 1, (10, 10, 20, 20), x, np.zeros(32, int), steps=2)


CHECKER_PY = '''
import numpy as np
import torch
from torch import nn

CHECKER = (np.indices((5, 5)).sum(0) % 2).astype(np.float32)


class Checker(nn.Module):
    def forward(self, x):
        w = x[:, :, 10:15, 10:15].mean(1)
        score = ((w - w.mean((1, 2), keepdim=True)) * torch.as_tensor(CHECKER * 2 - 1)).sum((1, 2))
        return torch.stack([torch.zeros_like(score), score - 6.0], 1)


def factory():
    return Checker()
'''


def test_cli_draws_what_a_class_wants_in_a_window(tmp_path, capsys):
    from neuronscope.cli import main

    (tmp_path / "net.py").write_text(CHECKER_PY)
    x = sample()
    np.savez(tmp_path / "d.npz", x=x, y=(np.arange(len(x)) < len(x) // 4).astype(np.int64))
    model = [f"{tmp_path}/net.py:factory", "--input-shape", f"3,{SIZE},{SIZE}", "--classes", "plain,tagged"]
    out = tmp_path / "win"
    assert main(["-q", "visualize", *model, "class:tagged", "--window", "10,10,15,15", "--data", str(tmp_path / "d.npz"),
                 "--steps", "64", "--seeds", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tagged" in text and (out / "tagged-window.png").exists()
    patch = np.load(out / "tagged-window.npy")
    assert patch.shape == (3, 5, 5) and pearson(patch.mean(0), CHECKER) > 0.8
    assert main(["-q", "visualize", *model, "class:tagged", "--window", "10,10,15", "--data", str(tmp_path / "d.npz"),
                 "--out", str(out)]) == 2
    assert "four whole numbers" in capsys.readouterr().err
    assert main(["-q", "visualize", *model, "class:tagged", "--window", "10,10,15,15", "--out", str(out)]) == 2
    assert "needs --data" in capsys.readouterr().err
