"""Image parameterizations: what the optimizer actually changes when it "draws" an input.

Optimizing raw pixels finds high-frequency patterns the network reacts to but a person cannot
read. Olah, Mordvintsev and Schubert ("Feature Visualization", Distill 2017; Lucid) get readable
images by changing the basis the gradient steps are taken in:

- **Fourier**: the image is the inverse real FFT of a learned spectrum whose frequency ``f`` is
  scaled by ``1 / f**decay_power``; steps in this basis are spatially decorrelated, so the
  optimizer fills low frequencies first.
- **Colour decorrelation**: channels are mixed by the square root of the channel covariance of
  natural images, so a step moves along the data's colour axes, not raw RGB. The matrix can be
  the usual ImageNet one or **estimated from the user's own data** (:func:`colour_matrix`), which
  is what a model trained on anything but photographs needs; it works for any channel count.
- **Phase only** (MACO; Fel et al., "Unlocking Feature Visualization for Deeper Networks with
  MAgnitude Constrained Optimization", NeurIPS 2023): the amplitude spectrum is fixed to the
  data's average amplitude (:func:`magnitude_spectrum`) and only the phase is learned, which keeps
  the image's power spectrum natural.

Every parameterization returns images in ``[0, 1]`` (a sigmoid at the end); :func:`to_range`
maps them onto the model's raw value range, and the Subject then applies its normalization, so
the optimized image is always a valid raw input for this model.

An ``ImageParam`` holds ``batch`` independent images; ``shared`` adds one low-resolution image
common to the whole batch (used for interpolations, where neighbouring frames should align).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ...errors import OptionError

#: Square root of the RGB covariance of ImageNet photographs (columns: decorrelated axes), as
#: published with Lucid. Used when the model takes 3 channels and no data is given.
IMAGENET_COLOUR = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])


def _frequencies(h: int, w: int) -> torch.Tensor:
    """Radial frequency of each rfft2 coefficient of an ``h x w`` image, in cycles per pixel."""
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def colour_matrix(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The colour-decorrelation matrix of a set of images ``(N, C, H, W)`` in ``[0, 1]``.

    The square root of the channel covariance (``U sqrt(S)`` of its SVD), scaled so that its
    largest column has unit norm, as Lucid scales the ImageNet one. One channel gives ``[[1]]``.
    """
    x = torch.as_tensor(images, dtype=torch.float64)
    c = x.shape[1]
    pixels = x.transpose(0, 1).reshape(c, -1)
    cov = torch.cov(pixels) if c > 1 else pixels.var().reshape(1, 1)
    cov = cov.reshape(c, c)
    u, s, _ = torch.linalg.svd(cov)
    m = u * s.clamp(min=0).sqrt()[None, :]
    norm = m.norm(dim=0).max()
    if norm <= 0:
        return torch.eye(c, dtype=torch.float32)
    return (m / norm).float()


