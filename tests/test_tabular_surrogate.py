"""Global logistic surrogates, local linear readings and hidden units of networks on vectors (issue 6)."""

import numpy as np
import pytest
import torch
from torch import nn

from neuronscope.analyses.tabular.hidden import hidden_units
from neuronscope.analyses.tabular.surrogate import local_linear, surrogate
from neuronscope.errors import OptionError, UnsupportedError
from neuronscope.subject import Subject

pytestmark = pytest.mark.usefixtures("one_thread")

COLUMNS = ["a", "b", "c", "d", "e", "f"]


def _mlp(x, y, out, loss_fn, steps=300, seed=0, hidden=16):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, out))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return model


def _data(seed, n=1500, f=6):
    return torch.randn(n, f, generator=torch.Generator().manual_seed(seed))


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()])


def _untouched(model, snap):
    state, training, grads = snap
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == training
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(p.grad is None for p in model.parameters())


@pytest.fixture(scope="module")
def sign_net():
    x = _data(0)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = _mlp(x, y, 2, nn.functional.cross_entropy)
    return Subject(model, (6,), columns=COLUMNS, classes=["neg", "pos"]), x


@pytest.fixture(scope="module")
def xor_net():
    x = _data(1)
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()
    model = _mlp(x, y, 2, nn.functional.cross_entropy, steps=400, hidden=32)
    return Subject(model, (6,), columns=COLUMNS, classes=["same", "differ"]), x, y


# ----------------------------------------------------------------------------------- surrogate


def test_one_layer_logistic_is_its_own_surrogate():
    torch.manual_seed(0)
    w = torch.tensor([[1.5, -2.0, 0.7, 0.0, 1.0]])
    lin = nn.Linear(5, 1)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.fill_(0.3)
    model = nn.Sequential(lin, nn.Sigmoid()).train()
    mean, std = [1.0, -2.0, 0.0, 3.0, 5.0], [2.0, 0.5, 1.0, 4.0, 10.0]
    s = Subject(model, (5,), mean=mean, std=std, classes=["no", "yes"])
    g = torch.Generator().manual_seed(3)
    x = torch.tensor(mean) + torch.tensor(std) * 1.3 * torch.randn(800, 5, generator=g)
    snap = _snapshot(model)
    r = surrogate(s, x)
    _untouched(model, snap)
    assert r.kind == "logistic" and r.held_out
    assert r.full["agreement"] > 0.99 and r.agreement >= 0.95 and r.reached
    # in data z-score units the network's coefficient on column j is w_j * sd_j / std_j
    expected = w[0].double().numpy() * x.double().std(0, unbiased=False).numpy() / np.array(std)
    np.testing.assert_allclose(r.full["coef"], expected, rtol=0.02, atol=0.02)
    assert r.full["log_loss"] == pytest.approx(r.network_entropy, abs=0.005)  # it reaches the floor
    assert r.log_loss >= r.network_entropy - 1e-9
    # the coefficients per raw unit undo the data standardization
    j = [r.all_columns.index(c) for c in r.columns]
    np.testing.assert_allclose(r.coef_original(), r.coef / r.scale[j])
    assert r.path[0]["columns"] == 0 and r.path[-1]["columns"] == 5
    tables = r.tables()
    assert set(tables) == {"surrogate", "surrogate_path"}
    assert tables["surrogate"]["column"][0] == "const"
    assert r.summary()["sentence"].startswith("This network behaves like a logistic regression")


def test_one_layer_multinomial_coefficients():
    torch.manual_seed(1)
    lin = nn.Linear(4, 3)
    s = Subject(lin, (4,), classes=["x", "y", "z"])
    x = _data(4, n=900, f=4)
    r = surrogate(s, x, target_agreement=1.0)
    assert r.kind == "multinomial" and r.full["agreement"] > 0.99
    w = lin.weight.detach().double().numpy()
    w = w - w.mean(0)  # softmax is blind to a shift shared by every class
    expected = w * x.double().std(0, unbiased=False).numpy()
    np.testing.assert_allclose(r.full["coef"], expected, rtol=0.03, atol=0.03)
    assert r.full["coef"].shape == (3, 4)
    assert "class" in r.tables()["surrogate"]


