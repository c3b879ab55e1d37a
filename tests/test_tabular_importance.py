"""Column importance for networks on plain numeric vectors (issue 6)."""

import numpy as np
import pytest
import torch
from torch import nn

from neuronscope.errors import OptionError, UnsupportedError
from neuronscope.subject import Subject
from neuronscope.analyses.tabular.importance import (
    column_importance,
    integrated_gradients_importance,
    interaction_strength,
    partial_dependence,
    permutation_importance,
    shapley_sampling,
)

pytestmark = pytest.mark.usefixtures("one_thread")

COLUMNS = ["age", "bmi", "sex", "bp", "s1", "s5"]  # signal in columns 1 ('bmi') and 4 ('s1')


def _train(x, y, out, loss_fn, steps=200, seed=0, weight_decay=1.0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], 16), nn.Tanh(), nn.Linear(16, out))
    # weight decay keeps the noise columns out: an overfitted net really does use them on its
    # training rows (permutation importance on training data shows it); tests read held-out rows
    opt = torch.optim.AdamW(model.parameters(), lr=0.02, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return model


@pytest.fixture(scope="module")
def classifier():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2600, 6, generator=g)
    y = ((2 * x[:, 1] - x[:, 4] + 0.3 * torch.randn(2600, generator=g)) > 0).long()
    model = _train(x[:2000], y[:2000], 2, nn.functional.cross_entropy)
    return Subject(model, (6,), columns=COLUMNS, classes=["no", "yes"]), x[2000:], y[2000:]


@pytest.fixture(scope="module")
def regressor():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2600, 6, generator=g)
    y = x[:, 1] ** 2 + 2 * x[:, 4] + 0.1 * torch.randn(2600, generator=g)
    model = _train(x[:2000], y[:2000, None], 1, nn.functional.mse_loss, steps=300, weight_decay=0.01)
    return Subject(model, (6,), columns=COLUMNS, task="regression"), x[2000:], y[2000:]


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.fn(x)[:, None] + 0 * self.dummy


def _fn_subject(fn, f=4):
    return Subject(Fn(fn), (f,), task="regression", columns=[f"c{j}" for j in range(f)])


@pytest.mark.parametrize("which", ["classifier", "regressor"])
def test_signal_columns_rank_first_under_every_method(which, request):
    subject, x, y = request.getfixturevalue(which)
    res = column_importance(subject, (x[:300], y[:300]), repeats=5, explain_rows=60, background_rows=30,
                            n_permutations=6)
    for m, r in res.results.items():
        assert set(r.ranking()[:2]) == {"bmi", "s1"}, (m, r.ranking())
    assert "'bmi' and 's1' matter most under every method" in res.finding() \
        or "'s1' and 'bmi' matter most under every method" in res.finding()
    assert all(v > 0.3 for v in res.agreement.values())
    rows = res.rows()
    assert len(rows) == 18 and set(rows[0]) == {"column", "method", "value", "ci_low", "ci_high"}
    t = res.tables()
    assert set(t["importance"]) >= {"rank", "column"} and len(t["agreement"]["spearman"]) == 3
    assert res.summary()["finding"] == res.finding()


def test_noise_permutation_intervals_include_zero(classifier):
    subject, x, y = classifier
    imp = permutation_importance(subject, (x, y), repeats=10)
    by = {r["column"]: r for r in imp.rows()}
    tol = 1e-3 * by["bmi"]["value"]  # the interval is over shuffles only: allow a hair of real noise use
    for c in ("age", "sex", "bp", "s5"):
        assert by[c]["ci_low"] <= tol and by[c]["ci_high"] >= -tol, by[c]
    for c in ("bmi", "s1"):
        assert by[c]["ci_low"] > 0.2
    acc = permutation_importance(subject, (x, y), repeats=5, metric="accuracy")
    assert acc.metric == "drop in accuracy" and acc.details["baseline_score"] > 0.9
    assert acc.ranking()[0] == "bmi"


def test_permutation_without_labels_and_dataset(classifier, tmp_path):
    subject, x, y = classifier
    no_labels = permutation_importance(subject, x[:200], repeats=3)
    assert no_labels.ranking()[0] == "bmi"
    from neuronscope.data import open_data
    path = tmp_path / "t.csv"
    lines = [",".join(COLUMNS + ["y"])] + [",".join(f"{v:.5f}" for v in row) + f",{int(t)}"
                                           for row, t in zip(x[:150].tolist(), y[:150].tolist())]
    path.write_text("\n".join(lines) + "\n")
    data = open_data(str(path), target="y")
    imp = permutation_importance(subject, data, repeats=3, limit=120)
    assert imp.n == 120 and imp.ranking()[0] == "bmi"


def test_grouped_permutation(regressor):
    subject, x, y = regressor
    imp = permutation_importance(subject, (x, y), repeats=4, groups={"signal": ["bmi", "s1"], "pair": ["age", "sex"]})
    assert imp.columns == ["signal", "pair", "bp", "s5"]
    assert imp.ranking()[0] == "signal" and imp.values[0] > 1.0
    assert abs(imp.values[1]) < 0.05


