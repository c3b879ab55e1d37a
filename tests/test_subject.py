"""Subject: layers, unit addresses, hooks, outputs, and the model left exactly as it was."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from neuronscope import Subject, parse_unit
from neuronscope.errors import InputShapeError, NeuronscopeError, UnitOutOfRangeError, UnknownLayerError, UnsupportedError
from neuronscope.units import AddressError


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(4, 6, 3), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        return self.softmax(self.fc(self.pool(self.features(x)).flatten(1)))


class TupleBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 5)

    def forward(self, x):
        y = self.lin(x)
        return y, y.sum(1)


class Reuser(nn.Module):
    """One ReLU module and one Linear called twice; a block returning a tuple; a dict output."""

    def __init__(self):
        super().__init__()
        self.block = TupleBlock()
        self.shared = nn.Linear(5, 5)
        self.relu = nn.ReLU()
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        h, _ = self.block(x)
        h = self.relu(self.shared(h))
        h = self.relu(self.shared(h) - 1.0)
        return {"logits": self.head(h), "aux": h}


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return SmallCNN()


def test_layers_listed_in_forward_order_with_shapes_and_params(cnn):
    s = Subject(cnn, (3, 8, 8))
    names = [l.name for l in s.layers]
    assert names == ["features", "features.0", "features.1", "features.2", "features.3", "pool", "fc", "softmax"]
    info = s.layer("features.2")
    assert info.output_shape == (6, 6, 6) and info.params == 4 * 6 * 9 + 6 and info.type == "Conv2d"
    assert s.layer("features").params == sum(p.numel() for p in cnn.features.parameters())
    assert not s.layer("features").is_leaf


def test_unknown_layer_suggests_close_names(cnn):
    s = Subject(cnn, (3, 8, 8))
    with pytest.raises(UnknownLayerError, match=r"Did you mean 'features.0'") as e:
        s.resolve("feature.0:1")
    assert "neuronscope layers" in str(e.value)


def test_unit_out_of_range_states_the_range(cnn):
    s = Subject(cnn, (3, 8, 8))
    with pytest.raises(UnitOutOfRangeError, match=r"4 channels: use 0\.\.3"):
        s.resolve("features.0:4")
    with pytest.raises(UnitOutOfRangeError, match=r"x must be in 0\.\.5"):
        s.resolve("features.2:1@0,6")
    with pytest.raises(UnitOutOfRangeError, match="has 3 units: use 0..2"):
        s.resolve("fc:3")
    assert str(s.resolve("features.2:5@5,0")) == "features.2:5@5,0"
    assert s.resolve("fc:2").channel == 2


def test_address_syntax():
    u = parse_unit("block.conv#1:12@3,4")
    assert (u.module, u.call, u.channel, u.position) == ("block.conv", 1, 12, (3, 4))
    assert str(u) == "block.conv#1:12@3,4" and u.layer == "block.conv#1"
    assert parse_unit("conv3:nmf3").direction == "nmf3"
    for bad in ["conv3:abc", "conv3@1,2", "", "a:1@x"]:
        with pytest.raises(AddressError):
            parse_unit(bad)


def test_inplace_relu_does_not_corrupt_captured_preactivation(cnn):
    s = Subject(cnn, (3, 8, 8))
    x = torch.randn(4, 3, 8, 8)
    acts = s.activations(x, ["features.0", "features.1"])
    expected = cnn.features[0](x)
    assert torch.allclose(acts["features.0"], expected, atol=1e-6)
    assert (acts["features.0"] < 0).any(), "pre-activation must keep its negative values"
    assert torch.allclose(acts["features.1"], expected.clamp_min(0), atol=1e-6)


def test_reused_modules_are_addressed_per_call_and_never_mixed():
    torch.manual_seed(0)
    m = Reuser()
    s = Subject(m, (5,), output="logits")
    names = [l.name for l in s.layers]
    assert "shared#0" in names and "shared#1" in names and "relu#1" in names and "shared" not in names
    with pytest.raises(UnknownLayerError, match="called 2 times"):
        s.resolve("shared:0")
    x = torch.randn(3, 5)
    acts = s.activations(x, ["shared#0", "shared#1", "relu#1", "block"])
    h = m.block.lin(x)
    h0 = m.shared(h)
    h1 = m.shared(torch.relu(h0))
    assert torch.allclose(acts["shared#0"], h0, atol=1e-6)
    assert torch.allclose(acts["shared#1"], h1, atol=1e-6)
    assert torch.allclose(acts["relu#1"], torch.relu(h1 - 1.0), atol=1e-6)
    assert torch.allclose(acts["block"], h, atol=1e-6), "a tuple output is read at its first tensor"
    assert "element 0 of a tuple" in s.layer("block").note


def test_model_output_selection_from_dict():
    m = Reuser()
    with pytest.raises(NeuronscopeError, match="--output KEY"):
        Subject(m, (5,)).layers
    with pytest.raises(NeuronscopeError, match="Did you mean 'logits'"):
        Subject(m, (5,), output="logit").layers
    s = Subject(m, (5,), output="logits")
    assert s.output_dim == 2 and s.task == "classification"


def test_final_softmax_is_recognised_and_logits_read_before_it(cnn):
    s = Subject(cnn, (3, 8, 8), classes=["a", "b", "c"])
    assert s.squash == "softmax" and s.final_layer() == "fc"
    x = torch.randn(2, 3, 8, 8)
    z = s.logits(x)
    expected = cnn.fc(cnn.pool(cnn.features(x)).flatten(1))
    assert torch.allclose(z, expected, atol=1e-6)
    assert torch.allclose(s.probabilities(x), torch.softmax(expected, 1), atol=1e-6)
    assert s.default_layers() == ["features.1", "features.3", "fc"]


def test_regression_and_sigmoid_outputs():
    reg = Subject(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)), (4,))
    assert reg.task == "regression" and reg.classes is None
    with pytest.raises(UnsupportedError, match="regression"):
        reg.probabilities(torch.zeros(1, 4))
    binary = Subject(nn.Sequential(nn.Linear(4, 1), nn.Sigmoid()), (4,))
    assert binary.task == "classification" and binary.squash == "sigmoid" and binary.classes == ["0", "1"]
    p = binary.probabilities(torch.randn(5, 4))
    assert p.shape == (5, 2) and torch.allclose(p.sum(1), torch.ones(5, dtype=p.dtype))


def test_functional_activations_read_pre_activation():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(F.relu(self.a(x)))

    assert Subject(Functional(), (3,)).default_layers() == ["a", "b"]


def test_model_left_exactly_as_it_was(cnn):
    cnn.train()
    cnn.fc.weight.requires_grad_(False)
    before = copy.deepcopy(cnn.state_dict())
    flags = [m.training for m in cnn.modules()]
    grads = [p.requires_grad for p in cnn.parameters()]
    s = Subject(cnn, (3, 8, 8), mean=0.5, std=0.25)
    x = torch.rand(3, 3, 8, 8, requires_grad=True)
    s.layers
    with s.capture(["features.1"]) as acts:
        out = s.logits(x)
    (out.sum() + acts["features.1"].sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0, "input gradients still flow"
    s.activations(x.detach(), s.default_layers())
    assert [m.training for m in cnn.modules()] == flags
    assert [p.requires_grad for p in cnn.parameters()] == grads
    assert all(p.grad is None for p in cnn.parameters()), "nothing accumulated into the user's .grad"
    for k, v in cnn.state_dict().items():
        assert torch.equal(v, before[k])
    for m in cnn.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks


def test_normalization_is_applied(cnn):
    s = Subject(cnn, (3, 8, 8), mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 2.0])
    x = torch.rand(2, 3, 8, 8)
    xn = (x - torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)) / torch.tensor([0.5, 0.5, 2.0]).view(3, 1, 1)
    assert torch.allclose(s.forward(x), cnn.eval()(xn), atol=1e-6)
    with pytest.raises(InputShapeError, match="give 1 or 3"):
        Subject(cnn, (3, 8, 8), mean=[0.1, 0.2])


def test_wrong_input_shape_names_the_expected_shape(cnn):
    s = Subject(cnn, (3, 8, 8))
    with pytest.raises(InputShapeError, match=r"expected \(N, 3, 8, 8\).*add a batch dimension"):
        s.forward(torch.zeros(3, 8, 8))
    with pytest.raises(InputShapeError, match="The model failed on an input of shape"):
        Subject(nn.Linear(4, 2), (5,)).layers


def test_float64_model():
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    s = Subject(m, (3,))
    out = s.forward(torch.rand(2, 3))
    assert out.dtype == torch.float64
    assert s.activations(torch.rand(2, 3), ["1"])["1"].dtype == torch.float64


def test_fixed_batch_models_are_padded_and_trimmed(cnn):
    calls = []

    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = cnn

        def forward(self, x):
            calls.append(x.shape[0])
            assert x.shape[0] == 4, "exported at batch 4"
            return self.inner(x)

    s = Subject(Fixed(), (3, 8, 8), fixed_batch=4)
    x = torch.rand(6, 3, 8, 8)
    with s.capture(["inner.features.1"]) as acts:
        out = s.forward(x)
    assert out.shape[0] == 6 and acts["inner.features.1"].shape[0] == 6
    assert torch.allclose(out, cnn.eval()(x), atol=1e-6)
    assert set(calls) == {4}


def test_torchscript_layers_refused_with_advice(cnn):
    scripted = torch.jit.script(cnn)
    s = Subject(scripted, (3, 8, 8), hookable=False)
    assert s.forward(torch.rand(2, 3, 8, 8)).shape == (2, 3)
    with pytest.raises(UnsupportedError, match="file.py:factory"):
        s.resolve("features.0:1")
    with pytest.raises(UnsupportedError, match="TorchScript"):
        s.activations(torch.rand(1, 3, 8, 8), ["fc"])


def test_device_copy_leaves_user_model_in_place(cnn):
    if not torch.cuda.is_available():
        with pytest.raises(NeuronscopeError, match="no CUDA"):
            Subject(cnn, (3, 8, 8), device="cuda")
    else:  # pragma: no cover - exercised on GPU machines
        s = Subject(cnn, (3, 8, 8), device="cuda")
        assert next(cnn.parameters()).device.type == "cpu" and s.device.type == "cuda"


def test_default_layers_see_through_batchnorm_to_the_activation():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2),
                      nn.Flatten(), nn.Linear(8, 3))
    # conv 0 is covered by ReLU 2; conv 3 has no activation module before the next layer: pre-activation.
    assert Subject(m, (1, 6, 6)).default_layers() == ["2", "3", "6"]
