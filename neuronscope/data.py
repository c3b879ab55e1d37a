"""Data adapters: the user's examples, each with a stable string id, streamed in batches.

Three forms, one interface (:class:`Dataset`), picked by :func:`open_data` from the path:

- :class:`ImageFolder` — ``root/<class>/<file>`` (labelled), images directly in ``root``
  (unlabelled), or a single image file. Pixels are resized, centre-cropped and mapped to the
  model's value range; normalization is left to the Subject.
- :class:`ArrayData` — ``.npz`` (``x``, optional ``y`` and ``ids``), ``.npy`` (``x`` only),
  ``.pt``/``.pth`` (a tensor, an ``(x, y)`` pair, or a dict with ``x``/``y``).
- :class:`TableData` — CSV/TSV/Parquet with an optional target column, read with pyarrow.

Items that cannot be used are skipped and recorded in ``Dataset.skipped`` (id -> reason), never
raised halfway through a run. Tables and non-image files are checked when opened; an image that
fails to decode is only discovered when it is loaded, so ``len()`` counts listed image files.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageOps

from neuronscope.errors import DataError, InputShapeError, did_you_mean

IMAGE_EXTENSIONS = frozenset(
    ".png .apng .jpg .jpeg .jpe .jfif .bmp .dib .gif .webp .tif .tiff .ppm .pgm .pbm .pnm "
    ".tga .ico .qoi .avif".split())
ARRAY_EXTENSIONS = frozenset({".npz", ".npy", ".pt", ".pth"})
TABLE_EXTENSIONS = frozenset({".csv", ".tsv", ".parquet", ".pq"})
MAX_CLASS_LEVELS = 20  # a numeric table target with more distinct values is a regression target


@dataclass
class Batch:
    """Examples with their ids: ``x`` raw (unnormalized) float32 inputs, ``y`` labels or None."""

    ids: list[str]
    x: torch.Tensor
    y: torch.Tensor | None = None
    stop: int | None = None  # listed position just after this batch (see Dataset.batches)

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def cat(parts: Sequence[Batch]) -> Batch:
        """One batch from several, in order."""
        if len(parts) == 1:
            return parts[0]
        y = None if parts[0].y is None else torch.cat([p.y for p in parts])
        return Batch([i for p in parts for i in p.ids], torch.cat([p.x for p in parts]), y)


class Dataset:
    """Base class: ids, streaming batches, fetch by id. Subclasses implement :meth:`_load`."""

    kind: str = ""

    def __init__(self, source, ids: list[str], *, input_shape: Sequence[int],
                 classes: Sequence[str] | None = None, columns: Sequence[str] | None = None,
                 target: str | None = None, task: str | None = None,
                 skipped: dict[str, str] | None = None):
        self.source = str(source)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.classes = None if classes is None else list(classes)
        self.columns = None if columns is None else list(columns)
        self.target = target
        self.task = task
        self.skipped: dict[str, str] = {} if skipped is None else skipped
        self._ids = ids
        self._index = {i: k for k, i in enumerate(ids)}
        if len(self._index) != len(ids):
            dup = next(i for i, n in Counter(ids).items() if n > 1)
            raise DataError(f"{self.source}: example ids must be unique; {dup!r} appears twice.")

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.source!r}: {len(self)} examples, "
                f"input {self.input_shape}, task={self.task}>")

    def ids(self) -> list[str]:
        """Every example id, in iteration order."""
        return list(self._ids)

    def _load(self, indices: Sequence[int]) -> Batch:
        """The examples at these positions, leaving out (and recording) any that can't be read."""
        raise NotImplementedError

    def batches(self, batch_size: int = 64, *, limit: int | None = None, start: int = 0,
                stop: int | None = None) -> Iterator[Batch]:
        """Stream the examples in order, ``batch_size`` at a time, at most ``limit`` in all.

        Every batch but the last is full: unreadable items are skipped and replaced by the next.
        ``start`` skips that many listed items (a resumed pass starts where it stopped) and
        ``stop`` ends before that listed position (a shard); each batch's ``stop`` is the listed
        position just after it.
        """
        if batch_size < 1:
            raise DataError(f"batch_size must be at least 1, got {batch_size}.")
        end = len(self) if stop is None else min(int(stop), len(self))
        total = end if limit is None else min(int(limit), end)
        pos, done, pending = start, 0, []
        while pos < end and done < total:
            have = sum(len(b) for b in pending)
            want = min(batch_size - have, total - done - have)
            pending.append(self._load(range(pos, min(pos + want, end))))
            pos += want
            have = sum(len(b) for b in pending)
            if have and (have == batch_size or have == total - done or pos >= end):
                batch = Batch.cat(pending)
                batch.stop = min(pos, end)
                pending, done = [], done + len(batch)
                yield batch

    def get(self, ids: Sequence[str]) -> Batch:
        """The examples with these ids, in the order given (for showing examples later)."""
        if isinstance(ids, str):
            ids = [ids]
        indices = []
        for i in ids:
            if i not in self._index:
                if i in self.skipped:
                    raise DataError(f"{self.source}: example {i!r} was skipped: {self.skipped[i]}")
                raise DataError(f"{self.source}: no example with id {i!r}. "
                                + did_you_mean(str(i), self._ids, "id"))
            indices.append(self._index[i])
        batch = self._load(indices)
        got = set(batch.ids)
        missing = [i for i in ids if i not in got]
        if missing:
            raise DataError(f"{self.source}: example {missing[0]!r} could not be read: "
                            f"{self.skipped.get(missing[0], 'unknown reason')}")
        return batch

    def summary(self) -> dict:
        """A JSON-able description; ``n_skipped`` grows as unreadable items are met."""
        return {
            "kind": self.kind, "source": self.source, "n": len(self),
            "input_shape": list(self.input_shape), "task": self.task, "target": self.target,
            "classes": self.classes, "columns": self.columns,
            "n_skipped": len(self.skipped), "skipped": dict(list(self.skipped.items())[:20]),
        }


