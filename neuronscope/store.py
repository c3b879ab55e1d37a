"""The results store: one folder per analysed model.

::

    DIR/manifest.json                 versions, the model's description, one entry per section
    DIR/tables/<section>/<name>.parquet   columnar results (one row per unit, per example, ...)
    DIR/images/<section>/<name>.png       pictures

Every write goes to a temporary name in the same folder and is then renamed, so a run killed
half-way never leaves a truncated file. Each section records the key (a hash of the model, the
data and the analysis options) it was computed with, so a rerun reuses finished sections.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from . import __version__
from .atomic import atomic_write
from .errors import NotStoredError, did_you_mean
from .imaging import png_bytes

MANIFEST = "manifest.json"


class Result(Protocol):
    """What an analysis returns and the store knows how to write."""

    def tables(self) -> dict[str, dict[str, list]]: ...
    def images(self) -> dict[str, Any]: ...
    def summary(self) -> dict: ...


def _jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        v = float(value)
        return v if np.isfinite(v) else None
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return _jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def content_hash(*parts: Any) -> str:
    """A short stable hash of JSON-able parts, tensors and arrays."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(part.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(part, np.ndarray):
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(_jsonable(part), sort_keys=True).encode())
    return h.hexdigest()[:16]


def model_hash(model: torch.nn.Module) -> str:
    """Hash of a model's weights and buffers, in name order."""
    state = model.state_dict()
    return content_hash(*[[k, list(v.shape), str(v.dtype)] for k, v in state.items()],
                        *[v for v in state.values() if isinstance(v, torch.Tensor)])


class Store:
    """A folder of results for one model. Opening an existing folder keeps what is there."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / MANIFEST
        if path.exists():
            try:
                self.manifest = json.loads(path.read_text())
            except json.JSONDecodeError:  # cannot happen through atomic writes; start afresh
                self.manifest = {}
        else:
            self.manifest = {}
        self.manifest.setdefault("neuronscope", __version__)
        self.manifest.setdefault("sections", {})

    # ------------------------------------------------------------------ writing
    def _save_manifest(self) -> None:
        text = json.dumps(_jsonable(self.manifest), indent=1, sort_keys=False)
        atomic_write(self.root / MANIFEST, text.encode())

    def set_info(self, **info) -> None:
        """Facts about the model and data (shown on the overview page)."""
        self.manifest.update(_jsonable(info))
        self._save_manifest()

    def write_table(self, section: str, name: str, columns: Mapping[str, list]) -> Path:
        path = self.root / "tables" / section / f"{name}.parquet"
        table = pa.table({k: list(_jsonable(v)) if isinstance(v, (np.ndarray, torch.Tensor)) else list(v)
                          for k, v in columns.items()})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        atomic_write(path, sink.getvalue().to_pybytes())
        return path

    def write_image(self, section: str, name: str, image) -> Path:
        path = self.root / "images" / section / f"{name}.png"
        atomic_write(path, png_bytes(image))
        return path

    def save(self, section: str, result: Result, *, key: str | None = None, seconds: float | None = None) -> dict:
        """Write a result's tables, images and summary; the manifest entry is written last.

        ``seconds``: how long the section took to compute (the report's build times).
        """
        tables = {n: str(self.write_table(section, n, cols).relative_to(self.root))
                  for n, cols in result.tables().items()}
        images = {n: str(self.write_image(section, n, img).relative_to(self.root))
                  for n, img in result.images().items()}
        entry = {"key": key, "summary": _jsonable(result.summary()), "tables": tables, "images": images}
        if seconds is not None:
            entry["seconds"] = round(float(seconds), 2)
        self.manifest["sections"][section] = entry
        self._save_manifest()
        return entry

    # ------------------------------------------------------------------ reading
    def has(self, section: str, key: str | None = None) -> bool:
        """Whether a section is finished (and was computed with ``key``, when given)."""
        entry = self.manifest["sections"].get(section)
        if entry is None:
            return False
        if key is not None and entry.get("key") != key:
            return False
        return all((self.root / p).exists() for p in [*entry["tables"].values(), *entry["images"].values()])

    def sections(self) -> dict[str, dict]:
        return dict(self.manifest["sections"])

    def _entry(self, section: str) -> dict:
        sections = self.manifest["sections"]
        if section not in sections:
            raise NotStoredError(f"{self.root} holds no finished section {section!r}. "
                                 + did_you_mean(section, sorted(sections), "section"))
        return sections[section]

    def _file(self, section: str, kind: str, name: str) -> Path:
        """The stored file of a table or an image (``kind``: "tables" or "images")."""
        stored = self._entry(section).get(kind, {})
        if name not in stored:
            what = kind[:-1]
            raise NotStoredError(f"Section {section!r} has no {what} {name!r}. " + did_you_mean(name, stored, what))
        return self.root / stored[name]

    def summary(self, section: str) -> dict:
        return self._entry(section)["summary"]

    def table(self, section: str, name: str, columns: Sequence[str] | None = None) -> dict[str, list]:
        """A stored table as a dict of columns; ``columns`` reads only those (an attribution table's
        ``map`` column holds every map, flattened)."""
        path = self._file(section, "tables", name)
        if columns is not None:
            columns = [columns] if isinstance(columns, str) else list(columns)
            names = pq.read_schema(path).names
            for c in columns:
                if c not in names:
                    raise NotStoredError(f"Table {section}/{name} has no column {c!r}. "
                                         + did_you_mean(c, names, "column"))
        return pq.read_table(path, columns=columns).to_pydict()

    def rows(self, section: str, name: str) -> list[dict]:
        """A stored table as a list of row dicts; [] when the section has no such table."""
        entry = self.manifest["sections"].get(section, {})
        if name not in entry.get("tables", {}):
            return []
        table = self.table(section, name)
        keys = list(table)
        return [dict(zip(keys, vals)) for vals in zip(*table.values())]

    def image_path(self, section: str, name: str) -> Path:
        return self._file(section, "images", name)
