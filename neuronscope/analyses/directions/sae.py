"""A learned dictionary (TopK sparse autoencoder) over one layer's activations.

Each activation row ``a`` (D numbers) is explained as a sparse, non-negative combination of
``F`` learned directions (the dictionary's features), usually ``F > D``: the layer may store
more features than it has neurons, in superposition, and a sparse dictionary can pull them apart
where single neurons cannot.

Method (written from the papers, not from any library):

* Anthropic, "Towards Monosemanticity: Decomposing Language Models With Dictionary Learning"
  (Bricken et al., 2023): a one-layer autoencoder with unit-norm decoder columns, a pre-encoder
  bias equal to the decoder bias, and *resampling* of dead features toward inputs that are
  badly reconstructed.
* Gao et al., "Scaling and evaluating sparse autoencoders" (2024): the TopK activation (keep the
  ``k`` largest pre-activations, zero the rest) instead of an L1 penalty, and initialising the
  encoder as the transpose of the decoder.

The model, on activations already divided by a scalar ``scale``::

    z = TopK_k(ReLU(W_enc (x - b_dec) + b_enc))        x = a / scale
    x_hat = W_dec z + b_dec                            a_hat = scale * x_hat

Training: Adam on the mean squared reconstruction error (summed over the D coordinates, averaged
over rows). The decoder's columns are kept unit norm: before each Adam step the gradient
component parallel to each column is removed (``g_f -= (g_f . w_f) w_f``), and after the step the
columns are renormalised to length 1 (the projection alone keeps them unit length only to first
order, and Adam's per-coordinate rescaling breaks the projection anyway, so the renormalisation
is what actually enforces the constraint).

Dead features: every feature counts the training steps since it last fired. Every
``resample_dead_every`` steps, features that have not fired for that many steps are resampled as
in Towards Monosemanticity: rows of the current batch are drawn with probability proportional to
the square of their reconstruction error; the dead feature's decoder column becomes the
normalised residual ``x - x_hat`` of its row, its encoder row points the same way with the
average length of the live encoder rows, its encoder bias is zeroed, and Adam's moment estimates
for those entries are reset. No resampling happens in the last half period of a run with a known
number of steps, so that resampled features get time to settle. (Gao et al.'s alternative, an
auxiliary TopK loss on dead features, is not implemented.)

Streaming: activations arrive as batches of rows from an iterable or from a callable that
returns a fresh iterator per epoch; only the current batch (plus, at the start, at most
``norm_rows`` rows used to estimate ``scale`` and ``b_dec``) is held, so memory does not grow
with the size of the data set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch

from ...errors import OptionError

Stream = Callable[[], Iterator[torch.Tensor]] | Iterable[torch.Tensor]

__all__ = ["Dictionary", "DictionaryMetrics", "train_dictionary", "evaluate_dictionary"]


@dataclass
class Dictionary:
    """A trained TopK sparse autoencoder.

    ``encoder`` (F, D), ``b_enc`` (F,), ``decoder`` (D, F) with unit-norm columns, ``b_dec`` (D,)
    all act on activations divided by ``scale``; :meth:`encode` and :meth:`decode` take and
    return activations in the layer's own units.
    """

    layer: str | None
    encoder: torch.Tensor
    decoder: torch.Tensor
    b_enc: torch.Tensor
    b_dec: torch.Tensor
    k: int
    scale: float = 1.0

    @property
    def features(self) -> int:
        return self.encoder.shape[0]

    @property
    def dim(self) -> int:
        return self.encoder.shape[1]

    def encode(self, a: torch.Tensor) -> torch.Tensor:
        """(N, D) activations -> (N, F) non-negative codes with at most ``k`` non-zeros per row."""
        with torch.no_grad():
            return _encode(a.to(self.encoder.dtype) / self.scale, self.encoder, self.b_enc,
                           self.b_dec, self.k)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(N, F) codes -> (N, D) reconstructed activations in the layer's units."""
        with torch.no_grad():
            return (z.to(self.decoder.dtype) @ self.decoder.T + self.b_dec) * self.scale

    def reconstruct(self, a: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(a))

    def directions(self) -> torch.Tensor:
        """(F, D) unit vectors: feature f's direction in the layer's activation space.

        The normalisation is a positive scalar, so directions are the same in both units."""
        return self.decoder.T / self.decoder.norm(dim=0).clamp_min(1e-12)[:, None]


