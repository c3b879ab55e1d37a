"""QuantileSketch: per-unit rank error within 1 %, merging, saving, memory; all seeded.

Run this file directly (``python tests/test_sketch.py``) for the add() throughput at
(batch 64, 500 units) and the worst rank error at n = 1e6.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch

from neuronscope.analyses.sketch import QuantileSketch
from neuronscope.errors import DataError

QS = np.round(np.arange(1, 100) / 100, 2)  # 0.01 .. 0.99
N, UNITS = 200_000, 8


def make(kind: str, n: int = N, units: int = UNITS, seed: int = 0) -> np.ndarray:
    """(n, units) float32 scores; each unit a differently scaled copy of the distribution."""
    rng = np.random.default_rng(seed)
    scale = np.linspace(0.5, 4.0, units, dtype=np.float32)
    if kind == "uniform":
        x = rng.random((n, units))
    elif kind == "lognormal":  # heavy right tail
        x = rng.lognormal(0.0, 2.0, (n, units))
    elif kind == "relu":  # 70 % exact zeros, then a few repeated values and a continuous tail
        x = np.maximum(rng.normal(-0.5244, 1.0, (n, units)), 0)
        x[rng.random((n, units)) < 0.05] = 1.0
        x = np.round(x, 2)  # many more ties
    else:
        raise ValueError(kind)
    return (x * scale).astype(np.float32)


def feed(sketch: QuantileSketch, data: np.ndarray, seed: int = 0) -> QuantileSketch:
    """Add ``data`` in batches of varying size (including empty ones)."""
    rng = np.random.default_rng(seed)
    i = 0
    while i < len(data):
        b = int(rng.choice([0, 1, 7, 64, 100, 1000, 3000]))
        sketch.add(data[i:i + b])
        i += b
    return sketch


def rank_errors(data: np.ndarray, estimates: np.ndarray, qs=QS) -> np.ndarray:
    """(units, len(qs)) distance, as a fraction of n, from q n to the rank interval of the
    estimate [#{< v}, #{<= v}] (ties make it an interval; 0 when q n lies inside)."""
    n = len(data)
    errs = np.empty(estimates.shape)
    for u in range(data.shape[1]):
        s = np.sort(data[:, u])
        lo = np.searchsorted(s, estimates[u], side="left")
        hi = np.searchsorted(s, estimates[u], side="right")
        errs[u] = np.maximum.reduce([np.zeros(len(qs)), lo - qs * n, qs * n - hi]) / n
    return errs


@pytest.fixture(scope="module", params=["uniform", "lognormal", "relu"])
def stream(request):
    data = make(request.param)
    return request.param, data, feed(QuantileSketch(UNITS), data)


def test_rank_error_within_one_percent(stream):
    kind, data, sketch = stream
    assert sketch.n == N
    err = rank_errors(data, sketch.quantiles(QS))
    print(f"\n{kind}: worst rank error {err.max():.4%} (mean {err.mean():.4%})")
    assert err.max() <= 0.01


def test_extremes_are_exact(stream):
    _, data, sketch = stream
    ends = sketch.quantiles([0.0, 1.0])
    np.testing.assert_array_equal(ends[:, 0], data.min(0))
    np.testing.assert_array_equal(ends[:, 1], data.max(0))


def test_cdf_agrees_with_the_data(stream):
    kind, data, sketch = stream
    x = np.quantile(data, [0.0, 0.1, 0.5, 0.9], axis=0).T  # (units, 4): thresholds per unit
    truth = (data[:, :, None] <= x[None]).mean(0)
    est = sketch.cdf(x)
    assert est.shape == (UNITS, 4)
    assert np.abs(est - truth).max() <= 0.01
    shared = sketch.cdf([-1.0, 1e9])
    np.testing.assert_array_equal(shared, [[0.0, 1.0]] * UNITS)
    if kind == "relu":  # the mass at exactly zero is counted, not split
        assert np.abs(sketch.cdf([0.0])[:, 0] - (data == 0).mean(0)).max() <= 0.01


@pytest.mark.parametrize("shards", [2, 3])
def test_merged_shards_keep_the_bound(shards):
    data = make("lognormal", seed=1)
    cuts = np.sort(np.random.default_rng(shards).choice(N, shards - 1, replace=False))
    parts = [feed(QuantileSketch(UNITS, seed=i), part, seed=i)
             for i, part in enumerate(np.split(data, cuts))]
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part)
    assert merged.n == N and parts[0].n == cuts[0]  # inputs unchanged
    state = merged.state_dict()
    assert all(state[f"level{h}"].shape[1] < 1024 for h in range(state["levels"]))  # compacted
    assert rank_errors(data, merged.quantiles(QS)).max() <= 0.01
    ends = merged.quantiles([0, 1])
    np.testing.assert_array_equal(ends, np.stack([data.min(0), data.max(0)], 1))
    # a merged sketch keeps streaming
    more = make("lognormal", n=50_000, seed=2)
    feed(merged, more)
    assert rank_errors(np.concatenate([data, more]), merged.quantiles(QS)).max() <= 0.01


