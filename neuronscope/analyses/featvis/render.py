"""The optimization loop: activation maximization (Erhan et al. 2009) as in Lucid's ``render``.

One call optimizes a whole batch: ``objective.n`` targets times ``replicas`` images each (random
starts, or the members of a diverse set). Per step: the parameterization draws the images, the
transforms perturb them, the Subject normalizes them, the model runs **only as far as the
deepest layer the objective reads** (a forward hook raises once every needed layer has fired)
and, when the objective reads one channel per image there, that layer computes only those
channels (:mod:`.tap`); Adam takes a step on ``-objective``. During the first ``warmup`` steps
the redirected-ReLU gradient (:mod:`.redirect`) lets units that start switched off still move;
it is used on the first step and then only while some image's gradient is blocked (for every
other image it equals the ordinary gradient, at a higher cost).

The final score of each image is measured on the clean image (no transforms), in eval mode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import OptionError
from ...progress import progress_bar
from ...subject import Subject
from .objectives import Objective, _pick
from .param import ImageParam, make_param, to_range
from .redirect import RedirectedReLU
from .tap import Tap
from .transforms import make_transforms


@dataclass
class Rendering:
    """What one optimization produced."""

    images: np.ndarray  # (B, C, H, W) raw inputs in the model's value range
    values: np.ndarray  # (B,) objective on the clean final images
    start_values: np.ndarray  # (B,) objective on the clean starting images
    target: np.ndarray  # (B,) objective target of each image
    group: np.ndarray  # (B,) diverse-set / seed group of each image
    history: np.ndarray  # (steps, B) objective under transforms at every step
    objective: str = ""
    steps: int = 0
    seconds: float = 0.0

    def for_target(self, t: int) -> np.ndarray:
        return np.flatnonzero(self.target == t)


def _evaluate(subject, objective, images01, target, group, tap):
    raw = to_range(images01, subject.value_range)
    with torch.no_grad():
        return objective(tap.context(raw, target, group, _output_kind(subject))).float().cpu().numpy()


def _picks(objective: Objective, target: torch.Tensor) -> torch.Tensor | None:
    """Each image's one channel, when that is all the objective reads of its only layer."""
    if len(objective.layers) != 1 or objective.needs_output:
        return None
    reads = objective.channels_read(next(iter(objective.layers)))
    return None if reads is None else _pick(reads.to(target.device), target)


def _output_kind(subject: Subject) -> str:
    return "probabilities" if subject._probabilities_in_forward and not subject.squash else "logits"


def _adam(params, lr: float) -> torch.optim.Optimizer:
    try:  # the fused kernel: one pass over the parameters instead of a dozen
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr)


def _some_image_blocked(params, batch: int) -> bool:
    """Whether some image's parameters got no gradient at all in the last backward pass."""
    got = torch.zeros(batch, dtype=torch.bool, device=params[0].device)
    for t in params:
        if t.grad is not None:
            got |= t.grad.reshape(batch, -1).ne(0).any(1)
    return not bool(got.all())


