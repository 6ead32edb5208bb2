"""The command line end to end on the tiny dataset: results, rerun, refusals."""

import importlib.util
import json
import os
import re
import shutil

import pytest

from cmcd_jax import experiment, main
from conftest import REPO, run_main, tree_digest


def test_quickstart_writes_results_then_rerun_skips_stages(tmp_path, data_dir):
    workdir = tmp_path / "run"
    first = run_main(workdir, data_dir, "--config.methods=cmc,l2,target_only")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[pretrain] step 10/10" in first.stderr
    results = json.loads((workdir / "results.json").read_text())
    assert (results["dataset"], results["source"], results["target"]) == (
        "cmcd_shapes", "image", "sketch")
    assert list(results["methods"]) == ["cmc", "l2", "target_only"]
    for method in ("cmc", "l2"):
        for key in ("probe_top1", "retrieval_top1"):
            assert 0.0 <= results["methods"][method][key] <= 1.0
    assert 0.0 <= results["methods"]["target_only"]["probe_top1"] <= 1.0
    assert "| cmc |" in (workdir / "results.md").read_text()
    assert json.loads((workdir / "config.json").read_text())["distill"]["steps"] == 10
    for stage in ("pretrain", "distill/cmc", "distill/l2", "downstream/target_only"):
        assert (workdir / stage / "export" / "meta.json").is_file()

    written = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
    second = run_main(workdir, data_dir, "--config.methods=cmc,l2,target_only")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "holds a completed run" in second.stderr and "| cmc |" in second.stdout
    assert "step " not in second.stderr
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()} == written

    shutil.rmtree(workdir / "distill" / "l2")
    (workdir / "results.json").unlink()
    third = run_main(workdir, data_dir, "--config.methods=cmc,l2,target_only")
    assert third.returncode == 0, third.stderr[-3000:]
    assert "[pretrain] already done" in third.stderr and "[distill/cmc]" not in third.stderr
    assert "[distill/l2] step 10/10" in third.stderr
    for kept in ("pretrain/export/meta.json", "distill/cmc/row.json",
                 "downstream/target_only/row.json"):  # Finished methods are not evaluated again.
        assert (workdir / kept).stat().st_mtime_ns == written[workdir / kept]
    rerun = json.loads((workdir / "results.json").read_text())["methods"]
    assert rerun["cmc"] == results["methods"]["cmc"]
    assert (workdir / "distill/l2/row.json").is_file()


def test_another_configs_run_is_refused_and_overwrite_spares_what_it_did_not_write(
        tmp_path, data_dir):
    workdir = tmp_path / "run"
    for relative, text in (("config.json", '{"seed": 123}'), ("results.json", "{}"),
                           ("cmcd_jax_run.json", '{"project": "cmcd_jax"}'),
                           ("IMPORTANT.txt", "notes"), ("src/main.c", "int main;")):
        (workdir / relative).parent.mkdir(parents=True, exist_ok=True)
        (workdir / relative).write_text(text)
    before = tree_digest(workdir)
    for extra, message in (((), "holds a run of a different config"),
                           (("--overwrite",), "holds entries cmcd_jax did not write: "
                                              "IMPORTANT.txt, src; nothing deleted")):
        proc = run_main(workdir, data_dir, *extra)
        assert proc.returncode != 0
        assert message in proc.stderr.strip().splitlines()[-1]
        assert tree_digest(workdir) == before


def test_a_second_run_on_a_workdir_in_use_names_the_holder(tmp_path, data_dir):
    workdir = tmp_path / "run"
    with experiment.workdir_lock(workdir):
        before = tree_digest(workdir)
        proc = run_main(workdir, data_dir)
        assert proc.returncode != 0
        assert proc.stderr.strip().splitlines()[-1].startswith(
            f"cmcd_jax: error: workdir {workdir} is in use by process {os.getpid()} on ")
        assert tree_digest(workdir) == before


def test_a_workdir_that_is_a_file_is_named_with_the_os_error(tmp_path, data_dir):
    workdir = tmp_path / "run"
    workdir.write_text("my notes")
    proc = run_main(workdir, data_dir)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        f"cmcd_jax: error: [Errno 17] File exists: '{workdir}'")
    assert workdir.read_text() == "my notes"


@pytest.mark.parametrize("error, line", [
    (OSError(30, "Read-only file system", "/mnt/ro/run"),
     "[Errno 30] Read-only file system: '/mnt/ro/run'"),
    (UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid continuation byte"),
     "'utf-8' codec can't decode byte 0xe9 in position 0: invalid continuation byte"),
    (ValueError("first line\n  second"), "first line second"),
    (KeyError("key"), "key"),
])
def test_one_line_keeps_the_whole_message(error, line):
    assert main.one_line(error) == line


