"""Attribution: exact values on small reference models (Captum's own, linear ones, CAM), targets
(class, predicted, output, unit), baselines, the model left untouched, and clear errors."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuronscope import Subject
from neuronscope.analyses.attribution import explain
from neuronscope.analyses.attribution.baselines import blur, make_baseline
from neuronscope.analyses.attribution.methods import default_cam_layer
from neuronscope.analyses.attribution.targets import resolve_target
from neuronscope.data import ArrayData
from neuronscope.errors import InputShapeError, NeuronscopeError, OptionError, UnitOutOfRangeError

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = dict(curves=False, randomisation=False)


# ---------------------------------------------------------------------------- reference models
class TwoReLU(nn.Module):
    """f = ReLU(ReLU(x1) - 1 - ReLU(x2)) (Captum's BasicModel2 on one vector)."""

    def forward(self, x):
        return F.relu(F.relu(x[:, :1]) - 1 - F.relu(x[:, 1:]))


class ShiftedReLU(nn.Module):
    """f = ReLU(ReLU(x1 - 1) - ReLU(x2)) (Captum's BasicModel3 on one vector)."""

    def forward(self, x):
        return F.relu(F.relu(x[:, :1] - 1) - F.relu(x[:, 1:]))


def vector_subject(model, n=2, **kw):
    model.eval()
    return Subject(model, (n,), value_range=(-5, 5), task="regression", **kw)


W = torch.tensor([[0.5, -2.0, 1.5, 3.0]])


def linear_subject(bias=0.7):
    lin = nn.Linear(4, 1)
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.fill_(bias)
    return vector_subject(lin, 4)


X4 = torch.tensor([[1.0, 2.0, -1.0, 0.5], [0.0, -1.0, 2.0, 1.0]])


@pytest.mark.parametrize("model", [TwoReLU(), ShiftedReLU()], ids=["relu(relu(x1)-1-relu(x2))", "relu(relu(x1-1)-relu(x2))"])
def test_integrated_gradients_match_captums_reference_values(model):
    e = explain(vector_subject(model), torch.tensor([[3.0, 1.0]]), method="integrated_gradients", baseline="zero",
                n_steps=500, **QUICK)
    ig = e["integrated_gradients"].maps[0]
    assert torch.allclose(ig, torch.tensor([1.5, -0.5]), atol=2e-3)
    # complete: the attributions add up to f(x) - f(0) = 1
    assert e.scores[0] == pytest.approx(1.0) and e.baseline_scores[0] == pytest.approx(0.0)
    assert e["integrated_gradients"].completeness[0] < 2e-3


def test_linear_model_exact_values_for_every_gradient_and_perturbation_method():
    s = linear_subject()
    e = explain(s, X4, method=["saliency", "saliency_abs", "input_x_gradient", "integrated_gradients", "occlusion",
                               "feature_ablation", "smoothgrad", "smoothgrad_sq", "vargrad"],
                baseline="zero", samples=8, **QUICK)
    w = W.expand(2, 4)
    assert torch.allclose(e["saliency"].maps, w)
    assert torch.allclose(e["saliency_abs"].maps, w.abs())
    assert torch.allclose(e["input_x_gradient"].maps, w * X4)
    assert torch.allclose(e["integrated_gradients"].maps, w * X4, atol=1e-5)  # IG with zero baseline = w * x
    assert torch.allclose(e["occlusion"].maps, w * X4, atol=1e-5)
    assert torch.allclose(e["feature_ablation"].maps, w * X4, atol=1e-5)
    assert torch.allclose(e["smoothgrad"].maps, w, atol=1e-5)  # the gradient is the same everywhere
    assert torch.allclose(e["smoothgrad_sq"].maps, w ** 2, atol=1e-4)
    assert torch.allclose(e["vargrad"].maps, torch.zeros_like(w), atol=1e-4)
    assert e["integrated_gradients"].completeness.max() < 1e-5
    assert e.scores == pytest.approx((X4 @ W.T).squeeze(1).numpy() + 0.7, abs=1e-5)


def test_gradient_shap_on_a_linear_model_is_w_times_x_minus_the_baseline_on_average():
    s = linear_subject()
    base = torch.tensor([0.5, 0.5, 0.5, 0.5])
    e = explain(s, X4, method="gradient_shap", baseline=base, samples=400, noise=0.0, **QUICK)
    assert torch.allclose(e["gradient_shap"].maps, W * (X4 - base), atol=1e-4)


SAMPLED = ["smoothgrad", "smoothgrad_sq", "vargrad", "gradient_shap"]


def small_image_subject():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, 3)).eval()
    return Subject(model, (3, 8, 8), classes=["a", "b", "c"])


