"""Activation maximization on vector inputs: closed forms for linear units, regions, errors."""

import numpy as np
import pytest
import torch
from torch import nn

from neuronscope import Subject
from neuronscope.analyses.featvis.objectives import Channel, ClassLogProb, Context, Neuron
from neuronscope.analyses.featvis.vector import Region, VectorResult, maximize, profile_svg
from neuronscope.errors import DataError, InputShapeError, NeuronscopeError, UnsupportedError

F = 5
MEAN = np.array([1.0, -2.0, 3.0, 0.5, 10.0])
STD = np.array([2.0, 0.5, 3.0, 1.0, 4.0])
LO = np.array([-1.0, -3.0, 0.0, 0.0, 5.0])
HI = np.array([2.0, 1.0, 6.0, 1.0, 20.0])


pytestmark = pytest.mark.usefixtures("one_thread")


def linear_subject(dtype=torch.float32):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(F, 3)).to(dtype)
    subject = Subject(model, (F,), mean=MEAN, std=STD)
    w_raw = model[0].weight.detach().double().numpy() / STD  # the unit is w_raw . x + const
    return subject, w_raw


def correlated_ball(radius=2.0):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(F, F))
    cov = a @ a.T + 0.5 * np.eye(F)
    return rng.normal(size=F), cov, radius


def mlp_subject(n_in=4, n_out=3, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(n_in, 16), nn.ReLU(), nn.Linear(16, n_out))
    return Subject(model, (n_in,))


def sample_inside(region, n, seed=1):
    rng = np.random.default_rng(seed)
    if region.kind == "box":
        return region.lo + (region.hi - region.lo) * rng.random((n, region.dim))
    d = rng.normal(size=(n, region.dim))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    u = d * region.radius * rng.random((n, 1)) ** (1 / region.dim)
    return region.mean + u @ np.linalg.cholesky(region.cov).T


def scores(subject, objective, x, target):
    with torch.no_grad():
        acts = subject.activations(torch.as_tensor(x), sorted(objective.layers))
        t = torch.as_tensor(target)
        return objective(Context(acts, None, t, t)).double().numpy()


# ---------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("objective", [Channel("0", [0, 1, 2]), Neuron("0", [0, 1, 2])])
def test_linear_unit_in_a_box_ends_on_the_corner_of_its_weights(objective):
    subject, w = linear_subject()
    res = maximize(subject, objective, Region.box(LO, HI), replicas=2, steps=150)
    expected = np.where(w > 0, HI, LO)[res.target]
    np.testing.assert_allclose(res.x, expected, rtol=1e-5)
    assert res.x.shape == (6, F) and res.target.tolist() == [0, 0, 1, 1, 2, 2]


def test_linear_unit_in_a_mahalanobis_ball_ends_at_the_closed_form():
    subject, w = linear_subject()
    mu, cov, r = correlated_ball()
    res = maximize(subject, Channel("0", [0, 1, 2]), Region.ball(mu, cov, r), replicas=2, steps=150)
    sw = w @ cov
    expected = (mu + r * sw / np.sqrt((sw * w).sum(1, keepdims=True)))[res.target]
    np.testing.assert_allclose(res.x, expected, rtol=1e-4)
    assert Region.ball(mu, cov, r).contains(res.x).all()


def test_float64_model_reaches_the_box_corner():
    subject, w = linear_subject(torch.float64)
    res = maximize(subject, Channel("0", [0, 1, 2]), Region.box(LO, HI), steps=100)
    np.testing.assert_allclose(res.x, np.where(w > 0, HI, LO), rtol=1e-5)
    assert res.values.dtype == np.float64


def test_negated_objective_minimizes():
    subject, w = linear_subject()
    obj = Channel("0", [0, 1, 2])
    up = maximize(subject, obj, Region.box(LO, HI), steps=100)
    down = maximize(subject, -obj, Region.box(LO, HI), steps=100)
    assert (up.values > up.start_values).all() and (down.values > down.start_values).all()
    np.testing.assert_allclose(down.x, np.where(w > 0, LO, HI), rtol=1e-5)
    lowered = scores(subject, obj, down.x, down.target)
    assert (lowered < -down.start_values).all() and (lowered < up.values).all()


