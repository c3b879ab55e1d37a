"""The attribution page and the attribution block on unit pages, from small hand-made stores."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from neuronscope.analyses.examples import ExamplesReducer, LayerSpec
from neuronscope.analyses.reducers import calibrate_edges
from fake_result import FakeResult, columns
from neuronscope.store import Store
from neuronscope.website import render_site, svg

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["cat", "dog", "eel"]





def save_examples(store, layers=(("conv", 3, (4, 5)), ("head#1", 4, ()))):
    g = torch.Generator().manual_seed(0)
    n = 60
    specs = [LayerSpec(name, c, sp, True, "ReLU") for name, c, sp in layers]
    acts = {s.name: torch.relu(torch.randn(n, s.channels, *s.spatial, generator=g)) for s in specs}
    edges = {k: calibrate_edges((v.flatten(2).amax(2) if v.dim() > 2 else v).double().numpy()) for k, v in acts.items()}
    red = ExamplesReducer(specs, k=4, classes=CLASSES, edges=edges)
    red.add_batch([f"img/{i:03d}.png" for i in range(n)], acts, torch.arange(n) % 3)
    store.save("examples", red.result())


def rgb(seed, size=128, overlay=False):
    """A disc on a gradient; ``overlay``: faded, with a red blob on the disc and a blue one beside it."""
    y, x = np.mgrid[:size, :size] / size
    cy, cx = 0.3 + 0.4 * ((seed * 0.37) % 1), 0.3 + 0.4 * ((seed * 0.61) % 1)
    disc = ((y - cy) ** 2 + (x - cx) ** 2 < 0.04)[..., None]
    img = np.stack([0.3 + 0.4 * y, 0.5 + 0.3 * x, 0.6 - 0.2 * y], -1) * 255
    img = np.where(disc, [220, 160, 40], img)
    if overlay:
        img = 0.35 * img.mean(-1, keepdims=True) + 0.65 * 255
        for (py, px), colour in (((cy, cx), [178, 24, 43]), ((1 - cy, 1 - cx), [33, 102, 172])):
            w = np.exp(-((y - py) ** 2 + (x - px) ** 2) / 0.01)[..., None] * 0.75
            img = img * (1 - w) + np.array(colour) * w
    return np.rint(img).clip(0, 255).astype(np.uint8)


METHODS = [  # name, title, signed, layer, randomisation rho, flagged
    ("integrated_gradients", "Integrated gradients", True, None, 0.12, False),
    ("gradcam", "Grad-CAM", False, "conv", 0.83, True),
    ("occlusion", "Occlusion", True, None, None, None),
]


def method_summary(methods, completeness=0.012):
    out = []
    for name, title, signed, layer, rho, flagged in methods:
        m = {"name": name, "title": title, "signed": signed, "layer": layer, "seconds": 0.5,
             "deletion_gain": 0.2 if not flagged else -0.01, "insertion_gain": 0.15 if not flagged else -0.02,
             "batch": {"size": 64, "source": "measured"}}
        if name == "integrated_gradients":
            m["completeness_rel_max"] = completeness
        if rho is not None:
            m.update(randomisation=rho, randomisation_flagged=flagged, randomisation_mode="cascade")
        out.append(m)
    return out


def explanation_rows(n, methods, map_of, score_of, baseline_of, labels=None, predicted=None):
    rows = []
    for name, _, _, layer, _, _ in methods:
        for i in range(n):
            m = map_of(i, name)
            rows.append({"index": i, "id": f"img/{i:03d}.png", "method": name,
                         "target": f"class {predicted[i]}" if predicted else "output 0",
                         "target_index": 0, "predicted": predicted[i] if predicted else None,
                         "label": labels[i] if labels else None, "score": score_of(i), "baseline_score": baseline_of(i),
                         "completeness": 0.001 if name == "integrated_gradients" else None,
                         "completeness_rel": 0.01 if name == "integrated_gradients" else None,
                         "layer": layer, "map": [float(v) for v in np.ravel(m)], "map_shape": list(np.shape(m)),
                         "deletion_auc": 0.3, "insertion_auc": 0.7, "random_deletion_auc": 0.5,
                         "random_insertion_auc": 0.5})
    return rows


def shared_tables(methods):
    checks = [{"method": name, "mode": "cascade", "layers_randomised": 3, "top_layer": "fc", "first_step": rho,
               "final": rho, "final_signed": rho, "entropy_ratio": 1.0, "flagged": bool(flagged), "threshold": 0.5,
               "n_inputs": 2, "seconds": 0.1} for name, _, _, _, rho, flagged in methods if rho is not None]
    batches = [{"method": name, "size": 64, "rows": 8, "source": "measured", "reason": "fits in memory"}
               for name, *_ in methods]
    return {"randomisation": columns(checks), "batching": columns(batches)}


@pytest.fixture(scope="module")
def image_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("att-image")
    store = Store(root)
    store.set_info(title="fake image model")
    save_examples(store)
    n = 2
    labels, predicted = ["cat", "dog"], ["cat", "eel"]
    rows = explanation_rows(n, METHODS, lambda i, m: np.full((12, 12), 0.1 * (i + 1)), lambda i: 3.0 + i,
                            lambda i: 0.5, labels, predicted)
    drivers = []
    for k, cls in enumerate(CLASSES):
        for rank, (u, share) in enumerate([(1, 0.41), (2, 0.2), (0, 0.1)]):
            drivers.append({"layer": "conv", "class": cls, "class_index": k, "unit": u, "address": f"conv:{u}",
                            "rank": rank, "contribution": share * 2, "share": share})
    units = [{"address": "conv:1", "layer": "conv", "unit": 1, "rank": r, "id": f"img/{r:03d}.png",
              "method": "integrated_gradients", "score": 2.0 - r} for r in range(3)]
    units += [{"address": "head#1:2", "layer": "head#1", "unit": 2, "rank": 0, "id": "img/007.png",
               "method": "integrated_gradients", "score": 1.0}]
    images = {f"inputs/{i}": rgb(i) for i in range(n)}
    images.update({f"maps/{i}-{m[0]}": rgb(i, overlay=True) for i in range(n) for m in METHODS})
    images.update({f"units/conv/1/{r}": rgb(20 + r, overlay=True) for r in range(3)})
    images["units/head~1/2/0"] = rgb(30, overlay=True)
    tables = {"explanations": columns(rows), **shared_tables(METHODS), "drivers": columns(drivers),
              "units": columns(units)}
    summary = {"n": n, "baseline": "blur", "target_kind": "class", "image": True, "columns": None,
               "methods": method_summary(METHODS), "flagged": ["gradcam"],
               "findings": ["Grad-CAM: its maps barely change when the model's weights are randomised."],
               "warnings": [], "options": {"methods": [m[0] for m in METHODS], "baseline": "blur", "n_steps": 32,
                                           "samples": 8, "noise": 0.15, "window": None, "check_sample": 2},
               "seconds": 1.5, "unit_method": "integrated_gradients",
               "drivers": {"layer": "conv", "method": "grad_x_activation",
                           "sentences": {c: f"class {c!r} rests mostly on conv:1 (41%), conv:2 (20%) and conv:0 (10%)"
                                         for c in CLASSES}}}
    store.save("attribution", FakeResult(tables, summary, images))
    render_site(root)
    return root


COLS = [f"col{j}" for j in range(14)]


@pytest.fixture(scope="module")
def vector_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("att-vector")
    store = Store(root)
    store.set_info(title="fake table model")
    methods = [METHODS[0], ("feature_ablation", "Feature ablation", True, None, 0.2, False)]
    rng = np.random.default_rng(3)
    maps = {(i, m[0]): rng.normal(size=len(COLS)) for i in range(2) for m in methods}
    base = [0.25, -0.5]
    # Integrated gradients add up exactly; feature ablation falls short by 0.7.
    score = [base[i] + float(maps[i, "integrated_gradients"].sum()) for i in range(2)]
    maps[0, "feature_ablation"] = maps[0, "integrated_gradients"] * 0.5
    rows = explanation_rows(2, methods, lambda i, m: maps[i, m], lambda i: score[i], lambda i: base[i])
    summary = {"n": 2, "baseline": "mean", "target_kind": "output", "image": False, "columns": COLS,
               "methods": method_summary(methods), "flagged": [], "findings": [], "warnings": [],
               "options": {"n_steps": 50, "samples": 50, "noise": 0.15, "check_sample": 2}, "seconds": 0.4}
    store.save("attribution", FakeResult({"explanations": columns(rows), **shared_tables(methods)}, summary))
    render_site(root)
    return root, maps, score, base


def links(page: Path) -> list[Path]:
    out = []
    for ref in re.findall(r"""(?:href|src)=["']([^"'#]+)(?:#[^"']*)?["']""", page.read_text()):
        if "://" not in ref:  # the references' links point outside the report (never fetched)
            out.append((page.parent / ref).resolve())
    return out