# ----------------------------------------------------------------------------------- images


class ImageFolder(Dataset):
    """Images under a folder (one subfolder per class, or unlabelled), or one image file.

    ids are paths relative to the root with forward slashes (a single file: its name). Each image
    is converted to 'L' or 'RGB' by ``input_shape[0]``, scaled so it covers (H, W), centre-cropped
    (one bilinear, antialiased resample), and mapped linearly from [0, 1] to ``value_range``.
    """

    kind = "images"

    def __init__(self, path, input_shape: Sequence[int] | None, value_range=(0.0, 1.0),
                 classes: Sequence[str] | None = None):
        self.skipped: dict[str, str] = {}
        root = Path(path)
        self._shape = _image_shape(input_shape)
        lo, hi = (float(v) for v in value_range)
        if not lo < hi:
            raise DataError(f"value_range must be (low, high) with low < high, got {value_range}.")
        self._range = (lo, hi)
        if root.is_file():
            self._root, files, found = root.parent.resolve(), [root.name], None
        else:
            self._root = root.resolve()  # absolute: worker processes may run elsewhere
            files, found = self._list(root)
        if not files:
            raise DataError(f"no images found in {root} (looked for "
                            f"{', '.join(sorted(IMAGE_EXTENSIONS))}).")
        task, names, self._labels = None, found, None
        if found is not None:
            names = _check_folder_classes(found, classes, root)
            order = {c: k for k, c in enumerate(names)}
            self._labels = [order[f.split("/", 1)[0]] for f in files]
            task = "classification"
        elif classes is not None:
            names = list(classes)  # unlabelled: the names describe the model's outputs
        super().__init__(path, files, input_shape=self._shape, classes=names, task=task,
                         skipped=self.skipped)

    def _list(self, root: Path) -> tuple[list[str], list[str] | None]:
        """Relative image paths and class names (None when unlabelled); others go to skipped."""
        entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
        folders = [e for e in entries if (root / e).is_dir()]
        found = [e for e in entries if e not in folders]
        if folders:
            for loose in found:
                self.skipped[loose] = "not inside a class folder"
            found = []
            for top in folders:
                for dirpath, dirnames, names in os.walk(root / top, followlinks=True):
                    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                    found += [Path(dirpath, n).relative_to(root).as_posix()
                              for n in sorted(names) if not n.startswith(".")]
        files = []
        for rel in found:
            ext = Path(rel).suffix.lower()
            if ext in IMAGE_EXTENSIONS:
                files.append(rel)
            else:
                self.skipped[rel] = f"not an image file ({ext or 'no extension'})"
        return files, (folders or None)

    def _load(self, indices: Sequence[int]) -> Batch:
        ids, xs, ys = [], [], []
        for k in indices:
            rel = self._ids[k]
            try:
                xs.append(self._read(self._root / rel))
            except Exception as e:  # Pillow raises many kinds; one bad file must not end a run
                self.skipped[rel] = f"cannot read image: {e}"
                continue
            ids.append(rel)
            if self._labels is not None:
                ys.append(self._labels[k])
        x = torch.stack(xs) if xs else torch.empty((0, *self._shape))
        y = torch.tensor(ys, dtype=torch.int64) if self._labels is not None else None
        return Batch(ids, x, y)

    #: Decoded images are kept (per dataset) up to this many bytes: the report reads the same
    #: files in a dozen passes, and decoding would otherwise be a large part of each one.
    cache_bytes = 256 * 2**20

    def __getstate__(self) -> dict:
        # Sent to worker processes (neuronscope.engines) without the decoded images: they read their own.
        return {k: v for k, v in self.__dict__.items() if k not in ("_decoded", "_decoded_bytes")}

    def _read(self, file: Path) -> torch.Tensor:
        cache = self.__dict__.setdefault("_decoded", {})
        x = cache.get(file)
        if x is None:
            x = read_image(file, self._shape, self._range)
            held = self.__dict__.get("_decoded_bytes", 0)
            if held + x.numel() * x.element_size() <= self.cache_bytes:
                cache[file] = x
                self._decoded_bytes = held + x.numel() * x.element_size()
        return x