def _input_map(subject: Subject) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` with ``prepare(to_range(x)) == x * a + b`` for images ``x`` in [0, 1]."""
    lo, hi = subject.value_range
    c = subject.input_shape[0]
    mean = subject.mean if subject.mean is not None else torch.zeros(1, 1, 1, dtype=subject.dtype, device=subject.device)
    std = subject.std if subject.std is not None else torch.ones(1, 1, 1, dtype=subject.dtype, device=subject.device)
    a = (torch.full((c, 1, 1), hi - lo, dtype=subject.dtype, device=subject.device) / std)
    b = (lo - mean) / std
    return a, b.expand(c, 1, 1).contiguous()


def render(
    subject: Subject,
    objective: Objective,
    *,
    replicas: int = 1,
    param: str | ImageParam = "fourier",
    transforms="standard",
    steps: int = 256,
    lr: float = 0.05,
    warmup: int = 16,
    rescue: bool = False,
    seed: int = 0,
    colour=None,
    decay_power: float = 1.0,
    magnitude=None,
    penalty=None,
    truncate: bool = True,
    pick: bool = True,
    monitor=None,
    progress: bool = True,
    desc: str = "visualizing",
) -> Rendering:
    """Optimize ``objective.n * replicas`` images in one batch and return them with their scores.

    ``param`` is a name (``"fourier"``, ``"pixel"``, ``"maco"``) or a ready :class:`ImageParam`
    with that many images. ``penalty(images01) -> (B,)`` is subtracted from the objective (used
    by accentuation to stay close to a real input). ``truncate=False`` runs the whole model every
    step; ``pick=False`` computes every channel of the objective's layer even when it reads one
    per image (see :mod:`.tap`). ``monitor(step, images01, logits)`` is called
    after each forward pass (logits when the objective reads the output). Image ``b`` serves
    target ``b // replicas``. With ``rescue``, the redirected gradient stays on after the warm-up,
    up to three quarters of the steps, while any image's objective is still at or below zero (a
    unit that the near-grey start leaves switched off everywhere).
    """
    if len(subject.input_shape) != 3:
        raise OptionError("image feature visualization needs (C, H, W) inputs; for vectors use neuronscope.visualize or featvis.maximize")
    if objective.layers:
        subject._require_hooks("feature visualization of a layer")
    batch = objective.n * replicas
    if isinstance(param, ImageParam):
        if param.batch != batch:
            raise OptionError(f"the parameterization holds {param.batch} images, the objective needs {batch}")
        p = param
    else:
        p = make_param(param, batch, subject.input_shape, colour=colour, decay_power=decay_power,
                       magnitude=magnitude, device=subject.device, seed=seed)
    tf = make_transforms(transforms)
    g = torch.Generator().manual_seed(seed + 1)
    target = torch.arange(objective.n, device=subject.device).repeat_interleave(replicas)
    group = target.clone()
    kind = _output_kind(subject)
    opt = _adam(p.parameters(), lr)
    # to_range and the Subject's normalization as one affine map per channel: x * a + b
    a, b = _input_map(subject)
    # Kept on the device and read once at the end: a per-step read would make the host wait
    # for an accelerator at every step (only ``rescue`` needs the previous step's values).
    history = torch.zeros((steps, batch), dtype=torch.float32, device=subject.device)
    plan = tf.plan(steps, (batch, *subject.input_shape), g, device=subject.device, dtype=torch.float32)
    t0 = time.perf_counter()
    picks = _picks(objective, target) if pick else None
    with subject.borrowed(), Tap(subject, objective.layers, needs_output=objective.needs_output, truncate=truncate,
                                 picks=picks) as tap:
        start_values = _evaluate(subject, objective, p().detach(), target, group, tap)
        bar = progress_bar(steps, desc, "step", enabled=progress)
        # The redirected gradient equals the ordinary one for every image whose ordinary gradient
        # is alive, so a warm-up step only needs the (dearer) redirected ReLU while some image is
        # blocked: after the first step, redirect again only when the last step found one (a
        # plain step sees it as an image whose parameters got no gradient at all).
        per_image = penalty is None and all(t.shape[:1] == (batch,) for t in p.parameters())
        need = True
        try:
            for step in range(steps):
                opt.zero_grad(set_to_none=True)
                images = p()
                x = torch.addcmul(b, plan[step](images).to(subject.dtype), a)
                stuck = rescue and step < (3 * steps) // 4 and step > 0 and bool((history[step - 1] <= 0).any())
                redirect = stuck or (step < warmup and (need or not per_image))
                if redirect:
                    mode = RedirectedReLU()
                    with mode:
                        ctx = tap.context(x, target, group, kind, prepared=True)
                else:
                    ctx = tap.context(x, target, group, kind, prepared=True)
                value = objective(ctx)
                if monitor is not None:
                    monitor(step, images.detach(), None if ctx.output is None else ctx.output.detach())
                total = value if penalty is None else value - penalty(images)
                (-total.sum()).backward()
                if step < warmup and per_image:
                    need = mode.blocked if redirect else _some_image_blocked(p.parameters(), batch)
                opt.step()
                history[step] = value.detach().float()
                bar.update(1)
        finally:
            bar.close()
        final = p().detach()
        values = _evaluate(subject, objective, final, target, group, tap)
    raw = to_range(final, subject.value_range).float().cpu().numpy()
    return Rendering(images=raw, values=values, start_values=start_values, target=target.cpu().numpy(),
                     group=group.cpu().numpy(), history=history.cpu().numpy(), objective=repr(objective), steps=steps,
                     seconds=time.perf_counter() - t0)