def test_merge_needs_matching_sketches():
    with pytest.raises(ValueError, match="units: 3 and 4"):
        QuantileSketch(3).merge(QuantileSketch(4))
    with pytest.raises(ValueError, match="capacity"):
        QuantileSketch(3, capacity=512).merge(QuantileSketch(3))
    with pytest.raises(TypeError):
        QuantileSketch(3).merge(np.zeros(3))


def test_state_dict_round_trip_through_npz():
    data = make("relu", n=60_000)
    sketch = feed(QuantileSketch(UNITS, seed=7), data)
    buf = io.BytesIO()
    np.savez(buf, **sketch.state_dict())
    buf.seek(0)
    with np.load(buf) as saved:
        restored = QuantileSketch.from_state_dict(saved)
    assert restored.n == sketch.n
    np.testing.assert_array_equal(restored.quantiles(QS), sketch.quantiles(QS))
    # same random bits carried over: both continue identically
    more = make("uniform", n=30_000, seed=3)
    feed(sketch, more)
    feed(restored, more)
    np.testing.assert_array_equal(restored.quantiles(QS), sketch.quantiles(QS))
    state = restored.state_dict()
    state["n"] += 1
    with pytest.raises(ValueError, match="inconsistent"):
        QuantileSketch.from_state_dict(state)


def test_small_streams_are_exact():
    # fewer items than the capacity: nothing is compacted, quantiles are order statistics
    sketch = QuantileSketch(2, capacity=1024)
    values = np.stack([np.arange(100, 0, -1), np.arange(1, 101) * 10], 1).astype(np.float32)
    sketch.add(values)
    np.testing.assert_array_equal(sketch.quantiles([0, 0.01, 0.5, 0.505, 1]),
                                  [[1, 1, 50, 51, 100], [10, 10, 500, 510, 1000]])
    np.testing.assert_array_equal(sketch.cdf([50.0, 500.0]), [[0.5, 1.0], [0.05, 0.5]])


def test_memory_grows_logarithmically():
    rng = np.random.default_rng(0)
    sizes = {}
    sketch = QuantileSketch(2)
    for n in (100_000, 1_000_000):
        while sketch.n < n:
            sketch.add(rng.random((1000, 2), dtype=np.float32))
        sizes[n] = sketch.nbytes()
    # fewer than b items per level and unit, log2(n / b) + 2 levels, room for a batch at level 0
    assert sizes[1_000_000] <= 2 * (np.log2(1e6 / 1024) + 2) * 1024 * 4 + 2 * 1000 * 4 + 32
    assert sizes[1_000_000] < 2 * sizes[100_000]  # 10x the data, far less than 2x the memory
    print(f"\nbytes per unit: n=1e5 {sizes[100_000] / 2:.0f}, n=1e6 {sizes[1_000_000] / 2:.0f}")


def test_one_huge_batch():
    data = make("uniform", n=100_000)
    sketch = QuantileSketch(UNITS)
    sketch.add(data)
    assert rank_errors(data, sketch.quantiles(QS)).max() <= 0.01
    assert sketch.nbytes() < 40 * 1024 * 4 * UNITS  # the batch-sized buffer was let go


def test_nan_is_refused_and_leaves_the_sketch_as_it_was():
    sketch = QuantileSketch(3)
    sketch.add(np.ones((5, 3)))
    bad = np.ones((4, 3))
    bad[2, 1] = np.nan
    with pytest.raises(DataError, match=r"NaN scores for 1 unit\(s\) \(first: \[1\]\)"):
        sketch.add(bad)
    assert isinstance(DataError("x"), ValueError)
    assert sketch.n == 5
    np.testing.assert_array_equal(sketch.quantiles([0.5]), np.ones((3, 1)))
    sketch.add(np.array([[np.inf, -np.inf, 0.0]]))  # infinities are fine
    np.testing.assert_array_equal(sketch.quantiles([0, 1])[:, 0], [1, -np.inf, 0])


