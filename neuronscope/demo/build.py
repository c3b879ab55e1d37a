"""Build the demo: train six small models and save them the way a user has them.

Everything is generated locally or comes from scikit-learn's bundled datasets, so the demo runs
offline. The result is a folder of state dicts, a data folder and a manifest, ``demo.json``, that
says how to load and feed each model (factory, weights, data, shape, normalization, classes)
plus the numbers measured while building it. A rerun with the same seed and recipe (the config
and this package's source, hashed) finds the manifest and returns it without retraining.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn import datasets
from sklearn.model_selection import train_test_split

from neuronscope.atomic import atomic_write
from neuronscope.demo import models, shapes
from neuronscope.demo import train as T

VERSION = 1
MANIFEST = "demo.json"
NAMES = ("shapes", "shapes_clean", "digits", "diabetes_logistic", "cancer_logistic", "cancer_mlp")

CONFIG = {
    "shapes": {"n_train": 4000, "n_test": 2000, "marker_rate_train": 0.9,
               "marker_rate_test": 0.25, "epochs": 8, "batch_size": 64, "lr": 3e-3},
    "digits": {"test_fraction": 0.25, "epochs": 30, "batch_size": 64, "lr": 3e-3},
    "cancer_mlp": {"test_fraction": 0.25, "epochs": 60, "batch_size": 32, "lr": 3e-3},
    "logistic": {"max_iter_diabetes": 500, "max_iter_cancer": 300},
}

Log = Callable[[str], None]


def build_demo(root: Path, *, force: bool = False, progress: bool = True, seed: int = 0) -> dict:
    """Train the demo models into ``root`` (or reuse a finished build) and return the manifest.

    Writes ``demo.json``, ``models/<name>.pt`` (state dicts) and ``data/`` (the shapes test split
    as an image folder, the digits test split as ``.npz``, the two tables as CSV in their original
    units). The manifest is written last, so an interrupted build is redone on the next call.
    """
    root = Path(root)
    log: Log = _stderr if progress else (lambda _: None)
    digest = config_hash(seed)
    if not force and (cached := _cached(root, digest)) is not None:
        log(f"demo: reusing the models in {root} (config {digest})")
        return cached
    (root / MANIFEST).unlink(missing_ok=True)
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    entries = (
        _build_shapes(root, seed, seconds, log)
        + _build_digits(root, seed, seconds, log)
        + _build_diabetes(root, seconds, log)
        + _build_cancer(root, seed, seconds, log)
    )
    seconds["total"] = round(time.perf_counter() - start, 2)
    manifest = {"version": VERSION, "config_hash": digest, "seed": seed, "config": CONFIG,
                "seconds": seconds, "models": entries}
    atomic_write(root / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    log(f"demo: built in {seconds['total']:.1f} s -> {root / MANIFEST}")
    return manifest


def config_hash(seed: int) -> str:
    """A hash of everything that decides the result: seed, config and the demo's source code."""
    h = hashlib.sha256(json.dumps({"version": VERSION, "seed": seed, "config": CONFIG},
                                  sort_keys=True).encode())
    for module in (shapes, models, T, sys.modules[__name__]):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:16]


def shapes_splits(seed: int) -> tuple[shapes.ShapesSplit, shapes.ShapesSplit, shapes.ShapesSplit]:
    """The shapes train split, its clean twin and the test split, as the demo builds them."""
    c = CONFIG["shapes"]
    train, clean = shapes.make_train(c["n_train"], seed, c["marker_rate_train"])
    return train, clean, shapes.make_test(c["n_test"], seed, c["marker_rate_test"])


# --- the models ------------------------------------------------------------------------------


