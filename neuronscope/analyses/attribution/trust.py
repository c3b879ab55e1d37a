"""Can this explanation be trusted? Two checks on attribution maps.

- **Model randomisation** (Adebayo et al. 2018, "Sanity Checks for Saliency Maps", NeurIPS):
  re-initialise the network's layers from the output side down and see whether the maps change.
  A method whose maps survive a randomised model explains the input, not the model. With many
  layers one step randomises everything at once and the maps' entropy is compared too (eMPRT,
  Hedström et al. 2023, "Sanity Checks Revisited: An Exploration to Repair the Model Parameter
  Randomisation Test").
- **Deletion and insertion** (Petsiuk et al. 2018, "RISE: Randomized Input Sampling for
  Explanation of Black-box Models", BMVC): remove the features a map calls most important (or put
  them into a baseline) and follow the model's score; a faithful map moves it faster than a random
  ordering does.

Both take callables, so they work with any attribution method::

    attribute(subject, x_raw, targets) -> maps   # x's shape, or (N, H, W) for layer methods
    score(rows, which) -> (R,)   # the explained output of each row; row r is a version of input
                                 # which[r] (targets can differ per input)
"""

from __future__ import annotations

import copy
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...errors import InputShapeError, NeuronscopeError, OptionError, UnsupportedError
from ...subject import Subject

Attribute = Callable[[Subject, torch.Tensor, list[int]], torch.Tensor]
Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

MODES = ("auto", "cascade", "emprt")


# ----------------------------------------------------------------------------- helpers
def _finite_or_none(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _per_feature(maps: np.ndarray, input_shape: tuple[int, ...], *, absolute: bool) -> np.ndarray:
    """(N, P) importance per feature: a column for vectors, a position (channels summed) otherwise."""
    m = np.abs(maps) if absolute else maps
    if len(input_shape) > 1 and tuple(maps.shape[1:]) == tuple(input_shape):
        m = m.sum(axis=1)
    return m.reshape(maps.shape[0], -1)


def _average_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 1..P of a 1-D array, ties sharing their average rank."""
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse.reshape(-1)]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two 1-D arrays.

    Undefined when a side is constant: then 1.0 if both rankings are the same (nothing changed),
    0.0 otherwise. NaN when a map holds non-finite values.
    """
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    ra, rb = _average_ranks(a), _average_ranks(b)
    if np.array_equal(ra, rb):
        return 1.0
    da, db = ra - ra.mean(), rb - rb.mean()
    na, nb = math.sqrt(float(da @ da)), math.sqrt(float(db @ db))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.clip((da @ db) / (na * nb), -1.0, 1.0))


