"""The data-parallel step: same parameters on 1, 2, 4 and 8 devices; teacher untouched."""

import types

import pytest

from conftest import run_on_eight_devices

SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np, ml_collections
from cmcd_jax import parallel
from cmcd_jax.stages import common, distill

def config(method):
    c = ml_collections.ConfigDict()
    c.model = dict(proj_hidden_dim=16)
    c.distill = dict(cmc=dict(temperature=0.1, symmetric=True),
                     cmd=dict(student_temperature=0.1, teacher_temperature=0.05,
                              variant="cross"))
    return c

spec = {"name": "convnet", "kwargs": {"widths": [8, 16], "convs_per_stage": 1}}
teacher = common.build_model(spec, {"kind": "projection", "hidden_dim": 16, "out_dim": 8})
rng = np.random.default_rng(0)
batches = [{"source": rng.normal(size=(16, 16, 16, 3)).astype(np.float32),
            "target": rng.normal(size=(16, 16, 16, 1)).astype(np.float32)} for _ in range(3)]
t_vars = jax.device_get(common.init_variables(teacher, jax.random.key(1),
                                              jnp.asarray(batches[0]["source"][:1])))
out = {}
for method in ("cmc", "cmd", "l2"):
    for n in (1, 2, 4, 8):
        mesh = parallel.make_mesh(n)
        objective = distill.method_objective(method, config(method), mesh)
        head = distill.student_head(objective.teacher_output, config(method),
                                    {"head": {"out_dim": 8}, "feature_dim": 16})
        student = common.build_model(spec, head)
        s_vars = common.init_variables(student, jax.random.key(2),
                                       jnp.asarray(batches[0]["target"][:1]))
        tx = common.make_optimizer(ml_collections.ConfigDict(
            dict(learning_rate=1e-2, weight_decay=1e-4, warmup_steps=0)), 10)
        state = parallel.replicate(common.TrainState.create(s_vars, tx), mesh)
        teacher_vars = parallel.replicate(t_vars, mesh)
        step = jax.jit(distill.make_distill_step(student, teacher, tx, objective,
                                                 source="source", target="target"),
                       out_shardings=parallel.replicated(mesh))
        losses = []
        for b in batches:
            state, m = step(state, teacher_vars, parallel.to_global(b, mesh))
            losses.append(float(m["loss"]))
        same_teacher = all(np.array_equal(a, b) for a, b in zip(
            jax.tree.leaves(jax.device_get(teacher_vars)), jax.tree.leaves(t_vars)))
        out[f"{method}/{n}"] = {
            "losses": losses, "teacher_unchanged": bool(same_teacher),
            "params": [np.asarray(x).ravel()[:50].tolist()
                       for x in jax.tree.leaves(jax.device_get(state.variables))]}
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def runs():
    return run_on_eight_devices(SCRIPT)


@pytest.mark.parametrize("method", ["cmc", "cmd", "l2"])
@pytest.mark.parametrize("devices", [2, 4, 8])
def test_distill_steps_do_not_depend_on_device_count(runs, method, devices):
    one, many = runs[f"{method}/1"], runs[f"{method}/{devices}"]
    assert many["losses"] == pytest.approx(one["losses"], rel=1e-5, abs=1e-6)
    for a, b in zip(one["params"], many["params"]):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-5)


def test_teacher_parameters_are_bit_identical_after_training(runs):
    assert all(r["teacher_unchanged"] for r in runs.values())


def test_batch_not_divisible_by_devices_is_a_clear_error():
    from cmcd_jax import parallel

    eight_devices = types.SimpleNamespace(size=8)
    parallel.check_batch_size(64, eight_devices, "distill.batch_size")
    with pytest.raises(ValueError, match="distill.batch_size=60 is not divisible by the 8"):
        parallel.check_batch_size(60, eight_devices, "distill.batch_size")


def test_mesh_larger_than_the_devices_is_a_clear_error():
    from cmcd_jax import parallel

    with pytest.raises(ValueError, match="parallel.num_devices=4096 but only"):
        parallel.make_mesh(4096)


@pytest.mark.parametrize("environ, expected", [
    ({}, False),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, False),
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}, True),
    ({"SLURM_NTASKS": "1"}, False),
    ({"SLURM_NTASKS": "4"}, True),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, True),
    ({"JAX_COORDINATOR_ADDRESS": "host0:1234"}, True),
])
def test_multi_process_launches_are_detected(environ, expected):
    from cmcd_jax import parallel

    assert parallel.wants_distributed(environ) is expected


def test_single_host_initialization_is_a_noop_and_bad_mode_is_named():
    from cmcd_jax import parallel

    parallel.initialize_distributed("auto")
    parallel.initialize_distributed("off")
    with pytest.raises(ValueError, match="parallel.distributed='maybe'; valid: auto, on, off"):
        parallel.initialize_distributed("maybe")


def test_barrier_waits_for_every_process_only_when_there_are_several(monkeypatch):
    import jax
    from jax.experimental import multihost_utils
    from cmcd_jax import parallel

    reached = []
    monkeypatch.setattr(multihost_utils, "sync_global_devices", reached.append)
    parallel.barrier("alone")
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    parallel.barrier("claimed")
    assert reached == ["claimed"]
