"""Baselines: what "absent" means for path and perturbation methods, chosen explicitly and shown.

An attribution answers "compared with what?": integrated gradients integrates from the baseline,
occlusion and ablation paste it in. The choice changes the map (Sturmfels, Lundberg & Lee 2020,
"Visualizing the Impact of Feature Attribution Baselines", Distill), so neuronscope names it
beside every map:

- ``zero``: the all-zero raw input (black for images in [0, 1]);
- ``blur``: the input itself under a strong Gaussian blur (keeps colours, removes detail);
- ``mean``: the data's mean: per column for vectors, the mean colour for images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...errors import OptionError

BASELINES = ("zero", "blur", "mean")


def blur(x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """Gaussian blur of a batch of images (N, C, H, W); sigma defaults to 1/8 of the smaller side."""
    h, w = x.shape[-2:]
    sigma = sigma if sigma is not None else max(1.0, min(h, w) / 8)
    radius = min(int(math.ceil(3 * sigma)), min(h, w) - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def data_mean(data, input_shape, limit: int = 1024) -> torch.Tensor:
    """The data's mean raw input over up to ``limit`` examples: per column (vectors) or the mean
    colour spread over the image (images), shape ``input_shape``."""
    total, n = None, 0
    for batch in data.batches(256, limit=limit):
        x = torch.as_tensor(batch.x, dtype=torch.float64)
        s = x.sum(0) if len(input_shape) == 1 else x.sum(dim=(0, *range(2, x.dim())))
        total = s if total is None else total + s
        n += len(x) if len(input_shape) == 1 else x[:, 0].numel()  # images: every pixel counts
    if not n:
        raise OptionError("baseline='mean' needs data with at least one readable example.")
    mean = (total / n).float()
    if len(input_shape) == 1:
        return mean
    return mean.view(-1, *([1] * (len(input_shape) - 1))).expand(*input_shape).clone()


def make_baseline(kind, x: torch.Tensor, *, data=None, input_shape=None) -> tuple[torch.Tensor, str]:
    """The baseline batch for raw inputs ``x`` and a short label for it.

    ``kind`` is one of :data:`BASELINES` or a tensor (one input's shape, or x's shape).
    """
    if isinstance(kind, torch.Tensor):
        b = kind.to(dtype=x.dtype, device=x.device)
        if tuple(b.shape) == tuple(x.shape[1:]):
            b = b.expand_as(x)
        if b.shape != x.shape:
            raise OptionError(f"A baseline tensor must have one input's shape {tuple(x.shape[1:])} or the batch's "
                              f"{tuple(x.shape)}; got {tuple(kind.shape)}.")
        return b.contiguous(), "given"
    if kind == "zero":
        return torch.zeros_like(x), "zero"
    if kind == "blur":
        if x.dim() != 4:
            raise OptionError("baseline='blur' is for images; for vector inputs use 'mean' or 'zero'.")
        return blur(x), "blur"
    if kind == "mean":
        if data is None:
            raise OptionError("baseline='mean' needs data (data=... in the API, --data on the command line).")
        return data_mean(data, input_shape or x.shape[1:]).to(x).expand_as(x).contiguous(), "mean"
    raise OptionError(f"Unknown baseline {kind!r}: choose one of {', '.join(BASELINES)}, or pass a tensor.")
