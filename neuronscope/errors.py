"""Errors meant for users.

Everything a user can get wrong (a layer name, a unit index, an input shape, a file) raises a
subclass of :class:`NeuronscopeError` whose message says what was wrong and what to do. The CLI
turns these into exit code 2 and the message alone; programming errors still raise normally.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class NeuronscopeError(Exception):
    """A mistake in what the user asked for or gave us; the message says how to fix it."""


class UnknownLayerError(NeuronscopeError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


class NotStoredError(NeuronscopeError, KeyError):
    """A section, table, column or picture a result store does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


class UnitOutOfRangeError(NeuronscopeError, IndexError):
    pass


class InputShapeError(NeuronscopeError, ValueError):
    pass


class DataError(NeuronscopeError, ValueError):
    pass


class OptionError(NeuronscopeError, ValueError):
    """An option or argument that cannot work (an unknown name, sizes that do not fit)."""


class ModelLoadError(NeuronscopeError):
    pass


class UnsupportedError(NeuronscopeError):
    """The request makes sense, but not for this kind of model or data."""


def close_matches(word: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Names a user probably meant: fuzzy matches first, then names containing the word."""
    candidates = list(candidates)
    found = difflib.get_close_matches(word, candidates, n=n, cutoff=0.5)
    low = word.lower()
    for c in candidates:
        if len(found) >= n:
            break
        if c not in found and low and (low in c.lower() or c.lower() in low):
            found.append(c)
    return found


def did_you_mean(word: str, candidates: Iterable[str], what: str = "name") -> str:
    """A sentence offering the closest candidates, or listing a few when nothing is close."""
    candidates = list(candidates)
    matches = close_matches(word, candidates)
    if matches:
        return "Did you mean " + ", ".join(repr(m) for m in matches) + "?"
    shown = ", ".join(repr(c) for c in candidates[:12])
    more = f" (and {len(candidates) - 12} more)" if len(candidates) > 12 else ""
    return f"Known {what}s: {shown}{more}." if candidates else f"There are no {what}s."