def read_image(file, shape: Sequence[int], value_range=(0.0, 1.0)) -> torch.Tensor:
    """One image file as a (C, H, W) float32 tensor in the value range: the largest centred box
    with the target's aspect, resampled once (as image folders are read)."""
    c, h, w = _image_shape(shape)
    mode = "RGB" if c == 3 else "L"
    with Image.open(file) as im:
        im.draft(mode, (2 * max(h, w), 2 * max(h, w)))  # JPEG: decode at a smaller scale
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I;16"):  # 16-bit grey: converting to 'L' would clip at 255
            im, peak = Image.fromarray(np.asarray(im, dtype=np.float32)), 65535.0
        else:
            im, peak = im.convert(mode), 255.0
    cw, ch = min(im.width, im.height * w / h), min(im.height, im.width * h / w)
    left, top = (im.width - cw) / 2, (im.height - ch) / 2
    im = im.resize((w, h), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch))
    a = np.asarray(im, dtype=np.float32) / peak
    a = np.repeat(a[None], c, axis=0) if a.ndim == 2 else a.transpose(2, 0, 1)
    lo, hi = value_range
    return torch.from_numpy(np.ascontiguousarray(lo + (hi - lo) * a))


def _image_shape(input_shape) -> tuple[int, int, int]:
    if input_shape is None:
        raise DataError("image data needs the model's input shape: pass --input-shape C,H,W "
                        "(e.g. 3,224,224), or input_shape=(C, H, W).")
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputShapeError(f"image data needs an input shape C,H,W (e.g. 3,224,224); "
                              f"got {','.join(map(str, shape))}.")
    if shape[0] not in (1, 3):
        raise DataError(f"image folders need 1 (grey) or 3 (RGB) channels, but the input shape "
                        f"asks for {shape[0]}; save the inputs as an array file (.npy/.npz/.pt) "
                        f"of shape (N, {', '.join(map(str, shape))}) instead.")
    return shape  # type: ignore[return-value]


def _check_folder_classes(found: list[str], given: Sequence[str] | None, root) -> list[str]:
    """Class names in label order: the given (model's) order. A folder may hold only some of
    the classes (evaluating on a subset is common), but never a class the model lacks."""
    if given is None:
        return found
    given = [str(c) for c in given]
    extra = sorted(set(found) - set(given))
    if extra:
        raise DataError(f"{root}: folder(s) {', '.join(map(repr, extra))} are not among the model's "
                        f"classes ({', '.join(given[:12])}{', ...' if len(given) > 12 else ''}): "
                        "rename the folders or fix --classes.")
    return given


# ----------------------------------------------------------------------------------- arrays


