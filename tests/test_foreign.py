"""Real models trained elsewhere (Captum's tutorial networks), used as a user would use them.

The CIFAR network: its layers and first-layer filters, and a report on the swan photo plus
generated images. The housing regressor and the Titanic classifier (which ends in a Softmax
module): reports on synthetic rows in plausible ranges, since their data sets are not shipped.
"""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from PIL import Image

from foreign import FOREIGN, MODELS, needs_foreign
from neuronscope.cli import main

FIX = FOREIGN
pytestmark = needs_foreign
CIFAR = ["--weights", str(FIX / "cifar_torchvision.pt") if FIX else "", "--input-shape", "3,32,32",
         "--mean", "0.5", "--std", "0.5", "--classes", "plane,car,bird,cat,deer,dog,frog,horse,ship,truck"]


def test_cifar_layers(capsys):
    assert main(["-q", "layers", f"{MODELS}:cifar_net", *CIFAR]) == 0
    out = capsys.readouterr().out
    for row in ("conv1  Conv2d     6x28x28   456", "conv2  Conv2d     16x10x10  2,416", "fc3    Linear     10"):
        assert row in out
    assert "62,006 parameters" in out


def test_cifar_filters_and_report_on_the_swan_and_generated_images(tmp_path, capsys):
    data = tmp_path / "photos"
    (data / "bird").mkdir(parents=True)
    (data / "plane").mkdir()
    shutil.copy(FIX / "swan-3299528_1280.jpg", data / "bird" / "swan.jpg")
    rng = np.random.default_rng(0)
    for i in range(4):  # generated: sky-blue backgrounds with a grey blob
        img = np.zeros((48, 64, 3), np.uint8) + np.array([120, 170, 230], np.uint8)
        y, x = rng.integers(10, 30), rng.integers(10, 40)
        img[y:y + 10, x:x + 20] = 140
        Image.fromarray(img).save(data / "plane" / f"gen{i}.png")
    out = tmp_path / "report"
    assert main(["-q", "report", "--visualize", "0", f"{MODELS}:cifar_net", *CIFAR, "--data", str(data), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    filters = manifest["sections"]["filters"]["summary"]
    assert filters["layer"] == "conv1" and filters["kind"] == "conv-rgb" and filters["filters"] == 6
    assert 0 <= filters["noisy_fraction"] <= 1 and filters["score_defined"]
    assert min(Image.open(out / "images" / "filters" / "filters.png").size) >= 2 * 40  # 5x5 tiles blown up
    sanity = manifest["sections"]["sanity"]["summary"]
    assert sanity["n"] == 5 and sanity["classes"][2] == "bird"
    acts = manifest["sections"]["activations"]["summary"]
    assert [l["layer"] for l in acts["layers"]] == ["relu1", "relu2", "relu3", "relu4", "fc3"]
    assert acts["example_id"] == "bird/swan.jpg"
    att = manifest["sections"]["attribution"]["summary"]
    assert [m["name"] for m in att["methods"]] == ["integrated_gradients", "smoothgrad", "gradcam", "occlusion"]
    assert att["n"] == 5 and att["image"]
    assert next(m for m in att["methods"] if m["name"] == "gradcam")["layer"] == "relu2"  # last map bigger than 1x1
    assert "randomisation" in next(m for m in att["methods"] if m["name"] == "smoothgrad")
    page = (out / "attribution.html").read_text()
    assert "bird/swan.jpg" in page and "maps/0-occlusion.png" in page


def _rows(n, ranges, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.uniform(lo, hi, n) for k, (lo, hi) in ranges.items()}


def test_california_regressor(tmp_path):
    cols = _rows(64, {"MedInc": (0.5, 15), "HouseAge": (1, 52), "AveRooms": (1, 10), "AveBedrms": (0.5, 3),
                      "Population": (3, 5000), "AveOccup": (1, 6), "Latitude": (32.5, 42), "Longitude": (-124, -114)})
    cols["price"] = np.clip(0.4 * cols["MedInc"] + 0.3, 0.15, 5.0)
    pacsv.write_csv(pa.table(cols), tmp_path / "houses.csv")
    out = tmp_path / "r"
    assert main(["-q", "report", "--visualize", "0", f"{MODELS}:california_net", "--weights", str(FIX / "california_model.pt"),
                 "--data", str(tmp_path / "houses.csv"), "--target", "price", "--out", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["task"] == "regression" and m["model"]["columns"][0] == "MedInc"
    assert m["sections"]["sanity"]["summary"]["task"] == "regression"
    assert m["sections"]["filters"]["summary"]["kind"] == "dense-table"
    assert "lin4" in [l["layer"] for l in m["sections"]["activations"]["summary"]["layers"]]
    att = m["sections"]["attribution"]["summary"]
    assert att["target_kind"] == "output" and att["baseline"] == "mean" and not att["image"]
    ig = next(x for x in att["methods"] if x["name"] == "integrated_gradients")
    assert ig["completeness_rel_max"] < 0.05
    assert "<svg" in (out / "attribution.html").read_text()  # waterfalls from the mean row's price to each row's


def test_titanic_classifier_ending_in_softmax(tmp_path):
    n = 48
    rng = np.random.default_rng(1)
    cols = {"age": rng.uniform(1, 70, n), "sibsp": rng.integers(0, 4, n).astype(float),
            "parch": rng.integers(0, 3, n).astype(float), "fare": rng.uniform(5, 250, n)}
    sex = rng.integers(0, 2, n)
    emb = rng.integers(0, 3, n)
    cls = rng.integers(0, 3, n)
    cols.update({"female": (sex == 0) * 1.0, "male": (sex == 1) * 1.0,
                 "embark_C": (emb == 0) * 1.0, "embark_Q": (emb == 1) * 1.0, "embark_S": (emb == 2) * 1.0,
                 "class_1": (cls == 0) * 1.0, "class_2": (cls == 1) * 1.0, "class_3": (cls == 2) * 1.0})
    cols["survived"] = sex == 0
    pacsv.write_csv(pa.table(cols), tmp_path / "titanic.csv")
    out = tmp_path / "r"
    assert main(["-q", "report", "--visualize", "0", f"{MODELS}:titanic_net", "--weights", str(FIX / "titanic_model.pt"),
                 "--data", str(tmp_path / "titanic.csv"), "--target", "survived", "--classes", "died,survived",
                 "--out", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["squash"] == "softmax" and m["model"]["classes"] == ["died", "survived"]
    layers = [l["layer"] for l in m["sections"]["activations"]["summary"]["layers"]]
    assert layers[-1] == "linear3" and "softmax" not in layers, "logits are read before the Softmax"
    assert m["sections"]["sanity"]["summary"]["n"] == n
    att = m["sections"]["attribution"]["summary"]
    assert att["columns"][:2] == ["age", "sibsp"] and att["target_kind"] == "class"
    assert att["drivers"]["layer"] == "sigmoid2" and set(att["drivers"]["sentences"]) == {"died", "survived"}


def test_feature_visualization_of_the_cifar_net_and_the_titanic_classifier(tmp_path, capsys):
    """`neuronscope visualize` on the foreign models as a user would run it: units and a class of
    the CIFAR net (pictures and evidence), and the survival class of the Titanic network, which
    ends in a Softmax module and reads a table (a column profile inside the data's region)."""
    out = tmp_path / "vis"
    assert main(["-q", "visualize", f"{MODELS}:cifar_net", *CIFAR, "relu2", "--units", "0-3", "--steps", "16",
                 "--seeds", "2", "--out", str(out)]) == 0
    assert {p.name for p in (out / "relu2").iterdir()} >= {"0-pos.png", "0-neg.png", "3-pos.png", "grid.png"}
    rows = (out / "evidence.csv").read_text().splitlines()
    assert rows[0].startswith("address,") and len(rows) == 5
    assert main(["-q", "visualize", f"{MODELS}:cifar_net", *CIFAR, "class:bird", "--steps", "16", "--seeds", "1",
                 "--out", str(out)]) == 0
    assert (out / "classes" / "2-pos.png").exists()

    n = 48
    rng = np.random.default_rng(2)
    cols = {"age": rng.uniform(1, 70, n), "sibsp": rng.integers(0, 4, n).astype(float),
            "parch": rng.integers(0, 3, n).astype(float), "fare": rng.uniform(5, 250, n)}
    for group, k in (("sex", 2), ("emb", 3), ("cls", 3)):
        pick = rng.integers(0, k, n)
        names = {"sex": ["female", "male"], "emb": ["embark_C", "embark_Q", "embark_S"],
                 "cls": ["class_1", "class_2", "class_3"]}[group]
        cols.update({name: (pick == i) * 1.0 for i, name in enumerate(names)})
    cols["survived"] = cols["female"] > 0
    pacsv.write_csv(pa.table(cols), tmp_path / "titanic.csv")
    capsys.readouterr()
    tab = tmp_path / "tab"
    assert main(["-q", "visualize", f"{MODELS}:titanic_net", "--weights", str(FIX / "titanic_model.pt"),
                 "class:survived", "--data", str(tmp_path / "titanic.csv"), "--target", "survived",
                 "--classes", "died,survived", "--steps", "60", "--seeds", "2", "--out", str(tab)]) == 0
    printed = capsys.readouterr().out
    assert "most unusual columns" in printed
    profile = (tab / "profiles.csv").read_text().splitlines()
    assert profile[0] == "address,column,value,mean,z" and len(profile) == 1 + 12
