"""What the first layer looks for: its weights as pictures, and how smooth they are.

The first layer is the only one whose weights can be read directly as pictures in input space.
Well-trained networks show smooth, structured filters (edges, colour blobs, Gabor-like
patterns); noisy filters that look like random initialisation suggest a network that was not
trained long enough or was regularized too weakly.

References
----------
cs231n, "Understanding and Visualizing Convolutional Neural Networks", section "Visualizing the
first-layer weights" (https://cs231n.github.io/understanding-cnn/).
"""

from __future__ import annotations

import base64
import copy
import html
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn

from neuronscope.errors import NeuronscopeError, UnsupportedError
from neuronscope.imaging import (
    heatmap_image,
    max_abs,
    symmetric_scale,
    tile_grid,
    to_uint8,
    upscale_factor,
    upscale_nearest,
)

KINDS = ("conv-rgb", "conv-grey", "conv-multi", "dense-image", "dense-table")

#: Smallest spatial side on which the smoothness score means something.
MIN_SCORED_SIDE = 5
#: A filter is noisy when it is no smoother than this percentile of freshly initialised ones.
REFERENCE_PERCENTILE = 5.0
#: A filter is dead when its L2 norm is below this fraction of the layer's median norm.
DEAD_RELATIVE_NORM = 1e-3
#: The picture shows at most this many tiles (the numbers always cover every filter).
MAX_TILES = 256
TILE_PAD = 2  # white pixels between tiles


# --- smoothness -----------------------------------------------------------------------------


def score_is_defined(kernel_size: Sequence[int]) -> bool:
    """Whether the smoothness score is meaningful for a kernel of this spatial size.

    Every side longer than 1 must be at least ``MIN_SCORED_SIDE`` (5x5, 7x7, a 1-D kernel of
    length 5, ...). On 3x3 every non-constant frequency lies above the cut, so every
    non-constant kernel would score exactly 1.
    """
    sides = [int(s) for s in kernel_size if int(s) > 1]
    return bool(sides) and all(s >= MIN_SCORED_SIDE for s in sides)


def smoothness_scores(kernels: np.ndarray) -> np.ndarray | None:
    """High-frequency energy share of each kernel in ``(N, C, kh, kw)``: higher means noisier.

    For every input-channel slice ``k`` of a filter, remove its mean and take the power
    spectrum ``P(f) = |FFT2(k)|^2``. With ``f = (fy, fx)`` in cycles per pixel (Nyquist = 0.5)
    and radius ``r = sqrt(fy^2 + fx^2)``, the score of the filter is::

        sum over channels c and frequencies with r > 0.25 of P_c(f)
        -----------------------------------------------------------
        sum over channels c and frequencies with r > 0    of P_c(f)

    i.e. the share of its non-DC spectral energy above half the Nyquist frequency, pooled over
    input channels (an energy-weighted average of the per-channel shares, so that a nearly
    empty channel cannot dominate). A constant or all-zero filter scores 0; white noise scores
    about the share of frequency bins above the cut (~0.83 on 5x5 and 7x7); a smooth blob or a
    Gabor of long wavelength scores near 0.

    Returns ``None`` when the kernels are too small for the score to mean anything (see
    :func:`score_is_defined`). See cs231n, "Visualizing the first-layer weights".
    """
    kernels = np.asarray(kernels, dtype=np.float64)
    kh, kw = kernels.shape[-2:]
    if not score_is_defined((kh, kw)):
        return None
    centered = kernels - kernels.mean(axis=(-2, -1), keepdims=True)
    power = np.abs(np.fft.fft2(centered)) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(kh), np.fft.fftfreq(kw), indexing="ij")
    radius = np.hypot(fy, fx)
    high = (power * (radius > 0.25)).sum(axis=(-3, -2, -1))
    total = (power * (radius > 0)).sum(axis=(-3, -2, -1))
    # A (numerically) constant filter has only rounding noise left after mean removal.
    raw = (kernels**2).sum(axis=(-3, -2, -1)) * kh * kw
    flat = total <= 1e-12 * raw
    return np.where(flat | (total == 0), 0.0, high / np.where(total == 0, 1.0, total))


def smoothness_score(kernel: np.ndarray) -> float | None:
    """:func:`smoothness_scores` of one ``(kh, kw)`` or ``(C, kh, kw)`` kernel."""
    kernel = np.asarray(kernel, dtype=np.float64)
    kernel = kernel.reshape((1,) * (4 - kernel.ndim) + kernel.shape)
    scores = smoothness_scores(kernel)
    return None if scores is None else float(scores[0])