class ArrayData(Dataset):
    """Arrays from .npz/.npy/.pt/.pth; rows are examples. ``x`` is cast to float32, not rescaled.

    ``.npy`` (and ``.pt`` where possible) are memory-mapped; batches copy only their own rows.
    """

    kind = "arrays"

    def __init__(self, path, input_shape: Sequence[int] | None = None,
                 classes: Sequence[str] | None = None):
        x, y, ids = _read_arrays(Path(path))
        if x.ndim < 2 or x.dtype.kind not in "biuf":
            raise DataError(f"{path}: x must be a numeric array of shape (N, *input_shape); "
                            f"found dtype {x.dtype}, shape {tuple(x.shape)}.")
        if input_shape is not None and tuple(x.shape[1:]) != tuple(int(d) for d in input_shape):
            raise InputShapeError(_shape_mismatch(path, tuple(input_shape), tuple(x.shape)))
        for name, arr in (("y", y), ("ids", ids)):
            if arr is not None and len(arr) != len(x):
                raise DataError(f"{path}: x has {len(x)} rows but {name} has {len(arr)}.")
        self._x = x
        self._y, task, names = _labels(y, classes, str(path), ints_are_classes=True)
        ids = [str(i) for i in (ids if ids is not None else range(len(x)))]
        super().__init__(path, ids, input_shape=x.shape[1:], classes=names, task=task)

    def _load(self, indices: Sequence[int]) -> Batch:
        rows = _rows(indices)
        x = torch.from_numpy(np.array(self._x[rows], dtype=np.float32))
        y = None if self._y is None else torch.from_numpy(np.array(self._y[rows]))
        return Batch([self._ids[k] for k in indices], x, y)


def _read_arrays(path: Path):
    """(x, y, ids) from an array file; y and ids may be None."""
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False), None, None
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
        else:
            try:
                data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
                data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if isinstance(data, torch.Tensor):
        data = {"x": data}
    elif isinstance(data, (tuple, list)) and len(data) in (1, 2):
        data = dict(zip(("x", "y"), data))
    if not isinstance(data, dict) or "x" not in data:
        keys = [str(k) for k in data] if isinstance(data, dict) else []
        hint = did_you_mean("x", keys, "key") if keys else ""
        if any(k.endswith(".weight") for k in keys):
            hint = "It looks like a model's weights, not data."
        raise DataError(f"{path}: expected a tensor, an (x, y) pair, or a dict with 'x' (and "
                        f"optional 'y', 'ids'); found {type(data).__name__}. {hint}")
    return tuple(_numpy(data.get(k), path, k) for k in ("x", "y", "ids"))


def _numpy(a, path, key):
    if a is None or isinstance(a, np.ndarray):
        return a
    if isinstance(a, torch.Tensor):
        a = a.detach()
        return (a.float() if a.dtype == torch.bfloat16 else a).numpy()
    if key == "ids" and isinstance(a, (list, tuple)):
        return np.asarray([str(i) for i in a])
    raise DataError(f"{path}: {key!r} must be a tensor or array, found {type(a).__name__}.")


def _shape_mismatch(path, expected: tuple, found: tuple) -> str:
    exp = ", ".join(map(str, expected))
    msg = (f"{path}: the model takes inputs of shape (N, {exp}) (input shape {exp}), but x has "
           f"shape {found}.")
    if len(found) == 4 and found[1:] == (*expected[1:], expected[0]):
        msg += " It looks channels-last: transpose x to (N, C, H, W)."
    return msg + (f" If the model takes {','.join(map(str, found[1:]))}, "
                  f"pass --input-shape {','.join(map(str, found[1:]))}.")


# ----------------------------------------------------------------------------------- tables


