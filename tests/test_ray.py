"""The Ray engine: the same store with and without it, through a dying worker and a killed driver.

Runs on a local two-CPU cluster. CI (``.ci/run``) installs the ``ray`` extra and sets
NEURONSCOPE_REQUIRE_RAY=1, so there a missing Ray fails; elsewhere these tests skip.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from neuronscope import Subject
from neuronscope.data import ImageFolder, open_data
from neuronscope.pipeline import ReportOptions, analyze
from stores import assert_same_store

pytestmark = pytest.mark.slow
PASS_ONLY = ReportOptions(progress=False, sections=["sanity", "examples"], batch_size=16)


@pytest.fixture(scope="module")
def ray_cluster():
    try:
        import ray
    except ImportError:
        if os.environ.get("NEURONSCOPE_REQUIRE_RAY"):
            pytest.fail("Ray is not installed and CI requires the Ray tests: pip install -e '.[ray]'.")
        pytest.skip("Ray is not installed: pip install -e '.[ray]'.")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 6, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raydata") / "imgs"
    rng = np.random.default_rng(0)
    for c, base in (("dark", 70), ("light", 180)):
        (root / c).mkdir(parents=True)
        for i in range(110):
            arr = np.clip(base + rng.normal(0, 50, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / c / f"{i:03d}.png")
    (root / "dark" / "050-broken.png").write_bytes(b"not a png")  # unreadable, inside the first shards
    return root


def subject() -> Subject:
    return Subject(make_model(), (3, 12, 12), classes=["dark", "light"], name="small")


def engine(**kw):
    from neuronscope.engines.ray_engine import RayEngine

    return RayEngine(workers=2, shard_size=64, **kw)


def test_the_store_is_the_same_with_and_without_ray(ray_cluster, folder, tmp_path):
    data = open_data(folder, input_shape=(3, 12, 12))
    analyze(subject(), data, tmp_path / "local", PASS_ONLY)
    eng = engine()
    opts = ReportOptions(**{**PASS_ONLY.__dict__, "engine": eng})
    analyze(subject(), open_data(folder, input_shape=(3, 12, 12)), tmp_path / "ray", opts)
    assert eng.last["shards"] == 4 and eng.last["workers"] == 2 and eng.last["reused"] == 0
    assert eng.last["states_merged"] == 2, "each worker merges its own shards: one state per worker comes back"
    assert_same_store(tmp_path / "local", tmp_path / "ray")
    assert not list((tmp_path / "ray").glob(".pass-checkpoint*")), "finished shards are cleared once stored"


def test_a_limit_past_an_unreadable_example_reads_on_like_one_process(ray_cluster, folder, tmp_path):
    """limit=100 with a broken file among the first 100 positions: both runs read the 101st."""
    opts = ReportOptions(**{**PASS_ONLY.__dict__, "limit": 100})
    analyze(subject(), open_data(folder, input_shape=(3, 12, 12)), tmp_path / "local", opts)
    eng = engine()
    analyze(subject(), open_data(folder, input_shape=(3, 12, 12)), tmp_path / "ray",
            ReportOptions(**{**opts.__dict__, "engine": eng}))
    assert eng.last["shards"] == 3, "two shards of the first 100 positions, then the tail"
    assert_same_store(tmp_path / "local", tmp_path / "ray")


class DiesOnce(ImageFolder):
    """Kills its worker process the second time position 150 is read (the first read is the
    calibration of the histogram edges; the second, the shard holding it). A file counts reads."""

    marker: str = ""

    def _load(self, indices):
        indices = list(indices)
        if 150 in indices:
            reads = int(Path(self.marker).read_text()) + 1 if os.path.exists(self.marker) else 1
            Path(self.marker).write_text(str(reads))
            if reads == 2:
                os._exit(1)
        return super()._load(indices)


def test_a_worker_that_dies_mid_shard_is_replaced_and_the_result_is_the_same(ray_cluster, folder, tmp_path):
    analyze(subject(), open_data(folder, input_shape=(3, 12, 12)), tmp_path / "local", PASS_ONLY)
    data = DiesOnce(folder, (3, 12, 12))
    data.marker = str(tmp_path / "died")
    eng = engine()
    analyze(subject(), data, tmp_path / "ray", ReportOptions(**{**PASS_ONLY.__dict__, "engine": eng}))
    # calibration read it, the shard died on it, the fresh worker read it (the pictures may read it again)
    assert int((tmp_path / "died").read_text()) >= 3 and eng.last["retried"] == 1
    assert_same_store(tmp_path / "local", tmp_path / "ray")


def test_without_a_checkpoint_a_dead_workers_shards_run_again(ray_cluster, folder, tmp_path):
    """No folder to keep shards in (the API without checkpoint=): what the dead worker had merged
    is gone, so its finished shards are run again on the fresh worker."""
    from neuronscope.analyses.examples import examples

    local = examples(subject(), open_data(folder, input_shape=(3, 12, 12)), batch_size=16, pictures=False,
                     progress=False)
    data = DiesOnce(folder, (3, 12, 12))
    data.marker = str(tmp_path / "died")
    eng = engine()
    sharded = examples(subject(), data, batch_size=16, pictures=False, progress=False, engine=eng)
    assert eng.last["retried"] == 1 and eng.last["read_bytes"] == 0
    for name, w in local.layers.items():
        m = sharded.layers[name]
        assert m.top.ids == w.top.ids and m.bottom.ids == w.bottom.ids
        np.testing.assert_array_equal(m.hist_counts, w.hist_counts)
        np.testing.assert_allclose(m.std, w.std, rtol=1e-6, atol=1e-9)


DRIVER = textwrap.dedent("""
    import sys, time
    import torch
    from torch import nn
    sys.path.insert(0, {tests!r})
    from test_ray import SlowFolder, make_model
    from neuronscope import Subject
    from neuronscope.engines.ray_engine import RayEngine
    from neuronscope.pipeline import ReportOptions, analyze
    s = Subject(make_model(), (3, 12, 12), classes=["dark", "light"], name="small")
    eng = RayEngine(workers=2, shard_size=64, num_cpus=2)
    analyze(s, SlowFolder({folder!r}, (3, 12, 12)), {out!r},
            ReportOptions(progress=False, sections=["sanity", "examples"], batch_size=16, engine=eng))