def test_inputs_are_checked():
    sketch = QuantileSketch(4)
    for bad in (np.zeros(4), np.zeros((2, 3)), np.zeros((2, 4, 1))):
        with pytest.raises(ValueError, match=r"shape \(batch, 4\)"):
            sketch.add(bad)
    sketch.add(np.zeros((0, 4)))
    assert sketch.n == 0
    assert np.isnan(sketch.quantiles([0.5])).all() and np.isnan(sketch.cdf([0.0])).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sketch.quantiles([1.5])
    with pytest.raises(ValueError, match="units"):
        QuantileSketch(0)
    for capacity in (1, 0, 101):
        with pytest.raises(ValueError, match="even integer"):
            QuantileSketch(2, capacity=capacity)


def test_accepts_torch_and_integers_and_float64():
    sketch = QuantileSketch(2, dtype=np.float64)
    sketch.add(torch.arange(10.0, requires_grad=True).reshape(5, 2))
    sketch.add(np.array([[100, -100]]))
    sketch.add(torch.tensor([[0.5, 0.5]], dtype=torch.bfloat16))
    np.testing.assert_array_equal(sketch.quantiles([0, 0.25, 0.5, 1]),
                                  [[0, 0.5, 4, 100], [-100, 0.5, 3, 9]])
    with pytest.raises(ValueError, match="dtype"):
        QuantileSketch(2, dtype=np.int32)


def test_tiny_capacity_keeps_its_books():
    # deep hierarchies, odd counts, huge batches and merges at every depth: the weights still add
    # up to n (from_state_dict checks), the ends stay exact and quantiles stay ordered
    rng = np.random.default_rng(4)
    sketches = []
    for i in range(5):
        s = QuantileSketch(3, capacity=6, seed=i)
        for _ in range(int(rng.integers(1, 40))):
            s.add(rng.normal(size=(int(rng.choice([0, 1, 3, 5, 13, 200])), 3)))
        sketches.append(s)
    merged = sketches[0]
    for s in sketches[1:]:
        merged = QuantileSketch.from_state_dict(merged.merge(s).state_dict())
    assert merged.n == sum(s.n for s in sketches)
    np.testing.assert_array_equal(merged.quantiles([0])[:, 0], np.min([s.quantiles([0])[:, 0]
                                                                     for s in sketches], 0))
    assert np.all(np.diff(merged.quantiles(QS), axis=1) >= 0)


def test_same_seed_same_sketch():
    data = make("lognormal", n=30_000)
    a = feed(QuantileSketch(UNITS, seed=3), data).state_dict()
    b = feed(QuantileSketch(UNITS, seed=3), data).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def benchmark(batch: int = 64, units: int = 500, batches: int = 4096) -> None:
    rng = np.random.default_rng(0)
    pool = [rng.standard_normal((batch, units), dtype=np.float32) for _ in range(64)]
    sketch = QuantileSketch(units)
    start = time.perf_counter()
    for i in range(batches):
        sketch.add(pool[i % 64])
    per = (time.perf_counter() - start) / batches
    block = rng.standard_normal((units, 1024), dtype=np.float32)
    start = time.perf_counter()
    for _ in range(20):
        block.copy().sort(axis=1)
    floor = (time.perf_counter() - start) / 20 / 1024 * batch * 2  # each value is sorted ~2x
    print(f"add(): {per * 1e3:.3f} ms per batch of {batch} x {units} units "
          f"({per / (batch * units) * 1e9:.1f} ns per value), n = {sketch.n}; "
          f"the sorting alone costs {floor * 1e3:.3f} ms on this machine")
    n, units = 1_000_000, 100
    data = make("lognormal", n=n, units=units, seed=5)
    sketch = QuantileSketch(units)
    for i in range(0, n, batch):
        sketch.add(data[i:i + batch])
    err = rank_errors(data, sketch.quantiles(QS))
    print(f"n = {n}, {units} units, batches of {batch}: worst rank error {err.max():.4%}, "
          f"{sketch.nbytes() / units / 1024:.1f} KiB per unit")


if __name__ == "__main__":
    benchmark()
