"""The numbers that go beside every visualization, so that nobody has to trust a picture.

- **Ratio to the real maximum.** The unit's score on the optimized image, reduced over positions
  the same way the dataset-examples pass ranked real inputs (spatial ``max`` or ``mean``), divided
  by the largest score any real input reached. Far above 1 means the picture is the unit's *mode*,
  a place real data never goes (the "nightmare" caveat of Olah et al. 2017): read it as what the
  unit is tuned to, not as a typical input.
- **Seed consistency.** Erhan et al. (2009) observed that activation maximization from different
  random starts tends to reach the same optimum. We measure it instead of assuming it: the mean
  pairwise cosine similarity of the K renders' activation vectors in the unit's own layer
  (channels averaged over positions), and the mean pairwise Pearson correlation of their pixels.
  High features with low pixels means "the same feature, drawn at different places or phases".
- **Reachability.** A unit behind a ReLU still at or below zero after the redirected warm-up is
  reported as unreachable (no picture), never shown as a flat grey image.
"""

from __future__ import annotations

import numpy as np
import torch

from ...subject import Subject


def reduce_map(act: torch.Tensor, reduce: str) -> torch.Tensor:
    """(B, C, *spatial) -> (B, C) by spatial max or mean (what the examples pass ranks by)."""
    flat = act.reshape(act.shape[0], act.shape[1] if act.ndim > 1 else 1, -1)
    return flat.amax(2) if reduce == "max" else flat.mean(2)


def unit_scores(subject: Subject, layer: str, raw: np.ndarray, reduce: str = "max") -> np.ndarray:
    """(B, C) reduced scores of every unit of ``layer`` on raw inputs."""
    with torch.no_grad():
        act = subject.activations(torch.as_tensor(raw), [layer])[layer]
    return reduce_map(act, reduce).double().cpu().numpy()


def real_maxima_from_store(store, layer: str) -> tuple[dict[int, float], str] | None:
    """Each unit's largest real score in the stored dataset-examples section, and its reduction."""
    if store is None or not store.has("examples"):
        return None
    summary = store.summary("examples")
    if layer not in [entry["layer"] for entry in summary.get("layers", [])]:
        return None
    ex = store.table("examples", "examples")
    best: dict[int, float] = {}
    for lay, unit, kind, rank, score in zip(ex["layer"], ex["unit"], ex["kind"], ex["rank"], ex["score"]):
        if lay == layer and kind == "top" and rank == 0 and score is not None:
            best[int(unit.rsplit(":", 1)[1])] = float(score)
    return best, summary.get("reduce", "max")


def real_maxima_from_data(subject: Subject, data, layer: str, *, reduce: str = "max", limit: int = 2048,
                          batch_size: int = 128) -> dict[int, float]:
    """Each unit's largest score over (up to ``limit``) examples of ``data``."""
    best = None
    with torch.no_grad():
        for batch in data.batches(batch_size, limit=limit):
            s = unit_scores(subject, layer, batch.x, reduce).max(0)
            best = s if best is None else np.maximum(best, s)
    return {} if best is None else {u: float(v) for u, v in enumerate(best)}


def _pairwise_mean(sim: np.ndarray) -> float:
    k = sim.shape[0]
    if k < 2:
        return float("nan")
    return float((sim.sum() - np.trace(sim)) / (k * (k - 1)))


def seed_consistency(subject: Subject, layer: str | None, raw: np.ndarray) -> dict[str, float]:
    """Similarity of K renders of one objective: in the layer's feature space and in pixels."""
    x = np.asarray(raw, dtype=np.float64).reshape(len(raw), -1)
    x = x - x.mean(1, keepdims=True)
    x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
    out = {"pixels": _pairwise_mean(x @ x.T)}
    if layer is not None:
        f = unit_scores(subject, layer, raw, "mean")
        f = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-12)
        out["features"] = _pairwise_mean(f @ f.T)
    return out
