"""Factorizations of a layer's activations: NMF recovers planted parts, PCA is exact and streamed."""

from collections import OrderedDict
from itertools import permutations

import numpy as np
import pytest
import torch
from torch import nn

from neuronscope.analyses.directions.factorize import Factorization, _Reservoir, _rows, factorize
from neuronscope.data import ArrayData
from neuronscope.errors import OptionError
from neuronscope.subject import Subject

pytestmark = pytest.mark.usefixtures("one_thread")

C, K, HW = 12, 3, 6


def planted_factors() -> np.ndarray:
    """Three non-negative directions over 12 channels, each with its own dominant channels."""
    rng = np.random.default_rng(3)
    f = rng.uniform(0.0, 0.3, size=(K, C))
    for i in range(K):
        f[i, 4 * i:4 * i + 4] += rng.uniform(1.0, 2.0, size=4)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def planted_conv(negative: bool = False) -> nn.Sequential:
    """Input (3, H, W) = coefficient maps; ``mix`` (1x1 conv) spreads them over 12 channels."""
    mix = nn.Conv2d(K, C, 1, bias=False)
    with torch.no_grad():
        w = torch.tensor(planted_factors().T, dtype=torch.float32)  # (C, K)
        mix.weight.copy_((-w if negative else w)[:, :, None, None])
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(mix=mix, relu=nn.ReLU(), flat=nn.Flatten(),
                                     head=nn.Linear(C * HW * HW, 2)))


def sparse_coefficients(n, *shape, seed=1) -> np.ndarray:
    """Non-negative coefficients, each zero at about half of the positions."""
    rng = np.random.default_rng(seed)
    x = rng.exponential(1.0, size=(n, K, *shape)) * (rng.random((n, K, *shape)) < 0.5)
    return x.astype(np.float32)


def conv_setup(tmp_path, n=64, negative=False):
    np.save(tmp_path / "x.npy", sparse_coefficients(n, HW, HW))
    subject = Subject(planted_conv(negative), (K, HW, HW))
    return subject, ArrayData(tmp_path / "x.npy", input_shape=(K, HW, HW))


def best_match(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Cosines of the truth's factors with found factors under the best one-to-one matching."""
    unit = found / np.linalg.norm(found, axis=1, keepdims=True)
    cos = truth @ unit.T
    best = max(permutations(range(found.shape[0]), truth.shape[0]),
               key=lambda p: sum(cos[i, j] for i, j in enumerate(p)))
    return np.array([cos[i, j] for i, j in enumerate(best)])


def all_rows(subject, data, layer) -> np.ndarray:
    with torch.no_grad(), subject.capture([layer]) as cap:
        subject.forward(data.get(data.ids()).x)
    return _rows(cap[layer])


def test_nmf_recovers_planted_factors(tmp_path):
    subject, data = conv_setup(tmp_path)
    fac = factorize(subject, data, "relu", method="nmf", k=3, batch_size=16)
    assert isinstance(fac, Factorization)
    assert fac.components.shape == (3, C) and (fac.components >= 0).all()
    assert np.allclose(np.linalg.norm(fac.components, axis=1), 1.0)
    assert best_match(fac.components, planted_factors()).min() >= 0.95
    assert fac.reconstruction < 0.05
    assert fac.n_positions == fac.n_seen == 64 * HW * HW and fac.n_examples == 64
    assert np.isclose(fac.explained.sum(), 1.0) and (np.diff(fac.explained) <= 1e-12).all()
    assert fac.addresses() == ["relu:nmf0", "relu:nmf1", "relu:nmf2"]

    # Scores are non-negative coefficient maps that rebuild the activations.
    x = data.get(data.ids()[:8]).x
    with torch.no_grad(), subject.capture(["relu"]) as cap:
        subject.forward(x)
    acts = cap["relu"]
    s = fac.scores(acts)
    assert s.shape == (8, 3, HW, HW) and (s >= 0).all()
    rebuilt = fac.reconstruct(s)
    assert rebuilt.shape == acts.shape
    assert torch.linalg.norm(rebuilt - acts) / torch.linalg.norm(acts) < 0.05

    tables, summary = fac.tables(), fac.summary()
    assert tables["factors"]["address"] == fac.addresses()
    assert len(tables["weights"]["channel"]) == C
    assert summary["method"] == "nmf" and summary["k"] == 3 and "finding" in summary


def full_rank_conv() -> nn.Sequential:
    """A random 3x3 conv: its 12 output channels span the whole channel space, with distinct
    variances, so every principal component is well defined."""
    torch.manual_seed(2)
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(K, C, 3, padding=1), flat=nn.Flatten(),
                                     head=nn.Linear(C * HW * HW, 2)))


