"""Trust checks for attribution maps: model randomisation and deletion/insertion curves."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from neuronscope import Subject
from neuronscope.analyses.attribution.trust import (
    DeletionInsertion,
    RandomisationCheck,
    deletion_insertion,
    parameterised_layers,
    randomisation_check,
)
from neuronscope.errors import InputShapeError, OptionError

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- helpers
def gradient(subject, x, targets):
    """Plain gradient saliency: d output[target] / d x."""
    x = x.clone().requires_grad_(True)
    with subject.borrowed():
        out = subject.forward(x)
        picked = out[torch.arange(len(targets)), torch.as_tensor(targets)]
        (g,) = torch.autograd.grad(picked.sum(), x)
    return g


def edges(subject, x, targets):
    """An 'explanation' that never looks at the model: local differences of the input."""
    if x.ndim == 2:
        return (x - x.roll(1, dims=1)).abs()
    return (x - x.roll(1, dims=-1)).abs() + (x - x.roll(1, dims=-2)).abs()


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        x = self.relu(self.bn(self.conv1(x)))
        x = self.relu(self.conv2(x))  # the ReLU module is called twice
        return self.fc(x.flatten(1))


def cnn():
    model = SmallCNN()
    with torch.no_grad():  # non-trivial running statistics, as after training
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def inputs(shape, n=12, seed=0):
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {k: p.requires_grad for k, p in model.named_parameters()},
            {k: m.training for k, m in model.named_modules()})


def assert_untouched(model, before):
    state, grads, training = before
    after = model.state_dict()
    assert after.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(after[k], v), k
    assert {k: p.requires_grad for k, p in model.named_parameters()} == grads
    assert {k: m.training for k, m in model.named_modules()} == training
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks


# ----------------------------------------------------------------------------- randomisation
def test_gradient_passes_and_edge_detector_is_flagged_on_mlp():
    subject = Subject(mlp(), (24,))
    x = inputs((24,))
    targets = [0] * len(x)
    good = randomisation_check(subject, gradient, x, targets, method="gradient")
    assert isinstance(good, RandomisationCheck)
    assert good.mode == "cascade"
    assert good.layers == ["4", "2", "0"]
    assert len(good.correlations) == len(good.signed_correlations) == 3
    assert good.final == good.correlations[-1]
    assert abs(good.final) < 0.3 and not good.flagged
    assert good.n_inputs == 12 and good.method == "gradient"

    bad = randomisation_check(subject, edges, x, targets, method="edges")
    assert bad.flagged and bad.final == 1.0 and bad.correlations == [1.0, 1.0, 1.0]
    assert bad.signed_correlations[-1] == 1.0
    assert bad.entropy_ratio == pytest.approx(1.0)
    row = bad.row()
    assert json.loads(json.dumps(row)) == row
    assert row["flagged"] is True and row["layers_randomised"] == 3 and row["top_layer"] == "4"


def test_cnn_cascade_order_and_model_untouched():
    model = cnn()
    model.train()
    model.conv1.eval()  # mixed flags must come back exactly
    model.conv2.weight.requires_grad_(False)
    before = snapshot(model)
    subject = Subject(model, (3, 8, 8))
    x = inputs((3, 8, 8), n=8)
    targets = [1, 2, 3, 0, 1, 2, 3, 0]

    names = parameterised_layers(subject)
    assert names == ["fc", "conv2", "bn", "conv1"]  # output side first
    good = randomisation_check(subject, gradient, x, targets, max_cascade=4)
    assert good.mode == "cascade" and good.layers == names and len(good.correlations) == 4
    assert good.final < 0.5 and not good.flagged
    assert_untouched(model, before)

    bad = randomisation_check(subject, edges, x, targets, max_cascade=4)
    assert bad.flagged and bad.final == pytest.approx(1.0)
    assert_untouched(model, before)


def test_emprt_is_one_step_and_matches_the_end_of_the_cascade():
    subject = Subject(cnn(), (3, 8, 8))
    x = inputs((3, 8, 8), n=6)
    targets = [0, 1, 2, 3, 0, 1]
    emprt = randomisation_check(subject, gradient, x, targets, max_cascade=3)
    assert emprt.mode == "emprt" and len(emprt.correlations) == 1
    assert emprt.layers == ["fc", "conv2", "bn", "conv1"]
    assert emprt.entropy_ratio is not None and emprt.entropy_ratio > 0
    cascade = randomisation_check(subject, gradient, x, targets, mode="cascade", max_cascade=1)
    assert cascade.mode == "cascade" and len(cascade.correlations) == 4
    # each layer is seeded by its own name: the fully randomised models are the same
    assert cascade.final == pytest.approx(emprt.final)
    assert cascade.entropy_ratio == pytest.approx(emprt.entropy_ratio)


def test_layer_maps_of_shape_hw_are_accepted():
    subject = Subject(cnn(), (3, 8, 8))
    x = inputs((3, 8, 8), n=4)

    def pixel_gradient(subject, x, targets):
        return gradient(subject, x, targets).abs().sum(1)

    res = randomisation_check(subject, pixel_gradient, x, [0, 1, 2, 3], mode="emprt")
    assert res.mode == "emprt" and not res.flagged

    def wrong(subject, x, targets):
        return torch.zeros(len(x), 8)

    with pytest.raises(Exception, match="expected"):
        randomisation_check(subject, wrong, x, [0, 1, 2, 3])


def test_randomisation_is_deterministic_and_keeps_the_global_rng():
    subject = Subject(mlp(), (24,))
    x = inputs((24,), n=6)

    def noisy(subject, x, targets):  # a stochastic method: SmoothGrad-like
        return gradient(subject, x + 0.1 * torch.randn_like(x), targets)

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = randomisation_check(subject, noisy, x, [2] * 6, seed=5)
    assert torch.equal(torch.rand(3), expected)
    b = randomisation_check(subject, noisy, x, [2] * 6, seed=5)
    c = randomisation_check(subject, noisy, x, [2] * 6, seed=6)
    assert a.correlations == b.correlations and a.signed_correlations == b.signed_correlations
    assert a.entropy_ratio == b.entropy_ratio
    assert a.correlations != c.correlations


def test_randomisation_options():
    subject = Subject(mlp(), (24,))
    x = inputs((24,), n=2)
    with pytest.raises(OptionError, match="'auto', 'cascade', 'emprt'"):
        randomisation_check(subject, gradient, x, [0, 0], mode="layerwise")
    with pytest.raises(OptionError, match="max_cascade"):
        randomisation_check(subject, gradient, x, [0, 0], max_cascade=0)
    with pytest.raises(OptionError, match=r"\[-1, 1\]"):
        randomisation_check(subject, gradient, x, [0, 0], threshold=2)
    with pytest.raises(OptionError, match="seed"):
        randomisation_check(subject, gradient, x, [0, 0], seed=-1)
    with pytest.raises(OptionError, match="one per input"):
        randomisation_check(subject, gradient, x, [0])
    with pytest.raises(InputShapeError):
        randomisation_check(subject, gradient, x[:, :5], [0, 0])


# ----------------------------------------------------------------------------- deletion / insertion
def linear_score(w):
    def score(x, which=None):
        return (x * w).flatten(1).sum(1)
    return score


@pytest.mark.parametrize("shape", [(10,), (2, 5, 6)])
def test_linear_model_beats_random_and_endpoints_are_exact(shape):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(shape, generator=g)
    x = torch.rand((7, *shape), generator=g)
    score = linear_score(w)
    baseline = torch.zeros_like(x)
    res = deletion_insertion(score, x, w * x, baseline, steps=10, random_orders=3, batch_size=13)
    assert isinstance(res, DeletionInsertion)
    assert res.fractions.shape == (11,) and res.fractions[0] == 0 and res.fractions[-1] == 1
    assert res.deletion.shape == res.insertion.shape == (7, 11)
    sx, sb = score(x).double().numpy(), score(baseline).double().numpy()
    assert np.array_equal(res.deletion[:, 0], sx) and np.array_equal(res.deletion[:, -1], sb)
    assert np.array_equal(res.insertion[:, 0], sb) and np.array_equal(res.insertion[:, -1], sx)
    assert (res.deletion_auc < res.random_deletion_auc).all()
    assert (res.insertion_auc > res.random_insertion_auc).all()
    dg, ig = res.gains()
    assert (dg > 0).all() and (ig > 0).all()
    row = res.row(0)
    assert json.loads(json.dumps(row)) == row and row["deletion_gain"] > 0

    # batching does not change the curves
    again = deletion_insertion(score, x, w * x, baseline, steps=10, random_orders=3, batch_size=1000)
    np.testing.assert_allclose(again.deletion, res.deletion, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(again.random_insertion_auc, res.random_insertion_auc, rtol=1e-6, atol=1e-6)


def test_vector_deletion_curve_is_the_greedy_sum():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(10, generator=g)
    x = torch.rand((3, 10), generator=g)
    contrib = (w * x).double().numpy()
    res = deletion_insertion(linear_score(w), x, w * x, torch.zeros_like(x), steps=10, random_orders=0)
    ordered = -np.sort(-contrib, axis=1)
    expected = contrib.sum(1, keepdims=True) - np.concatenate([np.zeros((3, 1)), ordered.cumsum(1)], 1)
    np.testing.assert_allclose(res.deletion, expected, atol=1e-5)
    np.testing.assert_allclose(res.insertion, contrib.sum(1, keepdims=True) - expected, atol=1e-5)
    assert np.isnan(res.random_deletion_auc).all() and res.row(1)["deletion_gain"] is None


def test_hw_maps_and_a_shared_baseline():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(3, 4, 4, generator=g)
    x = torch.rand((4, 3, 4, 4), generator=g)
    mean = x.mean(0)
    pixel_map = (w * x).sum(1)  # (N, H, W), as a layer method gives
    a = deletion_insertion(linear_score(w), x, pixel_map, mean, steps=5)
    b = deletion_insertion(linear_score(w), x, w * x, mean.expand_as(x).clone(), steps=5)
    np.testing.assert_allclose(a.deletion, b.deletion, atol=1e-6)
    np.testing.assert_allclose(a.random_insertion_auc, b.random_insertion_auc, atol=1e-6)
    assert (a.deletion_auc < a.random_deletion_auc).all()


def test_deletion_options():
    w = torch.ones(4)
    x = torch.rand(2, 4)
    score = linear_score(w)
    with pytest.raises(OptionError, match="steps must be an integer >= 1"):
        deletion_insertion(score, x, x, torch.zeros_like(x), steps=0)
    with pytest.raises(OptionError, match="random_orders"):
        deletion_insertion(score, x, x, torch.zeros_like(x), random_orders=-1)
    with pytest.raises(OptionError, match="batch_size"):
        deletion_insertion(score, x, x, torch.zeros_like(x), batch_size=0)
    with pytest.raises(InputShapeError, match="maps"):
        deletion_insertion(score, x, x[:, :3], torch.zeros_like(x))
    with pytest.raises(InputShapeError, match="baseline"):
        deletion_insertion(score, x, x, torch.zeros(3))


class Block(nn.Module):
    """A container with a parameter of its own, and a Linear module called twice."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.scale = nn.Parameter(torch.tensor(1.5))
        self.lin = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(torch.relu(self.lin(torch.relu(self.lin(x * self.scale)))))


