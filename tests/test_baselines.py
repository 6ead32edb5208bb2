"""The SOCKET baseline: BatchNorm statistics recovered from a training-mode update, their
pairing between student and teacher, the statistics loss, and the distillation step using it.

Expected values come from independent computations: the inputs of every BatchNorm layer are
captured with `nn.intercept_methods` and reduced in float64 numpy.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cmcd_jax import losses, parallel
from cmcd_jax.models import AudioEncoder, ConvNet, ResNet18
from cmcd_jax.models.encoders import BN_EPSILON, BN_MOMENTUM
from cmcd_jax.stages import common, distill

from conftest import assert_close, run_on_eight_devices


def bn_inputs(fn):
    """fn() jitted, also returning {BatchNorm module path: its input} (as float64 numpy)."""
    def traced():
        captured = {}

        def interceptor(next_fun, args, kwargs, context):
            if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
                captured["/".join(context.module.scope.path)] = args[0]
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            out = fn()
        return out, captured

    out, captured = jax.jit(traced)()
    return out, {k: np.asarray(v, np.float64) for k, v in captured.items()}


def fill(path, leaf, rng: np.random.Generator):
    """A random value for one variable (by its name) of the shape of `leaf`."""
    name = path[-1].key
    if name == "kernel":  # He-normal over the fan-in
        return rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape)
    if name == "var":
        return rng.uniform(0.3, 3.0, leaf.shape)
    if name == "scale":
        return rng.uniform(0.5, 1.5, leaf.shape)
    return rng.normal(0.0, 1.0 if name == "mean" else 0.1, leaf.shape)


def random_variables(model, example, seed: int):
    """Variables of `model` for `example` drawn with numpy (non-trivial running statistics)
    (random init compiles slowly on CPU)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), example, train=False))
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.asarray(fill(path, leaf, rng), jnp.float32), shapes)


def batch_moments(inputs: dict) -> list:
    """[(mean, biased var) over all but the channel axis] in sorted layer-name order."""
    return [(x.mean(axis=tuple(range(x.ndim - 1))), x.var(axis=tuple(range(x.ndim - 1))))
            for _, x in sorted(inputs.items())]


def numpy_socket(student: list, teacher: list) -> float:
    """mean over layers of mean_c (mu_s - mu_t)^2 + (sd_s - sd_t)^2, sd = sqrt(var + eps)."""
    terms = []
    for (mu_s, var_s), (mu_t, var_t) in zip(student, teacher):
        mu_s, var_s, mu_t, var_t = (np.asarray(a, np.float64) for a in (mu_s, var_s, mu_t, var_t))
        sd_s = np.sqrt(np.maximum(var_s, 0) + BN_EPSILON)
        sd_t = np.sqrt(np.maximum(var_t, 0) + BN_EPSILON)
        terms.append(np.mean((mu_s - mu_t) ** 2 + (sd_s - sd_t) ** 2))
    return float(np.mean(terms))


# --- batch_norm_statistics -----------------------------------------------------------------


