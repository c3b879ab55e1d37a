"""Where the real models trained elsewhere live: ``shared/fixtures/foreign`` beside the repository,
or ``$NEURONSCOPE_FIXTURES`` (that folder or its ``foreign/``)."""

import os
from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parent / "models" / "foreign_models.py"


def _find() -> Path | None:
    env = os.environ.get("NEURONSCOPE_FIXTURES")
    candidates = [Path(env) / "foreign", Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "foreign")
    return next((c for c in candidates if (c / "cifar_torchvision.pt").is_file()), None)


FOREIGN = _find()
needs_foreign = pytest.mark.skipif(FOREIGN is None, reason="shared/fixtures/foreign not found (set NEURONSCOPE_FIXTURES)")