@dataclass
class DictionaryMetrics:
    """How well a dictionary explains a stream of activations.

    ``l0``: mean number of active features per row. ``explained_variance``:
    ``1 - sum ||a - a_hat||^2 / sum ||a - mean(a)||^2`` over the evaluation rows.
    ``dead_fraction``: fraction of features never active over the evaluation rows.
    ``history``: per training step, ``loss`` (normalised MSE), ``explained_variance`` of that
    batch, ``l0`` of that batch and ``dead_fraction`` (features not fired for
    ``resample_dead_every`` steps); ``resampled`` lists ``(step, number_of_features)``.
    """

    l0: float
    explained_variance: float
    dead_fraction: float
    rows: int
    fired: torch.Tensor | None = None  # (F,) bool: which features fired during evaluation
    history: dict[str, list] = field(default_factory=dict)


def _encode(x, w_enc, b_enc, b_dec, k):
    pre = torch.relu((x - b_dec) @ w_enc.T + b_enc)
    vals, idx = pre.topk(k, dim=1)
    return torch.zeros_like(pre).scatter(1, idx, vals)


def _iterate(stream: Stream) -> Iterator[torch.Tensor]:
    return iter(stream()) if callable(stream) else iter(stream)


def _restartable(stream: Stream) -> bool:
    if callable(stream):
        return True
    return iter(stream) is not stream  # a list or other container, not a one-shot iterator


def _rows(batch, dim: int) -> torch.Tensor:
    batch = torch.as_tensor(batch)
    if batch.shape[-1] != dim:
        raise OptionError(f"activation batches must end in dim={dim}, got shape {tuple(batch.shape)}")
    return batch.reshape(-1, dim).float()


def _geometric_median(x: torch.Tensor, iters: int = 30) -> torch.Tensor:
    """Weiszfeld's iteration, started at the mean."""
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(1e-8)
        m_new = (w[:, None] * x).sum(0) / w.sum()
        if (m_new - m).norm() < 1e-6 * (1 + m.norm()):
            return m_new
        m = m_new
    return m


def evaluate_dictionary(dictionary: Dictionary, stream: Stream, *,
                        max_rows: int | None = None) -> DictionaryMetrics:
    """Stream activations through ``dictionary`` and measure l0, explained variance and dead
    features, with running sums only (memory independent of the number of rows)."""
    d, f = dictionary.dim, dictionary.features
    n = 0
    sum_a = torch.zeros(d, dtype=torch.float64)
    sum_sq = torch.zeros((), dtype=torch.float64)
    err = torch.zeros((), dtype=torch.float64)
    active = torch.zeros((), dtype=torch.float64)
    fired = torch.zeros(f, dtype=torch.bool)
    for batch in _iterate(stream):
        a = _rows(batch, d)
        if max_rows is not None:
            a = a[: max_rows - n]
        if len(a) == 0:
            break
        z = dictionary.encode(a)
        a_hat = dictionary.decode(z)
        n += len(a)
        a64 = a.double()
        sum_a += a64.sum(0)
        sum_sq += (a64 ** 2).sum()
        err += ((a64 - a_hat.double()) ** 2).sum()
        nz = z > 0
        active += nz.sum()
        fired |= nz.any(0)
        if max_rows is not None and n >= max_rows:
            break
    if n == 0:
        raise OptionError("the evaluation stream yielded no rows")
    total = sum_sq - (sum_a ** 2).sum() / n
    ev = float(1 - err / total) if total > 0 else float("nan")
    return DictionaryMetrics(l0=float(active / n), explained_variance=ev,
                             dead_fraction=float((~fired).float().mean()), rows=n, fired=fired)