def test_batch_norm_statistics_recovers_each_layers_batch_moments():
    rng = np.random.default_rng(0)
    model = ConvNet(widths=(4, 8))
    x = jnp.asarray(rng.normal(0.5, 2.0, (6, 8, 8, 3)), jnp.float32)
    variables = random_variables(model, x[:1], 10)
    old = variables["batch_stats"]  # non-trivial running statistics

    (_, updates), inputs = bn_inputs(lambda: model.apply(
        {"params": variables["params"], "batch_stats": old}, x, train=True,
        mutable=["batch_stats"]))
    recovered = losses.batch_norm_statistics(old, updates["batch_stats"], BN_MOMENTUM)

    assert sorted(inputs) == ["BatchNorm_0", "BatchNorm_1", "BatchNorm_2", "BatchNorm_3"]
    expected = batch_moments(inputs)
    assert len(recovered) == len(expected) == 4
    for (mean, var), (mean_np, var_np) in zip(recovered, expected):
        np.testing.assert_allclose(mean, mean_np, rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(var, var_np, rtol=1e-4, atol=2e-5)
    # the running averages themselves are not the batch moments (the momentum is undone)
    running = losses.statistics_pairs(updates["batch_stats"])
    assert not np.allclose(running[0][0], expected[0][0], atol=1e-2)


def test_batch_norm_statistics_inverts_the_momentum_update_exactly():
    rng = np.random.default_rng(1)
    old = {"a": {"mean": rng.normal(size=3), "var": rng.uniform(1, 2, 3)},
           "b": {"mean": rng.normal(size=5), "var": rng.uniform(1, 2, 5)}}
    batch = {"a": {"mean": rng.normal(size=3), "var": rng.uniform(1, 2, 3)},
             "b": {"mean": rng.normal(size=5), "var": rng.uniform(1, 2, 5)}}
    new = jax.tree.map(lambda o, b: 0.8 * o + 0.2 * b, old, batch)
    got = losses.batch_norm_statistics(old, new, 0.8)
    for (mean, var), key in zip(got, ("a", "b")):
        np.testing.assert_allclose(mean, batch[key]["mean"], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(var, batch[key]["var"], rtol=1e-12, atol=1e-12)


# --- statistics_pairs ----------------------------------------------------------------------


def labelled(tree):
    """`tree` with every leaf filled by its flattening position (to read back the order)."""
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, [np.full(leaf.shape, float(i)) for i, leaf in
                                        enumerate(leaves)])


def test_statistics_pairs_convnet_order_and_count():
    stats = labelled(jax.eval_shape(lambda: ConvNet(widths=(4, 8)).init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False))["batch_stats"])
    pairs = losses.statistics_pairs(stats)
    assert [m.shape for m, _ in pairs] == [(4,), (4,), (8,), (8,)]
    for i, (mean, var) in enumerate(pairs):
        assert mean is stats[f"BatchNorm_{i}"]["mean"] and var is stats[f"BatchNorm_{i}"]["var"]


def test_statistics_pairs_resnet18_order_and_count():
    shapes = jax.eval_shape(lambda: ResNet18(num_filters=4).init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False))["batch_stats"]
    stats = labelled(shapes)
    pairs = losses.statistics_pairs(stats)
    # independently listed: blocks in order, each BN_0, BN_1 (+ proj_bn where the shape
    # changes: first block of stages 2-4), then the stem (sorted, i.e. flattening, order)
    names = []
    for block in range(8):
        names += [f"BasicBlock_{block}/BatchNorm_0", f"BasicBlock_{block}/BatchNorm_1"]
        if block in (2, 4, 6):
            names.append(f"BasicBlock_{block}/proj_bn")
    names.append("stem_bn")
    assert len(pairs) == len(names) == 20

    def node(name):
        out = stats
        for part in name.split("/"):
            out = out[part]
        return out

    for (mean, var), name in zip(pairs, names):
        assert mean is node(name)["mean"] and var is node(name)["var"], name
    widths = [4] * 4 + [8] * 5 + [16] * 5 + [32] * 5 + [4]
    assert [m.shape for m, _ in pairs] == [(w,) for w in widths]
    assert [v.shape for _, v in pairs] == [(w,) for w in widths]
    # the order is the tree's flattening order (what batch_norm_statistics relies on)
    means = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(stats)
             if path[-1].key == "mean"]
    assert all(a is b for a, b in zip(means, [m for m, _ in pairs]))


def test_audio_convnet_pairs_with_image_convnet_layer_by_layer():
    widths = (4, 8)
    audio = AudioEncoder(backbone="convnet", backbone_kwargs={"widths": widths})
    audio_stats = labelled(jax.eval_shape(lambda: audio.init(
        jax.random.key(0), jnp.zeros((1, 2048)), train=False))["batch_stats"])
    image_stats = labelled(jax.eval_shape(lambda: ConvNet(widths=widths).init(
        jax.random.key(1), jnp.zeros((1, 8, 8, 3)), train=False))["batch_stats"])
    assert list(audio_stats) == ["backbone"]  # nested one level deeper
    student, teacher = losses.statistics_pairs(audio_stats), losses.statistics_pairs(image_stats)
    assert len(student) == len(teacher) == 4
    for (ms, vs), (mt, vt) in zip(student, teacher):
        assert ms.shape == mt.shape and vs.shape == vt.shape
    # the loss accepts them (and both trees flatten in the same layer order)
    assert float(losses.socket_statistics_loss(student, teacher)) >= 0.0
    assert [float(m[0]) for m, _ in student] == [float(m[0]) for m, _ in teacher]


# --- socket_statistics_loss ----------------------------------------------------------------


def random_pairs(rng, channels):
    return [(jnp.asarray(rng.normal(size=c), jnp.float32),
             jnp.asarray(rng.uniform(0.1, 4.0, c), jnp.float32)) for c in channels]


