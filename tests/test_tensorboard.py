"""A stage's TensorBoard scalars (written by tensorboardX), as TensorBoard's own reader sees
them: the tags, steps and values of metrics.jsonl, each step once after a resume."""

import json
import time

import jax.numpy as jnp
import pytest

from cmcd_jax.stages import common
from conftest import tensorboard_scalars


def log_steps(workdir, losses: dict[int, float], total: int, every: int) -> None:
    """Runs a stage's Progress over `losses` ({step: loss}, from its first step on)."""
    with common.Progress("distill/cmc", total, 8, workdir, every) as progress:
        for step, loss in losses.items():
            progress(step, {"loss": jnp.float32(loss)})


def jsonl_scalars(workdir) -> list[tuple[str, int, float]]:
    """[(tag, step, value), ...] of metrics.jsonl, the last line of each step winning."""
    rows = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row.pop("step")] = row
    return [(tag, step, row[tag]) for tag in sorted({t for row in rows.values() for t in row})
            for step, row in sorted(rows.items()) if tag in row]


def assert_same_scalars(actual, expected) -> None:
    """Same tags and steps in the same order, values equal to float32 precision."""
    assert [(tag, step) for tag, step, _ in actual] == [(tag, step) for tag, step, _ in expected]
    assert [v for *_, v in actual] == pytest.approx([v for *_, v in expected], rel=1e-6)


def test_tensorboard_reads_a_stages_scalars(tmp_path):
    log_steps(tmp_path, {1: 4.0, 2: 2.0, 3: 1.0, 4: 0.5, 5: 0.25}, total=5, every=2)
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
    scalars = tensorboard_scalars(tmp_path)
    assert [(tag, step) for tag, step, _ in scalars] == [
        ("examples_per_sec", 2), ("examples_per_sec", 4), ("examples_per_sec", 5),
        ("loss", 2), ("loss", 4), ("loss", 5)]
    assert [v for tag, _, v in scalars if tag == "loss"] == [3.0, 0.75, 0.25]
    assert_same_scalars(scalars, jsonl_scalars(tmp_path))


def test_a_resumed_stage_shows_each_step_once_with_the_reruns_values(tmp_path):
    log_steps(tmp_path, {step: 10.0 + step for step in range(1, 7)}, total=8, every=2)
    time.sleep(1.1)  # A real rerun starts seconds later: event files are named by the second.
    log_steps(tmp_path, {step: 20.0 + step for step in range(5, 9)}, total=8, every=2)
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    scalars = tensorboard_scalars(tmp_path)
    assert [(step, v) for tag, step, v in scalars if tag == "loss"] == [
        (2, 11.5), (4, 13.5), (6, 25.5), (8, 27.5)]
    assert_same_scalars(scalars, jsonl_scalars(tmp_path))


def test_a_stage_without_steps_leaves_no_event_file(tmp_path):
    with common.Progress("distill/cmc", 5, 8, tmp_path, 1):
        pass
    assert not list(tmp_path.iterdir())