def train_dictionary(stream: Stream, dim: int, *, features: int | None = None, k: int | None = None,
                     steps: int | None = None, lr: float = 1e-3, seed: int = 0,
                     resample_dead_every: int = 1000, layer: str | None = None,
                     init: Dictionary | None = None, eval_stream: Stream | None = None,
                     eval_rows: int = 65536, norm_rows: int = 4096,
                     on_step: Callable[[int], object] | None = None) -> tuple[Dictionary, DictionaryMetrics]:
    """Train a TopK sparse autoencoder on batches of ``(N, dim)`` activation rows.

    ``stream``: an iterable of batches, or a callable returning a fresh iterator (one epoch)
    each time. ``steps``: number of optimiser steps (one per batch); ``None`` makes one pass.
    When a pass ends before ``steps``, a callable or re-iterable stream is restarted; a one-shot
    iterator ends training early. ``resample_dead_every``: resampling period and dead-feature
    window in steps (0 disables resampling). ``init``: continue from an existing dictionary
    (its scale is kept). ``k`` defaults to 16 (or ``init.k``). The returned metrics are measured on ``eval_stream`` if given, else on
    a fresh pass of a callable/re-iterable ``stream`` (first ``eval_rows`` rows), else on the
    last training batches as they went by (an approximation: the weights moved meanwhile).
    """
    if features is None:
        features = init.features if init is not None else 8 * dim
    if k is None:
        k = init.k if init is not None else 16
    if not 0 < k <= features:
        raise OptionError(f"need 0 < k <= features, got k={k}, features={features}")
    gen = torch.Generator().manual_seed(seed)
    it = _iterate(stream)

    # Peek at the first batches (at most norm_rows rows kept) for the scale and b_dec.
    head: list[torch.Tensor] = []
    held = 0
    for batch in it:
        a = _rows(batch, dim)
        head.append(a)
        held += len(a)
        if held >= norm_rows:
            break
    if not head:
        raise OptionError("the activation stream yielded no rows: is the layer called on this data?")
    first = torch.cat(head)[:norm_rows]

    if init is not None:
        if init.dim != dim:
            raise OptionError(f"init dictionary has dim {init.dim}, not {dim}")
        scale = init.scale
        w_enc = init.encoder.detach().clone().float()
        w_dec = init.decoder.detach().clone().float()
        b_enc = init.b_enc.detach().clone().float()
        b_dec = init.b_dec.detach().clone().float()
    else:
        # Normalise so that the centred activations have unit mean square per coordinate.
        spread = ((first - first.mean(0)) ** 2).sum(1).mean() / dim
        scale = float(spread.sqrt()) if spread > 0 else 1.0
        w_dec = torch.randn(dim, features, generator=gen)
        w_dec /= w_dec.norm(dim=0, keepdim=True)
        w_enc = w_dec.T.clone()  # Gao et al.: encoder starts as the decoder's transpose
        b_enc = torch.zeros(features)
        b_dec = _geometric_median(first / scale)

    params = [p.requires_grad_() for p in (w_enc, b_enc, w_dec, b_dec)]
    opt = torch.optim.Adam(params, lr=lr)
    since_fired = torch.zeros(features, dtype=torch.long)
    history: dict[str, list] = {"loss": [], "explained_variance": [], "l0": [],
                                "dead_fraction": [], "resampled": []}
    tail = _TailStats(dim, features)
    restartable = _restartable(stream)

    def batches() -> Iterator[torch.Tensor]:
        nonlocal it
        yield from head_consumer()
        while True:
            got = False
            for b in it:
                got = True
                yield _rows(b, dim)
            if steps is None or not restartable or not got:
                return
            it = _iterate(stream)

    def head_consumer() -> Iterator[torch.Tensor]:
        while head:
            yield head.pop(0)

    del first
    step = 0
    for x in batches():
        if steps is not None and step >= steps:
            break
        x = x / scale
        z = _encode(x, w_enc, b_enc, b_dec, k)
        x_hat = z @ w_dec.T + b_dec
        per_row = ((x - x_hat) ** 2).sum(1)
        loss = per_row.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            # Keep the decoder on the unit sphere: drop the radial part of each column's gradient.
            w_dec.grad -= (w_dec.grad * w_dec).sum(0, keepdim=True) * w_dec
        opt.step()
        step += 1
        with torch.no_grad():
            w_dec /= w_dec.norm(dim=0, keepdim=True).clamp_min(1e-12)
            fired = (z > 0).any(0)
            since_fired += 1
            since_fired[fired] = 0
            var = ((x - x.mean(0)) ** 2).sum()
            history["loss"].append(float(loss))
            history["explained_variance"].append(
                float(1 - per_row.sum() / var) if var > 0 else float("nan"))
            l0 = float((z > 0).sum(1).float().mean())
            history["l0"].append(l0)
            window = resample_dead_every if resample_dead_every > 0 else step
            history["dead_fraction"].append(float((since_fired >= window).float().mean()))
            tail.add(x * scale, (x_hat * scale), z)
            # No resampling in the last half period: a fresh feature needs steps to settle.
            settle = steps is not None and steps - step < resample_dead_every // 2
            if resample_dead_every > 0 and step % resample_dead_every == 0 and not settle:
                dead = (since_fired >= resample_dead_every).nonzero().flatten()
                if len(dead):
                    _resample(dead, x, x_hat, per_row, w_enc, b_enc, w_dec, opt, gen)
                    since_fired[dead] = 0
                    history["resampled"].append((step, len(dead)))
        if on_step is not None:
            on_step(1)
        del x, z, x_hat, per_row, loss

    dictionary = Dictionary(layer=layer, encoder=w_enc.detach(), decoder=w_dec.detach(),
                            b_enc=b_enc.detach(), b_dec=b_dec.detach(), k=k, scale=scale)
    if eval_stream is not None:
        metrics = evaluate_dictionary(dictionary, eval_stream, max_rows=eval_rows)
    elif restartable:
        metrics = evaluate_dictionary(dictionary, stream, max_rows=eval_rows)
    else:
        metrics = tail.metrics()
    metrics.history = history
    return dictionary, metrics