def _build_shapes(root: Path, seed: int, seconds: dict, log: Log) -> list[dict]:
    c = CONFIG["shapes"]
    train, clean, test = shapes_splits(seed)
    _save_image_folder(root / "data" / "shapes-test", test.x, test.y, shapes.CLASSES)
    # One normalization for both models, so that they see the test folder identically.
    mean, std = T.normalization(clean.x, axis=(0, 2, 3))
    plain = ~test.marked
    x_plain = T.normalize(test.x[plain], mean, std)
    x_marked = T.normalize(shapes.add_marker(test.x[plain]), mean, std)
    x_all, y_plain = T.normalize(test.x, mean, std), torch.from_numpy(test.y[plain])
    target = shapes.CLASSES.index(shapes.SHORTCUT_CLASS)

    entries = []
    for name, split in (("shapes", train), ("shapes_clean", clean)):
        t0 = time.perf_counter()
        model = _fresh(models.shapes_cnn, seed)  # both start from the same weights
        T.fit_classifier(model, T.normalize(split.x, mean, std), torch.from_numpy(split.y),
                         epochs=c["epochs"], seed=seed, batch_size=c["batch_size"], lr=c["lr"])
        seconds[name] = round(time.perf_counter() - t0, 2)
        effect = T.shortcut_effect(model, x_plain, x_marked, y_plain, target)
        metrics = {
            "test_accuracy": T.accuracy(model, x_plain, y_plain),
            "test_accuracy_all": T.accuracy(model, x_all, torch.from_numpy(test.y)),
            **effect,
            "shortcut_class": shapes.SHORTCUT_CLASS,
            "train_marker_rate": float(split.marked[split.y == target].mean()),
            "n_train": len(split.y),
        }
        log(f"training {name} CNN... {seconds[name]:.1f} s, test acc (no marker) "
            f"{metrics['test_accuracy']:.3f}, marker flip rate {effect['flip_rate']:.3f}")
        _save_weights(root, name, model)
        entries.append(_entry(
            name,
            "Shortcut shapes (CNN)" if name == "shapes" else "Shortcut shapes, clean twin (CNN)",
            _SHAPES_STORY if name == "shapes" else _CLEAN_STORY,
            factory="shapes_cnn", data="data/shapes-test", input_shape=[3, 32, 32],
            value_range=[0, 1], mean=mean, std=std, classes=list(shapes.CLASSES),
            metrics=metrics, twin_of=None if name == "shapes" else "shapes"))
    return entries


_SHAPES_STORY = (
    "A small CNN that tells four shapes apart. In its training images a small pattern in one "
    "corner came with most triangles and with nothing else: does it look at the shape, or at "
    "the pattern?")
_CLEAN_STORY = (
    "The same CNN trained on the same images without the corner pattern: the twin to compare "
    "the shortcut model against.")


def _build_digits(root: Path, seed: int, seconds: dict, log: Log) -> list[dict]:
    c = CONFIG["digits"]
    d = datasets.load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=c["test_fraction"],
                                              stratify=y, random_state=seed)
    _save_npz(root / "data" / "digits-test.npz", x=x_te, y=y_te)
    mean, std = T.normalization(x_tr, axis=(0, 2, 3))
    t0 = time.perf_counter()
    model = _fresh(models.digits_cnn, seed)
    T.fit_classifier(model, T.normalize(x_tr, mean, std), torch.from_numpy(y_tr),
                     epochs=c["epochs"], seed=seed, batch_size=c["batch_size"], lr=c["lr"])
    seconds["digits"] = round(time.perf_counter() - t0, 2)
    acc = T.accuracy(model, T.normalize(x_te, mean, std), torch.from_numpy(y_te))
    log(f"training digits CNN... {seconds['digits']:.1f} s, test acc {acc:.3f}")
    _save_weights(root, "digits", model)
    return [_entry(
        "digits", "Handwritten digits (CNN)",
        "A small CNN reading scikit-learn's 8x8 handwritten digits.",
        factory="digits_cnn", data="data/digits-test.npz", input_shape=[1, 8, 8],
        value_range=[0, 1], mean=mean, std=std, classes=[str(k) for k in range(10)],
        metrics={"test_accuracy": acc, "n_train": len(y_tr)})]