class TableData(Dataset):
    """Rows of a CSV/TSV/Parquet table; features are numeric columns, ``target`` the label.

    Rows with a missing feature or target value are skipped when the table is opened.
    """

    kind = "table"

    def __init__(self, path, target: str | None = None, columns: Sequence[str] | None = None,
                 id_column: str | None = None, classes: Sequence[str] | None = None,
                 input_shape: Sequence[int] | None = None):
        table = _read_table(Path(path))
        names = table.column_names
        wanted = [("target", target), ("id", id_column)] + [("feature", c) for c in columns or ()]
        for what, col in wanted:
            if col is not None and col not in names:
                raise DataError(f"{path}: no {what} column {col!r}. "
                                + did_you_mean(col, names, "column"))
        if columns is not None and target in columns:
            raise DataError(f"{path}: the target {target!r} is also listed as a feature column.")
        features = list(columns) if columns is not None else [
            c for c in names if c not in (target, id_column)]
        if not features:
            raise DataError(f"{path}: no feature columns left (columns: {', '.join(names)}).")
        if input_shape is not None and tuple(int(d) for d in input_shape) != (len(features),):
            raise InputShapeError(
                f"{path}: the model takes input shape {','.join(map(str, input_shape))} but the "
                f"table has {len(features)} feature column(s) ({', '.join(features[:12])}). "
                f"Choose the model's columns with --columns, or pass --input-shape "
                f"{len(features)}.")
        x = np.stack([_numeric(table, c, path) for c in features], axis=1)
        missing, checked = np.isnan(x), list(features)
        if target is not None:
            y = _target_column(table, target)
            missing = np.concatenate([missing, y.is_null(nan_is_null=True).to_numpy(
                zero_copy_only=False)[:, None]], axis=1)
            checked.append(target)
        ids = ([str(v) for v in table.column(id_column).to_pylist()] if id_column
               else [str(i) for i in range(table.num_rows)])
        bad = missing.any(axis=1)
        skipped = {ids[r]: f"missing value in column {checked[np.argmax(missing[r])]!r}"
                   for r in np.flatnonzero(bad)}
        keep = np.flatnonzero(~bad)
        self._x = x[keep].astype(np.float32)
        values = None if target is None else y.take(keep).to_numpy(zero_copy_only=False)
        self._y, task, names = _labels(values, classes, f"{path}: target {target!r}",
                                       ints_are_classes=False)
        super().__init__(path, [ids[r] for r in keep], input_shape=(len(features),),
                         classes=names, columns=features, target=target, task=task,
                         skipped=skipped)

    def _load(self, indices: Sequence[int]) -> Batch:
        rows = _rows(indices)
        y = None if self._y is None else torch.from_numpy(self._y[rows].copy())
        return Batch([self._ids[k] for k in indices], torch.from_numpy(self._x[rows].copy()), y)


def _read_table(path: Path):
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pq.read_table(path)
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter),
                              convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(f"cannot read {path} as a table: {e}") from e


def _target_column(table, name: str):
    """The target column as one array: text, bool, or numbers (decimals as float64)."""
    col = table.column(name).combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_decimal(col.type):
        col = col.cast(pa.float64())
    return col


def _is_number(t) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) \
        or pa.types.is_decimal(t)


def _numeric(table, name: str, path) -> np.ndarray:
    """A feature column as float64, NaN where missing; DataError if it is not numeric."""
    col = table.column(name)
    if not _is_number(col.type):
        example = next((v for v in col.to_pylist() if v is not None), None)
        raise DataError(f"{path}: feature column {name!r} is not numeric ({col.type}, values "
                        f"like {example!r}). One-hot encode it, or choose numeric columns with "
                        f"--columns.")
    return col.cast("float64").to_numpy(zero_copy_only=False)


# ----------------------------------------------------------------------------------- shared


def _labels(y: np.ndarray | None, classes: Sequence[str] | None, where: str, *,
            ints_are_classes: bool) -> tuple[np.ndarray | None, str | None, list[str] | None]:
    """(labels, task, class names) from target values.

    Text and bools are classes; integers are classes in arrays (``ints_are_classes``) and, like
    integral floats, in tables when there are at most MAX_CLASS_LEVELS distinct values. Given
    ``classes`` force classification; without labels they name the model's outputs.
    """
    if y is None:
        return None, None, None if classes is None else [str(c) for c in classes]
    if y.dtype.kind in "OUS" and all(isinstance(v, str) for v in y.ravel()):
        labels, names = _encode_labels(y, classes, where)
        return labels, "classification", names
    if y.dtype.kind not in "biuf":
        raise DataError(f"{where}: labels must be numbers or text; found dtype {y.dtype}.")
    integral = _integral(y)
    categorical = y.dtype.kind == "b" or (y.dtype.kind in "iu" and ints_are_classes) or (
        integral and len(np.unique(y)) <= MAX_CLASS_LEVELS) or classes is not None
    if not categorical:
        return y.astype(np.float32), "regression", None
    if not integral or y.ndim != 1:
        raise DataError(f"{where}: class labels must be one class index or name per example; "
                        f"found dtype {y.dtype}, shape {y.shape}"
                        + ("" if integral else " with non-integer values") + ".")
    labels, names = _encode_labels(y, classes, where)
    return labels, "classification", names


