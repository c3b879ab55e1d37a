"""Comparing two result stores the way a user would: the same results, whatever ran them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

# chosen by timing the machine: how a section ran, not what it found
HOW_IT_RAN = ("/batching.parquet",)
TIMING_COLUMNS = ("seconds",)


def assert_same_store(a: Path, b: Path, sections=("examples", "layer_stats", "sanity")):
    """Equal under the reducers' merge semantics: ids, ranks, counts and pictures exact; floats
    (and maps, lists of floats) to 1e-6 relative or 1e-5 of the column's largest value: a float32
    convolution's last bits depend on the batch it ran in, and batch sizes are chosen by timing.
    ``sections=None``: every section, and both stores must have the same ones."""
    ma, mb = (json.loads((Path(p) / "manifest.json").read_text())["sections"] for p in (a, b))
    if sections is None:
        assert sorted(ma) == sorted(mb)
        sections = sorted(ma)
    for sec in sections:
        assert ma[sec]["key"] == mb[sec]["key"], sec
        assert ma[sec]["tables"] == mb[sec]["tables"] and ma[sec]["images"] == mb[sec]["images"], sec
        for rel in ma[sec]["tables"].values():
            if rel.endswith(HOW_IT_RAN):
                continue
            ta, tb = pq.read_table(a / rel).to_pydict(), pq.read_table(b / rel).to_pydict()
            assert list(ta) == list(tb), rel
            for col in ta:
                if col in TIMING_COLUMNS:
                    continue
                va, vb = ta[col], tb[col]
                first = next((v for v in va if v is not None), None)
                if isinstance(first, list) and first and isinstance(first[0], float):  # a map per row
                    assert [None if v is None else len(v) for v in va] == [None if v is None else len(v) for v in vb]
                    va, vb = [x for v in va for x in v or []], [x for v in vb for x in v or []]
                    first = 0.0
                if isinstance(first, float):
                    fa = np.array([np.nan if v is None else v for v in va], dtype=float)
                    fb = np.array([np.nan if v is None else v for v in vb], dtype=float)
                    # differences of outputs (occlusion, ablation) carry the outputs' rounding: a
                    # floor of 1e-5 of the column's largest value
                    scale = float(np.nanmax(np.abs(fb), initial=0.0))
                    np.testing.assert_allclose(fa, fb, rtol=1e-6, atol=max(1e-9, 1e-5 * scale), equal_nan=True,
                                               err_msg=f"{rel}:{col}")
                else:
                    assert va == vb, f"{rel}:{col}"
        for rel in ma[sec]["images"].values():
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
