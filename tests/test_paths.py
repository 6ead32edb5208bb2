"""Remote paths: a gs:// workdir, data dir and teacher export reach orbax, TFDS and the run's
writers as gs://... (never as the local directory gs:/...), through etils.epath; without a
package serving gs:// the run stops at the config check, naming the flag, creating nothing.

No bucket is reachable from the tests: the `bucket` fixture serves gs:// from a local folder
through fsspec, where gcsfs would serve it, and orbax's checkpointer is replaced where it would
reach GCS by itself (through tensorstore); TFDS's array_record reader does the same, so records
are not read from the bucket."""

import importlib
import importlib.util
import json
import os
import pathlib
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from etils.epath import backend
from fsspec.implementations.local import LocalFileSystem

from cmcd_jax import checkpoints, defaults, experiment, exports, paths
from cmcd_jax.analysis import plots
from cmcd_jax.data import shapes
from cmcd_jax.stages import common, pretrain
from conftest import REPO, run_main, tensorboard_scalars

FSSPEC = importlib.import_module("fsspec.registry")  # `fsspec.registry` is its mapping.


class LocalBucket(LocalFileSystem):
    """gs://BUCKET/KEY as the local file ROOT/BUCKET/KEY; as in a bucket, a file is written
    under any prefix (its folders are made)."""

    root = pathlib.Path("/nonexistent")

    def __init__(self, **options):
        super().__init__(auto_mkdir=True, **options)

    @classmethod
    def _strip_protocol(cls, path):
        path = os.fspath(path)
        if path.startswith(("gs://", "gcs://")):
            return (cls.root / path.split("://", 1)[1]).as_posix()
        return super()._strip_protocol(path)


def forget_file_systems() -> None:
    """Drops the file systems epath and fsspec keep, so the next gs:// path looks again."""
    type(backend.fsspec_backend)._get_filesystem.cache_clear()
    LocalBucket.clear_instance_cache()


@pytest.fixture
def bucket(tmp_path, monkeypatch) -> pathlib.Path:
    """The local folder that gs:// paths reach during the test (gs://b/k is its b/k)."""
    root = tmp_path / "gs"
    root.mkdir()
    monkeypatch.setattr(LocalBucket, "root", root)
    monkeypatch.setitem(FSSPEC._registry, "gcs", LocalBucket)
    monkeypatch.setenv("EPATH_USE_TF", "0")
    forget_file_systems()
    yield root
    forget_file_systems()


@pytest.fixture
def no_gcs_package(monkeypatch) -> None:
    """As on a machine without gcsfs and TensorFlow, whatever this one has."""
    monkeypatch.delitem(FSSPEC._registry, "gcs", raising=False)
    monkeypatch.setitem(FSSPEC.known_implementations, "gcs",
                        {"class": "no_such_gcsfs.GCSFileSystem", "err": "install gcsfs"})
    monkeypatch.setenv("EPATH_USE_TF", "0")


def tiny_config(**data):
    config = defaults.tiny_config()
    config.pretrain.reuse_teacher = False
    config.data.update(data)
    return config


def test_paths_keep_a_url_and_name_what_serves_it(tmp_path, bucket):
    assert str(paths.absolute("gs://bucket/run") / "pretrain") == "gs://bucket/run/pretrain"
    assert str(paths.resolved("gs://bucket/run")) == "gs://bucket/run"
    assert paths.absolute("run") == epath.Path(os.getcwd()) / "run"
    assert paths.backend_problem("gs://bucket/run") is None  # served by the fixture
    assert paths.backend_problem(tmp_path) is None
    assert paths.backend_problem("ftp://host/run") == (
        "ftp:// is not a scheme etils.epath serves; use gs://, s3://, az://, hf:// or a "
        "local path")
    run = epath.Path("gs://bucket/run")
    paths.append_text(run / "a" / "metrics.jsonl", "1\n")
    paths.append_text(run / "a" / "metrics.jsonl", "2\n")
    assert (bucket / "bucket/run/a/metrics.jsonl").read_text() == "1\n2\n"
    assert sorted(map(str, paths.tree(run))) == ["gs://bucket/run/a",
                                                 "gs://bucket/run/a/metrics.jsonl"]
    (tmp_path / "local" / "sub").mkdir(parents=True)
    (tmp_path / "local" / "sub" / "up").symlink_to(tmp_path / "local")
    assert sorted(p.name for p in paths.tree(epath.Path(tmp_path / "local"))) == ["sub", "up"]