def test_sign_network_needs_two_columns(sign_net):
    s, x = sign_net
    r = surrogate(s, x)
    assert r.reached and r.agreement >= 0.95
    assert {"a", "b"} <= set(r.columns) and len(r.columns) <= 3
    assert r.sentence().startswith(f"This network behaves like a logistic regression on {len(r.columns)} columns (")
    assert "held-out rows" in r.sentence()
    # a and b carry about equal weight and the same sign
    ca, cb = (r.coef[r.columns.index(c)] for c in "ab")
    assert ca > 0 and cb > 0 and 0.6 < ca / cb < 1.6
    sizes = [e["columns"] for e in r.path]
    assert sizes == sorted(sizes) and sizes[0] == 0 and sizes[-1] == 6


def test_xor_network_has_no_logistic_surrogate(xor_net):
    s, x, y = xor_net
    assert (s.predict(x) == y).float().mean() > 0.9  # the network did learn XOR
    r = surrogate(s, x)
    assert not r.reached
    assert max(e["agreement"] for e in r.path) < 0.75
    assert r.sentence().startswith("No logistic regression on these columns imitates it well: at best")
    assert r.log_loss > r.network_entropy + 0.2


def test_regression_surrogate_r2():
    x = _data(2)
    y = (2 * x[:, 0] - x[:, 2] + 0.1 * torch.tanh(x[:, 1]))[:, None]
    model = _mlp(x, y, 1, nn.functional.mse_loss, steps=400)
    s = Subject(model, (6,), columns=COLUMNS, task="regression")
    r = surrogate(s, x, target_agreement=0.95)
    assert r.kind == "linear" and r.reached and r.r2 >= 0.95
    assert {"a", "c"} <= set(r.columns) and len(r.columns) <= 3
    assert np.isnan(r.agreement)
    assert "R² = " in r.sentence() and r.sentence().startswith("This network behaves like a linear regression")
    assert r.summary()["agreement"] is None
    # a square is not linear
    y2 = (x[:, 0] ** 2)[:, None]
    s2 = Subject(_mlp(x, y2, 1, nn.functional.mse_loss, steps=400), (6,), columns=COLUMNS, task="regression")
    r2 = surrogate(s2, x)
    assert not r2.reached and r2.r2 < 0.3 and r2.sentence().startswith("No linear regression")


def test_small_data_is_not_held_out(sign_net):
    s, x = sign_net
    r = surrogate(s, x[:30])
    assert not r.held_out and "fitted to" in r.sentence()
    with pytest.raises(OptionError):
        surrogate(s, x, target_agreement=1.5)


# ----------------------------------------------------------------------------------- local linear


def test_local_linear_of_a_linear_model_is_exact():
    lin = nn.Linear(6, 1).double()
    mean, std = torch.arange(6.0), torch.linspace(0.5, 3, 6)
    s = Subject(lin, (6,), mean=mean, std=std, columns=COLUMNS, task="regression")
    x = _data(5, n=50).double() * 2 + 1
    mu = torch.full((6,), 0.5)
    snap = _snapshot(lin)
    r = local_linear(s, x, mean=mu.numpy(), ids=[f"r{i}" for i in range(50)])
    _untouched(lin, snap)
    w = lin.weight.detach()[0] / std.double()  # slope per raw unit
    np.testing.assert_allclose(r.values, (w * (x - mu.double())).numpy(), rtol=1e-10, atol=1e-12)
    # the default point is the rows' own mean, and then the values sum to f(x) - f(mean)
    r0 = local_linear(s, x)
    fx = s.forward(x)[:, 0].detach()
    fm = s.forward(x.mean(0, keepdim=True))[0, 0].detach()
    np.testing.assert_allclose(r0.values.sum(1), (fx - fm).numpy(), atol=1e-10)
    summ = r0.summary()
    assert all(c["sign_stability"] == 1.0 for c in summ["columns"])
    t = r.tables()
    assert t["local_linear"]["id"][0] == "r0" and set(t) == {"local_linear", "local_linear_columns"}
    assert r.rows()[0]["id"] == "r0"