def _resample(dead, x, x_hat, per_row, w_enc, b_enc, w_dec, opt, gen) -> None:
    """Towards Monosemanticity's resampling, on the current batch (see the module docstring)."""
    weights = per_row.detach() ** 2
    if float(weights.sum()) <= 0:
        weights = torch.ones_like(weights)
    rows = torch.multinomial(weights, len(dead), replacement=len(dead) > len(weights),
                             generator=gen)
    resid = (x - x_hat)[rows].detach()
    dirs = resid / resid.norm(dim=1, keepdim=True).clamp_min(1e-12)
    alive = torch.ones(w_enc.shape[0], dtype=torch.bool)
    alive[dead] = False
    enc_norm = float(w_enc[alive].norm(dim=1).mean()) if alive.any() else 1.0
    w_dec[:, dead] = dirs.T
    w_enc[dead] = dirs * enc_norm
    b_enc[dead] = 0.0
    for p, index in ((w_enc, (dead,)), (b_enc, (dead,)), (w_dec, (slice(None), dead))):
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][index] = 0.0


class _TailStats:
    """Running metrics over the most recent training batches (used when no fresh pass exists)."""

    def __init__(self, dim: int, features: int, window: int = 50):
        self.window = window
        self.dim, self.features = dim, features
        self.buckets: list[tuple] = []

    def add(self, a, a_hat, z) -> None:
        a64 = a.double()
        nz = z > 0
        self.buckets.append((len(a), a64.sum(0), (a64 ** 2).sum(),
                             ((a64 - a_hat.double()) ** 2).sum(), nz.sum(), nz.any(0)))
        if len(self.buckets) > self.window:
            self.buckets.pop(0)

    def metrics(self) -> DictionaryMetrics:
        n = sum(b[0] for b in self.buckets)
        sum_a = sum(b[1] for b in self.buckets)
        sum_sq = sum(b[2] for b in self.buckets)
        err = sum(b[3] for b in self.buckets)
        active = sum(b[4] for b in self.buckets)
        fired = torch.stack([b[5] for b in self.buckets]).any(0)
        total = sum_sq - (sum_a ** 2).sum() / n
        return DictionaryMetrics(l0=float(active / n), explained_variance=float(1 - err / total),
                                 dead_fraction=float((~fired).float().mean()), rows=n,
                                 fired=fired)


def learn_dictionary(subject, data, layer: str, *, features: int | None = None, k: int | None = None,
                     steps: int = 500, lr: float = 3e-3, limit: int | None = 2048, batch_rows: int = 1024,
                     resample_dead_every: int = 200, seed: int = 0, batch_size: int = 64,
                     progress: bool = False) -> tuple[Dictionary, DictionaryMetrics]:
    """Train a dictionary on ``layer``'s activations over ``data`` (every position of every example).

    Defaults: ``features = 8 x channels`` and ``k`` = 5% of them (at least 4), ``steps`` Adam
    steps of ``batch_rows`` shuffled rows (see :class:`~.rows.ActivationRows`: memory is bounded
    by its buffer and cache, not by the dataset). The metrics are measured on a fresh pass.
    """
    from .rows import ActivationRows

    rows = ActivationRows(subject, data, layer, limit=limit, batch_rows=batch_rows, batch_size=batch_size,
                          seed=seed, progress=False)
    features = int(features or 8 * rows.dim)
    k = int(k or max(4, round(0.05 * features)))
    if steps < 1:
        raise OptionError(f"steps must be at least 1; got {steps}.")
    bar = None
    if progress:
        from ...progress import progress_bar

        bar = progress_bar(total=steps, desc=f"dictionary on {rows.layer}", unit="step", enabled=True)
    try:
        d, m = train_dictionary(rows, rows.dim, features=features, k=k, steps=steps, lr=lr, seed=seed,
                                resample_dead_every=resample_dead_every, layer=rows.layer,
                                on_step=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    return d, m
