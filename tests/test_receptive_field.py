"""Empirical receptive fields: gradient support on the model with identity activations and
average pools, checked against textbook sizes on tiny hand-built models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuronscope import Subject
from neuronscope.analyses.receptive_field import (
    Box,
    Linearized,
    draw_box,
    patch,
    receptive_field,
    receptive_fields,
)
from neuronscope.errors import UnitOutOfRangeError, UnsupportedError


def mode_stack():
    return torch.overrides._get_current_function_mode_stack()


def real_gradient_box(model: nn.Module, shape, output_at) -> Box | None:
    """The bounding box of the real input gradient (no linearization), for contrast."""
    x = torch.rand(1, *shape, generator=torch.Generator().manual_seed(0), requires_grad=True)
    output_at(model(x)).sum().backward()
    nz = torch.nonzero(x.grad[0].abs().sum(0))
    if len(nz) == 0:
        return None
    return Box(int(nz[:, 0].min()), int(nz[:, 1].min()), int(nz[:, 0].max()) + 1, int(nz[:, 1].max()) + 1)


class Dead(nn.Module):
    """conv -> act -> conv, where the first conv's output is hugely negative: the act is dead."""

    def __init__(self, act: nn.Module | None = None, fn=None):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(2, 3, 3)
        self.act = act if act is not None else nn.Identity()
        self.fn = fn
        self.conv2 = nn.Conv2d(3, 2, 3)
        with torch.no_grad():
            self.conv1.bias.fill_(-1000.0)

    def forward(self, x):
        h = self.act(self.conv1(x))
        if self.fn is not None:
            h = self.fn(h)
        return self.conv2(h)


# --- (1) plain chain: textbook sizes and strides ----------------------------------------------


def test_plain_chain_matches_textbook_sizes_and_translates_by_cumulative_stride():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3, stride=2), nn.Conv2d(2, 2, 3))
    subject = Subject(model, (1, 21, 21))
    # r_l = r_{l-1} + (k - 1) * jump_{l-1}: 3 (jump 1), 5 (jump 2), 9 (jump 2).
    assert receptive_field(subject, "0", (0, 0)) == Box(0, 0, 3, 3)
    assert receptive_field(subject, "1", (0, 0)) == Box(0, 0, 5, 5)
    assert receptive_field(subject, "2", (0, 0)) == Box(0, 0, 9, 9)
    assert subject.layer("2").output_shape == (2, 7, 7)
    positions = [(y, x) for y in range(7) for x in range(7)]
    boxes = receptive_fields(subject, "2", positions)
    assert boxes == [Box(2 * y, 2 * x, 2 * y + 9, 2 * x + 9) for y, x in positions]
    assert {(b.height(), b.width(), b.area()) for b in boxes} == {(9, 9, 81)}
    assert receptive_fields(subject, "1", [(3, 5)]) == [Box(6, 10, 11, 15)]


# --- (2) padding: clipped at the borders --------------------------------------------------------


def test_padded_fields_are_clipped_at_the_image_border():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    subject = Subject(model, (3, 10, 12))
    top_left, middle, bottom_right, right = receptive_fields(subject, "2", [(0, 0), (5, 5), (9, 11), (4, 11)])
    assert top_left == Box(0, 0, 3, 3)
    assert middle == Box(3, 3, 8, 8)
    assert bottom_right == Box(7, 9, 10, 12)
    assert right == Box(2, 9, 7, 12)


# --- (3) max-pool as average pool ----------------------------------------------------------------


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.MaxPool2d(2, 2, return_indices=True)], ids=["plain", "indices"])
def test_max_pool_counts_every_input_of_its_window(pool):
    class PoolThenConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = pool
            self.conv = nn.Conv2d(1, 1, 1)
            with torch.no_grad():
                self.conv.weight.fill_(1.0)

        def forward(self, x):
            h = self.pool(x + 100 * torch.tensor([[1.0, 0.0], [0.0, 0.0]]).repeat(3, 3))  # (0,0) of each window wins
            if isinstance(h, tuple):
                h = h[0]
            return self.conv(h)

    model = PoolThenConv()
    # The real gradient goes to the one selected input per window ...
    assert real_gradient_box(model, (1, 6, 6), lambda out: out[:, :, 1, 2]) == Box(2, 4, 3, 5)
    # ... the linearized one to the whole window.
    subject = Subject(model, (1, 6, 6))
    assert receptive_fields(subject, "conv", [(0, 0), (1, 2)]) == [Box(0, 0, 2, 2), Box(2, 4, 4, 6)]