def test_local_linear_classifier_targets(sign_net):
    s, x = sign_net
    r = local_linear(s, x[:40])
    assert r.values.shape == (40, 6) and len(r.target) == 40
    top = [c["column"] for c in r.summary()["columns"][:2]]
    assert set(top) == {"a", "b"}
    fixed = local_linear(s, x[:40], target="pos")
    assert all(t == "class pos" for t in fixed.target)
    with pytest.raises(OptionError):
        local_linear(s, x[:5], ids=[1, 2])


# ----------------------------------------------------------------------------------- hidden units


def test_hidden_units_match_the_linear():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    mean, std = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.5, 1.0, 2.0, 4.0])
    s = Subject(model, (4,), mean=mean, std=std, columns=["age", "fare", "x", "y"], classes=["n", "y"])
    snap = _snapshot(model)
    h = hidden_units(s)
    _untouched(model, snap)
    w, b = model[0].weight.detach().double(), model[0].bias.detach().double()
    assert h.layer == "0"
    np.testing.assert_allclose(h.weights, w.numpy())
    np.testing.assert_allclose(h.bias, b.numpy())
    np.testing.assert_allclose(h.weights_original, (w / std.double()).numpy())
    raw = torch.randn(7, 4, dtype=torch.float64) * 3
    first = s.activations(raw.float(), ["0"])["0"].double()
    np.testing.assert_allclose(raw.numpy() @ h.weights_original.T + h.bias_original, first.numpy(), atol=1e-5)
    # top columns: largest |weight| first, with sign
    j = int(np.argmax(np.abs(h.weights[3])))
    assert h.top_columns[3][0] == (s.columns[j], pytest.approx(h.weights[3, j]))
    assert len(h.top_columns[3]) == 3
    sent = h.summary()["sentences"][3]
    assert sent.startswith("0:3 ") and repr(s.columns[j]) in sent
    assert h.images()["hidden_weights"].size[1] >= 5
    assert set(h.tables()) == {"hidden_weights", "hidden_units"}
    # without normalization there are no original units
    assert hidden_units(Subject(model, (4,), classes=["n", "y"])).weights_original is None


def test_hidden_unit_sentence():
    lin = nn.Linear(3, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.2, -0.8, 0.1]]))
    h = hidden_units(Subject(nn.Sequential(lin, nn.ReLU(), nn.Linear(1, 1)), (3,), columns=["age", "fare", "z"],
                             task="regression"))
    assert h.sentences()[0] == "0:0 weighs 'age' (+1.2) and 'z' (+0.1) against 'fare' (-0.8)"


# ----------------------------------------------------------------------------------- errors


class _Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def test_errors_for_images_and_non_linear_first_layers():
    s = Subject(_Cnn(), (1, 8, 8), classes=["a", "b", "c"])
    x = torch.rand(10, 1, 8, 8)
    with pytest.raises(UnsupportedError):
        surrogate(s, x)
    with pytest.raises(UnsupportedError):
        local_linear(s, x)
    with pytest.raises(UnsupportedError):
        hidden_units(s)
    bn = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(UnsupportedError, match="BatchNorm1d"):
        hidden_units(Subject(bn, (4,), classes=["a", "b"]))

    class Squared(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            return self.lin(x ** 2)

    with pytest.raises(UnsupportedError, match="does not read the input columns"):
        hidden_units(Subject(Squared(), (3,), classes=["a", "b"]))
    multi = nn.Sequential(nn.Linear(3, 2), nn.Sigmoid())
    with pytest.raises(UnsupportedError, match="multi-label"):
        surrogate(Subject(multi, (3,), classes=["a", "b"]), torch.randn(20, 3))
