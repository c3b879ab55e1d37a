"""The built-in demo: small models trained offline in under a minute or two, saved the way a user
has them (a factory file, state dicts, a data folder) with a manifest that says how to read them.

The headline is *shortcut shapes* (:mod:`.shapes`): a CNN whose training data hid a giveaway
pattern, and a clean twin trained without it. :func:`build_demo` trains everything (or reuses a
finished build); :mod:`.models` holds the factories, :mod:`.train` the training loops.
"""

from neuronscope.demo.build import NAMES, build_demo

__all__ = ["NAMES", "build_demo"]
