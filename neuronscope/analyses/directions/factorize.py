"""Factorizations of one layer's activations over the data: NMF and PCA of positions x channels.

Every spatial position of every example is one row of a (positions x channels) matrix ``A``. A
factorization ``A ~ W H`` with ``k`` rows in ``H`` names ``k`` directions in the layer's channel
space that together describe what the layer does on the data (non-negative factors read as
"parts" that add up; principal components as the directions of largest variance).

The data is streamed once. NMF is fitted on a uniform random subsample of at most
``max_positions`` rows kept by reservoir sampling, so memory never grows with the dataset. PCA
needs only the mean and the channel second-moment matrix, which are accumulated exactly (float64)
over every position.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ...errors import NeuronscopeError, OptionError
from ..stream import stream
from .rows import to_rows
from ...notebook import NotebookMixin

METHODS = ("nmf", "pca")


@dataclass
class Factorization(NotebookMixin):
    """``k`` directions in a layer's channel space found from its activations over the data."""

    layer: str
    method: str  # "nmf" or "pca"
    components: np.ndarray  # (K, C); NMF: non-negative rows of unit norm; PCA: orthonormal rows
    explained: np.ndarray  # PCA: explained variance ratio; NMF: share of the reconstruction
    reconstruction: float  # ||A - WH||_F / ||A||_F on the rows used
    n_positions: int  # rows (example x position) the factorization was computed from
    n_examples: int = 0
    n_seen: int = 0  # rows met during the pass (NMF keeps a sample of these)
    mean: np.ndarray | None = None  # PCA: the channel mean that was removed
    spatial: tuple[int, ...] = ()
    seed: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def k(self) -> int:
        return int(self.components.shape[0])

    @property
    def channels(self) -> int:
        return int(self.components.shape[1])

    def addresses(self) -> list[str]:
        """One address per factor: ``layer:nmf0`` ... or ``layer:pca0`` ..."""
        return [f"{self.layer}:{self.method}{i}" for i in range(self.k)]

    def scores(self, acts: torch.Tensor) -> torch.Tensor:
        """Each factor's coefficient at each position: (N, C, *S) -> (N, K, *S), (N, C) -> (N, K).

        PCA: projection of the centred activations on each component. NMF: the non-negative
        least-squares coefficients with the factors held fixed (scikit-learn's coordinate descent).
        """
        acts = torch.as_tensor(acts)
        if acts.ndim < 2 or acts.shape[1] != self.channels:
            raise OptionError(f"scores() needs activations of shape (N, {self.channels}, ...); "
                              f"got {tuple(acts.shape)}.")
        rows = _rows(acts)
        if self.method == "pca":
            coef = (rows - self.mean) @ self.components.T
        else:
            coef = _nnls(rows, self.components, self.seed)
        n, rest = acts.shape[0], tuple(acts.shape[2:])
        out = coef.reshape(n, *rest, self.k)
        out = np.moveaxis(out, -1, 1) if rest else out
        return torch.from_numpy(np.ascontiguousarray(out)).to(dtype=acts.dtype if acts.is_floating_point()
                                                               else torch.float32)

    def reconstruct(self, scores: torch.Tensor) -> torch.Tensor:
        """Activations rebuilt from :meth:`scores` (adds the mean back for PCA)."""
        scores = torch.as_tensor(scores)
        coef = _rows(scores)
        rows = coef @ self.components + (self.mean if self.method == "pca" else 0.0)
        n, rest = scores.shape[0], tuple(scores.shape[2:])
        out = rows.reshape(n, *rest, self.channels)
        out = np.moveaxis(out, -1, 1) if rest else out
        return torch.from_numpy(np.ascontiguousarray(out)).to(scores.dtype)

    def top_channels(self, i: int, n: int = 5) -> list[tuple[int, float]]:
        """The channels with the largest (absolute, for PCA) weight in factor ``i``."""
        w = self.components[i]
        order = np.argsort(-np.abs(w))[:n]
        return [(int(c), float(w[c])) for c in order]

    def tables(self) -> dict[str, dict[str, list]]:
        """Plain columns: one row per factor, and the factor x channel weights."""
        factors = {
            "address": self.addresses(),
            "factor": list(range(self.k)),
            "explained": [float(v) for v in self.explained],
            "top_channels": [", ".join(f"{c}:{w:+.3f}" for c, w in self.top_channels(i))
                             for i in range(self.k)],
        }
        weights: dict[str, list] = {"channel": list(range(self.channels))}
        for i, a in enumerate(self.addresses()):
            weights[a] = [float(v) for v in self.components[i]]
        return {"factors": factors, "weights": weights}

    def summary(self) -> dict:
        """JSON-able headline numbers and a one-sentence ``finding``."""
        return {
            "layer": self.layer,
            "method": self.method,
            "k": self.k,
            "channels": self.channels,
            "explained": [float(v) for v in self.explained],
            "explained_total": float(np.sum(self.explained)) if self.method == "pca" else None,
            "reconstruction_error": float(self.reconstruction),
            "n_positions": int(self.n_positions),
            "n_seen": int(self.n_seen),
            "n_examples": int(self.n_examples),
            "spatial": list(self.spatial),
            "notes": list(self.notes),
            "finding": self.finding(),
        }

    def finding(self) -> str:
        what = "non-negative factors" if self.method == "nmf" else "principal components"
        return (f"{self.k} {what} of {self.layer} ({self.channels} channels) leave a relative "
                f"reconstruction error of {self.reconstruction:.3f} on {self.n_positions} positions.")


