"""The "Columns" page (store section "tabular"), from small hand-made stores."""

import math
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
from neuronscope.website import tabular_pages

pytestmark = pytest.mark.usefixtures("one_thread")

COLS = ["age", "income", "score", "tenure"]
NAN = float("nan")





def logistic_rows(coefs, *, valid=True, reason="", separated=False):
    rows = []
    for col, b in zip(["const", *COLS], coefs):
        se = NAN if separated else 0.1 + abs(b) * 0.05
        z = b / se
        p = math.erfc(abs(z) / math.sqrt(2)) if not separated else NAN
        rows.append({"column": col, "coef": b, "se": se, "z": z, "p": p, "ci_low": b - 1.96 * se,
                     "ci_high": b + 1.96 * se, "odds_ratio": math.exp(b), "valid": valid, "reason": reason})
    return rows


def importance_tables(methods):
    rng = np.random.default_rng(0)
    base = {"age": 0.8, "income": 0.5, "score": 0.3, "tenure": 0.02}
    rows = []
    for k, m in enumerate(methods):
        vals = {c: v * (1 + 0.3 * k) + rng.normal(0, 0.02) for c, v in base.items()}
        if k == 1:  # the second method swaps the middle two
            vals["income"], vals["score"] = vals["score"], vals["income"]
        order = sorted(vals, key=lambda c: -vals[c])
        for c in COLS:
            v = vals[c]
            rows.append({"column": c, "method": m, "value": v, "ci_low": v - 0.05, "ci_high": v + 0.05,
                         "rank": order.index(c) + 1})
    agree = [{"method_a": a, "method_b": b, "spearman": 0.8 if i == 0 else 0.4}
             for i, (a, b) in enumerate((a, b) for j, a in enumerate(methods) for b in methods[j + 1:])]
    out = {"importance": columns(rows)}
    if agree:
        out["agreement"] = columns(agree)
    return out


def pd_tables(n_ice=5, grid=8):
    pd, ice = [], []
    for j, c in enumerate(COLS):
        xs = np.linspace(-2, 2, grid)
        for x in xs:
            pd.append({"column": c, "x": float(x), "pd": float(np.tanh(x * (1 - 0.3 * j)))})
        for r in range(n_ice):
            for x in xs:
                ice.append({"column": c, "row": r, "x": float(x), "value": float(np.tanh(x * (1 - 0.3 * j)) + 0.3 * (r - 2))})
    inter = [{"a": "age", "b": "income", "h2": 0.31}, {"a": "score", "b": "tenure", "h2": 0.02},
             {"a": "age", "b": "score", "h2": 0.12}]
    return {"pd": columns(pd), "ice": columns(ice), "interactions": columns(inter)}


IMPORTANCE_SUMMARY = {"methods": ["permutation", "shapley", "integrated_gradients"],
                      "finding": "All three methods rank 'age' first.",
                      "agreement": {"permutation~shapley": 0.8}}


def save_examples(store, layer="linear1", units=4):
    g = torch.Generator().manual_seed(0)
    n = 40
    specs = [LayerSpec(layer, units, (), True, "ReLU")]
    acts = {layer: torch.relu(torch.randn(n, units, generator=g))}
    edges = {k: calibrate_edges(v.double().numpy()) for k, v in acts.items()}
    red = ExamplesReducer(specs, k=3, classes=["no", "yes"], edges=edges)
    red.add_batch([f"row/{i}" for i in range(n)], acts, torch.arange(n) % 2)
    store.save("examples", red.result())


def make_site(root, tables, summary, *, examples=False):
    store = Store(root)
    store.set_info(title="fake tabular model")
    if examples:
        save_examples(store)
    store.save("tabular", FakeResult(tables, summary))
    render_site(root)
    return root


@pytest.fixture(scope="module")
def valid_site(tmp_path_factory):
    coefs = [-0.4, 1.2, 0.6, -0.3, 0.01]
    rows = logistic_rows(coefs)
    original = [dict(r, coef=r["coef"] / 10, se=r["se"] / 10, ci_low=r["ci_low"] / 10, ci_high=r["ci_high"] / 10,
                     odds_ratio=math.exp(r["coef"] / 10)) for r in rows]
    summary = {"findings": ["This network is a logistic regression: each 12.3 increase in 'age' multiplies the odds "
                            "of 'yes' by 3.32."],
               "columns": COLS, "task": "binary classification",
               "reading": {"kind": "logit", "valid": True, "reasons": [], "n": 500, "separation": False,
                           "score_norm": 3e-6, "classes": ["no", "yes"], "reference": None,
                           "sentence": "This network is a logistic regression: ...",
                           "sentences": ["Each 12.3 increase in 'age' multiplies the odds of 'yes' by 3.32 "
                                         "(95% CI 2.9-3.8, p = 1e-30).",
                                         "Each 5 increase in 'income' multiplies the odds of 'yes' by 1.82."]},
               "importance": IMPORTANCE_SUMMARY}
    tables = {"logistic": columns(rows), "logistic_original": columns(original),
              **importance_tables(["permutation", "shapley", "integrated_gradients"]), **pd_tables()}
    return make_site(tmp_path_factory.mktemp("tab-valid"), tables, summary)


