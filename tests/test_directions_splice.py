"""Splicing a reconstruction into a layer: the loss change, checked against direct computations."""

import re
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuronscope.analyses.directions.rows import from_rows, to_rows
from neuronscope.analyses.directions.splice import SpliceResult, splice_loss
from neuronscope.data import ArrayData
from neuronscope.errors import OptionError
from neuronscope.subject import Subject

pytestmark = pytest.mark.usefixtures("one_thread")

N, F_IN, H = 300, 4, 16


def blobs(n=N, seed=0):
    """Three Gaussian blobs in 4-D (overlapping a little, so the loss is not zero)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.5, size=(3, F_IN))
    y = rng.integers(0, 3, size=n)
    x = centres[y] + rng.normal(0, 1.0, size=(n, F_IN))
    return x.astype(np.float32), y.astype(np.int64)


def train(model, x, y, loss_fn, steps=150, lr=0.03):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return model


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """A trained 3-class MLP with in-place ReLUs, and its labelled data."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        fc1=nn.Linear(F_IN, H), relu1=nn.ReLU(inplace=True), fc2=nn.Linear(H, H),
        relu2=nn.ReLU(inplace=True), head=nn.Linear(H, 3)))
    x, y = blobs()
    train(model, x, y, F.cross_entropy)
    path = tmp_path_factory.mktemp("splice") / "blobs.npz"
    np.savez(path, x=x, y=y)
    return model, ArrayData(path, input_shape=(F_IN,)), torch.from_numpy(x), torch.from_numpy(y)


def acts_of(subject, x, layer):
    with torch.no_grad(), subject.capture([layer]) as cap:
        subject.forward(x)
    return cap[layer]


def test_identity_reconstruction_changes_nothing(mlp):
    model, data, x, y = mlp
    subject = Subject(model, (F_IN,))
    for layer in ("relu2", "fc1"):  # fc1 feeds an in-place ReLU
        r = splice_loss(subject, data, layer, lambda a: a, limit=None)
        assert isinstance(r, SpliceResult) and r.layer == layer and r.n == N
        assert r.loss_kind == "cross-entropy"
        assert abs(r.spliced_loss - r.clean_loss) <= 1e-6
        assert r.recovered == pytest.approx(1.0, abs=1e-9)
        assert r.agreement == 1.0 and r.kl == pytest.approx(0.0, abs=1e-9)
        assert r.accuracy_spliced == r.accuracy_clean
        # The clean numbers are the model's own cross-entropy and accuracy.
        with torch.no_grad():
            z = model(x)
        assert r.clean_loss == pytest.approx(float(F.cross_entropy(z, y)), rel=1e-5)
        assert r.accuracy_clean == pytest.approx(float((z.argmax(1) == y).float().mean()))
        assert r.accuracy_clean > 0.8  # trained: the ablations below have something to lose
        assert r.mean_ablated_loss > r.clean_loss + 0.3 and r.zero_ablated_loss > r.clean_loss + 0.3


def test_mean_ablation_is_the_model_on_the_mean_activation(mlp):
    model, data, x, y = mlp
    subject = Subject(model, (F_IN,))
    r = splice_loss(subject, data, "relu1", lambda a: a, limit=None, batch_size=37)
    with torch.no_grad():
        h = torch.relu(model.fc1(x))
        z_mean = model.head(torch.relu(model.fc2(h.mean(0, keepdim=True)))).expand(N, -1)
        z_zero = model.head(torch.relu(model.fc2(torch.zeros_like(h))))
        z = model(x)
    assert r.mean_ablated_loss == pytest.approx(float(F.cross_entropy(z_mean, y)), rel=1e-5)
    assert r.zero_ablated_loss == pytest.approx(float(F.cross_entropy(z_zero, y)), rel=1e-5)
    kl = F.kl_div(F.log_softmax(z_mean, 1), F.log_softmax(z, 1), log_target=True, reduction="batchmean")
    assert r.kl_mean_ablated == pytest.approx(float(kl), rel=1e-5)
    assert r.agreement_mean_ablated == pytest.approx(float((z_mean.argmax(1) == z.argmax(1)).float().mean()))


def test_reconstructing_as_mean_or_zeros_equals_the_ablation_rows(mlp):
    model, data, x, _ = mlp
    subject = Subject(model, (F_IN,))
    # fc1's output goes through an in-place ReLU, which must not overwrite the caller's tensor.
    mean = acts_of(subject, x, "fc1").mean(0)
    kept = mean.clone()
    r = splice_loss(subject, data, "fc1", lambda a: mean.expand_as(a), limit=None)
    assert torch.equal(mean, kept)
    assert r.spliced_loss == pytest.approx(r.mean_ablated_loss, abs=1e-5)
    assert r.recovered == pytest.approx(0.0, abs=1e-4)
    assert r.agreement == pytest.approx(r.agreement_mean_ablated)
    r = splice_loss(subject, data, "fc1", torch.zeros_like, limit=None)
    assert r.spliced_loss == r.zero_ablated_loss
    assert r.kl == r.kl_zero_ablated and r.accuracy_spliced == r.accuracy_zero_ablated
    table = r.tables()["splice"]
    assert table["variant"] == ["clean", "reconstruction", "mean-ablated", "zero-ablated"]
    assert table["loss"][1] == table["loss"][3] and table["agreement"][0] == 1.0
    assert r.images() == {}