# ---------------------------------------------------------------------------- non-linear models
@pytest.mark.parametrize("kind", ["box", "ball"])
def test_mlp_stays_in_the_region_and_beats_random_points(kind):
    subject = mlp_subject()
    data = np.random.default_rng(0).normal(size=(200, 4)) * [1.0, 2.0, 0.5, 3.0] + [0.0, 1.0, -1.0, 2.0]
    region = Region.from_data(data, kind=kind, radius=2.5)
    obj = Channel("2", [0, 1, 2])
    res = maximize(subject, obj, region, replicas=8, steps=150, seed=3)
    assert region.contains(res.x).all()
    assert (res.values >= res.start_values).all()
    pool = sample_inside(region, 2000)
    for t in range(3):
        best_random = scores(subject, obj, pool, np.full(len(pool), t)).max()
        assert res.values[res.target == t].max() >= best_random - 1e-6


def test_class_log_prob_on_a_two_class_model():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    subject = Subject(model, (3,), classes=["no", "yes"], columns=["age", "income", "debt"])
    region = Region.box([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    res = maximize(subject, ClassLogProb([0, 1]), region, steps=150)
    assert (res.values > res.start_values).all() and (res.values <= 0).all()
    assert res.columns == ["age", "income", "debt"]
    probs = subject.probabilities(torch.as_tensor(res.x, dtype=torch.float32))
    np.testing.assert_allclose(np.log(probs[[0, 1], [0, 1]].numpy()), res.values, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------- regions
def test_box_projection_is_a_clamp_and_contains_checks_bounds():
    region = Region.box(LO, HI)
    x = torch.tensor([[-5.0, 0.0, 7.0, 0.5, 30.0]], dtype=torch.float64)
    np.testing.assert_array_equal(region.project(x).numpy(), [[-1.0, 0.0, 6.0, 0.5, 20.0]])
    assert region.contains(region.project(x)).all() and not region.contains(x).any()


def test_ball_projection_lands_on_the_mahalanobis_sphere():
    mu, cov, r = correlated_ball(1.5)
    region = Region.ball(mu, cov, r)
    x = torch.as_tensor(mu + 50 * np.random.default_rng(2).normal(size=(4, F)))
    p = region.project(x).numpy()
    d = np.sqrt(np.einsum("bi,ij,bj->b", p - mu, np.linalg.inv(cov), p - mu))
    np.testing.assert_allclose(d, r, rtol=1e-9)
    inside = torch.as_tensor(mu[None] + 1e-3)
    np.testing.assert_allclose(region.project(inside).numpy(), inside.numpy(), rtol=1e-12)


def test_from_data_ball_survives_a_singular_covariance():
    base = np.random.default_rng(0).normal(size=(50, 2))
    X = np.column_stack([base, base[:, 0] + base[:, 1], np.ones(50)])  # collinear and constant columns
    region = Region.from_data(X, kind="ball", radius=2.0)
    assert region.contains(X.mean(0)) and region.contains(region.project(torch.as_tensor(X * 100))).all()
    box = Region.from_data(X)
    np.testing.assert_array_equal(box.lo, X.min(0))
    np.testing.assert_allclose(box.mean, X.mean(0))


def test_profile_table_and_svg():
    subject = mlp_subject()
    data = np.random.default_rng(0).normal(size=(100, 4))
    res = maximize(subject, Channel("2", 1), Region.from_data(data), steps=50)
    assert isinstance(res, VectorResult) and res.region_kind == "box" and res.columns == ["x0", "x1", "x2", "x3"]
    np.testing.assert_allclose(res.profile, (res.x - data.mean(0)) / data.std(0, ddof=1))
    table = res.table(0)
    assert [abs(z) for *_, z in table] == sorted((abs(z) for *_, z in table), reverse=True)
    svg = profile_svg(res, 0)
    assert svg.startswith("<svg") and svg.endswith("</svg>") and svg.count("<rect") == 4
    assert all(c in svg for c in res.columns) and f"{table[0][3]:+.2f}" in svg
    assert profile_svg(res, 0, top=2).count("<rect") == 2


# ---------------------------------------------------------------------------- mistakes
def test_region_of_the_wrong_size_is_refused():
    subject, _ = linear_subject()
    with pytest.raises(InputShapeError, match=r"3 columns but the model takes 5"):
        maximize(subject, Channel("0", 0), Region.box([0.0] * 3, [1.0] * 3))


def test_bad_regions_are_refused():
    mu, cov, _ = correlated_ball()
    for radius in (0.0, -1.0):
        with pytest.raises(DataError, match="radius must be a positive"):
            Region.ball(mu, cov, radius)
    with pytest.raises(DataError, match="radius must be a positive"):
        Region.from_data(np.random.default_rng(0).normal(size=(10, 2)), kind="ball", radius=0)
    with pytest.raises(InputShapeError, match=r"cov must be \(5, 5\)"):
        Region.ball(mu, cov[:3, :3], 1.0)
    with pytest.raises(DataError, match="lo <= hi"):
        Region.box([0.0, 2.0], [1.0, 1.0])
    with pytest.raises(NeuronscopeError, match="'box' or 'ball'"):
        Region.from_data(np.zeros((3, 2)), kind="sphere")


def test_image_models_are_pointed_to_the_image_renderer():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    subject = Subject(model, (1, 6, 6))
    with pytest.raises(UnsupportedError, match="image renderer"):
        maximize(subject, Channel("1", 0), Region.box([0.0], [1.0]))


def test_clipped_ball_keeps_every_column_in_its_observed_range():
    # Heavy-tailed data: the plain ball lets the linear unit's optimum leave the columns' range.
    rng = np.random.default_rng(4)
    data = np.exp(rng.normal(size=(300, F))) * [1.0, 5.0, 0.2, 10.0, 2.0]
    subject, w = linear_subject()
    obj = Channel("0", [0, 1, 2])
    plain = maximize(subject, obj, Region.from_data(data, kind="ball", radius=4.0), steps=100)
    clipped_region = Region.from_data(data, kind="ball", radius=4.0, clip=True)
    clipped = maximize(subject, obj, clipped_region, replicas=4, steps=100)
    lo, hi = data.min(0), data.max(0)
    outside = lambda x: ((x < lo - 1e-9) | (x > hi + 1e-9)).any(1)  # noqa: E731
    assert outside(plain.x).any(), "the test needs a case where the plain ball leaves the range"
    assert not outside(clipped.x).any()
    assert clipped_region.contains(clipped.x, tol=1e-3).all()
    # it is still the best point of the intersection it can find: no random point inside beats it
    pool = sample_inside(Region.from_data(data, kind="ball", radius=4.0), 4000)
    pool = pool[~outside(pool)]
    for t in range(3):
        best = scores(subject, obj, pool, np.full(len(pool), t)).max()
        assert clipped.values[clipped.target == t].max() >= best - 1e-6


def test_visualize_starts_vector_units_from_their_best_real_rows(tmp_path):
    """A ReLU unit off everywhere it starts (no gradient there) is still turned on: the search
    starts from the real rows that score highest and the warm-up uses the redirected ReLU."""
    import neuronscope as ns

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 2), nn.ReLU())
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 0.0, 0.0]]))
        model[0].bias.copy_(torch.tensor([-5.0, 0.0]))  # unit 0 fires only for rare large rows
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4))
    np.savez(tmp_path / "rows.npz", x=x.astype(np.float32), y=np.zeros(400, dtype=np.int64))
    data = ns.open_data(tmp_path / "rows.npz", input_shape=(4,))
    subject = Subject(model, (4,))
    real = np.maximum(x.sum(1) - 5.0, 0)
    assert (real > 0).mean() < 0.02  # off for almost every row
    v = ns.visualize(subject, "1:0", data=data, seeds=2, steps=60, progress=False)
    r = v["1:0"]
    # measured: 0.507, the unit's maximum inside the ball (sum of 4 columns at most 2.76 * 2 - 5);
    # the two firing rows lie outside the ball, so from a projected start the redirected warm-up
    # is what turns the unit on
    assert r.reachable and r.values[0] > 0.4
    assert r.real_max == pytest.approx(real.max(), rel=1e-5)
