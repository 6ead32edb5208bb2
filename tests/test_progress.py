"""The progress line and metrics.jsonl: the mean over each logged interval, the compiling
first step timed apart, a non-finite interval stopping the run."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmcd_jax import log
from cmcd_jax.stages import common


def run_progress(tmp_path, losses, every: int):
    with common.Progress("distill/cmc", len(losses), 8, tmp_path, every) as progress:
        for step, loss in enumerate(losses, 1):
            progress(step, {"loss": jnp.float32(loss)})
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_logged_loss_is_the_mean_of_its_interval(tmp_path, capsys):
    losses = [5.0, 4.0, 3.0, 2.5, 1.0]
    rows = run_progress(tmp_path, losses, every=2)
    assert [r["step"] for r in rows] == [2, 4, 5]
    np.testing.assert_allclose([r["loss"] for r in rows], [4.5, 2.75, 1.0], rtol=1e-6)
    assert all(r["examples_per_sec"] > 0 for r in rows)
    err = capsys.readouterr().err
    assert "[distill/cmc] step 1 compiled and ran in " in err and "5 steps in all" in err
    assert "[distill/cmc] step 4/5 loss 2.7500 " in err


def test_a_first_step_that_is_also_logged_has_no_rate(tmp_path, capsys):
    rows = run_progress(tmp_path, [2.0], every=1)
    assert rows == [{"step": 1, "loss": 2.0}]
    assert "[distill/cmc] step 1/1 loss 2.0000 done" in capsys.readouterr().err


def test_a_non_finite_step_inside_an_interval_stops_the_run(tmp_path):
    with pytest.raises(FloatingPointError, match=r"\[distill/cmc\] non-finite metrics at step 4"):
        run_progress(tmp_path, [1.0, 1.0, float("inf"), 1.0], every=4)


def test_only_process_0_says_anything(monkeypatch, capsys):
    log.say("from process 0")
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    log.say("from process 1")
    common.Progress("distill/cmc", 1, 8, pathlib.Path("/nonexistent"), 1)(
        1, {"loss": jnp.float32(1.0)})
    assert capsys.readouterr().err == "from process 0\n"
