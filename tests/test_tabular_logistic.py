"""The logistic-regression reading of one-layer networks, checked against statsmodels."""

import warnings

import numpy as np
import pytest
import statsmodels.api as sm
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes
from torch import nn
from torch.nn import functional as F

from neuronscope.analyses.tabular.logistic import is_one_layer, logistic_reading
from neuronscope.data import Batch
from neuronscope.errors import UnsupportedError
from neuronscope.subject import Subject

pytestmark = pytest.mark.usefixtures("one_thread")


class Rows:
    """A minimal in-memory table dataset (raw float32 inputs, as TableData gives)."""

    def __init__(self, x, y, columns=None, classes=None):
        self.x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        self.y = torch.as_tensor(np.asarray(y))
        self.columns, self.classes = columns, classes

    def batches(self, batch_size=64, *, limit=None, start=0):
        n = len(self.x) if limit is None else min(limit, len(self.x))
        for i in range(start, n, batch_size):
            j = min(i + batch_size, n)
            yield Batch([str(k) for k in range(i, j)], self.x[i:j], self.y[i:j])


def fit(linear, z, y, loss, *, decay=0.0, max_iter=500):
    """Full-batch float64 L-BFGS (strong Wolfe) to convergence, optionally with an L2 penalty."""
    opt = torch.optim.LBFGS(linear.parameters(), lr=1, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-13, tolerance_change=0, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        out = linear(z)
        value = (F.binary_cross_entropy_with_logits(out[:, 0], y.double()) if loss == "bce"
                 else F.cross_entropy(out, y.long()))
        value = value + decay / 2 * linear.weight.pow(2).sum()
        value.backward()
        return value

    opt.step(closure)
    return linear


@pytest.fixture(scope="module")
def diabetes():
    d = load_diabetes()
    x = d.data.astype(np.float32).astype(np.float64)  # what a float32 data pipeline hands over
    y = (d.target > np.median(d.target)).astype(np.int64)
    return x, y, list(d.feature_names), d.target


def close(a, b, rel=None, abs_=None):
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = np.abs(a - b) if rel is None else np.abs(a - b) / np.abs(b)
    print(f"max {'rel' if rel else 'abs'} diff {diff.max():.2e}")
    assert diff.max() <= (rel if rel is not None else abs_)
    return diff.max()


def check_logit(r, res, scale=1.0):
    """coef, se, z, p, CI of a reading against a statsmodels result; coefficients and intervals
    to 1e-6 absolute times ``scale``."""
    close(r.coef, res.params, abs_=1e-6 * scale)
    close(r.se, res.bse, rel=1e-6)
    close(r.z, res.tvalues, abs_=1e-5)
    assert np.allclose(r.p, res.pvalues, rtol=1e-5, atol=1e-12)
    ci = np.asarray(res.conf_int())
    close(np.c_[r.ci_low, r.ci_high], ci, abs_=1e-6 * scale)


def diabetes_subject(diabetes, standardize, *, outputs=1, decay=0.0):
    x, y, names, _ = diabetes
    mean, std = (x.mean(0), x.std(0)) if standardize else (None, None)
    z = (x - mean) / std if standardize else x
    squash = nn.Sigmoid() if outputs == 1 else nn.Softmax(dim=1)
    model = nn.Sequential(nn.Linear(10, outputs), squash).double()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
    fit(model[0], torch.from_numpy(z), torch.from_numpy(y), "bce" if outputs == 1 else "ce", decay=decay)
    subject = Subject(model, (10,), mean=mean, std=std, columns=names, classes=["low", "high"])
    return subject, z


@pytest.mark.parametrize("standardize", [True, False])
def test_logit_matches_statsmodels(diabetes, standardize):
    x, y, names, _ = diabetes
    subject, z = diabetes_subject(diabetes, standardize)
    assert is_one_layer(subject)
    r = logistic_reading(subject, Rows(x, y, names))
    res = sm.Logit(y, sm.add_constant(z)).fit(disp=0, tol=1e-12)
    assert r.kind == "logit" and r.valid and not r.separation, r.reasons
    assert r.columns == ["const"] + names and r.n == 442
    assert r.score_norm < 1e-7
    # On the raw columns (std ~0.048, s1/s2 nearly collinear) the loss is so flat along some
    # directions that float64 L-BFGS stalls ~1e-5 from the optimum on coefficients of size ~30:
    # there compare to 1e-6 of the coefficients' scale.
    check_logit(r, res, scale=1.0 if standardize else np.abs(res.params).max())
    assert np.allclose(r.odds_ratio, np.exp(r.coef), rtol=1e-12)
    assert (r.original is not None) == standardize
    rows = r.rows()
    assert [k for k in rows[0]] == ["column", "coef", "se", "z", "p", "ci_low", "ci_high", "odds_ratio",
                                    "valid", "reason"]
    assert r.summary()["valid"] and "multiplies the odds of 'high'" in r.sentence()
    assert set(r.tables()) == ({"logistic", "logistic_original"} if standardize else {"logistic"})


def test_original_units_match_statsmodels_on_raw_columns(diabetes):
    x, y, names, _ = diabetes
    subject, _ = diabetes_subject(diabetes, True)
    r = logistic_reading(subject, Rows(x, y, names))
    res = sm.Logit(y, sm.add_constant(x)).fit(disp=0, tol=1e-12)
    o = r.original
    # raw diabetes columns have std ~0.048: coefficients are ~20x larger, so compare relatively
    close(o["coef"], res.params, rel=1e-6)
    close(o["se"], res.bse, rel=1e-6)
    close(o["z"], res.tvalues, abs_=1e-5)
    assert np.allclose(o["p"], res.pvalues, rtol=1e-5, atol=1e-12)
    ci = np.asarray(res.conf_int())
    close(np.c_[o["ci_low"], o["ci_high"]], ci, abs_=1e-5)
    assert np.allclose(o["odds_ratio"], np.exp(res.params), rtol=1e-5)


def test_two_class_softmax_reads_as_logit(diabetes):
    x, y, names, _ = diabetes
    subject, z = diabetes_subject(diabetes, True, outputs=2)
    r = logistic_reading(subject, Rows(x, y, names))
    assert r.kind == "logit" and r.valid, r.reasons
    check_logit(r, sm.Logit(y, sm.add_constant(z)).fit(disp=0, tol=1e-12))


def test_ols_matches_statsmodels(diabetes):
    x, _, names, target = diabetes
    mean, std = x.mean(0), x.std(0)
    z = (x - mean) / std
    design = sm.add_constant(z)
    beta = np.linalg.lstsq(design, target, rcond=None)[0]
    model = nn.Linear(10, 1).double()
    with torch.no_grad():
        model.bias.fill_(beta[0])
        model.weight.copy_(torch.from_numpy(beta[1:])[None])
    subject = Subject(model, (10,), mean=mean, std=std, columns=names, task="regression")
    r = logistic_reading(subject, Rows(x, target, names))
    assert r.kind == "ols" and r.valid and r.odds_ratio is None, r.reasons
    res = sm.OLS(target, design).fit()
    # OLS coefficients are in the target's units (~100s): compare relative to their scale
    close(r.coef, res.params, rel=1e-9)
    close(r.se, res.bse, rel=1e-9)
    assert np.allclose(r.p, res.pvalues, rtol=1e-6, atol=1e-14)
    close(np.c_[r.ci_low, r.ci_high], res.conf_int(), rel=1e-9)
    raw = sm.OLS(target, sm.add_constant(x)).fit()
    close(r.original["coef"], raw.params, rel=1e-8)
    close(r.original["se"], raw.bse, rel=1e-8)
    assert "adds" in r.sentence()


def test_mnlogit_matches_statsmodels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3)).astype(np.float32).astype(np.float64)
    beta = np.array([[0.0, 0.0, 0.0, 0.0], [0.3, 1.0, -0.5, 0.2], [-0.2, -0.4, 0.8, 0.6]])
    eta = sm.add_constant(x) @ beta.T
    prob = np.exp(eta) / np.exp(eta).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=p) for p in prob])
    model = nn.Sequential(nn.Linear(3, 3), nn.Softmax(dim=1)).double()
    fit(model[0], torch.from_numpy(x), torch.from_numpy(y), "ce")
    subject = Subject(model, (3,), columns=["a", "b", "c"], classes=["A", "B", "C"])
    r = logistic_reading(subject, Rows(x, y, ["a", "b", "c"]))
    assert r.kind == "mnlogit" and r.valid and r.reference == "A", r.reasons
    res = sm.MNLogit(y, sm.add_constant(x)).fit(disp=0, method="newton", tol=1e-12)
    assert r.coef.shape == (2, 4)
    close(r.coef, np.asarray(res.params).T, abs_=1e-6)
    close(r.se, np.asarray(res.bse).T, rel=1e-6)
    assert np.allclose(r.p, np.asarray(res.pvalues).T, rtol=1e-5, atol=1e-12)
    rows = r.rows()
    assert len(rows) == 8 and rows[4]["class"] == "C" and rows[4]["column"] == "const"
    assert "odds of 'B' against 'A'" in r.sentence() or "odds of 'C' against 'A'" in r.sentence()


