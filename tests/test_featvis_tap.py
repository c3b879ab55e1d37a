"""The forward pass of a feature-visualization step computes only what the objective reads: it
stops at the layer, and there computes only each image's own channel when that is all it reads."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from neuronscope import Subject
from neuronscope.analyses.featvis import objectives as O
from neuronscope.analyses.featvis import render
from neuronscope.analyses.featvis.render import _picks
from neuronscope.analyses.featvis import tap as tap_module
from neuronscope.analyses.featvis.tap import Tap, can_pick, picked_forward

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = {
    "conv2d": (lambda: nn.Conv2d(3, 8, 3, padding=1), (3, 12, 12)),
    "strided, dilated, no bias": (lambda: nn.Conv2d(3, 6, 3, stride=2, dilation=2, bias=False), (3, 13, 11)),
    "grouped": (lambda: nn.Conv2d(8, 12, 3, padding=1, groups=4), (8, 9, 9)),
    "depthwise": (lambda: nn.Conv2d(6, 6, 5, padding=2, groups=6), (6, 10, 10)),
    "reflect padding": (lambda: nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect"), (3, 8, 8)),
    "circular padding": (lambda: nn.Conv2d(3, 5, 3, padding=2, padding_mode="circular"), (3, 8, 8)),
    "'same' padding": (lambda: nn.Conv2d(3, 5, 4, padding="same"), (3, 9, 9)),
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, padding=1), (4, 20)),
    "conv3d": (lambda: nn.Conv3d(2, 4, 3, padding=1), (2, 5, 6, 7)),
    "linear": (lambda: nn.Linear(5, 7), (5,)),
}


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@pytest.mark.parametrize("name", list(LAYERS))
def test_picked_forward_is_the_layers_own_channel_and_its_gradient(name):
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = make()
    n_out = layer.weight.shape[0]
    channels = torch.tensor([0, n_out - 1, 2, 2, 1])
    x = torch.randn(len(channels), *shape, requires_grad=True)
    full = layer(x)
    rows = torch.arange(len(channels))
    want = full[rows, channels]
    got = picked_forward(layer, x, channels)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    weights = torch.randn(want.shape)
    (gw,) = torch.autograd.grad((want * weights).sum(), x)
    (gg,) = torch.autograd.grad((got * weights).sum(), x)
    torch.testing.assert_close(gg, gw, rtol=1e-5, atol=1e-5)


def test_picked_forward_declines_a_batch_it_was_not_given_channels_for():
    layer = nn.Conv2d(3, 4, 3)
    assert picked_forward(layer, torch.randn(3, 3, 8, 8), torch.tensor([0, 1])) is None
    assert picked_forward(layer, torch.randn(3, 8, 8), torch.tensor([0, 1, 2])) is None  # unbatched
    # On a sequence (B, T, F) a unit is read along T (dimension 1), not along the Linear's features.
    assert picked_forward(nn.Linear(5, 7), torch.randn(3, 4, 5), torch.tensor([0, 1, 2])) is None


class WeightStandardizedConv(nn.Conv2d):
    def forward(self, x):
        w = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class Doubled(nn.Module):
    def forward(self, w):
        return 2 * w


def test_only_plain_layers_without_anyone_elses_hooks_are_picked():
    assert can_pick(nn.Conv2d(3, 4, 3)) and can_pick(nn.Linear(3, 4))
    assert not can_pick(WeightStandardizedConv(3, 4, 3))  # a subclass may compute something else
    hooked = nn.Conv2d(3, 4, 3)
    hooked.register_forward_hook(lambda m, i, o: o * 2)
    assert not can_pick(hooked)
    pre = nn.Conv2d(3, 4, 3)
    pre.register_forward_pre_hook(lambda m, i: (i[0] * 2,))
    assert not can_pick(pre)
    patched = nn.Conv2d(3, 4, 3)
    patched.forward = lambda x: nn.Conv2d.forward(patched, x) + 1
    assert not can_pick(patched)
    param = nn.Conv2d(3, 4, 3)
    parametrize.register_parametrization(param, "weight", Doubled())
    assert not can_pick(param)
    assert not can_pick(nn.ReLU()) and not can_pick(nn.BatchNorm2d(3))


def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1, groups=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


def picked_layers(subject, objective, batch=None):
    """Which layers one pass of a Tap set up as render sets it up computed only in part."""
    batch = batch or objective.n
    target = torch.arange(objective.n).repeat_interleave(batch // objective.n)
    x = torch.rand(batch, *subject.input_shape)
    with subject.borrowed(), Tap(subject, objective.layers, needs_output=objective.needs_output,
                                 picks=_picks(objective, target)) as tap:
        ctx = tap.context(x, target, target, "logits")
        objective(ctx)
    return set(ctx.picked)


def test_a_layer_is_picked_only_when_the_objective_reads_one_channel_per_image_there():
    s = Subject(cnn(), (3, 10, 10))
    assert picked_layers(s, O.channel("2", range(6))) == {"2"}
    assert picked_layers(s, O.neuron("2", [1, 4], [(2, 3), (5, 5)])) == {"2"}
    assert picked_layers(s, O.channel("2", 3), batch=4) == {"2"}  # one target, replicas
    assert picked_layers(s, O.channel("2", range(6)) - 0.5 * O.channel("2", range(6))) == {"2"}
    assert picked_layers(s, O.interpolate(O.channel("2", 1), O.channel("2", 1), 4)) == {"2"}
    assert picked_layers(s, O.channel("6", range(3))) == {"6"}  # a linear layer too
    # Reading more than one channel per image, or another layer, or the output: the whole layer.
    assert picked_layers(s, O.channel("2", range(6)) + O.diversity("2")) == set()
    assert picked_layers(s, O.interpolate(O.channel("2", 1), O.channel("2", 4), 4)) == set()
    assert picked_layers(s, O.channel("2", range(6)) + O.channel("2", [5, 4, 3, 2, 1, 0])) == set()
    assert picked_layers(s, O.layer("2")) == set()
    assert picked_layers(s, O.direction("2", torch.ones(6))) == set()
    assert picked_layers(s, O.channel("2", range(3)) + O.channel("0", range(3))) == set()
    assert picked_layers(s, O.class_logit(range(3))) == set()
    assert picked_layers(s, O.channel("1", range(6))) == set()  # a ReLU computes all its channels


def test_a_picked_render_is_the_whole_layer_render_and_leaves_no_hook_behind(monkeypatch):
    model = cnn()
    s = Subject(model, (3, 12, 12), mean=0.5, std=0.25)
    calls = []

    def counted(module, x, channels):
        calls.append(len(channels))
        return picked_forward(module, x, channels)
    monkeypatch.setattr(tap_module, "picked_forward", counted)
    for obj in (O.channel("2", range(6)), O.neuron("2", [0, 3, 5], [(1, 1), (6, 6), (10, 2)]),
                -O.channel("0", [1, 2]), O.channel("6", range(3))):
        calls.clear()
        a = render(s, obj, steps=12, progress=False)
        assert len(calls) == 12 + 2  # every step, the start and the final evaluation
        b = render(s, obj, steps=12, pick=False, progress=False)
        assert len(calls) == 14
        np.testing.assert_allclose(a.values, b.values, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.history, b.history, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.images, b.images, atol=1e-4)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


class SharedConv(nn.Module):
    """One conv called twice: its addresses are conv#0 and conv#1."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(torch.relu(self.conv(x)))


def test_the_second_call_of_a_shared_layer_is_picked_at_that_call():
    s = Subject(SharedConv(), (3, 8, 8))
    x = torch.rand(3, 3, 8, 8)
    full = s.activations(x, ["conv#0", "conv#1"])
    for address in ("conv#0", "conv#1"):
        obj = O.channel(address, [2, 0, 1])
        target = torch.arange(3)
        with s.borrowed(), Tap(s, obj.layers, needs_output=False, picks=_picks(obj, target)) as tap:
            ctx = tap.context(x, target, target, "logits")
        assert set(ctx.picked) == {address}
        want = full[address][torch.arange(3), torch.tensor([2, 0, 1])].mean((1, 2))
        torch.testing.assert_close(obj(ctx), want.to(torch.float32), rtol=1e-5, atol=1e-6)