""")


class SlowFolder(ImageFolder):
    """Reads the shards after the first two slowly, so the driver can be killed mid-pass."""

    def _load(self, indices):
        indices = list(indices)
        if indices and min(indices) >= 128:
            time.sleep(0.5)
        return super()._load(indices)


def test_an_interrupted_driver_resumes_without_redoing_finished_shards(ray_cluster, folder, tmp_path):
    analyze(subject(), open_data(folder, input_shape=(3, 12, 12)), tmp_path / "local", PASS_ONLY)
    out = tmp_path / "ray"
    script = DRIVER.format(tests=str(Path(__file__).parent), folder=str(folder), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shards = out / ".pass-checkpoint.npz.shards"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(shards.glob("*/0*.npz"))) < 2 and proc.poll() is None:
        time.sleep(0.2)
    finished = sorted(p.name for p in shards.glob("*/0*.npz"))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(finished) >= 2, proc.stderr.read().decode()[-2000:]
    assert not (out / "manifest.json").exists() or "examples" not in (out / "manifest.json").read_text()
    eng = engine()
    analyze(subject(), open_data(folder, input_shape=(3, 12, 12)), out,
            ReportOptions(**{**PASS_ONLY.__dict__, "engine": eng}))
    assert eng.last["reused"] >= 2 and eng.last["reused"] < eng.last["shards"]
    assert_same_store(tmp_path / "local", out)


@pytest.fixture(scope="module")
def model_spec(tmp_path_factory) -> list[str]:
    """The small model as a user names it on the command line: file.py:factory plus weights."""
    root = tmp_path_factory.mktemp("model")
    (root / "net.py").write_text(textwrap.dedent("""
        from torch import nn
        def make():
            return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 6, 3),
                                 nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))
    """))
    torch.save(make_model().state_dict(), root / "w.pt")
    return [f"{root / 'net.py'}:make", "--weights", str(root / "w.pt"), "--input-shape", "3,12,12",
            "--classes", "dark,light"]


def test_cli_engine_ray_loads_the_model_from_its_spec_and_writes_the_same_store(ray_cluster, folder, model_spec,
                                                                                tmp_path):
    from neuronscope.cli import main

    common = [*model_spec, "--data", str(folder), "--batch-size", "16"]
    assert main(["-q", "examples", *common, "--out", str(tmp_path / "local")]) == 0
    assert main(["-q", "examples", *common, "--out", str(tmp_path / "ray"), "--engine", "ray", "--workers", "2"]) == 0
    assert_same_store(tmp_path / "local", tmp_path / "ray", sections=("examples", "layer_stats"))


def test_cli_visualize_many_units_as_tasks_writes_the_pictures_of_the_same_batches(ray_cluster, model_spec, tmp_path):
    from neuronscope.cli import main

    common = ["visualize", *model_spec, "3", "--units", "0-4", "--steps", "6", "--seeds", "2", "--no-negative"]
    assert main(["-q", *common, "--out", str(tmp_path / "ray"), "--engine", "ray", "--workers", "1",
                 "--per-task", "2"]) == 0
    written = sorted(p.relative_to(tmp_path / "ray").as_posix() for p in (tmp_path / "ray").rglob("*.png"))
    assert written == [f"3/{u}-pos.png" for u in range(5)], written  # written by the 3 tasks (no per-batch grid)
    assert len((tmp_path / "ray" / "evidence.csv").read_text().splitlines()) == 1 + 5
    # the last task drew unit 4 alone: the same picture as drawing unit 4 alone in one process
    assert main(["-q", *[a if a != "0-4" else "4" for a in common], "--out", str(tmp_path / "local")]) == 0
    assert (tmp_path / "local" / "3" / "4-pos.png").read_bytes() == (tmp_path / "ray" / "3" / "4-pos.png").read_bytes()


def test_feature_visualization_and_attribution_run_as_tasks_with_the_same_results(ray_cluster, folder, tmp_path):
    """The whole report: the visualize and explain calls go to the workers (one worker with both
    CPUs, so its float arithmetic is the driver's); the store matches the one-process run."""
    opts = ReportOptions(progress=False, batch_size=16, featvis_units=2, featvis_steps=8, featvis_seeds=2,
                         featvis_diverse=2, attribution_inputs=4, attribution_units=1, dictionary_steps=20,
                         shortcuts=False)
    analyze(subject(), open_data(folder, input_shape=(3, 12, 12)), tmp_path / "local", opts)
    from neuronscope.engines.ray_engine import RayEngine

    eng = RayEngine(workers=1)
    analyze(subject(), open_data(folder, input_shape=(3, 12, 12)), tmp_path / "ray",
            ReportOptions(**{**opts.__dict__, "engine": eng}))
    assert eng.last["workers"] == 1
    assert_same_store(tmp_path / "local", tmp_path / "ray", sections=("examples", "featvis", "attribution"))


def test_many_units_and_many_inputs_split_into_tasks_like_the_same_calls_in_one_process(ray_cluster, folder,
                                                                                        tmp_path):
    from neuronscope.analyses.attribution.explain import explain
    from neuronscope.analyses.featvis.visualize import visualize
    from neuronscope.engines.ray_engine import RayEngine

    s, data = subject(), open_data(folder, input_shape=(3, 12, 12))
    eng = RayEngine(workers=1)
    v = eng.visualize(s, "1", range(8), per_task=3, steps=6, seeds=2, diverse=0, negative=False)
    assert [r.target.address for r in v.results] == [f"1:{u}" for u in range(8)]
    alone = visualize(s, "1", units=[6, 7], steps=6, seeds=2, diverse=0, negative=False, progress=False)
    np.testing.assert_array_equal(v.results[6].images, alone.results[0].images)
    # with out=, each task writes its own pictures and only the evidence comes back
    w = eng.visualize(s, "1", range(8), per_task=3, steps=6, seeds=2, diverse=0, negative=False, out=tmp_path / "v")
    assert all(len(r.images) == 0 for r in w.results) and [r.values[0] for r in w.results] == [r.values[0] for r in v.results]
    assert sorted(p.name for p in (tmp_path / "v" / "1").glob("*.png")) == sorted(f"{u}-pos.png" for u in range(8))
    batch = data.get(data.ids()[:10])
    e = eng.explain(s, batch, per_task=4, target="predicted",
                    method=["integrated_gradients", "occlusion", "smoothgrad"], n_steps=8, samples=6)
    assert e.ids == batch.ids and len(e["occlusion"].curves.deletion_auc) == 10
    assert e.target.labels == [f"class {c} (predicted)" for c in e.predicted]
    first = explain(s, data.get(batch.ids[:4]), target="predicted", method=["integrated_gradients", "occlusion"],
                    n_steps=8, progress=False)
    last = explain(s, data.get(batch.ids[8:]), target="predicted", method=["integrated_gradients", "occlusion"],
                   n_steps=8, randomisation=False, progress=False)
    torch.testing.assert_close(e["integrated_gradients"].maps[8:], last["integrated_gradients"].maps)
    np.testing.assert_allclose(e["occlusion"].curves.insertion_auc[8:], last["occlusion"].curves.insertion_auc)
    # an example's SmoothGrad noise is its own: the task of inputs 4-7 draws what the whole call draws
    whole = explain(s, batch, target="predicted", method="smoothgrad", samples=6, randomisation=False, progress=False)
    torch.testing.assert_close(e["smoothgrad"].maps, whole["smoothgrad"].maps)
    tensors = eng.explain(s, batch.x, per_task=4, method="smoothgrad", samples=6, randomisation=False, curves=False)
    assert tensors.ids == [f"input-{i}" for i in range(10)], "tensor inputs keep their place in the whole call"
    assert e["integrated_gradients"].randomisation.correlations == first["integrated_gradients"].randomisation.correlations
    from ray import cloudpickle

    assert e.target.forward is None, "the answers do not carry the model back"
    assert b"torch.nn.modules.conv" not in cloudpickle.dumps(e)


def test_the_one_process_path_never_imports_ray(folder, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_ray import subject
        from neuronscope.data import open_data
        from neuronscope.pipeline import ReportOptions, report
        report(subject(), open_data({str(folder)!r}, input_shape=(3, 12, 12)), {str(tmp_path / "r")!r},
               ReportOptions(progress=False, featvis_units=1, featvis_steps=4, featvis_diverse=0,
                             attribution_inputs=2, attribution_units=1, dictionary_steps=5, shortcuts=False))
        assert "ray" not in sys.modules, "ray was imported"
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_cli_explain_many_inputs_as_tasks_writes_the_same_files(ray_cluster, folder, model_spec, tmp_path):
    from neuronscope.cli import main

    common = ["explain", *model_spec, "--data", str(folder), "--limit", "6", "--method", "integrated_gradients",
              "--steps", "8", "--no-checks"]
    assert main(["-q", *common, "--out", str(tmp_path / "local")]) == 0
    assert main(["-q", *common, "--out", str(tmp_path / "ray"), "--engine", "ray", "--workers", "1",
                 "--per-task", "4"]) == 0
    local = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*") if p.is_file())
    assert local == sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*") if p.is_file())
    assert len(local) == 6 + 1  # a picture per input, and explanations.csv
    for rel in local:  # integrated gradients does not depend on the chunk an input came in
        assert (tmp_path / "local" / rel).read_bytes() == (tmp_path / "ray" / rel).read_bytes(), rel


def test_bad_engine_options_say_what_to_do(ray_cluster):
    from neuronscope.engines.ray_engine import RayEngine
    from neuronscope.errors import NeuronscopeError, OptionError

    with pytest.raises(OptionError, match="workers must be at least 1"):
        RayEngine(workers=0)
    with pytest.raises(OptionError, match="shard_size must be at least 1"):
        RayEngine(shard_size=0)
    with pytest.raises(OptionError, match="per_task must be at least 1"):
        RayEngine().explain(None, torch.zeros(2, 3), per_task=0)
    with pytest.raises(NeuronscopeError, match="engine must be one of 'local', 'ray'"):
        from neuronscope.engines import get_engine

        get_engine("spark")
