"""Progress bars on anything that takes more than a few seconds (tqdm, on stderr)."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True):
    """A tqdm bar; silent when disabled, in tests, or when stderr is not a terminal in CI."""
    disable = not enabled or os.environ.get("NEURONSCOPE_QUIET") == "1"
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr,
                dynamic_ncols=True, leave=False, mininterval=0.5)
