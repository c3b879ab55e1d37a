"""The report's heavy work on a Ray cluster, with results equal to one process: the data pass in
shards, feature visualization and attribution as tasks.

Ray (Moritz et al. 2018, "Ray: A Distributed Framework for Emerging AI Applications", OSDI) runs
the same code on a laptop and on a cluster. Here:

- **Workers** are actors that hold the model once: the user's module is put in the object store
  once (or, given ``model_spec``, each worker loads it from the ``MODEL`` spec the user gave), the
  data object likewise; tasks carry only positions. A worker gets a GPU when the cluster has them.
- **Shards** are ranges of listed positions, :data:`SHARD` examples each (fixed, so a resumed
  run finds the same shards whatever the number of workers). A worker feeds the unchanged
  reducers (dataset examples, model sanity) on a shard, writes the shard's state beside the pass
  checkpoint and merges it into its own running state; the driver collects one state per worker
  at the end, so what it receives grows with workers x units, not shards x units. The histogram
  edges come first, from the same calibration sample the one-process pass uses, so every shard
  bins alike.
- **Equal to one process**: the same examples at the same ranks, the same counts and range
  samples; means and spreads equal to rounding; quantiles within the sketch's rank-error bound
  (exact up to 1,024 examples; see :mod:`~neuronscope.analyses.sketch`): the reducers' merge
  semantics. Shards start on
  the one-process pass's batch boundaries, so activations are bit for bit the same; only an
  unreadable file, which shifts the later one-process batches, can move float32 activations in
  their last bits.
- **Tasks**: :meth:`RayEngine.map_calls` runs whole ``visualize``/``explain`` calls on the
  workers (each holds the subject and data), so a task's pictures and maps are the ones the same
  call gives in one process; :meth:`RayEngine.visualize` cuts many units into batches and
  :meth:`RayEngine.explain` many inputs into chunks.
- **Failures**: a worker that dies is replaced by a fresh one and its shard rerun from its
  start (up to :data:`RETRIES` times); the shards it had merged are read from their files (or run
  again when there is no checkpoint folder). Every finished shard is written atomically, so an
  interrupted driver resumes without redoing finished shards. The checkpoint folder must be
  visible to the workers (one machine, or a shared file system).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import NeuronscopeError, OptionError, UnsupportedError
from ..progress import progress_bar

#: Examples per shard of the data pass.
SHARD = 2048
#: Times a shard is rerun on a fresh worker after the one running it died.
RETRIES = 3


@dataclass(frozen=True)
class ModelSpec:
    """The model as the user named it (``file.py:factory`` + weights, a TorchScript or export file):
    each worker loads it itself instead of receiving the driver's copy."""

    spec: str
    weights: str | None = None
    allow_pickle: bool = False

    def absolute(self) -> ModelSpec:
        """The same spec with absolute paths: workers do not share the driver's working folder."""
        from ..loading import _split_factory_spec

        factory = _split_factory_spec(self.spec)
        spec = f"{factory[0].resolve()}:{factory[1]}" if factory else str(Path(self.spec).resolve())
        return ModelSpec(spec, None if self.weights is None else str(Path(self.weights).resolve()), self.allow_pickle)


# ----------------------------------------------------------------------------- reducers, shard by shard
def _blank(reducer) -> tuple[str, dict]:
    """How to build an empty copy of ``reducer`` on a worker (reducers that hold the Subject are
    rebuilt around the worker's own)."""
    from ..analyses.examples import ExamplesReducer
    from ..analyses.sanity import SanityReducer

    if isinstance(reducer, ExamplesReducer):
        return "examples", dict(specs=reducer.specs, k=reducer.k, classes=reducer.classes, reduce=reducer.reduce,
                                range_bins=reducer.range_bins, per_bin=reducer.per_bin,
                                calibration=reducer.calibration, edges=reducer.edges, columns=reducer.columns)
    if isinstance(reducer, SanityReducer):
        return "sanity", dict(n_errors=reducer.n_errors)
    raise UnsupportedError(f"The Ray engine cannot shard a {type(reducer).__name__}: it has no merge.")