def _mean_finite(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _entropies(features: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row's |importance| normalised to sum 1; NaN for empty maps."""
    a = np.abs(features)
    total = a.sum(axis=1, keepdims=True)
    ok = (total[:, 0] > 0) & np.isfinite(total[:, 0])
    p = np.divide(a, total, out=np.zeros_like(a), where=total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return np.where(ok, h, np.nan)


def _check_int(name: str, value, low: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise OptionError(f"{name} must be an integer >= {low} ({what}); got {value!r}.")
    return int(value)


def _check_batch(x, input_shape: tuple[int, ...] | None, what: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim < 2 or (input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape)):
        expected = f"(N, {', '.join(map(str, input_shape))})" if input_shape else "(N, ...)"
        raise InputShapeError(f"{what} has shape {tuple(x.shape)}; expected {expected}.")
    return x


# ----------------------------------------------------------------------------- randomisation
@dataclass
class RandomisationCheck:
    """Result of :func:`randomisation_check`."""

    method: str
    mode: str  # "cascade" or "emprt"
    layers: list[str]  # parameterised modules randomised, in the order randomised (output side first)
    correlations: list[float]  # per step: mean Spearman correlation of |maps|, original vs randomised
    signed_correlations: list[float]  # same with signed maps
    final: float  # correlation after the last step (everything randomised)
    entropy_ratio: float | None  # mean entropy of fully randomised maps / of the original maps
    flagged: bool  # final >= threshold: the maps barely depend on the weights
    threshold: float
    n_inputs: int
    seconds: float

    def row(self) -> dict:
        """A flat, JSON-able summary for a results table."""
        return {
            "method": self.method, "mode": self.mode, "layers_randomised": len(self.layers),
            "top_layer": self.layers[0] if self.layers else None,
            "first_step": _finite_or_none(self.correlations[0]) if self.correlations else None,
            "final": _finite_or_none(self.final),
            "final_signed": _finite_or_none(self.signed_correlations[-1]) if self.signed_correlations else None,
            "entropy_ratio": _finite_or_none(self.entropy_ratio), "flagged": bool(self.flagged),
            "threshold": float(self.threshold), "n_inputs": int(self.n_inputs),
            "seconds": round(float(self.seconds), 3),
        }


def parameterised_layers(subject: Subject) -> list[str]:
    """Modules with parameters of their own, output side first (the order a cascade randomises).

    Forward-execution order comes from ``subject.layers``; a module called several times counts
    once, at its last call. Containers with parameters of their own (e.g. ``in_proj_weight`` of
    ``nn.MultiheadAttention``) count too; the root module's own parameters are not randomised.
    """
    model = subject.model
    seen: dict[str, int] = {}
    for pos, info in enumerate(subject.layers):
        m = model.get_submodule(info.module_name)
        if any(True for _ in m.parameters(recurse=False)):
            seen[info.module_name] = pos  # the last call wins
    return sorted(seen, key=seen.get, reverse=True)


def _layer_seed(seed: int, name: str) -> int:
    # Each module gets its own seed, so a layer is randomised identically whether the cascade
    # reaches it step by step or eMPRT randomises everything at once.
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


def _fork_devices(model: nn.Module) -> list[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


def _randomise(model: nn.Module, name: str, seed: int) -> None:
    """Re-initialise one module's own parameters in place, under a seeded, forked RNG.

    A leaf module with ``reset_parameters`` is reset by it (its framework initialisation; for
    normalisation layers this also resets running statistics and the affine parameters to 1 and
    0, so in eval mode a reset BatchNorm is the identity up to eps). Anything else gets normal
    noise with each parameter's original standard deviation.
    """
    module = model.get_submodule(name)
    leaf = not any(True for _ in module.children())
    with torch.random.fork_rng(devices=_fork_devices(model)), torch.no_grad():
        torch.manual_seed(_layer_seed(seed, name))
        if leaf and callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
            return
        own = [p for p in module.parameters(recurse=False) if p.is_floating_point()]
        # A parameter without spread of its own (an all-zero bias, a scalar) borrows the module's.
        values = torch.cat([p.detach().flatten().double() for p in own]) if own else torch.zeros(1)
        fallback = float(values.std()) if values.numel() > 1 else float(values.abs().max())
        if not math.isfinite(fallback) or fallback == 0.0:
            fallback = 1.0
        for p in own:
            std = float(p.std()) if p.numel() > 1 else 0.0
            p.normal_(0.0, std if math.isfinite(std) and std > 0.0 else fallback)


def randomisation_check(
    subject: Subject,
    attribute: Attribute,
    x,
    targets: Sequence[int],
    *,
    method: str = "",
    mode: str = "auto",
    max_cascade: int = 8,
    threshold: float = 0.5,
    seed: int = 0,
) -> RandomisationCheck:
    """Model-parameter randomisation test: do the maps change when the weights are randomised?

    Works on a deep copy of the model; the user's model is never touched. ``mode="cascade"``
    randomises the parameterised layers one by one from the output side, cumulatively, and
    records a correlation per step; ``"emprt"`` randomises everything in one step; ``"auto"``
    cascades unless there are more than ``max_cascade`` such layers. Every ``attribute`` call runs
    under the same seeded RNG, so stochastic methods (SmoothGrad) see the same noise each time.
    """
    if mode not in MODES:
        raise OptionError(f"mode must be one of {', '.join(map(repr, MODES))}; got {mode!r}.")
    max_cascade = _check_int("max_cascade", max_cascade, 1, "the most layers randomised one by one")
    seed = _check_int("seed", seed, 0, "seeds the randomisation")
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        t = float("nan")
    if not -1.0 <= t <= 1.0:
        raise OptionError(f"threshold must be a rank correlation in [-1, 1]; got {threshold!r}.")
    threshold = t
    x = _check_batch(x, subject.input_shape, "x")
    targets = [int(t) for t in targets]
    if len(targets) != x.shape[0]:
        raise OptionError(f"{len(targets)} targets given for {x.shape[0]} inputs: give one per input.")
    if x.shape[0] == 0:
        raise OptionError("randomisation_check needs at least one input.")

    start = time.perf_counter()
    work = subject.with_model(copy.deepcopy(subject.model))
    names = parameterised_layers(work)
    if not names:
        raise UnsupportedError(f"{subject.name} has no parameterised layers to randomise.")
    if mode == "auto":
        mode = "cascade" if len(names) <= max_cascade else "emprt"
    steps = [[n] for n in names] if mode == "cascade" else [list(names)]

    def maps() -> np.ndarray:
        with torch.random.fork_rng(devices=_fork_devices(work.model)):
            torch.manual_seed(seed)
            m = attribute(work, x, list(targets))
        m = torch.as_tensor(m).detach()
        ok = (tuple(m.shape) == tuple(x.shape)
              or (len(subject.input_shape) > 1 and tuple(m.shape) == (x.shape[0], *subject.input_shape[1:])))
        if not ok:
            raise NeuronscopeError(
                f"The attribution method{f' {method!r}' if method else ''} returned maps of shape "
                f"{tuple(m.shape)}; expected {tuple(x.shape)} or "
                f"{(x.shape[0], *subject.input_shape[1:])}."
            )
        return m.to(device="cpu", dtype=torch.float64).numpy()

    def features(m: np.ndarray, absolute: bool) -> np.ndarray:
        return _per_feature(m, subject.input_shape, absolute=absolute)

    original = maps()
    orig_abs, orig_signed = features(original, True), features(original, False)
    correlations, signed = [], []
    for group in steps:
        for name in group:
            _randomise(work.model, name, seed)
        current = maps()
        cur_abs, cur_signed = features(current, True), features(current, False)
        correlations.append(_mean_finite([_spearman(a, b) for a, b in zip(orig_abs, cur_abs)]))
        signed.append(_mean_finite([_spearman(a, b) for a, b in zip(orig_signed, cur_signed)]))

    h_orig, h_rand = _entropies(orig_abs), _entropies(cur_abs)
    e_orig, e_rand = _mean_finite(h_orig), _mean_finite(h_rand)
    ratio = e_rand / e_orig if math.isfinite(e_orig) and math.isfinite(e_rand) and e_orig > 0 else None
    final = correlations[-1]
    return RandomisationCheck(
        method=method, mode=mode, layers=list(names), correlations=correlations,
        signed_correlations=signed, final=final, entropy_ratio=ratio,
        flagged=bool(math.isfinite(final) and final >= threshold), threshold=threshold,
        n_inputs=int(x.shape[0]), seconds=time.perf_counter() - start,
    )


# ----------------------------------------------------------------------------- deletion / insertion
@dataclass
class DeletionInsertion:
    """Result of :func:`deletion_insertion`; rows are inputs, columns the fractions."""

    fractions: np.ndarray  # (S+1,) from 0 to 1
    deletion: np.ndarray  # (N, S+1) score as the most important features are replaced by the baseline
    insertion: np.ndarray  # (N, S+1) score as the most important features are put into the baseline
    deletion_auc: np.ndarray  # (N,)
    insertion_auc: np.ndarray  # (N,)
    random_deletion_auc: np.ndarray  # (N,) mean over random orderings; NaN when there were none
    random_insertion_auc: np.ndarray  # (N,)
    random_deletion: np.ndarray | None = None  # (N, S+1) mean random-order curves, for plots
    random_insertion: np.ndarray | None = None

    def gains(self) -> tuple[np.ndarray, np.ndarray]:
        """(random deletion AUC - deletion AUC, insertion AUC - random insertion AUC): > 0 beats random."""
        return self.random_deletion_auc - self.deletion_auc, self.insertion_auc - self.random_insertion_auc

    def row(self, i: int) -> dict:
        """Input ``i`` as a flat, JSON-able row."""
        dg, ig = self.gains()
        return {
            "input": int(i),
            "score": _finite_or_none(float(self.deletion[i, 0])),
            "baseline_score": _finite_or_none(float(self.deletion[i, -1])),
            "deletion_auc": _finite_or_none(float(self.deletion_auc[i])),
            "insertion_auc": _finite_or_none(float(self.insertion_auc[i])),
            "random_deletion_auc": _finite_or_none(float(self.random_deletion_auc[i])),
            "random_insertion_auc": _finite_or_none(float(self.random_insertion_auc[i])),
            "deletion_gain": _finite_or_none(float(dg[i])),
            "insertion_gain": _finite_or_none(float(ig[i])),
        }


def _auc(fractions: np.ndarray, curves: np.ndarray) -> np.ndarray:
    """Trapezoid area under each row of ``curves`` over ``fractions``."""
    return ((curves[:, 1:] + curves[:, :-1]) * 0.5 * np.diff(fractions)).sum(axis=1)


def _scores(score: Score, rows: torch.Tensor, n: int, which: torch.Tensor) -> np.ndarray:
    s = torch.as_tensor(score(rows, which)).detach()
    if s.numel() != n:
        raise NeuronscopeError(f"score returned {s.numel()} values for {n} inputs; it must return one per row.")
    return s.reshape(n).to(device="cpu", dtype=torch.float64).numpy()


def deletion_insertion(
    score: Score,
    x,
    maps,
    baseline,
    *,
    steps: int = 16,
    random_orders: int = 2,
    seed: int = 0,
    batch_size: int = 256,
) -> DeletionInsertion:
    """Deletion and insertion curves of attribution maps, and the same for random orderings.

    A feature is a column of a vector input, or a position of an image (all channels together,
    importance = the map summed over channels, or an (N, H, W) map as given). Features are taken
    most positive first, ties in index order; at fraction ``f`` the top ``k = round(f * P)`` of the
    ``P`` features are replaced by ``baseline`` (deletion) or pasted into it (insertion). The
    endpoints are ``score(x)`` and ``score(baseline)`` themselves.
    """
    steps = _check_int("steps", steps, 1, "points on each curve after the first")
    random_orders = _check_int("random_orders", random_orders, 0, "random orderings to compare with; 0 skips them")
    batch_size = _check_int("batch_size", batch_size, 1, "rows per call of score")
    seed = _check_int("seed", seed, 0, "seeds the random orderings")
    x = _check_batch(x, None, "x")
    n, shape = x.shape[0], tuple(x.shape[1:])
    maps = torch.as_tensor(maps).detach()
    if tuple(maps.shape) == (n, *shape):
        importance = maps.sum(dim=1) if len(shape) > 1 else maps
    elif len(shape) > 1 and tuple(maps.shape) == (n, *shape[1:]):
        importance = maps
    else:
        also = f" or {(n, *shape[1:])}" if len(shape) > 1 else ""
        raise InputShapeError(f"maps have shape {tuple(maps.shape)}; expected {(n, *shape)}{also} for x of shape {tuple(x.shape)}.")
    baseline = torch.as_tensor(baseline).to(device=x.device, dtype=x.dtype)
    if tuple(baseline.shape) == shape:
        baseline = baseline.expand(n, *shape)
    if tuple(baseline.shape) != tuple(x.shape):
        raise InputShapeError(f"baseline has shape {tuple(baseline.shape)}; expected x's shape {tuple(x.shape)} (or {shape}).")
    if n == 0:
        raise OptionError("deletion_insertion needs at least one input.")

    spatial = shape[1:] if len(shape) > 1 else shape  # the feature grid
    imp = importance.reshape(n, -1).to(device="cpu", dtype=torch.float64).numpy()
    n_feat = imp.shape[1]
    fractions = np.linspace(0.0, 1.0, steps + 1)
    ks = np.floor(fractions * n_feat + 0.5).astype(np.int64)  # round half up, the same everywhere
    ks[0], ks[-1] = 0, n_feat

    # ranks[o, i, f]: position of feature f in ordering o for input i (0 = removed first).
    order = np.argsort(-imp, axis=1, kind="stable")
    rng = np.random.default_rng(seed)
    orders = [order] + [np.argsort(rng.random((n, n_feat)), axis=1) for _ in range(random_orders)]
    ranks = np.empty((len(orders), n, n_feat), dtype=np.int64)
    for o, ord_ in enumerate(orders):
        np.put_along_axis(ranks[o], ord_, np.arange(n_feat)[None, :].repeat(n, 0), axis=1)
    ranks_t = torch.from_numpy(ranks).to(x.device)

    with torch.no_grad():
        def ends(source):
            return np.concatenate([_scores(score, source[s : s + batch_size], min(batch_size, n - s),
                                           torch.arange(s, min(s + batch_size, n), device=x.device))
                                   for s in range(0, n, batch_size)])

        first, last = ends(x), ends(baseline)

        # Interior points only: every (ordering, input, step, deletion/insertion) is one row.
        inner = np.arange(1, steps)
        curves = np.empty((len(orders), 2, n, steps + 1))
        curves[:, 0, :, 0], curves[:, 0, :, -1] = first, last
        curves[:, 1, :, 0], curves[:, 1, :, -1] = last, first
        jobs = np.stack(np.meshgrid(np.arange(len(orders)), np.arange(2), np.arange(n), inner, indexing="ij"), -1).reshape(-1, 4)
        for s in range(0, len(jobs), batch_size):
            job = jobs[s : s + batch_size]
            o, kind, i, j = (torch.from_numpy(job[:, c]).to(x.device) for c in range(4))
            k = torch.from_numpy(ks).to(x.device)[j]
            top = ranks_t[o, i] < k[:, None]  # (B, P): the k most important features
            top = top.reshape(len(job), *([1] if len(shape) > 1 else []), *spatial)
            delete = kind[:, None].reshape(-1, *([1] * len(shape))) == 0
            # deletion: top features from the baseline, the rest from x; insertion: the reverse
            take_base = torch.where(delete, top, ~top)
            rows = torch.where(take_base, baseline[i], x[i])
            curves[job[:, 0], job[:, 1], job[:, 2], job[:, 3]] = _scores(score, rows, len(job), i)

    deletion, insertion = curves[0, 0], curves[0, 1]
    if random_orders:
        rand_del, rand_ins = curves[1:, 0].mean(0), curves[1:, 1].mean(0)
        r_del_auc = np.mean([_auc(fractions, c) for c in curves[1:, 0]], axis=0)
        r_ins_auc = np.mean([_auc(fractions, c) for c in curves[1:, 1]], axis=0)
    else:
        rand_del = rand_ins = None
        r_del_auc = r_ins_auc = np.full(n, np.nan)
    return DeletionInsertion(
        fractions=fractions, deletion=deletion, insertion=insertion,
        deletion_auc=_auc(fractions, deletion), insertion_auc=_auc(fractions, insertion),
        random_deletion_auc=r_del_auc, random_insertion_auc=r_ins_auc,
        random_deletion=rand_del, random_insertion=rand_ins,
    )
