"""Streaming, mergeable reducers for per-unit statistics over a dataset.

Each reducer sees one batch at a time as small ``(B, U)`` arrays (one score per example and
unit), keeps O(units x k) state, merges with a reducer built on another shard into exactly the
reducer of one pass over both, and round-trips through ``state_dict()`` (plain numpy arrays), so a
pass can resume from disk or run sharded. After davidbau/dissect's ``runningstats``.

Ties are broken by an example's *key*: a 63-bit hash of its id. Keys give one fixed total order
on ids that does not depend on which shard or batch an example came in, so results are exact
and order-independent; range samples use the same keys as uniform pseudo-random priorities.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def id_keys(ids: Sequence[str]) -> np.ndarray:
    """63-bit keys of example ids (blake2b), as int64: a shard-independent order on ids."""
    return np.array([int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little") >> 1
                     for i in ids], dtype=np.int64)


class KeepBest:
    """For each of ``rows`` rows, the ``m`` entries smallest by (primary, key), with payloads.

    The workhorse behind top-k, bottom-k and range samples. Rows stay sorted. An update first
    drops candidates that cannot enter (worse than the row's current worst when the row is
    full), so once rows fill up a batch costs little more than one comparison per entry.
    """

    def __init__(self, rows: int, m: int, payloads: Sequence[str] = ()):
        self.rows, self.m = rows, m
        self.primary = np.full((rows, m), np.inf)
        self.key = np.full((rows, m), np.iinfo(np.int64).max, dtype=np.int64)
        # Payloads ride along as float64 (positions and labels are exact in it; so are scores).
        self.payloads = {p: np.full((rows, m), -1.0) for p in payloads}

    def update(self, row: np.ndarray, primary: np.ndarray, key: np.ndarray, **payloads: np.ndarray) -> None:
        """Offer flat candidates: ``row[i]`` gets (primary[i], key[i], payloads[i])."""
        worst_p, worst_k = self.primary[row, -1], self.key[row, -1]
        enter = (primary < worst_p) | ((primary == worst_p) & (key < worst_k))
        if enter.any():
            self._merge_in(row[enter], primary[enter], key[enter], {p: v[enter] for p, v in payloads.items()})

    def update_dense(self, primary: np.ndarray, key: np.ndarray, **payloads: np.ndarray) -> None:
        """Offer a (B, rows) matrix: column r holds row r's candidates, ``key`` is per example (B,)."""
        worst_p, worst_k = self.primary[:, -1], self.key[:, -1]
        enter = (primary < worst_p) | ((primary == worst_p) & (key[:, None] < worst_k))
        if not enter.any():
            return
        b, r = np.nonzero(enter)
        self._merge_in(r, primary[b, r], key[b], {p: v[b, r] for p, v in payloads.items()})

    def _merge_in(self, row, primary, key, payloads) -> None:
        touched = np.unique(row)
        # Current entries of the touched rows, flattened, plus the candidates.
        all_row = np.concatenate([np.repeat(touched, self.m), row])
        all_p = np.concatenate([self.primary[touched].ravel(), primary])
        all_k = np.concatenate([self.key[touched].ravel(), key])
        all_pay = {p: np.concatenate([self.payloads[p][touched].ravel(), payloads[p]]) for p in self.payloads}
        order = np.lexsort((all_k, all_p, all_row))
        all_row = all_row[order]
        start = np.searchsorted(all_row, touched)
        rank = np.arange(len(all_row)) - np.repeat(start, np.diff(np.append(start, len(all_row))))
        keep = order[rank < self.m]
        r, c = all_row[rank < self.m], rank[rank < self.m]
        self.primary[r, c] = all_p[keep]
        self.key[r, c] = all_k[keep]
        for p in self.payloads:
            self.payloads[p][r, c] = all_pay[p][keep]

    def merge(self, other: KeepBest) -> KeepBest:
        if (self.rows, self.m, set(self.payloads)) != (other.rows, other.m, set(other.payloads)):
            raise ValueError("cannot merge reducers of different shapes")
        out = self.copy()
        rows = np.repeat(np.arange(other.rows), other.m)
        out.update(rows, other.primary.ravel(), other.key.ravel(),
                   **{p: v.ravel() for p, v in other.payloads.items()})
        return out

    def copy(self) -> KeepBest:
        return KeepBest.from_state_dict(self.state_dict())

    def filled(self) -> np.ndarray:
        """Which entries hold an example (rows may not be full on small data)."""
        return np.isfinite(self.primary)

    def state_dict(self) -> dict:
        return {"primary": self.primary.copy(), "key": self.key.copy(),
                **{f"payload.{p}": v.copy() for p, v in self.payloads.items()}}

    @classmethod
    def from_state_dict(cls, state: dict) -> KeepBest:
        primary = np.asarray(state["primary"])
        payloads = [k.split(".", 1)[1] for k in state if k.startswith("payload.")]
        out = cls(primary.shape[0], primary.shape[1], payloads)
        out.primary, out.key = primary.copy(), np.asarray(state["key"]).copy()
        for p in payloads:
            out.payloads[p] = np.asarray(state[f"payload.{p}"]).copy()
        return out