def test_page_exists_and_every_link_resolves(image_site):
    page = image_site / "attribution.html"
    assert page.exists()
    refs = links(page)
    assert refs and all(p.exists() for p in refs), [str(p) for p in refs if not p.exists()]
    html = page.read_text()
    assert 'href="attribution.html" class="here"' in html
    assert html.count("<img") >= 2 + 2 * len(METHODS)  # inputs and one overlay per method
    # The drivers' sentences link their units, whose pages exist.
    assert "<a href='units/conv/1.html'><code>conv:1</code></a>" in html
    assert (image_site / "units/conv/1.html").exists()
    assert "Which units drive each class" in html and "Rows per pass chosen" in html


def test_flagged_method_shows_the_failure_badge(image_site):
    html = (image_site / "attribution.html").read_text()
    assert "FAILS sanity check (ρ=0.83)" in html
    assert "passes: maps change when weights are randomised (ρ=0.12)" in html
    assert "randomisation check not run" in html  # occlusion
    assert "complete within 1.2%" in html
    assert re.search(r'class="alert">Grad-CAM fails the randomisation', html)


def test_unit_pages_show_the_attribution_block(image_site):
    page = image_site / "units/conv/1.html"
    html = page.read_text()
    assert "What in its top examples makes it fire" in html
    assert html.count("units/conv/1/") == 3
    assert all(p.exists() for p in links(page))
    other = image_site / "units/head~1/2.html"  # a layer name with '#' (slugged to '~')
    assert "What in its top examples makes it fire" in other.read_text()
    assert all(p.exists() for p in links(other))
    assert "What in its top examples makes it fire" not in (image_site / "units/conv/0.html").read_text()