@pytest.mark.parametrize("key, value, message", [
    ("workdir", "gs://bucket/run", "gs:// paths need gcsfs (pip install gcsfs) or TensorFlow"),
    ("data.data_dir", "gs://bucket/tfds",
     "gs:// paths need gcsfs (pip install gcsfs) or TensorFlow"),
    ("distill.teacher_export", "s3://b/pretrain/export",
     "s3:// paths need s3fs (pip install s3fs) or TensorFlow"),
    ("data.dir", "gs://bucket/folder", "a paired folder must be local; copy it to this "
                                       "machine (its TFDS build goes to config.data.data_dir, "
                                       "which may be remote)")])
def test_a_remote_path_nothing_serves_stops_the_run_naming_the_key(tmp_path, monkeypatch,
                                                                    no_gcs_package, key,
                                                                    value, message):
    monkeypatch.chdir(tmp_path)
    config = defaults.default_config()
    workdir = value if key == "workdir" else str(tmp_path / "run")
    if key != "workdir":
        section, leaf = key.split(".")
        config[section][leaf] = value
    name = "--workdir" if key == "workdir" else f"config.{key}"
    with pytest.raises(ValueError) as error:
        experiment.run(config, workdir)
    assert str(error.value) == f"{name}='{value}': {message}"
    assert not any(tmp_path.iterdir())  # Neither the run nor a mangled gs:/ directory.


def test_the_command_line_without_gcsfs_says_what_to_install_and_creates_nothing(data_dir):
    for package in ("gcsfs", "tensorflow"):
        if importlib.util.find_spec(package):
            pytest.skip(f"{package} is installed here, so gs:// is served")
    proc = run_main("gs://bucket/run", data_dir)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "cmcd_jax: error: --workdir='gs://bucket/run': gs:// paths need gcsfs "
        "(pip install gcsfs) or TensorFlow")
    assert not (REPO / "gs:").exists()


class Stop(Exception):
    """Raised where the test has seen what it came for."""


def test_a_gs_workdir_is_claimed_in_the_bucket_and_reaches_orbax_unmangled(
        tmp_path, monkeypatch, bucket, data_dir, capfd):
    monkeypatch.chdir(tmp_path)
    seen = []

    def manager(directory, **kwargs):
        seen.append(directory)
        raise Stop

    monkeypatch.setattr(checkpoints.ocp, "CheckpointManager", manager)
    with pytest.raises(Stop):
        experiment.run(tiny_config(data_dir=str(data_dir)), "gs://bucket/run")
    assert [str(d) for d in seen] == ["gs://bucket/run/pretrain/ckpt"]
    run = bucket / "bucket" / "run"
    assert json.loads((run / "cmcd_jax_run.json").read_text())["project"] == "cmcd_jax"
    assert json.loads((run / "config.json").read_text())["data"]["data_dir"] == str(data_dir)
    assert (run / "pretrain").is_dir() and not (run / ".lock").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gs"]  # no local gs: directory
    assert "is remote, so no lock keeps a second run out of it" in capfd.readouterr().err


def test_a_different_config_replaces_the_run_in_a_bucket(bucket):
    experiment.claim_workdir(tiny_config(), "gs://bucket/run")
    experiment.save_json(epath.Path("gs://bucket/run/distill/cmc/row.json"), {"probe_top1": 1})
    with pytest.raises(ValueError, match="holds a run of a different config"):
        experiment.claim_workdir(tiny_config(resolution=16), "gs://bucket/run")
    experiment.claim_workdir(tiny_config(resolution=16), "gs://bucket/run", overwrite=True)
    run = bucket / "bucket" / "run"
    assert sorted(p.name for p in run.iterdir()) == ["cmcd_jax_run.json", "config.json"]
    assert json.loads((run / "config.json").read_text())["data"]["resolution"] == 16


