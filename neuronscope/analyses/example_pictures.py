"""Pictures of a unit's dataset examples: thumbnails with the receptive field boxed, and patches.

For a conv unit the box and the patch are the empirical receptive field of the position where
the unit peaked (:mod:`receptive_field`); a first-layer unit also gets its filter weights, since
real top patches need not resemble the weights (cs231n). Vector inputs get no pictures: their
examples are shown as feature values and an input profile instead.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from torch import nn

from .. import imaging
from ..units import slug
from .receptive_field import draw_box, patch, receptive_fields

THUMB = 64
PATCH = 48


def is_image_input(subject) -> bool:
    return len(subject.input_shape) == 3 and subject.input_shape[0] in (1, 3)


def _fit(img: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize to size x size (tiny inputs stay crisp)."""
    return np.asarray(Image.fromarray(img).resize((size, size), Image.NEAREST))


def _row(tiles: list[np.ndarray], size: int, ncols: int | None = None) -> np.ndarray:
    if not tiles:
        return np.full((size, size, 3), 255, np.uint8)
    return imaging.tile_grid(np.stack(tiles), ncols=ncols or len(tiles), pad=2, pad_value=255)


def first_layer_kernels(subject, layer: str) -> np.ndarray | None:
    """The first conv layer's kernels when ``layer`` is it or the activation right after it."""
    try:
        first, module = subject.first_layer()
    except Exception:
        return None
    if not isinstance(module, nn.Conv2d):
        return None
    names = [i.name for i in subject.layers if i.is_leaf]
    if layer == first:
        return module.weight.detach().cpu().double().numpy()
    if first in names and layer in names:
        between = names[names.index(first) + 1 : names.index(layer) + 1]
        if all(not isinstance(subject.module(n), (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) for n in between) \
                and subject.layer(layer).channels == module.out_channels and len(between) <= 3:
            return module.weight.detach().cpu().double().numpy()
    return None


def render(result, subject, data, *, max_units: int | None = 64,
           units: dict[str, list[int]] | None = None) -> dict[str, Image.Image]:
    """Sprites per unit: ``<layer>/<u>-top|bottom|range|patches|filter``; fills ``result.boxes``.

    Units ``0..max_units-1`` of each layer, or the ones ``units`` lists per layer."""
    if not is_image_input(subject):
        return {}
    wanted: set[str] = set()
    chosen: dict[str, list[int] | range] = {}
    for name, lr in result.layers.items():
        chosen[name] = units[name] if units is not None else range(min(lr.spec.channels, max_units or lr.spec.channels))
        for u in chosen[name]:
            for rk in (lr.top, lr.bottom, *lr.ranged):
                wanted.update(rk.ids[u])
    images: dict[str, np.ndarray] = {}
    order = sorted(wanted)
    for i in range(0, len(order), 256):
        batch = data.get(order[i : i + 256])
        for id_, x in zip(batch.ids, batch.x.numpy()):
            images[id_] = x
    out: dict[str, Image.Image] = {}
    for name, lr in result.layers.items():
        spatial = len(lr.spec.spatial) == 2
        boxes = {}
        if spatial:
            positions = sorted({lr.position(p) for u in chosen[name] for p in lr.top.pos[u][: len(lr.top.ids[u])]})
            boxes = dict(zip(positions, receptive_fields(subject, lr.spec.source or name, positions)))
        kernels = first_layer_kernels(subject, name) if lr.spec.source is None else None
        scale = imaging.max_abs(kernels) if kernels is not None else None
        per_bin = lr.ranged[0].pos.shape[1] if lr.ranged else 0
        for u in chosen[name]:
            base = f"{slug(name)}/{u}"
            tops, patches = [], []
            for rank, id_ in enumerate(lr.top.ids[u]):
                rgb = imaging.input_rgb(images[id_], subject.value_range)
                box = boxes.get(lr.position(lr.top.pos[u, rank])) if spatial else None
                if box is not None:
                    result.boxes[(name, u, rank)] = (box.y0, box.x0, box.y1, box.x1)
                    crop, whole = patch(images[id_], box)
                    crop_rgb = imaging.input_rgb(np.asarray(crop), subject.value_range)
                    if whole is not None:
                        crop_rgb = draw_box(crop_rgb.copy(), whole)
                    patches.append(_fit(crop_rgb, PATCH))
                    tops.append(_fit(draw_box(rgb.copy(), box), THUMB))
                else:
                    tops.append(_fit(rgb, THUMB))
            out[f"{base}-top"] = imaging.to_image(_row(tops, THUMB, ncols=8))
            if patches:
                out[f"{base}-patches"] = imaging.to_image(_row(patches, PATCH, ncols=8))
            out[f"{base}-bottom"] = imaging.to_image(
                _row([_fit(imaging.input_rgb(images[i], subject.value_range), THUMB) for i in lr.bottom.ids[u]], THUMB, ncols=8))
            rows = []
            for rk in lr.ranged:
                tiles = [_fit(imaging.input_rgb(images[i], subject.value_range), THUMB) for i in rk.ids[u]]
                tiles += [np.full((THUMB, THUMB, 3), 245, np.uint8)] * (per_bin - len(tiles))
                rows.extend(tiles)
            out[f"{base}-range"] = imaging.to_image(_row(rows, THUMB, ncols=per_bin))
            if kernels is not None:
                k = kernels[u]
                tile = imaging.symmetric_scale(k, scale)
                tile = tile.transpose(1, 2, 0) if k.shape[0] == 3 else tile[0]
                out[f"{base}-filter"] = imaging.to_image(imaging.upscale_nearest(tile, max(1, PATCH // k.shape[-1])))
    return out