def test_unit_pages_render_without_an_attribution_section(tmp_path):
    store = Store(tmp_path)
    save_examples(store, layers=(("conv", 2, (3, 3)),))
    render_site(tmp_path)
    assert not (tmp_path / "attribution.html").exists()
    assert "Top 4 examples" in (tmp_path / "units/conv/1.html").read_text()


def waterfalls(html: str) -> list[dict]:
    out = []
    for m in re.finditer(r"<svg class='bars waterfall'[^>]*data-start='([^']+)' data-end='([^']+)'>(.*?)</svg>", html,
                         re.S):
        steps = [float(v) for v in re.findall(r"class='(?:pos|neg) step' data-v='([^']+)'", m.group(3))]
        gap = [float(v) for v in re.findall(r"class='gap'[^>]*data-v='([^']+)'", m.group(3))]
        out.append({"start": float(m.group(1)), "end": float(m.group(2)), "steps": steps, "gap": gap,
                    "labels": re.findall(r"text-anchor='end'[^>]*>([^<]*)</text>", m.group(3))})
    return out


def test_vector_page_draws_waterfalls_that_add_up(vector_site):
    root, maps, score, base = vector_site
    html = (root / "attribution.html").read_text()
    assert all(p.exists() for p in links(root / "attribution.html"))
    charts = waterfalls(html)
    assert len(charts) == 4  # 2 inputs x 2 methods, input by input in method order
    for i in range(2):
        ig, fa = charts[2 * i], charts[2 * i + 1]
        assert ig["start"] == pytest.approx(base[i]) and ig["end"] == pytest.approx(score[i])
        assert len(ig["steps"]) == 11 and ig["labels"][-2] == "others (4)"  # top 10 + the other 4 summed
        assert ig["start"] + sum(ig["steps"]) == pytest.approx(ig["end"], abs=1e-9)
        assert ig["gap"] == []  # integrated gradients add up: no completeness gap
        assert sum(fa["steps"]) == pytest.approx(float(maps[i, "feature_ablation"].sum()))
        assert fa["start"] + sum(fa["steps"]) + sum(fa["gap"]) == pytest.approx(fa["end"])
        assert len(fa["gap"]) == 1
    # Largest |value| first.
    top = np.argsort(-np.abs(maps[0, "integrated_gradients"]), kind="stable")[:10]
    assert charts[0]["labels"][1:11] == [COLS[j] for j in top]