def _encode_labels(values: np.ndarray, given: Sequence[str] | None,
                   where: str) -> tuple[np.ndarray, list[str]]:
    """int64 class indices and class names for categorical labels.

    Non-negative integers that include 0 are already class indices (names "0".."K-1", or the
    given names). Other values are matched to the given names, or else numbered in sorted order.
    """
    default = ["False", "True"] if values.dtype.kind == "b" else None
    if values.dtype.kind in "bf":
        values = values.astype(np.int64)  # floats arrive here only when integral
    numeric = values.dtype.kind in "iu"
    uniq = np.unique(values)
    names = [str(v) for v in uniq]
    if given is not None:
        given = [str(c) for c in given]
        lookup = {c: k for k, c in enumerate(given)}
        if all(n in lookup for n in names):
            return np.array([lookup[str(v)] for v in values], dtype=np.int64), given
        if numeric and uniq[0] >= 0 and uniq[-1] < len(given):
            return values.astype(np.int64), given
        unknown = [n for n in names if n not in lookup]
        raise DataError(f"{where}: label(s) {', '.join(map(repr, unknown[:10]))} are neither "
                        f"among the given classes nor indices 0..{len(given) - 1}.")
    if numeric and uniq[0] == 0:
        return values.astype(np.int64), default or [str(k) for k in range(int(uniq[-1]) + 1)]
    return np.searchsorted(uniq, values).astype(np.int64), names


def _integral(v: np.ndarray) -> bool:
    return v.dtype.kind in "biu" or bool(np.all(np.isfinite(v)) and np.all(v == np.round(v)))


def _rows(indices: Sequence[int]):
    """A slice when the positions are contiguous (cheap on memory maps), else an index array."""
    if isinstance(indices, range) and indices.step == 1:
        return slice(indices.start, indices.stop)
    return np.asarray(indices, dtype=np.int64)


# ----------------------------------------------------------------------------------- entry


def open_data(path, *, input_shape: Sequence[int] | None = None, value_range=(0.0, 1.0),
              target: str | None = None, columns: Sequence[str] | None = None,
              id_column: str | None = None, classes: Sequence[str] | None = None) -> Dataset:
    """Open the user's data, choosing the adapter from the path.

    A folder or image file -> :class:`ImageFolder` (needs ``input_shape``); ``.npz``/``.npy``/
    ``.pt``/``.pth`` -> :class:`ArrayData`; ``.csv``/``.tsv``/``.parquet``/``.pq`` ->
    :class:`TableData`. ``target``, ``columns`` and ``id_column`` apply to tables only.
    """
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        hint = ""
        if p.parent.is_dir():
            near = [e for e in os.listdir(p.parent) if not e.startswith(".")]
            hint = " " + did_you_mean(p.name, near, "file") if near else ""
        raise DataError(f"no such file or folder: {path}.{hint}")
    ext = p.suffix.lower()
    is_table = p.is_file() and ext in TABLE_EXTENSIONS
    if not is_table:
        given = [n for n, v in (("target", target), ("columns", columns),
                                ("id_column", id_column)) if v is not None]
        if given:
            raise DataError(f"{', '.join(given)} apply to tables (.csv/.tsv/.parquet) only, "
                            f"but {path} is not a table.")
    if p.is_dir() or ext in IMAGE_EXTENSIONS:
        return ImageFolder(p, input_shape, value_range, classes)
    if ext in ARRAY_EXTENSIONS:
        return ArrayData(p, input_shape, classes)
    if is_table:
        return TableData(p, target, columns, id_column, classes, input_shape)
    raise DataError(f"don't know how to read {path} ({ext or 'no extension'}). Supported: a "
                    f"folder of images (one subfolder per class, or unlabelled), an image file, "
                    f"arrays (.npz, .npy, .pt, .pth), or a table (.csv, .tsv, .parquet, .pq).")
