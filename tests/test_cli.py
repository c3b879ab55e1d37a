"""The CLI: commands map onto the API; user mistakes exit 2 with one paragraph and no traceback."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from neuronscope.cli import main

MODEL_PY = textwrap.dedent("""
    import torch
    from torch import nn

    def make_net():
        return nn.Sequential(nn.Conv2d(3, 4, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(4, 2))
""")


@pytest.fixture
def model(tmp_path):
    (tmp_path / "net.py").write_text(MODEL_PY)
    ns = {}
    exec(MODEL_PY, ns)
    torch.manual_seed(0)
    torch.save(ns["make_net"]().state_dict(), tmp_path / "w.pt")
    return [f"{tmp_path}/net.py:make_net", "--weights", str(tmp_path / "w.pt"), "--input-shape", "3,12,12"]


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "data" / c / f"{i}.jpg")
    return str(tmp_path / "data")


def test_help_reads_well(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("layers", "filters", "report", "demo", "serve", "file.py:factory", "examples:"):
        assert word in out


def test_layers_command(model, capsys):
    assert main(["-q", "layers", *model]) == 0
    out = capsys.readouterr().out
    assert "Conv2d" in out and "4x12x12" in out and "304" in out  # 3*4*25 + 4 parameters


def test_filters_command(model, tmp_path, capsys):
    assert main(["-q", "filters", *model, "--out", str(tmp_path / "f")]) == 0
    assert (tmp_path / "f" / "filters.html").exists()
    assert (tmp_path / "f" / "images" / "filters" / "filters.png").exists()


def test_report_command(model, images, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["-q", "report", "--visualize", "0", *model, "--data", images, "--out", str(out), "--mean", "0.5", "--std", "0.25"]) == 0
    assert "Report written" in capsys.readouterr().out
    html = (out / "index.html").read_text()
    assert "cat" in html and "dog" in html and "0.25" in html


@pytest.mark.parametrize("args, message", [
    (["--layers", "conv9"], "No layer named 'conv9'"),
    (["--layers", "0:7"], "is a unit address"),
    (["--mean", "0.1,0.2"], "give 1 or 3"),
    (["--input-shape", "3,x"], "is not a shape"),
    (["--classes", "a,b,c"], "folder(s) 'cat', 'dog'"),
])
def test_user_mistakes_exit_2_with_a_message(model, images, tmp_path, capsys, args, message):
    base = list(model)
    if "--input-shape" in args:
        i = base.index("--input-shape")
        del base[i:i + 2]
    code = main(["-q", "report", "--visualize", "0", *base, "--data", images, "--out", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err


def test_wrong_input_shape_is_reported(model, images, tmp_path, capsys):
    i = model.index("--input-shape")
    model[i + 1] = "3,12"
    assert main(["report", *model, "--data", images, "--out", str(tmp_path / "r")]) == 2
    assert "input" in capsys.readouterr().err.lower()


def test_missing_model_file(tmp_path, capsys):
    assert main(["layers", f"{tmp_path}/nope.py:make", "--input-shape", "3"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_console_script_entry_point(model):
    r = subprocess.run([sys.executable, "-m", "neuronscope.cli", "-q", "layers", *model],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Linear" in r.stdout


def test_examples_command(model, images, tmp_path, capsys):
    out = tmp_path / "ex"
    assert main(["-q", "examples", *model, "--data", images, "--out", str(out), "-k", "3", "--reduce", "mean"]) == 0
    assert "Dataset examples written" in capsys.readouterr().out
    import json

    sections = json.loads((out / "manifest.json").read_text())["sections"]
    assert set(sections) == {"overview", "examples", "layer_stats"}
    assert sections["examples"]["summary"]["k"] == 3 and sections["examples"]["summary"]["reduce"] == "mean"
    assert (out / "units" / "1" / "0.html").exists() and (out / "examples.html").exists()
    assert main(["-q", "examples", *model, "--data", images, "--out", str(out), "-k", "0"]) == 2
    assert "k must be at least 1" in capsys.readouterr().err
