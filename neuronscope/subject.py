"""The user's model as neuronscope sees it.

A :class:`Subject` wraps an ``nn.Module`` together with how it is fed (input shape, value range,
normalization, class names) and what counts as its output. It lists the layers a forward pass
meets, resolves unit addresses, captures activations through hooks, and always leaves the model
as it found it: train/eval mode, hooks, ``requires_grad`` and weights.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import (
    InputShapeError,
    NeuronscopeError,
    UnitOutOfRangeError,
    UnknownLayerError,
    UnsupportedError,
    did_you_mean,
)
from .units import AddressError, Unit, parse_unit

ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardtanh, nn.Softplus, nn.Tanh, nn.Sigmoid, nn.Hardsigmoid,
)
#: Activations that are zero on a whole half-line: a unit that never exceeds 0 is dead.
RELU_LIKE = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
#: Final modules that squash logits into probabilities.
SQUASHES = {nn.Softmax: "softmax", nn.LogSoftmax: "log_softmax", nn.Sigmoid: "sigmoid"}


@dataclass(frozen=True)
class LayerInfo:
    """One layer as a forward pass meets it."""

    name: str  # address: dotted module name, with "#k" for the k-th call of a reused module
    module_name: str
    call: int | None
    type: str
    output_shape: tuple[int, ...] | None  # per example, without the batch dimension
    params: int  # parameters of the module and its children
    is_leaf: bool
    order: int  # position in the forward pass (-1 when unknown)
    note: str = ""

    @property
    def channels(self) -> int | None:
        return self.output_shape[0] if self.output_shape else None

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(self.output_shape[1:]) if self.output_shape else ()


@dataclass
class _Trace:
    """What one probing forward pass saw, module by module."""

    calls: dict[str, list[tuple[tuple[int, ...] | None, str]]] = field(default_factory=dict)
    order: list[tuple[str, int]] = field(default_factory=list)
    last_output_module: str | None = None


def first_tensor(value) -> tuple[torch.Tensor | None, str]:
    """The tensor a hook reads from a module output, and a note when it had to choose one."""
    if isinstance(value, torch.Tensor):
        return value, ""
    if isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            if isinstance(v, torch.Tensor):
                return v, f"element {i} of a {type(value).__name__} output"
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(v, torch.Tensor):
                return v, f"key {k!r} of a dict output"
    return None, "no tensor output"


class Capture:
    """Activations recorded by hooks while the context is open; ``capture[address]``.

    With ``reduce``, each hook stores ``reduce(output)`` (a tensor or a tuple of tensors with the
    batch first) instead of a copy of the whole output: a streaming pass that only needs, say,
    each channel's maximum then never copies a feature map.
    """

    def __init__(self, addresses: Sequence[str], reduce=None):
        self.addresses = list(addresses)
        self.reduce = reduce
        self._chunks: dict[str, list] = {a: [] for a in self.addresses}

    def _record(self, address: str, tensor: torch.Tensor) -> None:
        # Reduce or copy now: an in-place op later in the forward pass would overwrite the values.
        self._chunks[address].append(self.reduce(tensor.detach()) if self.reduce else tensor.clone())

    def _keep_rows(self, n: int, appended_before: dict[str, int]) -> None:
        """Trim padding rows from what the last (padded) forward appended."""
        for a, chunks in self._chunks.items():
            for i in range(appended_before[a], len(chunks)):
                c = chunks[i]
                chunks[i] = tuple(t[:n] for t in c) if isinstance(c, tuple) else c[:n]

    def __getitem__(self, address: str) -> torch.Tensor:
        chunks = self._chunks.get(str(address))
        if chunks is None:
            raise KeyError(f"{address!r} was not captured; captured: {self.addresses}")
        if not chunks:
            raise NeuronscopeError(f"Layer {address!r} was not called during the forward pass.")
        if len(chunks) == 1:
            return chunks[0]
        if isinstance(chunks[0], tuple):
            return tuple(torch.cat(parts) for parts in zip(*chunks))
        return torch.cat(chunks)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for a in self.addresses:
            yield a, self[a]

    def clear(self) -> None:
        for chunks in self._chunks.values():
            chunks.clear()


def _module_type(module: nn.Module) -> str:
    return getattr(module, "original_name", None) or type(module).__name__


class Subject:
    """A model plus how to feed it; the object every analysis takes.

    Parameters
    ----------
    model : nn.Module
        The trained network. It is never modified; if it must move to another device a copy moves.
    input_shape : sequence of int
        Shape of one example without the batch dimension: ``(C, H, W)`` for images, ``(F,)`` for
        vectors.
    value_range : (lo, hi)
        Range of raw inputs before normalization (images: usually ``(0, 1)``).
    mean, std : float or sequence, optional
        Normalization the model expects: it is fed ``(x - mean) / std``, per channel (images) or
        per column (vectors).
    classes : sequence of str, optional
        Class names in output order.
    columns : sequence of str, optional
        Input column names, for networks on plain numeric vectors.
    output : int or str, optional
        Which element of a tuple/list/dict model output is "the output".
    task : {"classification", "regression"}, optional
        Inferred when omitted: classes given, or a final Softmax/Sigmoid, means classification;
        a single output otherwise means regression.
    device : str or torch.device, optional
    hookable : bool
        False for TorchScript models, whose submodules cannot be hooked.
    fixed_batch : int, optional
        A model exported at a fixed batch size is fed exactly that many rows (batches are padded).
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        *,
        value_range: tuple[float, float] = (0.0, 1.0),
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        classes: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        output: int | str | None = None,
        task: str | None = None,
        device: str | torch.device | None = None,
        name: str | None = None,
        hookable: bool = True,
        fixed_batch: int | None = None,
        notes: Sequence[str] = (),
    ):
        if not isinstance(model, nn.Module):
            raise NeuronscopeError(f"Subject needs a torch.nn.Module, got {type(model).__name__}.")
        self.input_shape = tuple(int(s) for s in input_shape)
        if not self.input_shape or any(s <= 0 for s in self.input_shape):
            raise InputShapeError(
                f"input_shape must be positive sizes without the batch dimension, e.g. (3, 32, 32) "
                f"or (8,); got {tuple(input_shape)}."
            )
        lo, hi = (float(v) for v in value_range)
        if not lo < hi:
            raise NeuronscopeError(f"value_range must be (low, high) with low < high; got {value_range}.")
        self.value_range = (lo, hi)
        self.notes = list(notes)
        self.hookable = hookable
        self.fixed_batch = fixed_batch
        self.name = name or type(model).__name__

        params = list(model.parameters())
        self.dtype = next((p.dtype for p in params if p.is_floating_point()), torch.float32)
        model_device = params[0].device if params else torch.device("cpu")
        self.device = torch.device(device) if device is not None else model_device
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise NeuronscopeError("--device cuda was asked for, but torch sees no CUDA device here.")
        if params and model_device != self.device:
            model = copy.deepcopy(model).to(self.device)  # the user's model stays where it was
            self.notes.append(f"analysed a copy of the model moved to {self.device}")
        self.model = model

        self.mean = self._per_channel(mean, "mean")
        self.std = self._per_channel(std, "std")
        if self.std is not None and bool((self.std == 0).any()):
            raise NeuronscopeError("std contains zeros: normalization would divide by zero.")
        self.columns = list(columns) if columns is not None else None
        if self.columns is not None and (len(self.input_shape) != 1 or len(self.columns) != self.input_shape[0]):
            raise InputShapeError(
                f"{len(self.columns)} column names given for input shape {self.input_shape}: "
                "give one name per input column."
            )
        self.output = output
        self._classes = list(classes) if classes is not None else None
        self._task = task
        if task not in (None, "classification", "regression"):
            raise NeuronscopeError(f"task must be 'classification' or 'regression', got {task!r}.")
        self._trace: _Trace | None = None
        self._layers: list[LayerInfo] | None = None
        self._squash: tuple[str, str] | None = None
        self._output_dim: int | None = None
        self._probabilities_in_forward = False
        self._directions: dict[tuple[str, str], object] = {}  # (layer, kind) -> DirectionSet

    # ----------------------------------------------------------------- feeding the model
    def _per_channel(self, value, what: str) -> torch.Tensor | None:
        if value is None:
            return None
        t = torch.as_tensor(value, dtype=self.dtype, device=self.device).flatten()
        c = self.input_shape[0]
        if t.numel() not in (1, c):
            raise InputShapeError(
                f"{what} has {t.numel()} values but inputs have {c} "
                f"{'channels' if len(self.input_shape) > 1 else 'columns'}: give 1 or {c}."
            )
        return t.reshape(-1, *([1] * (len(self.input_shape) - 1)))

    def prepare(self, x) -> torch.Tensor:
        """Check a raw batch's shape, move it to the model's device and dtype, normalize it."""
        x = torch.as_tensor(x)
        if tuple(x.shape[1:]) != self.input_shape:
            if tuple(x.shape) == self.input_shape:
                hint = " It looks like one example: add a batch dimension (x[None])."
            else:
                hint = " Check --input-shape, or the resize applied to your data."
            raise InputShapeError(
                f"Inputs of shape {tuple(x.shape)} do not fit this model: expected "
                f"(N, {', '.join(map(str, self.input_shape))}).{hint}"
            )
        x = x.to(device=self.device, dtype=self.dtype)
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        return x

    def sample_input(self, n: int = 2, seed: int = 0) -> torch.Tensor:
        """Random raw inputs spread over the value range (for probing shapes)."""
        g = torch.Generator().manual_seed(seed)
        lo, hi = self.value_range
        return lo + (hi - lo) * torch.rand((n, *self.input_shape), generator=g)

    def _select_output(self, out):
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, Mapping):
            keys = [str(k) for k in out.keys()]
            if self.output is None:
                raise NeuronscopeError(
                    f"The model returns a dict with keys {keys}; choose the output with "
                    "--output KEY (output=KEY in the API)."
                )
            if str(self.output) not in keys:
                raise NeuronscopeError(f"--output {self.output!r} is not a key of the model's output. "
                                       + did_you_mean(str(self.output), keys, "key"))
            return out[next(k for k in out if str(k) == str(self.output))]
        if isinstance(out, (tuple, list)):
            if self.output is None:
                raise NeuronscopeError(
                    f"The model returns a {type(out).__name__} of {len(out)} elements; choose the "
                    f"output with --output INDEX (0..{len(out) - 1})."
                )
            try:
                i = int(self.output)
                return out[i]
            except (ValueError, IndexError):
                raise NeuronscopeError(
                    f"--output {self.output!r} is not valid for a {type(out).__name__} of "
                    f"{len(out)} elements: use an index in 0..{len(out) - 1}."
                ) from None
        raise NeuronscopeError(f"The model returned a {type(out).__name__}, not a tensor.")

    def _forward_normalized(self, x: torch.Tensor, captures: Sequence[Capture] = ()) -> torch.Tensor:
        """Run the model on normalized inputs, padding to ``fixed_batch`` when the model needs it."""
        if self.fixed_batch is None:
            return self._select_output(self.model(x))
        outs = []
        for start in range(0, x.shape[0], self.fixed_batch):
            chunk = x[start : start + self.fixed_batch]
            n = chunk.shape[0]
            if n < self.fixed_batch:
                pad = chunk[:1].expand(self.fixed_batch - n, *chunk.shape[1:])
                chunk = torch.cat([chunk, pad])
            before = [{a: len(c) for a, c in cap._chunks.items()} for cap in captures]
            outs.append(self._select_output(self.model(chunk))[:n])
            for cap, b in zip(captures, before):
                cap._keep_rows(n, b)
        return torch.cat(outs)

    def forward(self, x) -> torch.Tensor:
        """The model's selected output for raw inputs (normalization applied here)."""
        with self.borrowed():
            return self._forward_normalized(self.prepare(x), self._active_captures)

    __call__ = forward

    # ----------------------------------------------------------------- leaving the model as it was
    @contextlib.contextmanager
    def borrowed(self) -> Iterator[nn.Module]:
        """Use the model in eval mode with frozen parameters; restore every flag afterwards.

        Parameters stop requiring gradients inside, so that input gradients never accumulate into
        the user's ``.grad`` fields. Nested use is cheap.
        """
        if getattr(self, "_borrow_depth", 0):
            self._borrow_depth += 1
            try:
                yield self.model
            finally:
                self._borrow_depth -= 1
            return
        modules = list(self.model.modules())
        training = [m.training for m in modules]
        params = list(self.model.parameters())
        grads = [p.requires_grad for p in params]
        self._borrow_depth = 1
        try:
            self.model.eval()
            for p in params:
                p.requires_grad_(False)
            yield self.model
        finally:
            self._borrow_depth = 0
            for m, t in zip(modules, training):
                m.training = t
            for p, g in zip(params, grads):
                p.requires_grad_(g)

    def recipe(self) -> dict:
        """How this Subject feeds its model, as ``Subject(model, **recipe)`` arguments: a worker
        process rebuilds it around its own copy of the network (see ``neuronscope.engines``)."""
        as_list = lambda t: None if t is None else t.detach().cpu().tolist()  # noqa: E731
        return dict(input_shape=self.input_shape, value_range=self.value_range, mean=as_list(self.mean),
                    std=as_list(self.std), classes=self._classes, columns=self.columns, output=self.output,
                    task=self._task, name=self.name, hookable=self.hookable, fixed_batch=self.fixed_batch,
                    notes=list(self.notes))

    def with_model(self, model: nn.Module) -> "Subject":
        """The same subject (feeding, classes, layer names) around another copy of the network.

        For checks that must change weights (the randomisation sanity check): they run on
        ``subject.with_model(copy.deepcopy(subject.model))``, never on the user's model.
        """
        other = copy.copy(self)
        other.model = model
        other._borrow_depth = 0
        other._active_captures = []
        other._directions = dict(self._directions)
        return other

    # ----------------------------------------------------------------- layers
    def _probe(self) -> _Trace:
        """One forward pass on a sample input with a hook on every module."""
        if self._trace is not None:
            return self._trace
        trace = _Trace()
        if not self.hookable:
            self._trace = trace
            return trace
        handles = []
        root_out = {}

        def hook(name):
            def fn(module, inputs, output):
                t, note = first_tensor(output)
                shape = tuple(t.shape[1:]) if t is not None else None
                k = len(trace.calls.setdefault(name, []))
                trace.calls[name].append((shape, note))
                trace.order.append((name, k))
                if t is not None:
                    root_out.setdefault("last", []).append((name, t))
            return fn

        try:
            for name, module in self.model.named_modules():
                if name:
                    handles.append(module.register_forward_hook(hook(name)))
            n = self.fixed_batch or 2
            with torch.no_grad(), self.borrowed():
                out = self._forward_normalized(self.prepare(self.sample_input(n)))
        except NeuronscopeError:
            raise
        except Exception as e:  # the user's model failed on a well-formed input
            raise InputShapeError(
                f"The model failed on an input of shape (N, {', '.join(map(str, self.input_shape))}): "
                f"{type(e).__name__}: {e}. Check --input-shape (and --output for models with several "
                "outputs)."
            ) from e
        finally:
            for h in handles:
                h.remove()
        # The module that produced the model's output: the first (innermost) whose output *is* it.
        for name, t in root_out.get("last", []):
            if t is out:
                trace.last_output_module = name
                break
        self._output_dim = int(out[0].numel())
        if trace.last_output_module is not None:
            last = self.model.get_submodule(trace.last_output_module)
            for cls, kind in SQUASHES.items():
                if type(last) is cls:
                    self._squash = (kind, trace.last_output_module)
        if self._squash is None:
            # A softmax called as a function in forward: the outputs are probabilities already.
            o = out.detach().double()
            if o.ndim == 2 and o.shape[1] > 1 and bool(((o >= 0) & (o <= 1)).all()):
                self._probabilities_in_forward = bool(torch.allclose(o.sum(1), torch.ones_like(o[:, 0]), atol=1e-4))
        self._trace = trace
        return trace

    @property
    def layers(self) -> list[LayerInfo]:
        """Every module a forward pass meets, in call order (a reused module once per call)."""
        if self._layers is not None:
            return self._layers
        trace = self._probe()
        modules = dict(self.model.named_modules())
        infos = []
        if self.hookable:
            for order, (name, k) in enumerate(trace.order):
                calls = trace.calls[name]
                shape, note = calls[k]
                m = modules[name]
                infos.append(LayerInfo(
                    name=f"{name}#{k}" if len(calls) > 1 else name, module_name=name,
                    call=k if len(calls) > 1 else None, type=_module_type(m), output_shape=shape,
                    params=sum(p.numel() for p in m.parameters()), is_leaf=not any(True for _ in m.children()),
                    order=order, note=note,
                ))
            # Hooks fire when a module finishes: order containers before their children.
            starts = {i.order: self._first_start(i, infos) for i in infos}
            infos.sort(key=lambda i: (starts[i.order], i.module_name.count("."), i.order))
            infos = [LayerInfo(**{**i.__dict__, "order": n}) for n, i in enumerate(infos)]
        else:
            for name, m in modules.items():
                if name:
                    infos.append(LayerInfo(
                        name=name, module_name=name, call=None, type=_module_type(m), output_shape=None,
                        params=sum(p.numel() for p in m.parameters()),
                        is_leaf=not any(True for _ in m.children()), order=-1,
                        note="TorchScript: not hookable",
                    ))
        self._layers = infos
        return infos

    @staticmethod
    def _first_start(info: LayerInfo, infos: list[LayerInfo]) -> int:
        """Where a module's call starts: the finish position of its first descendant call."""
        prefix = info.module_name + "."
        starts = [i.order for i in infos if i.module_name.startswith(prefix) and i.order <= info.order]
        return min(starts, default=info.order)

    def layer(self, name: str) -> LayerInfo:
        """The layer at an address; unknown names get the closest matches."""
        name = str(name)
        for info in self.layers:
            if info.name == name:
                return info
        reused = [i for i in self.layers if i.module_name == name and i.call is not None]
        if reused:
            raise UnknownLayerError(
                f"Module {name!r} is called {len(reused)} times in one forward pass; name one call: "
                + ", ".join(repr(i.name) for i in reused) + "."
            )
        if (":" in name or "@" in name) and name.split(":")[0].split("@")[0] in {i.name for i in self.layers}:
            raise UnknownLayerError(f"{name!r} is a unit address; a layer is named without ':channel' or "
                                    f"'@y,x' (here: {name.split(':')[0].split('@')[0]!r}).")
        module_names = {n for n, _ in self.model.named_modules() if n}
        if name in module_names:
            raise UnknownLayerError(f"Module {name!r} exists but is never called in the forward pass.")
        raise UnknownLayerError(
            f"No layer named {name!r} in {self.name}. "
            + did_you_mean(name, [i.name for i in self.layers] or sorted(module_names), "layer")
            + " Run `neuronscope layers MODEL` to list them."
        )

    def module(self, name: str) -> nn.Module:
        return self.model.get_submodule(self.layer(name).module_name)

    def first_layer(self) -> tuple[str, nn.Module]:
        """The first Conv or Linear layer the input meets."""
        for info in self.layers if self.hookable else []:
            m = self.model.get_submodule(info.module_name)
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                return info.name, m
        for name, m in self.model.named_modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                return name, m
        raise UnsupportedError(
            f"{self.name} has no Conv or Linear module to read first-layer filters from"
            + (" (a TorchScript or exported model hides module types: load it as file.py:factory "
               "with --weights)." if not self.hookable or not self.layers else ".")
        )

    def default_layers(self) -> list[str]:
        """The layers analyses look at unless told otherwise.

        Outputs of activation modules (ReLU, GELU, ...); a Conv/Linear whose output no activation
        module takes (activations called as functions) is read pre-activation; and the final layer
        (the logits, before any Softmax/Sigmoid module).
        """
        leaves = [i for i in self.layers if i.is_leaf and i.output_shape]
        modules = [self.model.get_submodule(i.module_name) for i in leaves]
        weighted = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
        squash = self._squash[1] if self._squash else None
        chosen = []
        for n, (info, m) in enumerate(zip(leaves, modules)):
            if isinstance(m, ACTIVATIONS) and info.module_name != squash:
                chosen.append(info.name)
            elif isinstance(m, weighted):
                # Covered when an activation module follows before the next weighted layer
                # (possibly after a BatchNorm or Dropout); otherwise read it pre-activation.
                nxt = next((k for k in range(n + 1, len(modules)) if isinstance(modules[k], weighted)), len(modules))
                if not any(isinstance(modules[k], ACTIVATIONS) and leaves[k].module_name != squash
                           for k in range(n + 1, nxt)):
                    chosen.append(info.name)
        final = self.final_layer()
        if final is not None and final not in chosen:
            chosen.append(final)
        return chosen

    def is_relu_like(self, layer: str) -> bool:
        """Whether a layer's outputs are zero on a half-line, so a unit that never exceeds zero is
        dead: a ReLU-like module, or a max-pool right after one. A Conv/Linear read pre-activation
        and the logits are not."""
        info = self.layer(layer)
        m = self.model.get_submodule(info.module_name)
        if isinstance(m, RELU_LIKE):
            return True
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)):
            leaves = [i for i in self.layers if i.is_leaf]
            idx = next(n for n, i in enumerate(leaves) if i.name == info.name)
            return idx > 0 and isinstance(self.model.get_submodule(leaves[idx - 1].module_name), RELU_LIKE)
        return False

    def final_layer(self) -> str | None:
        """The layer whose output is the model's output (the logits, before a squash module)."""
        leaves = [i for i in self.layers if i.is_leaf and i.output_shape]
        if self._squash:
            leaves = [i for i in leaves if i.module_name != self._squash[1]]
        return leaves[-1].name if leaves else None

    # ----------------------------------------------------------------- units
    def resolve(self, address: str | Unit) -> Unit:
        """Parse an address and check it against this model's layers and shapes."""
        unit = parse_unit(address)
        self._require_hooks(f"unit {address}")
        info = self.layer(unit.layer)
        if unit.direction is not None:
            self.direction(unit)
            return unit
        if unit.channel is not None:
            c = info.channels
            if c is None:
                raise UnitOutOfRangeError(f"Layer {info.name!r} has no channels to index (output {info.output_shape}).")
            if not 0 <= unit.channel < c:
                raise UnitOutOfRangeError(
                    f"Unit {unit.channel} is out of range for layer {info.name!r}, which has {c} "
                    f"{'channels' if info.spatial else 'units'}: use 0..{c - 1}."
                )
        if unit.position is not None:
            spatial = info.spatial
            if len(unit.position) != len(spatial):
                raise UnitOutOfRangeError(
                    f"Layer {info.name!r} has {len(spatial)} spatial dimension(s) "
                    f"{'(' + ', '.join(map(str, spatial)) + ')' if spatial else ''}; the position "
                    f"@{','.join(map(str, unit.position))} has {len(unit.position)}."
                )
            for p, s, axis in zip(unit.position, spatial, "yx" if len(spatial) == 2 else "lyx"):
                if not 0 <= p < s:
                    raise UnitOutOfRangeError(
                        f"Position {','.join(map(str, unit.position))} is outside layer {info.name!r}'s "
                        f"{'x'.join(map(str, spatial))} grid: {axis} must be in 0..{s - 1}."
                    )
        return unit

    # ----------------------------------------------------------------- directions
    def add_directions(self, directions) -> list[str]:
        """Make a :class:`~neuronscope.analyses.directions.book.DirectionSet`'s directions addressable
        (``layer:nmf3``, ``layer:sae17``...); a set of the same layer and kind replaces the old one."""
        info = self.layer(directions.layer)
        if info.channels != directions.channels:
            raise UnitOutOfRangeError(f"These directions have {directions.channels} components but layer "
                                      f"{info.name!r} has {info.channels} channels.")
        if directions.kind == "dir":  # the user's vectors accumulate
            old = self._directions.get((info.name, "dir"))
            if old is not None:
                from .analyses.directions.book import from_vectors

                keep = [i for i, n in enumerate(old.names) if n not in directions.names]
                directions = from_vectors(info.name, [*old.read[keep], *directions.read],
                                          names=[*(old.names[i] for i in keep), *directions.names])
        self._directions[(info.name, directions.kind)] = directions
        return directions.addresses()

    def add_direction(self, layer: str, vector) -> str:
        """Save a vector of ``layer``'s channel space as a unit; returns its ``layer:dir-xxxxxxxx`` address."""
        from .analyses.directions.book import from_vectors

        info = self.layer(layer)
        v = torch.as_tensor(vector, dtype=torch.float32).reshape(-1)
        if info.channels != v.numel():
            raise UnitOutOfRangeError(f"Layer {info.name!r} has {info.channels} channels; the vector has {v.numel()} "
                                      "numbers: give one per channel.")
        new = from_vectors(info.name, v[None].numpy())
        self.add_directions(new)
        return new.addresses()[0]

    def direction(self, address: str | Unit):
        """The (DirectionSet, index) an address like ``conv3:nmf2`` points at."""
        unit = parse_unit(address)
        if unit.direction is None:
            raise AddressError(f"{address!r} is not a direction address (layer:nmfN, :pcaN, :saeN or :dir-xxxxxxxx).")
        layer = self.layer(unit.layer).name
        kind = "dir" if unit.direction.startswith("dir-") else unit.direction.rstrip("0123456789")
        found = self._directions.get((layer, kind))
        if found is None or unit.direction not in found.names:
            known = [d for (lay, _), d in self._directions.items() if lay == layer]
            have = "; ".join(f"{d.title}: {d.describe_names()}" for d in known) or "none yet"
            raise UnitOutOfRangeError(
                f"{layer!r} has no direction {unit.direction!r} (known: {have}). "
                + (did_you_mean(unit.direction, [n for d in known for n in d.names], "direction") + " " if known else "")
                + "Directions come from "
                "ns.factorize / ns.learn_dictionary (then subject.add_directions), subject.add_direction(layer, "
                "vector), or a report's store (ns.load_directions(store, subject); on the command line, "
                "visualize --store DIR).")
        return found, found.names.index(unit.direction)

    def direction_sets(self, layer: str | None = None) -> list:
        """The direction sets known for ``layer`` (every layer when None)."""
        name = self.layer(layer).name if layer is not None else None
        return [d for (lay, _), d in self._directions.items() if name is None or lay == name]

    # ----------------------------------------------------------------- activations
    _active_captures: list[Capture] = []

    def _require_hooks(self, what: str) -> None:
        if not self.hookable:
            raise UnsupportedError(
                f"This is a TorchScript model: its submodules cannot be hooked, so {what} cannot be "
                "read. Output-level analyses (attribution, class visualizations, vector-input "
                "analyses) still work. For per-layer analyses give the model as "
                "'path/to/file.py:factory' with --weights, or as a torch.export '.pt2' file."
            )

    @contextlib.contextmanager
    def capture(self, layers: Sequence[str], reduce=None) -> Iterator[Capture]:
        """Record the outputs of ``layers`` during forward passes run inside the context.

        >>> with subject.capture(["conv1", "relu1"]) as acts:
        ...     subject.forward(x)
        >>> acts["relu1"].shape

        ``reduce`` (see :class:`Capture`) stores a reduction of each output instead of a copy.
        """
        self._require_hooks("layer activations")
        infos = [self.layer(str(parse_unit(a).layer)) for a in layers]
        cap = Capture([i.name for i in infos], reduce)
        wanted: dict[str, dict[int | None, str]] = {}
        for i in infos:
            wanted.setdefault(i.module_name, {})[i.call] = i.name
        counters: dict[str, int] = {}
        handles = []

        def hook(module_name):
            calls = wanted[module_name]

            def fn(module, inputs, output):
                k = counters.get(module_name, 0)
                counters[module_name] = k + 1
                address = calls.get(k, calls.get(None) if k == 0 else None)
                if address is not None:
                    t, _ = first_tensor(output)
                    if t is not None:
                        cap._record(address, t)
            return fn

        def reset(module, inputs):
            counters.clear()

        try:
            handles.append(self.model.register_forward_pre_hook(reset))
            for module_name in wanted:
                handles.append(self.model.get_submodule(module_name).register_forward_hook(hook(module_name)))
            self._active_captures = [*self._active_captures, cap]
            yield cap
        finally:
            self._active_captures = [c for c in self._active_captures if c is not cap]
            for h in handles:
                h.remove()

    def activations(self, x, layers: Sequence[str], *, grad: bool = False) -> dict[str, torch.Tensor]:
        """Activations of ``layers`` for raw inputs ``x``, keyed by layer address."""
        with torch.set_grad_enabled(grad), self.capture(layers) as cap:
            self.forward(x)
        return dict(cap.items())

    # ----------------------------------------------------------------- outputs
    @property
    def output_dim(self) -> int:
        if self._output_dim is None:
            if self.hookable:
                self._probe()
            else:
                with torch.no_grad():
                    self._output_dim = int(self.forward(self.sample_input(self.fixed_batch or 2))[0].numel())
        return self._output_dim

    @property
    def squash(self) -> str | None:
        """'softmax', 'log_softmax' or 'sigmoid' when the model ends in such a module."""
        self.output_dim
        return self._squash[0] if self._squash else None

    @property
    def task(self) -> str:
        if self._task is None:
            if self._classes is not None or self.squash or self._probabilities_in_forward:
                self._task = "classification"
            else:
                self._task = "regression" if self.output_dim == 1 else "classification"
        return self._task

    @property
    def classes(self) -> list[str] | None:
        if self.task != "classification":
            return None
        if self._classes is None:
            k = 2 if self.output_dim == 1 else self.output_dim
            self._classes = [str(i) for i in range(k)]
        expected = 2 if self.output_dim == 1 else self.output_dim
        if len(self._classes) != expected:
            raise NeuronscopeError(
                f"{len(self._classes)} class names given, but the model has {self.output_dim} "
                f"output{'s' if self.output_dim > 1 else ''} ({expected} classes)."
            )
        return self._classes

    @classes.setter
    def classes(self, names: Sequence[str] | None) -> None:
        self._classes = list(names) if names is not None else None
        if self._task is None and names is not None:
            self._task = "classification"

    def logits(self, x) -> torch.Tensor:
        """Model outputs before a final Softmax/Sigmoid/LogSoftmax module (logits where it has one)."""
        if self.squash is None:
            return self.forward(x)
        module = self.model.get_submodule(self._squash[1])
        seen = {}

        def pre(mod, inputs):
            seen["logits"] = inputs[0]

        handle = module.register_forward_pre_hook(pre)
        try:
            out = self.forward(x)
        finally:
            handle.remove()
        z = seen["logits"]
        return z[: out.shape[0]]

    def probabilities(self, x) -> torch.Tensor:
        """Class probabilities, (N, K); a single-logit binary model gives K = 2."""
        return self.to_probabilities(self.logits(x))

    def to_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Turn what :meth:`logits` returned into class probabilities."""
        if self.task != "classification":
            raise UnsupportedError("This model is a regression model: it has no class probabilities.")
        if self._probabilities_in_forward:
            return logits
        z = logits.reshape(len(logits), -1)
        if z.shape[1] == 1:
            p = torch.sigmoid(z)
            return torch.cat([1 - p, p], dim=1)
        return torch.softmax(z, dim=1)

    def predict(self, x) -> torch.Tensor:
        """Predicted class indices (classification) or outputs (regression)."""
        if self.task == "classification":
            return self.probabilities(x).argmax(1)
        return self.forward(x)

    def describe(self) -> dict:
        """JSON-able facts about the model and how it is fed."""
        total = sum(p.numel() for p in self.model.parameters())
        return {
            "name": self.name, "input_shape": list(self.input_shape), "value_range": list(self.value_range),
            "mean": self.mean.flatten().tolist() if self.mean is not None else None,
            "std": self.std.flatten().tolist() if self.std is not None else None,
            "task": self.task, "classes": self.classes, "columns": self.columns,
            "output_dim": self.output_dim, "squash": self.squash, "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device), "parameters": total, "hookable": self.hookable,
            "fixed_batch": self.fixed_batch, "notes": self.notes,
        }

    def __repr__(self) -> str:
        return f"Subject({self.name}, input_shape={self.input_shape}, task={self._task or '?'})"
