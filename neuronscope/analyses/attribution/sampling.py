"""The sampled gradient methods, with each example's random draws keyed to the example.

SmoothGrad, SmoothGrad-squared and VarGrad (Smilkov et al. 2017; Adebayo et al. 2018) average the
gradient over noisy copies of an input; gradient SHAP (Lundberg & Lee 2017, "expected gradients")
averages ``(x' - b) * grad f(b + a (x' - b))`` over noisy copies ``x'`` and random points ``a`` of
the path from the baseline ``b``.

Captum's ``NoiseTunnel`` and ``GradientShap`` draw those numbers per forward pass from the
process's global generators, and ``GradientShap`` draws its path points from NumPy's, which nothing
seeds. So their maps change with the pass size (which neuronscope picks by timing the machine,
:mod:`.batching`), with the other inputs in the call, in a Ray task against the same call in one
process, and from one run to the next. Here sample ``j`` of an example is drawn from its own
generator, seeded by (seed, example id, j), on the CPU: the map of an example is the same alone or
in a batch, on any pass size, in any process, on CPU or GPU (up to float rounding), and the global
generators are left untouched. Captum still computes every gradient (``Saliency``); this module
only draws the points and averages, as ``NoiseTunnel`` does.
"""

from __future__ import annotations

import hashlib

import torch


def sample_seed(seed: int, key: str, j: int) -> int:
    """A 63-bit seed for sample ``j`` of the example ``key``."""
    digest = hashlib.blake2b(f"{int(seed)}\0{key}\0{int(j)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _draw(seed: int, key: str, j: int, shape: tuple[int, ...], path: bool) -> tuple[torch.Tensor, float]:
    g = torch.Generator().manual_seed(sample_seed(seed, key, j))
    a = float(torch.rand((), generator=g)) if path else 1.0
    return torch.randn(shape, generator=g), a


def sampled_gradients(forward, x: torch.Tensor, target: list[int], keys: list[str], *, samples: int, stdev: float,
                      seed: int, rows_per_pass: int, baseline: torch.Tensor | None = None,
                      powers: tuple[int, ...] = (1,)) -> tuple[torch.Tensor, ...]:
    """Per-example means over ``samples`` draws of ``g ** p``, one per ``p`` in ``powers``, in
    float64 where the device has it (VarGrad subtracts E[g]^2 from E[g^2]).

    Without ``baseline``, g is the gradient of ``forward(x)[target]`` at ``x + stdev * eps``
    (SmoothGrad's samples). With it, g is gradient SHAP's ``(x' - b) * grad f(b + a (x' - b))``
    with ``x' = x + stdev * eps`` and ``a ~ U(0, 1)``. Rows run input-major in passes of
    ``rows_per_pass``; the draws do not depend on it.
    """
    from captum.attr import Saliency

    n, shape = len(x), tuple(x.shape[1:])
    total = n * samples
    acc = torch.float64 if x.device.type in ("cpu", "cuda") else x.dtype
    sums = [torch.zeros((n, *shape), dtype=acc, device=x.device) for _ in powers]
    saliency = Saliency(forward)
    step = max(1, int(rows_per_pass))
    for start in range(0, total, step):
        which = list(range(start, min(start + step, total)))
        inputs = [r // samples for r in which]
        draws = [_draw(seed, keys[i], r % samples, shape, baseline is not None) for r, i in zip(which, inputs)]
        idx = torch.as_tensor(inputs, device=x.device)
        eps = torch.stack([d[0] for d in draws]).to(device=x.device, dtype=x.dtype)
        noisy = x.detach()[idx] + stdev * eps
        rows = [target[i] for i in inputs]
        if baseline is None:
            g = saliency.attribute(noisy.requires_grad_(True), target=rows, abs=False).detach()
        else:
            b = baseline.detach()[idx]
            a = torch.tensor([d[1] for d in draws], device=x.device, dtype=x.dtype).reshape(-1, *[1] * len(shape))
            point = (b + a * (noisy - b)).requires_grad_(True)
            g = (noisy - b) * saliency.attribute(point, target=rows, abs=False).detach()
        for total_p, p in zip(sums, powers):
            total_p.index_add_(0, idx, (g ** p).to(acc))
    return tuple(s / samples for s in sums)