def test_containers_with_own_parameters_and_reused_modules():
    model = Block()
    before = snapshot(model)
    subject = Subject(model, (6,))
    assert parameterised_layers(subject) == ["head", "lin"]  # the root's own scale is left as is
    res = randomisation_check(subject, gradient, inputs((6,), n=5), [1] * 5)
    assert res.layers == ["head", "lin"] and len(res.correlations) == 2
    assert_untouched(model, before)

    outer = nn.Sequential(Block())  # now the block is a container with its own `scale`
    subject = Subject(outer, (6,))
    assert parameterised_layers(subject) == ["0.head", "0.lin", "0"]
    res = randomisation_check(subject, gradient, inputs((6,), n=5), [1] * 5)
    assert len(res.correlations) == 3 and not res.flagged


def test_rows_carry_the_input_they_come_from_so_targets_can_differ_per_input():
    """Two inputs explained for different outputs: each row is scored with its own input's target."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(2, 6, generator=g)  # output k = x . w[k]
    x = torch.randn(2, 6, generator=g)
    targets = torch.tensor([0, 1])

    def score(rows, which):
        return (rows * w[targets[which]]).sum(1)

    res = deletion_insertion(score, x, w[targets] * x, torch.zeros_like(x), steps=6, random_orders=1)
    assert res.deletion[:, 0] == pytest.approx((x * w[targets]).sum(1).numpy().astype(float))
    # the greedy curve of input 1 follows w[1], not w[0]
    contrib = (w[1] * x[1]).numpy().astype(float)
    assert res.deletion[1, -2] == pytest.approx(contrib[np.argsort(-contrib, kind="stable")[5:]].sum(), abs=1e-5)
