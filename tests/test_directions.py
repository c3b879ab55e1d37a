"""Directions as units: addresses, examples, class links, the basis comparison, visualization, the store, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import neuronscope as ns
from neuronscope import Subject
from neuronscope.analyses.directions.basis import compare_basis
from neuronscope.analyses.directions.book import (direction_id, from_dictionary, from_factorization, from_table,
                                                  from_vectors, random_directions)
from neuronscope.analyses.directions.classes import class_links
from neuronscope.analyses.directions.examples import direction_examples
from neuronscope.analyses.directions.factorize import factorize
from neuronscope.analyses.directions.sae import train_dictionary
from neuronscope.cli import main
from neuronscope.errors import NeuronscopeError

pytestmark = pytest.mark.usefixtures("one_thread")


def vector_data(tmp_path, x, y, name="d.npz"):
    np.savez(tmp_path / name, x=x.astype(np.float32), y=y)
    return ns.open_data(tmp_path / name, input_shape=(x.shape[1],))


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


def image_data(tmp_path, n=48):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "img.npz", x=rng.random((n, 3, 12, 12)).astype(np.float32), y=rng.integers(0, 2, n))
    return ns.open_data(tmp_path / "img.npz")


# ---------------------------------------------------------------------------- addresses
def test_a_users_vector_becomes_a_unit_with_a_stable_address():
    s = Subject(small_cnn(), (3, 12, 12))
    v = np.arange(8, dtype=np.float32) - 3
    address = s.add_direction("3", v)
    assert address == f"3:{direction_id(v)}" and address.split(":")[1].startswith("dir-")
    assert s.add_direction("3", v) == address, "the same vector, the same address"
    assert s.resolve(address).direction == address.split(":")[1]
    d, i = s.direction(address)
    np.testing.assert_allclose(d.read[i], v / np.linalg.norm(v), rtol=1e-6)
    other = s.add_direction("3", np.ones(8))
    assert {n for n in s.direction_sets("3")[0].names} == {address.split(":")[1], other.split(":")[1]}
    with pytest.raises(NeuronscopeError, match="8 channels"):
        s.add_direction("3", np.ones(5))
    # the randomisation check's copies keep the directions
    assert s.with_model(small_cnn(1)).resolve(address)


def test_unknown_directions_say_what_exists_and_how_to_make_one(tmp_path):
    s = Subject(small_cnn(), (3, 12, 12))
    with pytest.raises(NeuronscopeError, match="none yet.*factorize"):
        s.resolve("3:nmf2")
    f = factorize(s, image_data(tmp_path), "3", k=4)
    assert s.add_directions(from_factorization(f)) == ["3:nmf0", "3:nmf1", "3:nmf2", "3:nmf3"]
    with pytest.raises(NeuronscopeError, match=r"nmf0\.\.nmf3"):
        s.resolve("3:nmf7")
    with pytest.raises(NeuronscopeError, match="No layer named"):
        s.resolve("33:nmf1")


# ---------------------------------------------------------------------------- examples
def test_direction_examples_rank_inputs_by_the_direction(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 4))
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(4))
        model[0].bias.zero_()
    s = Subject(model, (4,), classes=["a", "b"])
    data = vector_data(tmp_path, x, rng.integers(0, 2, 200))
    v = np.array([1.0, 1.0, 0.0, 0.0])
    s.add_direction("1", v)
    d = s.direction_sets("1")[0]
    r = direction_examples(s, data, [d], neurons=["1"], k=5, progress=False)
    relu = np.maximum(x, 0)
    expected = [str(i) for i in np.argsort(-(relu @ v))[:5]]
    assert r.layers["1:dir"].top.ids[0] == expected
    np.testing.assert_allclose(r.layers["1:dir"].top.scores[0], np.sort(relu @ v / np.sqrt(2))[::-1][:5], rtol=1e-5)
    assert r.layers["1:neuron"].top.ids[2] == [str(i) for i in np.argsort(-relu[:, 2])[:5]]
    units = r.tables()["units"]["unit"]
    assert f"1:{d.names[0]}" in units and "1:2" in units


# ---------------------------------------------------------------------------- class links
def test_class_links_of_a_complete_basis_add_up_to_the_logits(tmp_path):
    """With the identity as directions, the contributions to logit c are a . W_c: summed over the
    directions they give the logit minus its bias, on average over each class's examples."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    s = Subject(model, (4,), classes=["a", "b", "c"])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(90, 4)), rng.integers(0, 3, 90)
    data = vector_data(tmp_path, x, y)
    basis = from_vectors("1", np.eye(6))
    links = class_links(s, data, basis, limit=None, batch_size=32)
    with torch.no_grad():
        z = s.logits(torch.as_tensor(x, dtype=torch.float32)).numpy() - model[2].bias.numpy()
    for k in range(3):
        assert links.contributions[k].sum() == pytest.approx(z[y == k, k].mean(), rel=1e-4, abs=1e-5)
    assert list(links.counts) == [int((y == k).sum()) for k in range(3)]
    assert links.strongest(0)[0] in ("a", "b", "c")