def factorize(subject, data, layer: str, *, method: str = "nmf", k: int = 6, limit: int | None = 2048,
              max_positions: int = 200_000, seed: int = 0, batch_size: int = 64, max_iter: int = 400,
              progress: bool = False) -> Factorization:
    """Factorize ``layer``'s activations (positions x channels) over up to ``limit`` examples.

    ``method="nmf"`` needs non-negative activations (a ReLU output) and fits scikit-learn's NMF
    on a reservoir sample of at most ``max_positions`` rows; ``method="pca"`` uses the exact
    streamed mean and second-moment matrix of every position.
    """
    method = str(method).lower()
    if method not in METHODS:
        raise OptionError(f"method must be one of {', '.join(METHODS)}; got {method!r}.")
    info = subject.layer(layer)
    name = info.name
    channels = info.channels
    if channels is None:
        raise OptionError(f"Layer {name!r} has no tensor output to factorize.")
    if not 1 <= int(k) <= channels:
        raise OptionError(f"k must be between 1 and the layer's {channels} channels; got {k}.")
    k = int(k)
    if max_positions < k:
        raise OptionError(f"max_positions ({max_positions}) must be at least k ({k}).")

    rng = np.random.default_rng(seed)
    reservoir = _Reservoir(int(max_positions), channels, rng) if method == "nmf" else None
    moments = _Moments(channels) if method == "pca" else None
    n_examples = 0
    with subject.borrowed():
        for step in stream(subject, data, [name], limit=limit, batch_size=batch_size,
                           desc=f"factorize {name}", progress=progress, spread=True):
            acts = step.activations[name]
            if isinstance(acts, tuple):
                acts = acts[0]
            n_examples += acts.shape[0]
            rows = _rows(acts)
            if reservoir is not None:
                low = float(rows.min()) if rows.size else 0.0
                if low < 0:
                    raise OptionError(
                        f"Layer {name!r} has negative activations (min {low:.4g}); NMF needs "
                        f"non-negative ones: pick a ReLU output layer, or use method='pca'.")
                reservoir.add(rows)
            else:
                moments.add(rows)
    if n_examples == 0:
        raise NeuronscopeError("No examples were read from the data: nothing to factorize.")
    spatial = tuple(info.spatial)
    if method == "pca":
        return _pca(moments, name, k, n_examples, spatial, seed)
    return _nmf(reservoir, name, k, n_examples, spatial, seed, max_iter)


# ------------------------------------------------------------------------------- internals


def _rows(acts) -> np.ndarray:
    """(N, C, *S) -> (N * prod(S), C) float64 rows, example-major then position."""
    return to_rows(torch.as_tensor(acts).detach().cpu().double()).numpy()


class _Reservoir:
    """A uniform random sample of at most ``size`` rows from a stream (Algorithm R, vectorised)."""

    def __init__(self, size: int, channels: int, rng: np.random.Generator):
        self.size = size
        self._buf = np.empty((min(size, 1024), channels), dtype=np.float32)
        self.filled = 0
        self.seen = 0
        self.rng = rng

    @property
    def rows(self) -> np.ndarray:
        return self._buf[:self.filled]

    def add(self, rows: np.ndarray) -> None:
        m = rows.shape[0]
        room = self.size - self.filled
        if room > 0 and m > 0:
            take = min(room, m)
            need = self.filled + take
            if need > self._buf.shape[0]:  # grow geometrically, never past size
                cap = min(self.size, max(need, 2 * self._buf.shape[0]))
                grown = np.empty((cap, self._buf.shape[1]), dtype=np.float32)
                grown[:self.filled] = self._buf[:self.filled]
                self._buf = grown
            self._buf[self.filled:need] = rows[:take]
            self.filled, self.seen = need, self.seen + take
            rows = rows[take:]
            m = rows.shape[0]
        if m == 0:
            return
        # The t-th row met (0-based) replaces slot j ~ U{0..t} when j < size.
        t = self.seen + np.arange(m)
        j = (self.rng.random(m) * (t + 1)).astype(np.int64)
        hit = np.flatnonzero(j < self.size)
        if hit.size:
            slots = j[hit]
            # A later row overwrites an earlier one in the same slot: keep the last per slot.
            last = len(slots) - 1 - np.unique(slots[::-1], return_index=True)[1]
            self._buf[slots[last]] = rows[hit[last]]
        self.seen += m


