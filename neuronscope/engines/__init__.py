"""Where the work runs: in this process (the default), or sharded over a Ray cluster.

``engine="ray"`` (``--engine ray`` on the command line) hands the data pass behind the dataset
examples, feature visualization of many units and attribution of many inputs to
:class:`~.ray_engine.RayEngine`, on a local cluster or the one at ``address``. Ray is an optional
extra (``pip install neuronscope[ray]``): nothing imports it unless asked to.
"""

from __future__ import annotations

from ..errors import OptionError

ENGINES = ("local", "ray")


def get_engine(engine=None, *, address: str | None = None, workers: int | None = None, model_spec=None,
               shard_size: int | None = None):
    """``None``/``"local"``: this process (returns None). ``"ray"``: a :class:`~.ray_engine.RayEngine`.
    An engine object is returned as it is."""
    if engine is None or engine == "local":
        return None
    if engine == "ray":
        from .ray_engine import RayEngine

        from .ray_engine import SHARD

        return RayEngine(address=address, workers=workers, model_spec=model_spec, shard_size=shard_size or SHARD)
    if hasattr(engine, "run_pass"):
        return engine
    raise OptionError(f"engine must be one of {', '.join(map(repr, ENGINES))} or an engine object; got {engine!r}.")


__all__ = ["ENGINES", "get_engine"]
