"""What a class wants inside one window, drawn from the data's own patches.

A class visualization of the whole image draws the class's strongest evidence, usually its
object: on a network that also learned a small fixed shortcut, the object wins and the shortcut
stays invisible. This asks the narrower question the shortcut search raises: *what content of
this window turns images of other classes into this class?* It is an adversarial patch (Brown
et al., "Adversarial Patch", 2017): one shared content, pasted at one place onto many real images
of other classes, optimized for the class's log-probability. Unconstrained, such a patch is an
adversarial pattern that no image contains. Here it is kept **inside the space of the data's
own contents of that window**: the patch is the data's mean window plus a combination of the
principal components of the windows of real images that explain ``variance`` of their spread,
each coefficient kept inside the range the data spans. The optimum is then a window the data
could hold, which a person can compare with real ones (a prior from the data, in the spirit of
natural pre-images, Mahendran & Vedaldi 2016, and of MACO's data spectrum).

Evidence beside it: the share of **held-out** other-class images the patch flips (the
optimization never saw them), the same for the data's mean window (the control), the agreement
of the patches grown from different random starts, and the real image whose window is closest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...errors import OptionError
from .objectives import class_logprob
from .param import ImageParam, from_range, to_range
from .render import render


@dataclass
class ClassPatch:
    """The window content that most turns other images into one class (see the module docstring)."""

    cls: int
    region: tuple[int, int, int, int]  # [y0, x0, y1, x1)
    patch: np.ndarray  # (C, h, w) raw values: the best start's patch
    patches: np.ndarray  # (seeds, C, h, w)
    values: np.ndarray  # (seeds,) mean log-probability of the class on the images it was grown on
    flip: float  # held-out other-class images predicted as the class with the patch pasted
    flips: np.ndarray  # (seeds,) the same for every start
    control: float  # the same with the data's mean window pasted
    held_out: int
    components: int  # principal components of the data's windows spanned
    variance: float  # share of the windows' variance they explain
    agreement: float  # mean pairwise correlation of the starts' patches
    nearest: int  # index (in the sample given) of the image whose window is closest to the patch
    nearest_correlation: float


class _WindowParam(ImageParam):
    """``seeds x R`` images: real backgrounds with one window per start, in the data's patch space."""

    def __init__(self, backgrounds01: torch.Tensor, region, mean, basis, lo, hi, seeds: int, *, device, seed: int):
        r, c, h, w = backgrounds01.shape
        super().__init__(seeds * r, (c, h, w), device=device, seed=seed)
        self.backgrounds = backgrounds01.to(self.device)
        self.region, self.seeds, self.r = region, seeds, r
        self.mean, self.basis = mean.to(self.device), basis.to(self.device)  # (D,), (D, K)
        self.lo, self.hi = lo.to(self.device), hi.to(self.device)
        self.w = self._randn(seeds, basis.shape[1], scale=1.0)

    def windows(self) -> torch.Tensor:
        """(seeds, C, h, w) in [0, 1]."""
        y0, x0, y1, x1 = self.region
        coef = self.lo + (self.hi - self.lo) * torch.sigmoid(self.w)
        flat = (self.mean + coef @ self.basis.T).clamp(0, 1)
        return flat.reshape(self.seeds, self.shape[0], y1 - y0, x1 - x0)

    def __call__(self) -> torch.Tensor:
        y0, x0, y1, x1 = self.region
        images = self.backgrounds.repeat(self.seeds, 1, 1, 1)
        win = self.windows().repeat_interleave(self.r, dim=0)
        return torch.cat([images[:, :, :y0], torch.cat([images[:, :, y0:y1, :x0], win, images[:, :, y0:y1, x1:]], 3),
                          images[:, :, y1:]], 2)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    d = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / d) if d > 0 else 0.0


