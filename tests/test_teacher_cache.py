"""The cached teacher: a lookup of precomputed outputs equals the teacher's forward per step."""

import jax
import ml_collections
import numpy as np
import pytest

from cmcd_jax import defaults, experiment, parallel
from cmcd_jax.data import pipeline
from cmcd_jax.stages import common, distill
from conftest import assert_close

SPEC = {"name": "convnet", "kwargs": {"widths": [4, 8], "convs_per_stage": 1}}
PAIR = ("image", "sketch")


def mirror_sensitive(images: np.ndarray) -> np.ndarray:
    """A stand-in 'teacher' that tells an image from its mirror: first and last columns."""
    return np.concatenate([images[:, :, 0], images[:, :, -1]], -1).reshape(len(images), -1)


def test_cached_batches_are_paired_batches_with_the_source_looked_up(tiny_sources):
    train = tiny_sources["train"]
    images = pipeline.load_arrays(train, ("image",))["image"]
    table = np.stack([mirror_sensitive(images), mirror_sensitive(images[:, :, ::-1])], 1)
    online = pipeline.paired_batches(train, PAIR, 32, 5, min_scale=1.0, jitter=0.0)
    cached = pipeline.cached_teacher_batches(train, PAIR, table, 32, 5)
    mirror_rows = {row.tobytes() for row in table[:, 1]}
    mirrored = 0
    for _ in range(12):  # 320 records: past the first epoch's reshuffle
        a, b = next(online), next(cached)
        assert set(b) == {"sketch", pipeline.TEACHER_OUT}
        np.testing.assert_array_equal(a["sketch"], b["sketch"])
        np.testing.assert_array_equal(mirror_sensitive(a["image"]), b[pipeline.TEACHER_OUT])
        mirrored += sum(row.tobytes() in mirror_rows for row in b[pipeline.TEACHER_OUT])
    assert 100 < mirrored < 284  # both views are drawn


def test_cached_batches_reject_a_wrong_table_or_an_augmented_source(tiny_sources):
    train = tiny_sources["train"]
    with pytest.raises(ValueError, match=r"table has shape \(10, 2, 4\); expected \(320, 2"):
        pipeline.cached_teacher_batches(train, PAIR, np.zeros((10, 2, 4)), 8, 0)
    with pytest.raises(ValueError, match="'audio' source is augmented on every draw"):
        pipeline.cached_teacher_batches(train, ("audio", "sketch"), np.zeros((320, 2, 4)), 8, 0)


@pytest.fixture(scope="module")
def cache_setup(tiny_sources):
    teacher = common.build_model(SPEC, {"kind": "projection", "hidden_dim": 8, "out_dim": 4})
    student = common.build_model(SPEC, {"kind": "projection", "hidden_dim": 8, "out_dim": 4})
    first = tiny_sources["train"][0]
    teacher_vars = common.init_variables(teacher, jax.random.key(1),
                                         pipeline.to_input("image", first["image"])[None])
    student_vars = common.init_variables(student, jax.random.key(2),
                                         pipeline.to_input("sketch", first["sketch"])[None])
    return dict(teacher=teacher, student=student, teacher_vars=teacher_vars,
                student_vars=student_vars, train=tiny_sources["train"])


@pytest.mark.parametrize("teacher_output", ["projection", "features"])
def test_teacher_table_holds_the_outputs_on_each_source_and_its_mirror(cache_setup,
                                                                       teacher_output):
    s = cache_setup
    records = [s["train"][i] for i in range(40)]
    table = distill.teacher_table(s["teacher"], s["teacher_vars"], records, "image",
                                  teacher_output, chunk=16)
    width = 4 if teacher_output == "projection" else 8
    assert table.shape == (40, 2, width) and table.dtype == np.float32
    for i in (0, 17, 39):  # one record at a time, outside the chunking
        x = pipeline.to_input("image", records[i]["image"])
        for mirrored, view in enumerate((x, x[:, ::-1])):
            features, projection = s["teacher"].apply(s["teacher_vars"], view[None],
                                                      train=False)
            expected = projection if teacher_output == "projection" else features
            assert_close(table[i, mirrored], np.asarray(expected)[0])


def test_cached_steps_train_the_student_as_the_teacher_forward_does(cache_setup):
    s = cache_setup
    mesh = parallel.make_mesh(1)
    config = ml_collections.ConfigDict({"distill": {"loss_chunk_size": 0, "cmc": {
        "temperature": 0.1, "symmetric": True}}})
    objective = distill.method_objective("cmc", config, mesh)
    tx = common.make_optimizer(ml_collections.ConfigDict(
        dict(learning_rate=1e-2, weight_decay=1e-4, warmup_steps=0)), 10)
    table = distill.teacher_table(s["teacher"], s["teacher_vars"], s["train"], "image",
                                  objective.teacher_output, chunk=160)
    batches = {False: pipeline.paired_batches(s["train"], PAIR, 32, 3, min_scale=1.0,
                                              jitter=0.0),
               True: pipeline.cached_teacher_batches(s["train"], PAIR, table, 32, 3)}
    losses, params = {}, {}
    for cached, source in batches.items():
        step = jax.jit(distill.make_distill_step(s["student"], s["teacher"], tx, objective,
                                                 source="image", target="sketch",
                                                 cached_teacher=cached))
        state = common.TrainState.create(s["student_vars"], tx)
        losses[cached] = []
        for _ in range(2):
            state, metrics = step(state, s["teacher_vars"], next(source))
            losses[cached].append(float(metrics["loss"]))
        params[cached] = state.params
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
    assert losses[True][1] != losses[True][0]
    jax.tree.map(lambda a, b: assert_close(a, b, rtol=1e-4), params[True], params[False])


@pytest.mark.parametrize("override, message", [
    ({}, r"set config.distill.min_crop_scale=1 \(it is 0.3\)"),
    ({"distill.min_crop_scale": 1.0, "data.pairing": "label"},
     r"needs config.data.pairing='instance' \(it is 'label'"),
    ({"distill.min_crop_scale": 1.0, "data.source": "audio"},
     r"the 'audio' source is augmented on every draw"),
])
def test_cache_teacher_needs_unaugmented_instance_pairs(override, message):
    config = defaults.default_config()
    config.distill.cache_teacher = True
    for key, value in override.items():
        section, name = key.split(".")
        config[section][name] = value
    with pytest.raises(ValueError, match=message):
        experiment.check_config(config)
    config.distill.cache_teacher = False
    experiment.check_config(config)
