"""Small picture helpers shared by the analyses: scales, tiling, upscaling, heatmaps, atomic PNGs.

Pure numpy and Pillow. Arrays are ``(H, W)`` grey or ``(H, W, 3)`` RGB; floats live in [0, 1]
until :func:`to_uint8` turns them into pixels.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_write

#: Tiny kernels (5x5, 3x3) are blown up so that each tile is at least this many pixels a side.
MIN_TILE_PX = 40
#: ... but a long thin tile (a 1-D kernel, a large dense-layer row) stays under this.
MAX_TILE_PX = 400

_NEGATIVE = np.array([33, 102, 172], dtype=np.float64)  # blue
_POSITIVE = np.array([178, 24, 43], dtype=np.float64)  # red
_WHITE = np.array([255, 255, 255], dtype=np.float64)


def to_uint8(values: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Map ``[lo, hi]`` linearly onto pixels 0..255 (clipped, rounded to nearest)."""
    values = np.asarray(values, dtype=np.float64)
    scaled = (values - lo) / (hi - lo) if hi != lo else np.zeros_like(values)
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def max_abs(values: np.ndarray) -> float:
    """The largest magnitude in ``values`` (0.0 for an empty or all-zero array)."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.max(np.abs(values))) if values.size else 0.0


def symmetric_scale(values: np.ndarray, maxabs: float | None = None) -> np.ndarray:
    """Signed values onto [0, 1] with zero in the middle: ``v -> 0.5 + v / (2 * maxabs)``.

    One ``maxabs`` for a whole set of tiles keeps them comparable: 0 is always mid grey and
    only the largest magnitude reaches black or white. ``maxabs`` defaults to ``max |values|``.
    """
    values = np.asarray(values, dtype=np.float64)
    maxabs = max_abs(values) if maxabs is None else float(maxabs)
    if maxabs == 0.0:
        return np.full_like(values, 0.5)
    return np.clip(0.5 + values / (2.0 * maxabs), 0.0, 1.0)


def diverging_colormap(values: np.ndarray, maxabs: float | None = None) -> np.ndarray:
    """Signed values to blue (negative) - white (zero) - red (positive) RGB pixels, shape ``(..., 3)``."""
    values = np.asarray(values, dtype=np.float64)
    maxabs = max_abs(values) if maxabs is None else float(maxabs)
    t = np.clip(values / maxabs, -1.0, 1.0) if maxabs > 0 else np.zeros_like(values)
    end = np.where(t[..., None] < 0, _NEGATIVE, _POSITIVE)
    rgb = _WHITE + np.abs(t)[..., None] * (end - _WHITE)
    return np.rint(rgb).astype(np.uint8)


def upscale_factor(height: int, width: int) -> int:
    """Integer zoom that makes a ``height x width`` tile at least ``MIN_TILE_PX`` on its short side
    (without pushing its long side past ``MAX_TILE_PX``)."""
    factor = math.ceil(MIN_TILE_PX / max(1, min(height, width)))
    return max(1, min(factor, MAX_TILE_PX // max(1, height, width)))


def upscale_nearest(img: np.ndarray, factor: int) -> np.ndarray:
    """Blow up an ``(H, W)`` or ``(H, W, C)`` image by an integer factor, one block per pixel."""
    return np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)


def tile_grid(
    tiles: np.ndarray, ncols: int | None = None, pad: int = 1, pad_value: float | int = 255
) -> np.ndarray:
    """Lay ``(N, H, W)`` or ``(N, H, W, 3)`` tiles out row by row, ``pad`` pixels around each.

    ``ncols`` defaults to a near-square grid. The result has shape
    ``(rows * (H + pad) + pad, ncols * (W + pad) + pad[, 3])``.
    """
    tiles = np.asarray(tiles)
    n, h, w = tiles.shape[:3]
    ncols = max(1, min(n, ncols or math.ceil(math.sqrt(n)))) if n else 1
    nrows = max(1, math.ceil(n / ncols))
    shape = (nrows * (h + pad) + pad, ncols * (w + pad) + pad) + tiles.shape[3:]
    grid = np.full(shape, pad_value, dtype=tiles.dtype)
    for i, tile in enumerate(tiles):
        y = pad + (i // ncols) * (h + pad)
        x = pad + (i % ncols) * (w + pad)
        grid[y : y + h, x : x + w] = tile
    return grid


def heatmap_image(
    matrix: np.ndarray,
    maxabs: float | None = None,
    cell: int | None = None,
    row_labels: list[str] | None = None,
) -> Image.Image:
    """A signed ``(rows, cols)`` matrix as a blue-white-red picture, one block per entry.

    ``row_labels`` are written to the left of their rows. Blocks are ``cell`` pixels square;
    by default each side is sized to keep the picture around 800 pixels (4 to 24 pixels a block,
    and tall enough for a label when there are labels).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    rows, cols = matrix.shape
    if cell is None:
        cell_h = max(12 if row_labels else 4, min(24, 800 // max(rows, 1)))
        cell_w = max(4, min(24, 800 // max(cols, 1)))
    else:
        cell_h = cell_w = cell
    pixels = np.repeat(np.repeat(diverging_colormap(matrix, maxabs), cell_h, axis=0), cell_w, axis=1)
    if not row_labels:
        return Image.fromarray(pixels, "RGB")

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    margin = 6 + max(measure.textbbox((0, 0), str(s), font=font)[2] for s in row_labels)
    img = Image.new("RGB", (margin + pixels.shape[1], pixels.shape[0]), "white")
    img.paste(Image.fromarray(pixels, "RGB"), (margin, 0))
    draw = ImageDraw.Draw(img)
    for i, label in enumerate(row_labels):
        left, top, right, bottom = draw.textbbox((0, 0), str(label), font=font)
        xy = (margin - 3 - right, i * cell_h + (cell_h - (bottom + top)) / 2)
        draw.text(xy, str(label), fill="black", font=font)
    return img


def to_image(image: np.ndarray | Image.Image) -> Image.Image:
    """A PIL image from an array: floats in [0, 1] or uint8, ``(H, W)`` grey or ``(H, W, 3)`` RGB."""
    if isinstance(image, Image.Image):
        return image
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = to_uint8(a)
    return Image.fromarray(a)


#: zlib level for PNGs: on the demo's 800 report images level 4 encodes in half the time of the
#: default 6 for 4% more bytes.
PNG_COMPRESS_LEVEL = 4


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    buf = io.BytesIO()
    to_image(image).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def save_png(image: np.ndarray | Image.Image, path: str | os.PathLike) -> Path:
    """Write a PNG atomically: a temp file in the same folder, then ``os.replace`` onto ``path``."""
    return atomic_write(path, png_bytes(image))


def magnitude_colormap(values: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """Non-negative values to dark-to-bright RGB pixels (black, purple, orange, pale yellow)."""
    values = np.asarray(values, dtype=np.float64)
    vmax = float(values.max()) if vmax is None and values.size else (vmax or 0.0)
    t = np.clip(values / vmax, 0.0, 1.0) if vmax > 0 else np.zeros_like(values)
    stops = np.array([[0, 0, 4], [120, 28, 109], [237, 105, 37], [252, 255, 164]], dtype=np.float64)
    pos = t * (len(stops) - 1)
    lo = np.minimum(pos.astype(int), len(stops) - 2)
    frac = (pos - lo)[..., None]
    return np.rint(stops[lo] * (1 - frac) + stops[lo + 1] * frac).astype(np.uint8)


def _colour(values: np.ndarray, signed: bool) -> np.ndarray:
    return diverging_colormap(values) if signed else magnitude_colormap(np.clip(values, 0, None))


def channel_grid(maps: np.ndarray, signed: bool, pad: int = 2) -> np.ndarray:
    """``(C, H, W)`` activation maps as one RGB grid on a scale shared by all channels."""
    maps = np.asarray(maps, dtype=np.float64)
    rgb = _colour(maps, signed)
    factor = upscale_factor(*maps.shape[1:3]) if min(maps.shape[1:3]) < MIN_TILE_PX else 1
    tiles = np.stack([upscale_nearest(t, factor) for t in rgb])
    return tile_grid(tiles, pad=pad, pad_value=255)


def cells(vector: np.ndarray, signed: bool, cell: int = 14, pad: int = 1) -> np.ndarray:
    """A vector of unit values as a near-square grid of coloured cells (dense layers, table rows)."""
    vector = np.asarray(vector, dtype=np.float64).reshape(-1)
    rgb = _colour(vector, signed)
    tiles = np.broadcast_to(rgb[:, None, None, :], (len(vector), cell, cell, 3))
    return tile_grid(np.ascontiguousarray(tiles), pad=pad, pad_value=255)


def input_rgb(x, value_range: tuple[float, float]) -> np.ndarray:
    """A raw (C, H, W) image input (1 or 3 channels) as (H, W, 3) uint8 pixels."""
    lo, hi = value_range
    a = ((np.asarray(x, dtype=np.float64) - lo) / (hi - lo)).clip(0, 1)
    a = np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a
    return to_uint8(a.transpose(1, 2, 0))


def input_picture(x, value_range: tuple[float, float], size: int = 96) -> Image.Image:
    """A raw model input as a picture: an image for (C, H, W) input with 1 or 3 channels, else a
    grid of cells (vectors)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 3 and x.shape[0] in (1, 3):
        return to_image(upscale_nearest(input_rgb(x, value_range), max(1, size // max(x.shape[1:]))))
    lo, hi = value_range
    return to_image(cells(((x - lo) / (hi - lo)).clip(0, 1).reshape(-1), signed=False))