def test_sampled_methods_give_an_example_the_same_map_whatever_its_batch_pass_size_or_run():
    """Captum draws SmoothGrad's noise per pass and gradient SHAP's path points from NumPy's unseeded
    generator; here an example's draws are keyed to (seed, its id)."""
    s = small_image_subject()
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ids = [f"img-{i}" for i in range(6)]
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    run = dict(method=SAMPLED, ids=ids, samples=12, baseline="blur", **QUICK)
    ref = explain(s, x, **run)
    assert torch.equal(torch.get_rng_state(), torch_state), "the global torch generator was used"
    assert np.array_equal(np.random.get_state()[1], numpy_state[1]), "the global NumPy generator was used"
    for rows in (5, 24, 1000):  # rows per pass: within an input, across inputs, everything at once
        other = explain(s, x, batch_size=rows, **run)
        for m in SAMPLED:
            torch.testing.assert_close(other[m].maps, ref[m].maps, rtol=1e-5, atol=1e-5 * ref[m].maps.abs().max(),
                                       msg=f"{m} at {rows} rows")
    part = explain(s, x[[4, 1]], **{**run, "ids": [ids[4], ids[1]]})
    again = explain(s, x, **run)
    for m in SAMPLED:
        torch.testing.assert_close(part[m].maps, ref[m].maps[[4, 1]], rtol=1e-5, atol=1e-5 * ref[m].maps.abs().max())
        assert torch.equal(again[m].maps, ref[m].maps)
    # the draws are random: another seed, or another id, draws other noise
    reseeded = explain(s, x, **{**run, "seed": 1})
    renamed = explain(s, x[:1], **{**run, "ids": ["img-1"]})
    for m in SAMPLED:
        scale = ref[m].maps.abs().max()
        assert (reseeded[m].maps - ref[m].maps).abs().max() > 0.01 * scale, m
        assert (renamed[m].maps - ref[m].maps[:1]).abs().max() > 0.01 * scale, m


def test_sampled_methods_agree_with_captums_in_expectation():
    """Same estimators as Captum's NoiseTunnel and GradientShap: with many samples both means meet
    (well apart from the plain gradient, so a method that ignored the noise would fail)."""
    from captum.attr import GradientShap, NoiseTunnel, Saliency

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).eval()
    s = vector_subject(model, 3)
    x = torch.tensor([[0.5, -1.0, 2.0], [-2.0, 0.3, 0.1]])
    base = torch.tensor([1.0, 0.0, -1.0])
    n, stdev = 20000, 0.1 * 10  # noise is a fraction of the value range (-5, 5)
    ours = explain(s, x, method=["smoothgrad", "vargrad", "gradient_shap"], samples=n, noise=0.1, baseline=base,
                   **QUICK)
    numpy_state = np.random.get_state()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        np.random.seed(0)  # GradientShap's path points
        xs, nt = x.clone().requires_grad_(True), NoiseTunnel(Saliency(model))
        common = dict(nt_samples=n, nt_samples_batch_size=2000, stdevs=stdev, target=0, abs=False)
        smooth = nt.attribute(xs, nt_type="smoothgrad", **common)
        var = nt.attribute(xs, nt_type="vargrad", **common)
        shap = GradientShap(model).attribute(xs, baselines=torch.stack([base, base]), n_samples=n, stdevs=stdev / 2,
                                             target=0)
    np.random.set_state(numpy_state)
    plain = Saliency(model).attribute(x.clone().requires_grad_(True), target=0, abs=False)
    scale = smooth.abs().max().item()
    assert (smooth - plain).abs().max().item() > 0.1 * scale  # the noise matters at this level
    torch.testing.assert_close(ours["smoothgrad"].maps, smooth.detach(), atol=0.02 * scale, rtol=0)
    torch.testing.assert_close(ours["vargrad"].maps, var.detach(), atol=0.05 * var.abs().max().item(), rtol=0)
    torch.testing.assert_close(ours["gradient_shap"].maps, shap.detach(), atol=0.03 * shap.abs().max().item(), rtol=0)


def test_ig_against_a_mean_baseline_from_data(tmp_path):
    s = linear_subject()
    rows = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", rows)
    data = ArrayData(tmp_path / "x.npy", input_shape=(4,))
    e = explain(s, X4, method="integrated_gradients", data=data, **QUICK)  # auto: the data mean
    assert e.baseline == "mean"
    assert torch.allclose(e["integrated_gradients"].maps, W * (X4 - torch.tensor(rows.mean(0))), atol=1e-4)