def test_breast_cancer_is_separable():
    d = load_breast_cancer()
    x = d.data.astype(np.float32).astype(np.float64)
    y = d.target.astype(np.int64)
    mean, std = x.mean(0), x.std(0)
    z = (x - mean) / std
    model = nn.Sequential(nn.Linear(30, 1), nn.Sigmoid()).double()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
    fit(model[0], torch.from_numpy(z), torch.from_numpy(y), "bce", max_iter=300)
    with torch.no_grad():
        assert F.binary_cross_entropy_with_logits(model[0](torch.from_numpy(z))[:, 0],
                                                  torch.from_numpy(y).double()) < 1e-4
    subject = Subject(model, (30,), mean=mean, std=std, columns=list(d.feature_names))
    r = logistic_reading(subject, Rows(x, y))
    assert r.separation and not r.valid
    assert "perfectly separable" in r.reasons[0] and "no maximum" in r.reasons[0]
    assert np.isnan(r.se).all() and np.isnan(r.p).all() and np.isfinite(r.coef).all()
    assert "cannot be read" in r.sentence()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            sm.Logit(y, sm.add_constant(z)).fit(disp=0, maxiter=100)
            failed = any("separation" in str(w.message).lower() for w in caught)
        except Exception as e:  # older statsmodels raise PerfectSeparationError
            failed = "separation" in str(e).lower() or isinstance(e, np.linalg.LinAlgError)
    assert failed