class Moments:
    """Per column: count, mean and the sum of squared deviations (M2), updated batch by batch and
    merged with the pairwise formula of Chan, Golub & LeVeque (1979, "Updating formulae and a
    pairwise algorithm for computing sample variances"). Unlike sums of squares, shards combine
    without cancellation: a small spread under a large mean comes out the same however the data
    was cut."""

    def __init__(self, columns: int):
        self.n = 0
        self.mean = np.zeros(columns)
        self.m2 = np.zeros(columns)

    def add(self, x: np.ndarray) -> None:
        """A batch of rows ``(B, columns)``."""
        x = np.asarray(x, dtype=np.float64)
        if len(x):
            mb = x.mean(0)
            self._combine(len(x), mb, ((x - mb) ** 2).sum(0))

    def _combine(self, nb: int, mb: np.ndarray, m2b: np.ndarray) -> None:
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta**2 * (self.n * nb / n)
        self.n = n

    def merge(self, other: Moments) -> Moments:
        out = Moments.from_state_dict(self.state_dict())
        if other.n:
            out._combine(other.n, other.mean, other.m2)
        return out

    def std(self) -> np.ndarray:
        """Population standard deviation per column (0 before any row)."""
        return np.sqrt(self.m2 / max(self.n, 1))

    def state_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean.copy(), "m2": self.m2.copy()}

    @classmethod
    def from_state_dict(cls, state: dict) -> Moments:
        out = cls(len(state["mean"]))
        out.n, out.mean, out.m2 = int(state["n"]), np.asarray(state["mean"], float).copy(), np.asarray(state["m2"], float).copy()
        return out


class Histogram:
    """Per-unit counts over fixed edges ``[lo, hi]`` in ``bins`` equal bins, plus under/overflow."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, bins: int = 48):
        self.lo, self.hi, self.bins = np.asarray(lo, float), np.asarray(hi, float), bins
        self.counts = np.zeros((len(self.lo), bins + 2), dtype=np.int64)  # [under, bins..., over]

    def bin_of(self, scores: np.ndarray) -> np.ndarray:
        """(B, U) scores -> (B, U) bin indices in 0..bins+1 (0 under, bins+1 over)."""
        width = np.where(self.hi > self.lo, self.hi - self.lo, 1.0)
        b = np.floor((scores - self.lo) / width * self.bins).astype(np.int64) + 1
        b = np.where(scores == self.hi, self.bins, b)  # the top edge is inside the last bin
        return np.clip(b, 0, self.bins + 1)

    def add(self, bins: np.ndarray) -> None:
        u = len(self.lo)
        flat = (np.arange(u)[None, :] * (self.bins + 2) + bins).ravel()
        self.counts += np.bincount(flat, minlength=u * (self.bins + 2)).reshape(u, self.bins + 2)

    def merge(self, other: Histogram) -> Histogram:
        if not (np.array_equal(self.lo, other.lo) and np.array_equal(self.hi, other.hi) and self.bins == other.bins):
            raise ValueError("histograms with different edges cannot be merged: calibrate once, share the edges")
        out = Histogram(self.lo, self.hi, self.bins)
        out.counts = self.counts + other.counts
        return out

    def edges(self) -> np.ndarray:
        """(U, bins + 1) bin edges."""
        return self.lo[:, None] + (self.hi - self.lo)[:, None] * np.linspace(0, 1, self.bins + 1)[None, :]

    def state_dict(self) -> dict:
        return {"lo": self.lo, "hi": self.hi, "bins": self.bins, "counts": self.counts.copy()}

    @classmethod
    def from_state_dict(cls, state: dict) -> Histogram:
        out = cls(state["lo"], state["hi"], int(state["bins"]))
        out.counts = np.asarray(state["counts"]).copy()
        return out


def calibrate_edges(scores: np.ndarray, margin: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Histogram edges per unit from a calibration sample of scores (B, U).

    The range is widened by ``margin`` on each side; a unit that was never negative starts at 0
    (ReLU-like), so its exact zeros fall in the first bin. Values outside land in the
    under/overflow bins, which the report shows with their exact min and max.
    """
    lo, hi = scores.min(0).astype(float), scores.max(0).astype(float)
    span = np.where(hi > lo, hi - lo, np.maximum(np.abs(hi), 1.0))
    lo = np.where(lo >= 0, 0.0, lo - margin * span)
    hi = hi + margin * span
    return lo, hi