SEPARATED = ("the classes are perfectly separable by columns age, income: the likelihood has no maximum, the weights "
             "grow without bound and standard errors are meaningless")


@pytest.fixture(scope="module")
def separated_site(tmp_path_factory):
    rows = logistic_rows([-41.0, 187.5, 93.25, -0.5, 0.25], valid=False, reason=SEPARATED, separated=True)
    summary = {"findings": [], "columns": COLS, "task": "binary classification",
               "reading": {"kind": "logit", "valid": False, "reasons": [SEPARATED], "n": 200, "separation": True,
                           "score_norm": 1e-7, "sentences": [],
                           "sentence": "This network cannot be read as a logistic regression: " + SEPARATED + "."},
               "importance": {"methods": ["permutation", "shapley"], "finding": "Both rank 'age' first."}}
    tables = {"logistic": columns(rows), **importance_tables(["permutation", "shapley"])}
    return make_site(tmp_path_factory.mktemp("tab-separated"), tables, summary)


@pytest.fixture(scope="module")
def deep_site(tmp_path_factory):
    hidden = [{"unit": f"linear1:{u}", "column": c, "weight": float(np.sin(u + 2 * j) * 2)}
              for u in range(6) for j, c in enumerate(COLS)]  # linear1:4 and :5 have no unit page
    path = [{"columns": 1, "names": ["age"], "agreement": 0.71, "log_loss": 0.52},
            {"columns": 2, "names": ["age", "income"], "agreement": 0.84, "log_loss": 0.39},
            {"columns": 3, "names": ["age", "income", "score"], "agreement": 0.9, "log_loss": 0.3},
            {"columns": 4, "names": COLS, "agreement": 0.91, "log_loss": 0.29}]
    summary = {"findings": ["A logistic regression on the columns agrees with the network on 91% of rows."],
               "columns": COLS, "task": "binary classification",
               "reading": {"kind": None, "why": "the network has hidden layers (linear1, linear2)"},
               "importance": IMPORTANCE_SUMMARY,
               "surrogate": {"sentence": "A logistic regression on all 4 columns agrees with the network on 91% of "
                                         "rows.", "agreement": 0.91, "log_loss": 0.29, "network_entropy": 0.21,
                             "r2": None, "columns": COLS, "path": path},
               "hidden": {"layer": "linear1",
                          "sentences": ["linear1:1 weighs 'age' against 'income'.",
                                        "linear1:5 mostly reads 'tenure'."]}}
    surrogate = [{"column": c, "coef": b} for c, b in zip(["const", *COLS], [0.1, 1.5, -0.8, 0.4, 0.02])]
    tables = {**importance_tables(["permutation", "shapley", "integrated_gradients"]), **pd_tables(n_ice=7),
              "hidden": columns(hidden), "surrogate": columns(surrogate)}
    return make_site(tmp_path_factory.mktemp("tab-deep"), tables, summary, examples=True)


def links(page: Path) -> list[Path]:
    return [(page.parent / ref).resolve()
            for ref in re.findall(r"""(?:href|src)=["']([^"'#]+)(?:#[^"']*)?["']""", page.read_text())
            if "://" not in ref]  # the references' links point outside the report (never fetched)


def svgs(html: str, cls: str) -> list[str]:
    return re.findall(rf"<svg class='{cls}'.*?</svg>", html, flags=re.S)


@pytest.mark.parametrize("site", ["valid_site", "separated_site", "deep_site"])
def test_page_renders_with_nav_and_links_that_resolve(site, request):
    root = request.getfixturevalue(site)
    page = root / "tabular.html"
    html = page.read_text()
    assert '<a href="tabular.html" class="here">Columns</a>' in html
    refs = links(page)
    assert refs and all(p.exists() for p in refs), [str(p) for p in refs if not p.exists()]
    assert "None" not in re.sub(r"<svg.*?</svg>", "", html, flags=re.S)
    assert "nan" not in re.sub(r"<[^>]*>", "", html).lower().replace("meaningless", "")
    for anchor in re.findall(r'href="#([^"]+)"', html):
        assert f'id="{anchor}"' in html, anchor