def test_socket_loss_matches_numpy_formula():
    rng = np.random.default_rng(2)
    student, teacher = random_pairs(rng, (3, 5, 7)), random_pairs(rng, (3, 5, 7))
    got = float(losses.socket_statistics_loss(student, teacher))
    assert got == pytest.approx(numpy_socket(student, teacher), rel=1e-5)
    # each layer weighs the same whatever its width: not a mean over all channels at once
    flat = numpy_socket([tuple(np.concatenate(a) for a in zip(*student))],
                        [tuple(np.concatenate(a) for a in zip(*teacher))])
    assert got != pytest.approx(flat, rel=1e-3)


def test_socket_loss_is_zero_for_equal_statistics():
    stats = random_pairs(np.random.default_rng(3), (4, 8))
    copy = [(jnp.array(m), jnp.array(v)) for m, v in stats]
    assert float(losses.socket_statistics_loss(stats, copy)) == 0.0


def test_socket_loss_gradient_flows_to_the_student_only():
    rng = np.random.default_rng(4)
    student, teacher = random_pairs(rng, (3, 6)), random_pairs(rng, (3, 6))
    g_student, g_teacher = jax.grad(losses.socket_statistics_loss, argnums=(0, 1))(student,
                                                                                   teacher)
    for leaf in jax.tree.leaves(g_teacher):
        np.testing.assert_array_equal(leaf, 0.0)
    # analytic gradient of the numpy formula w.r.t. the student's statistics
    num_layers = len(student)
    for (gm, gv), (mu_s, var_s), (mu_t, var_t) in zip(g_student, student, teacher):
        mu_s, var_s, mu_t, var_t = (np.asarray(a, np.float64) for a in (mu_s, var_s, mu_t, var_t))
        c = mu_s.size
        sd_s, sd_t = np.sqrt(var_s + BN_EPSILON), np.sqrt(var_t + BN_EPSILON)
        assert_close(gm, 2 * (mu_s - mu_t) / (c * num_layers), rtol=1e-4)
        assert_close(gv, (sd_s - sd_t) / sd_s / (c * num_layers), rtol=1e-4)


def test_socket_loss_matches_a_deeper_student_at_the_end_of_each_stage():
    rng = np.random.default_rng(6)
    student, teacher = random_pairs(rng, (4, 4, 8, 8, 16, 16)), random_pairs(rng, (4, 8, 16))
    got = float(losses.socket_statistics_loss(student, teacher))
    assert got == pytest.approx(numpy_socket([student[1], student[3], student[5]], teacher),
                                rel=1e-5)


def test_socket_loss_rejects_mismatched_architectures():
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="the student has 2 BatchNorm layers in 2 stages, the "
                                         "teacher 3 in 3; SOCKET needs as many stages"):
        losses.socket_statistics_loss(random_pairs(rng, (4, 8)), random_pairs(rng, (4, 8, 16)))
    with pytest.raises(ValueError, match=r"BatchNorm statistics of shape \(8,\) \(student\) "
                                         r"and \(16,\) \(teacher\) differ"):
        losses.socket_statistics_loss(random_pairs(rng, (4, 8)), random_pairs(rng, (4, 16)))


# --- the distillation step -----------------------------------------------------------------

SPEC = {"name": "convnet", "kwargs": {"widths": [4, 8], "convs_per_stage": 1}}


@pytest.fixture(scope="module")
def socket_setup():
    """Teacher (non-trivial running stats), student, state and batch on a 1-device mesh."""
    rng = np.random.default_rng(6)
    mesh = parallel.make_mesh(1)
    config = ml_collections.ConfigDict({"distill": {"loss_chunk_size": 0,
                                                    "socket": {"statistics_weight": 0.7}}})
    objective = distill.method_objective("socket", config, mesh)
    # SOCKET regresses the teacher's backbone features, with the configured statistics weight
    assert (objective.teacher_output, objective.statistics_weight) == ("features", 0.7)
    teacher = common.build_model(SPEC, {"kind": "projection", "hidden_dim": 8, "out_dim": 4})
    head = distill.student_head(objective.teacher_output, None, {"feature_dim": 8})
    student = common.build_model(SPEC, head)
    batch = {"source": rng.normal(size=(8, 8, 8, 3)).astype(np.float32),
             "target": rng.normal(0.3, 1.5, size=(8, 8, 8, 1)).astype(np.float32)}
    t_vars = random_variables(teacher, batch["source"][:1], 11)
    s_vars = random_variables(student, batch["target"][:1], 12)
    tx = common.make_optimizer(ml_collections.ConfigDict(
        dict(learning_rate=1e-2, weight_decay=1e-4, warmup_steps=0)), 10)
    state = common.TrainState.create(s_vars, tx)
    weight = objective.statistics_weight
    results = {}
    for w in (0.0, weight):
        step = jax.jit(distill.make_distill_step(
            student, teacher, tx, dataclasses.replace(objective, statistics_weight=w),
            source="source", target="target"))
        results[w] = step(state, t_vars, batch)
    return dict(student=student, teacher=teacher, state=state, t_vars=t_vars, batch=batch,
                weight=weight, results=results)


