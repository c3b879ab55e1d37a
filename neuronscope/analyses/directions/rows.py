"""A layer's activations over the data as a stream of shuffled rows (one row per example and position).

What a sparse autoencoder trains on: every spatial position of every example is a row of C
numbers. Rows from consecutive examples are highly correlated, so they pass through a shuffle
buffer of at most ``buffer`` rows (memory bounded by the buffer, not by the dataset), and come out
in batches of ``batch_rows``. Calling the returned object again starts a fresh epoch with a new
shuffle order. When a whole epoch is at most ``cache_rows`` rows, the first epoch keeps them and
later epochs reshuffle that copy instead of running the model again (memory stays bounded by
``cache_rows``); a larger dataset is streamed through the model every epoch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ...errors import NeuronscopeError, OptionError
from ..stream import stream


def to_rows(acts: torch.Tensor) -> torch.Tensor:
    """(N, C, *S) -> (N * prod(S), C), example-major then position; (N, C) unchanged."""
    if acts.ndim == 2:
        return acts
    c = acts.shape[1]
    return acts.reshape(acts.shape[0], c, -1).transpose(1, 2).reshape(-1, c)


def from_rows(rows: torch.Tensor, like: torch.Size | tuple) -> torch.Tensor:
    """Inverse of :func:`to_rows` for a tensor of shape ``like`` = (N, C', *S) with C' = rows' width."""
    n, rest = like[0], tuple(like[2:])
    if not rest:
        return rows.reshape(n, -1)
    return rows.reshape(n, int(np.prod(rest)), -1).transpose(1, 2).reshape(n, -1, *rest)


class ActivationRows:
    """Callable: each call is one epoch, an iterator of ``(batch_rows, C)`` float32 tensors."""

    def __init__(self, subject, data, layer: str, *, limit: int | None = None, batch_rows: int = 1024,
                 buffer: int = 65536, batch_size: int = 64, cache_rows: int = 262144, seed: int = 0,
                 progress: bool = False):
        if batch_rows < 1 or buffer < batch_rows:
            raise OptionError(f"need 1 <= batch_rows <= buffer; got batch_rows={batch_rows}, buffer={buffer}.")
        self.subject, self.data, self.limit = subject, data, limit
        self.batch_rows, self.buffer, self.batch_size = int(batch_rows), int(buffer), batch_size
        info = subject.layer(layer)
        if info.channels is None:
            raise OptionError(f"Layer {info.name!r} has no tensor output to read rows from.")
        self.layer, self.dim = info.name, int(info.channels)
        self.positions = int(np.prod(info.spatial)) if info.spatial else 1
        self.seed, self.epoch, self.progress = seed, 0, progress
        self.examples = 0  # examples read in the last finished epoch
        self.cache_rows = int(cache_rows)
        self._cache: torch.Tensor | None = None
        self.passes = 0  # forward passes over the data so far

    def __call__(self) -> Iterator[torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        if self._cache is not None:
            pool = self._cache[torch.from_numpy(rng.permutation(self._cache.shape[0]))]
            for i in range(0, pool.shape[0], self.batch_rows):
                yield pool[i:i + self.batch_rows]
            return
        self.passes += 1
        keep: list[torch.Tensor] | None = []
        kept = 0
        held: list[torch.Tensor] = []
        n_held = n_examples = 0
        with self.subject.borrowed():
            for step in stream(self.subject, self.data, [self.layer], limit=self.limit, batch_size=self.batch_size,
                               desc=f"rows of {self.layer}", progress=self.progress, spread=True):
                acts = step.activations[self.layer]
                acts = acts[0] if isinstance(acts, tuple) else acts
                n_examples += acts.shape[0]
                held.append(to_rows(acts.detach()).float().cpu())
                n_held += held[-1].shape[0]
                if keep is not None:
                    kept += held[-1].shape[0]
                    keep = keep + [held[-1]] if kept <= self.cache_rows else None
                if n_held >= self.buffer:
                    pool = torch.cat(held)
                    pool = pool[torch.from_numpy(rng.permutation(pool.shape[0]))]
                    # Emit all but a remainder smaller than one batch, which stays to mix with later rows.
                    cut = (pool.shape[0] // self.batch_rows) * self.batch_rows
                    if cut == pool.shape[0]:
                        cut -= self.batch_rows
                    for i in range(0, cut, self.batch_rows):
                        yield pool[i:i + self.batch_rows]
                    held, n_held = [pool[cut:]], pool.shape[0] - cut
        if n_examples == 0:
            raise NeuronscopeError("No examples were read from the data: no activation rows.")
        self.examples = n_examples
        if keep is not None:
            self._cache = torch.cat(keep)
        if held:
            pool = torch.cat(held)
            pool = pool[torch.from_numpy(rng.permutation(pool.shape[0]))]
            for i in range(0, pool.shape[0], self.batch_rows):
                yield pool[i:i + self.batch_rows]
