"""Checkpoints and exports saved on 8 devices restore on 1, 2 and 4 (and the reverse)."""


from conftest import run_on_eight_devices

SCRIPT = r"""
import json, pathlib, sys
import grain, jax, jax.numpy as jnp, numpy as np, ml_collections
from cmcd_jax import checkpoints, parallel
from cmcd_jax.stages import common

root = pathlib.Path(sys.argv[1])
spec = {"name": "convnet", "kwargs": {"widths": [4, 8], "convs_per_stage": 1}}
head = {"kind": "projection", "hidden_dim": 8, "out_dim": 4}
model = common.build_model(spec, head)
tx = common.make_optimizer(ml_collections.ConfigDict(
    dict(learning_rate=1e-2, weight_decay=0.0, warmup_steps=0)), 10)

def fresh_state(mesh, seed):
    variables = common.init_variables(model, jax.random.key(seed), jnp.zeros((1, 8, 8, 1)))
    return parallel.replicate(common.TrainState.create(variables, tx), mesh)

def iterator():
    return iter(grain.MapDataset.range(100).shuffle(seed=0).repeat().batch(4).to_iter_dataset())

def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]

report = {}
for saved_on, restored_on in [(8, 1), (8, 2), (8, 4), (1, 8)]:
    directory = root / f"{saved_on}_{restored_on}"
    state = fresh_state(parallel.make_mesh(saved_on), seed=1)
    it = iterator()
    for _ in range(3):
        next(it)
    with checkpoints.train_checkpoints(directory / "ckpt", every=1, keep=2) as manager:
        checkpoints.save_train(manager, 3, state, it, force=True)
        manager.wait_until_finished()
    expected_batch = next(it)
    checkpoints.export_encoder(directory / "export", state.variables,
                               {"encoder": spec, "head": head, "input_shape": [8, 8, 1]})

    mesh = parallel.make_mesh(restored_on)
    target, it2 = fresh_state(mesh, seed=2), iterator()
    with checkpoints.train_checkpoints(directory / "ckpt", every=1, keep=2) as manager:
        restored = checkpoints.restore_train(manager, target, it2)
    _, exported, _ = common.restore_model(directory / "export", mesh)
    report[f"{saved_on}->{restored_on}"] = {
        "state_equal": all(np.array_equal(a, b) for a, b in zip(leaves(state), leaves(restored))),
        "export_equal": all(np.array_equal(a, b) for a, b in
                            zip(leaves(state.variables), leaves(exported))),
        "devices": len(jax.tree.leaves(restored.params)[0].sharding.device_set),
        "export_devices": len(jax.tree.leaves(exported)[0].sharding.device_set),
        "same_next_batch": bool(np.array_equal(next(it2), expected_batch)),
    }
print("RESULT" + json.dumps(report))
"""


def test_restore_across_device_counts(tmp_path):
    report = run_on_eight_devices(SCRIPT, str(tmp_path))
    assert set(report) == {"8->1", "8->2", "8->4", "1->8"}
    for case, r in report.items():
        restored_on = int(case.split("->")[1])
        assert r == {"state_equal": True, "export_equal": True, "devices": restored_on,
                     "export_devices": restored_on, "same_next_batch": True}, case
