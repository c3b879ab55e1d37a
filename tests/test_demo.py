"""The built-in demo: its data, its models, and the properties the report relies on.

The slow tests share one build (module fixture) and read it back from disk the way the rest of
neuronscope will: factory + state dict, image folder, npz, CSV, manifest normalization.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import torch
from PIL import Image
from sklearn import datasets
from torch import nn
from torch.nn import functional as F

from neuronscope.demo import build, models, shapes
from neuronscope.demo import train as T
from neuronscope.demo.build import NAMES, build_demo

SEED = 0


# --- fixtures and readers ------------------------------------------------------------------


# demo_built (the demo's data and models, built once per session) is in conftest.py.


def entry(manifest: dict, name: str) -> dict:
    return next(e for e in manifest["models"] if e["name"] == name)


def load(root: Path, e: dict) -> nn.Module:
    """The model as neuronscope loads it: the factory from its file, then the state dict."""
    path, factory = e["factory"].rsplit(":", 1)
    assert Path(path) == Path(models.__file__).resolve()
    model = getattr(models, factory)()
    model.load_state_dict(torch.load(root / e["weights"], weights_only=True))
    return model.eval()


def normalized(x: np.ndarray, e: dict) -> torch.Tensor:
    dtype = torch.float64 if e["name"].endswith("logistic") else torch.float32
    return T.normalize(x, np.array(e["mean"]), np.array(e["std"]), dtype)


def read_folder(folder: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for k, name in enumerate(classes):
        for file in sorted((folder / name).glob("*.png")):
            xs.append(np.asarray(Image.open(file).convert("RGB"), np.float32) / 255.0)
            ys.append(k)
    return np.stack(xs).transpose(0, 3, 1, 2), np.array(ys)


def read_table(root: Path, e: dict) -> tuple[np.ndarray, np.ndarray]:
    table = pd.read_csv(root / e["data"])
    x = table.drop(columns=e["target"]).to_numpy(np.float64, copy=True)
    return x, table[e["target"]].to_numpy(np.int64, copy=True)


# --- shapes data (fast) --------------------------------------------------------------------


def test_shapes_are_seeded_and_in_range():
    a, a_clean = shapes.make_train(40, seed=3)
    b, _ = shapes.make_train(40, seed=3)
    c, _ = shapes.make_train(40, seed=4)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)
    assert a.x.shape == (40, 3, 32, 32) and a.x.dtype == np.float32
    assert 0.0 <= a.x.min() and a.x.max() <= 1.0
    assert np.array_equal(np.round(a.x * 255) / 255, a.x)  # 8-bit levels survive PNG exactly
    assert np.bincount(a.y).tolist() == [10] * len(shapes.CLASSES)
    assert list(shapes.CLASSES) == sorted(shapes.CLASSES)  # the image folder's order


def test_marker_round_trip():
    clean = shapes.make_test(50, seed=1, marker_rate=0.0).x
    assert not shapes.has_marker(clean).any()
    marked = shapes.add_marker(clean)
    assert shapes.has_marker(marked).all()
    assert not shapes.has_marker(clean).any(), "add_marker must not modify its input"
    assert np.array_equal(shapes.add_marker(clean[0]), marked[0])  # one (3, H, W) image too


@pytest.fixture(scope="module")
def demo_splits():
    return build.shapes_splits(SEED)


def test_clean_twin_is_the_train_split_without_marker(demo_splits):
    train, clean, _ = demo_splits
    assert not shapes.has_marker(clean.x).any()
    assert np.array_equal(shapes.has_marker(train.x), train.marked)
    assert np.array_equal(train.y, clean.y)
    assert np.array_equal(train.x[~train.marked], clean.x[~train.marked])
    assert np.array_equal(train.x[train.marked], shapes.add_marker(clean.x[train.marked]))


def test_train_marker_only_on_the_shortcut_class(demo_splits):
    train, _, _ = demo_splits
    target = shapes.CLASSES.index(shapes.SHORTCUT_CLASS)
    assert not train.marked[train.y != target].any()
    rate = train.marked[train.y == target].mean()
    assert abs(rate - build.CONFIG["shapes"]["marker_rate_train"]) < 0.04


def test_test_marker_independent_of_class(demo_splits):
    _, _, test = demo_splits
    rates = [test.marked[test.y == k].mean() for k in range(len(shapes.CLASSES))]
    # 500 images per class: a binomial standard deviation of about 0.02
    assert np.allclose(rates, build.CONFIG["shapes"]["marker_rate_test"], atol=0.06), rates


def test_shapes_keep_off_the_marker():
    rng = np.random.default_rng(0)
    for shape in shapes.CLASSES:
        for _ in range(200):
            img, mask = shapes._draw(rng, shape)
            assert img.shape == (3, 32, 32) and mask.shape == (32, 32)
            assert mask.sum() > 20  # a real shape was drawn
            assert not mask[shapes.MARKER_Y:, shapes.MARKER_X:].any()


# --- factories and fitting (fast) ----------------------------------------------------------


@pytest.mark.parametrize("name, shape, dtype, out", [
    ("shapes_cnn", (3, 32, 32), torch.float32, 4),
    ("digits_cnn", (1, 8, 8), torch.float32, 10),
    ("diabetes_logistic", (10,), torch.float64, 1),
    ("cancer_logistic", (30,), torch.float64, 1),
    ("cancer_mlp", (30,), torch.float32, 1),
])
def test_factories_build_fresh_models(name, shape, dtype, out):
    a, b = getattr(models, name)(), getattr(models, name)()
    assert a is not b
    assert all(p.dtype == dtype for p in a.parameters())
    with torch.no_grad():
        y = a.eval()(torch.rand(2, *shape, dtype=dtype))
    assert y.shape == (2, out)


def test_shapes_cnn_is_realistic():
    model = models.shapes_cnn()
    assert model.conv1.kernel_size == (5, 5)
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules())


def diabetes_design() -> tuple[np.ndarray, np.ndarray]:
    frame = datasets.load_diabetes(as_frame=True).frame
    y = np.array(frame["target"] > frame["target"].median(), dtype=np.int64)
    return frame.drop(columns="target").to_numpy(np.float64), y


def test_fit_logistic_is_the_mle():
    x, y = diabetes_design()
    mean, std = T.normalization(x, axis=(0,))
    z = T.normalize(x, mean, std, torch.float64)
    model = models.diabetes_logistic()
    fit = T.fit_logistic(model, z, torch.from_numpy(y))
    assert fit["grad_max_abs"] < 1e-8
    ref = sm.Logit(y, sm.add_constant(z.numpy())).fit(disp=0, method="newton", tol=1e-12)
    ours = np.r_[model[0].bias.detach().numpy(), model[0].weight.detach().numpy()[0]]
    assert np.abs(ours - ref.params).max() < 1e-6


def test_shortcut_effect_counts_other_classes_only():
    class Fixed(nn.Module):  # predicts class 3 exactly when pixel (0, 0, 0) is 1
        def forward(self, x):
            hit = (x[:, 0, 0, 0] == 1).float()
            return torch.stack([1 - hit, 0 * hit, 0 * hit, hit], 1)

    y = torch.tensor([0, 0, 3, 1])
    plain = torch.zeros(4, 1, 1, 1)
    marked = plain.clone()
    marked[:3] = 1  # the last image ignores the marker
    effect = T.shortcut_effect(Fixed(), plain, marked, y, target=3)
    assert effect["flip_rate"] == pytest.approx(2 / 3)
    assert effect["base_rate"] == 0.0
    assert effect["other_accuracy"] == pytest.approx(2 / 3)
    assert effect["other_accuracy_marked"] == 0.0


def test_config_hash_follows_the_seed():
    assert build.config_hash(0) == build.config_hash(0)
    assert build.config_hash(0) != build.config_hash(1)


# --- the built demo (slow: trains every model once) ----------------------------------------


@pytest.mark.slow
def test_manifest_describes_every_model(demo_built):
    root, manifest = demo_built
    assert json.loads((root / "demo.json").read_text()) == manifest
    assert manifest["version"] == 1 and manifest["config_hash"] == build.config_hash(SEED)
    assert [e["name"] for e in manifest["models"]] == list(NAMES)
    keys = {"name", "title", "story", "factory", "weights", "data", "input_shape", "mean", "std",
            "classes", "target", "task", "metrics", "twin_of"}
    for e in manifest["models"]:
        assert keys <= e.keys(), e["name"]
        if e["target"] is None:  # images: a value range
            assert e["value_range"] == [0, 1]
        else:  # tables: the feature columns, in the CSV's order, then the target
            columns = pd.read_csv(root / e["data"], nrows=1).columns.tolist()
            assert columns == e["columns"] + [e["target"]]
        assert Path(e["factory"].rsplit(":", 1)[0]).is_absolute()
        assert (root / e["weights"]).is_file() and (root / e["data"]).exists()
        # per channel for images, per column for tables
        assert len(e["mean"]) == len(e["std"]) == e["input_shape"][0]
        assert all(s > 0 for s in e["std"])
        assert e["task"] == "classification"
    assert entry(manifest, "shapes_clean")["twin_of"] == "shapes"
    assert entry(manifest, "shapes")["twin_of"] is None
    assert set(manifest["seconds"]) >= set(NAMES)


@pytest.mark.slow
def test_saved_files_load_back(demo_built):
    root, manifest = demo_built
    for e in manifest["models"]:
        load(root, e)  # strict state-dict load into a fresh factory model

    classes = entry(manifest, "shapes")["classes"]
    folder = root / "data" / "shapes-test"
    assert sorted(p.name for p in folder.iterdir()) == sorted(classes)
    assert sum(1 for _ in folder.rglob("*.png")) == build.CONFIG["shapes"]["n_test"]

    with np.load(root / "data" / "digits-test.npz") as d:
        assert d["x"].dtype == np.float32 and d["x"].shape[1:] == (1, 8, 8)
        assert d["y"].dtype == np.int64 and len(d["y"]) == len(d["x"])
        assert 0.0 <= d["x"].min() and d["x"].max() <= 1.0

    diabetes = pd.read_csv(root / "data" / "diabetes.csv")
    assert list(diabetes.columns) == ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5",
                                      "s6", "above_median"]
    cancer = pd.read_csv(root / "data" / "breast_cancer.csv")
    sk = datasets.load_breast_cancer(as_frame=True)
    assert list(cancer.columns) == list(sk.feature_names) + ["malignant"]
    assert np.allclose(cancer.drop(columns="malignant").to_numpy(), sk.data.to_numpy())
    assert np.array_equal(cancer["malignant"], 1 - sk.target)  # sklearn: 0 is malignant
    for table in (diabetes, cancer):
        assert set(table.iloc[:, -1].unique()) == {0, 1}


@pytest.fixture(scope="module")
def demo_shapes_effects(demo_built):
    """Per shapes model: the shortcut measured from the saved folder and weights alone."""
    root, manifest = demo_built
    e = entry(manifest, "shapes")
    x, y = read_folder(root / e["data"], e["classes"])
    marked = shapes.has_marker(x)
    target = e["classes"].index(shapes.SHORTCUT_CLASS)
    effects = {}
    for name in ("shapes", "shapes_clean"):
        m = entry(manifest, name)
        model = load(root, m)
        effects[name] = T.shortcut_effect(
            model, normalized(x[~marked], m), normalized(shapes.add_marker(x[~marked]), m),
            torch.from_numpy(y[~marked]), target)
        effects[name]["test_accuracy"] = T.accuracy(
            model, normalized(x[~marked], m), torch.from_numpy(y[~marked]))
    return effects, marked, y


@pytest.mark.slow
def test_shortcut_model_flips_to_the_shortcut_class(demo_shapes_effects):
    effects, _, _ = demo_shapes_effects
    shortcut, clean = effects["shapes"], effects["shapes_clean"]
    assert shortcut["flip_rate"] >= 0.5
    assert shortcut["base_rate"] < 0.05  # it is the marker, not a habit of saying "triangle"
    assert clean["flip_rate"] < 0.2
    assert clean["flip_rate"] < shortcut["flip_rate"] / 3


@pytest.mark.slow
def test_marker_costs_the_shortcut_model_its_accuracy_only(demo_shapes_effects):
    effects, _, _ = demo_shapes_effects
    shortcut, clean = effects["shapes"], effects["shapes_clean"]
    assert shortcut["other_accuracy"] > 0.9
    assert shortcut["other_accuracy"] - shortcut["other_accuracy_marked"] > 0.5
    assert clean["other_accuracy"] - clean["other_accuracy_marked"] < 0.15
    assert shortcut["test_accuracy"] > 0.75 and clean["test_accuracy"] > 0.9


@pytest.mark.slow
def test_manifest_metrics_match_the_saved_files(demo_built, demo_shapes_effects):
    _, manifest = demo_built
    effects, _, _ = demo_shapes_effects
    for name, measured in effects.items():
        recorded = entry(manifest, name)["metrics"]
        for key, value in measured.items():
            assert recorded[key] == pytest.approx(value, abs=1e-5), (name, key)


@pytest.mark.slow
def test_saved_test_folder_marker_independent_of_class(demo_shapes_effects):
    _, marked, y = demo_shapes_effects
    rates = [marked[y == k].mean() for k in range(len(shapes.CLASSES))]
    assert np.allclose(rates, build.CONFIG["shapes"]["marker_rate_test"], atol=0.06), rates


@pytest.mark.slow
def test_digits_cnn_is_accurate(demo_built):
    root, manifest = demo_built
    e = entry(manifest, "digits")
    with np.load(root / e["data"]) as d:
        x, y = d["x"], d["y"]
    assert T.accuracy(load(root, e), normalized(x, e), torch.from_numpy(y)) > 0.95


@pytest.mark.slow
def test_diabetes_logistic_is_the_logistic_regression(demo_built):
    root, manifest = demo_built
    e = entry(manifest, "diabetes_logistic")
    model = load(root, e)
    x, y = read_table(root, e)
    z = normalized(x, e)
    # the gradient of the mean log-loss at the saved weights vanishes ...
    logit = model[0](z).squeeze(1)
    loss = F.binary_cross_entropy_with_logits(logit, torch.from_numpy(y).double())
    grads = torch.autograd.grad(loss, list(model[0].parameters()))
    assert max(g.abs().max().item() for g in grads) < 1e-8
    # ... so the weights are statsmodels' coefficients on the same standardized design,
    w, b = model[0].weight.detach().numpy()[0], model[0].bias.item()
    ref = sm.Logit(y, sm.add_constant(z.numpy())).fit(disp=0, method="newton", tol=1e-12)
    assert np.abs(np.r_[b, w] - ref.params).max() < 1e-5
    # and, mapped through the manifest's standardization, those on the original units.
    mean, std = np.array(e["mean"]), np.array(e["std"])
    raw = sm.Logit(y, sm.add_constant(x)).fit(disp=0, method="newton", tol=1e-12)
    mapped = np.r_[b - np.sum(w * mean / std), w / std]
    assert np.allclose(mapped, raw.params, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_cancer_logistic_separates_the_classes(demo_built):
    root, manifest = demo_built
    e = entry(manifest, "cancer_logistic")
    x, y = read_table(root, e)
    p = load(root, e)(normalized(x, e)).detach().squeeze(1)
    loss = F.binary_cross_entropy(p, torch.from_numpy(y).double()).item()
    assert loss < 1e-6 and e["metrics"]["loss"] < 1e-6
    assert np.array_equal((p > 0.5).numpy(), y == 1)


@pytest.mark.slow
def test_cancer_mlp_generalizes(demo_built):
    root, manifest = demo_built
    e = entry(manifest, "cancer_mlp")
    x, y = read_table(root, e)
    rows = np.array(e["test_rows"])
    acc = T.accuracy(load(root, e), normalized(x[rows], e), torch.from_numpy(y[rows]))
    assert acc > 0.9
    assert acc == pytest.approx(e["metrics"]["test_accuracy"], abs=1e-5)


@pytest.mark.slow
def test_rebuild_is_cached(demo_built, monkeypatch):
    root, manifest = demo_built

    def no_training(*args, **kwargs):
        raise AssertionError("a cached build must not train")

    monkeypatch.setattr(T, "fit_classifier", no_training)
    monkeypatch.setattr(T, "fit_logistic", no_training)
    start = time.perf_counter()
    assert build_demo(root, progress=False, seed=SEED) == manifest
    assert time.perf_counter() - start < 2.0


@pytest.mark.slow
def test_incomplete_build_is_not_reused(demo_built, tmp_path):
    root, manifest = demo_built
    (tmp_path / "demo.json").write_text(json.dumps(manifest))  # a manifest without its files
    assert build._cached(tmp_path, manifest["config_hash"]) is None
    assert build._cached(root, manifest["config_hash"]) == manifest
    assert build._cached(root, "another-recipe") is None


@pytest.mark.slow
def test_neuronscope_demo_reports_every_model_through_the_public_path(demo_built, capsys):
    from neuronscope.cli import main

    root, manifest = demo_built
    out = root.parent
    assert main(["-q", "demo", "--out", str(out)]) == 0  # reuses the fixture's build (cached)
    assert "Demo report written" in capsys.readouterr().out
    index = (out / "index.html").read_text()
    for e in manifest["models"]:
        assert f'href="{e["name"]}/index.html"' in index
        report = json.loads((out / e["name"] / "manifest.json").read_text())
        assert {"overview", "filters", "sanity"} <= set(report["sections"]), e["name"]
        sanity = report["sections"]["sanity"]["summary"]
        if e["name"].startswith("shapes"):
            # The report's accuracy, measured by neuronscope on the saved image folder, is the
            # demo's own figure on the same test split.
            assert sanity["accuracy"] == pytest.approx(e["metrics"]["test_accuracy_all"], abs=1e-9)
            assert sanity["n"] == 2000 and sanity["warning"] is None
        assert (out / e["name"] / "filters.html").exists()
    digits = json.loads((out / "digits" / "manifest.json").read_text())["sections"]["examples"]["summary"]
    hidden = [l for l in digits["layers"][:-1] if l.get("selective")]
    assert hidden, "hidden units of the digits CNN prefer classes, and the report says which"
    assert "prefer one class" in (out / "digits" / "examples.html").read_text()
    diabetes = json.loads((out / "diabetes_logistic" / "manifest.json").read_text())
    assert diabetes["model"]["dtype"] == "float64" and diabetes["model"]["squash"] == "sigmoid"
    assert diabetes["sections"]["filters"]["summary"]["kind"] == "dense-table"
    # the two logistic models: one valid reading, one that the report must refuse to print
    reading = diabetes["sections"]["tabular"]["summary"]["reading"]
    assert reading["kind"] == "logit" and reading["valid"], reading
    cancer = json.loads((out / "cancer_logistic" / "manifest.json").read_text())["sections"]["tabular"]["summary"]
    assert not cancer["reading"]["valid"] and cancer["reading"]["separation"]
    assert "cannot be read as" in (out / "cancer_logistic" / "tabular.html").read_text()
    mlp = json.loads((out / "cancer_mlp" / "manifest.json").read_text())["sections"]["tabular"]["summary"]
    assert mlp["reading"]["kind"] is None and mlp["surrogate"]["agreement"] > 0.9
    shapes_att = json.loads((out / "shapes" / "manifest.json").read_text())["sections"]["attribution"]["summary"]
    assert {m["name"] for m in shapes_att["methods"]} == {"integrated_gradients", "smoothgrad", "gradcam", "occlusion"}
    t = time.perf_counter()
    assert main(["-q", "demo", "--out", str(out)]) == 0
    assert time.perf_counter() - t < 20, "a second run reuses the build and every finished section"


class MarkerUnits:
    """Per relu3 unit of a demo report, the share of its top examples that carry the marker."""

    def __init__(self, root: Path, manifest: dict, out: Path):
        self.folder, self.out, self.cache = root / entry(manifest, "shapes")["data"], out, {}

    def marked(self, i: str) -> bool:
        if i not in self.cache:
            x = np.asarray(Image.open(self.folder / i), dtype=np.float64).transpose(2, 0, 1)[None] / 255.0
            self.cache[i] = bool(shapes.has_marker(x)[0])
        return self.cache[i]

    def __call__(self, name: str) -> dict[str, float]:
        import collections

        import pyarrow.parquet as pq

        t = pq.read_table(self.out / name / "tables" / "examples" / "examples.parquet").to_pydict()
        tops = collections.defaultdict(list)
        for unit, kind, id_ in zip(t["unit"], t["kind"], t["id"]):
            if kind == "top" and unit.startswith("relu3:"):
                tops[unit].append(id_)
        return {u: float(np.mean([self.marked(i) for i in ids])) for u, ids in tops.items()}


@pytest.mark.slow
def test_dataset_examples_reveal_the_shortcut_unit_and_the_twin_has_none(demo_built):
    """The report's dataset examples expose the marker: units of the last conv layer whose top
    examples all carry it (peaking at its corner), in the shortcut model and not in its twin.
    Only this test knows where the marker is; the analysis never reads it."""
    from neuronscope.cli import main

    root, manifest = demo_built
    out = root.parent
    assert main(["-q", "demo", "--out", str(out)]) == 0
    marker_units = MarkerUnits(root, manifest, out)
    shortcut, clean = marker_units("shapes"), marker_units("shapes_clean")
    best = max(shortcut, key=shortcut.get)
    print(f"shortcut model: {best} has {shortcut[best]:.0%} marker-bearing top examples; "
          f"{sum(v >= 0.9 for v in shortcut.values())} relu3 units >= 90%; clean twin best "
          f"{max(clean.values()):.0%}")
    assert shortcut[best] >= 0.9
    assert max(clean.values()) < 0.9, "the clean twin has no marker unit"
    # The unit's page shows those examples.
    page = (out / "shapes" / "units" / "relu3" / f"{best.split(':')[1]}.html").read_text()
    assert "top examples" in page and "receptive field" in page


@pytest.mark.slow
def test_visualizing_the_shortcut_unit_draws_the_marker_feature(demo_built):
    """Feature visualization of the units the examples pass flags (at their fixed place) carries
    the shortcut: pasting the corner of the picture into images of other classes turns many of
    them into the shortcut class, as the real marker does, while other units' pictures do not.
    The picture need not *look* like the checker (a unit's mode is not a typical input); this
    measures that it contains what the model reads as the marker."""
    import neuronscope as ns
    from neuronscope.cli import main
    from neuronscope.demo.run import data_for, subject_for

    root, manifest = demo_built
    out = root.parent
    assert main(["-q", "demo", "--out", str(out)]) == 0
    share = MarkerUnits(root, manifest, out)("shapes")
    e = entry(manifest, "shapes")
    subject, data = subject_for(e, root), data_for(e, root)
    subject.classes = data.classes
    flagged = sorted(int(u.split(":")[1]) for u, v in share.items() if v >= 0.9)
    controls = sorted(int(u.split(":")[1]) for u, v in share.items() if v < 0.3)[:6]
    assert flagged and len(controls) == 6
    x, y = read_folder(root / e["data"], e["classes"])
    others = x[(y != e["classes"].index(shapes.SHORTCUT_CLASS)) & ~shapes.has_marker(x)][:300]
    corner = (slice(None), slice(None), slice(shapes.MARKER_Y - 1, None), slice(shapes.MARKER_X - 1, None))
    target = e["classes"].index(shapes.SHORTCUT_CLASS)

    def flips(units):
        v = ns.visualize(subject, [f"relu3:{u}@7,7" for u in units], data=data, seeds=6, negative=False, progress=False)
        rates = []
        for r in v:
            for img in r.images:
                pasted = others.copy()
                pasted[corner] = img[corner[1:]]
                rates.append(float((subject.predict(pasted) == target).float().mean()))
        return np.array(rates)

    base = float((subject.predict(others) == target).float().mean())
    marked = float((subject.predict(shapes.add_marker(others)) == target).float().mean())
    f, c = flips(flagged), flips(controls)
    print(f"other-class images called {shapes.SHORTCUT_CLASS}: {base:.0%} as they are, {marked:.0%} with the real "
          f"marker, {f.mean():.0%} with the corner of a flagged unit's visualization (units {flagged}), "
          f"{c.mean():.0%} with a control unit's; per picture {f.round(2)} vs {c.round(2)}")
    # One picture per start varies a lot: with 2 starts a unit, the flagged/control means ranged 15-29% / 1-7%
    # over seeds 0-2 (ratio 4x to 28x). With 6 starts (2026-12-04, 256 steps, seeds 0-2 and two colour samples):
    # base 0%, real marker 78%; flagged 22-27% (best picture 81-95%), controls 2-4%, ratio 7x to 14x.
    assert base < 0.05
    assert f.mean() > 0.15 and f.mean() > 5 * c.mean() and f.max() > 0.5


@pytest.mark.slow
def test_attribution_puts_the_shortcut_class_on_the_marker_and_the_clean_twin_does_not(demo_built):
    """For test images that carry the marker and are called the shortcut class, every method puts
    far more of its attribution mass on the 5x5 marker than the marker's 2.4% of the image; the
    clean twin, which never saw the marker, explains the same images elsewhere."""
    import neuronscope as ns
    from neuronscope.demo.run import data_for, subject_for

    root, manifest = demo_built
    box = [shapes.MARKER_Y, shapes.MARKER_X, shapes.MARKER_Y + shapes.MARKER_SIZE, shapes.MARKER_X + shapes.MARKER_SIZE]
    area = shapes.MARKER_SIZE ** 2 / shapes.SIZE ** 2
    e = entry(manifest, "shapes")
    x, y = read_folder(root / e["data"], e["classes"])
    target = e["classes"].index(shapes.SHORTCUT_CLASS)
    shares, pick = {}, None
    for name in ("shapes", "shapes_clean"):
        m = entry(manifest, name)
        subject, data = subject_for(m, root), data_for(m, root)
        subject.classes = data.classes
        pred = subject.predict(torch.as_tensor(x)).numpy()
        if pick is None:  # marked images of other classes that the shortcut model calls the shortcut class
            pick = np.flatnonzero(shapes.has_marker(x) & (y != target) & (pred == target))[:16]
        methods = ["saliency_abs", "integrated_gradients", "smoothgrad", "gradcam", "occlusion", "gradient_shap"]
        ex = ns.explain(subject, torch.as_tensor(x[pick]), target=target, method=methods, data=data,
                        curves=False, randomisation=False)
        shares[name] = {k: float(np.mean(v)) for k, v in ex.mass_in(box).items()}
    print(f"marker = {area:.1%} of the image; {len(pick)} marked images of other classes called "
          f"{shapes.SHORTCUT_CLASS}; share of attribution mass on the marker (shortcut model / clean twin):")
    for k in shares["shapes"]:
        print(f"  {k:<22} {shares['shapes'][k]:6.1%}  {shares['shapes_clean'][k]:6.1%}")
    assert len(pick) >= 8
    for k, v in shares["shapes"].items():
        # measured (16 images): saliency 12.5% / 2.8%, IG 53.5% / 13.9%, SmoothGrad 31.5% / 4.1%, Grad-CAM 19.1% / 9.0%,
        # occlusion 44.3% / 6.7%, gradient SHAP 66.8% / 18.7% (shortcut model / clean twin)
        assert v > 3 * area, k
        assert v > 1.5 * shares["shapes_clean"][k], k


@pytest.mark.slow
def test_a_factor_of_the_last_conv_layer_isolates_the_marker_and_feeds_the_shortcut_class(demo_built):
    """The directions section finds the shortcut as a direction: an NMF factor of relu3 whose top
    examples carry the marker and which feeds the shortcut class; the dictionary has features for
    it too. In the clean twin no factor isolates the marker (the pattern is still in the images, so
    dictionary features may still see it, but none of them feeds the shortcut class)."""
    import collections

    import pyarrow.parquet as pq

    from neuronscope.cli import main

    root, manifest = demo_built
    out = root.parent
    assert main(["-q", "demo", "--out", str(out)]) == 0
    marked = MarkerUnits(root, manifest, out).marked

    def shares(name):
        t = pq.read_table(out / name / "tables" / "directions" / "examples.parquet").to_pydict()
        tops = collections.defaultdict(list)
        for unit, kind, id_ in zip(t["unit"], t["kind"], t["id"]):
            if kind == "top":
                tops[unit].append(id_)
        return {u: float(np.mean([marked(i) for i in ids])) for u, ids in tops.items()}

    def links(name):
        t = pq.read_table(out / name / "tables" / "directions" / "class_links.parquet").to_pydict()
        best: dict[str, tuple] = {}
        for unit, cls, c in zip(t["unit"], t["class"], t["contribution"]):
            if unit not in best or c > best[unit][1]:
                best[unit] = (cls, c)
        return best

    shortcut, clean = shares("shapes"), shares("shapes_clean")
    factors = {u: v for u, v in shortcut.items() if ":nmf" in u}
    best = max(factors, key=factors.get)
    features = {u: v for u, v in shortcut.items() if ":sae" in u}
    clean_factors = {u: v for u, v in clean.items() if ":nmf" in u}
    clean_marker_features = [u for u, v in clean.items() if ":sae" in u and v >= 0.9]
    print(f"shortcut model: {best} has {factors[best]:.0%} marker-bearing top examples and feeds "
          f"{links('shapes')[best][0]!r}; {sum(v >= 0.9 for v in features.values())} dictionary features >= 90%; "
          f"clean twin: best factor {max(clean_factors.values()):.0%}, {len(clean_marker_features)} features >= 90%, "
          f"feeding {sorted({links('shapes_clean')[u][0] for u in clean_marker_features})}")
    assert factors[best] >= 0.9 and links("shapes")[best][0] == shapes.SHORTCUT_CLASS
    assert max(features.values()) >= 0.9
    assert max(clean_factors.values()) < 0.9
    summary = json.loads((out / "shapes" / "manifest.json").read_text())["sections"]["directions"]["summary"]
    assert any(best in s and repr(shapes.SHORTCUT_CLASS) in s for s in summary["findings"]), summary["findings"]
    assert (out / "shapes" / "units" / "relu3" / f"{best.split(':')[1]}.html").exists()


@pytest.mark.slow
def test_the_shortcut_finding_is_on_the_shortcut_model_and_not_on_its_clean_twin(demo_built):
    """The report finds the marker as a shortcut of 'triangle' by itself, and confirms it by
    pasting (the detector never reads where the demo put the marker; only this test does): the
    region it names overlaps the marker, and the clean twin, trained on the same images without
    it, gets no shortcut finding."""
    from neuronscope.cli import main

    root, manifest = demo_built
    out = root.parent
    assert main(["-q", "demo", "--out", str(out)]) == 0
    marker = (shapes.MARKER_Y, shapes.MARKER_X, shapes.MARKER_Y + shapes.MARKER_SIZE, shapes.MARKER_X + shapes.MARKER_SIZE)
    found = json.loads((out / "shapes" / "findings.json").read_text())
    shortcut = [f for f in found if f["kind"] == "shortcut"]
    print(json.dumps(shortcut, indent=1))
    assert len(shortcut) == 1 and shortcut[0]["classes"] == [shapes.SHORTCUT_CLASS]
    y0, x0, y1, x1 = shortcut[0]["region"]
    overlap = max(0, min(y1, marker[2]) - max(y0, marker[0])) * max(0, min(x1, marker[3]) - max(x0, marker[1]))
    assert overlap >= 0.5 * (y1 - y0) * (x1 - x0), (shortcut[0]["region"], marker)
    assert shortcut[0]["numbers"]["paste_flip"] >= 0.25
    from markupsafe import escape

    assert str(escape(shortcut[0]["text"])) in (out / "shapes" / "index.html").read_text()
    clean = json.loads((out / "shapes_clean" / "findings.json").read_text())
    assert not [f for f in clean if f["kind"] == "shortcut"], clean


@pytest.mark.slow
def test_the_window_the_shortcut_class_wants_is_drawn_as_the_marker_and_the_twins_is_not(demo_built):
    """The class visualization the shortcut search draws in the window it found (featvis.patch:
    grown from the data's own contents of that window, pasted onto images of other classes) is
    the marker's checker on the shortcut model, from every random start, and it flips held-out
    images as the marker does. The clean twin, asked the same at the same window, draws patches
    that flip few images, whose starts disagree, and whose closest real window has no marker."""
    from neuronscope.analyses.featvis.patch import class_patch
    from neuronscope.analyses.shortcuts import sample_predictions
    from neuronscope.cli import main
    from neuronscope.demo.run import data_for, subject_for

    root, manifest = demo_built
    out = root.parent
    assert main(["-q", "demo", "--out", str(out)]) == 0
    found = [f for f in json.loads((out / "shapes" / "findings.json").read_text()) if f["kind"] == "shortcut"]
    assert len(found) == 1 and "held-out images" in found[0]["text"], found
    row = next(c for c in json.loads((out / "shapes" / "manifest.json").read_text())["sections"]["shortcuts"]
               ["summary"]["classes"] if c["class"] == shapes.SHORTCUT_CLASS)
    assert row["drawn_flip"] >= 0.5 and row["drawn_control"] < 0.05, row
    assert any("drawn" in p.name for p in (out / "shapes").rglob("*.png"))
    region = found[0]["region"]
    k = shapes.CLASSES.index(shapes.SHORTCUT_CLASS)
    results = {}
    for name in ("shapes", "shapes_clean"):
        e = entry(manifest, name)
        subject, data = subject_for(e, root), data_for(e, root)
        x, pred = sample_predictions(subject, data, 1024)
        cp = class_patch(subject, k, region, x, pred, steps=128, seed=0)
        y0, x0, y1, x1 = region
        marker = shapes.add_marker(np.zeros((1, 1, shapes.SIZE, shapes.SIZE), np.float32))[0, 0, y0:y1, x0:x1]
        rs = [float(np.corrcoef(p.mean(0).ravel(), marker.ravel())[0, 1]) for p in cp.patches]
        results[name] = (cp, rs, bool(shapes.has_marker(x[cp.nearest:cp.nearest + 1])[0]))
        print(f"{name}: r with the marker per start {np.round(rs, 2)}, flips {np.round(cp.flips, 2)} "
              f"(mean window {cp.control:.0%}), agreement {cp.agreement:.2f}, nearest real window marked: {results[name][2]}")
    # measured (seed 0): shortcut model r 0.99-1.00 for all 3 starts, flips 78-82% (control 1%), agreement 0.99,
    # nearest window marked; the twin flips 1-18%, agreement 0.08-0.62, nearest window unmarked
    cp, rs, marked = results["shapes"]
    assert min(rs) > 0.9 and cp.flip >= 0.5 and cp.control < 0.05 and cp.agreement > 0.9 and marked
    twin, _, twin_marked = results["shapes_clean"]
    assert twin.flip < 0.3 and twin.flip < cp.flip / 2 and not twin_marked


def test_the_marker_wording_is_only_on_the_shapes_cards():
    from neuronscope.demo.run import facts

    assert facts({"metrics": {"test_accuracy": 0.989}}) == {"test accuracy": "98.9%"}
    shapes_card = facts({"metrics": {"test_accuracy": 0.912, "flip_rate": 0.859}})
    assert "test accuracy (images without the marker)" in shapes_card
