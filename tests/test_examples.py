"""Dataset examples: exact against brute force, mergeable across shards, resumable, and useful."""

import numpy as np
import pytest
import torch
from torch import nn

from neuronscope import Subject
from neuronscope.analyses.examples import ExamplesReducer, LayerSpec, examples
from neuronscope.analyses.reducers import KeepBest, calibrate_edges, id_keys
from neuronscope.data import open_data


def brute_force_top(scores, ids, k, largest=True):
    """Per unit, the k ids ordered by score (desc for top), ties by id key."""
    keys = id_keys(ids)
    out = []
    for u in range(scores.shape[1]):
        s = scores[:, u]
        order = np.lexsort((keys, -s if largest else s))[:k]
        out.append([ids[i] for i in order])
    return out


def test_keep_best_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    n, u, k = 500, 7, 10
    scores = rng.integers(0, 5, (n, u)).astype(float)  # many ties
    ids = [f"ex{i}" for i in range(n)]
    keys = id_keys(ids)
    kb = KeepBest(u, k)
    for start in range(0, n, 37):
        s = scores[start:start + 37]
        kb.update(np.tile(np.arange(u), len(s)), -s.ravel(), np.repeat(keys[start:start + 37], u))
    key_to_id = dict(zip(keys.tolist(), ids))
    got = [[key_to_id[x] for x in row] for row in kb.key.tolist()]
    assert got == brute_force_top(scores, ids, k)