def reference_scores(
    layer: nn.Module,
    to_kernels: Callable[[torch.Tensor], np.ndarray],
    samples: int = 2000,
    seed: int = 0,
) -> np.ndarray | None:
    """Smoothness scores of at least ``samples`` freshly initialised filters shaped like ``layer``'s.

    Re-initialises a CPU deep copy of the layer with its own ``reset_parameters()`` under a
    fixed seed; the user's layer and the global random state are left untouched. ``None`` when
    the layer has no ``reset_parameters``.
    """
    if not callable(getattr(layer, "reset_parameters", None)):
        return None
    fresh = copy.deepcopy(layer).to("cpu")
    batches, count = [], 0
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        while count < samples:
            fresh.reset_parameters()
            batches.append(to_kernels(fresh.weight))
            count += len(batches[-1])
    return smoothness_scores(np.concatenate(batches))


# --- reading the layer ----------------------------------------------------------------------


def _layout(layer: nn.Module, name: str, input_shape: tuple[int, ...]):
    """The kind of picture for this layer and a function from its weight to the numbers shown."""
    if not isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)):
        raise UnsupportedError(
            f"First-layer filters can be drawn for Conv1d, Conv2d and Linear layers; "
            f"{name} is a {type(layer).__name__}."
        )
    weight = layer.weight
    if isinstance(weight, nn.parameter.UninitializedParameter):
        raise UnsupportedError(f"{name} is a lazy layer not initialised yet: run one forward pass first.")
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        channels = weight.shape[1]
        if isinstance(layer, nn.Conv2d) and channels == 3:
            kind = "conv-rgb"
        else:
            kind = "conv-grey" if channels == 1 else "conv-multi"
        return kind, lambda w: _numpy(w).reshape(w.shape[0], channels, -1, w.shape[-1])

    features = weight.shape[1]
    if len(input_shape) in (2, 3) and math.prod(input_shape) == features:
        image_shape = input_shape if len(input_shape) == 3 else (1, *input_shape)
        return "dense-image", lambda w: _numpy(w).reshape(w.shape[0], *image_shape)
    if input_shape and input_shape[-1] == features:
        return "dense-table", _numpy
    raise UnsupportedError(
        f"{name} is a Linear layer with {features} inputs, but the model's input shape is "
        f"{tuple(input_shape)}: give the input shape the layer reads ((C, H, W) for images, "
        "(columns,) for tables)."
    )


def _numpy(weight: torch.Tensor) -> np.ndarray:
    return weight.detach().to("cpu", torch.float64).numpy().copy()


