"""The forward pass an optimization step needs, and nothing more.

A visualization of a unit only needs the network up to that unit's layer, and of that layer only
what the objective reads. :class:`Tap` collects the layers an objective reads with forward hooks
and stops the pass once the deepest has fired (Lucent, like Lucid, runs the whole model every
step). When the objective reads **one channel per image** at its only layer (channel and neuron
objectives, as many targets as images) and that layer is a plain ``Conv1d/2d/3d`` or ``Linear``,
the layer itself computes only those channels: image ``b``'s own filter, one grouped convolution
for the batch. For the first layers of a CNN that layer is most of the model's cost, and its
backward pass to the input with it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as _module  # global hooks apply to every module

from ...subject import Subject, first_tensor
from .objectives import Context

_CONV = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


class _Enough(Exception):
    """Raised inside a hook once every needed layer has produced its output."""


def can_pick(module: nn.Module) -> bool:
    """Whether :func:`picked_forward` computes exactly what ``module`` would, channel by channel:
    a plain convolution or linear layer (not a subclass, not a parametrized or patched one) with no
    hooks of anyone else's, which could change its output."""
    if type(module) not in _CONV and type(module) is not nn.Linear:
        return False
    if "forward" in module.__dict__ or module._forward_hooks or module._forward_pre_hooks:
        return False
    return not (_module._global_forward_hooks or _module._global_forward_pre_hooks)


def picked_forward(module: nn.Module, x: torch.Tensor, channels: torch.Tensor) -> torch.Tensor | None:
    """``module(x)[b, channels[b]]`` for every ``b`` without computing the other channels, or None
    when ``x`` is not a batch of what the module takes (or, for a Linear layer, not ``(B, features)``)."""
    b = x.shape[0]
    if b != channels.shape[0]:
        return None
    if type(module) is nn.Linear:
        # Units are read along dimension 1, which is the Linear's own only for (B, features).
        if x.ndim != 2 or x.shape[1] != module.in_features:
            return None
        out = (x * module.weight[channels]).sum(1)
        return out if module.bias is None else out + module.bias[channels]
    if x.ndim != module.weight.ndim:
        return None
    if module.groups > 1:  # each output channel reads its own group of input channels
        per = module.in_channels // module.groups
        first = (channels // (module.out_channels // module.groups)) * per
        rows = torch.arange(b, device=x.device)[:, None]
        x = x[rows, first[:, None] + torch.arange(per, device=x.device)]
    padding = module.padding
    if module.padding_mode != "zeros":
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        padding = 0
    x = x.reshape(1, -1, *x.shape[2:])  # the batch as groups: image b meets only filter b
    w = module.weight[channels]
    if x.ndim == 4 and x.device.type == "cpu":
        # oneDNN runs grouped convolutions several times faster in channels-last layout
        x = x.contiguous(memory_format=torch.channels_last)
        w = w.contiguous(memory_format=torch.channels_last)
    bias = module.bias[channels] if module.bias is not None else None
    out = _CONV[type(module)](x, w, bias, module.stride, padding, module.dilation, b)
    return out.reshape(b, *out.shape[2:])


class Tap:
    """Forward hooks that collect the layers an objective reads, and cut the pass short.

    Used as a context manager around many forward passes (hooks are registered once).
    ``truncate=False`` runs the whole model (the reference "full forward" in benchmarks).
    ``picks`` (one channel per image, for an objective that reads only that at its one layer)
    lets that layer compute only those channels (see :func:`picked_forward`); a pass whose batch
    does not match, or a layer that cannot, runs the whole layer instead. Which layers were picked
    is in ``self.picked`` after each pass (and in the :class:`Context` of :meth:`context`).
    """

    def __init__(self, subject: Subject, layers, *, needs_output: bool, truncate: bool = True,
                 picks: torch.Tensor | None = None):
        self.subject = subject
        self.infos = [subject.layer(layer) for layer in sorted(layers)]
        self.needs_output = needs_output
        self.truncate = truncate and not needs_output and subject.fixed_batch is None
        self.picks = picks if self.truncate and len(self.infos) == 1 else None
        self.acts: dict[str, torch.Tensor] = {}
        self.picked: dict[str, torch.Tensor] = {}
        self.logits: torch.Tensor | None = None
        self._handles = []
        self._counters: dict[str, int] = {}

    def __enter__(self):
        wanted: dict[str, dict] = {}
        for info in self.infos:
            wanted.setdefault(info.module_name, {})[info.call] = info.name
        model = self.subject.model
        if self.picks is not None:
            self._pick_at(model)

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

    def _pick_at(self, model: nn.Module) -> None:
        """A pre-hook that computes the picked channels of the one layer and ends the pass."""
        (info,) = self.infos
        module = model.get_submodule(info.module_name)
        if not can_pick(module):  # checked before our own hooks are on it
            return
        call = info.call or 0

        def pre(module, inputs):
            if self._counters.get(info.module_name, 0) != call or len(inputs) != 1:
                return None
            out = picked_forward(module, inputs[0], self.picks)
            if out is None:
                return None
            self.picked[info.name] = out
            raise _Enough
        self._handles.append(module.register_forward_pre_hook(pre))

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def run(self, raw: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Forward raw inputs; return the needed activations and (when needed) the logits."""
        return self.run_prepared(self.subject.prepare(raw), raw.shape[0])

    def run_prepared(self, x: torch.Tensor, n: int) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """The same for inputs already normalized the way the Subject would."""
        self.acts, self.picked, self.logits = {}, {}, None
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

    def context(self, x: torch.Tensor, target: torch.Tensor, group: torch.Tensor, kind: str, *,
                prepared: bool = False) -> Context:
        """One pass of ``x`` (raw, or normalized with ``prepared``) as an objective sees it."""
        if prepared:
            acts, z = self.run_prepared(x, x.shape[0])
        else:
            acts, z = self.run(x)
        return Context(acts, z, target, group, kind, picked=dict(self.picked))

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
