"""How many rows an attribution method should put through the model in one forward pass.

Captum's gradient methods expand every input into ``evaluations`` copies (integration steps or
noise samples) and, unless told otherwise, push all ``evaluations * N`` rows through the model in
one pass; its perturbation methods default to one perturbation per pass. Neither default is good:
on a CPU a 1,600-row pass is slower per row than a 32-row one (caches) and needs gigabytes for the
activations kept for backward, while on a GPU small passes leave the device idle. This module
measures the model on the real inputs and picks the size, within a memory limit.

What Captum 0.9.0 does with the arguments (``captum/attr/_utils/batching.py``,
``_core/noise_tunnel.py``, ``_core/feature_ablation.py``):

* ``internal_batch_size`` (IntegratedGradients, LayerConductance, InternalInfluence) is split into
  whole steps: each pass takes ``max(1, internal_batch_size // N)`` steps of all N inputs, so rows
  per pass are a multiple of N and never fewer than N (a smaller value only warns and uses N). The
  last pass takes the remaining steps. LayerConductance integrates ``n_steps + 1`` points in chunks
  that share their boundary step and needs at least 2 steps per pass (2N rows).
* ``nt_samples_batch_size`` (NoiseTunnel, e.g. SmoothGrad) counts noise samples per input, not rows:
  a pass has ``nt_samples_batch_size * N`` rows, at least N; the remainder runs as one extra pass.
  Chunked runs draw the noise in different pieces, so they equal the unchunked result only in
  distribution, not bit for bit.
* GradientShap has no batching argument at all (it runs NoiseTunnel without one): a caller can
  only chunk it by splitting the inputs or the samples itself. (neuronscope runs SmoothGrad,
  VarGrad and gradient SHAP through :mod:`.sampling` instead, with Captum's ``Saliency`` for the
  gradients: passes of the chosen ``rows``, and draws that do not depend on them.)
* ``perturbations_per_eval`` (Occlusion, FeatureAblation): each pass evaluates that many
  perturbations of all N inputs, ``perturbations_per_eval * N`` rows, at least 1 (N rows); the
  inputs are expanded to the full size once, so a value above the number of perturbations only
  costs memory.

The choice, for ``k`` = evaluations (or perturbations) per input per pass, ``rows = k * N``:

1. **Override.** ``override`` (rows for the gradient methods, perturbations per evaluation for the
   perturbation ones) is used as given, rounded down to what Captum would do with it (whole steps,
   at least the minimum) and clipped to the whole job (a bigger value only wastes memory).
2. **Memory.** A warm-up pass on ``min(N, 4)`` rows sums the bytes of every per-row tensor autograd
   saves for backward (``torch.autograd.graph.saved_tensors_hooks``; this needs no module, so it
   works with any differentiable ``forward``) and, when ``model`` is given, of every module's output
   (forward hooks); both are de-duplicated by storage and counted only for tensors whose first
   dimension is the row count and that are not parameters. ``bytes_per_row`` is the larger of the
   two, times ``GRADIENT_FACTOR`` (gradients of the activations exist alongside them during
   backward), plus ``INPUT_COPIES`` copies of an input row (Captum's scaled/noisy inputs, their
   gradients, the products); for perturbation methods (no backward) the factor is 1. A forward
   that keeps nothing for backward and gets no ``model`` falls back to the input plus the output.
   Against the peak RSS of Captum IG at 32 to 256 rows per pass on the benchmark's CNN (64x64)
   and ResNet (128x128), the memory per extra row was about 1.2x the saved bytes (2.0 and 8.0 MiB)
   where the estimate says 4.3 and 15.5 MiB: about 2x on the safe side. The limit is ``MEMORY_FRACTION``
   (1/4) of free memory: ``torch.cuda.mem_get_info`` plus the caching allocator's unused reserve on
   CUDA, ``MemAvailable`` from ``/proc/meminfo`` on Linux CPUs, ``FALLBACK_FREE`` (2 GiB of free
   memory, so a 512 MiB limit) elsewhere. No size whose estimate exceeds the limit is measured or
   chosen, however fast; when even the smallest exceeds it, the smallest is chosen and the reason
   says so (only splitting the input batch can go lower).
3. **Measurement.** Candidates ``k = kmin, 2 kmin, 4 kmin, ...`` up to ``evaluations`` (itself
   included: Captum's default). Each gets ONE timed pass on the real inputs repeated ``k`` times:
   forward + backward to the input of the predicted-class score (what IG's passes do), or a
   no-grad forward for perturbation methods. The warm-up pass takes the one-off costs (lazy
   initialisation, first backward); ``2 kmin`` is timed before ``kmin`` so that the first large
   pass's extra cost (fresh memory pages) never falls on the smallest size (it can only make the
   choice more conservative), then the sizes go up. Timing stops at the first candidate
   that is not ``TOLERANCE`` (3%) cheaper per useful row than the best so far (on CPUs per-row cost
   is flat or rises with the batch, so this usually stops after ``kmin`` and ``2 kmin``), at the
   memory limit, or when the next pass would take the calibration past ``CALIBRATION_SHARE`` (6%)
   of the job's rows; ``kmin`` and ``2 kmin`` are always measured when they fit in memory. The
   choice is the smallest measured ``k`` whose cost per useful row is within ``TOLERANCE`` of the
   lowest (smaller passes: less memory, and the noise of one timed pass is a few percent anyway).
   "Per useful row" is per row except for LayerConductance (``overlap=True``), whose chunks repeat
   their boundary step. For IG with N = 32 and 50 steps on a CPU: 4 + 32 + 64 = 100 rows of
   calibration against 1,600 of the job (6%), and nothing on later calls (below).
4. **Even chunks.** ``k`` is then lowered to the smallest value that needs the same number of
   passes (50 steps at ``k = 16`` -> 4 passes -> 13 steps each), which saves memory for free.
5. **Cache.** The measurements (per-row seconds and bytes per row) are kept in a module-level dict
   under ``(kind, key, N, torch threads, ...)``; a later call with the same ``key`` re-derives the
   choice from them (with the current free memory and its own ``evaluations``) without running the
   model, ``source="cached"``. ``key=None`` never caches. :func:`clear_cache` empties it.

Calibration calls ``forward`` a few times on the real inputs: it must not have side effects (eval
mode: BatchNorm statistics, dropout). Nothing is printed.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from neuronscope.errors import OptionError

MEMORY_FRACTION = 0.25  # share of free memory one pass may use
FALLBACK_FREE = 2 * 2**30  # bytes of free memory assumed when it cannot be read
GRADIENT_FACTOR = 2.0  # activations kept for backward + their gradients during backward
INPUT_COPIES = 4  # input-sized tensors per row besides the model's (scaled inputs, grads, products)
TOLERANCE = 0.03  # sizes within 3% per row count as equally fast: the smaller one wins
CALIBRATION_SHARE = 0.06  # timed rows beyond the first two candidates: at most this share of the job
WARMUP_ROWS = 4

_CACHE: dict = {}


@dataclass
class BatchChoice:
    """What to hand Captum, and why."""

    size: int  # internal_batch_size (rows per forward) for gradient methods, perturbations_per_eval for perturbation ones
    rows: int  # rows per forward pass this implies
    per_row_s: dict[int, float]  # measured seconds per row at each candidate row count
    bytes_per_row: int  # estimated memory per row (forward activations kept for backward, + gradients)
    memory_limit: int  # bytes allowed for one chunk
    reason: str  # one sentence for the report/CLI: why this size
    source: str  # "measured", "cached", "override"
    per_input: int = 1  # evaluations per input in one pass (steps; NoiseTunnel's nt_samples_batch_size; perturbations)
    calibration_rows: int = 0  # rows this call put through the model to choose (0 when cached or overridden)


@dataclass
class _Measured:
    per_row_s: dict[int, float]  # k (per input) -> seconds per row
    bytes_per_row: int
    stopped: str = ""  # why bigger sizes were not timed: "no gain", "budget" (or "" when all were)


# ---------------------------------------------------------------------------- memory
def free_memory(device: torch.device | str | None = None) -> int:
    """Bytes of memory free for new tensors on ``device`` (CPU: the system's MemAvailable)."""
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(0, unused))
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
    return FALLBACK_FREE