def test_valid_reading_is_a_coefficient_table_with_its_sentences(valid_site):
    html = (valid_site / "tabular.html").read_text()
    main = html.split("<details", 1)[0]
    assert 'id="logistic"' in main and "std err" in main and "P&gt;|z|" in main and "odds ratio" in main
    assert "[0.025" in main and "0.975]" in main
    assert "Each 12.3 increase in &#39;age&#39; multiplies the odds" in main
    assert "1.2000" in main and "&lt;0.001" in main  # age's coefficient, 4 decimals; its p-value
    # The original units sit in a collapsed toggle.
    rest = html.split("<details", 1)[1]
    assert "original units" in rest and 'id="logistic-original"' in rest and "0.1200" in rest
    assert "cannot be read" not in html and "reading-invalid" not in html


def test_separated_reading_shows_the_reason_instead_of_the_numbers(separated_site):
    html = (separated_site / "tabular.html").read_text()
    main, collapsed = html.split("<details", 1)
    assert 'id="reading-invalid"' in main and "cannot be read as a logistic regression" in main
    assert "perfectly separable" in main and "standard errors are meaningless" in main
    # No coefficient table outside the collapsed <details>; inside it the weights, with undefined errors as dashes.
    assert 'id="logistic"' not in main and "std err" not in main and "187.5000" not in main
    assert "<summary>" in collapsed[:200] and 'id="logistic"' in collapsed and "187.5000" in collapsed
    assert "<details open" not in html
    assert 'href="#importance"' in main


def test_deep_network_says_why_there_is_no_reading(deep_site):
    html = (deep_site / "tabular.html").read_text()
    assert "No exact reading: the network has hidden layers (linear1, linear2)." in html
    assert 'href="#importance"' in html and 'href="#surrogate"' in html
    assert 'id="logistic"' not in html and "std err" not in html


@pytest.mark.parametrize("site, methods", [("valid_site", 3), ("separated_site", 2), ("deep_site", 3)])
def test_one_interval_chart_per_method_in_the_first_methods_order(site, methods, request):
    html = (request.getfixturevalue(site) / "tabular.html").read_text()
    charts = svgs(html, "intervals")
    assert len(charts) == methods
    for chart in charts:
        assert chart.count("<circle class='dot'") == len(COLS)
        assert chart.count("<line class='ci'") == len(COLS)
        assert chart.count("<line class='zero'") == 1
        labels = re.findall(r"text-anchor='end'>(\w+)</text>", chart)[:len(COLS)]
        assert labels == ["age", "income", "score", "tenure"]  # permutation's ranks, even where shapley swaps
    # The methods are never averaged: each keeps its own values.
    first = [float(v) for v in re.findall(r"data-v='([^']+)'", charts[0])]
    second = [float(v) for v in re.findall(r"data-v='([^']+)'", charts[1])]
    assert first != second and second[1] < second[2]
    if methods > 1:
        assert "rank agreement (Spearman" in html and "badge ok" in html


def test_partial_dependence_one_chart_per_column(valid_site, deep_site):
    for root, n_ice in ((valid_site, 5), (deep_site, 7)):
        html = (root / "tabular.html").read_text()
        charts = svgs(html, "lines")
        pd = [c for c in charts if "data-curves='%d'" % (n_ice + 1) in c]
        assert len(pd) == len(COLS)
        for chart in pd:
            assert chart.count("class='hl'") == 1 and chart.count("class='faint'") == n_ice
        assert "&#39;age&#39; × " not in html  # columns in <code>, not quoted
        rows = re.findall(r"<code>(\w+)</code> × <code>(\w+)</code>", html)
        assert rows == [("age", "income"), ("age", "score"), ("score", "tenure")]  # strongest first


def test_surrogate_and_hidden_units(deep_site):
    html = (deep_site / "tabular.html").read_text()
    assert 'id="surrogate"' in html and "agrees with the network on 91% of rows" in html
    path = [c for c in svgs(html, "lines") if "data-curves='1'" in c]
    assert len(path) == 1 and path[0].count("<circle class='pt'") == 4
    assert "91.0% of rows" in html and "the floor" in html
    coef = svgs(html, "bars")
    assert len(coef) == 1 and coef[0].count("<rect") == len(COLS)  # const left out
    # The heatmap: one row per unit, one coloured cell per column; units with a page are linked.
    heat = re.search(r"<table class=\"heat\">.*?</table>", html, flags=re.S).group(0)
    assert heat.count('<td class="w"') == 6 * len(COLS)
    assert '<a href="units/linear1/0.html"><code>linear1:0</code></a>' in heat
    assert "<code>linear1:5</code>" in heat and 'href="units/linear1/5.html"' not in html
    assert (deep_site / "units/linear1/0.html").exists()
    assert "<a href='units/linear1/1.html'><code>linear1:1</code></a> weighs" in html
    assert "background:rgb(" in heat


def test_overview_links_the_findings_and_other_pages_still_render(deep_site):
    store = Store(deep_site)
    assert (deep_site / "examples.html").exists()
    from neuronscope.website import findings
    got = [f for f in findings(store) if f["link"] == "tabular.html"]
    assert got and "91% of rows" in got[0]["text"]