def random_acts(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    conv = torch.relu(torch.randn(n, 3, 4, 5, generator=g) - 0.3)
    conv[:, 2] = 0.0  # a dead channel
    dense = torch.randn(n, 4, generator=g).round(decimals=1)  # signed, with ties
    return {"conv": conv, "dense": dense}


SPECS = [LayerSpec("conv", 3, (4, 5), True, "ReLU"), LayerSpec("dense", 4, (), False, "Linear")]


def feed(red, acts, ids, labels, batch):
    for s in range(0, len(ids), batch):
        red.add_batch(ids[s:s + batch], {k: v[s:s + batch] for k, v in acts.items()}, labels[s:s + batch])
    return red


@pytest.fixture
def stream_data():
    n = 600
    acts = random_acts(n)
    ids = [f"img/{i:04d}.png" for i in range(n)]
    labels = torch.as_tensor(np.random.default_rng(1).integers(0, 3, n))
    edges = {"conv": calibrate_edges(acts["conv"].flatten(2).amax(2).double().numpy()),
             "dense": calibrate_edges(acts["dense"].double().numpy())}
    return acts, ids, labels, edges


def test_top_bottom_k_positions_and_stats_are_exact(stream_data):
    acts, ids, labels, edges = stream_data
    red = feed(ExamplesReducer(SPECS, k=9, classes=["a", "b", "c"], edges=edges), acts, ids, labels, 50)
    res = red.result()
    scores = acts["conv"].flatten(2).amax(2).double().numpy()
    conv = res.layers["conv"]
    assert conv.top.ids == brute_force_top(scores, ids, 9)
    assert conv.bottom.ids == brute_force_top(scores, ids, 9, largest=False)
    # Position of the maximum, as (y, x) of the 4x5 grid.
    first = ids.index(conv.top.ids[0][0])
    y, x = np.unravel_index(acts["conv"][first, 0].argmax().item(), (4, 5))
    assert conv.position(conv.top.pos[0, 0]) == (y, x)
    np.testing.assert_allclose(conv.mean, scores.mean(0), rtol=1e-12)
    np.testing.assert_allclose(conv.std, scores.std(0), rtol=1e-9)
    assert conv.dead().tolist() == [False, False, True]
    np.testing.assert_allclose(conv.active, (scores > 0).mean(0))
    dense = res.layers["dense"]
    d = acts["dense"].double().numpy()
    assert dense.top.ids == brute_force_top(d, ids, 9)
    assert not dense.dead().any(), "a signed pre-activation layer is never 'dead'"
    # Histogram counts every example once; class means are exact.
    assert (conv.hist_counts.sum(1) == len(ids)).all()
    lab = labels.numpy()
    np.testing.assert_allclose(conv.class_means[1], scores[lab == 1].mean(0), rtol=1e-12)


def test_quantiles_within_one_percent_rank(stream_data):
    acts, ids, labels, edges = stream_data
    res = feed(ExamplesReducer(SPECS, k=4, edges=edges), acts, ids, labels, 64).result()
    d = np.sort(acts["dense"].double().numpy(), axis=0)
    n = len(d)
    for qi, q in enumerate([0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]):
        for u in range(4):
            v = res.layers["dense"].quantiles[u, qi]
            lo, hi = np.searchsorted(d[:, u], v, "left") / n, np.searchsorted(d[:, u], v, "right") / n
            assert lo - 0.01 <= q <= hi + 0.01


def test_two_shards_merge_into_the_one_pass_result(stream_data):
    acts, ids, labels, edges = stream_data
    whole = feed(ExamplesReducer(SPECS, k=8, classes=["a", "b", "c"], edges=edges), acts, ids, labels, 64).result()
    cut = 250
    a = feed(ExamplesReducer(SPECS, k=8, classes=["a", "b", "c"], edges=edges),
             {k: v[:cut] for k, v in acts.items()}, ids[:cut], labels[:cut], 32)
    b = feed(ExamplesReducer(SPECS, k=8, classes=["a", "b", "c"], edges=edges),
             {k: v[cut:] for k, v in acts.items()}, ids[cut:], labels[cut:], 100)
    merged = a.merge(b).result()
    for name in ("conv", "dense"):
        w, m = whole.layers[name], merged.layers[name]
        assert m.top.ids == w.top.ids and m.bottom.ids == w.bottom.ids
        assert [r.ids for r in m.ranged] == [r.ids for r in w.ranged], "range samples chosen by id hash"
        np.testing.assert_array_equal(m.hist_counts, w.hist_counts)
        np.testing.assert_allclose(m.mean, w.mean, rtol=1e-9)
        np.testing.assert_allclose(m.class_means, w.class_means, rtol=1e-9)
        np.testing.assert_array_equal(m.top.pos, w.top.pos)


def test_range_samples_cover_the_activation_range(stream_data):
    acts, ids, labels, edges = stream_data
    res = feed(ExamplesReducer(SPECS, k=4, edges=edges, range_bins=4, per_bin=3), acts, ids, labels, 64).result()
    lr = res.layers["dense"]
    for b, rk in enumerate(lr.ranged):
        lo, hi = lr.range_edges[0, b], lr.range_edges[0, b + 1]
        s = rk.scores[0][~np.isnan(rk.scores[0])]
        assert len(s) and ((s >= lo - 1e-9) & (s <= hi + 1e-9)).all()


def test_memory_is_independent_of_the_data_size(stream_data):
    acts, ids, labels, edges = stream_data
    red = ExamplesReducer(SPECS, k=4, edges=edges)
    for rep in range(20):  # 12,000 examples
        feed(red, acts, [f"{rep}/{i}" for i in ids], labels, 64)
    assert len(red.ids) <= 4 * 2 * 7 + 8 * 4 * 7 + 64 * 64, "ids kept only while a reducer holds them"


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


@pytest.fixture
def arrays(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((300, 1, 8, 8)).astype(np.float32)
    x[:40, :, 2:4, 2:4] = 3.0  # a planted bright blob
    y = rng.integers(0, 3, 300)
    y[:40] = 2
    np.savez(tmp_path / "d.npz", x=x, y=y)
    return open_data(tmp_path / "d.npz", input_shape=(1, 8, 8))


def test_resume_after_interruption_gives_the_same_result(arrays, tmp_path):
    s = Subject(small_cnn(), (1, 8, 8), classes=["a", "b", "c"])
    full = examples(s, arrays, ["1", "4"], k=5, pictures=False, progress=False, batch_size=32)

    class Flaky:
        """The data, but the pass dies after some batches (as on Ctrl-C)."""

        def __init__(self, inner, fail_after):
            self.inner, self.fail_after, self.served = inner, fail_after, 0

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __len__(self):
            return len(self.inner)

        def batches(self, *a, **kw):
            for i, b in enumerate(self.inner.batches(*a, **kw)):
                if i == self.fail_after:
                    raise KeyboardInterrupt
                self.served += len(b.ids)
                yield b

    ck = tmp_path / "pass.npz"
    import neuronscope.analyses.stream as stream_mod

    old = stream_mod.run_pass.__kwdefaults__["every_s"]
    stream_mod.run_pass.__kwdefaults__["every_s"] = 0.0  # checkpoint after every batch
    try:
        with pytest.raises(KeyboardInterrupt):
            examples(s, Flaky(arrays, 9), ["1", "4"], k=5, pictures=False, progress=False, batch_size=32, checkpoint=ck)
        assert ck.exists()
        again = Flaky(arrays, 10**9)
        resumed = examples(s, again, ["1", "4"], k=5, pictures=False, progress=False, batch_size=32, checkpoint=ck)
    finally:
        stream_mod.run_pass.__kwdefaults__["every_s"] = old
    # 256 examples calibrate the histograms; checkpoints start once they are in.
    assert again.served == 300 - 9 * 32, "the resumed pass starts where the first one stopped"
    for name in ("1", "4"):
        assert resumed.layers[name].top.ids == full.layers[name].top.ids
        np.testing.assert_array_equal(resumed.layers[name].hist_counts, full.layers[name].hist_counts)
        np.testing.assert_allclose(resumed.layers[name].mean, full.layers[name].mean, rtol=1e-12)


def test_planted_feature_is_recovered_and_selective(arrays):
    s = Subject(small_cnn(), (1, 8, 8), classes=["a", "b", "c"])
    with torch.no_grad():
        s.model[0].weight.zero_()
        s.model[0].weight[1, 0, 1, 1] = 1.0  # channel 1 copies the input: fires on the blob
        s.model[0].bias.fill_(-1.5)
    res = examples(s, arrays, ["1"], k=16, pictures=False, progress=False)
    top = res.layers["1"].top.ids[1]
    assert all(int(i) < 40 for i in top), "the top examples are the blob images"
    best, si = res.layers["1"].selectivity()
    assert res.classes[best[1]] == "c" and si[1] > 0.9
    assert res.layers["1"].dead()[0], "a unit that never exceeds zero is flagged dead"
    units = res.tables()["units"]
    assert units["preferred_class"][1] == "c" and units["dead"][0] is True


def test_tabular_top_rows_and_profile(tmp_path):
    rng = np.random.default_rng(0)
    import pyarrow as pa
    import pyarrow.csv as pacsv

    x = rng.normal(size=(200, 3))
    pacsv.write_csv(pa.table({"age": x[:, 0], "income": x[:, 1], "noise": x[:, 2], "y": (x[:, 1] > 0).astype(int)}),
                    tmp_path / "t.csv")
    data = open_data(tmp_path / "t.csv", target="y")
    m = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]))
        m[0].bias.zero_()
    s = Subject(m, (3,), columns=data.columns, task="regression")
    res = examples(s, data, ["1"], k=10, progress=False)
    prof = res.profiles["1"]
    assert prof[0].argmax() == 1 and prof[0, 1] > 1.5, "unit 0's top rows have high income"
    assert prof[1].argmin() == 0 and prof[1, 0] < -1.5, "unit 1's top rows have low age"
    top = res.layers["1"].top.ids[0]
    rows = res.rows
    incomes = [rows["income"][rows["id"].index(i)] for i in top]
    assert min(incomes) >= sorted(x[:, 1])[-10] - 1e-6  # float32 data


def test_moments_merge_without_cancellation():
    """A small spread under a large mean: cut anyhow, the std is numpy's two-pass one to 1e-6,
    where sums of squares lose it entirely."""
    from neuronscope.analyses.reducers import Moments

    x = 1e6 + np.random.default_rng(0).normal(0, 1e-3, (1000, 3))
    whole = Moments(3)
    for i in range(0, 1000, 64):
        whole.add(x[i:i + 64])
    parts = [Moments(3) for _ in range(3)]
    for p, (a, b) in zip(parts, [(0, 10), (10, 700), (700, 1000)]):
        p.add(x[a:b])
    merged = Moments.from_state_dict(parts[0].merge(parts[1]).merge(parts[2]).state_dict())
    for m in (whole, merged):
        assert m.n == 1000
        np.testing.assert_allclose(m.mean, x.mean(0), rtol=1e-14)
        np.testing.assert_allclose(m.std(), x.std(0), rtol=1e-6)
    naive = np.sqrt(np.maximum((x**2).mean(0) - x.mean(0) ** 2, 0))
    assert np.abs(naive / x.std(0) - 1).max() > 0.01