def test_conv_then_max_pool_then_conv_adds_up():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3))
    subject = Subject(model, (1, 14, 14))
    # 3 -> pool: 3 + 1 = 4 (jump 2) -> conv: 4 + 2 * 2 = 8.
    assert receptive_fields(subject, "3", [(0, 0), (1, 2)]) == [Box(0, 0, 8, 8), Box(2, 4, 10, 12)]


def test_dilated_and_ceil_mode_max_pools():
    dilated = nn.Sequential(nn.MaxPool2d(2, stride=1, dilation=2), nn.Conv2d(1, 1, 1))
    subject = Subject(dilated, (1, 6, 6))
    assert subject.layer("1").output_shape == (1, 4, 4)
    assert receptive_fields(subject, "1", [(0, 0), (3, 1)]) == [Box(0, 0, 3, 3), Box(3, 1, 6, 4)]
    ceil = nn.Sequential(nn.MaxPool2d(2, ceil_mode=True), nn.Conv2d(1, 1, 1))
    subject = Subject(ceil, (1, 5, 5))
    assert subject.layer("1").output_shape == (1, 3, 3)
    assert receptive_fields(subject, "1", [(2, 2), (0, 2)]) == [Box(4, 4, 5, 5), Box(0, 4, 2, 5)]


def test_adaptive_max_pool_becomes_adaptive_average():
    model = nn.Sequential(nn.AdaptiveMaxPool2d(2), nn.Conv2d(1, 1, 1))
    subject = Subject(model, (1, 6, 6))
    assert receptive_fields(subject, "1", [(0, 0), (1, 1)]) == [Box(0, 0, 3, 3), Box(3, 3, 6, 6)]


# --- (4) dead activations still count ----------------------------------------------------------


@pytest.mark.parametrize(
    "act",
    [nn.ReLU(), nn.ReLU(inplace=True), nn.ReLU6(), nn.Hardtanh(), nn.GELU(), nn.SiLU(), nn.ELU(), nn.SELU(),
     nn.CELU(), nn.Mish(), nn.Hardswish(), nn.Hardsigmoid(), nn.Softplus(), nn.Sigmoid(), nn.Tanh(),
     nn.Threshold(0.0, 0.0), nn.PReLU(init=0.0)],
    ids=lambda m: type(m).__name__ + ("-inplace" if getattr(m, "inplace", False) else ""),
)
def test_dead_activation_modules_still_give_the_full_field(act):
    model = Dead(act)
    # All pre-activations are near -1000: the real gradient is exactly zero.
    assert real_gradient_box(model, (2, 8, 8), lambda out: out[:, :, 1, 2]) is None
    subject = Subject(model, (2, 8, 8))
    assert receptive_field(subject, "conv2", (1, 2)) == Box(1, 2, 6, 7)


# --- (5) residual: the union of the paths -----------------------------------------------------


def test_residual_block_field_is_the_union_of_both_paths():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv1 = nn.Conv2d(2, 2, 3, padding=1)
            self.conv2 = nn.Conv2d(2, 2, 3, padding=1)
            self.relu = nn.ReLU()
            self.out = nn.Identity()

        def forward(self, x):
            return self.out(self.conv2(self.relu(self.conv1(x))) + x)

    model = Residual()
    subject = Subject(model, (2, 9, 9))
    assert receptive_field(subject, "out", (4, 4)) == Box(2, 2, 7, 7)  # 5x5, not the skip's 1x1
    with torch.no_grad():
        model.conv2.weight.zero_()  # no conv path left: only the skip connection sees the input
    assert receptive_field(Subject(model, (2, 9, 9)), "out", (4, 4)) == Box(4, 4, 5, 5)


# --- (6) functional calls --------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [lambda h: F.relu(h), lambda h: F.relu(h, inplace=True), lambda h: torch.relu(h), lambda h: torch.relu_(h),
     lambda h: h.relu(), lambda h: h.relu_(), lambda h: F.relu6(h), lambda h: F.gelu(h), lambda h: F.silu(h),
     lambda h: F.hardtanh(h), lambda h: F.elu(h, inplace=True), lambda h: torch.sigmoid(h), lambda h: h.tanh(),
     lambda h: F.threshold(h, 0.0, 0.0)],
    ids=["F.relu", "F.relu-inplace", "torch.relu", "torch.relu_", "Tensor.relu", "Tensor.relu_", "F.relu6",
         "F.gelu", "F.silu", "F.hardtanh", "F.elu-inplace", "torch.sigmoid", "Tensor.tanh", "F.threshold"],
)
def test_functional_activations_are_identities(fn):
    model = Dead(fn=fn)
    assert real_gradient_box(model, (2, 8, 8), lambda out: out[:, :, 1, 2]) is None
    assert receptive_field(Subject(model, (2, 8, 8)), "conv2", (1, 2)) == Box(1, 2, 6, 7)


