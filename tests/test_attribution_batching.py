"""Batch sizes for Captum's attribution methods (neuronscope.analyses.attribution.batching): the
override wins and is checked, the memory limit is never exceeded, measurements are cached, and
the sizes it hands Captum change nothing in the attributions. Small seeded models, 12x12 inputs."""

import pytest
import torch
from torch import nn

from neuronscope.analyses.attribution import batching
from neuronscope.analyses.attribution.batching import BatchChoice, gradient_batch, perturbation_batch
from neuronscope.errors import OptionError

pytestmark = pytest.mark.usefixtures("one_thread")

N = 6


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()


def inputs(n: int = N) -> torch.Tensor:
    return torch.rand(n, 3, 12, 12, generator=torch.Generator().manual_seed(1))


class Counting(nn.Module):
    """The model, recording the rows of every forward pass."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.rows = model, []

    def forward(self, x):
        self.rows.append(len(x))
        return self.model(x)


@pytest.fixture(autouse=True)
def fresh_cache():
    batching.clear_cache()
    yield
    batching.clear_cache()


def fixed_timer(seconds_per_pass: float):
    """A timer under which every pass costs the same: bigger passes are cheaper per row."""
    def timer(forward, x, k):
        forward(batching._repeat(x, k))  # still runs the model, as the real timer does
        return seconds_per_pass
    return timer


# ---------------------------------------------------------------------------- override
def test_override_is_used_as_captum_would_use_it():
    model, x = small_cnn(), inputs()
    c = gradient_batch(model, x, evaluations=10, override=3 * N)
    assert isinstance(c, BatchChoice)
    assert (c.size, c.rows, c.per_input, c.source, c.per_row_s) == (3 * N, 3 * N, 3, "override", {})
    assert "set by the caller" in c.reason
    c = gradient_batch(model, x, evaluations=10, override=3 * N + 2)  # Captum takes whole steps
    assert (c.size, c.rows) == (3 * N, 3 * N) and f"{3 * N + 2} given, rounded down" in c.reason
    c = gradient_batch(model, x, evaluations=10, override=1)  # below N: Captum uses N
    assert (c.size, c.rows) == (N, N)
    c = gradient_batch(model, x, evaluations=10, override=10_000)  # above the job: one pass
    assert (c.size, c.rows) == (10 * N, 10 * N)
    c = gradient_batch(model, x, evaluations=10, override=N, overlap=True)  # LayerConductance: >= 2 steps
    assert (c.size, c.per_input) == (2 * N, 2)
    c = perturbation_batch(model, x, perturbations=9, override=4)
    assert (c.size, c.rows, c.source) == (4, 4 * N, "override")
    assert perturbation_batch(model, x, perturbations=3, override=8).size == 3


@pytest.mark.parametrize("bad", [0, -4, 2.5, "8", True, [8]])
def test_invalid_override_raises_option_error(bad):
    model, x = small_cnn(), inputs()
    with pytest.raises(OptionError, match="override"):
        gradient_batch(model, x, evaluations=10, override=bad)
    with pytest.raises(OptionError, match="override"):
        perturbation_batch(model, x, perturbations=10, override=bad)


def test_invalid_counts_and_inputs_raise_option_error():
    model, x = small_cnn(), inputs()
    with pytest.raises(OptionError, match="evaluations"):
        gradient_batch(model, x, evaluations=0)
    with pytest.raises(OptionError, match="perturbations"):
        perturbation_batch(model, x, perturbations=-1)
    with pytest.raises(OptionError, match="non-empty"):
        gradient_batch(model, x[:0], evaluations=5)


# ---------------------------------------------------------------------------- measured choice
def test_measured_choice_is_a_candidate_and_says_why(capsys):
    model, x = small_cnn(), inputs()
    c = gradient_batch(model, x, evaluations=50, model=model)
    assert c.source == "measured" and c.rows == c.size == c.per_input * N
    assert set(c.per_row_s) >= {N, 2 * N} and all(v > 0 for v in c.per_row_s.values())
    assert c.bytes_per_row > 3 * 12 * 12 * 4  # more than an input row
    assert c.rows * c.bytes_per_row <= c.memory_limit
    assert 0 < c.calibration_rows <= 0.07 * 50 * N + 4  # warm-up + at most the calibration share
    assert "rows per pass" in c.reason and "ms per row" in c.reason
    p = perturbation_batch(model, x, perturbations=36, model=model)
    assert p.source == "measured" and p.rows == p.size * N and 1 <= p.size <= 36
    assert p.reason.startswith(f"perturbations_per_eval {p.size} ")
    assert capsys.readouterr() == ("", "")  # prints nothing


def test_works_inside_no_grad_and_leaves_the_input_alone():
    model, x = small_cnn(), inputs().requires_grad_(True)
    with torch.no_grad():
        c = gradient_batch(model, x, evaluations=10, model=model)
        p = perturbation_batch(model, x, perturbations=10, model=model)
    assert c.per_row_s and p.per_row_s
    assert x.grad is None and all(q.grad is None for q in model.parameters())


def test_forward_without_model_still_estimates_memory():
    model, x = small_cnn(), inputs()
    c = gradient_batch(lambda t: model(t), x, evaluations=8)
    assert c.bytes_per_row > 3 * 12 * 12 * 4
    assert c.rows * c.bytes_per_row <= c.memory_limit


def test_bigger_passes_chosen_when_cheaper_and_evened_out(monkeypatch):
    """Under a timer that makes every pass cost the same, bigger passes are cheaper per row: the
    sizes go up while the calibration budget lasts, and the biggest measured one is chosen, evened
    out (32 steps per pass -> 2 passes for 50 steps -> 25 steps each)."""
    monkeypatch.setattr(batching, "_time_gradient", fixed_timer(0.01))
    model, x = small_cnn(), inputs()
    monkeypatch.setattr(batching, "CALIBRATION_SHARE", 10.0)
    c = gradient_batch(model, x, evaluations=50)
    assert set(c.per_row_s) == {k * N for k in (1, 2, 4, 8, 16, 32, 50)}
    assert c.per_input == 50 and c.size == 50 * N  # one pass for the whole job
    batching.clear_cache()
    monkeypatch.setattr(batching, "CALIBRATION_SHARE", 2.0)  # room for 1 + 2 + ... + 32 steps, not 50
    c = gradient_batch(model, x, evaluations=50)
    assert max(c.per_row_s) == 32 * N
    assert (c.per_input, c.size) == (25, 25 * N)
    batching.clear_cache()
    monkeypatch.setattr(batching, "CALIBRATION_SHARE", 0.0)  # only the first two candidates
    c = gradient_batch(model, x, evaluations=50)
    assert set(c.per_row_s) == {N, 2 * N} and c.per_input == 2


# ---------------------------------------------------------------------------- memory
def test_tiny_free_memory_gives_the_smallest_size(monkeypatch):
    monkeypatch.setattr(batching, "free_memory", lambda device=None: 1000)
    model, x = small_cnn(), inputs()
    c = gradient_batch(model, x, evaluations=20, model=model)
    assert (c.size, c.rows, c.memory_limit) == (N, N, 250)
    assert c.per_row_s == {}  # nothing fits: nothing is timed
    assert "over" in c.reason
    c = gradient_batch(model, x, evaluations=20, overlap=True)
    assert c.per_input == 2
    p = perturbation_batch(model, x, perturbations=20, model=model)
    assert (p.size, p.rows) == (1, N)


def test_memory_limit_is_never_exceeded_even_when_bigger_is_faster(monkeypatch):
    model, x = small_cnn(), inputs()
    bpr = gradient_batch(model, x, evaluations=50, model=model).bytes_per_row
    batching.clear_cache()
    limit_rows = 5 * N  # room for 1, 2 or 4 steps per pass, not 8
    monkeypatch.setattr(batching, "free_memory", lambda device=None: int(4 * bpr * (limit_rows + 0.5)))
    monkeypatch.setattr(batching, "_time_gradient", fixed_timer(0.01))
    monkeypatch.setattr(batching, "CALIBRATION_SHARE", 10.0)
    c = gradient_batch(model, x, evaluations=50, model=model)
    assert c.bytes_per_row == bpr
    assert max(c.per_row_s) == 4 * N  # bigger sizes are not even timed
    assert c.per_input == 4 and c.rows * c.bytes_per_row <= c.memory_limit
    assert "memory limit" in c.reason

    monkeypatch.setattr(batching, "_time_forward", fixed_timer(0.01))
    p = perturbation_batch(model, x, perturbations=64, model=model)
    assert p.rows * p.bytes_per_row <= p.memory_limit
    assert max(p.per_row_s) * p.bytes_per_row <= p.memory_limit


# ---------------------------------------------------------------------------- cache
def test_second_call_with_the_same_key_is_cached(monkeypatch):
    model, x = small_cnn(), inputs()
    key = ("small_cnn", tuple(x.shape), "float32", "cpu", "integrated_gradients")
    first = gradient_batch(model, x, evaluations=30, key=key, model=model)
    assert first.source == "measured" and first.calibration_rows > 0

    def boom(*_a, **_k):
        raise AssertionError("the model ran again")
    for name in ("_time_gradient", "_time_forward", "_estimate"):
        monkeypatch.setattr(batching, name, boom)
    second = gradient_batch(model, x, evaluations=30, key=key, model=model)
    assert second.source == "cached" and second.calibration_rows == 0
    assert (second.size, second.per_row_s, second.bytes_per_row) == (first.size, first.per_row_s, first.bytes_per_row)
    with pytest.raises(AssertionError, match="ran again"):  # another key, or no key: measured again
        gradient_batch(model, x, evaluations=30, key=key + ("other",), model=model)
    with pytest.raises(AssertionError, match="ran again"):
        gradient_batch(model, x, evaluations=30, model=model)
    with pytest.raises(AssertionError, match="ran again"):  # the same key for a perturbation method
        perturbation_batch(model, x, perturbations=30, key=key, model=model)


# ---------------------------------------------------------------------------- Captum agrees
def test_captum_ig_with_the_chosen_size_is_identical():
    from captum.attr import IntegratedGradients

    model, x = small_cnn(), inputs()
    counting = Counting(model)
    target = model(x).argmax(1)
    c = gradient_batch(counting, x, evaluations=20, model=model)
    reference = IntegratedGradients(model).attribute(x, target=target, n_steps=20, internal_batch_size=None)
    for size in {c.size, N, 3 * N, 7 * N}:  # the choice, and sizes that split 20 steps unevenly
        counting.rows.clear()
        attr = IntegratedGradients(counting).attribute(x, target=target, n_steps=20, internal_batch_size=size)
        assert max(counting.rows) == size  # the rows per pass the choice promises
        torch.testing.assert_close(attr, reference, atol=1e-6, rtol=0)


def test_captum_layer_conductance_and_noise_tunnel_with_the_chosen_sizes():
    from captum.attr import LayerConductance, NoiseTunnel, Saliency

    model, x = small_cnn(), inputs()
    counting = Counting(model)
    target = model(x).argmax(1)
    c = gradient_batch(counting, x, evaluations=12, overlap=True, override=5 * N)
    reference = LayerConductance(model, model[3]).attribute(x, target=target, n_steps=12)
    counting.rows.clear()
    attr = LayerConductance(counting, model[3]).attribute(x, target=target, n_steps=12, internal_batch_size=c.size)
    assert max(counting.rows) == c.rows
    torch.testing.assert_close(attr, reference, atol=1e-6, rtol=1e-5)

    c = gradient_batch(counting, x, evaluations=10, override=3 * N)  # NoiseTunnel counts samples per input
    counting.rows.clear()
    NoiseTunnel(Saliency(counting)).attribute(x, nt_type="smoothgrad", nt_samples=10,
                                              nt_samples_batch_size=c.per_input, target=target, stdevs=0.1)
    assert max(counting.rows) == c.rows


def test_captum_occlusion_with_the_chosen_size_is_identical():
    from captum.attr import Occlusion

    model, x = small_cnn(), inputs()
    counting = Counting(model)
    target = model(x).argmax(1)
    windows = 16  # 3x3 windows, stride 3, on 12x12
    p = perturbation_batch(counting, x, perturbations=windows, model=model)
    reference = Occlusion(model).attribute(x, sliding_window_shapes=(3, 3, 3), strides=(3, 3, 3), target=target)
    for size in {p.size, 3, 16}:
        counting.rows.clear()
        attr = Occlusion(counting).attribute(x, sliding_window_shapes=(3, 3, 3), strides=(3, 3, 3), target=target,
                                             perturbations_per_eval=size)
        assert max(counting.rows) == size * N and len(counting.rows) == 1 + -(-windows // size)
        torch.testing.assert_close(attr, reference, atol=1e-6, rtol=0)


def test_free_memory_reads_something():
    assert batching.free_memory("cpu") > 0
    assert batching.memory_limit() == pytest.approx(batching.free_memory() * batching.MEMORY_FRACTION, rel=0.05)