def test_pca_is_exact_eigendecomposition(tmp_path):
    np.save(tmp_path / "x.npy", sparse_coefficients(64, HW, HW))
    subject = Subject(full_rank_conv(), (K, HW, HW))
    data = ArrayData(tmp_path / "x.npy", input_shape=(K, HW, HW))
    fac = factorize(subject, data, "conv", method="pca", k=5, batch_size=10)  # uneven batches
    a = all_rows(subject, data, "conv")
    assert fac.n_positions == a.shape[0] == 64 * HW * HW
    mean = a.mean(axis=0)
    cov = (a - mean).T @ (a - mean) / a.shape[0]
    values, vectors = np.linalg.eigh(cov)
    values, vectors = values[::-1], vectors[:, ::-1]
    assert (np.diff(values[:6]) < -1e-3 * values[0]).all()  # distinct: components are unique
    np.testing.assert_allclose(fac.mean, mean, atol=1e-6)
    for i in range(5):
        v = vectors[:, i] * np.sign(vectors[:, i] @ fac.components[i])
        np.testing.assert_allclose(fac.components[i], v, atol=1e-6)
    np.testing.assert_allclose(fac.explained, values[:5] / values.sum(), atol=1e-6)
    assert fac.explained.sum() <= 1 + 1e-12
    np.testing.assert_allclose(fac.components @ fac.components.T, np.eye(5), atol=1e-6)

    # Scores are projections; rank-k reconstruction error matches the reported one.
    s = fac.scores(torch.from_numpy(a.astype(np.float32)))
    assert s.shape == (a.shape[0], 5)
    np.testing.assert_allclose(s.numpy(), (a - mean) @ fac.components.T, atol=1e-4)
    rebuilt = fac.reconstruct(s).double().numpy()
    err = np.linalg.norm(a - rebuilt) / np.linalg.norm(a)
    assert abs(err - fac.reconstruction) < 1e-4
    assert fac.addresses()[0] == "conv:pca0"

    # Planted layer: built from 3 factors, so 3 components explain it all.
    subject, data = conv_setup(tmp_path)
    planted = factorize(subject, data, "relu", method="pca", k=4)
    assert planted.explained[:3].sum() > 0.999 and planted.reconstruction < 1e-3


def test_reservoir_keeps_at_most_max_positions(tmp_path):
    subject, data = conv_setup(tmp_path)
    fac = factorize(subject, data, "relu", method="nmf", k=3, max_positions=500, batch_size=16)
    assert fac.n_positions == 500 and fac.n_seen == 64 * HW * HW
    assert best_match(fac.components, planted_factors()).min() >= 0.95
    assert any("sample" in n for n in fac.notes)

    # Uniform: every row kept once at most, and the kept indices spread over the whole stream.
    res = _Reservoir(200, 1, np.random.default_rng(0))
    stream = np.arange(20_000, dtype=np.float64)[:, None]
    for start in range(0, 20_000, 777):
        res.add(stream[start:start + 777])
    kept = res.rows[:, 0]
    assert res.rows.shape == (200, 1) and res.seen == 20_000
    assert len(np.unique(kept)) == 200
    assert abs(kept.mean() - 10_000) < 1_500  # sd of the mean ~ 400
    assert (kept < 10_000).sum() in range(70, 131)


def test_negative_layer_rejects_nmf(tmp_path):
    subject, data = conv_setup(tmp_path, negative=True)
    with pytest.raises(OptionError, match="ReLU|pca"):
        factorize(subject, data, "mix", method="nmf", k=3)
    fac = factorize(subject, data, "mix", method="pca", k=3)  # PCA takes any sign
    assert fac.components.shape == (3, C)


def test_options_are_checked(tmp_path):
    subject, data = conv_setup(tmp_path, n=8)
    with pytest.raises(OptionError):
        factorize(subject, data, "relu", method="ica")
    with pytest.raises(OptionError):
        factorize(subject, data, "relu", k=C + 1)


def test_dense_layer(tmp_path):
    f = planted_factors()
    fc = nn.Linear(K, C, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor(f.T, dtype=torch.float32))
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(fc=fc, relu=nn.ReLU(), head=nn.Linear(C, 2)))
    np.save(tmp_path / "v.npy", sparse_coefficients(600, seed=5))
    subject = Subject(model, (K,))
    data = ArrayData(tmp_path / "v.npy", input_shape=(K,))
    fac = factorize(subject, data, "relu", method="nmf", k=3, limit=500)
    assert fac.n_positions == 500 and fac.n_examples == 500 and fac.spatial == ()
    assert best_match(fac.components, f).min() >= 0.95
    x = data.get(data.ids()[:4]).x
    with torch.no_grad(), subject.capture(["relu"]) as cap:
        subject.forward(x)
    s = fac.scores(cap["relu"])
    assert s.shape == (4, 3)
    pca = factorize(subject, data, "relu", method="pca", k=3, limit=500)
    assert pca.explained.sum() > 0.999 and pca.scores(cap["relu"]).shape == (4, 3)
