"""How users hand us a model.

One spec, ``MODEL``, names a model everywhere (CLI and API):

- ``path/to/file.py:factory``: a Python file and a function (or ``nn.Module`` class) in it that
  builds the model without required arguments; ``weights=`` names a state dict to load strictly.
- a ``torch.export`` program (``torch.export.save``): loaded and unflattened, so its submodules
  exist again and forward hooks on them fire.
- a TorchScript archive (``torch.jit.save``): runs, but its layers cannot be hooked.
- a whole pickled module (``torch.save(model)``), only with ``allow_pickle=True``
  (CLI ``--trust-pickle``), because unpickling runs code stored in the file.

Files are recognised by content, not by extension. Everything a user can get wrong raises
:class:`~neuronscope.errors.ModelLoadError` with what was wrong and what to do.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import inspect
import itertools
import os
import pickle
import re
import sys
import typing
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from .errors import ModelLoadError, did_you_mean

__all__ = ["LoadedModel", "load_model", "module_from_file", "read_state_dict"]

#: Checkpoint keys that commonly hold the state dict, tried in this order.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")
#: Key prefixes added by wrappers: DataParallel/DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

_TRUST_HINT = (
    "Unpickling runs code stored in the file, so do it only for a file you trust: pass "
    "allow_pickle=True (CLI: --trust-pickle). Safer: save model.state_dict() and name the code "
    "that builds the model as 'file.py:factory'."
)
_SHOWN = 5  # keys shown per kind of mismatch
_module_names = itertools.count()


@dataclass
class LoadedModel:
    """A user's model, ready to run on CPU, with how it was loaded."""

    module: nn.Module
    form: str  # "factory" | "export" | "torchscript" | "pickle"
    source: str  # the spec as given
    hookable: bool  # False for TorchScript: its layers cannot carry forward hooks
    fixed_batch: int | None = None  # exported with a static batch: callers pad batches to this
    notes: list[str] = field(default_factory=list)  # human-readable facts about the loading


def load_model(
    spec: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    allow_pickle: bool = False,
) -> LoadedModel:
    """Load the model named by ``spec`` (see the module docstring for the accepted forms)."""
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"spec must be a str or path, not {type(spec).__name__}")
    source = os.fspath(spec)
    factory_spec = _split_factory_spec(source)
    if factory_spec is not None:
        return _load_from_factory(source, *factory_spec, weights, allow_pickle)
    path = Path(source)
    _check_file(path, "Model file")
    if path.suffix == ".py":
        raise ModelLoadError(
            f"{source!r} is a Python file: also name the function in it that builds the model, "
            f"as '{source}:FACTORY'. {did_you_mean('', _top_level_names(path), 'function')}"
        )
    if weights is not None:
        raise ModelLoadError(
            f"weights= applies only to a 'file.py:factory' model; {source!r} is a saved model "
            "that carries its own weights. Drop weights=, or name the code that builds the "
            "model as 'file.py:factory'."
        )
    kind = _sniff(path)
    if kind == "export":
        return _load_export(source, path)
    if kind == "torchscript":
        return _load_torchscript(source, path)
    return _load_pickled_module(source, path, allow_pickle)


def module_from_file(path: str | os.PathLike, factory: str) -> nn.Module:
    """Import ``path`` and return the ``nn.Module`` that ``factory()`` in it builds."""
    module, _ = _build(Path(path), factory)
    return module


