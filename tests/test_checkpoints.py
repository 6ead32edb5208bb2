"""Encoder exports: round trip, refusing to overwrite, architecture mismatch messages;
the quiet failure of a damaged restore."""

import logging
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmcd_jax import checkpoints, parallel
from cmcd_jax.stages import common

SPEC = {"name": "convnet", "kwargs": {"widths": [8, 16], "convs_per_stage": 1}}
HEAD = {"kind": "projection", "hidden_dim": 16, "out_dim": 8}


def exported(tmp_path, spec=SPEC, head=HEAD):
    model = common.build_model(spec, head)
    variables = common.init_variables(model, jax.random.key(1), jnp.zeros((1, 16, 16, 1)))
    meta = {"encoder": spec, "head": head, "input_shape": [16, 16, 1]}
    return checkpoints.export_encoder(tmp_path / "export", variables, meta), variables


def test_export_restores_identical_variables(tmp_path):
    directory, variables = exported(tmp_path)
    model, restored, meta = common.restore_model(directory, parallel.make_mesh(1))
    assert meta["encoder"] == SPEC
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), variables)
    x = jnp.ones((2, 16, 16, 1))
    np.testing.assert_allclose(model.apply(restored, x, train=False)[1],
                               model.apply(variables, x, train=False)[1])


def test_export_refuses_to_overwrite(tmp_path):
    directory, variables = exported(tmp_path)
    before = (directory / "meta.json").read_text()
    with pytest.raises(FileExistsError, match="already holds an export"):
        checkpoints.export_encoder(directory, variables, {"other": 1})
    assert (directory / "meta.json").read_text() == before


def test_architecture_mismatch_names_parameter_and_shapes(tmp_path):
    directory, _ = exported(tmp_path)
    wider = {"name": "convnet", "kwargs": {"widths": [8, 32], "convs_per_stage": 1}}
    model = common.build_model(wider, HEAD)
    abstract = jax.eval_shape(lambda: common.init_variables(
        model, jax.random.key(0), jnp.zeros((1, 16, 16, 1))))
    with pytest.raises(ValueError, match=r"parameter '(params|batch_stats)/encoder/.*' has "
                                         r"shape \(16,?.*the model expects \(.*32"):
        checkpoints.restore_encoder(directory, abstract)


def test_missing_export_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no encoder export at"):
        checkpoints.read_meta(tmp_path)


def test_a_failed_restore_drops_only_the_echoes_of_its_abandoned_reads(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    monkeypatch.setattr(sys, "excepthook", lambda kind, error, tb: seen.append(error))
    asyncio_log = logging.getLogger("asyncio")
    monkeypatch.setattr(asyncio_log, "filters", [])
    assert checkpoints.attempt_restore(lambda: 7) == (7, None)
    assert sys.unraisablehook == seen.append and not asyncio_log.filters  # As they were.

    def damaged():
        raise ValueError("DATA_LOSS:   truncated\n manifest")

    assert checkpoints.attempt_restore(damaged) == (None, "DATA_LOSS: truncated manifest")

    async def read():
        pass

    coroutine = read()
    sys.unraisablehook(SimpleNamespace(exc_value=ValueError("array"), object=coroutine))
    sys.excepthook(RuntimeError, RuntimeError("Event loop is closed"), None)
    other_unraisable, other_error = SimpleNamespace(exc_value=KeyError("a"), object=None), OSError()
    sys.unraisablehook(other_unraisable)
    sys.excepthook(OSError, other_error, None)
    assert seen == [other_unraisable, other_error]
    assert not asyncio_log.filter(logging.makeLogRecord(
        {"msg": "Task exception was never retrieved"}))
    assert asyncio_log.filter(logging.makeLogRecord({"msg": "Executing <Task> took 1 s"}))
    coroutine.close()