def magnitude_spectrum(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The average rfft2 amplitude of each channel over ``images`` ``(N, C, H, W)`` (for MACO)."""
    x = torch.as_tensor(images, dtype=torch.float32)
    x = x - x.mean(dim=(2, 3), keepdim=True)
    return torch.fft.rfft2(x, norm="ortho").abs().mean(0)


class ImageParam:
    """A batch of images described by learnable tensors; call it to get ``(B, C, H, W)`` in [0, 1].

    Subclasses implement :meth:`_spatial` (the pre-sigmoid image before colour mixing).
    """

    def __init__(self, batch: int, shape: Sequence[int], *, colour: torch.Tensor | None = None,
                 device=None, seed: int = 0):
        self.batch = int(batch)
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3:
            raise OptionError(f"image parameterizations need (C, H, W), got {self.shape}")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.generator = torch.Generator().manual_seed(int(seed))
        c = self.shape[0]
        if colour is not None:
            colour = torch.as_tensor(colour, dtype=torch.float32)
            if colour.shape != (c, c):
                raise OptionError(f"colour matrix must be {c}x{c} for {c}-channel inputs, got {tuple(colour.shape)}")
            self.colour = colour.to(self.device)
        else:
            self.colour = None
        self.tensors: list[torch.Tensor] = []

    def _randn(self, *shape, scale: float = 0.01) -> torch.Tensor:
        t = (torch.randn(*shape, generator=self.generator) * scale).to(self.device)
        t.requires_grad_(True)
        self.tensors.append(t)
        return t

    def parameters(self) -> list[torch.Tensor]:
        return list(self.tensors)

    def _spatial(self) -> torch.Tensor:
        raise NotImplementedError

    def pre_sigmoid(self) -> torch.Tensor:
        x = self._spatial()
        if self.colour is not None:
            # a batched matmul over (B, C, H*W): einsum's permuted copies cost twice as much
            x = (self.colour @ x.flatten(2)).view_as(x)
        return x

    def __call__(self) -> torch.Tensor:
        return torch.sigmoid(self.pre_sigmoid())


class PixelParam(ImageParam):
    """Plain pixels (before the sigmoid): the baseline every other basis is compared with."""

    def __init__(self, batch, shape, *, init: torch.Tensor | None = None, **kw):
        super().__init__(batch, shape, **kw)
        if init is None:
            self.pixels = self._randn(self.batch, *self.shape)
        else:
            # Start from given [0, 1] images (accentuation): store their logit.
            init = torch.as_tensor(init, dtype=torch.float32).clamp(1e-3, 1 - 1e-3)
            self.pixels = torch.logit(init).to(self.device).reshape(self.batch, *self.shape).clone().requires_grad_(True)
            self.tensors.append(self.pixels)
            if self.colour is not None:
                # Undo the colour mix so that the first image is exactly ``init``.
                with torch.no_grad():
                    inv = torch.linalg.pinv(self.colour)
                    self.pixels.copy_(torch.einsum("ij,bjhw->bihw", inv, self.pixels))

    def _spatial(self) -> torch.Tensor:
        return self.pixels


class FourierParam(ImageParam):
    """An image as a scaled spectrum (Olah et al. 2017): steps are spatially decorrelated.

    ``decay_power`` sets how strongly high frequencies are damped (1 is Lucid's default; larger
    is smoother). ``shared`` adds one spectrum common to the whole batch.
    """

    def __init__(self, batch, shape, *, decay_power: float = 1.0, shared: bool = False, **kw):
        super().__init__(batch, shape, **kw)
        c, h, w = self.shape
        freqs = _frequencies(h, w)
        scale = 1.0 / torch.clamp(freqs, min=1.0 / max(h, w)) ** decay_power
        # With the orthonormal FFT, unit-variance coefficients then give unit-variance pixels.
        self.scale = (scale / scale.pow(2).mean().sqrt()).to(self.device)
        self.spectrum = self._randn(self.batch, c, h, w // 2 + 1, 2)
        self.shared = self._randn(1, c, h, w // 2 + 1, 2) if shared else None

    def _image(self, spectrum: torch.Tensor) -> torch.Tensor:
        _, h, w = self.shape
        z = torch.view_as_complex(spectrum) * self.scale
        return torch.fft.irfft2(z, s=(h, w), norm="ortho")

    def _spatial(self) -> torch.Tensor:
        x = self._image(self.spectrum)
        if self.shared is not None:
            x = x + self._image(self.shared)
        return x


class PhaseParam(ImageParam):
    """Phase-only Fourier image with a fixed amplitude spectrum (MACO, Fel et al. 2023).

    ``magnitude`` is ``(C, H, W//2+1)``, e.g. :func:`magnitude_spectrum` of the user's data. The
    spatial image is standardized per image before the sigmoid, so only its structure is learned.
    """

    def __init__(self, batch, shape, *, magnitude: torch.Tensor, **kw):
        super().__init__(batch, shape, **kw)
        c, h, w = self.shape
        magnitude = torch.as_tensor(magnitude, dtype=torch.float32)
        if magnitude.shape != (c, h, w // 2 + 1):
            raise OptionError(f"magnitude must be {(c, h, w // 2 + 1)} for inputs {self.shape}, got {tuple(magnitude.shape)}")
        self.magnitude = magnitude.to(self.device)
        # The phase is that of a learned real image's spectrum: unlike free angles it is
        # conjugate-symmetric where rfft2 needs it to be (columns 0 and W/2), so irfft2 keeps the
        # whole amplitude spectrum exactly.
        self.source = self._randn(self.batch, c, h, w, scale=1.0)

    def _spatial(self) -> torch.Tensor:
        _, h, w = self.shape
        s = torch.fft.rfft2(self.source, norm="ortho")
        z = self.magnitude * s / (s.abs() + 1e-8)
        x = torch.fft.irfft2(z, s=(h, w), norm="ortho")
        x = x - x.mean(dim=(1, 2, 3), keepdim=True)
        return 2.0 * x / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-8)


def make_param(kind: str, batch: int, shape: Sequence[int], *, colour=None, decay_power: float = 1.0,
               magnitude=None, shared: bool = False, device=None, seed: int = 0) -> ImageParam:
    """Build a parameterization by name: ``"fourier"`` (default elsewhere), ``"pixel"`` or ``"maco"``."""
    if kind == "fourier":
        return FourierParam(batch, shape, decay_power=decay_power, shared=shared, colour=colour, device=device, seed=seed)
    if kind == "pixel":
        return PixelParam(batch, shape, colour=colour, device=device, seed=seed)
    if kind == "maco":
        if magnitude is None:
            raise OptionError("the phase-only (MACO) parameterization needs the data's amplitude spectrum: pass data (--data)")
        return PhaseParam(batch, shape, magnitude=magnitude, colour=colour, device=device, seed=seed)
    raise OptionError(f"unknown parameterization {kind!r}: use 'fourier', 'pixel' or 'maco'")


def to_range(images01: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    """Map ``[0, 1]`` images onto the model's raw input range."""
    lo, hi = value_range
    return images01 * (hi - lo) + lo


def from_range(raw: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    lo, hi = value_range
    return (raw - lo) / (hi - lo)
