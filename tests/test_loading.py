"""How users hand us a model: file.py:factory (+ weights), torch.export, TorchScript, pickles."""

import os
import sys
import textwrap

import pytest
import torch
from torch import nn

from neuronscope.errors import ModelLoadError, NeuronscopeError
from neuronscope.loading import LoadedModel, load_model, module_from_file

NET_PY = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, width=4):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 3)
            self.relu1 = nn.ReLU()
            self.fc = nn.Linear(width, 2)

        def forward(self, x):
            return self.fc(self.relu1(self.conv1(x)).mean((2, 3)))

    class WideNet(Net):
        def __init__(self):
            super().__init__(width=8)

    def make_net():
        return Net()

    def not_a_model():
        return 3

    def broken():
        raise ValueError("no GPU here")

    def needs_args(depth):
        return Net()
    """
)


@pytest.fixture
def net_py(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(NET_PY)
    return path


@pytest.fixture
def net(net_py):
    """A model from net.py, with weights that the factory alone would not produce."""
    model = module_from_file(net_py, "make_net").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def x_image(n=3):
    return torch.randn(n, 3, 8, 8)


# --- file.py:factory ------------------------------------------------------------------------


def test_factory_with_state_dict_loads_weights(net_py, net, tmp_path):
    torch.save(net.state_dict(), tmp_path / "w.pt")
    loaded = load_model(f"{net_py}:make_net", weights=tmp_path / "w.pt")
    assert isinstance(loaded, LoadedModel)
    assert (loaded.form, loaded.hookable, loaded.fixed_batch) == ("factory", True, None)
    assert loaded.source == f"{net_py}:make_net"
    for name, value in net.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[name], value)
    x = x_image()
    assert torch.equal(loaded.module.eval()(x), net(x))


def test_factory_without_weights_says_so(net_py):
    loaded = load_model(f"{net_py}:make_net")
    assert any("no weights given" in n for n in loaded.notes)


def test_a_module_class_is_a_factory(net_py):
    assert isinstance(load_model(f"{net_py}:WideNet").module, nn.Module)
    assert isinstance(module_from_file(net_py, "make_net"), nn.Module)


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model"])
def test_checkpoint_dict_names_the_key_used(net_py, net, tmp_path, key):
    torch.save({"epoch": 3, key: net.state_dict(), "best_acc": 0.9}, tmp_path / "ckpt.pt")
    loaded = load_model(f"{net_py}:make_net", weights=tmp_path / "ckpt.pt")
    assert any(repr(key) in n for n in loaded.notes)
    assert torch.equal(loaded.module.fc.weight, net.fc.weight)


def test_checkpoint_without_a_state_dict_lists_its_keys(net_py, net, tmp_path):
    torch.save({"epoch": 3, "net": net.state_dict()}, tmp_path / "ckpt.pt")
    with pytest.raises(ModelLoadError, match=r"'epoch', 'net'"):
        load_model(f"{net_py}:make_net", weights=tmp_path / "ckpt.pt")


def test_mismatched_keys_are_listed(net_py, net, tmp_path):
    state = net.state_dict()
    del state["fc.bias"]
    state["head.weight"] = torch.zeros(2, 4)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ModelLoadError) as info:
        load_model(f"{net_py}:make_net", weights=tmp_path / "w.pt")
    message = str(info.value)
    assert "missing from the file (1): fc.bias" in message
    assert "unexpected in the file (1): head.weight" in message
    assert "Traceback" not in message


def test_shape_mismatch_suggests_the_factory_that_fits(net_py, tmp_path):
    wide = module_from_file(net_py, "WideNet")
    torch.save(wide.state_dict(), tmp_path / "wide.pt")
    with pytest.raises(ModelLoadError) as info:
        load_model(f"{net_py}:make_net", weights=tmp_path / "wide.pt")
    message = str(info.value)
    assert "shape mismatch (3)" in message
    assert "conv1.weight: file (8, 3, 3, 3), model (4, 3, 3, 3)" in message
    assert f"'{net_py}:WideNet'" in message


def test_data_parallel_prefix_is_removed(net_py, net, tmp_path):
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "w.pt")
    loaded = load_model(f"{net_py}:make_net", weights=tmp_path / "w.pt")
    assert torch.equal(loaded.module.fc.weight, net.fc.weight)
    assert any("'module.'" in n for n in loaded.notes)


def test_unknown_factory_suggests_names_in_the_file(net_py):
    with pytest.raises(ModelLoadError, match=r"'make_nte' is not defined.*Did you mean 'make_net'"):
        load_model(f"{net_py}:make_nte")


def test_python_file_without_factory_lists_functions(net_py):
    with pytest.raises(ModelLoadError, match=r":FACTORY'.*'make_net'"):
        load_model(net_py)


def test_factory_that_raises_reports_the_reason(net_py):
    with pytest.raises(ModelLoadError, match=r"broken\(\) raised ValueError: no GPU here"):
        load_model(f"{net_py}:broken")


def test_file_that_raises_on_import_reports_the_reason(tmp_path):
    (tmp_path / "bad.py").write_text("import torch\nraise ImportError('needs timm')\n")
    with pytest.raises(ModelLoadError, match=r"Importing .*bad.py raised ImportError: needs timm"):
        load_model(f"{tmp_path / 'bad.py'}:make")


def test_script_that_exits_on_import_is_explained(tmp_path):
    (tmp_path / "train.py").write_text("import sys\nsys.exit(2)\n")
    with pytest.raises(ModelLoadError, match=r"exited \(sys.exit\(2\)\).*__main__"):
        load_model(f"{tmp_path / 'train.py'}:make")


def test_factory_must_return_a_module(net_py):
    with pytest.raises(ModelLoadError, match=r"not_a_model\(\) returned int, not a torch.nn"):
        load_model(f"{net_py}:not_a_model")


def test_factory_must_take_no_required_arguments(net_py):
    with pytest.raises(ModelLoadError, match=r"needs arguments \(depth\)"):
        load_model(f"{net_py}:needs_args")


def test_missing_files_are_named(net_py, tmp_path):
    with pytest.raises(ModelLoadError, match="Model code not found"):
        load_model(f"{tmp_path / 'nope.py'}:make")
    with pytest.raises(ModelLoadError, match="Weights file not found"):
        load_model(f"{net_py}:make_net", weights=tmp_path / "nope.pt")
    with pytest.raises(ModelLoadError, match="Model file not found"):
        load_model(tmp_path / "nope.pt2")


def test_factory_file_can_import_its_siblings(tmp_path):
    (tmp_path / "ns_test_layers.py").write_text("from torch import nn\nHIDDEN = 5\n")
    (tmp_path / "model.py").write_text(
        "from torch import nn\nimport ns_test_layers\n"
        "def make():\n    return nn.Linear(2, ns_test_layers.HIDDEN)\n"
    )
    path_before = list(sys.path)
    try:
        assert load_model(f"{tmp_path / 'model.py'}:make").module.out_features == 5
        assert sys.path == path_before
    finally:
        sys.modules.pop("ns_test_layers", None)


def test_user_code_leaves_global_torch_state_alone(tmp_path):
    (tmp_path / "rude.py").write_text(
        "import torch\nfrom torch import nn\n"
        "torch.set_default_dtype(torch.float64)\n"
        "def make():\n    torch.manual_seed(123)\n    torch.set_grad_enabled(False)\n"
        "    return nn.Linear(2, 2)\n"
    )
    torch.manual_seed(7)
    rng_before = torch.get_rng_state()
    loaded = load_model(f"{tmp_path / 'rude.py'}:make")
    assert loaded.module.weight.dtype == torch.float64  # built as the file asked
    assert torch.get_default_dtype() == torch.float32
    assert torch.is_grad_enabled()
    assert torch.equal(torch.get_rng_state(), rng_before)


# --- pickles --------------------------------------------------------------------------------


@pytest.fixture
def pickled(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    torch.save(model, tmp_path / "whole.pt")
    return model, tmp_path / "whole.pt"


def test_whole_pickle_is_refused_without_trust(pickled):
    _, path = pickled
    with pytest.raises(ModelLoadError, match=r"runs code.*allow_pickle=True.*--trust-pickle") as e:
        load_model(path)
    assert "torch.nn.modules.container.Sequential" in str(e.value)


def test_whole_pickle_is_loaded_with_trust(pickled):
    model, path = pickled
    loaded = load_model(path, allow_pickle=True)
    assert (loaded.form, loaded.hookable) == ("pickle", True)
    x = torch.randn(2, 4)
    assert torch.equal(loaded.module(x), model(x))


def test_whole_pickle_as_weights_needs_trust_too(pickled, tmp_path):
    model, path = pickled
    (tmp_path / "seq.py").write_text(
        "from torch import nn\ndef make():\n    return nn.Sequential(nn.Linear(4, 3), nn.ReLU())\n"
    )
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        load_model(f"{tmp_path / 'seq.py'}:make", weights=path)
    loaded = load_model(f"{tmp_path / 'seq.py'}:make", weights=path, allow_pickle=True)
    assert torch.equal(loaded.module[0].weight, model[0].weight)
    assert any("pickled module" in n for n in loaded.notes)


def test_state_dict_given_as_model_asks_for_the_factory_form(net, tmp_path):
    torch.save(net.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ModelLoadError, match=r"holds weights.*'file.py:FACTORY'"):
        load_model(tmp_path / "w.pt")


def test_weights_only_apply_to_factories(pickled, tmp_path):
    _, path = pickled
    with pytest.raises(ModelLoadError, match="weights= applies only"):
        load_model(path, weights=path)


def test_a_file_torch_cannot_read(tmp_path):
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(ModelLoadError, match="not a file torch can read"):
        load_model(tmp_path / "notes.pt")


# --- TorchScript ----------------------------------------------------------------------------

# torch 2.13 deprecates making TorchScript; users still hand us such files.
jit_deprecated = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


@jit_deprecated
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_round_trip(net, tmp_path, how):
    x = x_image()
    compiled = torch.jit.script(net) if how == "script" else torch.jit.trace(net, x)
    torch.jit.save(compiled, tmp_path / "net.pt")
    loaded = load_model(tmp_path / "net.pt")
    assert (loaded.form, loaded.hookable, loaded.fixed_batch) == ("torchscript", False, None)
    assert torch.allclose(loaded.module(x), net(x))
    assert any("cannot be hooked" in n for n in loaded.notes)


@jit_deprecated
def test_torchscript_archive_can_supply_weights(net_py, net, tmp_path):
    torch.jit.save(torch.jit.script(net), tmp_path / "net.pt")
    loaded = load_model(f"{net_py}:make_net", weights=tmp_path / "net.pt")
    assert torch.equal(loaded.module.conv1.weight, net.conv1.weight)


# --- torch.export ---------------------------------------------------------------------------


def _hook_calls(module: nn.Module, names: list[str]) -> list[str]:
    calls: list[str] = []
    named = dict(module.named_modules())
    for name in names:
        named[name].register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    return calls


def test_export_with_static_batch(net, tmp_path):
    x = x_image(3)
    torch.export.save(torch.export.export(net, (x,)), tmp_path / "net.pt2")
    loaded = load_model(tmp_path / "net.pt2")
    assert (loaded.form, loaded.hookable, loaded.fixed_batch) == ("export", True, 3)
    assert {"conv1", "relu1", "fc"} <= {name for name, _ in loaded.module.named_modules()}
    calls = _hook_calls(loaded.module, ["conv1", "relu1", "fc"])
    assert torch.allclose(loaded.module(x), net(x), atol=1e-6)
    assert calls == ["conv1", "relu1", "fc"]
    assert any("no train/eval switch" in n for n in loaded.notes)
    assert any("fixed batch size of 3" in n for n in loaded.notes)


def test_export_with_dynamic_batch(net, tmp_path):
    def export(batch_dim, name):
        program = torch.export.export(net, (x_image(4),), dynamic_shapes={"x": {0: batch_dim}})
        torch.export.save(program, tmp_path / name)

    export(torch.export.Dim("batch", min=2, max=64), "bounded.pt2")
    bounded = load_model(tmp_path / "bounded.pt2")
    assert bounded.fixed_batch is None
    assert any("dynamic batch size between 2 and 64" in n for n in bounded.notes)
    export(torch.export.Dim("batch"), "net.pt2")
    loaded = load_model(tmp_path / "net.pt2")
    assert loaded.fixed_batch is None
    assert "exported with a dynamic batch size" in loaded.notes
    calls = _hook_calls(loaded.module, ["conv1"])
    x = x_image(7)
    assert torch.allclose(loaded.module(x), net(x), atol=1e-6)
    assert calls == ["conv1"]


def test_export_is_recognised_by_content_not_extension(net, tmp_path):
    torch.export.save(torch.export.export(net, (x_image(2),)), tmp_path / "net.pt2")
    os.rename(tmp_path / "net.pt2", tmp_path / "net.bin")
    assert load_model(tmp_path / "net.bin").form == "export"


# --- real models trained elsewhere (Captum tutorials) ---------------------------------------

from foreign import FOREIGN, MODELS, needs_foreign  # noqa: E402


@needs_foreign
@pytest.mark.parametrize(
    "factory, weights, input_shape, output_shape",
    [
        ("cifar_net", "cifar_torchvision.pt", (5, 3, 32, 32), (5, 10)),
        ("california_net", "california_model.pt", (5, 8), (5, 1)),
        ("titanic_net", "titanic_model.pt", (5, 12), (5, 2)),
    ],
)
def test_foreign_models_load_strictly(factory, weights, input_shape, output_shape):
    loaded = load_model(f"{MODELS}:{factory}", weights=FOREIGN / weights)
    model = loaded.module.eval()
    with torch.no_grad():
        out = model(torch.rand(input_shape))
    assert out.shape == output_shape
    assert torch.isfinite(out).all()
    if factory == "titanic_net":
        assert torch.allclose(out.sum(dim=1), torch.ones(5))


def test_errors_are_neuronscope_errors():
    assert issubclass(ModelLoadError, NeuronscopeError)