@pytest.mark.parametrize(
    "pool",
    [lambda h: F.max_pool2d(h, 2), lambda h: F.max_pool2d(h, 2, return_indices=True)[0],
     lambda h: F.max_pool2d(h, kernel_size=2, stride=2, padding=0), lambda h: torch.max_pool2d(h, 2),
     lambda h: F.adaptive_max_pool2d(h, 3), lambda h: F.adaptive_max_pool2d(h, 3, return_indices=True)[0]],
    ids=["F.max_pool2d", "F.max_pool2d-indices", "F.max_pool2d-kwargs", "torch.max_pool2d", "F.adaptive", "F.adaptive-indices"],
)
def test_functional_relu_and_max_pool_in_forward(pool):
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv1 = nn.Conv2d(1, 2, 3)
            self.conv2 = nn.Conv2d(2, 2, 3)
            with torch.no_grad():
                self.conv1.bias.fill_(-1000.0)

        def forward(self, x):
            return self.conv2(pool(F.relu(self.conv1(x))))

    model = Functional()
    assert real_gradient_box(model, (1, 8, 8), lambda out: out[:, :, 0, 0]) is None
    # 3 -> pool 2/2: 4 (jump 2) -> conv 3: 8. (Adaptive 6 -> 3 is the same pool here.)
    assert receptive_field(Subject(model, (1, 8, 8)), "conv2", (0, 0)) == Box(0, 0, 8, 8)


def test_max_pool_1d_and_one_dimensional_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(3, 3, 3), nn.Flatten(), nn.Linear(21, 2))
    subject = Subject(model, (2, 20))
    # 3 -> pool: 4 (jump 2) -> conv: 8.
    boxes = receptive_fields(subject, "3", [(0,), 2, (0, 6)])
    assert boxes == [Box(0, 0, 1, 8), Box(0, 4, 1, 12), Box(0, 12, 1, 20)]
    with pytest.raises(UnitOutOfRangeError, match="0..6"):
        receptive_fields(subject, "3", [(7,)])


def test_sequence_input_without_channels():
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 2, 5, dilation=2)

        def forward(self, x):
            return self.conv(x.unsqueeze(1))

    subject = Subject(Seq(), (20,))
    assert receptive_fields(subject, "conv", [3]) == [Box(0, 3, 1, 12)]


def test_mirrored_channels_do_not_cancel_and_padding_only_positions_are_empty():
    class Mirror(nn.Module):
        def forward(self, h):
            return torch.cat([h, -h], 1)  # CReLU-style: a plain channel sum is exactly zero

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), Mirror(), nn.Conv2d(4, 1, 1, padding=2))
    subject = Subject(model, (1, 6, 6))
    assert receptive_field(subject, "1", (1, 1)) == Box(1, 1, 4, 4)
    empty = receptive_field(subject, "2", (0, 0))  # sees only the 1x1 conv's zero padding
    assert empty.area() == 0
    assert receptive_field(subject, "2", (2, 2)) == Box(0, 0, 3, 3)


def test_exported_program_aten_ops_are_linearized_too():
    model = Dead(nn.ReLU(inplace=True), fn=lambda h: F.max_pool2d(h, 2, stride=1))
    program = torch.export.export(model, (torch.rand(2, 2, 9, 9),))
    module = torch.export.unflatten(program)
    subject = Subject(module, (2, 9, 9), fixed_batch=2)
    # conv 3, pool 2/1: 4, conv 3: 6; the real gradient through the dead ReLU would be zero.
    assert receptive_fields(subject, "conv2", [(0, 0), (3, 3), (1, 2)]) == [
        Box(0, 0, 6, 6), Box(3, 3, 9, 9), Box(1, 2, 7, 8)]


# --- (7) the model is left as it was -------------------------------------------------------


def test_model_state_is_untouched_and_no_mode_is_left_active():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3))
    model.train()
    model[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    subject = Subject(model, (1, 12, 12))
    assert receptive_field(subject, "4", (1, 1)) == Box(2, 2, 10, 10)
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == [False] + [True] * 5
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm running stats too
    assert mode_stack() == []
    assert not model._forward_hooks and not model[4]._forward_hooks and not model._forward_pre_hooks


def test_no_mode_is_left_active_when_the_model_fails_inside():
    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)
            self.head = nn.Conv2d(1, 1, 1)

        def forward(self, x):
            h = self.conv(x)
            if any(isinstance(m, Linearized) for m in mode_stack()):
                raise RuntimeError("boom")
            return self.head(h)

    model = Fails().train()
    subject = Subject(model, (1, 6, 6))
    with pytest.raises(UnsupportedError, match="boom"):
        receptive_field(subject, "head", (0, 0))
    assert mode_stack() == []
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert not model.head._forward_hooks and not model._forward_pre_hooks