def test_unknown_method_lists_valid_ones(tmp_path, data_dir):
    proc = run_main(tmp_path / "run", data_dir, "--config.methods=cmc,simclr")
    assert proc.returncode != 0
    assert "unknown method(s) 'simclr'" in proc.stderr and "valid: cmc, cmd, l2" in proc.stderr


def test_misspelt_config_key_suggests_the_nearest_one(tmp_path, data_dir):
    proc = run_main(tmp_path / "run", data_dir, "--config.distill.step=3")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last == ("cmcd_jax: error: --config.distill.step: unknown config key 'step'; "
                    'did you mean "steps" instead of "step"?')
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("body, line", [
    ("def get_config(:\n    pass\n", "{path}:1: syntax error: invalid syntax"),
    ("from cmcd_jax import defaults\n\ndef get_config():\n    return defaults.nothing()\n",
     "{path}:4: AttributeError: module 'cmcd_jax.defaults' has no attribute 'nothing'"),
    (None, "--config={path}: no such file")])
def test_broken_config_file_is_one_line_with_file_and_line(tmp_path, data_dir, body, line):
    path = tmp_path / "my_config.py"
    if body is not None:
        path.write_text(body)
    proc = run_main(tmp_path / "run", data_dir, config=str(path))
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [f"cmcd_jax: error: {line.format(path=path)}"]
    assert not (tmp_path / "run").exists()


def test_paired_folder_variants_and_an_unknown_one(tmp_path, data_dir):
    spec = importlib.util.spec_from_file_location("paired_folder_config",
                                                  REPO / "configs" / "paired_folder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    small, real = module.get_config(), module.get_config("real")
    assert small.model.encoder == "convnet" and small.distill.steps == 800
    assert (real.model.encoder, real.data.resolution, real.distill.steps) == ("resnet18", 64,
                                                                              20000)
    assert small.dataset == real.dataset == "paired_folder"
    proc = run_main(tmp_path / "run", data_dir, config="configs/paired_folder.py:huge")
    assert proc.returncode != 0
    assert re.fullmatch(r"cmcd_jax: error: configs/paired_folder.py:\d+: ValueError: "
                        r"configs/paired_folder.py:huge: no such variant; valid: small, real, "
                        r"tiny",
                        proc.stderr.strip().splitlines()[-1])


def test_bad_value_type_names_the_flag(tmp_path, data_dir):
    proc = run_main(tmp_path / "run", data_dir, "--config.distill.steps=many")
    assert proc.returncode != 0
    assert "--config.distill.steps=many" in proc.stderr.strip().splitlines()[-1]


def test_teacher_from_another_workdir_skips_pretraining(tmp_path, data_dir):
    first = run_main(tmp_path / "a", data_dir, "--config.methods=random_init")
    assert first.returncode == 0, first.stderr[-3000:]
    teacher = tmp_path / "a" / "pretrain" / "export"
    second = run_main(tmp_path / "b", data_dir, "--config.methods=cmc",
                      f"--config.distill.teacher_export={teacher}")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "[pretrain] step" not in second.stderr and "[distill/cmc] step 10/10" in second.stderr
    assert not (tmp_path / "b" / "pretrain").exists()

    wrong = run_main(tmp_path / "c", data_dir, "--config.methods=cmc", "--config.data.source=depth",
                     f"--config.distill.teacher_export={teacher}")
    assert wrong.returncode != 0
    assert wrong.stderr.strip().splitlines()[-1].endswith(
        "encodes 'image', but config.data.source='depth'")


def test_quickstart_runs_unchanged_on_eight_devices(eight_device_run):
    results = json.loads((eight_device_run / "results.json").read_text())
    assert set(results["methods"]) == {"cmc", "target_only"}


@pytest.mark.parametrize("override, message, devices", [
    ("--config.data.target=lidar",
     "config.data.target='lidar'; valid: image, depth, sketch, audio", 1),
    ("--config.model.encoder=resnet19",
     "config.model.encoder='resnet19'; valid: convnet, resnet18", 1),
    ("--config.data.target=image", "config.data.source and config.data.target are both", 1),
    ("--config.finetune.batch_size=12",
     "config.finetune.batch_size=12 is not divisible by the 8 devices", 8),
    ("--config.distill.cmd.variant=foo", "config.distill.cmd.variant='foo'; valid: cross", 1),
    ("--config.checkpoint.every=0", "config.checkpoint.every=0; it must be > 0", 1),
])
def test_bad_config_is_refused_before_the_workdir_is_claimed(tmp_path, data_dir, override,
                                                             message, devices):
    proc = run_main(tmp_path / "run", data_dir, override, devices=devices)
    assert proc.returncode != 0
    assert message in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()
