"""One streaming pass: run the model over a dataset once, feeding every reducer from it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..progress import progress_bar


@dataclass
class Step:
    """What one batch of the pass gives the reducers."""

    batch: object  # neuronscope.data.Batch
    activations: dict[str, torch.Tensor]
    logits: torch.Tensor  # outputs before a final squash module (the raw output for regression)


def stream(subject, data, layers: Sequence[str] = (), *, limit: int | None = None,
           batch_size: int = 64, desc: str = "forward pass", progress: bool = True) -> Iterator[Step]:
    """Yield one :class:`Step` per batch: a single forward pass gives activations and outputs."""
    total = min(len(data), limit) if limit is not None else len(data)
    bar = progress_bar(total=total, desc=desc, unit="ex", enabled=progress)
    try:
        for batch in data.batches(batch_size, limit=limit):
            with torch.no_grad():
                if layers:
                    with subject.capture(layers) as cap:
                        logits = subject.logits(batch.x)
                    acts = dict(cap.items())
                else:
                    acts, logits = {}, subject.logits(batch.x)
            bar.update(len(batch.ids))
            yield Step(batch, acts, logits)
    finally:
        bar.close()
