"""The optimization loop: activation maximization (Erhan et al. 2009) as in Lucid's ``render``.

One call optimizes a whole batch: ``objective.n`` targets times ``replicas`` images each (random
starts, or the members of a diverse set). Per step: the parameterization draws the images, the
transforms perturb them, the Subject normalizes them, the model runs **only as far as the
deepest layer the objective reads** (a forward hook raises once every needed layer has fired),
and Adam takes a step on ``-objective``. During the first ``warmup`` steps the redirected-ReLU
gradient (:mod:`.redirect`) lets units that start switched off still move; it is used on the
first step and then only while some image's gradient is blocked (for every other image it equals
the ordinary gradient, at a higher cost).

The final score of each image is measured on the clean image (no transforms), in eval mode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import OptionError
from ...progress import progress_bar
from ...subject import Subject, first_tensor
from .objectives import Context, Objective
from .param import ImageParam, make_param, to_range
from .redirect import RedirectedReLU
from .transforms import make_transforms


class _Enough(Exception):
    """Raised inside a hook once every needed layer has produced its output."""


class Tap:
    """Forward hooks that collect the layers an objective reads, and cut the pass short.

    Used as a context manager around many forward passes (hooks are registered once).
    ``truncate=False`` runs the whole model (the reference "full forward" in benchmarks).
    """

    def __init__(self, subject: Subject, layers, *, needs_output: bool, truncate: bool = True):
        self.subject = subject
        self.infos = [subject.layer(layer) for layer in sorted(layers)]
        self.needs_output = needs_output
        self.truncate = truncate and not needs_output and subject.fixed_batch is None
        self.acts: dict[str, torch.Tensor] = {}
        self.logits: torch.Tensor | None = None
        self._handles = []
        self._counters: dict[str, int] = {}

    def __enter__(self):
        wanted: dict[str, dict] = {}
        for info in self.infos:
            wanted.setdefault(info.module_name, {})[info.call] = info.name
        model = self.subject.model

        def reset(module, inputs):
            self._counters.clear()

        def hook(module_name):
            calls = wanted[module_name]

            def fn(module, inputs, output):
                k = self._counters.get(module_name, 0)
                self._counters[module_name] = k + 1
                address = calls.get(k, calls.get(None) if k == 0 else None)
                if address is None:
                    return
                t, _ = first_tensor(output)
                last = self.truncate and len(self.acts) + 1 == len(self.infos)
                # A copy unless the pass stops right here: a later in-place op would overwrite it.
                self.acts[address] = t if last else t.clone()
                if last:
                    raise _Enough
            return fn

        self._handles.append(model.register_forward_pre_hook(reset))
        for module_name in wanted:
            self._handles.append(model.get_submodule(module_name).register_forward_hook(hook(module_name)))
        if self.needs_output and self.subject.squash:
            squash = model.get_submodule(self.subject._squash[1])

            def pre(module, inputs):
                self.logits = inputs[0]
            self._handles.append(squash.register_forward_pre_hook(pre))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def run(self, raw: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Forward raw inputs; return the needed activations and (when needed) the logits."""
        return self.run_prepared(self.subject.prepare(raw), raw.shape[0])

    def run_prepared(self, x: torch.Tensor, n: int) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """The same for inputs already normalized the way the Subject would."""
        self.acts, self.logits = {}, None
        try:
            if self.subject.fixed_batch is not None:
                out = self._run_fixed(x)
            else:
                out = self.subject._select_output(self.subject.model(x))
        except _Enough:
            return dict(self.acts), None
        if not self.needs_output:
            return dict(self.acts), None
        z = self.logits if self.logits is not None else out
        return dict(self.acts), z[:n]

    def _run_fixed(self, x: torch.Tensor) -> torch.Tensor:
        """Models exported at a fixed batch size: pad, run in chunks, keep the real rows."""
        f = self.subject.fixed_batch
        outs, acts, logits = [], {}, []
        for start in range(0, x.shape[0], f):
            chunk = x[start : start + f]
            n = chunk.shape[0]
            if n < f:
                chunk = torch.cat([chunk, chunk[:1].expand(f - n, *chunk.shape[1:])])
            self.acts, self.logits = {}, None
            outs.append(self.subject._select_output(self.subject.model(chunk))[:n])
            for a, t in self.acts.items():
                acts.setdefault(a, []).append(t[:n])
            if self.logits is not None:
                logits.append(self.logits[:n])
        self.acts = {a: torch.cat(ts) for a, ts in acts.items()}
        self.logits = torch.cat(logits) if logits else None
        return torch.cat(outs)


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
        acts, z = tap.run(raw)
        ctx = Context(acts, z, target, group, _output_kind(subject))
        return objective(ctx).float().cpu().numpy()


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
    monitor=None,
    progress: bool = True,
    desc: str = "visualizing",
) -> Rendering:
    """Optimize ``objective.n * replicas`` images in one batch and return them with their scores.

    ``param`` is a name (``"fourier"``, ``"pixel"``, ``"maco"``) or a ready :class:`ImageParam`
    with that many images. ``penalty(images01) -> (B,)`` is subtracted from the objective (used
    by accentuation to stay close to a real input). ``monitor(step, images01, logits)`` is called
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
    with subject.borrowed(), Tap(subject, objective.layers, needs_output=objective.needs_output, truncate=truncate) as tap:
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
                        acts, z = tap.run_prepared(x, batch)
                else:
                    acts, z = tap.run_prepared(x, batch)
                value = objective(Context(acts, z, target, group, kind))
                if monitor is not None:
                    monitor(step, images.detach(), None if z is None else z.detach())
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
