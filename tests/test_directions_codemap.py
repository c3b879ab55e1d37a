"""A map of the codes: clusters measured in code space, exact PCA, thumbnails, checked options."""

import json
import re
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from neuronscope.analyses.directions.codemap import PALETTE, CodeMap, code_map
from neuronscope.data import ArrayData
from neuronscope.errors import OptionError, UnknownLayerError
from neuronscope.subject import Subject
from neuronscope.website import svg

pytestmark = pytest.mark.usefixtures("one_thread")

N = 120  # examples in the vector data: 60 per blob


def blob_model(one_logit: bool = False) -> nn.Sequential:
    """4-D input; ``fc`` reads the blob axis (x0 + x1) in both signs plus two noise columns, so the
    ReLU codes of the two blobs lie on different axes; ``head`` says which unit is on."""
    fc = nn.Linear(4, 4)
    head = nn.Linear(4, 1 if one_logit else 2)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1., 1, 0, 0], [-1, -1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
        fc.bias.zero_()
        if one_logit:
            head.weight.copy_(torch.tensor([[-1., 1, 0, 0]]))
        else:
            head.weight.copy_(torch.tensor([[1., -1, 0, 0], [-1, 1, 0, 0]]))
        head.bias.zero_()
    return nn.Sequential(OrderedDict(fc=fc, relu=nn.ReLU(), head=head))


def blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian blobs in 4-D (sd 0.5) centred at +-(2, 2, 0, 0); class 0 is the positive one."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], N // 2)
    centre = np.where(y[:, None] == 0, 1.0, -1.0) * np.array([2.0, 2.0, 0.0, 0.0])
    x = centre + rng.normal(0.0, 0.5, size=(N, 4))
    return x.astype(np.float32), y.astype(np.int64)


def vector_setup(tmp_path, labels=None, classes=("pos", "neg")):
    x, y = blobs()
    np.savez(tmp_path / "v.npz", x=x, y=y if labels is None else labels)
    return Subject(blob_model(), (4,), classes=list(classes)), ArrayData(tmp_path / "v.npz", input_shape=(4,))


def separation(points: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(distance between the two class centroids, largest RMS distance of a class to its centroid)."""
    cents = [points[labels == c].mean(axis=0) for c in (0, 1)]
    spread = max(np.sqrt(((points[labels == c] - cents[c]) ** 2).sum(axis=1).mean()) for c in (0, 1))
    return float(np.linalg.norm(cents[0] - cents[1])), float(spread)


def test_separate_blobs_cluster_and_shuffled_labels_do_not(tmp_path):
    subject, data = vector_setup(tmp_path)
    m = code_map(subject, data)
    assert isinstance(m, CodeMap)
    assert m.layer == "relu"  # the penultimate default layer, not the logits
    assert m.n == N and m.codes.shape == (N, 4) and m.codes.dtype == np.float32
    assert m.pca.shape == m.tsne.shape == (N, 2) and m.k == 10
    np.testing.assert_array_equal(m.labels, blobs()[1])
    assert (m.predictions == m.labels).all() and m.misclassified == 0.0
    assert m.knn_label_agreement > 0.9 and m.knn_prediction_agreement > 0.9
    assert m.trustworthiness > 0.85
    dist, spread = separation(m.tsne, m.labels)
    assert dist > 2 * spread
    # Nearest t-SNE centroid gives back every label.
    cents = np.stack([m.tsne[m.labels == c].mean(axis=0) for c in (0, 1)])
    nearest = np.argmin(((m.tsne[:, None, :] - cents[None]) ** 2).sum(axis=2), axis=1)
    assert (nearest == m.labels).all()

    s = m.summary()
    json.dumps(s)
    assert "separate clusters" in s["finding"] and "relu" in s["finding"]
    assert s["palette"] == {"pos": PALETTE[0], "neg": PALETTE[1]}
    assert s["coloured_by"] == "label" and s["chance_agreement"] == pytest.approx(0.5)
    assert [c["class"] for c in s["per_class"]] == ["pos", "neg"]
    assert all(c["n"] == N // 2 and c["misclassified"] == 0.0 for c in s["per_class"])
    assert m.images() == {}  # vector input: no thumbnails
    assert m.thumbs is None

    # Same inputs, labels shuffled at random: neighbours agree about as often as chance (0.5);
    # the predictions, which follow the codes, still cluster.
    shuffled = np.random.default_rng(7).permutation(blobs()[1])
    subject, data = vector_setup(tmp_path, labels=shuffled)
    r = code_map(subject, data)
    assert r.knn_label_agreement < 0.7
    assert r.knn_prediction_agreement > 0.9
    assert abs(r.misclassified - 0.5) < 0.15
    assert "mixed" in r.finding() or "overlap" in r.finding()
    np.testing.assert_allclose(r.codes, m.codes)  # same inputs, same codes


def test_pca_matches_svd_and_tables(tmp_path):
    x, y = blobs(seed=3)
    flip = np.zeros(N, bool)
    flip[::9] = True  # mislabel every 9th example
    np.savez(tmp_path / "v.npz", x=x, y=np.where(flip, 1 - y, y))
    subject = Subject(blob_model(), (4,), classes=["pos", "neg"])
    data = ArrayData(tmp_path / "v.npz", input_shape=(4,))
    m = code_map(subject, data, "fc", limit=60, batch_size=32)  # pre-activation, uneven batches
    picked = [int(i) for i in m.ids]  # spread evenly over the data, not the first 100
    assert m.n == 60 and picked == np.unique(np.linspace(0, N - 1, 60).round().astype(int)).tolist()
    assert any("spread evenly" in n for n in m.notes)
    expected = (x[picked] @ subject.model.fc.weight.detach().numpy().T).astype(np.float32)
    np.testing.assert_allclose(m.codes, expected, atol=1e-5)

    centred = m.codes.astype(np.float64) - m.codes.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(m.pca_explained, (s ** 2 / (s ** 2).sum())[:2], atol=1e-6)
    for i in range(2):  # the coordinates are the projections, up to each component's sign
        proj = u[:, i] * s[i]
        np.testing.assert_allclose(np.abs(m.pca[:, i]), np.abs(proj), atol=1e-4)
        assert abs(abs(np.corrcoef(m.pca[:, i], proj)[0, 1]) - 1) < 1e-8

    t = m.tables()["points"]
    assert set(t) == {"id", "label", "prediction", "correct", "pca_x", "pca_y", "tsne_x", "tsne_y"}
    assert all(len(col) == 60 for col in t.values())
    assert t["correct"] == [a == b for a, b in zip(t["label"], t["prediction"])]
    assert t["correct"] == list(~flip[picked])
    assert set(t["label"]) == {"pos", "neg"}
    assert m.misclassified == pytest.approx(flip[picked].mean())
    np.testing.assert_allclose(t["tsne_x"], m.tsne[:, 0])


def colour_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """3x8x8 noise images, reddish (class 0) or bluish (class 1)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.uniform(0.0, 0.4, size=(n, 3, 8, 8))
    x[y == 0, 0] += 0.6
    x[y == 1, 2] += 0.6
    return x.astype(np.float32), y.astype(np.int64)


def colour_model() -> nn.Sequential:
    """A 1x1 conv copying red, green, blue and their sum; mean-pooled; red minus blue decides."""
    conv = nn.Conv2d(3, 4, 1)
    head = nn.Linear(4, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1., 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]])[:, :, None, None])
        conv.bias.zero_()
        head.weight.copy_(torch.tensor([[1., 0, -1, 0], [-1, 0, 1, 0]]))
        head.bias.zero_()
    return nn.Sequential(OrderedDict(conv=conv, relu=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1),
                                     flat=nn.Flatten(), head=head))