def read_state_dict(
    path: str | os.PathLike, *, allow_pickle: bool = False
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Read a weights file: a state dict, a checkpoint holding one, or (trusted) a saved model.

    Returns the state dict (on CPU) and notes on where in the file it was found.
    """
    path = Path(path)
    _check_file(path, "Weights file")
    kind = _sniff(path)
    if kind == "torchscript":
        state = _jit_load(path).state_dict()
        return dict(state), [f"weights taken from the TorchScript archive {path.name}"]
    if kind == "export":
        state = _export_load(path).state_dict
        return dict(state), [f"weights taken from the exported program {path.name}"]
    obj = _torch_load(path, allow_pickle, what="weights")
    return _find_state_dict(obj, path)


# --- file.py:factory ------------------------------------------------------------------------


def _split_factory_spec(spec: str) -> tuple[Path, str] | None:
    """``'dir/net.py:make'`` -> ``(Path('dir/net.py'), 'make')``; None for other specs."""
    file, sep, name = spec.rpartition(":")
    if not sep or not file.endswith(".py"):
        return None
    if not name.isidentifier():
        raise ModelLoadError(
            f"{name!r} in {spec!r} is not a Python name: write 'file.py:FACTORY' where FACTORY is "
            "a function defined in the file."
        )
    return Path(file), name


def _load_from_factory(
    source: str, path: Path, name: str, weights: str | os.PathLike | None, allow_pickle: bool
) -> LoadedModel:
    module, namespace = _build(path, name)
    hookable = not isinstance(module, torch.jit.ScriptModule)
    notes = [f"built by {path.name}:{name}()"]
    if not hookable:
        notes.append("the factory returned a TorchScript module: its layers cannot be hooked")
    if weights is None:
        notes.append("no weights given: parameters are as the factory initialised them")
    else:
        state, found = read_state_dict(weights, allow_pickle=allow_pickle)
        notes += found
        notes += _fit_weights(module, state, Path(weights), path, name, namespace)
    return LoadedModel(module, "factory", source, hookable, None, notes)


def _build(path: Path, name: str) -> tuple[nn.Module, ModuleType]:
    """Import ``path``, call ``name()`` there and check that it returned a module."""
    _check_file(path, "Model code")
    with _on_sys_path(path.parent), _torch_state_kept():
        namespace = _import_file(path)
        factory = getattr(namespace, name, None)
        if factory is None or not callable(factory):
            what = "is not callable" if factory is not None else "is not defined"
            raise ModelLoadError(
                f"{name!r} {what} in {path}. "
                f"{did_you_mean(name, _callables_defined_in(namespace), 'function')}"
            )
        _check_no_required_args(factory, path, name)
        try:
            module = factory()
        except Exception as e:
            raise ModelLoadError(
                f"{path.name}:{name}() raised {type(e).__name__}: {e}. Fix the factory so that "
                "it builds the model when called without arguments."
            ) from None
    if not isinstance(module, nn.Module):
        raise ModelLoadError(
            f"{path.name}:{name}() returned {type(module).__name__}, not a torch.nn.Module. "
            "The factory must return the model itself."
        )
    return module, namespace


def _import_file(path: Path) -> ModuleType:
    """Import a Python file under a fresh module name (kept in sys.modules so pickling works)."""
    stem = re.sub(r"\W", "_", path.stem)
    mod_name = f"_neuronscope_user_{stem}_{next(_module_names)}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"Cannot import {path} as Python code.")
    namespace = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = namespace
    try:
        spec.loader.exec_module(namespace)
    except SystemExit as e:
        del sys.modules[mod_name]
        raise ModelLoadError(
            f"Importing {path} exited (sys.exit({e.code!r})), perhaps from script code such as "
            "argparse at the top level. Move that code under `if __name__ == \"__main__\":`."
        ) from None
    except Exception as e:
        del sys.modules[mod_name]
        raise ModelLoadError(
            f"Importing {path} raised {type(e).__name__}: {e}. Fix the file so that it imports "
            f"cleanly (`python {path}` shows the traceback)."
        ) from None
    return namespace


def _check_no_required_args(factory: Any, path: Path, name: str) -> None:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # builtins and some C extensions have no signature
        return
    required = [
        p.name
        for p in params
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if required:
        raise ModelLoadError(
            f"{path.name}:{name} needs arguments ({', '.join(required)}), but a factory is "
            "called without any. Add a function that builds the model with your settings, "
            f"e.g. `def make(): return {name}(...)`, and name that one."
        )


def _callables_defined_in(namespace: ModuleType) -> list[str]:
    return [
        n
        for n, obj in vars(namespace).items()
        if callable(obj) and getattr(obj, "__module__", None) == namespace.__name__
    ]


def _top_level_names(path: Path) -> list[str]:
    """Functions and classes defined at the top of a Python file, found without running it."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (OSError, SyntaxError, ValueError):
        return []
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return [node.name for node in tree.body if isinstance(node, kinds)]


# --- weights --------------------------------------------------------------------------------


def _find_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict inside whatever ``torch.load`` returned, and a note on where it was."""
    if isinstance(obj, nn.Module):
        return obj.state_dict(), [f"weights taken from the pickled module in {path.name}"]
    if _is_state_dict(obj):
        return dict(obj), []
    if isinstance(obj, Mapping):
        for key in CHECKPOINT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if _is_state_dict(inner):
                return dict(inner), [f"loaded state dict from key {key!r} of {path.name}"]
        keys = ", ".join(repr(k) for k in list(obj)[:12])
        raise ModelLoadError(
            f"{path} holds a dict with keys {keys}, but none of {', '.join(CHECKPOINT_KEYS)} "
            "holds a state dict. Save the weights alone with "
            "torch.save(model.state_dict(), path)."
        )
    raise ModelLoadError(
        f"{path} holds a {type(obj).__name__}, not a state dict. Save the weights with "
        "torch.save(model.state_dict(), path)."
    )


def _holds_state_dict(obj: Any, path: Path) -> bool:
    try:
        _find_state_dict(obj, path)
    except ModelLoadError:
        return False
    return True


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(
        isinstance(k, str) and (isinstance(v, torch.Tensor) or k.endswith("_extra_state"))
        for k, v in obj.items()
    )


def _fit_weights(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    weights: Path,
    code: Path,
    name: str,
    namespace: ModuleType,
) -> list[str]:
    """Load ``state`` into ``module`` strictly; explain any mismatch. Returns notes."""
    expected = module.state_dict()
    state, notes = _strip_wrapper_prefixes(state, expected)
    problems = _mismatches(expected, state)
    if problems:
        fits = _factories_that_fit(namespace, state, exclude=name)
        if fits:
            advice = (
                f"These weights fit {', '.join(repr(f) for f in fits)} in {code.name}: use "
                f"'{code}:{fits[0]}'."
            )
        else:
            advice = (
                f"Check that {name}() builds the architecture these weights were saved from "
                "(same layer names and sizes)."
            )
        raise ModelLoadError(
            f"The weights in {weights} do not fit the model built by {code.name}:{name}():\n"
            + "\n".join(problems)
            + "\n"
            + advice
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(
            f"Loading {weights} into {code.name}:{name}() failed: {str(e).strip()}"
        ) from None
    return notes


def _strip_wrapper_prefixes(
    state: dict[str, torch.Tensor], expected: Mapping[str, Any]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Drop ``module.``/``_orig_mod.`` from every key when that is what makes the keys fit."""
    notes = []
    stripped = True
    while stripped and state and set(state) != set(expected):
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                notes.append(f"removed the key prefix {prefix!r} (added by a wrapper when saved)")
                stripped = True
    return state, notes


def _mismatches(expected: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """Lines describing missing keys, unexpected keys and shape mismatches (empty if none)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k}: file {tuple(given[k].shape)}, model {tuple(expected[k].shape)}"
        for k in expected
        if k in given
        and isinstance(given[k], torch.Tensor)
        and isinstance(expected[k], torch.Tensor)
        and given[k].shape != expected[k].shape
    ]
    lines = []
    for label, items in (
        ("missing from the file", missing),
        ("unexpected in the file", unexpected),
        ("shape mismatch", shapes),
    ):
        if items:
            more = f", … and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
            lines.append(f"  {label} ({len(items)}): {', '.join(items[:_SHOWN])}{more}")
    return lines


def _factories_that_fit(
    namespace: ModuleType, state: Mapping[str, torch.Tensor], exclude: str
) -> list[str]:
    """Module classes (and functions annotated to return one) in the file that fit ``state``.

    Only these are tried: calling any other function of the user's file could do anything.
    """
    fits = []
    for name in _callables_defined_in(namespace):
        obj = getattr(namespace, name)
        if name == exclude or not _builds_a_module(obj):
            continue
        try:
            with _torch_state_kept(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                candidate = obj()
            if isinstance(candidate, nn.Module) and not _mismatches(candidate.state_dict(), state):
                fits.append(name)
        except Exception:  # a candidate that cannot be built is simply not suggested
            continue
    return fits


def _builds_a_module(obj: Any) -> bool:
    if inspect.isclass(obj):
        return issubclass(obj, nn.Module)
    try:
        returns = typing.get_type_hints(obj).get("return")
    except Exception:
        return False
    return inspect.isclass(returns) and issubclass(returns, nn.Module)


# --- saved models ---------------------------------------------------------------------------


def _sniff(path: Path) -> str:
    """What a saved file holds: 'export', 'torchscript' or 'torch' (for ``torch.load``)."""
    if not zipfile.is_zipfile(path):
        return "torch"  # legacy torch.save format, or not a torch file at all
    try:
        with zipfile.ZipFile(path) as archive:
            inner = {name.split("/", 1)[-1] for name in archive.namelist()}
    except (zipfile.BadZipFile, OSError):
        return "torch"
    if "archive_format" in inner or any(n.startswith("models/") for n in inner):
        return "export"
    if "constants.pkl" in inner or any(n.startswith("code/") for n in inner):
        return "torchscript"
    return "torch"


def _load_export(source: str, path: Path) -> LoadedModel:
    program = _export_load(path)
    try:
        with _quiet_pytree_warnings():
            module = torch.export.unflatten(program)
    except Exception as e:
        raise ModelLoadError(
            f"{path} is an exported program, but unflattening it into submodules failed "
            f"({type(e).__name__}: {e}). Re-export with torch.export.export(model, args) under "
            "the same torch version."
        ) from None
    fixed_batch, batch_note = _batch_size(program)
    notes = [
        "exported program: no train/eval switch; it runs as it was exported (dropout and "
        "batch norm behave as in the mode the model was in at export time)",
        batch_note,
    ]
    return LoadedModel(module, "export", source, True, fixed_batch, notes)


def _export_load(path: Path) -> torch.export.ExportedProgram:
    try:
        # A file object: torch.export.load refuses paths that do not end in .pt2.
        with open(path, "rb") as f, _quiet_pytree_warnings():
            return torch.export.load(f)
    except Exception as e:
        raise ModelLoadError(
            f"{path} looks like a torch.export program but could not be loaded "
            f"({type(e).__name__}: {e}). Was it written by torch.export.save with a different "
            f"torch version? This is torch {torch.__version__}."
        ) from None


def _batch_size(program: torch.export.ExportedProgram) -> tuple[int | None, str]:
    """The static batch size of the program's first tensor input (None when dynamic), and a note.

    Reads the fake tensor recorded on the input's placeholder: its first dimension is an int when
    the batch size was fixed at export, a SymInt (with a range in ``range_constraints``) when not.
    """
    inputs = set(program.graph_signature.user_inputs)
    shapes = [
        node.meta["val"].shape
        for node in program.graph.nodes
        if node.op == "placeholder"
        and node.name in inputs
        and isinstance(node.meta.get("val"), torch.Tensor)
    ]
    if not shapes or len(shapes[0]) == 0:
        return None, "the program's first input has no batch dimension"
    first = "" if len(shapes) == 1 else f" (read from the first of {len(shapes)} inputs)"
    dim = shapes[0][0]
    if isinstance(dim, torch.SymInt) and dim.node.expr.is_number:
        dim = int(dim.node.expr)
    if isinstance(dim, int):
        return dim, (
            f"exported with a fixed batch size of {dim}{first}: batches must be padded to "
            f"{dim}; re-export with dynamic_shapes (torch.export.Dim) to lift this"
        )
    import sympy  # a torch dependency, already imported by torch.export

    bounds = program.range_constraints.get(dim.node.expr)
    # An unbounded range ends in torch's int_oo, which sympy calls finite: test for an Integer.
    if bounds is not None and isinstance(bounds.upper, sympy.Integer):
        span = f" between {bounds.lower} and {bounds.upper}"
    else:
        span = ""
    return None, f"exported with a dynamic batch size{span}{first}"


def _load_torchscript(source: str, path: Path) -> LoadedModel:
    module = _jit_load(path)
    notes = [
        "TorchScript: layers inside cannot be hooked, so only the model's output can be read; "
        "for layer analyses load it as 'file.py:factory' with weights, or as a torch.export "
        "program"
    ]
    return LoadedModel(module, "torchscript", source, False, None, notes)


def _jit_load(path: Path) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():  # torch deprecates TorchScript; users' files still use it
            warnings.filterwarnings("ignore", r".*torch\.jit\.load", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise ModelLoadError(
            f"{path} looks like a TorchScript archive but could not be loaded "
            f"({type(e).__name__}: {str(e).strip().splitlines()[0]})."
        ) from None


def _load_pickled_module(source: str, path: Path, allow_pickle: bool) -> LoadedModel:
    obj = _torch_load(path, allow_pickle, what="model")
    notes = []
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), nn.Module):
        obj = obj["model"]
        notes.append(f"module taken from key 'model' of {path.name}")
    if isinstance(obj, nn.Module):
        notes.insert(0, "whole pickled module: its class was imported from where it was saved")
        return LoadedModel(obj, "pickle", source, True, None, notes)
    if _holds_state_dict(obj, path):
        raise ModelLoadError(
            f"{path} holds weights (a state dict), not a model. Name the code that builds the "
            f"model as 'file.py:FACTORY' and pass this file as weights (CLI: MODEL "
            f"net.py:make_model --weights {path})."
        )
    raise ModelLoadError(
        f"{path} holds a {type(obj).__name__}, not a model. Give a torch.export program "
        "(.pt2), a TorchScript file, or 'file.py:FACTORY' with weights."
    )


def _torch_load(path: Path, allow_pickle: bool, what: str) -> Any:
    """``torch.load`` on CPU: weights only, unless the user trusts the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not allow_pickle:
            found = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(e))))
            holds = f" (it refers to {', '.join(found)})" if found else ""
            raise ModelLoadError(
                f"The {what} file {path} holds Python objects beyond tensors{holds}, likely a "
                f"whole pickled model or a checkpoint with extra objects. {_TRUST_HINT}"
            ) from None
    except Exception as e:
        raise ModelLoadError(
            f"{path} is not a file torch can read ({type(e).__name__}: {e}). Give a state dict "
            "saved with torch.save, a torch.export program (.pt2) or a TorchScript file."
        ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (ImportError, AttributeError) as e:
        raise ModelLoadError(
            f"{path} refers to code that cannot be imported here ({type(e).__name__}: {e}). "
            "Run from the folder where that code lives, or save model.state_dict() and load "
            "it with 'file.py:factory'."
        ) from None
    except Exception as e:
        raise ModelLoadError(f"Unpickling {path} failed: {type(e).__name__}: {e}") from None


# --- helpers --------------------------------------------------------------------------------


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise ModelLoadError(f"{what} not found: {path} (looked in {Path.cwd()}).")
    if not path.is_file():
        raise ModelLoadError(f"{what} {path} is a folder; name a file.")


@contextlib.contextmanager
def _on_sys_path(folder: Path) -> Iterator[None]:
    """Let the user's file import its siblings while it is imported and called."""
    entry = str(folder.resolve())
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


@contextlib.contextmanager
def _torch_state_kept() -> Iterator[None]:
    """Undo what user code does to global torch state: grad mode, default dtype, CPU RNG."""
    grad, dtype = torch.is_grad_enabled(), torch.get_default_dtype()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_grad_enabled(grad)
        torch.set_default_dtype(dtype)


@contextlib.contextmanager
def _quiet_pytree_warnings() -> Iterator[None]:
    """Silence a FutureWarning torch itself triggers while loading and unflattening programs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*treespec, LeafSpec", FutureWarning)
        yield