def test_shapley_is_efficient(regressor):
    subject, x, y = regressor
    sv = shapley_sampling(subject, x[:40], x[100:130], n_permutations=4)
    assert sv.values.shape == (40, 6)
    assert sv.completeness_error().max() < 1e-4
    # exact for a linear function: phi_j = w_j (x_j - mean_bg x_j)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])
    lin = _fn_subject(lambda z: z @ w)
    bg = x[200:220, :4]
    sv = shapley_sampling(lin, x[:10, :4], bg, n_permutations=2)
    assert np.allclose(sv.values, ((x[:10, :4] - bg.mean(0)) * w).numpy(), atol=1e-5)


def test_shapley_matches_captum_engine_in_expectation():
    f = _fn_subject(lambda z: z[:, 0] * z[:, 1] + z[:, 2] ** 2 - z[:, 3])
    g = torch.Generator().manual_seed(3)
    x, bg = torch.randn(5, 4, generator=g), torch.randn(8, 4, generator=g)
    # 4 columns: 24 orderings; many sampled ones make both estimates close to the exact value
    ours = shapley_sampling(f, x, bg, n_permutations=200)
    theirs = shapley_sampling(f, x, bg, n_permutations=200, engine="captum")
    assert np.allclose(ours.values, theirs.values, atol=0.15)
    assert theirs.completeness_error().max() < 1e-4


def test_integrated_gradients_complete(classifier):
    subject, x, y = classifier
    ig = integrated_gradients_importance(subject, x[:50], baseline=x)
    assert ig.values.shape == (50, 6)
    scale = np.abs(ig.outputs - ig.reference).mean()
    assert ig.completeness_error().mean() < 0.02 * scale
    assert set(ig.importance.ranking()[:2]) == {"bmi", "s1"}
    assert ig.target[0].startswith("class ")


def test_partial_dependence_of_linear_model():
    lin = _fn_subject(lambda z: 2 * z[:, 0] - z[:, 3] + 0.5 * z[:, 1])
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(4))
    pd = partial_dependence(lin, x, "c0", grid=15, ice=20)
    assert len(pd.grid) == 15 and pd.ice.shape == (20, 15)
    assert pd.slope() == pytest.approx(2.0, abs=1e-4)
    c = pd.centered_ice()
    assert np.abs(c - c[:1]).max() < 1e-4  # parallel ICE curves
    assert np.allclose(pd.grid, np.quantile(x[:, 0].numpy(), np.linspace(0.05, 0.95, 15)), atol=1e-5)
    inter = partial_dependence(_fn_subject(lambda z: z[:, 0] * z[:, 3]), x, 0, ice=20)
    ci = inter.centered_ice()
    assert np.abs(ci - ci[:1]).max() > 0.5  # an interaction makes ICE curves fan out


def test_friedman_h2():
    x = torch.randn(120, 4, generator=torch.Generator().manual_seed(5))
    additive = interaction_strength(_fn_subject(lambda z: z[:, 0] ** 2 + 2 * z[:, 3]), x, [("c0", "c3")])
    assert additive.h2[0] < 1e-6
    product = interaction_strength(_fn_subject(lambda z: z[:, 0] + z[:, 3] + 2 * z[:, 0] * z[:, 3]), x,
                                   [("c0", "c3"), ("c0", "c1")])
    assert product.h2[0] > 0.3 and product.h2[1] < 1e-6
    assert product.summary()["strongest"] == ["c0", "c3"]
    auto = interaction_strength(_fn_subject(lambda z: z[:, 0] * z[:, 3] + 0.01 * z[:, 1]), x, top=3)
    assert len(auto.pairs) == 3 and auto.pairs[int(np.argmax(auto.h2))] == ("c0", "c3") \
        or auto.pairs[int(np.argmax(auto.h2))] == ("c3", "c0")


def test_errors(classifier):
    subject, x, y = classifier
    with pytest.raises(OptionError, match="Did you mean 'bmi'"):
        partial_dependence(subject, x, "bmj")
    with pytest.raises(OptionError, match="Unknown column 'agee'"):
        permutation_importance(subject, (x, y), groups={"g": ["agee"]})
    with pytest.raises(OptionError):
        column_importance(subject, (x, y), methods=("permutaton",))
    with pytest.raises(OptionError):
        interaction_strength(subject, x, [("bmi", "bmi")])
    image = Subject(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(2)), (1, 8, 8))
    with pytest.raises(UnsupportedError):
        permutation_importance(image, torch.rand(4, 1, 8, 8))
    with pytest.raises(UnsupportedError):
        shapley_sampling(image, torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8))


def test_model_left_as_found(classifier):
    subject, x, y = classifier
    model = subject.model
    model.train()
    model.zero_grad(set_to_none=True)  # training left grads behind
    before = [p.detach().clone() for p in model.parameters()]
    integrated_gradients_importance(subject, x[:10])
    shapley_sampling(subject, x[:5], x[:10], n_permutations=2)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    model.eval()