# ---------------------------------------------------------------------------- the basis
def _basis_verdict(tmp_path, rotate: bool) -> str:
    """24 classes; neuron i fires (1 to 2) for class i, and every neuron also fires now and then
    for any class (exponential bursts). Top examples of a neuron are then mostly of its class,
    those of a random direction are not. Rotated by a random orthogonal matrix (no ReLU after it),
    the same code has no privileged basis: neurons are random directions."""
    rng = np.random.default_rng(0)
    n, c = 2400, 24
    y = rng.integers(0, c, n)
    x = np.eye(c)[y] * rng.uniform(1, 2, (n, 1)) + rng.exponential(0.4, (n, c)) * (rng.random((n, c)) < 0.3)
    q = np.linalg.qr(rng.normal(size=(c, c)))[0] if rotate else np.eye(c)
    model = nn.Sequential(nn.Linear(c, c), nn.Linear(c, c))
    with torch.no_grad():
        model[0].weight.copy_(torch.as_tensor(q, dtype=torch.float32))
        model[0].bias.zero_()
    s = Subject(model, (c,), classes=[str(i) for i in range(c)])
    data = vector_data(tmp_path, x, y, name=f"b{rotate}.npz")
    r = direction_examples(s, data, [random_directions("0", c, 64, seed=3)], neurons=["0"], k=16, progress=False)
    out = compare_basis(r, "0")
    assert set(out.groups) == {"neuron", "random"}
    assert out.summary()["finding"]
    return out.verdict


def test_the_basis_is_privileged_when_neurons_carry_the_classes_and_not_after_a_rotation(tmp_path):
    assert _basis_verdict(tmp_path, rotate=False) == "privileged"
    assert _basis_verdict(tmp_path, rotate=True) == "not privileged"


# ---------------------------------------------------------------------------- visualization
def test_a_direction_is_visualized_with_its_evidence(tmp_path):
    s = Subject(small_cnn(), (3, 12, 12))
    data = image_data(tmp_path)
    v = np.linspace(-1, 1, 8).astype(np.float32)
    name = direction_id(v)
    vis = ns.visualize(s, f"3:{name}", data=data, seeds=2, steps=24, negative=False, directions={name: v},
                       progress=False)
    r = vis[f"3:{name}"]
    assert r.target.kind == "direction" and r.reached is not None and r.real_max > 0
    from neuronscope.analyses.featvis.visualize import direction_scores

    d, i = s.direction(f"3:{name}")
    assert r.reached == pytest.approx(float(direction_scores(s, d, r.images[:1])[0, i]), rel=1e-5)
    assert r.ratio == pytest.approx(r.reached / r.real_max)
    assert r.values[0] > 0, "the optimization pushed the activation along the direction"


# ---------------------------------------------------------------------------- the store
def test_every_kind_of_direction_survives_the_store(tmp_path):
    s = Subject(small_cnn(), (3, 12, 12))
    data = image_data(tmp_path)
    rows = torch.relu(torch.randn(512, 8))
    d, _ = train_dictionary([rows[i:i + 64] for i in range(0, 512, 64)], 8, features=16, k=3, steps=8, layer="3")
    sets = [from_factorization(factorize(s, data, "3", k=3)), from_factorization(factorize(s, data, "3", method="pca", k=3)),
            from_dictionary(d), from_vectors("3", np.ones((1, 8)))]
    table: dict = {}
    for x in sets:
        for k, v in x.table().items():
            table.setdefault(k, []).extend(v)
    back = from_table(table, {f"{x.layer}:{x.kind}": x.header() for x in sets})
    acts = torch.relu(torch.randn(5, 8, 6, 6))
    for a, b in zip(sets, back):
        assert (a.kind, a.names) == (b.kind, b.names)
        torch.testing.assert_close(a.scores(acts), b.scores(acts), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.reconstruct(acts), b.reconstruct(acts), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- the CLI
MODEL_PY = """
import torch
from torch import nn

def make_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
"""


def test_cli_directions_then_visualize_a_factor_from_the_store(tmp_path, capsys):
    (tmp_path / "net.py").write_text(MODEL_PY)
    image_data(tmp_path)
    model = [f"{tmp_path}/net.py:make_net", "--input-shape", "3,12,12"]
    np.save(tmp_path / "v.npy", np.linspace(0, 1, 8).astype(np.float32))
    out = tmp_path / "rep"
    assert main(["-q", "directions", *model, "--data", str(tmp_path / "img.npz"), "--layer", "3", "--factors", "3",
                 "--dictionary-steps", "20", "--direction", str(tmp_path / "v.npy"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Directions written" in text and "3:dir-" in text and "non-negative factors of 3" in text
    page = (out / "directions.html").read_text()
    assert "3:nmf2" in page and (out / "units" / "3" / "nmf0.html").exists()
    assert main(["-q", "visualize", *model, "3:nmf1", "--store", str(out), "--steps", "8", "--seeds", "2",
                 "--no-negative", "--out", str(tmp_path / "vis")]) == 0
    assert (tmp_path / "vis" / "3" / "nmf1-pos.png").exists()
    # an unknown layer or direction is one paragraph, no traceback
    assert main(["-q", "directions", *model, "--data", str(tmp_path / "img.npz"), "--layer", "33",
                 "--out", str(out)]) == 2
    assert "No layer named '33'" in capsys.readouterr().err
    assert main(["-q", "visualize", *model, "3:nmf9", "--store", str(out), "--steps", "8",
                 "--out", str(tmp_path / "vis")]) == 2
    err = capsys.readouterr().err
    assert "nmf0, nmf1, nmf2" in err and "Traceback" not in err


def test_a_direction_along_one_channel_is_explained_like_that_channel(tmp_path):
    s = Subject(small_cnn(), (3, 12, 12))
    x = torch.rand(3, 3, 12, 12)
    address = s.add_direction("3", np.eye(8)[5])
    a = ns.explain(s, x, target=address, method="integrated_gradients", curves=False, randomisation=False)
    b = ns.explain(s, x, target="3:5", method="integrated_gradients", curves=False, randomisation=False)
    torch.testing.assert_close(torch.as_tensor(a["integrated_gradients"].maps), torch.as_tensor(b["integrated_gradients"].maps),
                               rtol=1e-4, atol=1e-6)
    with pytest.raises(NeuronscopeError, match="whole map"):
        ns.explain(s, x, target=address + "@1,1", method="saliency", curves=False, randomisation=False)
