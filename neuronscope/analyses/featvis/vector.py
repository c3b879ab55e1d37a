"""Activation maximization for networks on plain numeric vectors, kept inside the data's region.

Activation maximization (Erhan, Bengio, Courville & Vincent 2009, "Visualizing Higher-Layer
Features of a Deep Network") asks which input a unit responds to most, by gradient ascent on the
input. For images a parameterization and transforms keep the answer image-like (:mod:`.render`).
For a vector of numeric columns the question needs a **region**: a ReLU network is piecewise
linear, so along almost any ray its units grow without bound and the unconstrained "optimum" is
at infinity, an input no data set contains. Here the search stays inside a :class:`Region` of
the data: a per-column box (ranges seen) or a Mahalanobis ball (within ``r`` standard deviations
of the data, correlations included).

:func:`maximize` runs projected gradient ascent, batched over targets and random starts, in the
region's natural coordinates (box: columns scaled by their widths; ball: whitened), with Adam and
a projection after every step, then polishes with normalized projected-gradient steps of
decreasing size, which land a linear objective exactly on its closed-form optimum. Inputs are in
the data's own units: the :class:`Subject` applies its ``(x - mean) / std`` itself.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import numpy as np
import torch

from ...errors import DataError, InputShapeError, NeuronscopeError, UnsupportedError
from ...progress import progress_bar
from ...subject import Subject
from .objectives import Objective
from .redirect import RedirectedReLU
from .render import _output_kind
from .tap import Tap

#: Polishing steps, and their sizes in region units (box widths, ball radii), largest first.
_POLISH_SIZES = np.logspace(2, -6, 48)


def _vector(value, what: str) -> np.ndarray:
    v = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if v.ndim != 1:
        raise InputShapeError(f"{what} must be one value per column (shape (F,)); got shape {v.shape}.")
    if not np.isfinite(v).all():
        raise DataError(f"{what} contains NaN or infinite values.")
    return v


@dataclass(eq=False)
class Region:
    """Where an input may go: a per-column ``box`` or a Mahalanobis ``ball``.

    ``mean`` and ``std`` describe the data (used for profiles); a ball is centred on ``mean``.
    Build one with :meth:`box`, :meth:`ball` or :meth:`from_data`.
    """

    kind: str
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    cov: np.ndarray | None = None
    radius: float | None = None
    chol: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.kind == "box":
            self.lo, self.hi = np.broadcast_arrays(_vector(self.lo, "lo"), _vector(self.hi, "hi"))
            self.lo, self.hi = self.lo.copy(), self.hi.copy()
            bad = np.flatnonzero(self.lo > self.hi)
            if bad.size:
                raise DataError(f"box bounds need lo <= hi in every column; columns {bad[:10].tolist()} "
                                "have lo > hi.")
        elif self.kind == "ball":
            self.mean = _vector(self.mean, "mean")
            f = self.mean.size
            self.cov = np.asarray(self.cov, dtype=np.float64)
            if self.cov.shape != (f, f):
                raise InputShapeError(f"cov must be ({f}, {f}) to match a mean of {f} columns; "
                                      f"got shape {self.cov.shape}.")
            if not np.isfinite(self.cov).all():
                raise DataError("cov contains NaN or infinite values.")
            if self.radius is None or not np.isfinite(self.radius) or self.radius <= 0:
                raise DataError(f"radius must be a positive number of standard deviations "
                                f"(a Mahalanobis distance); got {self.radius}.")
            self.radius = float(self.radius)
            try:
                self.chol = np.linalg.cholesky((self.cov + self.cov.T) / 2)
            except np.linalg.LinAlgError:
                raise DataError("cov is not positive definite: give a covariance matrix, or build the "
                                "region with Region.from_data, which adds a small ridge.") from None
            if self.lo is not None or self.hi is not None:  # a ball clipped to per-column bounds
                self.lo, self.hi = (np.broadcast_to(_vector(v, n), (f,)).copy() for v, n in ((self.lo, "lo"), (self.hi, "hi")))
                if not ((self.lo <= self.mean) & (self.mean <= self.hi)).all():
                    raise DataError("a clipped ball needs its mean inside the bounds lo <= mean <= hi.")
        else:
            raise NeuronscopeError(f"Region kind must be 'box' or 'ball'; got {self.kind!r}.")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None:
                v = _vector(v, name)
                if v.size != self.dim:
                    raise InputShapeError(f"{name} has {v.size} values but the region has {self.dim} "
                                          "columns.")
                setattr(self, name, v)

    # ----------------------------------------------------------------- constructors
    @classmethod
    def box(cls, lo, hi) -> Region:
        """Per-column bounds ``lo <= x <= hi``."""
        return cls("box", lo=lo, hi=hi)

    @classmethod
    def ball(cls, mean, cov, radius: float) -> Region:
        """The Mahalanobis ball ``(x - mean)' cov^-1 (x - mean) <= radius^2``."""
        return cls("ball", mean=mean, cov=cov, radius=radius)

    @classmethod
    def from_data(cls, X, kind: str = "box", radius: float = 3.0, clip: bool = False) -> Region:
        """The box of per-column min/max, or the ball of ``radius`` around the data's mean.

        ``clip=True`` intersects the ball with the box, so no column leaves its observed range (a
        ball alone can propose, say, a negative perimeter in a heavy-tailed column).
        """
        X = np.asarray(X.detach().cpu() if isinstance(X, torch.Tensor) else X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] < 1:
            raise InputShapeError(f"data must be a table of shape (N, F); got shape {X.shape}.")
        if not np.isfinite(X).all():
            raise DataError("data contains NaN or infinite values: drop or impute them first.")
        mean = X.mean(0)
        std = X.std(0, ddof=1) if len(X) > 1 else np.zeros(X.shape[1])
        if kind == "box":
            return cls("box", lo=X.min(0), hi=X.max(0), mean=mean, std=std)
        if kind == "ball":
            if len(X) < 2:
                raise DataError("a ball region needs at least 2 rows of data to estimate a covariance.")
            cov = np.atleast_2d(np.cov(X, rowvar=False))
            trace = float(np.trace(cov))
            if trace <= 0:
                raise DataError("every row of the data is the same: there is no spread to build a ball from.")
            # A tiny ridge so collinear or constant columns still give a Cholesky factor.
            cov = cov + 1e-9 * trace / X.shape[1] * np.eye(X.shape[1])
            bounds = dict(lo=X.min(0), hi=X.max(0)) if clip else {}
            return cls("ball", mean=mean, cov=cov, radius=radius, **bounds)
        raise NeuronscopeError(f"kind must be 'box' or 'ball'; got {kind!r}.")

    # ----------------------------------------------------------------- geometry
    @property
    def dim(self) -> int:
        return int(self.lo.size if self.kind == "box" else self.mean.size)

    def centre_and_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """Per column, what a profile measures from and in: the data's mean and std when known."""
        if self.kind == "ball":
            return self.mean, np.sqrt(np.diag(self.cov)) if self.std is None else self.std
        if self.mean is not None and self.std is not None:
            return self.mean, self.std
        return (self.lo + self.hi) / 2, (self.hi - self.lo) / 2

    def _t(self, a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(a, dtype=like.dtype, device=like.device)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Each row of ``x`` (B, F) moved into the region.

        A box: the exact Euclidean projection (a clamp). A ball: the whitened point ``u`` (``x =
        mean + L u``, ``L`` the Cholesky factor of ``cov``) is scaled back onto the sphere of
        ``radius``.
        """
        if self.kind == "box":
            return torch.clamp(x, self._t(self.lo, x), self._t(self.hi, x))
        return self._decode(self._project_natural(self._encode(x)))

    @property
    def clipped(self) -> bool:
        return self.kind == "ball" and self.lo is not None

    def contains(self, x, tol: float = 1e-6) -> np.ndarray:
        """Whether each row of ``x`` lies in the region, with slack ``tol`` relative to its size."""
        x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
        rows = np.atleast_2d(x)
        if self.kind == "box":
            width = self.hi - self.lo
            slack = tol * np.where(width > 0, width, np.maximum(np.abs(self.lo), 1.0))
            inside = ((rows >= self.lo - slack) & (rows <= self.hi + slack)).all(1)
        else:
            u = np.linalg.solve(self.chol, (rows - self.mean).T).T
            inside = np.linalg.norm(u, axis=1) <= self.radius * (1 + tol)
            if self.clipped:
                slack = tol * np.maximum(self.hi - self.lo, 1e-12)
                inside &= ((rows >= self.lo - slack) & (rows <= self.hi + slack)).all(1)
        return inside if x.ndim > 1 else bool(inside[0])

    # Natural coordinates, where the optimizer works: a box scaled to [0, 1] per column (so steps
    # are fractions of each column's width), a ball whitened to the plain ball of ``radius``.
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "box":
            width = self.hi - self.lo
            return (x - self._t(self.lo, x)) / self._t(np.where(width > 0, width, 1.0), x)
        return torch.linalg.solve_triangular(self._t(self.chol, x), (x - self._t(self.mean, x)).T, upper=False).T

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "box":
            return self._t(self.lo, z) + z * self._t(self.hi - self.lo, z)
        return self._t(self.mean, z) + z @ self._t(self.chol, z).T

    def _project_natural(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "box":
            return z.clamp(0.0, 1.0)
        norm = z.norm(dim=1, keepdim=True)
        z = z * torch.clamp(self.radius / norm.clamp_min(1e-300), max=1.0)
        if self.clipped:
            # Alternating projections (ball, then box): each round stays in the ball because the
            # mean is inside both and the box clamp, a convex step towards it, cannot leave the
            # ball by much; a few rounds end in the intersection up to a tiny slack, and the
            # last step is the box clamp, so every column is always in its observed range.
            lo, hi = self._t(self.lo, z), self._t(self.hi, z)
            for _ in range(8):
                x = torch.clamp(self._decode(z), lo, hi)
                z = self._encode(x)
                norm = z.norm(dim=1, keepdim=True)
                z = z * torch.clamp(self.radius / norm.clamp_min(1e-300), max=1.0)
            z = self._encode(torch.clamp(self._decode(z), lo, hi))
        return z

    def _random_natural(self, n: int, seed: int, dtype, device) -> torch.Tensor:
        """``n`` points drawn uniformly inside the region, in natural coordinates."""
        g = torch.Generator().manual_seed(seed)
        if self.kind == "box":
            z = torch.rand((n, self.dim), generator=g, dtype=torch.float64)
        else:
            d = torch.randn((n, self.dim), generator=g, dtype=torch.float64)
            d = d / d.norm(dim=1, keepdim=True)
            z = d * self.radius * torch.rand((n, 1), generator=g, dtype=torch.float64) ** (1 / self.dim)
        return z.to(dtype=dtype, device=device)

    def _steepest(self, g: torch.Tensor) -> torch.Tensor:
        """The unit ascent direction matching the region's shape: sign for a box, g/|g| for a ball."""
        if self.kind == "box":
            return torch.sign(g)
        return g / g.norm(dim=1, keepdim=True).clamp_min(1e-300)

    def _tangent(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The ascent direction ``g`` without the part that pushes out of the region at its edge."""
        if self.kind == "box":
            return torch.where(((z <= 0) & (g < 0)) | ((z >= 1) & (g > 0)), 0.0, g)
        outward = (g * z).sum(1, keepdim=True)
        on_edge = z.norm(dim=1, keepdim=True) >= self.radius * (1 - 1e-9)
        normal = outward / (self.radius**2) * z
        return torch.where(on_edge & (outward > 0), g - normal, g)

    def _scale(self) -> float:
        return 1.0 if self.kind == "box" else self.radius


@dataclass(eq=False)
class VectorResult:
    """Inputs that maximize an objective, one row per (target, replica)."""

    x: np.ndarray  # (B, F) inputs in the data's own units
    values: np.ndarray  # (B,) objective at x
    start_values: np.ndarray  # (B,) objective at the random starts
    target: np.ndarray  # (B,) which of the objective's targets each row serves
    columns: list[str]
    region_kind: str
    profile: np.ndarray  # (B, F) (x - mean) / std per column
    mean: np.ndarray  # (F,) what the profile measures from
    scale: np.ndarray  # (F,) and in
    objective: str = ""
    steps: int = 0

    def table(self, i: int) -> list[tuple[str, float, float, float]]:
        """Row ``i`` as (column, value, mean, z), most unusual columns first."""
        rows = zip(self.columns, self.x[i].tolist(), self.mean.tolist(), self.profile[i].tolist())
        return sorted(rows, key=lambda r: -abs(r[3]))


def _check(subject: Subject, region: Region, replicas: int, steps: int) -> None:
    shape = subject.input_shape
    if len(shape) != 1:
        raise UnsupportedError(
            f"featvis.vector.maximize is for models on plain numeric vectors (input_shape (F,)); "
            f"this model takes inputs of shape {shape}. For images use the image renderer, "
            "neuronscope.visualize (or neuronscope.featvis.render)."
        )
    if not isinstance(region, Region):
        raise NeuronscopeError(f"region must be a Region (Region.box, Region.ball or Region.from_data); "
                               f"got {type(region).__name__}.")
    if region.dim != shape[0]:
        raise InputShapeError(
            f"The region has {region.dim} columns but the model takes {shape[0]} "
            f"(input_shape {shape}): build the region from data with {shape[0]} columns."
        )
    if replicas < 1 or steps < 0:
        raise NeuronscopeError(f"replicas must be >= 1 and steps >= 0; got replicas={replicas}, steps={steps}.")


def maximize(
    subject: Subject,
    objective: Objective,
    region: Region,
    *,
    replicas: int = 1,
    steps: int = 300,
    lr: float = 0.05,
    seed: int = 0,
    init=None,
    warmup: int = 16,
    progress: bool = False,
) -> VectorResult:
    """Inputs inside ``region`` that maximize ``objective``: ``objective.n * replicas`` rows, row
    ``b`` serving target ``b // replicas``, each from its own random start, or from ``init``
    (``(B, F)`` rows in the data's units, moved into the region). The first ``warmup`` steps use
    the redirected-ReLU gradient (see ``redirect``), so a unit off at its start still moves.

    ``steps`` Adam steps of size ``lr`` (a fraction of a box's widths or a ball's radius), each
    followed by a projection, then a short polish of normalized projected-gradient steps.
    """
    _check(subject, region, replicas, steps)
    if objective.layers:
        subject._require_hooks("a layer's activations")
    device = subject.device
    dtype = torch.float32 if device.type == "mps" else torch.float64  # region maths in float64
    batch = objective.n * replicas
    target = torch.arange(objective.n, device=device).repeat_interleave(replicas)
    kind = _output_kind(subject)

    with subject.borrowed(), Tap(subject, objective.layers, needs_output=objective.needs_output) as tap:

        def value(z: torch.Tensor) -> torch.Tensor:
            return _score(tap, objective, region._decode(z), target, kind).to(dtype)

        def gradient(z: torch.Tensor) -> torch.Tensor:
            z = z.detach().requires_grad_(True)
            # Differentiate the loss (-objective), the convention the redirected ReLU expects.
            (g,) = torch.autograd.grad(-value(z).sum(), z)
            return -g

        if init is None:
            z = region._random_natural(batch, seed, dtype, device)
        else:
            start_x = torch.as_tensor(np.asarray(init), dtype=dtype, device=device)
            if tuple(start_x.shape) != (batch, region.dim):
                raise InputShapeError(f"init must hold {batch} rows of {region.dim} columns, one per target and "
                                      f"replica; got shape {tuple(start_x.shape)}.")
            z = region._project_natural(region._encode(start_x))
        z = z.requires_grad_(True)
        with torch.no_grad():
            start = value(z)
        opt = torch.optim.Adam([z], lr=lr * region._scale())
        bar = progress_bar(steps + len(_POLISH_SIZES), "maximizing", "step", enabled=progress)
        try:
            for step in range(steps):
                # Adam scales each coordinate on its own, so a push straight out of a ball would
                # become a slide along its surface towards a diagonal: at the edge it gets only
                # the part of the gradient that can be followed.
                if step < warmup:
                    with RedirectedReLU():
                        g = gradient(z)
                else:
                    g = gradient(z)
                z.grad = -region._tangent(z.detach(), g)
                opt.step()
                with torch.no_grad():
                    z.copy_(region._project_natural(z))
                bar.update(1)
            z = z.detach()
            with torch.no_grad():
                adam_z, adam_v = z.clone(), value(z)
            # Adam ends within about a step of the optimum; steepest-ascent steps, huge first and
            # then shrinking, land a linear objective exactly on its optimum.
            for size in _POLISH_SIZES:
                z = region._project_natural(z + region._steepest(gradient(z)) * (size * region._scale()))
                bar.update(1)
        finally:
            bar.close()
        with torch.no_grad():
            polished_v = value(z)
            # Keep Adam's point where polishing a non-linear objective clearly lost ground.
            slack = torch.finfo(subject.dtype).eps ** 0.5 * (adam_v.abs() + polished_v.abs())
            worse = adam_v > polished_v + slack
            z = torch.where(worse[:, None], adam_z, z)
            x = region.project(region._decode(z))
            values = _score(tap, objective, x, target, kind)

    x_np = x.double().cpu().numpy()
    mean, scale = region.centre_and_scale()
    profile = (x_np - mean) / np.where(scale > 0, scale, np.inf)
    columns = list(subject.columns) if subject.columns else [f"x{k}" for k in range(region.dim)]
    return VectorResult(
        x=x_np, values=values.double().cpu().numpy(), start_values=start.double().cpu().numpy(),
        target=target.cpu().numpy(), columns=columns, region_kind=region.kind, profile=profile,
        mean=mean.copy(), scale=scale.copy(), objective=repr(objective), steps=steps,
    )


def _score(tap: Tap, objective: Objective, x: torch.Tensor, target, kind) -> torch.Tensor:
    return objective(tap.context(x, target, target, kind))


def profile_svg(result: VectorResult, i: int, top: int | None = None) -> str:
    """A self-contained SVG bar chart of row ``i``'s z-profile, most unusual columns first."""
    rows = result.table(i)[:top] if top else result.table(i)
    row_h, label_w, plot_w, pad = 18, min(180, 7 * max((len(r[0]) for r in rows), default=1) + 10), 240, 56
    title = f"{result.region_kind} profile, row {i} (target {int(result.target[i])}), z = (x - mean) / std"
    width, height = max(label_w + plot_w + pad, 6 * len(title) + 8), row_h * len(rows) + 24
    peak = max((abs(r[3]) for r in rows), default=0.0) or 1.0
    mid = label_w + plot_w / 2
    parts = [f"<text x='4' y='14' font-weight='bold'>{html.escape(title)}</text>",
             f"<line x1='{mid}' x2='{mid}' y1='20' y2='{height}' stroke='#555'/>"]
    for k, (name, value, mean, z) in enumerate(rows):
        y = 22 + k * row_h
        w = abs(z) / peak * (plot_w / 2 - 4)
        x0, colour = (mid, "#d6604d") if z >= 0 else (mid - w, "#4393c3")
        parts.append(
            f"<text x='{label_w - 6}' y='{y + 12}' text-anchor='end'>{html.escape(name)}</text>"
            f"<rect x='{x0:.1f}' y='{y + 3}' width='{w:.1f}' height='{row_h - 6}' fill='{colour}'>"
            f"<title>{html.escape(name)} = {value:.4g} (mean {mean:.4g}, z {z:+.2f})</title></rect>"
            f"<text x='{label_w + plot_w + 6}' y='{y + 12}'>{z:+.2f}</text>"
        )
    return (f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {width} {height}' width='{width}' "
            f"height='{height}' font-family='sans-serif' font-size='11'>" + "".join(parts) + "</svg>")
