"""The main job end to end: store, resumable sections, report site, activation statistics, sanity."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from neuronscope import Subject
from neuronscope.analyses.activations import UnitStats, activation_maps, layer_stats
from neuronscope.analyses.sanity import sanity
from neuronscope.data import open_data
from neuronscope.pipeline import ReportOptions, analyze, report
from neuronscope.store import Store


def small_cnn(dead_channel: int | None = None) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                      nn.Conv2d(6, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    if dead_channel is not None:
        with torch.no_grad():
            m[0].weight[dead_channel].zero_()
            m[0].bias[dead_channel] = -1.0  # never above zero after the ReLU
    return m


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("dark", "light"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(6):
            base = 40 if c == "dark" else 200
            arr = np.clip(base + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / "imgs" / c / f"{i}.png")
    (tmp_path / "imgs" / "dark" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return tmp_path / "imgs"


def test_unit_stats_merge_equals_one_pass():
    torch.manual_seed(0)
    acts = torch.relu(torch.randn(50, 5, 4, 4))
    whole = UnitStats(5)
    whole.add(acts)
    a, b = UnitStats(5), UnitStats(5)
    a.add(acts[:17])
    b.add(acts[17:])
    merged = UnitStats.from_state_dict(a.merge(b).state_dict())
    for k, v in whole.result().items():
        np.testing.assert_allclose(merged.result()[k], v, rtol=1e-12)
    np.testing.assert_allclose(whole.result()["mean"], acts.double().mean((0, 2, 3)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(whole.result()["sparsity"], (acts == 0).double().mean((0, 2, 3)).numpy())


def test_dead_units_are_found(image_folder):
    s = Subject(small_cnn(dead_channel=2), (3, 16, 16), classes=["dark", "light"])
    data = open_data(image_folder, input_shape=(3, 16, 16))
    res = layer_stats(s, data, ["1", "3"], progress=False)
    dead = res.dead("1")
    assert dead[2] and dead.sum() == 1
    assert res.summary()["findings"] == [f"1 of 6 units in 1 never fire on these {res.n_examples} examples (dead)."]
    assert res.n_examples == 12 and "dark/broken.png" in data.skipped


def test_sanity_confusion_and_near_chance_warning(image_folder):
    s = Subject(small_cnn(), (3, 16, 16), classes=["dark", "light"])
    data = open_data(image_folder, input_shape=(3, 16, 16))
    res = sanity(s, data, progress=False)
    assert res.confusion.sum() == 12 and res.confusion.shape == (2, 2)
    assert res.accuracy == pytest.approx(np.trace(res.confusion) / 12)
    # An untrained net on a balanced set sits at chance: the report must say so loudly.
    assert res.warning and "near chance" in res.warning and "--mean/--std" in res.warning


def test_a_limit_that_reads_one_class_says_so_instead_of_near_chance(image_folder):
    """The folder lists dark then light: a limit of 5 reads dark images only, where every model
    "is near chance" (the majority rate is 100%) and the inputs are not to blame."""
    s = Subject(small_cnn(), (3, 16, 16), classes=["dark", "light"])
    res = sanity(s, open_data(image_folder, input_shape=(3, 16, 16)), limit=5, progress=False)
    assert res.chance == 1.0 and res.warning and "near chance" not in res.warning
    assert "All 5 labelled examples read are of class 'dark'" in res.warning and "--limit" in res.warning


def test_sanity_on_a_model_that_works():
    torch.manual_seed(0)
    x = torch.randn(200, 3)
    y = (x[:, 0] > 0).long()
    m = nn.Linear(3, 2)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[-5.0, 0, 0], [5.0, 0, 0]]))
        m.bias.zero_()

    class Arrays:
        classes = ["neg", "pos"]
        skipped = {}

        def __len__(self):
            return 200

        def batches(self, n, limit=None, start=0):
            from neuronscope.data import Batch

            for i in range(0, 200, n):
                yield Batch([str(j) for j in range(i, min(i + n, 200))], x[i:i + n], y[i:i + n])

    res = sanity(Subject(m, (3,), classes=["neg", "pos"]), Arrays(), progress=False)
    assert res.accuracy == 1.0 and res.warning is None and res.errors["id"] == []


def test_regression_sanity_reports_r2(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 2)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0], dtype=np.float32)).astype(np.float32)
    np.savez(tmp_path / "reg.npz", x=x, y=y + 0.5)
    m = nn.Linear(2, 1)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, -2.0]]))
        m.bias.zero_()
    s = Subject(m, (2,))
    res = sanity(s, open_data(tmp_path / "reg.npz", input_shape=(2,)), progress=False)
    assert res.task == "regression" and res.mae == pytest.approx(0.5, abs=1e-5)
    assert res.r2 == pytest.approx(1 - 0.25 / y.var(), rel=1e-4)


def test_activation_maps_picture_every_layer(image_folder):
    s = Subject(small_cnn(), (3, 16, 16))
    x = open_data(image_folder, input_shape=(3, 16, 16)).get(["light/0.png"]).x[0]
    res = activation_maps(s, x, example_id="light/0.png")
    assert res.layers == ["1", "4", "7"]
    assert res.shapes["1"] == (6, 16, 16) and res.shapes["7"] == (2,)
    assert res.signed["7"] or not res.signed["1"]
    top = res.top_channels["1"]
    acts = s.activations(x[None], ["1"])["1"][0].flatten(1).amax(1)
    assert top[0][0] == int(acts.argmax()) and top[0][1] == pytest.approx(float(acts.max()))


def test_report_writes_a_site_and_resumes(image_folder, tmp_path, monkeypatch):
    s = Subject(small_cnn(), (3, 16, 16), classes=["dark", "light"])
    data = open_data(image_folder, input_shape=(3, 16, 16))
    out = tmp_path / "report"
    opts = ReportOptions(progress=False, featvis_units=0, attribution_inputs=4, attribution_units=1)
    index = report(s, data, out, opts)
    assert index == out / "index.html"
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["sections"]) == {"overview", "filters", "sanity", "layer_stats", "activations", "examples",
                                         "attribution", "directions", "shortcuts"}
    for page in ["index.html", "model.html", "filters.html", "sanity.html", "activations.html", "layers.html", "attribution.html",
                 "directions.html", "shortcuts.html", "methods.html"]:
        html = (out / page).read_text()
        for src in re.findall(r'(?:src|href)="([^"#:]+)"', html):
            assert (out / src).exists(), f"{page} links to missing {src}"
    assert "dark/broken.png" in (out / "model.html").read_text(), "skipped files are listed"
    assert "1 unreadable examples were skipped" in (out / "index.html").read_text()
    sanity = manifest["sections"]["sanity"]
    assert sanity["summary"]["thumbnails"] == len(Store(out).table("sanity", "errors")["id"]) > 0
    assert "error-00.png" in (out / "sanity.html").read_text(), "errors are shown as pictures"
    assert not list(out.rglob("*.tmp")), "atomic writes leave no temporary files"

    # A second run with nothing changed recomputes nothing.
    import neuronscope.pipeline as pipeline

    def boom(*a, **k):
        raise AssertionError("finished section recomputed")

    monkeypatch.setattr(pipeline, "analyze_filters", boom)
    monkeypatch.setattr(pipeline, "activation_maps", boom)
    monkeypatch.setattr(pipeline, "run_pass", boom)
    monkeypatch.setattr("neuronscope.analyses.attribution.section.attribution_section", boom)
    monkeypatch.setattr("neuronscope.analyses.directions.section.directions_section", boom)
    monkeypatch.setattr("neuronscope.analyses.shortcuts.find_shortcuts", boom)
    found = json.loads((out / "findings.json").read_text())
    assert found and all({"kind", "severity", "text", "numbers", "units", "classes", "columns", "region", "links"} <= set(f)
                         for f in found)
    assert all((out / f["links"][0].split("#")[0]).exists() for f in found if f["links"])
    analyze(s, data, out, opts)
    # the stored directions are units of the subject again (layer:nmf0 ... resolve)
    layer = manifest["sections"]["directions"]["summary"]["layer"]
    assert s.resolve(f"{layer}:nmf0").direction == "nmf0" and s.resolve(f"{layer}:sae0").direction == "sae0"

    # Changed weights invalidate the sections.
    with torch.no_grad():
        s.model[0].weight.add_(0.1)
    with pytest.raises(AssertionError, match="recomputed"):
        analyze(s, data, out, opts)


def test_store_round_trip(tmp_path):
    class R:
        def tables(self):
            return {"t": {"a": [1, 2], "b": ["x", "y"]}}

        def images(self):
            return {"pic": np.zeros((4, 4, 3), np.uint8)}

        def summary(self):
            return {"v": np.float64(1.5), "nan": float("nan")}

    st = Store(tmp_path / "s")
    st.save("sec", R(), key="k1")
    again = Store(tmp_path / "s")
    assert again.has("sec", "k1") and not again.has("sec", "k2")
    assert again.table("sec", "t") == {"a": [1, 2], "b": ["x", "y"]}
    assert again.summary("sec") == {"v": 1.5, "nan": None}
    assert Image.open(again.image_path("sec", "pic")).size == (4, 4)
    again.image_path("sec", "pic").unlink()
    assert not Store(tmp_path / "s").has("sec", "k1"), "a missing file means the section is unfinished"


def test_the_store_reads_chosen_columns_and_names_what_it_lacks(tmp_path):
    from neuronscope.errors import NeuronscopeError

    class R:
        def tables(self):
            return {"explanations": {"id": ["a", "b"], "score": [0.5, 0.25], "map": [[1.0, 2.0], [3.0, 4.0]]}}

        def images(self):
            return {"grid": np.zeros((4, 4, 3), np.uint8)}

        def summary(self):
            return {}

    st = Store(tmp_path / "s")
    st.save("attribution", R(), key="k")
    assert st.table("attribution", "explanations", columns=["id", "score"]) == {"id": ["a", "b"], "score": [0.5, 0.25]}
    assert st.table("attribution", "explanations", columns="map") == {"map": [[1.0, 2.0], [3.0, 4.0]]}
    with pytest.raises(NeuronscopeError, match="no column 'scores'.*Did you mean 'score'"):
        st.table("attribution", "explanations", columns=["id", "scores"])
    with pytest.raises(NeuronscopeError, match="no finished section 'atribution'.*Did you mean 'attribution'"):
        st.table("atribution", "explanations")
    with pytest.raises(NeuronscopeError, match="no table 'explanation'.*Did you mean 'explanations'"):
        st.table("attribution", "explanation")
    with pytest.raises(NeuronscopeError, match="no image 'grids'.*Did you mean 'grid'"):
        st.image_path("attribution", "grids")
    with pytest.raises(KeyError):  # what it raised before, for callers that catch it
        st.summary("featvis")


EVIL = "<script>alert(1)</script>"


def test_user_strings_are_shown_as_text_on_every_page(tmp_path):
    """Class names, file names and ids come from the user: a class called <script>...</script> and a
    file called <img src=x onerror=...>.png are text on every page, never markup."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    evil_file = "<img src=x onerror=alert(2)>.png"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(5):
            arr = np.clip((40 if c == "a" else 200) + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / c / (evil_file if i == 0 else f"{i}.png"))
    s = Subject(small_cnn(), (3, 16, 16), classes=[EVIL, "b"])
    data = open_data(root, input_shape=(3, 16, 16))  # folders a, b: labels 0, 1 (the model calls 0 EVIL)
    out = tmp_path / "r"
    report(s, data, out, ReportOptions(progress=False, featvis_units=1, featvis_steps=4, featvis_seeds=1,
                                       featvis_diverse=0, attribution_inputs=2, attribution_units=1,
                                       dictionary_steps=5))
    pages = list(out.rglob("*.html"))
    assert len(pages) > 10
    shown = 0
    for page in pages:
        html = page.read_text()
        assert EVIL not in html and "<img src=x" not in html, page
        shown += "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert shown >= 3, "the class name is shown, escaped"