class _Moments:
    """Streamed, exact float64 row count, channel sums and second-moment matrix."""

    def __init__(self, channels: int):
        self.n = 0
        self.sum = np.zeros(channels)
        self.outer = np.zeros((channels, channels))

    def add(self, rows: np.ndarray) -> None:
        self.n += rows.shape[0]
        self.sum += rows.sum(axis=0)
        self.outer += rows.T @ rows


def _pca(m: _Moments, layer, k, n_examples, spatial, seed) -> Factorization:
    mean = m.sum / m.n
    cov = m.outer / m.n - np.outer(mean, mean)
    cov = (cov + cov.T) / 2
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    values = np.clip(values[order], 0.0, None)
    vectors = vectors[:, order]
    comps = vectors[:, :k].T.copy()
    # Fix each sign so that the largest-magnitude weight is positive (deterministic output).
    big = np.argmax(np.abs(comps), axis=1)
    comps *= np.sign(comps[np.arange(k), big])[:, None]
    total = float(values.sum())
    explained = values[:k] / total if total > 0 else np.zeros(k)
    # Rank-k reconstruction (mean + projection) of every row, relative to ||A||.
    energy = float(np.trace(m.outer))
    resid = m.n * float(values[k:].sum())
    recon = float(np.sqrt(resid / energy)) if energy > 0 else 0.0
    notes = [] if total > 0 else ["the layer is constant over the data: no variance to explain"]
    return Factorization(layer, "pca", comps, explained, recon, m.n, n_examples, m.n, mean,
                         spatial, seed, notes)


def _nmf(res: _Reservoir, layer, k, n_examples, spatial, seed, max_iter) -> Factorization:
    from sklearn.decomposition import NMF

    a = res.rows
    if a.shape[0] < k:
        raise OptionError(f"Only {a.shape[0]} positions were seen, fewer than k={k}: use more "
                          "examples or a smaller k.")
    norm = float(np.linalg.norm(a))
    notes = []
    if norm == 0:
        raise OptionError(f"Layer {layer!r} is zero on every sampled position: nothing to factorize.")
    model = NMF(n_components=k, init="nndsvda", max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w = model.fit_transform(a)
    if any("converge" in str(c.message).lower() for c in caught):
        notes.append(f"NMF stopped at max_iter={max_iter} before converging")
    h = model.components_
    scale = np.linalg.norm(h, axis=1)
    scale[scale == 0] = 1.0
    h = h / scale[:, None]
    w = w * scale[None, :]
    share = (w ** 2).sum(axis=0)  # each rank-one term's ||w_i h_i||^2 (h_i unit norm)
    order = np.argsort(-share, kind="stable")
    h, share = h[order], share[order]
    explained = share / share.sum() if share.sum() > 0 else np.zeros(k)
    recon = float(model.reconstruction_err_) / norm
    if res.seen > res.rows.shape[0]:
        notes.append(f"fitted on a uniform sample of {res.rows.shape[0]} of {res.seen} positions")
    return Factorization(layer, "nmf", h, explained, recon, int(a.shape[0]), n_examples, res.seen,
                         None, spatial, seed, notes)


def _nnls(rows: np.ndarray, components: np.ndarray, seed: int) -> np.ndarray:
    """Non-negative coefficients ``W`` minimising ``||rows - W components||`` (components fixed)."""
    from sklearn.decomposition import non_negative_factorization

    if rows.shape[0] == 0:
        return np.zeros((0, components.shape[0]))
    if rows.min() < 0:
        raise OptionError("NMF scores need non-negative activations (a ReLU output).")
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # A tight tolerance on a convex problem: at the iteration cap the coefficients are settled to
        # far below what a ranking of examples can see, and the warning would repeat per batch.
        warnings.simplefilter("ignore", ConvergenceWarning)
        w, _, _ = non_negative_factorization(
            rows, H=np.ascontiguousarray(components, dtype=np.float64), n_components=components.shape[0],
            init="custom", update_H=False, solver="cd", max_iter=1000, tol=1e-8, random_state=seed)
    return w
