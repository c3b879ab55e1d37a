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
    html = (out / "model.html").read_text()
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


def test_explain_command_on_image_files_and_on_ids(model, images, tmp_path, capsys):
    import csv

    out = tmp_path / "why"
    files = [f"{images}/cat/0.jpg", f"{images}/dog/1.jpg"]
    assert main(["-q", "explain", *model, *files, "--target", "cat", "--classes", "cat,dog",
                 "--method", "saliency,integrated_gradients", "--steps", "16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "integrated_gradients" in printed and "randomised" in printed
    assert sorted(p.name for p in out.glob("*.png")) == ["0.png", "1.png"]
    rows = list(csv.DictReader(open(out / "explanations.csv")))
    assert len(rows) == 4 and {r["target"] for r in rows} == {"class cat"}
    assert {r["method"] for r in rows} == {"saliency", "integrated_gradients"}
    assert (out / "randomisation.csv").exists()
    # ids from --data; a unit target; no checks
    out2 = tmp_path / "why2"
    assert main(["-q", "explain", *model, "cat/2.jpg", "--data", images, "--target", "1:3", "--method", "saliency",
                 "--no-checks", "--out", str(out2)]) == 0
    assert (out2 / "cat_2.png").exists()


def test_explain_command_errors_name_the_fix(model, images, tmp_path, capsys):
    code = main(["explain", *model, f"{images}/cat/0.jpg", "--method", "integrated_gradient", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "integrated_gradients" in err and "Traceback" not in err
    code = main(["explain", *model, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "--data" in err
    code = main(["explain", *model, "nope/0.jpg", "--data", images, "--out", str(tmp_path)])
    assert code == 2 and "no example with id" in capsys.readouterr().err
    code = main(["explain", *model, "--data", images, "--limit", "0", "--out", str(tmp_path)])
    assert code == 2 and "--limit must be at least 1" in capsys.readouterr().err


def test_explain_command_on_a_table(tmp_path, capsys):
    import csv

    (tmp_path / "lin.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def make():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    """))
    rng = np.random.default_rng(1)
    rows = ["a,b,c,y"] + [f"{a:.3f},{b:.3f},{c:.3f},{int(a > 0)}" for a, b, c in rng.normal(size=(30, 3))]
    (tmp_path / "t.csv").write_text("\n".join(rows))
    out = tmp_path / "why"
    assert main(["-q", "explain", f"{tmp_path}/lin.py:make", "--data", str(tmp_path / "t.csv"), "--target-column", "y",
                 "--limit", "3", "--method", "integrated_gradients,feature_ablation", "--out", str(out)]) == 0
    table = list(csv.DictReader(open(out / "attributions.csv")))
    assert len(table) == 6 and set(table[0]) >= {"a", "b", "c", "score", "baseline_score"}
    assert (out / "2-integrated_gradients.svg").read_text().count("<rect") >= 3
    ig = [r for r in table if r["method"] == "integrated_gradients"]
    for r in ig:  # complete: the columns add up to f(x) - f(mean)
        assert sum(float(r[c]) for c in "abc") == pytest.approx(float(r["score"]) - float(r["baseline_score"]), abs=1e-3)