def test_weight_decay_breaks_the_score(diabetes):
    x, y, names, _ = diabetes
    subject, _ = diabetes_subject(diabetes, True, decay=1e-2)
    r = logistic_reading(subject, Rows(x, y, names))
    print("score with weight decay", r.score_norm)
    assert not r.valid and not r.separation and r.score_norm > 1e-3
    assert len(r.reasons) == 1 and "score" in r.reasons[0] and "weight decay" in r.reasons[0]
    assert np.isfinite(r.se).all()  # still computed, flagged invalid
    assert all(not row["valid"] and "score" in row["reason"] for row in r.rows())


def test_interval_coverage():
    reps, n = 1000, 300
    beta = torch.tensor([-0.5, 1.0, -0.7, 0.3], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(reps, n, 3, generator=g, dtype=torch.float64).float().double()
    X = torch.cat([torch.ones(reps, n, 1, dtype=torch.float64), x], 2)
    y = torch.bernoulli(torch.sigmoid(X @ beta), generator=g)
    b = torch.zeros(reps, 4, dtype=torch.float64)
    for _ in range(12):  # batched Newton-Raphson on every dataset at once
        p = torch.sigmoid(X @ b[:, :, None])[..., 0]
        grad = (X * (y - p)[..., None]).sum(1)
        info = X.transpose(1, 2) @ (X * (p * (1 - p))[..., None])
        b = b + torch.linalg.solve(info, grad)
    model = nn.Sequential(nn.Linear(3, 1), nn.Sigmoid()).double()
    subject = Subject(model, (3,), columns=["a", "b", "c"])
    covered = np.zeros(4)
    valid = 0
    for k in range(reps):
        with torch.no_grad():
            model[0].bias.copy_(b[k, :1])
            model[0].weight.copy_(b[k, None, 1:])
        r = logistic_reading(subject, Rows(x[k].numpy(), y[k].long().numpy()))
        valid += r.valid
        covered += (r.ci_low <= beta.numpy()) & (beta.numpy() <= r.ci_high)
    rate = covered / reps
    print("95% interval coverage per coefficient:", rate, "mean", rate.mean())
    assert valid == reps
    # pooled over 4000 intervals the binomial sd is 0.0034; per coefficient (1000) it is 0.0069
    assert 0.936 <= rate.mean() <= 0.964
    assert ((rate >= 0.925) & (rate <= 0.975)).all()


def test_deeper_networks_are_refused():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1), nn.Sigmoid())
    mlp.train()
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    subject = Subject(mlp, (4,))
    assert not is_one_layer(subject)
    data = Rows(np.random.default_rng(0).normal(size=(20, 4)), np.arange(20) % 2)
    with pytest.raises(UnsupportedError, match="importance") as err:
        logistic_reading(subject, data)
    assert "3 modules with weights" not in str(err.value) and "2 modules with weights" in str(err.value)
    assert mlp.training and all(p.requires_grad for p in mlp.parameters())
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())
    # one Linear, but behind an activation: not one layer, found by probing the function
    behind = Subject(nn.Sequential(nn.ReLU(), nn.Linear(4, 1), nn.Sigmoid()), (4,))
    assert not is_one_layer(behind)
    with pytest.raises(UnsupportedError, match="not the Linear applied"):
        logistic_reading(behind, data)
