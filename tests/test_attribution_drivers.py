"""Class drivers: a layer's units ranked by their contribution to each class logit."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from neuronscope.analyses.attribution.drivers import ClassDrivers, class_drivers, unit_contributions
from neuronscope.data import ArrayData
from neuronscope.errors import OptionError, UnknownLayerError, UnsupportedError
from neuronscope.subject import Subject

pytestmark = pytest.mark.usefixtures("one_thread")


def planted_mlp() -> nn.Sequential:
    """Hidden unit 3 copies x0 and unit 1 copies x1; class 0 reads unit 3, class 1 reads unit 1."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(4, 6), relu=nn.ReLU(), fc2=nn.Linear(6, 2)))
    with torch.no_grad():
        model.fc1.weight.mul_(0.05)
        model.fc1.bias.zero_()
        model.fc1.weight[3] = torch.tensor([2.0, 0, 0, 0])
        model.fc1.weight[1] = torch.tensor([0, 2.0, 0, 0])
        model.fc2.weight.mul_(0.1)
        model.fc2.weight[0, 3] = 3.0
        model.fc2.weight[1, 1] = 3.0
        model.fc2.bias.copy_(torch.tensor([0.3, -0.2]))
    return model


def planted_data(tmp_path, n=96, labelled=True):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 4, generator=g)
    y = (x[:, 1] > x[:, 0]).long()
    arrays = {"x": x.numpy()}
    if labelled:
        arrays["y"] = y.numpy()
    np.savez(tmp_path / "data.npz", **arrays)
    return ArrayData(tmp_path / "data.npz")


@pytest.fixture
def mlp_subject():
    return Subject(planted_mlp(), (4,), classes=["left", "right"])


def test_planted_units_rank_first_with_large_shares(mlp_subject, tmp_path):
    res = class_drivers(mlp_subject, planted_data(tmp_path), "relu", progress=False)
    assert isinstance(res, ClassDrivers)
    assert res.contributions.shape == (2, 6) and res.counts.sum() == 96 and res.by == "label"
    first0, first1 = res.top("left")[0], res.top(1)[0]
    assert first0[0] == "relu:3" and first0[2] > 0.8
    assert first1[0] == "relu:1" and first1[2] > 0.8
    assert res.sentence(0) == "class 'left' rests mostly on relu:3 (99%)"  # minor units left out
    table = res.tables()["drivers"]
    assert len(table["address"]) == 2 * 6  # top=10 capped by the 6 units
    assert table["rank"][:2] == [0, 1] and table["unit"][0] == 3 and table["class"][0] == "left"
    summary = res.summary()
    assert summary["method"] == "grad_x_activation" and set(summary["sentences"]) == {"left", "right"}
    assert res.images()["drivers"].size[0] > 0


def test_contributions_plus_bias_are_the_logit(mlp_subject):
    """The hidden layer reaches the logits through one Linear: grad x activation is exact."""
    x = torch.rand(10, 4, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 1] * 5)
    contrib = unit_contributions(mlp_subject, x, "relu", target)
    with torch.no_grad():
        z = mlp_subject.logits(x)
    expected = z[torch.arange(10), target] - mlp_subject.model.fc2.bias[target]
    torch.testing.assert_close(contrib.sum(1), expected, rtol=1e-5, atol=1e-6)


