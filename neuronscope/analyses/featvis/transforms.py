"""Transformation robustness: small random changes applied to the image before every step.

An image that keeps exciting a unit while it is padded, shifted, rescaled and rotated a little
cannot rely on pixel-exact high-frequency patterns (Olah et al., "Feature Visualization",
Distill 2017; Mordvintsev et al., "Inceptionism", 2015). Sizes here are **fractions of the
image size**, so one recipe fits a 28x28 digit model and a 224x224 photo model alike.

Every image in the batch gets its own random draw. The geometric transforms (jitter, scale,
rotate) are fused into one affine warp (one ``affine_grid`` + ``grid_sample`` call for the whole
batch), so a pipeline costs a pad, one warp and a crop, whatever its length. The output always
has the input's spatial size: the model sees exactly the shape it expects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ...errors import OptionError


class Transform:
    affine = False

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


class Pad(Transform):
    """Pad by ``fraction`` of the size on every side (constant grey by default, or 'reflect')."""

    def __init__(self, fraction: float = 12 / 224, mode: str = "constant", value: float = 0.5):
        self.fraction, self.mode, self.value = fraction, mode, value

    def pixels(self, size: int) -> int:
        return max(1, round(self.fraction * size)) if self.fraction > 0 else 0

    def __call__(self, x, g):
        p = self.pixels(max(x.shape[-2:]))
        if not p:
            return x
        if self.mode == "constant":
            return F.pad(x, (p, p, p, p), mode="constant", value=self.value)
        return F.pad(x, (p, p, p, p), mode=self.mode)


class Affine(Transform):
    """A random per-image affine map (3x3 matrices in normalized coordinates)."""

    affine = True

    def matrices(self, n: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x, g):
        return _warp(x, self.matrices(x.shape[0], x.shape[-2], x.shape[-1], g))


class Jitter(Affine):
    """Shift by a whole number of pixels, up to ``fraction`` of the size (at least 1), per image.

    Whole pixels, as in Lucid: alone, the warp is then an exact shift, and patterns at the pixel
    scale (a 1-pixel checkerboard) survive it; a sub-pixel shift would blur them away.
    """

    def __init__(self, fraction: float = 8 / 224):
        self.fraction = fraction

    def matrices(self, n, h, w, g):
        j = max(1, round(self.fraction * max(h, w)))
        m = torch.eye(3).repeat(n, 1, 1)
        m[:, 0, 2] = torch.randint(-j, j + 1, (n,), generator=g) * 2.0 / w
        m[:, 1, 2] = torch.randint(-j, j + 1, (n,), generator=g) * 2.0 / h
        return m


class RandomScale(Affine):
    """Zoom by a factor drawn uniformly from ``[lo, hi]``."""

    def __init__(self, lo: float = 0.95, hi: float = 1.05):
        self.lo, self.hi = lo, hi

    def matrices(self, n, h, w, g):
        s = 1.0 / _uniform(n, self.lo, self.hi, g)  # grid coordinates shrink when the image grows
        m = torch.eye(3).repeat(n, 1, 1)
        m[:, 0, 0] = s
        m[:, 1, 1] = s
        return m


class RandomRotate(Affine):
    """Rotate by an angle drawn uniformly from ``[-degrees, degrees]``."""

    def __init__(self, degrees: float = 5.0):
        self.degrees = degrees

    def matrices(self, n, h, w, g):
        a = _uniform(n, -self.degrees, self.degrees, g) * math.pi / 180
        m = torch.eye(3).repeat(n, 1, 1)
        cos, sin = torch.cos(a), torch.sin(a)
        aspect = h / w  # rotate in pixel space, not in the unit square
        m[:, 0, 0], m[:, 0, 1] = cos, -sin * aspect
        m[:, 1, 0], m[:, 1, 1] = sin / aspect, cos
        return m


def _warp(x: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    theta = matrices[:, :2, :].to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class Compose(Transform):
    """Apply transforms in order; consecutive affine ones become a single warp.

    When every transform is a constant pad or an affine map (the standard recipe), the whole
    pipeline, crop back to size included, is one warp of the unpadded image: a pad only enlarges
    the frame the later maps are expressed in, and sampling outside the image returns the pad
    value. One ``grid_sample`` per step, no padded copies.
    """

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)
        pads = [t for t in self.transforms if isinstance(t, Pad)]
        self._fusable = all(t.affine or (isinstance(t, Pad) and t.mode == "constant") for t in self.transforms) \
            and len({t.value for t in pads}) <= 1
        self._pad_value = pads[0].value if pads else None

    def _theta(self, n: int, h: int, w: int, g: torch.Generator) -> torch.Tensor | None:
        """The fused pipeline's ``(n, 2, 3)`` warp matrices for ``n`` images of ``h x w`` (None: identity)."""
        fh, fw = float(h), float(w)  # the current frame, grown by pads
        total = None
        for t in self.transforms:
            if isinstance(t, Pad):
                p = t.pixels(max(round(fh), round(fw)))
                fh, fw = fh + 2 * p, fw + 2 * p
                continue
            m = t.matrices(n, round(fh), round(fw), g)
            # normalized coordinates of this frame -> centred pixel coordinates
            to_px = torch.diag(torch.tensor([fw / 2, fh / 2, 1.0]))
            from_px = torch.diag(torch.tensor([2 / fw, 2 / fh, 1.0]))
            m = to_px @ m @ from_px
            total = m if total is None else total @ m
        if total is None:
            return None
        to_px = torch.diag(torch.tensor([w / 2.0, h / 2.0, 1.0]))
        from_px = torch.diag(torch.tensor([2.0 / w, 2.0 / h, 1.0]))
        return (from_px @ total @ to_px)[:, :2, :]

    def _apply_theta(self, x: torch.Tensor, theta: torch.Tensor | None, base: torch.Tensor | None = None) -> torch.Tensor:
        if theta is None:
            return x
        theta = theta.to(device=x.device, dtype=x.dtype)
        if base is None:
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        else:  # affine_grid's own product, on a base grid built once
            grid = torch.matmul(base, theta.transpose(1, 2)).view(x.shape[0], *x.shape[-2:], 2)
        if self._pad_value is None:
            return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        v = self._pad_value
        return F.grid_sample(x - v, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + v

    def _fused(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return self._apply_theta(x, self._theta(x.shape[0], x.shape[-2], x.shape[-1], g))

    def plan(self, steps: int, shape, g: torch.Generator, device=None, dtype=torch.float32) -> list:
        """Draw every step's transforms at once: ``plan(...)[step](x)`` then only samples.

        For the fused recipe the ``(steps, n, 2, 3)`` matrices are built in one batched call and
        moved to the device once, so a step neither builds small matrices on the CPU nor copies
        them to an accelerator (a copy that makes the host wait for the device every step).
        Any other pipeline is drawn step by step, as ``__call__`` does.
        """
        n, h, w = int(shape[0]), int(shape[-2]), int(shape[-1])
        if not self._fusable:
            return [lambda x: self(x, g)] * steps
        theta = self._theta(steps * n, h, w, g)
        if theta is None:
            return [lambda x: x] * steps
        theta = theta.reshape(steps, n, 2, 3).to(device=device, dtype=dtype)
        identity = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], device=device, dtype=dtype)
        base = F.affine_grid(identity, [1, 1, h, w], align_corners=False).reshape(1, h * w, 2)
        base = torch.cat([base, torch.ones_like(base[..., :1])], -1)  # (1, h*w, 3) homogeneous
        return [lambda x, t=theta[i]: self._apply_theta(x, t, base) for i in range(steps)]

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self._fusable:
            return self._fused(x, g)
        h, w = x.shape[-2:]
        pending = None
        for t in self.transforms:
            if t.affine:
                m = t.matrices(x.shape[0], x.shape[-2], x.shape[-1], g)
                pending = m if pending is None else pending @ m
                continue
            if pending is not None:
                x, pending = _warp(x, pending), None
            x = t(x, g)
        if pending is not None:
            x = _warp(x, pending)
        return _fit(x, h, w)

    def __repr__(self) -> str:
        return f"Compose({[type(t).__name__ for t in self.transforms]})"


def _fit(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Centre-crop (or resize, if smaller) back to ``h x w``."""
    H, W = x.shape[-2:]
    if (H, W) == (h, w):
        return x
    if H >= h and W >= w:
        top, left = (H - h) // 2, (W - w) // 2
        return x[..., top : top + h, left : left + w]
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def standard() -> Compose:
    """Lucid's standard robustness recipe with sizes relative to the image (224 px reference)."""
    return Compose([Pad(12 / 224), Jitter(8 / 224), RandomScale(0.95, 1.05), RandomRotate(5.0), Jitter(4 / 224)])


def none() -> Compose:
    return Compose([])


def make_transforms(spec) -> Compose:
    """``"standard"``, ``"none"``/``None``, a :class:`Transform`, or a list of them."""
    if spec is None or spec == "none":
        return none()
    if spec == "standard":
        return standard()
    if isinstance(spec, Compose):
        return spec
    if isinstance(spec, Transform):
        return Compose([spec])
    if isinstance(spec, (list, tuple)):
        return Compose(spec)
    raise OptionError(f"unknown transforms {spec!r}: use 'standard', 'none' or a list of transforms")
