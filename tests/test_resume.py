"""Runs that survive: SIGKILL then rerun gives the same parameters; SIGTERM saves and exits 0."""

import signal

import jax
import numpy as np
import orbax.checkpoint as ocp

from conftest import run_main, start_main, wait_for_step

OVERRIDES = ("--config.methods=cmc", "--config.checkpoint.every=3", "--config.log_every=1",
             "--config.pretrain.steps=12", "--config.distill.steps=9")


def exported_params(workdir, stage):
    with ocp.StandardCheckpointer() as ckptr:
        return jax.tree.leaves(ckptr.restore(workdir / stage / "export" / "variables"))


def test_sigkill_mid_stage_then_rerun_matches_uninterrupted_run(tmp_path, data_dir):
    reference = run_main(tmp_path / "reference", data_dir, *OVERRIDES)
    assert reference.returncode == 0, reference.stderr[-3000:]

    workdir = tmp_path / "killed"
    proc = start_main(workdir, data_dir, *OVERRIDES)
    wait_for_step(workdir / "pretrain" / "metrics.jsonl", 7, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_main(workdir, data_dir, *OVERRIDES)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[pretrain] resuming from step" in resumed.stderr
    for stage in ("pretrain", "distill/cmc"):
        for a, b in zip(exported_params(tmp_path / "reference", stage),
                        exported_params(workdir, stage), strict=True):
            np.testing.assert_array_equal(a, b)


def test_sigterm_saves_at_step_boundary_and_exits_zero(tmp_path, data_dir):
    workdir = tmp_path / "run"
    proc = start_main(workdir, data_dir, *OVERRIDES)
    wait_for_step(workdir / "pretrain" / "metrics.jsonl", 4, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    log = (tmp_path / "run.log").read_text()
    assert "stopped by SIGTERM after step" in log and "rerun the same command" in log
    step = int(log.split("stopped by SIGTERM after step ")[1].split(";")[0])
    assert (workdir / "pretrain" / "ckpt" / str(step)).is_dir()
    assert not (workdir / "pretrain" / "export").exists()
    resumed = run_main(workdir, data_dir, *OVERRIDES)
    assert resumed.returncode == 0 and f"resuming from step {step}" in resumed.stderr


def test_non_finite_loss_stops_with_the_step_and_keeps_good_checkpoints(tmp_path, data_dir):
    workdir = tmp_path / "run"
    proc = run_main(workdir, data_dir, *OVERRIDES, "--config.log_every=100",
                    "--config.pretrain.learning_rate=1e38")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("cmcd_jax: error: [pretrain] non-finite metrics at step ")
    failed_at = int(last.split("at step ")[1].split(":")[0])
    saved = sorted(int(p.name) for p in (workdir / "pretrain" / "ckpt").iterdir()
                   if p.name.isdigit())
    assert all(step < failed_at for step in saved)
    assert not (workdir / "pretrain" / "export").exists()
