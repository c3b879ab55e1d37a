"""Unit addresses: one string form everywhere (CLI, API, store, URLs).

``layer`` names a whole layer, ``layer:channel`` a conv channel or a dense unit, and
``layer:channel@y,x`` one spatial neuron. ``layer`` is the module's dotted name as
``named_modules()`` prints it; a module called several times in one forward pass is
``layer#k`` (k counting from 0). Directions in a layer's space (``layer:nmf3``,
``layer:pca0``, ``layer:dir-1a2b3c4d``) parse too; what they point at is resolved by the
analyses that create them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import NeuronscopeError

_ADDRESS = re.compile(
    r"""^(?P<layer>[^:#@\s]+)           # dotted module name
        (?:\#(?P<call>\d+))?            # k-th call of a reused module
        (?::(?P<unit>[^@\s]+))?         # channel index or direction name
        (?:@(?P<pos>\d+(?:,\d+)*))?$    # spatial position
    """,
    re.VERBOSE,
)
_DIRECTION = re.compile(r"^(?:nmf|pca|sae)\d+$|^dir-[0-9a-f]{8}$")


class AddressError(NeuronscopeError, ValueError):
    pass


@dataclass(frozen=True)
class Unit:
    """A parsed address; :meth:`neuronscope.Subject.resolve` checks it against the model."""

    module: str
    call: int | None = None
    channel: int | None = None
    direction: str | None = None
    position: tuple[int, ...] | None = None

    @property
    def layer(self) -> str:
        """The layer part of the address (``name`` or ``name#k``)."""
        return self.module if self.call is None else f"{self.module}#{self.call}"

    @property
    def is_layer(self) -> bool:
        return self.channel is None and self.direction is None

    def __str__(self) -> str:
        s = self.layer
        if self.channel is not None:
            s += f":{self.channel}"
        elif self.direction is not None:
            s += f":{self.direction}"
        if self.position is not None:
            s += "@" + ",".join(str(p) for p in self.position)
        return s


def parse_unit(address: str) -> Unit:
    """Parse ``layer[#k][:channel|:direction][@y,x]`` into a :class:`Unit` (syntax only)."""
    if isinstance(address, Unit):
        return address
    m = _ADDRESS.match(str(address).strip())
    if not m:
        raise AddressError(
            f"{address!r} is not a unit address. Use 'layer' for a whole layer, 'layer:channel' "
            "for one channel or dense unit, 'layer:channel@y,x' for one spatial neuron, and "
            "'layer#k' for the k-th call of a module used several times (e.g. 'conv2:12@3,4')."
        )
    unit, pos = m["unit"], m["pos"]
    channel = direction = None
    if unit is not None:
        if unit.isdigit():
            channel = int(unit)
        elif _DIRECTION.match(unit):
            direction = unit
        else:
            raise AddressError(
                f"In {address!r}, {unit!r} is neither a channel index nor a direction "
                "(nmfN, pcaN, saeN, dir-<8 hex digits>)."
            )
    if pos is not None and unit is None:
        raise AddressError(f"{address!r} gives a position but no channel: write 'layer:channel@{pos}'.")
    return Unit(
        module=m["layer"],
        call=int(m["call"]) if m["call"] is not None else None,
        channel=channel,
        direction=direction,
        position=tuple(int(p) for p in pos.split(",")) if pos else None,
    )


def slug(layer: str) -> str:
    """A layer address safe in file names and URLs ('#' would start a URL fragment, and a ':' before
    the first '/' would read as a URL scheme): ``block#1`` -> ``block~1``, ``relu3:nmf`` -> ``relu3~nmf``."""
    return str(layer).replace("#", "~").replace(":", "~")
