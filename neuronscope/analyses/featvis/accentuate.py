"""Feature accentuation: what in *this* input a unit would amplify, and how little it takes.

Hamblin, Fel, Saha, Konkle, Alvarez, "Feature Accentuation: Revealing 'What' Features Respond
to in Natural Images" (2024): start the optimization from a real input instead of noise, and keep
the image close to it with a penalty. The result stays a version of the user's own image, with
the parts the unit (or class) reacts to pushed further.

For a class objective this is also the adversarial view users ask about: the optimizer records
the first step at which the model's decision turns into the target class and how far the image
had moved then (RMS and largest pixel change, in raw input units). On the shortcut-shapes demo,
the change that turns a circle into a "triangle" lands on the corner where the training marker
was; on the clean twin it does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...errors import OptionError
from ...subject import Subject
from .objectives import ClassLogit, Objective
from .param import PixelParam, from_range
from .render import Rendering, render


@dataclass
class Accentuation:
    """Accentuated images next to their originals."""

    originals: np.ndarray  # (B, C, H, W) raw
    rendering: Rendering  # .images are the accentuated raw images
    strength: float
    flip_step: np.ndarray  # (B,) first step predicted as the target class, -1 if never (class objectives)
    flip_rms: np.ndarray  # (B,) RMS raw change at that step (nan if never)
    flip_max: np.ndarray  # (B,) largest raw pixel change at that step

    @property
    def images(self) -> np.ndarray:
        return self.rendering.images

    @property
    def change(self) -> np.ndarray:
        """Accentuated minus original, raw units, (B, C, H, W)."""
        return self.rendering.images - self.originals

    def change_share(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """Per image, the share of the squared change inside ``(y0, x0, y1, x1)``."""
        y0, x0, y1, x1 = box
        sq = (self.change.astype(np.float64) ** 2).sum(1)
        return sq[:, y0:y1, x0:x1].sum((1, 2)) / np.maximum(sq.sum((1, 2)), 1e-30)


def accentuate(subject: Subject, objective: Objective, inputs, *, strength: float = 1.0, steps: int = 128,
               lr: float = 0.05, transforms=None, seed: int = 0, progress: bool = True) -> Accentuation:
    """Push ``objective`` from real raw ``inputs`` (B, C, H, W) while staying near them.

    The penalty is ``strength`` times the summed squared change in ``[0, 1]`` pixel units, per image
    (changing one pixel of every channel from black to white costs ``3 * strength``). Image ``b``
    serves target ``b`` of a vectorized objective (or the only one).
    """
    x0 = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
    if x0.ndim == 3:
        x0 = x0[None]
    b = x0.shape[0]
    if objective.n not in (1, b):
        raise OptionError(f"the objective has {objective.n} targets for {b} inputs: give one target or one per input")
    obj = objective if objective.n == b else _Broadcast(objective, b)
    init01 = from_range(x0, subject.value_range).clamp(0, 1)
    param = PixelParam(b, subject.input_shape, init=init01, device=subject.device, seed=seed)
    start01 = param().detach()  # init after the logit clamp: the exact starting point

    target_class = objective.classes if isinstance(objective, ClassLogit) else None
    flip_step = np.full(b, -1, dtype=np.int64)
    flip_rms = np.full(b, np.nan)
    flip_max = np.full(b, np.nan)
    lo, hi = subject.value_range

    def monitor(step, images01, logits):
        if target_class is None or logits is None:
            return
        pred = subject.to_probabilities(logits).argmax(1).cpu().numpy()
        want = target_class.cpu().numpy()
        want = want if len(want) == b else np.repeat(want, b)
        d = ((images01 - start01) * (hi - lo)).reshape(b, -1).cpu().numpy()
        for i in np.flatnonzero((pred == want) & (flip_step < 0)):
            flip_step[i] = step
            flip_rms[i] = float(np.sqrt((d[i] ** 2).mean()))
            flip_max[i] = float(np.abs(d[i]).max())

    def penalty(images01):
        return strength * (images01 - start01).pow(2).reshape(b, -1).sum(1)

    r = render(subject, obj, param=param, transforms=transforms, steps=steps, lr=lr, warmup=0, seed=seed,
               penalty=penalty, monitor=monitor, progress=progress, desc="accentuating")
    return Accentuation(originals=x0.numpy(), rendering=r, strength=strength, flip_step=flip_step,
                        flip_rms=flip_rms, flip_max=flip_max)


class _Broadcast(Objective):
    """One objective served to ``b`` images as ``b`` identical targets."""

    def __init__(self, inner: Objective, b: int):
        self.inner, self.n = inner, b
        self.layers, self.needs_output, self.kind = inner.layers, inner.needs_output, inner.kind
        self.description = repr(inner)
        self.classes = getattr(inner, "classes", None)

    def __call__(self, ctx):
        return self.inner(ctx)