def test_image_inputs_get_thumbnail_maps(tmp_path):
    x, y = colour_images(40)
    np.savez(tmp_path / "img.npz", x=x, y=y)
    subject = Subject(colour_model(), (3, 8, 8), classes=["red", "blue"])
    data = ArrayData(tmp_path / "img.npz", input_shape=(3, 8, 8))
    m = code_map(subject, data, reduce="max", batch_size=16)
    assert m.layer == "relu" and m.spatial == (8, 8)
    np.testing.assert_allclose(m.codes[:, :3], x.max(axis=(2, 3)), atol=1e-6)  # max over positions
    assert m.knn_label_agreement > 0.9 and (m.predictions == y).all()
    assert m.thumbs.shape == (40, 24, 24, 3) and m.thumbs.dtype == np.uint8
    # Nearest upscaling of 8x8 by 3: each thumbnail pixel block is the input pixel.
    np.testing.assert_array_equal(m.thumbs[0][::3, ::3], np.rint(x[0].transpose(1, 2, 0) * 255).astype(np.uint8))

    images = m.images()
    assert set(images) == {"codemap/tsne", "codemap/pca"}
    for img in images.values():
        assert img.size == (900, 900) and img.mode == "RGB"
        pixels = np.asarray(img).reshape(-1, 3).astype(np.int64)
        packed = set(np.unique(pixels @ np.array([1 << 16, 1 << 8, 1])).tolist())
        assert {int(PALETTE[i][1:], 16) for i in (0, 1)} <= packed  # both classes' borders are drawn
        assert (pixels == 255).all(axis=1).mean() > 0.5  # mostly white canvas

    mean = code_map(subject, data, reduce="mean", thumbnails=False)
    np.testing.assert_allclose(mean.codes[:, :3], x.mean(axis=(2, 3)), atol=1e-6)
    assert mean.thumbs is None and mean.images() == {}


