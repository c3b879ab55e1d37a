"""Data adapters: image folders, array files, tables; stable ids, skipping, batching."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from neuronscope.data import ArrayData, Batch, ImageFolder, TableData, open_data
from neuronscope.errors import DataError, InputShapeError, NeuronscopeError

SWAN = Path("/work/shared/fixtures/foreign/swan-3299528_1280.jpg")


def save_image(path: Path, color, size=(12, 10), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def truncated_png(path: Path) -> Path:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue()[:60])
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "pets"
    save_image(root / "cat" / "a.png", (255, 0, 0))
    save_image(root / "cat" / "b.jpg", (250, 0, 0))
    save_image(root / "cat" / "sub" / "c.bmp", (255, 0, 0))
    truncated_png(root / "cat" / "broken.png")
    save_image(root / "dog" / "d.png", (0, 0, 255))
    save_image(root / "dog" / "e.webp", (0, 0, 255))
    (root / "dog" / "fake.png").write_text("not a picture")
    (root / "dog" / "notes.txt").write_text("hello")
    save_image(root / "dog" / ".hidden.png", (0, 0, 0))
    return root


# ------------------------------------------------------------------------------ image folders


def test_image_folder_labels_shapes_and_skips(folder):
    data = open_data(folder, input_shape=(3, 8, 8))
    assert isinstance(data, ImageFolder) and data.kind == "images"
    assert data.classes == ["cat", "dog"] and data.task == "classification"
    # len counts listed image files (decode failures are found while loading)
    assert len(data) == 7
    assert data.skipped == {"dog/notes.txt": "not an image file (.txt)"}
    (batch,) = list(data.batches(64))
    assert batch.ids == ["cat/a.png", "cat/b.jpg", "cat/sub/c.bmp", "dog/d.png", "dog/e.webp"]
    assert batch.x.shape == (5, 3, 8, 8) and batch.x.dtype == torch.float32
    assert batch.y.tolist() == [0, 0, 0, 1, 1] and batch.y.dtype == torch.int64
    assert 0.0 <= batch.x.min() and batch.x.max() <= 1.0
    assert torch.allclose(batch.x[0, 0], torch.ones(8, 8)) and batch.x[0, 2].max() == 0
    assert batch.x[3, 2].min() == 1.0 and batch.x[3, 0].max() == 0
    assert set(data.skipped) == {"dog/notes.txt", "cat/broken.png", "dog/fake.png"}
    assert data.skipped["cat/broken.png"].startswith("cannot read image")
    summary = data.summary()
    json.dumps(summary)
    assert summary["n"] == 7 and summary["n_skipped"] == 3 and summary["kind"] == "images"


def test_image_folder_get_round_trip_and_unknown_ids(folder):
    data = open_data(folder, input_shape=(3, 6, 6))
    batches = list(data.batches(2))
    assert [len(b) for b in batches] == [2, 2, 1]  # skipped items are replaced, batches stay full
    streamed = Batch.cat(batches)
    wanted = streamed.ids[::-1]
    again = data.get(wanted)
    assert again.ids == wanted
    assert torch.equal(again.x, streamed.x.flip(0)) and torch.equal(again.y, streamed.y.flip(0))
    assert data.ids() == open_data(folder, input_shape=(3, 6, 6)).ids()  # stable across opens
    with pytest.raises(DataError, match="cat/a.pgn"):
        data.get(["cat/a.pgn"])
    with pytest.raises(DataError, match="cannot read image"):
        data.get(["cat/broken.png"])


def test_given_classes_define_order_and_folders_may_be_a_subset(folder):
    data = open_data(folder, input_shape=(3, 4, 4), classes=["dog", "cat"])
    assert data.classes == ["dog", "cat"]
    assert data.get(["cat/a.png", "dog/d.png"]).y.tolist() == [1, 0]
    # The model knows more classes than the folder holds: labels follow the model's order.
    subset = open_data(folder, input_shape=(3, 4, 4), classes=["bird", "cat", "fish", "dog"])
    assert subset.get(["cat/a.png", "dog/d.png"]).y.tolist() == [1, 3]
    with pytest.raises(DataError, match="'dog' are not among the model's classes"):
        open_data(folder, input_shape=(3, 4, 4), classes=["cat", "bird"])


def test_grey_and_rgb(tmp_path):
    path = save_image(tmp_path / "flat" / "x.png", (200, 100, 50))
    rgb = open_data(tmp_path / "flat", input_shape=(3, 5, 5)).get(["x.png"]).x[0]
    grey = open_data(tmp_path / "flat", input_shape=(1, 5, 5)).get(["x.png"]).x[0]
    assert rgb.shape == (3, 5, 5) and grey.shape == (1, 5, 5)
    assert torch.allclose(rgb[:, 0, 0], torch.tensor([200, 100, 50]) / 255.0)
    expected = Image.open(path).convert("L").getpixel((0, 0)) / 255.0
    assert torch.allclose(grey, torch.full((1, 5, 5), expected))
    save_image(tmp_path / "g" / "y.png", 77, mode="L")  # a grey file read as RGB
    assert torch.allclose(open_data(tmp_path / "g", input_shape=(3, 2, 2)).get(["y.png"]).x,
                          torch.full((1, 3, 2, 2), 77 / 255.0))


def test_sixteen_bit_grey_is_not_clipped(tmp_path):
    a = np.array([[0, 16384], [32768, 65535]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "deep.png")
    x = open_data(tmp_path / "deep.png", input_shape=(1, 2, 2)).get(["deep.png"]).x[0, 0]
    assert torch.allclose(x, torch.from_numpy(a / 65535.0).float(), atol=1e-6)
    rgb = open_data(tmp_path / "deep.png", input_shape=(3, 2, 2)).get(["deep.png"]).x[0]
    assert torch.equal(rgb[0], x) and torch.equal(rgb[2], x)


def test_resize_keeps_aspect_and_crops_centre(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)  # wide: red | green (centre half) | blue
    a[:, :10, 0] = 255
    a[:, 10:30, 1] = 255
    a[:, 30:, 2] = 255
    Image.fromarray(a).save(tmp_path / "wide.png")
    x = open_data(tmp_path / "wide.png", input_shape=(3, 10, 10)).get(["wide.png"]).x[0]
    assert x.shape == (3, 10, 10)
    green = torch.tensor([0.0, 1.0, 0.0])[:, None, None]
    assert torch.allclose(x[:, :, 1:9], green.expand(3, 10, 8))
    assert x[1].mean() > 0.9  # only the edges blend a little with red/blue
    Image.fromarray(a.transpose(1, 0, 2)).save(tmp_path / "tall.png")  # tall: same, vertically
    y = open_data(tmp_path / "tall.png", input_shape=(3, 10, 10)).get(["tall.png"]).x[0]
    assert torch.allclose(y, x.transpose(1, 2), atol=1e-6)
    z = open_data(tmp_path / "tall.png", input_shape=(3, 6, 12)).get(["tall.png"]).x[0]
    assert z.shape == (3, 6, 12)  # non-square targets cover then crop
    assert torch.allclose(z[1, 1:5], torch.ones(4, 12))


def test_value_range_is_linear(tmp_path):
    save_image(tmp_path / "v" / "black.png", (0, 0, 0))
    save_image(tmp_path / "v" / "grey.png", (51, 51, 51))
    save_image(tmp_path / "v" / "white.png", (255, 255, 255))
    data = open_data(tmp_path / "v", input_shape=(3, 4, 4), value_range=(-1, 1))
    x = next(data.batches()).x
    assert data.task is None and next(data.batches()).y is None
    assert torch.allclose(x[:, 0, 0, 0], torch.tensor([-1.0, 51 / 255 * 2 - 1, 1.0]))
    x255 = next(open_data(tmp_path / "v", input_shape=(3, 4, 4), value_range=(0, 255)).batches()).x
    assert torch.allclose(x255[:, 0, 0, 0], torch.tensor([0.0, 51.0, 255.0]), atol=1e-4)
    with pytest.raises(DataError, match="low < high"):
        open_data(tmp_path / "v", input_shape=(3, 4, 4), value_range=(1, 0))


def test_image_input_shape_is_checked(tmp_path, folder):
    with pytest.raises(DataError, match="--input-shape C,H,W"):
        open_data(folder)
    with pytest.raises(DataError, match="1 .* or 3 .*channels.*array file"):
        open_data(folder, input_shape=(4, 8, 8))
    with pytest.raises(InputShapeError, match="C,H,W"):
        open_data(folder, input_shape=(8, 8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        open_data(tmp_path / "empty", input_shape=(3, 8, 8))


def test_loose_files_beside_class_folders_are_skipped(folder):
    save_image(folder / "stray.png", (1, 2, 3))
    data = open_data(folder, input_shape=(3, 4, 4))
    assert "stray.png" not in data.ids()
    assert data.skipped["stray.png"] == "not inside a class folder"


def test_single_image_file_and_real_photo(tmp_path):
    data = open_data(SWAN, input_shape=(3, 32, 32))
    assert len(data) == 1 and data.ids() == [SWAN.name] and data.task is None
    (batch,) = list(data.batches())
    assert batch.ids == [SWAN.name] and batch.y is None
    assert batch.x.shape == (1, 3, 32, 32) and batch.x.dtype == torch.float32
    assert 0.0 <= batch.x.min() < batch.x.max() <= 1.0 and batch.x.std() > 0.05
    assert torch.equal(data.get([SWAN.name]).x, batch.x)
    grey = open_data(SWAN, input_shape=(1, 20, 30), classes=["swan", "duck"])
    assert grey.get([SWAN.name]).x.shape == (1, 1, 20, 30) and grey.classes == ["swan", "duck"]
    truncated_png(tmp_path / "bad.png")
    bad = open_data(tmp_path / "bad.png", input_shape=(3, 8, 8))
    assert list(bad.batches()) == [] and "bad.png" in bad.skipped


# ------------------------------------------------------------------------------ arrays


def test_npz_with_labels_and_ids(tmp_path):
    x = np.random.default_rng(0).random((10, 2, 3, 3), dtype=np.float32)
    ids = np.array([f"ex{k}" for k in range(10)])
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(10) % 3, ids=ids)
    data = open_data(tmp_path / "d.npz", input_shape=(2, 3, 3), classes=["a", "b", "c"])
    assert isinstance(data, ArrayData) and data.kind == "arrays"
    assert data.task == "classification" and data.classes == ["a", "b", "c"]
    assert data.ids() == ids.tolist()
    streamed = Batch.cat(list(data.batches(4)))
    assert torch.equal(streamed.x, torch.from_numpy(x))
    assert streamed.y.tolist() == (np.arange(10) % 3).tolist()
    got = data.get(["ex7", "ex2"])
    assert torch.equal(got.x, torch.from_numpy(x[[7, 2]])) and got.y.tolist() == [1, 2]
    with pytest.raises(DataError, match="'ex70'"):
        data.get(["ex70"])


def test_npy_is_memory_mapped_and_ids_are_row_numbers(tmp_path):
    x = np.arange(5 * 4, dtype=np.float64).reshape(5, 4)
    np.save(tmp_path / "x.npy", x)
    data = open_data(tmp_path / "x.npy")
    assert isinstance(data._x, np.memmap)
    assert data.ids() == ["0", "1", "2", "3", "4"]
    assert data.task is None and data.input_shape == (4,)
    b = data.get(["3"])
    assert b.x.dtype == torch.float32 and b.x.tolist() == [x[3].tolist()] and b.y is None


@pytest.mark.parametrize("form", ["tensor", "tuple", "dict"])
def test_pt_forms(tmp_path, form):
    x, y = torch.randn(6, 5), torch.tensor([3, 5, 7, 3, 5, 7])
    obj = {"tensor": x, "tuple": (x, y), "dict": {"x": x, "y": y}}[form]
    torch.save(obj, tmp_path / "d.pt")
    data = open_data(tmp_path / "d.pt", input_shape=(5,))
    batch = data.get(data.ids())
    assert torch.equal(batch.x, x)
    if form == "tensor":
        assert batch.y is None and data.task is None
    else:  # labels that are not 0..K-1 are numbered in sorted order, names kept
        assert data.classes == ["3", "5", "7"] and batch.y.tolist() == [0, 1, 2, 0, 1, 2]


def test_array_labels_and_regression(tmp_path):
    x = np.zeros((4, 2), np.float32)
    np.savez(tmp_path / "skip.npz", x=x, y=np.array([0, 3, 3, 0]))  # indices kept; 1, 2 absent
    data = open_data(tmp_path / "skip.npz")
    assert data.classes == ["0", "1", "2", "3"] and data.get(["1"]).y.tolist() == [3]
    np.savez(tmp_path / "reg.npz", x=x, y=np.array([0.5, 1.25, 2.0, 3.0]))
    reg = open_data(tmp_path / "reg.npz")
    assert reg.task == "regression" and reg.classes is None
    assert reg.get(["1"]).y.dtype == torch.float32 and reg.get(["1"]).y.tolist() == [1.25]
    torch.save({"x": torch.zeros(3, 2), "y": torch.tensor([True, False, True])}, tmp_path / "b.pt")
    assert open_data(tmp_path / "b.pt").classes == ["False", "True"]


def test_array_shape_mismatch_message(tmp_path):
    np.save(tmp_path / "hwc.npy", np.zeros((7, 8, 8, 3), np.float32))
    with pytest.raises(InputShapeError) as err:
        open_data(tmp_path / "hwc.npy", input_shape=(3, 8, 8))
    msg = str(err.value)
    assert "(N, 3, 8, 8)" in msg and "(7, 8, 8, 3)" in msg
    assert "channels-last" in msg and "--input-shape 8,8,3" in msg


def test_array_file_problems(tmp_path):
    np.savez(tmp_path / "k.npz", inputs=np.zeros((2, 2)))
    with pytest.raises(DataError, match="'inputs'"):
        open_data(tmp_path / "k.npz")
    np.savez(tmp_path / "n.npz", x=np.zeros((3, 2)), y=np.zeros(2, np.int64))
    with pytest.raises(DataError, match="3 rows but y has 2"):
        open_data(tmp_path / "n.npz")
    with pytest.raises(DataError, match="model's weights"):
        open_data(SWAN.with_name("cifar_torchvision.pt"))
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 2)), y=np.array([0, 5]))
    with pytest.raises(DataError, match="'5'.*indices 0..1"):
        open_data(tmp_path / "c.npz", classes=["cat", "dog"])
    (tmp_path / "junk.pt").write_bytes(b"nope")
    with pytest.raises(DataError, match="cannot read"):
        open_data(tmp_path / "junk.pt")


# ------------------------------------------------------------------------------ tables


CSV = """id,age,fare,sex,survived,price
p1,22,7.25,male,0,1.5
p2,38,71.3,female,1,2.25
p3,,7.9,female,1,3.0
p4,35,53.1,female,1,0.75
p5,54,51.9,male,0,4.5
"""


@pytest.fixture
def csv(tmp_path) -> Path:
    path = tmp_path / "people.csv"
    path.write_text(CSV)
    return path


def test_csv_classification_and_missing_rows(csv):
    data = open_data(csv, target="survived", columns=["age", "fare"], id_column="id")
    assert isinstance(data, TableData) and data.kind == "table"
    assert data.task == "classification" and data.classes == ["0", "1"]
    assert data.columns == ["age", "fare"] and data.target == "survived"
    assert data.ids() == ["p1", "p2", "p4", "p5"]
    assert data.skipped == {"p3": "missing value in column 'age'"}
    batch = data.get(["p4", "p1"])
    assert batch.x.dtype == torch.float32
    assert torch.allclose(batch.x, torch.tensor([[35, 53.1], [22, 7.25]]))
    assert batch.y.tolist() == [1, 0] and batch.y.dtype == torch.int64
    named = open_data(csv, target="survived", columns=["age"], classes=["died", "lived"])
    assert named.classes == ["died", "lived"] and named.get(["1"]).y.tolist() == [1]
    assert named.summary()["n_skipped"] == 1


def test_csv_string_target_and_regression(csv):
    cat = open_data(csv, target="sex", columns=["fare", "price"])
    assert cat.task == "classification" and cat.classes == ["female", "male"]
    assert Batch.cat(list(cat.batches(2))).y.tolist() == [1, 0, 0, 0, 1]
    reg = open_data(csv, target="price", columns=["fare"], input_shape=(1,))
    assert reg.task == "regression" and reg.classes is None
    assert reg.get(["4"]).y.tolist() == [4.5] and reg.get(["4"]).y.dtype == torch.float32


def test_table_errors(csv):
    with pytest.raises(DataError, match="'sex'.*One-hot"):
        open_data(csv, target="survived", id_column="id")
    with pytest.raises(DataError, match="Did you mean 'survived'") as err:
        open_data(csv, target="survive")
    assert "'survive'" in str(err.value)
    with pytest.raises(InputShapeError, match="3.*2 feature column"):
        open_data(csv, target="survived", columns=["age", "fare"], input_shape=(3,))
    bad = csv.with_name("bad.csv")
    bad.write_text('a,b\n1,2\n3,4,5\n')
    with pytest.raises(DataError, match="bad.csv"):
        open_data(bad)


def test_parquet_and_tsv(tmp_path):
    table = pa.table({"f1": [0.1, 0.2, None, 0.4], "f2": [1, 2, 3, 4],
                      "label": ["b", "a", "a", None]})
    pq.write_table(table, tmp_path / "t.parquet")
    data = open_data(tmp_path / "t.parquet", target="label")
    assert data.columns == ["f1", "f2"] and data.classes == ["a", "b"]
    assert data.ids() == ["0", "1"] and set(data.skipped) == {"2", "3"}
    assert data.skipped["3"] == "missing value in column 'label'"
    assert data.get(["1", "0"]).y.tolist() == [0, 1]
    (tmp_path / "t.tsv").write_text("a\tb\n1\t2\n3\t4\n")
    assert open_data(tmp_path / "t.tsv").get(["1"]).x.tolist() == [[3.0, 4.0]]


# ------------------------------------------------------------------------------ batching, dispatch


def test_batches_with_limit(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(25, dtype=np.float32)[:, None])
    data = open_data(tmp_path / "x.npy")
    assert [len(b) for b in data.batches(4, limit=10)] == [4, 4, 2]
    assert [len(b) for b in data.batches(10, limit=100)] == [10, 10, 5]
    assert Batch.cat(list(data.batches(4, limit=6))).ids == ["0", "1", "2", "3", "4", "5"]
    assert list(data.batches(4, limit=0)) == []
    with pytest.raises(DataError):
        list(data.batches(0))


def test_open_data_dispatch_errors(tmp_path, csv):
    with pytest.raises(DataError, match="no such file or folder.*Did you mean 'people.csv'"):
        open_data(tmp_path / "peopel.csv")
    (tmp_path / "m.h5").write_bytes(b"")
    with pytest.raises(DataError, match=r"\.npz.*\.csv"):
        open_data(tmp_path / "m.h5")
    with pytest.raises(DataError, match="tables"):
        open_data(SWAN, input_shape=(3, 8, 8), target="label")
    assert issubclass(DataError, NeuronscopeError)