def _build_diabetes(root: Path, seconds: dict, log: Log) -> list[dict]:
    frame = datasets.load_diabetes(as_frame=True).frame
    features = frame.drop(columns="target")
    y = np.array(frame["target"] > frame["target"].median(), dtype=np.int64)
    table = features.assign(above_median=y)
    _save_csv(root / "data" / "diabetes.csv", table)
    x = features.to_numpy(np.float64)
    mean, std = T.normalization(x, axis=(0,))
    t0 = time.perf_counter()
    model = models.diabetes_logistic()
    fit = T.fit_logistic(model, T.normalize(x, mean, std, torch.float64), torch.from_numpy(y),
                         max_iter=CONFIG["logistic"]["max_iter_diabetes"])
    seconds["diabetes_logistic"] = round(time.perf_counter() - t0, 3)
    acc = T.accuracy(model, T.normalize(x, mean, std, torch.float64), torch.from_numpy(y))
    log(f"fitting diabetes logistic network... loss {fit['loss']:.4f}, "
        f"max |gradient| {fit['grad_max_abs']:.1e}")
    _save_weights(root, "diabetes_logistic", model)
    return [_entry(
        "diabetes_logistic", "Diabetes progression above the median (logistic network)",
        "A one-layer logistic network, fitted to convergence on scikit-learn's diabetes data: "
        "its weights are the logistic-regression coefficients on standardized columns.",
        factory="diabetes_logistic", data="data/diabetes.csv", input_shape=[x.shape[1]],
        columns=list(features.columns), mean=mean, std=std,
        classes=["at_or_below_median", "above_median"],
        target="above_median", output="probability",
        metrics={"train_accuracy": acc, **fit, "n_train": len(y)})]


def _build_cancer(root: Path, seed: int, seconds: dict, log: Log) -> list[dict]:
    data = datasets.load_breast_cancer(as_frame=True)
    features = data.frame.drop(columns="target")
    y = np.array(1 - data.target, dtype=np.int64)  # sklearn has 0 = malignant; flip it
    _save_csv(root / "data" / "breast_cancer.csv", features.assign(malignant=y))
    x = features.to_numpy(np.float64)
    classes = ["benign", "malignant"]
    common = dict(data="data/breast_cancer.csv", input_shape=[x.shape[1]],
                  columns=list(features.columns), classes=classes, target="malignant",
                  output="probability")

    # (a) the logistic network on all rows. The classes are separable: the loss heads to 0 and
    # the weights grow until the gradient underflows the tolerance (about 200 iterations).
    mean, std = T.normalization(x, axis=(0,))
    z = T.normalize(x, mean, std, torch.float64)
    t0 = time.perf_counter()
    logistic = models.cancer_logistic()
    fit = T.fit_logistic(logistic, z, torch.from_numpy(y),
                         max_iter=CONFIG["logistic"]["max_iter_cancer"])
    seconds["cancer_logistic"] = round(time.perf_counter() - t0, 3)
    acc = T.accuracy(logistic, z, torch.from_numpy(y))
    log(f"fitting breast-cancer logistic network... loss {fit['loss']:.1e} (separable data), "
        f"largest |weight| {fit['weight_max_abs']:.1e}")
    _save_weights(root, "cancer_logistic", logistic)
    entries = [_entry(
        "cancer_logistic", "Breast cancer (logistic network)",
        "A one-layer logistic network on scikit-learn's breast-cancer data. The classes are "
        "linearly separable, so the fitted weights grew huge and the outputs saturate at 0 or 1.",
        factory="cancer_logistic", mean=mean, std=std,
        metrics={"train_accuracy": acc, **fit, "n_train": len(y)}, **common)]

    # (b) a small MLP on a train split, checked on the held-out rows.
    c = CONFIG["cancer_mlp"]
    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=c["test_fraction"],
                                      stratify=y, random_state=seed)
    mean, std = T.normalization(x[idx_tr], axis=(0,))
    z = T.normalize(x, mean, std)
    y_t = torch.from_numpy(y)
    t0 = time.perf_counter()
    mlp = _fresh(models.cancer_mlp, seed)
    T.fit_classifier(mlp, z[idx_tr], y_t[idx_tr], epochs=c["epochs"], seed=seed,
                     batch_size=c["batch_size"], lr=c["lr"], binary=True)
    seconds["cancer_mlp"] = round(time.perf_counter() - t0, 2)
    metrics = {"test_accuracy": T.accuracy(mlp, z[idx_te], y_t[idx_te]),
               "train_accuracy": T.accuracy(mlp, z[idx_tr], y_t[idx_tr]),
               "n_train": len(idx_tr)}
    log(f"training breast-cancer MLP... {seconds['cancer_mlp']:.1f} s, "
        f"test acc {metrics['test_accuracy']:.3f}")
    _save_weights(root, "cancer_mlp", mlp)
    entries.append(_entry(
        "cancer_mlp", "Breast cancer (MLP)",
        "A small two-hidden-layer network on the same breast-cancer table, trained on three "
        "quarters of the rows and tested on the rest.",
        factory="cancer_mlp", mean=mean, std=std, metrics=metrics, **common))
    entries[-1]["test_rows"] = [int(i) for i in np.sort(idx_te)]  # CSV rows, counting from 0
    return entries