def test_linearized_mode_leaves_other_calls_alone():
    x = torch.tensor([[-1.0, 2.0, -3.0, 4.0]])
    with Linearized():
        assert torch.equal(F.relu(x), x) and torch.equal(nn.ReLU()(x), x)
        assert torch.equal(F.softmax(x, 1), torch.softmax(x, 1).detach())
        assert torch.equal(x.clamp(min=0), torch.tensor([[0.0, 2.0, 0.0, 4.0]]))
        y, idx = F.max_pool1d(x[None], 2, return_indices=True)
        assert torch.allclose(y, torch.tensor([[[0.5, 0.5]]])) and idx.tolist() == [[[1, 3]]]
    assert mode_stack() == []
    assert torch.equal(F.relu(x), torch.tensor([[0.0, 2.0, 0.0, 4.0]]))


# --- (8) patches and boxes ------------------------------------------------------------------


def test_patch_crops_or_returns_the_whole_image_with_the_box():
    image = np.arange(3 * 10 * 8, dtype=np.float32).reshape(3, 10, 8)
    crop, box = patch(image, Box(2, 1, 5, 5))
    assert box is None and crop.shape == (3, 3, 4)
    np.testing.assert_array_equal(crop, image[:, 2:5, 1:5])
    whole, box = patch(torch.from_numpy(image), Box(0, 0, 9, 6))  # 54 of 80 pixels
    assert whole.shape == (3, 10, 8) and box == Box(0, 0, 9, 6)
    crop, box = patch(image, Box(0, 0, 9, 6), whole_image_above=0.9)
    assert box is None and crop.shape == (3, 9, 6)
    crop, box = patch(image[:, 0, :], Box(0, 2, 1, 5))  # a (C, L) sequence
    assert box is None and crop.shape == (3, 3)


def test_draw_box_outlines_one_pixel_and_clips():
    img = np.zeros((6, 7, 3), np.uint8)
    out = draw_box(img, Box(1, 2, 4, 6))
    assert img.sum() == 0 and out.dtype == np.uint8
    mask = (out == (255, 210, 0)).all(2)
    expected = np.zeros((6, 7), bool)
    expected[1, 2:6] = expected[3, 2:6] = expected[1:4, 2] = expected[1:4, 5] = True
    np.testing.assert_array_equal(mask, expected)
    clipped = (draw_box(img, Box(-3, 4, 10, 20), colour=(1, 2, 3)) == (1, 2, 3)).all(2)
    assert clipped[:, 4].all() and clipped[:, 6].all() and clipped[0, 4:].all() and clipped[5, 4:].all()
    assert not clipped[1:5, 5].any() and not clipped[:, :4].any()
    assert draw_box(np.zeros((4, 4), np.uint8), Box(0, 0, 2, 2)).shape == (4, 4, 3)


def test_box_measures():
    b = Box(2, 3, 7, 5)
    assert (b.height(), b.width(), b.area()) == (5, 2, 10)
    assert Box(4, 4, 4, 9).area() == 0


# --- (9) dense layers ------------------------------------------------------------------------


def test_dense_layer_is_unsupported():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    subject = Subject(model, (1, 6, 6))
    with pytest.raises(UnsupportedError, match="dense unit sees the whole input"):
        receptive_fields(subject, "2", [(0, 0)])
    with pytest.raises(UnitOutOfRangeError, match="y must be in 0..3"):
        receptive_fields(subject, "0", [(4, 0)])


# --- (10) batching and caching ---------------------------------------------------------------


def test_batched_equals_one_at_a_time_and_results_are_cached():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 5, padding=2, stride=2), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
                          nn.Conv2d(4, 4, 3, padding=1))
    positions = [(y, x) for y in range(4) for x in range(4)] + [(0, 0), (3, 1)]
    batched = receptive_fields(Subject(model, (3, 16, 16)), "3", positions, batch=5)
    single = Subject(model, (3, 16, 16))
    one_by_one = [receptive_fields(single, "3", [p], batch=1)[0] for p in positions]
    assert batched == one_by_one
    assert len(set(batched)) == 16 and batched[0] == Box(0, 0, 9, 9)  # 17x17 from (-8, -8), clipped
    calls = []
    model.register_forward_pre_hook(lambda m, i: calls.append(1))
    assert receptive_fields(single, "3", positions[::-1]) == one_by_one[::-1]
    assert calls == []  # every position came from the cache
