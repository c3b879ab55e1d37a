"""Shortcut checks: a planted patch, a moving patch and a colour cast are found and confirmed by
pasting; a model that reads the whole image gets no finding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import neuronscope as ns
from neuronscope import Subject
from neuronscope.analyses.shortcuts import find_shortcuts

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 16


class Corner(nn.Module):
    """Class 'tagged' when the top-left 3x3 of the red channel is bright: a fixed-place shortcut."""

    def forward(self, x):
        tag = x[:, 0, :3, :3].mean((1, 2))
        return torch.stack([torch.zeros_like(tag), 20 * (tag - 0.8)], 1)


class Anywhere(nn.Module):
    """Class 'tagged' when a bright red 3x3 square is anywhere: a moving shortcut."""

    def forward(self, x):
        red = nn.functional.avg_pool2d(x[:, :1], 3, stride=1)
        tag = red.flatten(1).amax(1)
        return torch.stack([torch.zeros_like(tag), 20 * (tag - 0.8)], 1)


class Cast(nn.Module):
    """Class 'tagged' when the image is redder than green overall: a colour cast."""

    def forward(self, x):
        d = x[:, 0].mean((1, 2)) - x[:, 1].mean((1, 2))
        return torch.stack([torch.zeros_like(d), 40 * (d - 0.1)], 1)


class LeftRight(nn.Module):
    """Class 'tagged' when the left half is brighter than the right: spread over the image."""

    def forward(self, x):
        d = x[..., : SIZE // 2].mean((1, 2, 3)) - x[..., SIZE // 2:].mean((1, 2, 3))
        return torch.stack([torch.zeros_like(d), 40 * d], 1)


def data_for(tmp_path, kind: str, n=160, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.6, (n, 3, SIZE, SIZE)).astype(np.float32)
    y = (np.arange(n) % 2).astype(np.int64)
    for i in np.flatnonzero(y == 1):
        if kind == "corner":
            x[i, 0, :3, :3] = 1.0
        elif kind == "anywhere":
            r, c = rng.integers(0, SIZE - 3, 2)
            x[i, 0, r:r + 3, c:c + 3] = 1.0
        elif kind == "cast":
            x[i, 0] = np.clip(x[i, 0] + 0.3, 0, 1)
        elif kind == "leftright":
            x[i, :, :, : SIZE // 2] = np.clip(x[i, :, :, : SIZE // 2] + 0.2, 0, 1)
    np.savez(tmp_path / f"{kind}.npz", x=x, y=y)
    return ns.open_data(tmp_path / f"{kind}.npz")


def check(tmp_path, model, kind):
    subject = Subject(model, (3, SIZE, SIZE), classes=["plain", "tagged"])
    report = find_shortcuts(subject, data_for(tmp_path, kind), per_class=24, recipients=64, n_steps=8)
    return report, report.classes[1]


def test_a_fixed_patch_is_found_where_it_is_and_confirmed_by_pasting(tmp_path):
    report, c = check(tmp_path, Corner(), "corner")
    assert c.verdict == "fixed patch"
    y0, x0, y1, x1 = c.region
    assert y0 == 0 and x0 == 0 and y1 <= 4 and x1 <= 4, c.region
    assert c.share > 0.5 and c.consistency > 0.8
    assert c.tests["paste"]["rate"] > 0.9 and c.tests["paste"]["control"] < 0.05
    assert c.tests["remove"]["rate"] > 0.9
    f = report.findings()
    assert len(f) == 1 and f[0]["kind"] == "shortcut" and f[0]["region"] == list(c.region)
    assert "'tagged'" in f[0]["text"] and report.summary()["found"] == ["tagged"]
    assert "shortcuts/1" in report.images()
    # drawn: the window content the class wants, grown from the data's windows, is the bright red
    # corner, and it flips held-out images where the data's mean window does not
    d = c.tests["drawn"]
    assert d["rate"] > 0.9 and d["control"] < 0.05, d
    assert "held-out images" in f[0]["text"] and "shortcuts/1-drawn" in report.images()
    assert report.images()["shortcuts/1-drawn"].ndim == 3


def test_a_moving_patch_is_found_by_pasting_each_images_own_window(tmp_path):
    _, c = check(tmp_path, Anywhere(), "anywhere")
    assert c.verdict == "moving patch", c.row()
    assert c.tests["moving"]["rate"] > 0.5 and c.per_image_share >= 2 * c.share


def test_a_colour_cast_is_found_by_shifting_colours(tmp_path):
    _, c = check(tmp_path, Cast(), "cast")
    assert c.verdict == "colour cast", c.row()
    assert c.tests["colour"]["rate"] > 0.5 and c.tests["colour"]["control"] < 0.2


def test_a_model_that_reads_the_whole_image_gets_no_finding(tmp_path):
    report, c = check(tmp_path, LeftRight(), "leftright")
    assert c.verdict is None, c.row()
    assert report.findings() == [] and "No shortcut found" in report.summary()["finding"]


def test_results_render_in_a_notebook_with_user_strings_escaped(tmp_path):
    subject = Subject(Corner(), (3, SIZE, SIZE), classes=["plain", "<b>tagged</b>"])
    report = find_shortcuts(subject, data_for(tmp_path, "corner"), per_class=16, recipients=32, n_steps=4)
    html = report._repr_html_()
    assert "relies on a shortcut" in html and "data:image/png;base64," in html
    assert "<b>tagged</b>" not in html and "&lt;b&gt;tagged&lt;/b&gt;" in html
    assert "<table>" in html and "paste_flip" in html