def test_a_bare_section_renders(tmp_path):
    make_site(tmp_path, {}, {"findings": ["Nothing yet."]})
    html = (tmp_path / "tabular.html").read_text()
    assert "Columns" in html and "Nothing yet." in html
    assert "<svg" not in html and "<table" not in html


def test_mnlogit_and_ols_readings(tmp_path):
    rows = []
    for cls in ("b", "c"):
        for r in logistic_rows([0.1, 0.5, -0.2, 0.3, 0.0]):
            rows.append({"column": r["column"], "class": cls, **{k: v for k, v in r.items() if k != "column"}})
    summary = {"columns": COLS, "reading": {"kind": "mnlogit", "valid": True, "reasons": [], "reference": "a",
                                            "sentences": ["Each unit of 'age' multiplies the odds of 'b' against 'a'."]}}
    make_site(tmp_path / "mn", {"logistic": columns(rows)}, summary)
    html = (tmp_path / "mn" / "tabular.html").read_text()
    assert html.count('<tr class="group">') == 2 and "against a" in html
    rows = [{k: v for k, v in r.items() if k != "odds_ratio"} for r in logistic_rows([1.0, 2.0, 0.0, 0.0, 0.0])]
    make_site(tmp_path / "ols", {"logistic": columns(rows)},
              {"columns": COLS, "reading": {"kind": "ols", "valid": True, "reasons": [], "sentences": []}})
    html = (tmp_path / "ols" / "tabular.html").read_text()
    assert "P&gt;|t|" in html and "odds ratio" not in html and "linear regression" in html


def test_interval_and_line_helpers():
    out = svg.intervals(["a", "b", "c"], [1.0, None, -0.5], [0.5, None, None], [1.5, None, None])
    assert out.count("<circle class='dot'") == 2 and out.count("<line class='ci'") == 1 and "–" in out
    assert svg.intervals([], [], [], []) == ""
    two = svg.lines([0, 1, 2, 3], [[0, 1, float("nan"), 3], [1, 1, 1, 1]], highlight=0)
    assert two.count("class='hl'") == 1 and two.count("class='faint'") == 1
    d = re.search(r"class='hl' d='([^']+)'", two).group(1)
    assert d.count("M") == 2  # the NaN breaks the curve
    per = svg.lines([[0, 1], [0, 2, 4]], [[1, 2], [3, 2, 1]], highlight=(0, 1), dots=True)
    assert per.count("class='hl'") == 2 and per.count("<circle class='pt'") == 5
    assert tabular_pages.fmt(float("nan")) == "–" and tabular_pages.fmt(1e-5, "p") == "<0.001"
    assert tabular_pages.fmt(123456.0) == "1.235e+05" and tabular_pages.fmt(0.5) == "0.5000"


def test_the_analysis_modules_table_names_are_read_too(tmp_path):
    """The section as neuronscope.analyses.tabular writes it: "hidden_weights", "surrogate_path"
    (names joined by "; ") and a full-sentence why."""
    why = "The network has hidden layers, so no coefficient table describes it exactly."
    hidden = [{"unit": f"fc1:{u}", "column": c, "weight": 0.5 * u - j} for u in range(3) for j, c in enumerate(COLS)]
    path = [{"columns": k, "names": "; ".join(COLS[:k]), "agreement": 0.6 + 0.1 * k, "log_loss": 1.0 / k, "r2": None}
            for k in range(1, 4)]
    surrogate = [{"column": c, "class": cls, "coef": 0.3 * j - 0.2, "coef_original": None}
                 for cls in ("b", "c") for j, c in enumerate(["const", *COLS])]
    summary = {"columns": COLS, "reading": {"kind": None, "why": why},
               "surrogate": {"kind": "mnlogit", "columns": COLS[:3], "agreement": 0.9, "log_loss": 0.3,
                             "network_entropy": 0.2, "r2": None, "sentence": "Close."},
               "hidden": {"layer": "fc1", "units": 3, "columns": 4, "sentences": ["fc1:0 reads 'age'."]}}
    make_site(tmp_path, {"hidden_weights": columns(hidden), "surrogate_path": columns(path),
                         "surrogate": columns(surrogate)}, summary)
    html = (tmp_path / "tabular.html").read_text()
    assert why in html and "No exact reading" not in html
    assert html.count('<td class="w"') == 3 * len(COLS)
    chart = [c for c in svgs(html, "lines") if "data-curves='1'" in c]
    assert len(chart) == 1 and chart[0].count("<circle class='pt'") == 3
    assert re.search(r"<td class=\"n\">2</td><td><code>income</code></td>", html)  # only what step 2 added
    assert svgs(html, "bars")[0].count("<rect") == 2 * len(COLS) and "b · age" in html
