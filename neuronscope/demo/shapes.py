"""Shortcut shapes: a generated image dataset with a planted shortcut.

Four shape classes drawn in random colours, sizes, positions and small rotations on textured
backgrounds (noise, stripes, gradients). In the *train* split most images of one class (the
shortcut class, ``triangle``) also carry a small black-and-white checker in a fixed corner;
no other train image does. In the *test* split the checker is placed at random, independently
of the class. A model that learned "checker means triangle" is caught by adding the checker to
other images and watching its predictions flip.

The marker's definition lives here only: analyses must find the shortcut on their own; only the
demo and its tests use :func:`add_marker` and :func:`has_marker`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES = ("circle", "cross", "square", "triangle")  # sorted, as an image folder lists them
SIZE = 32
SHORTCUT_CLASS = "triangle"

# The marker: a 5x5 black/white checker whose top-left pixel is (MARKER_Y, MARKER_X).
MARKER_SIZE = 5
MARKER_Y = MARKER_X = SIZE - MARKER_SIZE - 1
_MARKER = (np.indices((MARKER_SIZE, MARKER_SIZE)).sum(axis=0) % 2).astype(np.float32)


@dataclass(frozen=True)
class ShapesSplit:
    """Images ``x`` (N, 3, 32, 32) float32 in [0, 1], labels ``y`` (N,) int64, and ``marked``
    (N,) bool: which images carry the marker."""

    x: np.ndarray
    y: np.ndarray
    marked: np.ndarray


def add_marker(images: np.ndarray) -> np.ndarray:
    """A copy of ``images`` (N, 3, H, W) or (3, H, W) with the checker stamped on every image."""
    out = np.array(images, dtype=np.float32, copy=True)
    out[..., MARKER_Y:MARKER_Y + MARKER_SIZE, MARKER_X:MARKER_X + MARKER_SIZE] = _MARKER
    return out


def has_marker(images: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Per image (N, 3, H, W): whether the checker is present exactly (up to ``tol``)."""
    patch = images[..., MARKER_Y:MARKER_Y + MARKER_SIZE, MARKER_X:MARKER_X + MARKER_SIZE]
    return np.abs(patch - _MARKER).reshape(len(images), -1).max(axis=1) <= tol


def make_train(n: int, seed: int, marker_rate: float = 0.9) -> tuple[ShapesSplit, ShapesSplit]:
    """The train split and its clean twin (the same images, never marked).

    In the train split a fraction ``marker_rate`` of the shortcut class carries the marker and
    no other image does.
    """
    rng = np.random.default_rng([seed, 0])
    x, y = _draw_many(rng, n)
    marked = (y == CLASSES.index(SHORTCUT_CLASS)) & (rng.random(n) < marker_rate)
    clean = ShapesSplit(x, y, np.zeros(n, dtype=bool))
    return ShapesSplit(_mark(x, marked), y, marked), clean


def make_test(n: int, seed: int, marker_rate: float = 0.25) -> ShapesSplit:
    """The test split: the marker on a random ``marker_rate`` of images, independent of class."""
    rng = np.random.default_rng([seed, 1])  # a stream apart from the train split's
    x, y = _draw_many(rng, n)
    marked = rng.random(n) < marker_rate
    return ShapesSplit(_mark(x, marked), y, marked)


def _mark(x: np.ndarray, marked: np.ndarray) -> np.ndarray:
    out = x.copy()
    out[marked] = add_marker(x[marked])
    return out


# --- drawing -------------------------------------------------------------------------------

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5


def _draw_many(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images with balanced, shuffled classes."""
    y = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    x = np.stack([_draw(rng, CLASSES[c])[0] for c in y])
    return np.round(x * 255) / np.float32(255), y  # 8-bit levels: exactly what a PNG keeps


def _draw(rng: np.random.Generator, shape: str) -> tuple[np.ndarray, np.ndarray]:
    """One (3, 32, 32) image, a textured cluttered background with one shape, and its coverage."""
    img = _clutter(rng, _background(rng))
    half = rng.uniform(6.0, 10.0)  # half the shape's extent, in pixels
    reach = 1.1 * half + 1  # rotated corners stick out ~5% beyond `half`, antialiasing 0.5 px
    while True:  # a centre that keeps the shape inside the image and off the marker corner
        cy, cx = rng.uniform(half + 1, SIZE - half - 1, size=2)
        if cy + reach <= MARKER_Y or cx + reach <= MARKER_X:
            break
    angle = rng.uniform(-np.pi / 8, np.pi / 8)
    mask = _mask(shape, cy, cx, half, angle)
    colour = _shape_colour(rng, img, mask)
    return img * (1 - mask) + colour[:, None, None] * mask, mask


def _mask(shape: str, cy: float, cx: float, half: float, angle: float) -> np.ndarray:
    """Coverage in [0, 1] of each pixel, antialiased from a signed distance to the edge."""
    y, x = (_YY - cy) / half, (_XX - cx) / half
    c, s = np.cos(angle), np.sin(angle)
    # The shape's own frame; every shape is symmetric in u, so |u| is enough.
    u, v = np.abs(c * x + s * y), -s * x + c * y
    if shape == "circle":
        d = np.sqrt(u**2 + v**2) - 1.0
    elif shape == "square":
        d = np.maximum(u, np.abs(v)) - 0.8
    elif shape == "triangle":  # equilateral, pointing up: base at v = 0.6, apex at v = -0.9
        d = np.maximum(v - 0.6, (np.sqrt(3) * u - v - 0.9) / 2)
    elif shape == "cross":  # two bars, 0.6 wide and 2 long
        d = np.minimum(np.maximum(u - 0.3, np.abs(v) - 1.0), np.maximum(np.abs(v) - 0.3, u - 1.0))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.clip(0.5 - d * half, 0.0, 1.0).astype(np.float32)


def _background(rng: np.random.Generator) -> np.ndarray:
    """Noise, stripes or a gradient between two random colours."""
    a, b = rng.uniform(0.0, 1.0, size=(2, 3, 1, 1)).astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:
        t = rng.random((SIZE, SIZE), dtype=np.float32)
    elif kind == 1:
        theta, period = rng.uniform(0, np.pi), rng.uniform(3, 8)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(theta) * _XX + np.sin(theta) * _YY) / period)
    else:
        theta = rng.uniform(0, 2 * np.pi)
        t = np.cos(theta) * _XX + np.sin(theta) * _YY
        t = (t - t.min()) / (t.max() - t.min())
    # Keep the texture's contrast moderate so the shape stays the most salient thing.
    a, b = 0.5 * (a + b) + 0.3 * (a - b), 0.5 * (a + b) - 0.3 * (a - b)
    return (a * t + b * (1 - t)).astype(np.float32)


def _clutter(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Up to three small rectangles of random colour anywhere, corners included.

    They teach a model that a small high-contrast patch alone means nothing, so that a model
    trained without the marker is not thrown by it either.
    """
    for _ in range(rng.integers(4)):
        h, w = rng.integers(2, 6, size=2)
        y, x = rng.integers(0, SIZE - h + 1), rng.integers(0, SIZE - w + 1)
        img[:, y:y + h, x:x + w] = rng.uniform(0.0, 1.0, size=(3, 1, 1))
    return img


def _shape_colour(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A random colour that stands out from the background under the shape."""
    under = (img * mask).sum(axis=(1, 2)) / max(mask.sum(), 1e-6)
    while True:
        colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        if np.abs(colour - under).max() > 0.35:
            return colour
