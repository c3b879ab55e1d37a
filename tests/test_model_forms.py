"""The three ways users hand over a model, through the whole path: load, Subject, analyses, CLI."""

import json
import threading
import urllib.request
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from neuronscope import Subject, load_model
from neuronscope.cli import main


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 3)).eval()


@pytest.fixture
def arrays(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((7, 1, 8, 8), dtype=np.float32), y=rng.integers(0, 3, 7))
    return str(tmp_path / "d.npz")


def test_export_at_a_fixed_batch_is_padded_and_hooked(tmp_path, arrays):
    m = net()
    ep = torch.export.export(m, (torch.rand(4, 1, 8, 8),))
    torch.export.save(ep, tmp_path / "m.pt2")
    loaded = load_model(tmp_path / "m.pt2")
    assert loaded.fixed_batch == 4
    s = Subject(loaded.module, (1, 8, 8), fixed_batch=loaded.fixed_batch, hookable=loaded.hookable)
    x = torch.rand(7, 1, 8, 8)  # not a multiple of 4: the last chunk is padded, then trimmed
    acts = s.activations(x, ["1", "4"])
    assert acts["1"].shape == (7, 4, 8, 8)
    assert torch.allclose(acts["4"], m(x), atol=1e-5)
    assert torch.allclose(acts["1"], torch.relu(m[0](x)), atol=1e-5)
    out = tmp_path / "r"
    assert main(["-q", "report", "--visualize", "0", str(tmp_path / "m.pt2"), "--input-shape", "1,8,8", "--data", arrays,
                 "--out", str(out)]) == 0
    m_ = json.loads((out / "manifest.json").read_text())
    assert m_["sections"]["sanity"]["summary"]["n"] == 7
    assert "layer_stats" in m_["sections"]


def test_torchscript_gets_output_level_analyses_and_refuses_layers(tmp_path, arrays, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.trace(net(), torch.rand(2, 1, 8, 8)), tmp_path / "m.ts")
    out = tmp_path / "r"
    assert main(["-q", "report", "--visualize", "0", str(tmp_path / "m.ts"), "--input-shape", "1,8,8", "--data", arrays,
                 "--out", str(out)]) == 0
    sections = json.loads((out / "manifest.json").read_text())["sections"]
    assert "sanity" in sections and "activations" not in sections
    capsys.readouterr()
    code = main(["-q", "report", "--visualize", "0", str(tmp_path / "m.ts"), "--input-shape", "1,8,8", "--data", arrays,
                 "--out", str(out), "--layers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "TorchScript" in err and ".pt2" in err and "Traceback" not in err


def test_serve_binds_loopback_and_serves_the_report(tmp_path):
    from neuronscope.website.serve import make_server

    (tmp_path / "index.html").write_text("<h1>hello</h1>")
    httpd = make_server(tmp_path, port=0)
    assert httpd.server_address[0] == "127.0.0.1"
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{httpd.server_address[1]}/index.html", timeout=10).read()
        assert b"hello" in body
    finally:
        httpd.shutdown()
        httpd.server_close()