# ---------------------------------------------------------------------------- images
class GapNet(nn.Module):
    """conv -> ReLU -> global average pool -> linear: Grad-CAM reduces to CAM (Zhou et al. 2016)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


def image_subject():
    return Subject(GapNet().eval(), (3, 12, 12), mean=0.5, std=0.25, classes=["a", "b", "c"])


def images(n=4, seed=0):
    return torch.rand(n, 3, 12, 12, generator=torch.Generator().manual_seed(seed))


def test_gradcam_equals_class_activation_mapping_on_a_gap_network():
    s = image_subject()
    x = images(3)
    e = explain(s, x, target="b", method="gradcam", layer="relu", **QUICK)
    with torch.no_grad():
        a = s.activations(x, ["relu"])["relu"]
    cam = F.relu(torch.einsum("c,nchw->nhw", s.model.fc.weight[1], a)) / (12 * 12)
    assert torch.allclose(e["gradcam"].maps, cam, atol=1e-6)  # same size here: upsampling is the identity
    assert e["gradcam"].layer == "relu"
    assert default_cam_layer(s) == "relu"


def test_ig_is_complete_on_a_cnn_and_attributes_raw_pixels():
    s = image_subject()
    x = images(4)
    e = explain(s, x, method="integrated_gradients", baseline="blur", n_steps=64, **QUICK)
    r = e["integrated_gradients"]
    assert r.maps.shape == x.shape
    assert r.completeness_rel.max() < 0.02
    sums = r.maps.reshape(4, -1).sum(1).numpy()
    assert sums == pytest.approx(e.scores - e.baseline_scores, abs=float(2e-2 * np.abs(e.scores - e.baseline_scores).max()))
    assert e.predicted == [s.classes[k] for k in s.predict(x).tolist()]  # default target: the predicted class
    assert all(t.endswith("(predicted)") for t in e.target.labels)


def test_unit_target_explains_a_channel_and_a_neuron():
    s = image_subject()
    x = images(2)
    e = explain(s, x, target="relu:2", method="integrated_gradients", n_steps=64, **QUICK)
    with torch.no_grad():
        peak = s.activations(x, ["relu"])["relu"][:, 2].amax((1, 2))
    assert e.scores == pytest.approx(peak.numpy(), rel=1e-5)
    assert e.target.kind == "unit" and e.target.labels[0] == "relu:2"
    n = explain(s, x, target="relu:2@3,4", method="saliency", **QUICK)
    g = n["saliency"].maps.abs().sum(1)  # only the 3x3 receptive field around (3, 4) can matter
    assert g[:, :2].sum() == 0 and g[:, 6:].sum() == 0 and g[:, :, 7:].sum() == 0


def test_occlusion_window_and_feature_ablation_patches_on_images():
    s = image_subject()
    x = images(2)
    e = explain(s, x, target=0, method=["occlusion", "feature_ablation"], window=4, stride=4, baseline="zero", **QUICK)
    occ, abl = e["occlusion"].maps, e["feature_ablation"].maps
    assert occ.shape == abl.shape == x.shape
    # with non-overlapping 4x4 windows occlusion and patch ablation are the same computation
    assert torch.allclose(occ, abl, atol=1e-5)
    assert torch.allclose(abl[:, :, :4, :4], abl[:, :1, :1, :1].expand(2, 3, 4, 4))  # one value per patch


def test_per_input_targets_and_class_names():
    s = image_subject()
    x = images(3)
    e = explain(s, x, target=["a", 2, "class:b"], method="saliency", **QUICK)
    assert e.target.index == [0, 2, 1]
    with pytest.raises(OptionError, match="one per input"):
        explain(s, x, target=["a", "b"], method="saliency", **QUICK)


def test_one_logit_binary_model_explains_both_classes():
    model = nn.Sequential(nn.Linear(3, 1), nn.Sigmoid()).eval()
    s = Subject(model, (3,), classes=["no", "yes"])
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    yes = explain(s, x, target="yes", method="saliency", **QUICK)["saliency"].maps
    no = explain(s, x, target="no", method="saliency", **QUICK)["saliency"].maps
    assert torch.allclose(yes, model[0].weight.expand(4, 3))  # logits, before the Sigmoid
    assert torch.allclose(no, -yes)


def test_baselines():
    x = images(2)
    assert torch.equal(make_baseline("zero", x)[0], torch.zeros_like(x))
    b = blur(x)
    assert b.shape == x.shape and b.std() < x.std() / 2  # detail removed
    assert torch.allclose(b.mean((2, 3)), x.mean((2, 3)), atol=0.05)  # colours kept
    with pytest.raises(OptionError, match="needs data"):
        make_baseline("mean", x)
    with pytest.raises(OptionError, match="zero, blur, mean"):
        make_baseline("grey", x)


def test_explain_leaves_the_model_untouched_with_every_check_on():
    s = image_subject()
    s.model.train()
    s.model.conv.weight.requires_grad_(True)
    before = {k: v.clone() for k, v in s.model.state_dict().items()}
    e = explain(s, images(4), method=["saliency", "integrated_gradients"], n_steps=16, check_sample=4)
    after = s.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert s.model.training and s.model.conv.weight.requires_grad and s.model.conv.weight.grad is None
    assert all(not m._forward_hooks and not m._backward_hooks for m in s.model.modules())
    assert e["saliency"].randomisation is not None and e["saliency"].curves is not None


def test_clear_errors():
    s = image_subject()
    x = images(1)
    with pytest.raises(OptionError, match="integrated_gradients"):
        explain(s, x, method="integrated_gradient", **QUICK)
    with pytest.raises(OptionError, match="did you mean.*'b'|Unknown class 'bb'"):
        explain(s, x, target="bb", method="saliency", **QUICK)
    with pytest.raises(OptionError, match="0..2"):
        explain(s, x, target=7, method="saliency", **QUICK)
    with pytest.raises(UnitOutOfRangeError, match="0..5"):
        explain(s, x, target="relu:9", method="saliency", **QUICK)
    with pytest.raises(InputShapeError, match=r"\(N, 3, 12, 12\)"):
        explain(s, torch.rand(1, 3, 8, 8), method="saliency", **QUICK)
    with pytest.raises(OptionError, match="allow_guided"):
        explain(s, x, method="guided_backprop", **QUICK)
    with pytest.raises(OptionError, match="image models"):
        explain(linear_subject(), X4, method="gradcam", **QUICK)
    with pytest.raises(NeuronscopeError, match="whole layer"):
        resolve_target(s, "relu", 1)


def test_guided_methods_only_when_asked_and_with_a_warning():
    s = image_subject()
    with pytest.warns(UserWarning, match="randomisation"):
        e = explain(s, images(2), method="guided_backprop", allow_guided=True, **QUICK)
    assert e["guided_backprop"].maps.shape == (2, 3, 12, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explain(s, images(2), method="saliency", **QUICK)


def test_mass_in_a_box_and_store_round_trip(tmp_path):
    from neuronscope import Store
    s = image_subject()
    e = explain(s, images(3), method=["saliency_abs", "integrated_gradients"], n_steps=8, check_sample=2)
    share = e.mass_in([0, 0, 12, 12])
    assert share["saliency_abs"] == pytest.approx(np.ones(3))
    half = e.mass_in([0, 0, 6, 12])["saliency_abs"]
    assert np.all((half > 0) & (half < 1))
    store = Store(tmp_path)
    store.save("attribution", e)
    t = store.table("attribution", "explanations")
    assert len(t["id"]) == 6 and len(t["map"][0]) == 144
    assert set(store.table("attribution", "randomisation")["method"]) == {"saliency_abs", "integrated_gradients"}
    assert "maps/0-integrated_gradients" in store.sections()["attribution"]["images"]
    assert e._repr_png_().startswith(b"\x89PNG")


def test_mean_baseline_of_images_is_the_mean_colour(tmp_path):
    x = images(6)
    np.save(tmp_path / "x.npy", x.numpy())
    data = ArrayData(tmp_path / "x.npy", input_shape=(3, 12, 12))
    b, label = make_baseline("mean", x[:2], data=data, input_shape=(3, 12, 12))
    assert label == "mean" and b.shape == (2, 3, 12, 12)
    assert torch.allclose(b[0, :, 0, 0], x.mean((0, 2, 3)), atol=1e-6)
    assert torch.equal(b[0], b[1]) and b[0, 0].std() < 1e-6


def test_scores_follow_each_inputs_own_target_across_chunks():
    """Inputs go through in chunks; each keeps its own target in every chunk."""
    s = image_subject()
    x = images(7, seed=3)
    targets = [0, 1, 2, 2, 1, 0, 1]
    e = explain(s, x, target=targets, method="saliency", chunk=2, **QUICK)
    with torch.no_grad():
        logits = s.logits(x)
    assert e.target.index == targets
    assert e.scores == pytest.approx(logits[torch.arange(7), torch.tensor(targets)].numpy(), rel=1e-5)
    whole = explain(s, x, target=targets, method="saliency", **QUICK)
    assert torch.allclose(e["saliency"].maps, whole["saliency"].maps)