def test_a_wide_layer_is_paged_and_every_card_is_in_one_script_chunk(wide_report):
    from conftest import WIDE_UNITS
    from neuronscope.website.unit_pages import PER_PAGE

    pages = sorted((wide_report / "layers").glob("1*.html"))
    assert [p.name for p in pages] == ["1-2.html", "1-3.html", "1.html"]
    cards = [len(re.findall(r'<a class="unit"', p.read_text())) for p in pages]
    assert sorted(cards) == [WIDE_UNITS - 2 * PER_PAGE, PER_PAGE, PER_PAGE]
    for p in pages:
        html = p.read_text()
        assert '"1-cards.js"' in html
        assert all(f'href="{q.name}"' in html for q in pages if q != p), "each page links every other"
    chunk = (wide_report / "layers" / "1-cards.js").read_text()
    body = json.loads(chunk[chunk.index("] = ") + 4:].rstrip().rstrip(";"))
    assert len(body) == WIDE_UNITS and all(c.startswith('<a class="unit"') for c in body)
    assert len(list((wide_report / "units" / "1").glob("*.html"))) == WIDE_UNITS
    # pages stay light: no page carries the whole layer
    assert max(p.stat().st_size for p in wide_report.rglob("*.html")) < 400_000


def test_sanity_errors_are_the_same_however_the_pass_was_cut():
    """Tied confidences go by id, so shards merged in any order list the same errors."""
    from neuronscope.analyses.sanity import SanityReducer
    from neuronscope.analyses.stream import Step
    from neuronscope.data import Batch

    s = Subject(small_cnn(), (3, 16, 16), classes=["dark", "light"])
    ids = [f"x{i}" for i in range(6)][::-1]
    logits = torch.tensor([[5.0, -5.0]] * 6)  # every one predicted "dark" with the same confidence

    def step(lo, hi):
        return Step(Batch(ids[lo:hi], torch.zeros(hi - lo, 3, 16, 16), torch.ones(hi - lo, dtype=torch.long)), {},
                    logits[lo:hi])

    whole = SanityReducer(s, n_errors=4)
    whole.add(step(0, 6))
    a, b = SanityReducer(s, n_errors=4), SanityReducer(s, n_errors=4)
    a.add(step(0, 3))
    b.add(step(3, 6))
    assert whole.result().errors["id"] == b.merge(a).result().errors["id"] == ["x0", "x1", "x2", "x3"]