def conv_model() -> nn.Sequential:
    """Channel 2 responds to bright pixels and alone feeds class 1; channel 0 feeds class 0."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        conv=nn.Conv2d(1, 4, 3, padding=1), relu=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1),
        flat=nn.Flatten(), fc=nn.Linear(4, 2)))
    with torch.no_grad():
        model.conv.weight.mul_(0.1)
        model.conv.bias.zero_()
        model.conv.weight[2] = 0.0
        model.conv.weight[2, 0, 1, 1] = 2.0
        model.conv.weight[0] = 0.0
        model.conv.bias[0] = 0.5
        model.fc.weight.zero_()
        model.fc.weight[0, 0] = 1.0
        model.fc.weight[1, 2] = 1.5
        model.fc.weight[1, 0] = 0.2
    return model


def test_conv_channel_is_found_and_positions_are_summed(tmp_path):
    subject = Subject(conv_model(), (1, 8, 8))
    g = torch.Generator().manual_seed(3)
    x = torch.rand(40, 1, 8, 8, generator=g)
    np.savez(tmp_path / "img.npz", x=x.numpy(), y=(torch.arange(40) % 2).numpy())
    res = class_drivers(subject, ArrayData(tmp_path / "img.npz"), "relu", batch_size=16, progress=False)
    assert res.top(1)[0][0] == "relu:2"
    assert res.top(0)[0][0] == "relu:0" and res.top(0)[0][2] == pytest.approx(1.0)
    # Average pooling is linear too: summed over positions, contributions + bias give the logit.
    target = torch.arange(40) % 2
    contrib = unit_contributions(subject, x, "relu", target)
    with torch.no_grad():
        z = subject.logits(x)[torch.arange(40), target]
    torch.testing.assert_close(contrib.sum(1), z - subject.model.fc.bias[target], rtol=1e-5, atol=1e-5)


def test_conductance_agrees_in_ranking_and_is_nearly_complete(mlp_subject, tmp_path):
    data = planted_data(tmp_path)
    gxa = class_drivers(mlp_subject, data, "relu", progress=False)
    cond = class_drivers(mlp_subject, data, "relu", method="conductance", n_steps=16, batch_size=32,
                         progress=False)
    assert cond.method == "conductance" and cond.counts.tolist() == gxa.counts.tolist()
    for k in range(2):
        assert [a for a, _, _ in cond.top(k, 2)] == [a for a, _, _ in gxa.top(k, 2)]
    assert cond.completeness is not None and cond.completeness < 0.05


def test_conductance_credits_only_what_changed_from_the_zero_input(tmp_path):
    """Conv channel 0 is a constant (bias only): grad x activation credits it, conductance not."""
    subject = Subject(conv_model(), (1, 8, 8))
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    gxa = unit_contributions(subject, x, "relu", 0)
    cond = unit_contributions(subject, x, "relu", 0, method="conductance", batch_size=40)
    torch.testing.assert_close(gxa[:, 0], torch.full((12,), 0.5))  # bias 0.5 x fc weight 1
    torch.testing.assert_close(cond[:, 0], torch.zeros(12, dtype=cond.dtype))


def test_by_prediction_on_unlabelled_data(mlp_subject, tmp_path):
    res = class_drivers(mlp_subject, planted_data(tmp_path, labelled=False), "relu", limit=50, progress=False)
    assert res.by == "prediction" and res.counts.sum() == 50
    x = torch.rand(5, 4)
    assert unit_contributions(mlp_subject, x, "relu", 1).shape == (5, 6)
    res = class_drivers(mlp_subject, planted_data(tmp_path), "relu", by="prediction", progress=False)
    assert res.by == "prediction" and res.top(0)[0][0] == "relu:3"


def test_empty_class_and_negative_only_sentences():
    res = ClassDrivers("h", "grad_x_activation", ["a", "b", "c"], np.array([[1.0, 3.0], [0.0, 0.0], [-1.0, -2.0]]),
                       np.array([4, 0, 2]), "label", 0.0)
    assert res.sentence("a") == "class 'a' rests mostly on h:1 (75%) and h:0 (25%)"
    assert res.top("b") == [] and "no examples" in res.sentence(1)
    assert "no unit of h adds" in res.sentence("c") and res.top("c")[0][2] == 0.0


def test_errors(mlp_subject, tmp_path):
    data = planted_data(tmp_path)
    res = class_drivers(mlp_subject, data, "relu", limit=8, progress=False)
    with pytest.raises(OptionError, match="Unknown class"):
        res.top("middle")
    with pytest.raises(OptionError, match="out of range"):
        res.top(5)
    with pytest.raises(OptionError, match="grad_x_activation.*conductance"):
        class_drivers(mlp_subject, data, "relu", method="saliency", progress=False)
    with pytest.raises(OptionError, match="label"):
        class_drivers(mlp_subject, data, "relu", by="truth", progress=False)
    with pytest.raises(UnknownLayerError, match="relu"):
        class_drivers(mlp_subject, data, "reluu", progress=False)
    regression = Subject(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1)), (4,))
    with pytest.raises(UnsupportedError, match="regression"):
        class_drivers(regression, data, "1", progress=False)


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.relu(self.block(torch.relu(self.block(x)))))


def test_a_call_of_a_reused_module_is_refused(tmp_path):
    subject = Subject(Twice(), (4,), classes=["a", "b"])
    with pytest.raises(UnsupportedError, match="used several times"):
        class_drivers(subject, planted_data(tmp_path), "block#1", progress=False)
