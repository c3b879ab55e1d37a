"""First-layer filters: smoothness score, noisy-vs-fresh-initialisation test, pictures."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from foreign import FOREIGN
import torch
from PIL import Image
from torch import nn

from neuronscope.analyses.filters import (
    TILE_PAD,
    analyze_filters,
    analyze_filters_of,
    smoothness_score,
    smoothness_scores,
)
from neuronscope.errors import NeuronscopeError, UnsupportedError
from neuronscope.imaging import MIN_TILE_PX, save_png, symmetric_scale, to_uint8


def gabor(size: int = 7, theta: float = 0.0, wavelength: float = 6.0, sigma: float = 1.8) -> np.ndarray:
    r = (size - 1) / 2
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    along = x * math.cos(theta) + y * math.sin(theta)
    return np.exp(-(x**2 + y**2) / (2 * sigma**2)) * np.cos(2 * math.pi * along / wavelength)


def fixture(name: str) -> Path:
    if FOREIGN is None:
        pytest.skip("shared/fixtures/foreign not found (set NEURONSCOPE_FIXTURES)")
    return FOREIGN / name


class StandIn:
    """The three things analyze_filters needs from a Subject."""

    def __init__(self, model: nn.Module, input_shape, columns=None):
        self.model, self.input_shape, self.columns = model, tuple(input_shape), columns

    def first_layer(self):
        for name, m in self.model.named_modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                return name, m
        raise UnsupportedError("no Conv or Linear layer")


# --- the score ------------------------------------------------------------------------------


def test_gabor_is_smoother_than_noise_and_constant_scores_zero():
    rng = np.random.default_rng(0)
    noise = [smoothness_score(rng.standard_normal((7, 7))) for _ in range(50)]
    smooth = smoothness_score(gabor())
    assert smooth < 0.25 < 0.5 < min(noise)
    assert np.mean(noise) == pytest.approx(40 / 48, abs=0.05)  # white noise: share of bins above the cut
    assert smoothness_score(np.full((7, 7), 3.0)) == pytest.approx(0.0, abs=1e-12)
    assert smoothness_score(np.zeros((3, 5, 5))) == 0.0
    # Adding a constant changes nothing: the score ignores the DC term.
    assert smoothness_score(gabor() + 5.0) == pytest.approx(smooth)


def test_score_undefined_on_3x3():
    assert smoothness_score(np.random.default_rng(0).standard_normal((3, 3))) is None
    assert smoothness_scores(np.zeros((4, 3, 3, 3))) is None


# --- noisy vs. fresh initialisation ---------------------------------------------------------


def gabor_conv(n: int = 16) -> nn.Conv2d:
    rng = np.random.default_rng(1)
    conv = nn.Conv2d(3, n, 7)
    kernels = np.stack(
        [
            rng.uniform(-1, 1, size=(3, 1, 1)) * gabor(theta=math.pi * i / n, wavelength=rng.uniform(5, 8))
            for i in range(n)
        ]
    )
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(kernels) * 0.1)
    return conv


def test_smooth_gabor_layer_has_no_noisy_filters():
    result = analyze_filters_of(gabor_conv(), "conv1", (3, 32, 32))
    assert result.kind == "conv-rgb"
    assert result.noisy_fraction == 0.0
    assert result.reference_samples >= 2000
    assert "smooth" in result.summary()["finding"]


@pytest.mark.parametrize(
    "make, input_shape",
    [
        (lambda: nn.Conv2d(3, 256, 5), (3, 32, 32)),
        (lambda: nn.Conv1d(2, 256, 9), (2, 100)),
        (lambda: nn.Linear(64, 256), (1, 8, 8)),
    ],
    ids=["conv2d", "conv1d", "dense-image"],
)
def test_fresh_layer_is_about_95_percent_noisy_and_left_untouched(make, input_shape):
    torch.manual_seed(123)
    layer = make()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    rng_state = torch.get_rng_state()

    result = analyze_filters_of(layer, "layer", input_shape)

    assert result.noisy_fraction == pytest.approx(0.95, abs=0.06)
    assert 0.0 < result.reference_p5 < 1.0
    assert torch.equal(torch.get_rng_state(), rng_state)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert "noisy" in result.summary()["finding"]


def test_dead_filter_is_flagged_and_not_noisy():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 5)
    with torch.no_grad():
        conv.weight[2] = 0.0
    result = analyze_filters_of(conv, "conv1", (3, 32, 32))
    assert result.dead.tolist() == [False, False, True, False]
    assert result.scores[2] == 0.0 and not result.noisy[2]
    assert result.summary()["dead_count"] == 1


def test_3x3_kernels_get_no_score_and_say_so():
    result = analyze_filters_of(nn.Conv2d(3, 8, 3), "conv1", (3, 32, 32))
    assert result.scores is None and result.noisy is None and result.noisy_fraction is None
    summary = result.summary()
    assert summary["score_defined"] is False
    assert "3x3" in summary["finding"] and "meaningful" in summary["finding"]
    assert "score" not in result.tables()["filters"]


# --- pictures -------------------------------------------------------------------------------


def tile_size(side: int) -> int:
    return side * math.ceil(MIN_TILE_PX / side)


def grid_size(ncols: int, nrows: int, tile: int) -> tuple[int, int]:
    return ncols * (tile + TILE_PAD) + TILE_PAD, nrows * (tile + TILE_PAD) + TILE_PAD


def test_symmetric_scale_maps_zero_to_mid_grey():
    values = np.array([-2.0, 0.0, 1.0, 2.0])
    assert to_uint8(symmetric_scale(values)).tolist() == [0, 128, 191, 255]
    assert symmetric_scale(np.zeros(3)).tolist() == [0.5, 0.5, 0.5]


def test_rgb_tiles_share_one_symmetric_scale():
    conv = nn.Conv2d(3, 2, 5)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 2.0  # red channel at +max
        conv.weight[0, 2] = -2.0  # blue channel at -max
        conv.weight[1, 0, 0, 0] = 1.0  # half of max, in the other filter
    result = analyze_filters_of(conv, "conv1", (3, 32, 32))
    img = np.asarray(result.image)

    tile = tile_size(5)
    assert tile >= 40 and result.image.mode == "RGB"
    assert result.image.size == grid_size(2, 1, tile)
    first = img[TILE_PAD : TILE_PAD + tile, TILE_PAD : TILE_PAD + tile]
    assert (first == [255, 128, 0]).all()  # +max, zero, -max
    x1 = 2 * TILE_PAD + tile
    second = img[TILE_PAD : TILE_PAD + tile, x1 : x1 + tile]
    block = tile // 5
    assert (second[:block, :block] == [191, 128, 128]).all()  # +max/2 on the shared scale
    assert (second[block:, block:] == 128).all()  # zero weights are mid grey
    assert result.scale == 2.0


def test_grey_and_multichannel_tiles():
    grey = analyze_filters_of(nn.Conv2d(1, 4, 5), "conv1", (1, 28, 28))
    assert grey.kind == "conv-grey" and grey.image.mode == "L"
    assert grey.image.size == grid_size(2, 2, tile_size(5))

    multi = analyze_filters_of(nn.Conv2d(2, 3, 5), "conv1", (2, 28, 28))
    assert multi.kind == "conv-multi" and multi.image.mode == "L"
    assert multi.image.size == grid_size(2, 3, tile_size(5))  # one row per filter, one tile per channel


def test_dense_layer_on_images_shows_rows_as_images():
    dense = nn.Linear(3 * 6 * 6, 4)
    with torch.no_grad():
        dense.weight.mul_(0.01)
        dense.weight[1, 0 * 36 + 2 * 6 + 5] = 1.0  # channel 0 (red), row 2, column 5
    result = analyze_filters_of(dense, "fc", (3, 6, 6))

    assert result.kind == "dense-image" and result.kernel_shape == (3, 6, 6)
    assert result.weights[1, 0, 2, 5] == 1.0
    tile = tile_size(6)
    assert result.image.mode == "RGB" and result.image.size == grid_size(2, 2, tile)
    zoom = tile // 6
    x = 2 * TILE_PAD + tile + 5 * zoom + zoom // 2  # second tile in the first grid row
    y = TILE_PAD + 2 * zoom + zoom // 2
    assert np.asarray(result.image)[y, x, 0] == 255
    assert result.scores is not None and result.noisy_fraction is not None

    with pytest.raises(UnsupportedError, match="input shape"):
        analyze_filters_of(dense, "fc", (3, 32, 32))


def test_dense_layer_on_table_is_a_unit_by_column_heatmap():
    torch.manual_seed(0)
    dense = nn.Linear(5, 7)
    with torch.no_grad():
        dense.weight[:, 2] *= 20
    columns = ["age", "fare", "sex", "class", "port"]

    plain = analyze_filters_of(dense, "lin1", (5,))
    assert plain.kind == "dense-table" and plain.scores is None
    assert plain.image.size == (7 * 24, 5 * 24)  # one row per input column, one column per unit

    named = analyze_filters_of(dense, "lin1", (5,), columns)
    assert named.image.height == 5 * 24 and named.image.width > 7 * 24  # labels on the left
    assert named.tables()["columns"]["column"] == columns
    assert "sex" in named.summary()["finding"]
    with pytest.raises(NeuronscopeError, match="column names"):
        analyze_filters_of(dense, "lin1", (5,), columns[:3])


def test_rejects_what_it_cannot_draw():
    with pytest.raises(UnsupportedError):
        analyze_filters_of(nn.Conv3d(1, 2, 3), "conv", (1, 8, 8, 8))
    conv = nn.Conv2d(3, 2, 5)
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NeuronscopeError, match="NaN"):
        analyze_filters_of(conv, "conv1", (3, 32, 32))


def test_result_shows_itself(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 5), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28 * 28, 2))
    result = analyze_filters(StandIn(model, (3, 32, 32)))
    assert result.layer == "0"
    tables = result.tables()["filters"]
    assert tables["unit"] == ["0:0", "0:1", "0:2", "0:3"]
    assert {len(v) for v in tables.values()} == {4}
    json.dumps(result.summary())
    assert result._repr_html_().count("data:image/png;base64,") == 1
    assert Image.open(io.BytesIO(result._repr_png_())).size == result.image.size

    path = save_png(result.images()["filters"], tmp_path / "out" / "filters.png")
    save_png(result.image, path)  # overwrites in place
    assert [p.name for p in path.parent.iterdir()] == ["filters.png"]  # no temp file left


# --- a real trained network -----------------------------------------------------------------


def test_captum_cifar_conv1(tmp_path):
    state = torch.load(fixture("cifar_torchvision.pt"), weights_only=True)
    conv = nn.Conv2d(3, 6, 5)
    conv.load_state_dict({"weight": state["conv1.weight"], "bias": state["conv1.bias"]})

    result = analyze_filters_of(conv, "conv1", (3, 32, 32))

    assert result.kind == "conv-rgb" and result.kernel_shape == (3, 5, 5)
    assert np.isfinite(result.scores).all() and len(result.scores) == 6
    path = save_png(result.image, tmp_path / "conv1.png")
    with Image.open(path) as reopened:
        assert reopened.size == result.image.size == grid_size(3, 2, tile_size(5))
    print(
        f"\nCIFAR conv1: noisy fraction {result.noisy_fraction:.2f} "
        f"(scores {np.round(result.scores, 2).tolist()}, fresh-init p5 {result.reference_p5:.2f})"
    )