def _build(blank: tuple[str, dict], subject):
    from ..analyses.examples import ExamplesReducer
    from ..analyses.sanity import SanityReducer

    kind, kw = blank
    if kind == "examples":
        kw = dict(kw)
        return ExamplesReducer(kw.pop("specs"), **kw)
    return SanityReducer(subject, **kw)


def _flatten(states: dict[str, dict]) -> dict[str, np.ndarray]:
    return {f"{name}::{k}": np.asarray(v) for name, st in states.items() for k, v in st.items()}


def _unflatten(flat: dict[str, np.ndarray]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for key, v in flat.items():
        name, k = key.split("::", 1)
        out.setdefault(name, {})[k] = v
    return out


class _WorkerData:
    """Stands in a task's arguments for the data set each worker already holds."""


WORKER_DATA = _WorkerData()


def _without_model(result):
    """An attribution result's target reads the model through closures (``forward``, ``build``):
    sent back as they are, every task's answer would carry the whole network. The maps, scores and
    checks are computed; the closures go (``target.forward`` is None on the driver)."""
    import dataclasses

    target = getattr(result, "target", None)
    if dataclasses.is_dataclass(result) and getattr(target, "forward", None) is not None and hasattr(target, "build"):
        return dataclasses.replace(result, target=dataclasses.replace(target, forward=None, build=None))
    return result


# ----------------------------------------------------------------------------- the worker
class PassWorker:
    """One Ray actor: the Subject and the data, rebuilt once, running shards of the data pass."""

    def __init__(self, model, recipe: dict, directions: list, data, threads: int):
        import ray
        import torch

        from ..subject import Subject

        # [ref] arrives unresolved: the actor fetches the model and data itself, so a restarted
        # actor fetches them again from the refs the driver keeps
        model, data = (ray.get(v[0]) if isinstance(v, list) else v for v in (model, data))
        if isinstance(model, ModelSpec):
            from ..loading import load_model

            model = load_model(model.spec, weights=model.weights, allow_pickle=model.allow_pickle).module
        torch.set_num_threads(max(1, int(threads)))
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else None
        self.subject = Subject(model, **recipe, device=device)
        for d in directions:
            self.subject.add_directions(d)
        self.data = data
        self._held: dict = {}  # reducers merged over the shards this worker ran in the current pass

    def calibrate(self, limit, layers, blanks, batch_size, reduce) -> dict:
        """The histogram edges of every examples reducer, from the same first examples the
        one-process pass calibrates on."""
        from ..analyses.stream import stream

        reducers = {n: _build(b, self.subject) for n, b in blanks.items() if b[0] == "examples"}
        for step in stream(self.subject, self.data, layers, limit=limit, batch_size=batch_size, reduce=reduce,
                           progress=False):
            for red in reducers.values():
                red.add(step)
            if all(red.ready for red in reducers.values()):
                break
        for red in reducers.values():
            red.finish()
        return {n: red.edges for n, red in reducers.items()}

    def call(self, job):
        """One task of :meth:`RayEngine.map_calls`: ``function(subject, *args, **kwargs)`` here."""
        import importlib

        _, name, args, kwargs = job
        module, attr = name.split(":")
        function = getattr(importlib.import_module(module), attr)
        mine = lambda v: self.data if isinstance(v, _WorkerData) else v  # noqa: E731
        return _without_model(function(self.subject, *(mine(a) for a in args), **{k: mine(v) for k, v in kwargs.items()}))

    def shard(self, item, layers, blanks, batch_size, reduce):
        """Feed fresh reducers from positions ``item = (start, stop, limit, file)``: [start, stop),
        at most ``limit`` examples (None: all). The shard's state is written to ``file`` (when
        given, for a resumed driver) and merged into this worker's running state; only counts go
        back to the driver, which collects the merged state once at the end (:meth:`held`)."""
        from ..analyses.stream import stream

        start, stop, limit, file = item
        reducers = {n: _build(b, self.subject) for n, b in blanks.items()}
        done, end = 0, start
        for step in stream(self.subject, self.data, layers, start=start, stop=stop, limit=limit,
                           batch_size=batch_size, reduce=reduce, progress=False):
            for red in reducers.values():
                red.add(step)
            done += len(step.batch.ids)
            end = step.batch.stop
        if file is not None:
            _save(Path(file), {**_flatten({n: red.state_dict() for n, red in reducers.items()}),
                               "_done": np.array(done), "_end": np.array(end)})
        for n, red in reducers.items():
            self._held[n] = red if n not in self._held else self._held[n].merge(red)
        return done, end

    def reset(self) -> None:
        """Forget the running state: a new pass begins."""
        self._held = {}

    def held(self) -> dict:
        """This worker's merged state of every shard it ran since :meth:`reset` (flat arrays)."""
        return _flatten({n: red.state_dict() for n, red in self._held.items()})


# ----------------------------------------------------------------------------- the driver
class RayEngine:
    """Runs the data pass on a Ray cluster: ``address`` (``"auto"``, ``"ray://host:10001"``) or,
    when None, a local cluster started here. ``workers`` defaults to one per GPU, or one per two
    CPUs (at least one); ``model_spec`` (a :class:`ModelSpec`) lets workers load the model the way
    the user named it rather than from the object store."""

    def __init__(self, address: str | None = None, workers: int | None = None, *, model_spec=None,
                 shard_size: int = SHARD, num_cpus: int | None = None):
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise NeuronscopeError("The Ray engine needs Ray: pip install 'neuronscope[ray]'.")
        if workers is not None and int(workers) < 1:
            raise OptionError(f"workers must be at least 1, got {workers}.")
        if int(shard_size) < 1:
            raise OptionError(f"shard_size must be at least 1, got {shard_size}.")
        self.address, self.workers, self.shard_size, self.num_cpus = address, workers, int(shard_size), num_cpus
        if model_spec is not None and not isinstance(model_spec, ModelSpec):
            model_spec = ModelSpec(*model_spec) if isinstance(model_spec, (tuple, list)) else ModelSpec(str(model_spec))
        self.model_spec = None if model_spec is None else model_spec.absolute()
        self._pool_key, self._spawn = None, None
        self._actors: list = []
        self.last: dict = {}  # what the last pass did: shards run, reused, workers
        self.retried = 0  # shards rerun after their worker died, in the current pass

    # -------------------------------------------------------------- cluster and workers
    def _init(self):
        import ray

        if not ray.is_initialized():
            try:
                ray.init(address=self.address, num_cpus=self.num_cpus if self.address is None else None,
                         include_dashboard=False, ignore_reinit_error=True, logging_level="ERROR",
                         configure_logging=True, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = f"the Ray cluster at {self.address!r}" if self.address else "a local Ray cluster"
                raise NeuronscopeError(
                    f"Could not start or join {where}: {str(e).rstrip('.')}. Start one with `ray start --head` (then --address "
                    "auto), or leave --address out to start a local one.") from None
        return ray

    def _workers(self, subject, data) -> list:
        ray = self._init()
        # directions registered since (the report's directions section) need workers that know them
        key = (id(subject), id(subject.model), id(data),
               tuple((d.layer, d.kind, tuple(d.names)) for d in subject.direction_sets()))
        if key == self._pool_key and self._actors:
            return self._actors
        self.shutdown_workers()
        res = ray.cluster_resources()
        gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
        n = self.workers or (gpus if gpus else max(1, cpus // 2))
        per_cpu = max(1, cpus // n) if not gpus else 1
        _pickle_user_code_by_value([*(subject.model.modules() if self.model_spec is None else ()), data])
        model = self.model_spec if self.model_spec is not None else [ray.put(subject.model)]  # once, not per task
        args = (model, subject.recipe(), subject.direction_sets(), [ray.put(data)], per_cpu)
        options = dict(num_cpus=per_cpu, num_gpus=1 if gpus else 0)
        self._spawn = lambda: ray.remote(PassWorker).options(**options).remote(*args)
        self._actors = [self._spawn() for _ in range(n)]
        self._pool_key = key
        return self._actors

    def _map(self, method: str, items: list, *args, on_replace=None):
        """Yield ``(item, result, worker)`` as workers finish ``method(item, *args)``. A worker that
        dies is replaced and its item rerun from the start (up to :data:`RETRIES` times);
        ``on_replace(worker)`` returns further items to run again (what the dead worker held)."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        items = list(items)
        pending, running, tries = list(range(len(items)))[::-1], {}, [0] * len(items)

        def submit(w):
            if pending:
                k = pending.pop()
                running[getattr(self._actors[w], method).remote(items[k], *args)] = (w, k)

        for w in range(len(self._actors)):
            submit(w)
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            w, k = running.pop(ref)
            try:
                result = ray.get(ref)
            except RayActorError:
                tries[k] += 1
                self.retried += 1
                if tries[k] > RETRIES:
                    raise NeuronscopeError(f"A Ray worker died {tries[k]} times running {method} on the same "
                                           "input; giving up.") from None
                self._actors[w] = self._spawn()
                pending.append(k)
                for extra in (on_replace(w) if on_replace is not None else []):
                    items.append(extra)
                    tries.append(0)
                    pending.append(len(items) - 1)
            except RayTaskError as e:
                cause = getattr(e, "cause", None)
                raise (cause if isinstance(cause, NeuronscopeError) else e) from None
            else:
                yield items[k], result, w
            submit(w)

    def map_calls(self, subject, data, function, calls: list[tuple[tuple, dict]], *, desc: str = "tasks",
                  progress: bool = True) -> list:
        """``[function(subject, *args, **kwargs) for args, kwargs in calls]``, each call a task on a
        worker that holds its own ``subject`` (and ``data``: pass ``data`` itself as an argument and
        the worker's copy stands in). ``function`` is a module-level function or its
        ``"module:name"``. Results come back in the order of ``calls``."""
        self.retried = 0
        name = function if isinstance(function, str) else f"{function.__module__}:{function.__qualname__}"
        swap = lambda v: WORKER_DATA if v is data and data is not None else v  # noqa: E731
        jobs = [(i, name, tuple(swap(a) for a in args), {k: swap(v) for k, v in kwargs.items()})
                for i, (args, kwargs) in enumerate(calls)]
        self._workers(subject, data)
        out: list = [None] * len(jobs)
        bar = progress_bar(total=len(jobs), desc=f"{desc} ({len(self._actors)} Ray workers)", unit="task",
                           enabled=progress)
        try:
            for (i, *_), result, _ in self._map("call", jobs):
                out[i] = result
                bar.update(1)
        finally:
            bar.close()
        return out

    def visualize(self, subject, layer: str, units, *, per_task: int = 64, data=None, out=None, **options):
        """Feature visualization of many ``units`` of ``layer``: batches of ``per_task`` objectives,
        one task each (each batch is what ``visualize(subject, layer, units=batch, ...)`` draws in
        one process), gathered into one :class:`~neuronscope.analyses.featvis.visualize.Visualization`.
        With ``out`` each task writes its pictures there itself (a folder the workers see) and only
        the evidence comes back (:func:`~neuronscope.analyses.featvis.visualize.visualize_to`)."""
        import dataclasses

        from ..analyses.featvis.visualize import visualize, visualize_to

        per_task = _positive("per_task", per_task)
        units = list(units)
        where = {} if out is None else {"out": str(Path(out).resolve())}
        calls = [((layer,), dict(units=units[i:i + per_task], data=data, **where, **{**options, "progress": False}))
                 for i in range(0, len(units), per_task)]
        parts = self.map_calls(subject, data, visualize if out is None else visualize_to, calls,
                               desc="feature visualization")
        return dataclasses.replace(parts[-1], results=[r for p in parts for r in p.results],
                                   seconds=sum(p.seconds for p in parts))

    def explain(self, subject, x, *, per_task: int = 64, data=None, **options):
        """Attribution of many inputs: chunks of ``per_task`` inputs, one task each, joined into one
        :class:`~neuronscope.analyses.attribution.explain.Explanation` (each chunk's part is what
        ``explain(subject, chunk, ...)`` gives in one process). The randomisation check runs in
        the first chunk only, on its first inputs, as one call runs it on the first ones."""
        import torch

        from ..analyses.attribution.explain import Explanation, explain
        from ..analyses.attribution.methods import input_ids
        from ..data import Batch

        step = _positive("per_task", per_task)
        if not isinstance(x, Batch):  # ids of the whole call, so each example keeps its own (and its draws)
            ids = options.pop("ids", None)
            x = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
            x = Batch(list(ids) if ids is not None else input_ids(len(x)), x, None)
        check = options.pop("randomisation", True)
        calls = [((Batch(x.ids[i:i + step], x.x[i:i + step], None if x.y is None else x.y[i:i + step]),),
                  dict(data=data, **{**options, "progress": False, "randomisation": check and i == 0}))
                 for i in range(0, len(x.ids), step)]
        return Explanation.concat(self.map_calls(subject, data, explain, calls, desc="attribution"))

    def shutdown_workers(self) -> None:
        if self._actors:
            import ray

            for a in self._actors:
                ray.kill(a)
        self._actors, self._pool_key, self._spawn = [], None, None

    # -------------------------------------------------------------- the pass
    def run_pass(self, subject, data, layers, reducers, *, reduce=None, limit=None, batch_size=64,
                 checkpoint=None, key="", desc="data pass", progress=True) -> int:
        """Fill ``reducers`` as :func:`~neuronscope.analyses.stream.run_pass` would, shard by shard."""
        import ray
        from ray.exceptions import RayActorError

        layers = list(layers)
        self.retried = 0
        blanks = {n: _blank(r) for n, r in reducers.items()}
        folder = shard_folder(checkpoint, key) if checkpoint is not None else None
        actors = self._workers(subject, data)
        end = len(data) if limit is None else min(int(limit), len(data))
        size = max(int(batch_size), -(-self.shard_size // batch_size) * batch_size)  # whole batches

        needs_edges = [n for n, b in blanks.items() if b[0] == "examples" and b[1]["edges"] is None]
        if needs_edges:
            edges = _load(folder / "edges.npz") if folder is not None and (folder / "edges.npz").exists() else None
            if edges is None:
                [(_, edges, _)] = self._map("calibrate", [limit], layers, blanks, batch_size, reduce)
                if folder is not None:
                    _save(folder / "edges.npz", {f"{n}::{layer}::{i}": e[i] for n, ed in edges.items()
                                                 for layer, e in ed.items() for i in (0, 1)})
            else:
                edges = _edges_from(edges)
            for n in needs_edges:
                blanks[n][1]["edges"] = edges[n]

        shards = [(s, min(s + size, end)) for s in range(0, end, size)]

        def file(sh) -> str | None:  # where a shard's state is kept for a resumed run ((start, None): the tail)
            return None if folder is None else str(folder / f"{sh[0]:012d}-{'end' if sh[1] is None else f'{sh[1]:012d}'}.npz")

        counts: dict[tuple, tuple[int, int]] = {}  # shard -> (examples seen, position reached)
        on_disk: dict[tuple, dict] = {}  # states the driver reads itself: a resumed run's, a dead worker's
        owner: dict[tuple, int] = {}  # shard -> the worker whose running state holds it
        gathered: list[dict] = []  # running states collected from workers

        def from_disk(sh) -> bool:
            f = file(sh)
            if f is None or not Path(f).exists():
                return False
            saved = _load(Path(f))
            counts[sh] = (int(saved.pop("_done")), int(saved.pop("_end")))
            on_disk[sh] = saved
            return True

        for sh in shards:
            from_disk(sh)
        reused = len(on_disk)
        ray.get([a.reset.remote() for a in actors])
        bar = progress_bar(total=end, desc=f"{desc} ({len(actors)} Ray workers)", unit="ex", enabled=progress)
        bar.update(sum(c[0] for c in counts.values()))

        def lost(w) -> list:
            """Worker ``w`` died with its running state: read its shards from disk, or run them again."""
            again = []
            for sh in [sh for sh, o in owner.items() if o == w]:
                del owner[sh]
                done = counts.pop(sh)[0]
                if not from_disk(sh):
                    bar.update(-done)
                    again.append((*sh, None if sh[1] is not None else tail_limit[0], file(sh)))
            return again

        tail_limit = [None]
        todo = [(s, e, None, file((s, e))) for s, e in shards if (s, e) not in counts]
        try:
            while todo:
                for (s, e, _, _), (done, stop), w in self._map("shard", todo, layers, blanks, batch_size, reduce,
                                                              on_replace=lost):
                    counts[(s, e)], owner[(s, e)] = (done, stop), w
                    bar.update(done)
                todo = []
                seen = sum(counts[sh][0] for sh in shards)
                if limit is not None and seen < int(limit) and end < len(data) and (end, None) not in shards:
                    # unreadable examples inside the first `limit` positions: the one-process pass reads on
                    shards.append((end, None))
                    tail_limit[0] = int(limit) - seen
                    if not from_disk((end, None)):
                        todo = [(end, None, tail_limit[0], file((end, None)))]
                    continue
                for w in sorted(set(owner.values())):  # each worker's running state, once
                    try:
                        gathered.append(ray.get(self._actors[w].held.remote()))
                        ray.get(self._actors[w].reset.remote())
                    except RayActorError:
                        self.retried += 1
                        self._actors[w] = self._spawn()
                        todo += lost(w)
                        continue
                    for sh in [sh for sh, o in owner.items() if o == w]:
                        del owner[sh]
        finally:
            bar.close()

        t_merge = time.perf_counter()
        merged: dict = {}
        for flat in [*(on_disk[sh] for sh in shards if sh in on_disk), *gathered]:
            for name, state in _unflatten(flat).items():
                part = _build(blanks[name], subject)
                part.load_state_dict(state)
                merged[name] = part if name not in merged else merged[name].merge(part)
        for name, red in reducers.items():
            if name in merged:
                red.load_state_dict(merged[name].state_dict())
        self.last = {"shards": len(shards), "reused": reused, "workers": len(actors), "retried": self.retried,
                     "merge_seconds": time.perf_counter() - t_merge, "states_merged": len(on_disk) + len(gathered),
                     "received_bytes": int(sum(v.nbytes for flat in gathered for v in flat.values())),
                     "read_bytes": int(sum(v.nbytes for flat in on_disk.values() for v in flat.values()))}
        return sum(counts[sh][0] for sh in shards)


def _positive(name: str, value) -> int:
    if int(value) < 1:
        raise OptionError(f"{name} must be at least 1, got {value}.")
    return int(value)


def _pickle_user_code_by_value(objects) -> None:
    """Classes from the user's own code (a ``file.py:factory`` model, a script, a notebook, a
    custom dataset) live in modules workers cannot import: their code travels with the objects."""
    import sys

    from ray import cloudpickle

    prefixes = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, Path(__file__).parents[1])}
    for obj in objects:
        mod = sys.modules.get(type(obj).__module__)
        if mod is None or mod.__name__ == "__main__":
            continue
        origin = getattr(mod, "__file__", None)
        if mod.__name__.startswith("_neuronscope_user_") or (
                origin is not None and not any(Path(origin).resolve().is_relative_to(p) for p in prefixes)):
            cloudpickle.register_pickle_by_value(mod)


def shard_folder(checkpoint, key: str) -> Path:
    """Where a sharded pass keeps its finished shards: beside the pass checkpoint, per pass key."""
    from ..analyses.stream import shards_folder
    from ..store import content_hash

    return shards_folder(checkpoint) / content_hash(key)


def _save(path: Path, arrays: dict) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())


def _load(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _edges_from(flat: dict) -> dict:
    out: dict = {}
    for key, v in flat.items():
        name, layer, i = key.rsplit("::", 2)
        out.setdefault(name, {}).setdefault(layer, [None, None])[int(i)] = v
    return {n: {layer: tuple(e) for layer, e in ed.items()} for n, ed in out.items()}


__all__ = ["RayEngine", "ModelSpec", "SHARD", "shard_folder"]