def memory_limit(device: torch.device | str | None = None) -> int:
    """Bytes one pass may use: ``MEMORY_FRACTION`` of :func:`free_memory`."""
    return int(free_memory(device) * MEMORY_FRACTION)


def clear_cache() -> None:
    _CACHE.clear()


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _storage(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def _estimate(forward, xw: torch.Tensor, model: nn.Module | None, backward: bool) -> int:
    """Warm-up pass on the rows ``xw`` (forward, and backward when ``backward``): the estimated
    bytes per row of one pass. Counts the per-row tensors autograd saves and, with ``model``, the
    module outputs (see the module docstring); the tensors are held until the count is done so a
    freed buffer whose address is reused is not mistaken for one already counted."""
    rows = len(xw)
    fixed = set()
    if model is not None:
        fixed = {_storage(t)[0] for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}
    outputs: dict[int, int] = {}
    held: list[torch.Tensor] = []

    def count(t, into: dict) -> None:
        if t.dim() == 0 or t.shape[0] != rows or t.is_leaf or (t._base is not None and t._base.is_leaf):
            return  # not per row, or a parameter/the input (inputs are counted as INPUT_COPIES)
        ptr, nbytes = _storage(t)
        if ptr not in fixed:
            into[ptr] = nbytes
            held.append(t)

    def pack(t):
        if isinstance(t, torch.Tensor):
            count(t, saved)
        return t

    def hook(_module, _inputs, out):
        for t in _tensors(out):
            count(t, outputs)

    handles = [m.register_forward_hook(hook) for m in model.modules()] if model is not None else []
    xr = xw.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = forward(xr)
    finally:
        for h in handles:
            h.remove()
    kept = max(sum(saved.values()), sum(outputs.values())) / rows
    held.clear()
    if backward and isinstance(out, torch.Tensor) and out.requires_grad:
        with torch.enable_grad():
            torch.autograd.grad(_score(out), xr)
    _syncer(xw)()
    input_row = xw[0].numel() * xw.element_size()
    if kept == 0 and isinstance(out, torch.Tensor):  # nothing saved and no model: the output alone
        kept = out.numel() * out.element_size() / rows
    factor, copies = (GRADIENT_FACTOR, INPUT_COPIES) if backward else (1.0, INPUT_COPIES - 1)
    return int(math.ceil(factor * kept + copies * input_row))


# ---------------------------------------------------------------------------- timing
def _syncer(x: torch.Tensor) -> Callable[[], None]:
    if x.device.type == "cuda":
        return lambda: torch.cuda.synchronize(x.device)
    return lambda: None


def _score(out: torch.Tensor) -> torch.Tensor:
    """The predicted-class score summed over rows (what IG with target="predicted" backpropagates)."""
    return out.reshape(len(out), -1).max(1).values.sum()


def _repeat(x: torch.Tensor, k: int) -> torch.Tensor:
    return x.repeat((k,) + (1,) * (x.dim() - 1)) if k > 1 else x


def _time_gradient(forward, x: torch.Tensor, k: int) -> float:
    xr = _repeat(x, k).detach().requires_grad_(True)
    sync = _syncer(x)
    sync()
    t0 = time.perf_counter()
    with torch.enable_grad():
        out = forward(xr)
        torch.autograd.grad(_score(out), xr)
    sync()
    return time.perf_counter() - t0


def _time_forward(forward, x: torch.Tensor, k: int) -> float:
    xr = _repeat(x, k)
    sync = _syncer(x)
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        forward(xr)
    sync()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------- the plan of a job
class _Job:
    """Evaluations per input ``total``, per-pass ``k`` at least ``kmin``; ``overlap``: consecutive
    passes share one step (LayerConductance integrates ``total + 1`` points that way)."""

    def __init__(self, total: int, n: int, kmin: int, overlap: bool):
        self.n, self.overlap = n, overlap
        self.points = total + 1 if overlap else total  # evaluations Captum splits
        self.kmin = min(kmin, self.points)

    def passes(self, k: int) -> int:
        if self.overlap:
            return max(1, math.ceil((self.points - 1) / max(1, k - 1)))
        return math.ceil(self.points / k)

    def rows_total(self, k: int) -> int:
        return (self.points + (self.passes(k) - 1 if self.overlap else 0)) * self.n

    def cost(self, k: int, per_row: float) -> float:
        """Seconds for the whole job at ``k`` per pass, from a per-row cost."""
        return per_row * self.rows_total(k)

    def candidates(self) -> list[int]:
        ks, k = [], self.kmin
        while k < self.points:
            ks.append(k)
            k *= 2
        return ks + [self.points]

    def even(self, k: int) -> int:
        """The smallest per-pass count that needs as few passes as ``k``."""
        p = self.passes(k)
        if self.overlap:
            return max(self.kmin, math.ceil((self.points - 1) / p) + 1)
        return max(self.kmin, math.ceil(self.points / p))

    def clip(self, k: int) -> int:
        return max(self.kmin, min(k, self.points))


def _mib(b: float) -> str:
    if b >= 2**20:
        return f"{b / 2**20:.1f} MiB" if b < 10 * 2**20 else f"{b / 2**20:.0f} MiB"
    return f"{b / 2**10:.0f} KiB" if b >= 2**10 else f"{b:.0f} bytes"


def _validate_count(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise OptionError(f"{what} must be a positive whole number, got {value!r}.")
    return int(value)


def _measure(job: _Job, forward, x: torch.Tensor, model, limit: int, gradient: bool) -> tuple[_Measured, int]:
    """Warm-up + memory estimate, then the timed candidates; (measurements, rows run)."""
    n = job.n
    w = min(n, WARMUP_ROWS)
    bytes_per_row = _estimate(forward, x[:w], model, backward=gradient)
    spent = w
    fits = [k for k in job.candidates() if k * n * bytes_per_row <= limit]
    m = _Measured({}, bytes_per_row)
    if len(fits) <= 1:  # nothing to compare: the only size that fits (or the smallest there is)
        return m, spent
    budget = CALIBRATION_SHARE * job.rows_total(job.kmin) + w
    timer = _time_gradient if gradient else _time_forward
    # The second candidate goes first: the first big pass also pays for fresh memory pages and
    # first-use costs, and that handicap must not fall on the smallest size.
    order = [fits[1], fits[0], *fits[2:]]
    for i, k in enumerate(order):
        if i >= 2 and spent + k * n > budget:
            m.stopped = "budget"
            break
        m.per_row_s[k] = timer(forward, x, k) / (k * n)
        spent += k * n
        if i == 0:
            continue
        costs = {kk: job.cost(kk, v) for kk, v in m.per_row_s.items()}
        top = max(costs)
        if costs[top] > (1 - TOLERANCE) * min(c for kk, c in costs.items() if kk != top):
            m.stopped = "no gain" if i < len(order) - 1 else ""
            break  # the largest size so far is not clearly cheaper: larger ones will not be either
    return m, spent


def _lead(k: int, n: int, what: str, unit: str) -> str:
    if unit == "rows":
        return f"{k * n} rows per pass ({k} step{'s' if k > 1 else ''} or sample{'s' if k > 1 else ''} per input)"
    return f"{what} {k} ({k * n} rows per pass)"


def _decide(job: _Job, m: _Measured, limit: int, what: str, unit: str) -> tuple[int, str]:
    """(k, reason) from the measurements."""
    n = job.n
    fits = [k for k in job.candidates() if k * n * m.bytes_per_row <= limit]
    mem = f"estimated {_mib(m.bytes_per_row)} per row, limit {_mib(limit)} per pass"
    if not fits:
        k = job.kmin
        return k, (f"{_lead(k, n, what, unit)}: the smallest Captum allows, although over the memory limit ({mem}); "
                   "only splitting the input batch would use less")
    timed = {k: v for k, v in m.per_row_s.items() if k in fits}
    if not timed:
        k = job.even(fits[0])
        if len(job.candidates()) == 1:
            why = "the only size possible"
        else:
            why = "the only size within the memory limit" if len(fits) == 1 else "no timings"
        return k, f"{_lead(k, n, what, unit)}: {why} ({mem})"
    costs = {k: job.cost(k, v) for k, v in timed.items()}
    low = min(costs.values())
    k = min(k for k, c in costs.items() if c <= (1 + TOLERANCE) * low)
    pick = ("fastest per row" if min(costs, key=costs.get) == k
            else f"the smallest within {100 * TOLERANCE:.0f}% of the fastest per row")
    measured = ", ".join(f"{1e3 * v:.3g} at {kk * n}" for kk, v in sorted(timed.items()))
    bigger = [kk for kk in job.candidates() if kk > max(timed)]
    if bigger and bigger[0] not in fits:
        tail = f"; {bigger[0] * n} rows would exceed the memory limit ({mem})"
    elif bigger and m.stopped == "budget":
        tail = "; bigger passes not timed (calibration budget)"
    elif bigger:
        tail = "; bigger passes not timed (no gain from the last doubling)"
    else:
        tail = ""
    return job.even(k), f"{_lead(job.even(k), n, what, unit)}: {pick} (ms per row: {measured}){tail}"


def _choose(kind: str, forward, x: torch.Tensor, total: int, override, key, model, *, kmin: int,
            overlap: bool, gradient: bool, what: str, unit: str) -> BatchChoice:
    if not isinstance(x, torch.Tensor) or x.dim() == 0 or len(x) == 0:
        raise OptionError("Batching needs a non-empty input batch (a tensor with the inputs along dimension 0).")
    n = len(x)
    job = _Job(total, n, kmin, overlap)
    limit = memory_limit(x.device)
    if override is not None:
        value = _validate_count(override, "The batch size override" if unit == "rows"
                                else "The perturbations-per-evaluation override")
        asked = value // n if unit == "rows" else value
        k = job.clip(asked)
        size = k * n if unit == "rows" else k
        if size == value:
            note = ""
        elif asked > k:
            note = f" ({value} given, cut to the whole job: more would only take memory)"
        elif asked < k:
            note = f" ({value} given, raised to Captum's minimum)"
        else:
            note = f" ({value} given, rounded down to whole steps as Captum does)"
        return BatchChoice(size=size, rows=k * n, per_row_s={}, bytes_per_row=0, memory_limit=limit,
                           reason=f"{_lead(k, n, what, unit)}: set by the caller{note}",
                           source="override", per_input=k)
    cache_key = None if key is None else (kind, key, n, overlap, torch.get_num_threads(), str(x.device), x.dtype)
    measured = _CACHE.get(cache_key) if cache_key is not None else None
    spent, source = 0, "cached"
    if measured is None:
        measured, spent = _measure(job, forward, x, model, limit, gradient)
        source = "measured"
        if cache_key is not None:
            _CACHE[cache_key] = measured
    k, reason = _decide(job, measured, limit, what, unit)
    return BatchChoice(size=k * n if unit == "rows" else k, rows=k * n,
                       per_row_s={kk * n: v for kk, v in sorted(measured.per_row_s.items())},
                       bytes_per_row=measured.bytes_per_row, memory_limit=limit,
                       reason=reason + (" (measured earlier for this model and input shape)" if source == "cached" else ""),
                       source=source, per_input=k, calibration_rows=spent)


# ---------------------------------------------------------------------------- API
def gradient_batch(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, evaluations: int,
                   override: int | None = None, key=None, model: nn.Module | None = None,
                   overlap: bool = False) -> BatchChoice:
    """Rows per forward+backward pass for IntegratedGradients / LayerConductance (``size`` is
    ``internal_batch_size``) and NoiseTunnel (pass ``per_input`` as ``nt_samples_batch_size``).

    ``forward(x_raw) -> (N, K)`` differentiable outputs; ``x`` the real input batch (N, ...);
    ``evaluations`` the steps or samples per input (Captum's ``n_steps`` / ``nt_samples``);
    ``override`` rows per pass (rounded down to whole steps, at least N); ``key`` a hashable naming
    the model, input shape, dtype, device and method, under which the measurements are cached;
    ``model`` the module behind ``forward`` (its module outputs refine the memory estimate);
    ``overlap=True`` for LayerConductance (chunks share a step, at least 2 steps per pass).
    See the module docstring for how the size is chosen.
    """
    total = _validate_count(evaluations, "evaluations")
    return _choose("gradient", forward, x, total, override, key, model, kmin=2 if overlap else 1, overlap=overlap,
                   gradient=True, what="internal_batch_size", unit="rows")


def perturbation_batch(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, perturbations: int,
                       override: int | None = None, key=None, model: nn.Module | None = None) -> BatchChoice:
    """Perturbations per evaluation for Occlusion / FeatureAblation (``size`` is
    ``perturbations_per_eval``; ``rows = size * N``). ``perturbations``: how many the method makes
    (occlusion windows, feature groups); ``override`` perturbations per evaluation. No gradients:
    the candidates are timed as no-grad forward passes. See the module docstring.
    """
    total = _validate_count(perturbations, "perturbations")
    return _choose("perturbation", forward, x, total, override, key, model, kmin=1, overlap=False, gradient=False,
                   what="perturbations_per_eval", unit="perturbations")


__all__ = ["BatchChoice", "gradient_batch", "perturbation_batch", "free_memory", "memory_limit", "clear_cache"]