def pca_reconstruct(acts: torch.Tensor, k: int):
    """Keep the top-k principal components of the rows (positions x channels) of ``acts``."""
    rows = to_rows(acts).double()
    mu = rows.mean(0)
    _, _, vh = torch.linalg.svd(rows - mu, full_matrices=False)
    v = vh[:k].T

    def reconstruct(a):
        r = to_rows(a).double()
        return from_rows(((r - mu) @ v @ v.T + mu).to(a.dtype), a.shape)
    return reconstruct


def test_partial_pca_reconstruction_lies_between_clean_and_ablated(mlp):
    model, data, x, _ = mlp
    subject = Subject(model, (F_IN,))
    acts = acts_of(subject, x, "relu2")
    partial = splice_loss(subject, data, "relu2", pca_reconstruct(acts, 1), limit=None)
    assert partial.clean_loss < partial.spliced_loss < partial.mean_ablated_loss
    assert 0.0 < partial.recovered < 1.0
    full = splice_loss(subject, data, "relu2", pca_reconstruct(acts, H), limit=None)
    assert full.recovered == pytest.approx(1.0, abs=1e-4)
    summary = full.summary()
    assert summary["recovered"] == full.recovered and summary["loss_kind"] == "cross-entropy"
    assert "relu2" in summary["finding"] and "recovers" in summary["finding"]
    assert "predictions" in summary["finding"]
    print(partial.summary()["finding"])


@pytest.fixture(scope="module")
def conv(tmp_path_factory):
    """A trained conv net on 6x6 images: class 1 when the left half is brighter."""
    rng = np.random.default_rng(4)
    x = rng.random((200, 1, 6, 6)).astype(np.float32)
    y = (x[:, 0, :, :3].mean((1, 2)) > x[:, 0, :, 3:].mean((1, 2))).astype(np.int64)
    torch.manual_seed(1)
    model = nn.Sequential(OrderedDict(
        conv=nn.Conv2d(1, 6, 3, padding=1), relu=nn.ReLU(inplace=True), flat=nn.Flatten(),
        head=nn.Linear(6 * 36, 2)))
    train(model, x, y, F.cross_entropy, steps=120)
    path = tmp_path_factory.mktemp("splice") / "images.npz"
    np.savez(path, x=x, y=y)
    return model, ArrayData(path, input_shape=(1, 6, 6)), torch.from_numpy(x)


def test_conv_layer_spliced_through_rows(conv):
    model, data, x = conv
    subject = Subject(model, (1, 6, 6))
    acts = acts_of(subject, x, "conv")
    same = splice_loss(subject, data, "conv", lambda a: from_rows(to_rows(a), a.shape), limit=None)
    assert abs(same.spliced_loss - same.clean_loss) <= 1e-6 and same.recovered == pytest.approx(1.0)
    full = splice_loss(subject, data, "conv", pca_reconstruct(acts, 6), limit=None)
    assert full.recovered == pytest.approx(1.0, abs=1e-4)
    assert full.mean_ablated_loss > full.clean_loss + 0.3
    with pytest.raises(OptionError, match=re.escape("(64, 6, 6, 6)")):
        splice_loss(subject, data, "conv", lambda a: to_rows(a))


def assert_untouched(model, state, training, grads):
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [m.training for m in model.modules()] == training
    assert [p.requires_grad for p in model.parameters()] == grads
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_model_left_untouched_even_when_reconstruct_fails(mlp):
    model, data, _, _ = mlp
    model.train()
    model.relu1.eval()  # a mixed state must come back as it was
    state = {k: v.clone() for k, v in model.state_dict().items()}
    training = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    subject = Subject(model, (F_IN,))
    try:
        splice_loss(subject, data, "relu1", lambda a: 0.5 * a, limit=100)
        assert_untouched(model, state, training, grads)

        def boom(a):
            raise RuntimeError("reconstruction failed")
        with pytest.raises(RuntimeError, match="reconstruction failed"):
            splice_loss(subject, data, "relu1", boom)
        assert_untouched(model, state, training, grads)
        with pytest.raises(OptionError, match=re.escape("(64, 16)")):
            splice_loss(subject, data, "relu1", lambda a: a[:, :-1])
        assert_untouched(model, state, training, grads)
    finally:
        model.eval()


def test_bad_options(mlp, tmp_path):
    model, data, _, _ = mlp
    subject = Subject(model, (F_IN,))
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, F_IN), np.float32))
    with pytest.raises(OptionError, match="no examples"):
        splice_loss(subject, ArrayData(tmp_path / "empty.npz", input_shape=(F_IN,)), "relu1", lambda a: a)
    with pytest.raises(OptionError, match="limit"):
        splice_loss(subject, data, "relu1", lambda a: a, limit=0)


