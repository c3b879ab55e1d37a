"""One streaming pass: run the model over a dataset once, feeding every reducer from it.

An interrupted pass resumes: :func:`run_pass` checkpoints the reducers' states (plain numpy
arrays, written atomically) with the position reached, and a rerun with the same key starts
from there instead of from the first example.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from ..progress import progress_bar


@dataclass
class Step:
    """What one batch of the pass gives the reducers."""

    batch: object  # neuronscope.data.Batch
    activations: dict[str, torch.Tensor]
    logits: torch.Tensor  # outputs before a final squash module (the raw output for regression)


def stream(subject, data, layers: Sequence[str] = (), *, limit: int | None = None, start: int = 0,
           stop: int | None = None, batch_size: int = 64, reduce=None, desc: str = "forward pass",
           progress: bool = True, spread: bool = False) -> Iterator[Step]:
    """Yield one :class:`Step` per batch: a single forward pass gives activations and outputs.

    With ``reduce`` the activations are what it returns for each layer output, computed inside
    the hook (no copy of the feature maps). With ``spread`` a ``limit`` smaller than the data takes
    examples spread evenly over it (:func:`spread_batches`) rather than the first ones."""
    remaining = max((len(data) if stop is None else min(stop, len(data))) - start, 0)
    total = min(remaining, limit) if limit is not None else remaining
    bar = progress_bar(total=total, desc=desc, unit="ex", enabled=progress)
    try:
        batches = spread_batches(data, limit, batch_size) if spread and start == 0 else \
            data.batches(batch_size, limit=limit, start=start, **({} if stop is None else {"stop": stop}))
        for batch in batches:
            with torch.no_grad():
                if layers:
                    with subject.capture(layers, reduce) as cap:
                        logits = subject.logits(batch.x)
                    acts = dict(cap.items())
                else:
                    acts, logits = {}, subject.logits(batch.x)
            bar.update(len(batch.ids))
            yield Step(batch, acts, logits)
    finally:
        bar.close()


def spread_batches(data, limit: int | None, batch_size: int = 64) -> Iterator:
    """Batches of up to ``limit`` examples spread evenly over the data, for analyses that look at a
    sample: folders list one class after another, so the first ``limit`` examples alone could all be
    of one class. Unreadable examples are left out."""
    from ..errors import NeuronscopeError

    ids = list(data.ids())
    if limit is None or int(limit) >= len(ids):
        yield from data.batches(batch_size)
        return
    picked = [ids[i] for i in np.unique(np.linspace(0, len(ids) - 1, max(int(limit), 1)).round().astype(int))]
    for i in range(0, len(picked), batch_size):
        chunk = picked[i:i + batch_size]
        try:
            yield data.get(chunk)
        except NeuronscopeError:
            good = []
            for one in chunk:
                try:
                    data.get([one])
                    good.append(one)
                except NeuronscopeError:
                    pass
            if good:
                yield data.get(good)


def run_pass(subject, data, layers: Sequence[str], reducers: Mapping[str, object], *,
             reduce=None, limit: int | None = None, batch_size: int = 64, checkpoint: Path | None = None,
             key: str = "", every_s: float = 30.0, desc: str = "data pass", progress: bool = True,
             engine=None) -> int:
    """Feed every reducer (``add(step)``) from one pass; returns the number of examples seen.

    With ``checkpoint``, reducer states (``state_dict()``/``load_state_dict()``) are saved there
    at most every ``every_s`` seconds; a later call with the same ``key`` resumes from them.
    A reducer with a false ``ready`` attribute (still collecting its calibration sample) holds
    the checkpoint back. The caller removes the checkpoint once the results are safely stored
    (:func:`clear_checkpoint`). ``engine`` (see :mod:`neuronscope.engines`) runs the pass
    elsewhere, sharded, with the same result.
    """
    if engine is not None:
        return engine.run_pass(subject, data, layers, reducers, reduce=reduce, limit=limit, batch_size=batch_size,
                               checkpoint=checkpoint, key=key, desc=desc, progress=progress)
    start = done = 0
    if checkpoint is not None and Path(checkpoint).exists():
        with np.load(checkpoint, allow_pickle=False) as saved:
            state = {k: saved[k] for k in saved.files}
        if str(state.get("_key")) == key:
            for name, red in reducers.items():
                prefix = f"{name}::"
                red.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            start, done = int(state["_stop"]), int(state["_done"])
    last_save = time.monotonic()
    stop = start
    for step in stream(subject, data, layers, limit=None if limit is None else max(limit - done, 0), start=start,
                       batch_size=batch_size, reduce=reduce, desc=desc, progress=progress):
        for red in reducers.values():
            red.add(step)
        done += len(step.batch.ids)
        stop = step.batch.stop if step.batch.stop is not None else stop + len(step.batch.ids)
        ready = all(getattr(red, "ready", True) for red in reducers.values())
        if checkpoint is not None and ready and time.monotonic() - last_save >= every_s:
            save_checkpoint(checkpoint, reducers, key=key, stop=stop, done=done)
            last_save = time.monotonic()
    return done


def save_checkpoint(path: Path, reducers: Mapping[str, object], *, key: str, stop: int, done: int) -> None:
    state = {"_key": np.array(key), "_stop": np.array(stop), "_done": np.array(done)}
    for name, red in reducers.items():
        for k, v in red.state_dict().items():
            state[f"{name}::{k}"] = np.asarray(v)
    buf = io.BytesIO()
    np.savez(buf, **state)
    atomic_write(path, buf.getvalue())


def shards_folder(checkpoint: Path) -> Path:
    """Where a sharded pass (``neuronscope.engines``) keeps its finished shards: beside the checkpoint."""
    return Path(checkpoint).parent / f"{Path(checkpoint).name}.shards"


def clear_checkpoint(checkpoint: Path) -> None:
    """Remove a finished pass's checkpoint (and a sharded pass's finished shards beside it)."""
    import shutil

    Path(checkpoint).unlink(missing_ok=True)
    shutil.rmtree(shards_folder(checkpoint), ignore_errors=True)