def _run_with_global_rngs_at(seed: int, s, data, out, opts):
    """One report run after setting every global generator (and forgetting the batch-size
    measurements, so they are taken again): a result must depend on none of them."""
    import random

    from neuronscope.analyses.attribution import batching

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    batching.clear_cache()
    analyze(s, data, out, opts)


def test_two_runs_of_the_report_on_images_write_the_same_results(image_folder, tmp_path):
    from stores import assert_same_store

    s = Subject(small_cnn(), (3, 16, 16), classes=["dark", "light"])
    opts = ReportOptions(progress=False, featvis_units=1, featvis_steps=8, featvis_diverse=2, attribution_inputs=4,
                         attribution_units=1, dictionary_steps=20)
    for seed, name in ((1, "a"), (2, "b")):
        _run_with_global_rngs_at(seed, s, open_data(image_folder, input_shape=(3, 16, 16)), tmp_path / name, opts)
    assert_same_store(tmp_path / "a", tmp_path / "b", sections=None)


def test_two_runs_of_the_report_on_vectors_write_the_same_results(tmp_path):
    """The vector defaults include gradient SHAP, whose path points Captum draws from NumPy's
    global generator, and permutation importance."""
    from stores import assert_same_store

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5)).astype(np.float32)
    y = (x[:, 0] - x[:, 2] > 0).astype(np.int64)
    np.savez(tmp_path / "rows.npz", x=x, y=y)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    s = Subject(model, (5,), classes=["no", "yes"], columns=[f"c{i}" for i in range(5)])
    opts = ReportOptions(progress=False, featvis_units=1, featvis_steps=8, featvis_diverse=0, attribution_inputs=4,
                         attribution_units=1, dictionary_steps=20)
    for seed, name in ((1, "a"), (2, "b")):
        _run_with_global_rngs_at(seed, s, open_data(tmp_path / "rows.npz", input_shape=(5,)), tmp_path / name, opts)
    sections = json.loads((tmp_path / "a" / "manifest.json").read_text())["sections"]
    assert {"attribution", "tabular"} <= set(sections)
    assert_same_store(tmp_path / "a", tmp_path / "b", sections=None)


def test_every_module_of_a_sections_package_invalidates_its_stored_results():
    """A module added to a section's package without being listed in SECTION_CODE would leave old
    results in place after it changes (tap.py and sampling.py were, for a while)."""
    from pathlib import Path

    import neuronscope
    from neuronscope.pipeline import SECTION_CODE

    root = Path(neuronscope.__file__).parent
    not_the_section = {"analyses/featvis/accentuate.py": "API and CLI only",
                       "analyses/featvis/patch.py": "the shortcuts section's"}
    for section in ("featvis", "attribution", "tabular", "directions"):
        listed = set(SECTION_CODE[section])
        assert all((root / f).exists() for f in listed), section
        for f in sorted((root / "analyses" / section).glob("*.py")):
            rel = f.relative_to(root).as_posix()
            if f.name != "__init__.py" and rel not in not_the_section:
                assert rel in listed, f"{rel} is not in SECTION_CODE[{section!r}]"
    assert "analyses/featvis/patch.py" in SECTION_CODE["shortcuts"]
