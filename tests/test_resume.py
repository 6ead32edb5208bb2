"""Runs that survive: SIGKILL then rerun gives the same parameters; SIGTERM saves and exits 0."""

import json
import shutil
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import run_main, start_main, tensorboard_scalars, wait_for_step

OVERRIDES = ("--config.methods=cmc", "--config.checkpoint.every=3", "--config.log_every=1",
             "--config.pretrain.steps=12", "--config.distill.steps=9")


def exported_params(workdir, stage):
    with ocp.StandardCheckpointer() as ckptr:
        return jax.tree.leaves(ckptr.restore(workdir / stage / "export" / "variables"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """An uninterrupted run's workdir."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    proc = run_main(workdir, data_dir, *OVERRIDES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def assert_same_exports(workdir_a, workdir_b, stages=("pretrain", "distill/cmc")):
    for stage in stages:
        for a, b in zip(exported_params(workdir_a, stage), exported_params(workdir_b, stage),
                        strict=True):
            np.testing.assert_array_equal(a, b)


def loss_curve(logdir) -> list[tuple[int, float]]:
    """(step, loss) of every logged step, as TensorBoard reads them."""
    return [(step, value) for tag, step, value in tensorboard_scalars(logdir) if tag == "loss"]


def test_sigkill_mid_stage_then_rerun_matches_uninterrupted_run(tmp_path, data_dir,
                                                                 reference):

    workdir = tmp_path / "killed"
    proc = start_main(workdir, data_dir, *OVERRIDES)
    wait_for_step(workdir / "pretrain" / "metrics.jsonl", 7, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_main(workdir, data_dir, *OVERRIDES)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[pretrain] resuming from step" in resumed.stderr
    assert_same_exports(reference, workdir)
    assert len(list((workdir / "pretrain").glob("events.out.tfevents.*"))) == 2
    assert loss_curve(workdir / "pretrain") == loss_curve(reference / "pretrain")


def stop_after(workdir, data_dir, step):
    """Runs until `step`, then SIGTERM: the run saves a checkpoint and exits 0."""
    proc = start_main(workdir, data_dir, *OVERRIDES)
    wait_for_step(workdir / "pretrain" / "metrics.jsonl", step, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, data_dir):
    """The workdir of a run stopped by SIGTERM after pretrain step 7 (its log beside it);
    tests resume copies of it."""
    workdir = tmp_path_factory.mktemp("stopped") / "run"
    stop_after(workdir, data_dir, 7)
    return workdir


def copy_of(stopped, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(stopped, workdir, symlinks=True)
    return workdir


def test_sigterm_saves_at_step_boundary_and_exits_zero(tmp_path, data_dir, stopped):
    log = stopped.with_name("run.log").read_text()
    assert "stopped by SIGTERM after step" in log and "rerun the same command" in log
    step = int(log.split("stopped by SIGTERM after step ")[1].split(";")[0])
    assert (stopped / "pretrain" / "ckpt" / str(step)).is_dir()
    assert not (stopped / "pretrain" / "export").exists()
    workdir = copy_of(stopped, tmp_path)
    resumed = run_main(workdir, data_dir, *OVERRIDES)
    assert resumed.returncode == 0 and f"resuming from step {step}" in resumed.stderr


@pytest.mark.parametrize("learning_rate", ["1e38", "1e30"])  # The loss, then the params diverge.
def test_divergence_stops_with_the_step_and_keeps_good_checkpoints(tmp_path, data_dir,
                                                                   learning_rate):
    workdir = tmp_path / "run"
    proc = run_main(workdir, data_dir, *OVERRIDES, "--config.log_every=100",
                    f"--config.pretrain.learning_rate={learning_rate}")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("cmcd_jax: error: [pretrain] non-finite metrics at step ")
    failed_at = int(last.split("at step ")[1].split(":")[0])
    saved = sorted(int(p.name) for p in (workdir / "pretrain" / "ckpt").iterdir()
                   if p.name.isdigit())
    assert all(step < failed_at for step in saved)
    assert not (workdir / "pretrain" / "export").exists()


@pytest.mark.parametrize("damage", ["flip_bytes", "truncate", "truncate_manifest"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, data_dir,
                                                                  reference, stopped, damage):
    workdir = copy_of(stopped, tmp_path)
    ckpt = workdir / "pretrain" / "ckpt"
    steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    assert len(steps) == 2
    files = [p for p in (ckpt / str(steps[-1]) / "state").rglob("*") if p.is_file()]
    truncated = {"truncate": lambda p: p.parent.name == "d",  # Every array's data.
                 "truncate_manifest": lambda p: p.name == "manifest.ocdbt"}
    if damage in truncated:  # Many concurrent reads fail at once.
        for path in filter(truncated[damage], files):
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        biggest = max(files, key=lambda p: p.stat().st_size)
        data = bytearray(biggest.read_bytes())
        for i in range(len(data) // 2, len(data) // 2 + 64):
            data[i] ^= 0xFF
        biggest.write_bytes(bytes(data))

    resumed = run_main(workdir, data_dir, *OVERRIDES)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"checkpoint {ckpt}/{steps[-1]} is damaged" in resumed.stderr
    assert f"[pretrain] resuming from step {steps[0]}" in resumed.stderr
    assert "Traceback" not in resumed.stderr and "Exception ignored" not in resumed.stderr
    assert_same_exports(reference, workdir)


def test_damaged_files_of_a_finished_run_are_rebuilt(tmp_path, data_dir, reference):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    with (workdir / "distill/cmc/metrics.jsonl").open("a") as f:
        f.write('{"step": 9, "lo')  # A kill in the middle of a line.
    (workdir / "results.json").write_text("{}")
    row = workdir / "distill/cmc/row.json"
    row.write_text(row.read_text()[:10])
    meta = workdir / "pretrain/export/meta.json"
    meta.write_text(meta.read_text()[:30])
    shutil.rmtree(workdir / "distill/cmc/export/variables/d")

    rerun = run_main(workdir, data_dir, *OVERRIDES)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for line in (f"{workdir}/results.json is damaged: no methods, teacher in it; rebuilding it",
                 f"{row} is damaged: not JSON",
                 f"[pretrain] export {workdir}/pretrain/export is damaged: meta.json is not JSON",
                 f"[distill/cmc] export {workdir}/distill/cmc/export is damaged",
                 "metrics.jsonl: dropped its last line, cut short by a killed run"):
        assert line in rerun.stderr
    assert "step 1/" not in rerun.stderr  # Rebuilt from the stages' last checkpoints.
    assert_same_exports(reference, workdir)
    assert json.loads(meta.read_text()) == json.loads(
        (reference / "pretrain/export/meta.json").read_text())
    results = json.loads((workdir / "results.json").read_text())
    expected = json.loads((reference / "results.json").read_text())
    assert results["methods"]["cmc"]["probe_top1"] == pytest.approx(
        expected["methods"]["cmc"]["probe_top1"], abs=0.01)
    assert all(json.loads(line) for line in
               (workdir / "distill/cmc/metrics.jsonl").read_text().splitlines())