def test_waterfall_helper():
    assert svg.waterfall([], [], 0, 1) == ""
    out = str(svg.waterfall(["a", "b<"], [1.0, -0.25], 2.0, 3.0, gap_label="completeness gap"))
    c = waterfalls(out)[0]
    assert c["steps"] == [1.0, -0.25] and c["gap"] == [pytest.approx(0.25)]
    assert "b&lt;" in out and "completeness gap" in out
    assert waterfalls(str(svg.waterfall(["a"], [float("nan")], None, None)))[0]["end"] == 0.0


def test_a_bare_section_renders(tmp_path):
    """Only the explanations table and a summary with the required keys: no pictures, checks,
    drivers, batching or unit attributions; nothing of them is shown."""
    store = Store(tmp_path)
    methods = [("saliency_abs", "Saliency |gradient|", False, None, None, None)]
    rows = explanation_rows(1, methods, lambda i, m: np.arange(5.0), lambda i: 1.0, lambda i: 0.0)
    store.save("attribution", FakeResult({"explanations": columns(rows)}, {
        "n": 1, "baseline": "zero", "target_kind": "output", "image": False, "columns": None,
        "methods": [{"name": "saliency_abs", "title": "Saliency |gradient|", "signed": False, "layer": None,
                     "seconds": 0.01}], "flagged": [], "findings": [], "warnings": [], "seconds": 0.01}))
    render_site(tmp_path)
    html = (tmp_path / "attribution.html").read_text()
    assert "randomisation check not run" in html and "svg class='bars'" in html  # magnitudes: plain bars
    assert "waterfall" not in html and "Which units drive" not in html and "Batching" not in html
    assert ">x4<" in html  # no column names: x0, x1, ...


def test_drivers_without_their_summary_still_read(tmp_path):
    store = Store(tmp_path)
    save_examples(store, layers=(("conv", 13, (2, 2)),))
    rows = explanation_rows(1, METHODS[:1], lambda i, m: np.ones((4, 4)), lambda i: 1.0, lambda i: 0.0)
    drivers = [{"layer": "conv", "class": "cat", "class_index": 0, "unit": u, "address": f"conv:{u}", "rank": r,
                "contribution": 1.0 / (r + 1), "share": 0.1} for r, u in enumerate([1, 12, 3, 4])]
    drivers.append({"layer": "conv", "class": "dog", "class_index": 1, "unit": 99, "address": "conv:99", "rank": 0,
                    "contribution": 1.0, "share": 1.0})  # a unit without a page: named, not linked
    store.save("attribution", FakeResult({"explanations": columns(rows), "drivers": columns(drivers)}, {
        "n": 1, "baseline": "zero", "target_kind": "class", "image": True, "methods": method_summary(METHODS[:1])}))
    render_site(tmp_path)
    page = tmp_path / "attribution.html"
    html = page.read_text()
    assert all(p.exists() for p in links(page))
    assert ("rests mostly on <a href='units/conv/1.html'><code>conv:1</code></a> (10%), "
            "<a href='units/conv/12.html'><code>conv:12</code></a> (10%)") in html
    assert '— then <a href="units/conv/4.html">conv:4</a>' in html and "None" not in html
    assert "conv:99 (100%)" in html and "units/conv/99.html" not in html