def test_without_labels_the_loss_is_kl(mlp, tmp_path):
    model, _, x, _ = mlp
    np.save(tmp_path / "x.npy", x.numpy())
    data = ArrayData(tmp_path / "x.npy", input_shape=(F_IN,))
    subject = Subject(model, (F_IN,))
    r = splice_loss(subject, data, "relu2", lambda a: 0.5 * a, limit=None)
    assert r.loss_kind == "kl" and r.clean_loss == 0.0 and r.accuracy_clean is None
    assert r.spliced_loss == pytest.approx(r.kl) and r.mean_ablated_loss == pytest.approx(r.kl_mean_ablated)
    assert 0.0 < r.spliced_loss and any("KL" in n for n in r.notes)
    assert r.recovered == pytest.approx(1 - r.kl / r.kl_mean_ablated)


def test_one_logit_binary_model_uses_binary_cross_entropy(mlp, tmp_path):
    _, _, x, y = mlp
    yb = (y == 0).long()
    torch.manual_seed(2)
    model = nn.Sequential(OrderedDict(fc=nn.Linear(F_IN, 8), relu=nn.ReLU(), head=nn.Linear(8, 1)))
    train(model, x.numpy(), yb.numpy(), lambda z, t: F.binary_cross_entropy_with_logits(z[:, 0], t.float()))
    np.savez(tmp_path / "b.npz", x=x.numpy(), y=yb.numpy())
    data = ArrayData(tmp_path / "b.npz", input_shape=(F_IN,))
    subject = Subject(model, (F_IN,), classes=["other", "zero"])
    r = splice_loss(subject, data, "relu", torch.zeros_like, limit=None)
    with torch.no_grad():
        z = model(x)[:, 0]
        z0 = model.head(torch.zeros(N, 8))[:, 0]
    assert r.loss_kind == "cross-entropy"
    assert r.clean_loss == pytest.approx(float(F.binary_cross_entropy_with_logits(z, yb.float())), rel=1e-5)
    assert r.spliced_loss == pytest.approx(float(F.binary_cross_entropy_with_logits(z0, yb.float())), rel=1e-5)
    assert r.accuracy_clean == pytest.approx(float(((z > 0).long() == yb).float().mean()))
    assert r.agreement == pytest.approx(float(((z > 0) == (z0 > 0)).float().mean()))


def test_regression_mse_against_targets_and_clean_output(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(120, F_IN)).astype(np.float32)
    t = (x[:, :1] * 2 - x[:, 1:2]).astype(np.float32)
    torch.manual_seed(3)
    model = nn.Sequential(OrderedDict(fc=nn.Linear(F_IN, 8), relu=nn.ReLU(), head=nn.Linear(8, 1)))
    np.savez(tmp_path / "r.npz", x=x, y=t[:, 0])
    subject = Subject(model, (F_IN,))
    r = splice_loss(subject, ArrayData(tmp_path / "r.npz", input_shape=(F_IN,)), "relu", torch.zeros_like)
    with torch.no_grad():
        z = model(torch.from_numpy(x))
        z0 = model.head(torch.zeros(120, 8))
    assert r.loss_kind == "mse" and r.agreement is None and r.kl is None
    assert r.clean_loss == pytest.approx(float(F.mse_loss(z, torch.from_numpy(t))), rel=1e-5)
    assert r.spliced_loss == pytest.approx(float(F.mse_loss(z0.expand(120, 1), torch.from_numpy(t))), rel=1e-5)
    np.save(tmp_path / "x.npy", x)
    r = splice_loss(subject, ArrayData(tmp_path / "x.npy", input_shape=(F_IN,)), "relu", torch.zeros_like)
    assert r.clean_loss == 0.0 and r.spliced_loss == pytest.approx(float(F.mse_loss(z0.expand(120, 1), z)), rel=1e-5)
    assert "predictions" not in r.summary()["finding"]


class Reuse(nn.Module):
    """One ReLU module called twice per forward pass: layers 'act#0' and 'act#1'."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(F_IN, H), nn.Linear(H, H), nn.Linear(H, 3)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


def test_reused_module_replaces_only_the_named_call(mlp):
    _, data, x, y = mlp
    torch.manual_seed(4)
    model = Reuse()
    subject = Subject(model, (F_IN,))
    with torch.no_grad():
        h1 = torch.relu(model.fc1(x))
        z_second = model.head(torch.zeros(N, H))
        z_first = model.head(torch.relu(model.fc2(torch.zeros_like(h1))))
    second = splice_loss(subject, data, "act#1", torch.zeros_like, limit=None)
    first = splice_loss(subject, data, "act#0", torch.zeros_like, limit=None)
    assert second.spliced_loss == pytest.approx(float(F.cross_entropy(z_second, y)), rel=1e-5)
    assert first.spliced_loss == pytest.approx(float(F.cross_entropy(z_first, y)), rel=1e-5)
    assert abs(splice_loss(subject, data, "act#1", lambda a: a).spliced_loss - second.clean_loss) <= 1e-6