def test_socket_step_adds_weight_times_the_statistics_term(socket_setup):
    s = socket_setup
    state, t_vars, batch = s["state"], s["t_vars"], s["batch"]
    # independent: the student's BatchNorm inputs on this batch, in train mode
    ((_, prediction), _), inputs = bn_inputs(lambda: s["student"].apply(
        state.variables, batch["target"], train=True, mutable=["batch_stats"]))
    student_moments = batch_moments({k.split("/")[-1]: v for k, v in inputs.items()
                                     if k.startswith("encoder/")})
    assert len(student_moments) == 2
    teacher_running = [(np.asarray(n["mean"]), np.asarray(n["var"])) for _, n in
                       sorted(t_vars["batch_stats"]["encoder"].items())]
    term = numpy_socket(student_moments, teacher_running)
    assert term > 0.1  # the teacher's running statistics are far from this batch's

    features, _ = jax.jit(lambda: s["teacher"].apply(t_vars, batch["source"], train=False))()
    l2 = np.mean(np.sum((np.asarray(prediction, np.float64) - np.asarray(features)) ** 2,
                        axis=-1))
    loss_plain = float(s["results"][0.0][1]["loss"])
    loss_socket = float(s["results"][s["weight"]][1]["loss"])
    assert loss_plain == pytest.approx(l2, rel=1e-5)
    assert loss_socket - loss_plain == pytest.approx(s["weight"] * term, rel=1e-4, abs=1e-5)


def test_socket_term_trains_the_encoder_only(socket_setup):
    s = socket_setup
    plain, socket = s["results"][0.0][0], s["results"][s["weight"]][0]
    # same forward pass: same new running statistics
    for a, b in zip(jax.tree.leaves(plain.batch_stats), jax.tree.leaves(socket.batch_stats)):
        np.testing.assert_array_equal(a, b)
    # the statistics term reaches every parameter in front of a BatchNorm layer's input:
    # the convs and the first BatchNorm's affine; not the last BatchNorm's affine (it only
    # feeds the features) nor the head
    changed = {jax.tree_util.keystr(path): not np.allclose(a, b, rtol=1e-6, atol=1e-7)
               for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(plain.params),
                                       jax.tree.leaves(socket.params))}
    assert changed == {
        "['encoder']['BatchNorm_0']['bias']": True, "['encoder']['BatchNorm_0']['scale']": True,
        "['encoder']['BatchNorm_1']['bias']": False,
        "['encoder']['BatchNorm_1']['scale']": False,
        "['encoder']['Conv_0']['kernel']": True, "['encoder']['Conv_1']['kernel']": True,
        "['head']['Dense_0']['bias']": False, "['head']['Dense_0']['kernel']": False}


def test_socket_step_with_a_deeper_student_matches_the_stage_ends(socket_setup):
    """The defaults' setting: the target encoder has two convs per stage, the teacher one."""
    s = socket_setup
    deep = {"name": "convnet", "kwargs": {**SPEC["kwargs"], "convs_per_stage": 2}}
    student = common.build_model(deep, {"kind": "linear", "num_classes": 8})
    variables = random_variables(student, s["batch"]["target"][:1], 13)
    tx = optax.sgd(0.0)
    state = common.TrainState.create(variables, tx)
    config = ml_collections.ConfigDict({"distill": {"loss_chunk_size": 0,
                                                    "socket": {"statistics_weight": 1.0}}})
    objective = distill.method_objective("socket", config, parallel.make_mesh(1))
    loss = {w: float(jax.jit(distill.make_distill_step(
        student, s["teacher"], tx, dataclasses.replace(objective, statistics_weight=w),
        source="source", target="target"))(state, s["t_vars"], s["batch"])[1]["loss"])
            for w in (0.0, 1.0)}
    _, inputs = bn_inputs(lambda: student.apply(variables, s["batch"]["target"], train=True,
                                                mutable=["batch_stats"]))
    moments = batch_moments({k.split("/")[-1]: v for k, v in inputs.items()
                             if k.startswith("encoder/")})
    teacher_running = [(np.asarray(n["mean"]), np.asarray(n["var"])) for _, n in
                       sorted(s["t_vars"]["batch_stats"]["encoder"].items())]
    assert len(moments) == 4 and len(teacher_running) == 2
    term = numpy_socket([moments[1], moments[3]], teacher_running)
    assert loss[1.0] - loss[0.0] == pytest.approx(term, rel=1e-4, abs=1e-5)