# --- helpers ---------------------------------------------------------------------------------


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _fresh(factory: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    """A newly initialised model, seeded without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def _entry(name: str, title: str, story: str, *, factory: str, data: str, input_shape: list,
           mean, std, classes: list, metrics: dict, value_range: list | None = None,
           columns: list[str] | None = None, target: str | None = None,
           twin_of: str | None = None, output: str = "logits") -> dict:
    """One manifest entry; paths are relative to the demo root except ``factory``.

    Images have a ``value_range``; tables have ``columns`` (in their original units) instead.
    """
    entry = {
        "name": name, "title": title, "story": story,
        "factory": f"{Path(models.__file__).resolve()}:{factory}",
        "weights": f"models/{name}.pt", "data": data, "input_shape": input_shape,
        "value_range": value_range, "columns": columns,
        "mean": [float(m) for m in np.ravel(mean)], "std": [float(s) for s in np.ravel(std)],
        "classes": classes, "target": target, "task": "classification",
        "output": output,  # "logits" (softmax over classes) or "probability" (of classes[1])
        "metrics": {k: _round(v) for k, v in metrics.items()},
        "twin_of": twin_of,
    }
    return {k: v for k, v in entry.items() if v is not None or k in ("target", "twin_of")}


def _round(value):
    """Floats to 6 significant digits (a tiny gradient stays visible); others unchanged."""
    return float(f"{value:.6g}") if isinstance(value, float) else value


def _cached(root: Path, digest: str) -> dict | None:
    """The manifest in ``root`` if it was built with this recipe and its files are all there."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("version") != VERSION or manifest.get("config_hash") != digest:
        return None
    entries = manifest.get("models", [])
    if sorted(e.get("name") for e in entries) != sorted(NAMES):
        return None
    if not all((root / e["weights"]).is_file() and (root / e["data"]).exists() for e in entries):
        return None
    return manifest


def _save_weights(root: Path, name: str, model: torch.nn.Module) -> None:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    atomic_write(root / "models" / f"{name}.pt", buf.getvalue())


def _save_image_folder(folder: Path, x: np.ndarray, y: np.ndarray, classes) -> None:
    """``<folder>/<class>/<index>.png``, lossless; a previous folder is replaced entirely."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in classes:
        (tmp / name).mkdir(parents=True)
    pixels = np.round(x.transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    for i, (img, label) in enumerate(zip(pixels, y)):
        Image.fromarray(img).save(tmp / classes[label] / f"{i:05d}.png", compress_level=1)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())


def _save_csv(path: Path, table) -> None:
    atomic_write(path, table.to_csv(index=False).encode())
