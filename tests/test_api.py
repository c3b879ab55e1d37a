"""The public API as the README shows it, end to end, in one process (as in a notebook)."""

import numpy as np
import torch
from PIL import Image
from torch import nn

import neuronscope as ns


def test_readme_walkthrough(tmp_path):
    rng = np.random.default_rng(0)
    names = ["bird", "plane"]
    for c in names:
        (tmp_path / "images" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "images" / c / f"{i}.png")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 5), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    subject = ns.Subject(model, input_shape=(3, 32, 32), mean=0.5, std=0.5, classes=names)
    data = ns.open_data(tmp_path / "images", input_shape=subject.input_shape, classes=names)

    assert [l.name for l in subject.layers][:2] == ["0", "1"]
    assert str(subject.resolve("3:7@2,2")) == "3:7@2,2"
    f = ns.filters(subject)
    assert f.kind == "conv-rgb" and f._repr_png_()[:4] == b"\x89PNG"
    maps = ns.activation_maps(subject, data.get(["bird/0.png"]).x[0], example_id="bird/0.png")
    assert "<img" in maps._repr_html_()
    s = ns.sanity(subject, data, progress=False)
    assert s.n == 8 and s.confusion.sum() == 8
    ex = ns.examples(subject, data, k=3, progress=False)
    assert len(ex.layers["4"].top.ids[2]) == 3 and ex.pictures
    index = ns.report(subject, data, tmp_path / "report", ns.ReportOptions(progress=False, featvis_units=0))
    assert index.exists() and (tmp_path / "report" / "sanity.html").exists()
    assert ns.overview(subject).text().splitlines()[0].startswith("layer")