def test_unlabelled_data_and_one_logit_model(tmp_path):
    x, _ = blobs()
    np.save(tmp_path / "x.npy", x[::3])  # 40 examples from both blobs
    subject = Subject(blob_model(one_logit=True), (4,), classes=["a", "b"])
    m = code_map(subject, ArrayData(tmp_path / "x.npy", input_shape=(4,)))
    assert m.labels is None and m.knn_label_agreement is None and m.misclassified is None
    np.testing.assert_array_equal(m.predictions, (x[::3, 0] + x[::3, 1] < 0).astype(np.int64))
    assert m.knn_prediction_agreement > 0.9
    t = m.tables()["points"]
    assert t["label"] == [None] * 40 and t["correct"] == [None] * 40 and set(t["prediction"]) == {"a", "b"}
    s = m.summary()
    json.dumps(s)
    assert s["coloured_by"] == "prediction" and "prediction" in s["finding"]
    assert m.perplexity == pytest.approx(13.0) and any("perplexity" in n for n in m.notes)


def test_options_are_checked(tmp_path):
    subject, data = vector_setup(tmp_path)
    with pytest.raises(OptionError, match="reduce"):
        code_map(subject, data, reduce="median")
    with pytest.raises(UnknownLayerError):
        code_map(subject, data, layer="nope")
    with pytest.raises(OptionError, match="at least 5"):
        code_map(subject, data, limit=3)
    with pytest.raises(OptionError, match="perplexity"):
        code_map(subject, data, perplexity=0)
    x, y = blobs()
    np.savez(tmp_path / "few.npz", x=x[:4], y=y[:4])
    with pytest.raises(OptionError, match="Only 4 examples"):
        code_map(subject, ArrayData(tmp_path / "few.npz", input_shape=(4,)))


def test_tiny_data_still_maps(tmp_path):
    x, y = blobs()
    idx = [0, 1, 2, 60, 61, 62]
    np.savez(tmp_path / "six.npz", x=x[idx], y=y[idx])
    subject = Subject(blob_model(), (4,), classes=["pos", "neg"])
    m = code_map(subject, ArrayData(tmp_path / "six.npz", input_shape=(4,)))
    assert m.n == 6 and m.k == 5 and np.isfinite(m.tsne).all() and 0 <= m.trustworthiness <= 1
    assert m.perplexity == pytest.approx(5 / 3)


def test_svg_scatter_escapes_and_links():
    out = svg.scatter([0.0, 1.0, 2.0, float("nan")], [0.0, 2.0, 1.0, 1.0],
                      ["#4e79a7", "#f28e2b", "red' onload='x", "#000"],
                      ["<script>alert(1)</script>", "b & c", "plain", "gone"],
                      links=["ex.html?id=1&k='2'", None, "javascript:alert(1)", None], width=200, height=100)
    s = str(out)
    assert s.startswith("<svg") and s.endswith("</svg>")
    assert "<script>" not in s and "&lt;script&gt;alert(1)&lt;/script&gt;" in s
    assert "b &amp; c" in s
    assert s.count("<circle") == 3 and "gone" not in s  # the NaN point is left out
    assert s.count("<a href=") == 1 and "href='ex.html?id=1&amp;k=&#x27;2&#x27;'" in s
    assert "javascript" not in s and "onload='x" not in s
    cx = [float(v) for v in re.findall(r"cx='([\d.]+)'", s)]
    cy = [float(v) for v in re.findall(r"cy='([\d.]+)'", s)]
    assert all(0 <= v <= 200 for v in cx) and all(0 <= v <= 100 for v in cy)
    assert cy[1] < cy[0]  # y up: the higher point is nearer the top
    assert "no points" in str(svg.scatter([], [], [], []))