def test_socket_with_a_batch_norm_free_encoder_is_a_clear_error():
    spec = {"name": "vit_t4", "kwargs": {"patch": 4, "width": 8, "depth": 1, "num_heads": 2,
                                         "mlp_dim": 16}}
    teacher = common.build_model(spec, {"kind": "projection", "hidden_dim": 8, "out_dim": 4})
    student = common.build_model(spec, {"kind": "linear", "num_classes": 8})
    x, y = jnp.ones((4, 8, 8, 3)), jnp.ones((4, 8, 8, 1))
    tx = optax.sgd(0.1)
    step = distill.make_distill_step(student, teacher, tx,
                                     distill.Objective(losses.l2_align, "features", 1.0),
                                     source="source", target="target")

    def first_step():  # traced only
        t_vars = common.init_variables(teacher, jax.random.key(0), x[:1])
        s_vars = common.init_variables(student, jax.random.key(1), y[:1])
        return step(common.TrainState.create(s_vars, tx), t_vars, {"source": x, "target": y})

    with pytest.raises(ValueError, match="BatchNorm"):
        jax.eval_shape(first_step)


SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np, ml_collections
from cmcd_jax import parallel
from cmcd_jax.stages import common, distill

spec = {"name": "convnet", "kwargs": {"widths": [4, 8], "convs_per_stage": 1}}
rng = np.random.default_rng(0)
teacher = common.build_model(spec, {"kind": "projection", "hidden_dim": 8, "out_dim": 4})
student = common.build_model(spec, {"kind": "linear", "num_classes": 8})
batches = [{"source": rng.normal(size=(16, 8, 8, 3)).astype(np.float32),
            "target": rng.normal(0.3, 1.5, size=(16, 8, 8, 1)).astype(np.float32)}
           for _ in range(2)]

def variables(model, example):  # numpy draws: random init compiles slowly on CPU
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), example, train=False))
    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            value = rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape)
        elif name in ("var", "scale"):
            value = rng.uniform(0.5, 2.0, leaf.shape)
        else:
            value = rng.normal(0.0, 0.5, leaf.shape)
        return value.astype(np.float32)
    return jax.tree_util.tree_map_with_path(fill, shapes)

t_vars = variables(teacher, batches[0]["source"][:1])
s_vars = variables(student, batches[0]["target"][:1])
tx = common.make_optimizer(ml_collections.ConfigDict(
    dict(learning_rate=1e-2, weight_decay=1e-4, warmup_steps=0)), 10)
config = ml_collections.ConfigDict({"distill": {"loss_chunk_size": 0,
                                                "socket": {"statistics_weight": 0.5}}})
out = {}
for n in (1, 8):
    mesh = parallel.make_mesh(n)
    objective = distill.method_objective("socket", config, mesh)
    state = parallel.replicate(common.TrainState.create(s_vars, tx), mesh)
    step = jax.jit(distill.make_distill_step(student, teacher, tx, objective,
                                             source="source", target="target"),
                   out_shardings=parallel.replicated(mesh))
    losses = []
    for b in batches:
        state, m = step(state, parallel.replicate(t_vars, mesh), parallel.to_global(b, mesh))
        losses.append(float(m["loss"]))
    out[n] = {"losses": losses, "leaves": [np.asarray(x).ravel().tolist() for x in
                                           jax.tree.leaves(jax.device_get(state.variables))]}
print("RESULT" + json.dumps(out))
"""


def test_socket_step_is_the_same_on_1_and_8_devices():
    runs = run_on_eight_devices(SCRIPT, timeout=300)
    one, eight = runs["1"], runs["8"]
    assert eight["losses"] == pytest.approx(one["losses"], rel=1e-5, abs=1e-6)
    assert len(one["leaves"]) == len(eight["leaves"]) > 0
    for a, b in zip(one["leaves"], eight["leaves"]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
