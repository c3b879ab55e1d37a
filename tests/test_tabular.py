"""tabular(): the one call for networks on numeric vectors, its CLI (logistic.csv, importance.csv)
and its place in the report."""

import csv

import numpy as np
import pytest
import statsmodels.api as sm
import torch
from sklearn.datasets import load_diabetes
from torch import nn

import neuronscope as ns
from neuronscope.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL_PY = """
import torch
from torch import nn

def logistic():
    return nn.Sequential(nn.Linear(10, 1), nn.Sigmoid())

def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1), nn.Sigmoid())
"""


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory):
    """sklearn's diabetes columns, the target split at its median; a CSV and the standardizing stats."""
    root = tmp_path_factory.mktemp("tab")
    d = load_diabetes()
    x, y = d.data, (d.target > np.median(d.target)).astype(int)
    rows = [",".join(d.feature_names + ["high"])] + [",".join(f"{v:.10g}" for v in r) + f",{t}" for r, t in zip(x, y)]
    (root / "diabetes.csv").write_text("\n".join(rows))
    (root / "net.py").write_text(MODEL_PY)
    x = np.loadtxt(root / "diabetes.csv", delimiter=",", skiprows=1)[:, :10]  # what the CSV holds
    return root, x, y, d.feature_names


def fit(model, x, y, mean, std, steps=200):
    """Full-batch LBFGS in float64 to convergence (a maximum-likelihood fit)."""
    model = model.double()
    xt, yt = torch.tensor((x - mean) / std), torch.tensor(y, dtype=torch.float64)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=steps, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe", history_size=50)

    def closure():
        opt.zero_grad()
        z = model[:-1](xt).squeeze(1)
        loss = nn.functional.binary_cross_entropy_with_logits(z, yt)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    return model


def test_one_layer_network_reads_as_statsmodels_logit_through_the_cli(diabetes):
    root, x, y, names = diabetes
    mean, std = x.mean(0), x.std(0)
    model = fit(nn.Sequential(nn.Linear(10, 1), nn.Sigmoid()), x, y, mean, std)
    torch.save(model.state_dict(), root / "w.pt")
    out = root / "cols"
    assert main(["-q", "tabular", f"{root}/net.py:logistic", "--weights", str(root / "w.pt"), "--data",
                 str(root / "diabetes.csv"), "--target", "high", "--mean", ",".join(map(str, mean)),
                 "--std", ",".join(map(str, std)), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "logistic.csv")))
    ref = sm.Logit(y, sm.add_constant((x - mean) / std)).fit(disp=0)
    assert [r["column"] for r in rows] == ["const", *names]
    assert np.allclose([float(r["coef"]) for r in rows], ref.params, atol=1e-6)
    assert np.allclose([float(r["se"]) for r in rows], ref.bse, rtol=1e-6)
    assert all(r["valid"] == "True" for r in rows)
    imp = list(csv.DictReader(open(out / "importance.csv")))
    assert {r["method"] for r in imp} >= {"permutation", "shapley", "integrated_gradients"}
    assert set(imp[0]) >= {"column", "method", "value", "ci_low", "ci_high"}
    assert (out / "tabular.html").exists()
    page = (out / "tabular.html").read_text()
    assert "bmi" in page


def test_a_deeper_network_gets_importance_a_surrogate_and_its_first_layer(diabetes):
    root, x, y, names = diabetes
    d = ns.open_data(root / "diabetes.csv", target="high")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1), nn.Sigmoid())
    mean, std = x.mean(0), x.std(0)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    xt, yt = torch.tensor((x - mean) / std, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model[:-1](xt).squeeze(1), yt).backward()
        opt.step()
    s = ns.Subject(model, (10,), mean=mean, std=std, columns=d.columns, classes=["low", "high"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = ns.tabular(s, d, pd_columns=2, pairs=1)
    assert t.reading is None and "hidden layers" in t.why_no_reading
    assert t.surrogate is not None and 0.5 < t.surrogate.agreement <= 1
    assert t.hidden is not None and t.hidden.weights.shape == (16, 10)
    assert t.local is not None and t.local.values.shape == (200, 10)  # gradient x (input - mean) per row
    assert len(t.dependence) == 2 and t.interactions is not None
    top = t.importance.results["permutation"].ranking()[:3]
    assert "bmi" in top or "s5" in top  # the two strongest predictors of diabetes progression
    assert any("logistic regression" in f for f in t.findings())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_report_on_a_table_has_the_columns_page(diabetes, tmp_path):
    root, x, y, names = diabetes
    d = ns.open_data(root / "diabetes.csv", target="high")
    s = ns.Subject(nn.Sequential(nn.Linear(10, 1), nn.Sigmoid()), (10,), columns=d.columns, classes=["low", "high"])
    opts = ns.ReportOptions(progress=False, featvis_units=0, attribution_inputs=0,
                            sections=("overview", "sanity", "tabular"))
    ns.report(s, d, tmp_path / "r", opts)
    summary = ns.Store(tmp_path / "r").summary("tabular")
    assert summary["reading"]["kind"] == "logit"
    assert not summary["reading"]["valid"]  # random weights: not a maximum-likelihood fit
    assert (tmp_path / "r" / "tabular.html").exists()


def test_tabular_refuses_image_models():
    s = ns.Subject(nn.Conv2d(3, 2, 3), (3, 8, 8))
    with pytest.raises(ns.NeuronscopeError, match="numeric vectors"):
        ns.tabular(s, None)


def test_grouped_columns_are_permuted_together_from_the_cli(diabetes, tmp_path):
    root, x, y, names = diabetes
    torch.manual_seed(0)
    torch.save(nn.Sequential(nn.Linear(10, 1), nn.Sigmoid()).state_dict(), root / "w0.pt")
    out = tmp_path / "g"
    assert main(["-q", "tabular", f"{root}/net.py:logistic", "--weights", str(root / "w0.pt"), "--data",
                 str(root / "diabetes.csv"), "--target", "high", "--group", "serum=s1,s2,s3,s4,s5,s6",
                 "--out", str(out)]) == 0
    perm = [r for r in csv.DictReader(open(out / "importance.csv")) if r["method"] == "permutation"]
    assert "serum" in {r["column"] for r in perm} and "s1" not in {r["column"] for r in perm}
    assert main(["-q", "tabular", f"{root}/net.py:logistic", "--data", str(root / "diabetes.csv"), "--target", "high",
                 "--group", "serum", "--out", str(out)]) == 2