def class_patch(subject, k: int, region, x, pred, *, variance: float = 0.98, seeds: int = 3, grow_on: int = 32,
                steps: int = 128, lr: float = 0.05, seed: int = 0, progress: bool = False) -> ClassPatch:
    """Grow the content of ``region`` that turns images of other classes into class ``k``.

    ``x`` (N, C, H, W) raw images spread over the data and ``pred`` their predicted classes: the
    windows of all of them define the patch space, ``grow_on`` of the images predicted as another
    class are the backgrounds the patch is optimized on, and the rest of those (at least as
    many, when there are enough) are held out for the flip rate.
    """
    y0, x0, y1, x1 = (int(v) for v in region)
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    if not (0 <= y0 < y1 <= x.shape[-2] and 0 <= x0 < x1 <= x.shape[-1]):
        raise OptionError(f"the window {region} does not fit images of {tuple(x.shape[-2:])}")
    others = np.flatnonzero(np.asarray(pred) != k)
    if len(others) < 4:
        raise OptionError(f"class patches need images of other classes; the sample holds {len(others)}")
    x01 = from_range(x, subject.value_range).clamp(0, 1)
    flat = x01[:, :, y0:y1, x0:x1].reshape(len(x01), -1).double()
    mean = flat.mean(0)
    _, s, vt = torch.linalg.svd(flat - mean, full_matrices=False)
    explained = (s * s).cumsum(0) / (s * s).sum().clamp(min=1e-12)
    n_comp = int(min(len(s), int(torch.searchsorted(explained, torch.tensor(variance, dtype=explained.dtype))) + 1))
    basis = vt[:n_comp].T  # (D, K)
    coef = (flat - mean) @ basis
    lo, hi = coef.min(0).values, coef.max(0).values
    rng = np.random.default_rng(seed)
    others = rng.permutation(others)
    grow = others[: min(grow_on, len(others) // 2)]
    held = others[len(grow):]
    p = _WindowParam(x01[grow], (y0, x0, y1, x1), mean.float(), basis.float(), lo.float(), hi.float(), seeds,
                     device=subject.device, seed=seed)
    out = render(subject, class_logprob([k]), replicas=seeds * len(grow), param=p, transforms="none", steps=steps,
                 lr=lr, warmup=0, seed=seed, progress=progress, desc=f"class patch {k}")
    values = out.values.reshape(seeds, len(grow)).mean(1)
    with torch.no_grad():
        wins = p.windows().detach().cpu()

    def flip_rate(window01: torch.Tensor, chunk: int = 128) -> float:
        flipped = 0
        for s in range(0, len(held), chunk):  # in chunks: the held-out images can be thousands
            pasted = x01[held[s:s + chunk]].clone()
            pasted[:, :, y0:y1, x0:x1] = window01
            with torch.no_grad():
                flipped += int((subject.predict(to_range(pasted, subject.value_range)) == k).sum())
        return flipped / len(held)

    flips = np.array([flip_rate(wins[i]) for i in range(seeds)])
    best = int(np.argmax(values))
    raw = to_range(wins, subject.value_range).numpy()
    patches = wins.numpy()
    pairs = [_corr(patches[i], patches[j]) for i in range(seeds) for j in range(i + 1, seeds)]
    corr = [_corr(patches[best], f) for f in flat.float().numpy()]
    nearest = int(np.argmax(corr))
    return ClassPatch(cls=k, region=(y0, x0, y1, x1), patch=raw[best], patches=raw, values=values,
                      flip=float(flips[best]), flips=flips,
                      control=flip_rate(mean.float().reshape(wins.shape[1:])), held_out=len(held),
                      components=n_comp, variance=float(explained[n_comp - 1]),
                      agreement=float(np.mean(pairs)) if pairs else 1.0, nearest=nearest,
                      nearest_correlation=float(corr[nearest]))


def patch_picture(subject, x, cp: ClassPatch, candidates) -> np.ndarray:
    """One strip: every start's window (magnified) | the real image whose window is closest | an image
    of another class | the same with the best window pasted (not boxed: a box would cover it).

    The image of another class is chosen among ``candidates`` (indices into ``x``): one the paste
    turns into the class whose own window is least like the patch, so the change is the patch's.
    """
    from ... import imaging

    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    lo_hi = subject.value_range
    h, w = x.shape[-2:]
    y0, x0, y1, x1 = cp.region
    f = max(1, min(h // (y1 - y0), w // (x1 - x0)))

    def magnified(patch):
        big = imaging.upscale_nearest(imaging.input_rgb(patch, lo_hi), f)
        tile = np.full((h, w, 3), 255, np.uint8)
        top, left = (h - big.shape[0]) // 2, (w - big.shape[1]) // 2
        tile[top:top + big.shape[0], left:left + big.shape[1]] = big[..., :3]
        return tile

    cand = [int(i) for i in candidates]
    own = [abs(_corr(x[i, :, y0:y1, x0:x1].numpy(), cp.patch)) for i in cand]
    pasted = x[cand].clone()
    pasted[:, :, y0:y1, x0:x1] = torch.as_tensor(cp.patch)
    with torch.no_grad():
        flipped = (subject.predict(pasted) == cp.cls).cpu().numpy()
    j = min(range(len(cand)), key=lambda i: (not flipped[i], own[i]))
    tiles = [magnified(p) for p in cp.patches] + [imaging.input_rgb(x[i].numpy(), lo_hi)[..., :3] for i in (cp.nearest, cand[j])]
    tiles.append(imaging.input_rgb(pasted[j].numpy(), lo_hi)[..., :3])
    size = max(1, 96 // max(h, w))
    return imaging.tile_grid(np.stack([imaging.upscale_nearest(t, size) for t in tiles]), ncols=len(tiles), pad=2)