def _kernel_picture(kernels: np.ndarray, rgb: bool, scale: float) -> tuple[Image.Image, int]:
    """Kernels ``(N, C, kh, kw)`` as tiles on one symmetric scale (0 = mid grey); tiles shown."""
    n, c, h, w = kernels.shape
    per_filter = 1 if rgb or c == 1 else c
    shown = max(1, min(n, MAX_TILES // per_filter))
    unit = symmetric_scale(kernels[:shown], scale)
    if rgb:
        tiles, ncols = unit.transpose(0, 2, 3, 1), None
    elif c == 1:
        tiles, ncols = unit[:, 0], None
    else:  # one row per filter, one tile per input channel
        tiles, ncols = unit.reshape(shown * c, h, w), c
    factor = upscale_factor(h, w)
    tiles = np.stack([upscale_nearest(to_uint8(t), factor) for t in tiles])
    grid = tile_grid(tiles, ncols=ncols, pad=TILE_PAD, pad_value=255)
    return Image.fromarray(grid, "RGB" if rgb else "L"), shown


# --- the result -----------------------------------------------------------------------------


@dataclass
class FiltersResult:
    """First-layer weights as a picture, with the numbers behind it.

    ``weights`` holds what is drawn: kernels ``(filters, channels, kh, kw)`` (a Conv1d kernel
    has ``kh == 1``; a dense row on image input is reshaped to the input's ``(C, H, W)``), or
    the ``(units, columns)`` matrix of a dense layer on table input. ``scores`` (higher =
    noisier, see :func:`smoothness_scores`) and everything derived from them are ``None``
    where the score is not defined. ``scale`` is the ``max |w|`` that maps onto the ends of the
    colour scale (0 is mid grey, or white in the heatmap).
    """

    layer: str
    kind: str
    kernel_shape: tuple[int, ...]
    norms: np.ndarray = field(repr=False)
    dead: np.ndarray = field(repr=False)
    scores: np.ndarray | None = field(repr=False)
    noisy: np.ndarray | None = field(repr=False)
    noisy_fraction: float | None
    reference_p5: float | None
    reference_samples: int
    scale: float
    shown: int
    image: Image.Image = field(repr=False)
    weights: np.ndarray = field(repr=False)
    columns: list[str] | None = None

    @property
    def n_filters(self) -> int:
        return len(self.norms)

    @property
    def score_defined(self) -> bool:
        return self.scores is not None

    def column_importance(self) -> np.ndarray | None:
        """Mean ``|weight|`` of each input column over the units (dense-table only)."""
        return np.abs(self.weights).mean(axis=0) if self.kind == "dense-table" else None

    def tables(self) -> dict[str, dict[str, list]]:
        """Plain columns, one row per filter (and per input column for a dense-table layer)."""
        filters: dict[str, list] = {
            "unit": [f"{self.layer}:{i}" for i in range(self.n_filters)],
            "filter": list(range(self.n_filters)),
            "norm": [float(v) for v in self.norms],
            "dead": [bool(v) for v in self.dead],
        }
        if self.scores is not None:
            filters["score"] = [float(v) for v in self.scores]
        if self.noisy is not None:
            filters["noisy"] = [bool(v) for v in self.noisy]
        tables = {"filters": filters}
        importance = self.column_importance()
        if importance is not None:
            tables["columns"] = {
                "column": list(self._column_names()),
                "mean_abs_weight": [float(v) for v in importance],
            }
        return tables

    def images(self) -> dict[str, Image.Image]:
        return {"filters": self.image}

    def summary(self) -> dict:
        """JSON-able headline numbers and a one-sentence ``finding``."""
        return {
            "layer": self.layer,
            "kind": self.kind,
            "filters": self.n_filters,
            "kernel_shape": list(self.kernel_shape),
            "score_defined": self.score_defined,
            "median_score": _float(np.median(self.scores)) if self.score_defined else None,
            "noisy_fraction": _float(self.noisy_fraction),
            "noisy_count": int(self.noisy.sum()) if self.noisy is not None else None,
            "reference_p5": _float(self.reference_p5),
            "reference_samples": self.reference_samples,
            "dead_count": int(self.dead.sum()),
            "scale_maxabs": _float(self.scale),
            "shown": self.shown,
            "finding": self.finding(),
        }

    def finding(self) -> str:
        dead = int(self.dead.sum())
        tail = f"; {dead} of {self.n_filters} are dead (near-zero weights)." if dead else "."
        name = self.layer if self.layer[:1].isalpha() else f"layer {self.layer}"
        if self.kind == "dense-table":
            importance = self.column_importance()
            top = [self._column_names()[i] for i in np.argsort(-importance)[:3]]
            return (
                f"{name} weighs {_join(top)} most heavily (mean |weight| over its "
                f"{self.n_filters} units; comparable only if the columns share a scale){tail}"
            )
        kh, kw = self.weights.shape[-2:]
        size = f"{kh}x{kw}" if kh > 1 else f"length-{kw}"
        if not self.score_defined:
            return (
                f"{name}'s {size} kernels are too small for the smoothness score to be meaningful "
                f"(it needs {MIN_SCORED_SIDE}x{MIN_SCORED_SIDE} or larger): judge them by the picture{tail}"
            )
        if self.noisy is None:
            return (
                f"{name}'s median smoothness score is {np.median(self.scores):.2f} (0 = smooth, "
                f"~0.83 = white noise); no fresh initialisation was available to compare against{tail}"
            )
        count, pct = int(self.noisy.sum()), f"{self.noisy_fraction:.0%}"
        if count == 0:
            return (
                f"{name}'s filters are smooth: none is as noisy as the smoothest 95% of freshly "
                f"initialised filters of the same shape{tail}"
            )
        if self.noisy_fraction < 0.25:
            return (
                f"Most of {name}'s filters are smooth, but {count} of {self.n_filters} ({pct}) are noisy "
                f"(no smoother than fresh random initialisation){tail}"
            )
        return (
            f"{pct} of {name}'s filters are noisy (no smoother than fresh random initialisation): "
            f"the network may be under-trained or under-regularized{tail}"
        )

    def _column_names(self) -> list[str]:
        return self.columns or [f"column {i}" for i in range(self.weights.shape[1])]

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG")
        return buffer.getvalue()

    def _repr_html_(self) -> str:
        summary = self.summary()
        finding = summary.pop("finding")
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
            f"<td>{html.escape(_fmt(v))}</td></tr>"
            for k, v in summary.items()
            if v is not None
        )
        png = base64.b64encode(self._repr_png_()).decode("ascii")
        return (
            "<div class='neuronscope-filters'>"
            f"<p>{html.escape(finding)}</p>"
            f"<img src='data:image/png;base64,{png}' alt='first-layer filters of "
            f"{html.escape(self.layer)}' style='image-rendering:pixelated;max-width:100%'>"
            f"<table>{rows}</table></div>"
        )


def _float(v) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


# --- entry points ---------------------------------------------------------------------------


def analyze_filters_of(
    layer: nn.Module,
    name: str,
    input_shape: Sequence[int],
    columns: Sequence[str] | None = None,
    *,
    reference_samples: int = 2000,
    seed: int = 0,
) -> FiltersResult:
    """Draw ``layer``'s filters and score their smoothness against fresh initialisations.

    ``layer`` is a Conv1d, Conv2d or Linear module (read only, never modified); ``input_shape``
    is one example's shape (``(C, H, W)`` images, ``(columns,)`` tables); ``columns`` names the
    input columns of a dense layer on table input. A filter is noisy when its score is at least
    the ``REFERENCE_PERCENTILE``-th percentile of ``reference_samples`` freshly initialised
    filters of the same shape (drawn under ``seed``), so a freshly initialised layer comes out
    about 95% noisy. See cs231n, "Understanding and Visualizing CNNs".
    """
    input_shape = tuple(int(s) for s in input_shape)
    kind, to_numbers = _layout(layer, name, input_shape)
    weights = to_numbers(layer.weight)
    if not np.isfinite(weights).all():
        raise NeuronscopeError(
            f"{name}'s weights contain NaN or infinite values: the model may have diverged in "
            "training, or the wrong weights were loaded."
        )
    columns = list(columns) if columns is not None else None
    if kind == "dense-table" and columns is not None and len(columns) != weights.shape[1]:
        raise NeuronscopeError(
            f"{len(columns)} column names given, but {name} reads {weights.shape[1]} inputs: "
            "give one name per input column."
        )

    flat = weights.reshape(len(weights), -1)
    norms = np.linalg.norm(flat, axis=1)
    median = float(np.median(norms))
    dead = norms < DEAD_RELATIVE_NORM * median if median > 0 else norms == 0
    scale = max_abs(weights)

    scores = noisy = fraction = p5 = None
    n_reference = 0
    if kind == "dense-table":
        # One row per input column so that its name reads horizontally; one column per unit.
        image, shown = heatmap_image(weights.T, scale, row_labels=columns), len(weights)
    else:
        rgb = kind == "conv-rgb" or (kind == "dense-image" and weights.shape[1] == 3)
        image, shown = _kernel_picture(weights, rgb, scale)
        scores = smoothness_scores(weights)
        reference = None if scores is None else reference_scores(layer, to_numbers, reference_samples, seed)
        if reference is not None:
            n_reference = len(reference)
            p5 = float(np.percentile(reference, REFERENCE_PERCENTILE))
            noisy = scores >= p5
            fraction = float(noisy.mean())

    return FiltersResult(
        layer=name,
        kind=kind,
        kernel_shape=tuple(weights.shape[1:] if kind == "dense-image" else layer.weight.shape[1:]),
        norms=norms,
        dead=dead,
        scores=scores,
        noisy=noisy,
        noisy_fraction=fraction,
        reference_p5=p5,
        reference_samples=n_reference,
        scale=scale,
        shown=shown,
        image=image,
        weights=weights,
        columns=columns,
    )


def analyze_filters(subject, **options) -> FiltersResult:
    """First-layer filters of a :class:`~neuronscope.subject.Subject`; see :func:`analyze_filters_of`."""
    name, layer = subject.first_layer()
    return analyze_filters_of(layer, name, subject.input_shape, subject.columns, **options)