def test_a_stages_logs_figures_and_results_are_written_in_the_bucket(bucket):
    stage = epath.Path("gs://bucket/run/pretrain")
    stage.mkdir(parents=True)
    with common.Progress("pretrain", 4, 8, stage, 2) as progress:
        for step in range(1, 5):
            progress(step, {"loss": jnp.float32(5.0 - step)})
    local = bucket / "bucket" / "run" / "pretrain"
    lines = [json.loads(line) for line in (local / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in lines] == [(2, 3.5), (4, 1.5)]
    assert [(s, v) for tag, s, v in tensorboard_scalars(local) if tag == "loss"] == [
        (2, 3.5), (4, 1.5)]
    figure = plots.loss_curves("gs://bucket/run", "gs://bucket/run/figures/loss_curves.png")
    assert str(figure) == "gs://bucket/run/figures/loss_curves.png"
    assert (bucket / "bucket/run/figures/loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    experiment.save_json(epath.Path("gs://bucket/run/results.json"), {"methods": {}})
    assert sorted(p.name for p in (bucket / "bucket/run").iterdir()) == [
        "figures", "pretrain", "results.json"]


class MemoryCheckpointer:
    """orbax's StandardCheckpointer without its tensorstore writes (which would reach GCS
    itself): trees kept in memory under the path orbax was given."""

    trees: dict = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def save(self, path, tree, force=False):
        self.trees[str(path)] = jax.device_get(tree)

    def wait_until_finished(self):
        return None

    def metadata(self, path):
        return types.SimpleNamespace(item_metadata=self.trees[str(path)])

    def restore(self, path, abstract):
        return self.trees[str(path)]


def test_an_export_in_a_bucket_reaches_orbax_unmangled_and_loads(bucket, monkeypatch):
    monkeypatch.setattr(checkpoints.ocp, "StandardCheckpointer", MemoryCheckpointer)
    monkeypatch.setattr(MemoryCheckpointer, "trees", {})
    config = defaults.default_config()
    spec = common.encoder_spec(config, "sketch", dataset=None)
    head = {"kind": "projection", "hidden_dim": 8, "out_dim": 4}
    model = common.build_model(spec, head)
    variables = common.init_variables(model, jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    meta = common.export_meta(spec, head, "sketch", (32, 32, 1), 64, 1)
    export = checkpoints.export_encoder("gs://bucket/t/export", variables, meta)
    assert str(export) == "gs://bucket/t/export"
    assert list(MemoryCheckpointer.trees) == ["gs://bucket/t/export/variables"]
    assert json.loads((bucket / "bucket/t/export/meta.json").read_text())["modality"] == "sketch"
    encoder = exports.load("gs://bucket/t/export")
    raw = np.zeros((2, 32, 32), np.uint8)
    np.testing.assert_allclose(encoder.embed(raw), model.apply(
        variables, jnp.zeros((2, 32, 32, 1)), train=False)[0], rtol=1e-5, atol=1e-6)
    config.distill.teacher_export = "gs://bucket/t/export"
    teacher, description = pretrain.teacher(config, epath.Path("gs://bucket/run"), None, None)
    assert (str(teacher), description["export"]) == ("gs://bucket/t/export",) * 2


def test_a_gs_data_dir_reaches_tfds_and_holds_the_shared_teacher(bucket, data_dir):
    shutil.copytree(data_dir / "cmcd_shapes", bucket / "bucket" / "tfds" / "cmcd_shapes")
    splits = shapes.load_shapes("tiny", "gs://bucket/tfds")  # read, not built again
    assert splits["train"].dataset_info.data_dir == (
        f"gs://bucket/tfds/cmcd_shapes/tiny/{shapes.CmcdShapes.VERSION}")
    assert (len(splits["train"]), len(splits["test"])) == (320, 160)
    config = tiny_config(data_dir="gs://bucket/tfds")
    config.pretrain.reuse_teacher = True
    stage = pretrain.teacher_stage_dir(config, epath.Path("/unused"),
                                       types.SimpleNamespace(version="1.1.0"))
    assert str(stage).startswith("gs://bucket/tfds/cmcd_jax_teachers/")


def test_loading_an_export_from_a_bucket_without_gcsfs_says_what_to_install(no_gcs_package):
    with pytest.raises(ValueError) as error:
        exports.load("gs://bucket/t/export")
    assert str(error.value) == ("gs://bucket/t/export: gs:// paths need gcsfs "
                                "(pip install gcsfs) or TensorFlow")
