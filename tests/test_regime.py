"""The paper's data regime on cmcd_shapes: a large unpaired source pool for step 1, m pairs for
step 2, few labels for step 3; and the step-1 teacher built once per data and step-1 config."""

import json
import pathlib
import re
import shutil
import types

import numpy as np
import pytest

from cmcd_jax import defaults
from cmcd_jax.data import datasets, render, shapes
from cmcd_jax.stages import common, pretrain
from conftest import run_main

POOL = 48


@pytest.fixture(scope="module")
def regime(data_dir):
    return shapes.load_dataset("tiny", str(data_dir), num_unpaired=POOL, num_pairs=200)


def image_set(records) -> set:
    return {records[i]["image"].tobytes() for i in range(len(records))}


def test_a_local_build_says_what_it_builds_and_how_long_not_downloading(tmp_path, capfd):
    shapes.load_source_pool("tiny", 20, str(tmp_path))
    out, err = capfd.readouterr()
    assert "Downloading" not in out + err
    assert ("building cmcd_shapes_source/tiny-20 1.0.0: 20 unpaired source images in "
            f"{tmp_path}") in err
    assert re.search(r"built cmcd_shapes_source/tiny-20 1.0.0: 20 unpaired source images in "
                     r"\d+s", err)
    shapes.load_source_pool("tiny", 20, str(tmp_path))
    assert "building" not in capfd.readouterr().err  # Reused silently.


def test_unpaired_pool_is_disjoint_from_pairs_and_test(regime):
    unpaired = regime.pools["image"][datasets.UNPAIRED]
    assert len(unpaired) == POOL and set(unpaired[0]) == {"image", "label"}
    pool, train, test = (image_set(unpaired), image_set(regime.pairs["train"]),
                         image_set(regime.pairs["test"]))
    assert len(pool) == POOL  # No repeats inside the pool either.
    assert not pool & train and not pool & test and not train & test
    # The pool holds scenes 0 .. POOL-1 of their own random stream (in TFDS's order).
    assert pool == {render.render_scene(render.scene_rng(0, datasets.UNPAIRED, i), 32)[
        "image"].tobytes() for i in range(POOL)}


def test_num_pairs_keeps_the_first_m_records_everywhere(regime, tiny_sources):
    assert len(regime.pairs["train"]) == 200
    for modality in shapes.MODALITIES:
        assert len(regime.pools[modality]["train"]) == 200
    np.testing.assert_array_equal(regime.pairs["train"][199]["sketch"],
                                  tiny_sources["train"][199]["sketch"])
    assert len(regime.pairs["test"]) == len(tiny_sources["test"])  # The test split stays.


def test_step1_reads_pool_and_paired_sources_never_the_target_pool(regime):
    records = datasets.unlabelled_records(regime, "image")
    assert len(records) == 200 + POOL
    np.testing.assert_array_equal(records[200]["image"],
                                  regime.pools["image"][datasets.UNPAIRED][0]["image"])
    with pytest.raises(IndexError):
        records[200 + POOL]
    assert len(datasets.unlabelled_records(regime, "sketch")) == 200  # ssl_target: its m.
    assert datasets.data_sizes(regime, "image", "sketch") == {
        "step1_source": 200 + POOL, "unpaired_source": POOL, "pairs": 200, "target_train": 200}


def test_num_pairs_beyond_the_train_split_is_refused(data_dir):
    with pytest.raises(ValueError, match=r"config.data.num_pairs=999: cmcd_shapes/tiny has 320"):
        shapes.load_dataset("tiny", str(data_dir), num_pairs=999)


def test_teacher_key_ignores_the_target_and_its_encoder_and_follows_step1(regime):
    base = defaults.default_config()
    key = pretrain.teacher_key(base, regime)
    other_target = defaults.default_config()
    other_target.data.target = "audio"
    other_target.model.target_encoder_kwargs.convs_per_stage = 3
    assert pretrain.teacher_key(other_target, regime) == key
    other_audio = defaults.default_config()
    other_audio.data.audio_seconds = 2.0
    assert pretrain.teacher_key(other_audio, regime) == key
    other_audio.data.source = "audio"
    audio_key = pretrain.teacher_key(other_audio, regime)
    other_audio.data.audio_seconds = 1.0
    assert pretrain.teacher_key(other_audio, regime) != audio_key
    for change in ("pretrain.steps", "data.source_pool", "seed"):
        changed = defaults.default_config()
        section, leaf = change.rsplit(".", 1) if "." in change else (None, change)
        node = changed[section] if section else changed
        node[leaf] += 1
        assert pretrain.teacher_key(changed, regime) != key, change
    import dataclasses
    assert pretrain.teacher_key(base, dataclasses.replace(regime, version="other")) != key


def test_results_record_the_regime_and_a_second_run_reuses_the_teacher(tmp_path, data_dir):
    shared = tmp_path / "tfds"
    shutil.copytree(data_dir, shared)
    args = ("--config.methods=cmc", f"--config.data.source_pool={POOL}",
            "--config.data.num_pairs=200", "--config.pretrain.reuse_teacher=True")
    first = run_main(tmp_path / "a", shared, *args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[pretrain] step 10/10" in first.stderr
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["data"] == {"step1_source": 200 + POOL, "unpaired_source": POOL,
                               "pairs": 200, "target_train": 200, "labels_per_class": 10,
                               "labelled_target": 100}
    teacher = results["teacher"]
    assert teacher["trained_by_this_run"] and 0.0 <= teacher["probe_top1"] <= 1.0
    assert teacher["export"].startswith(str(shared / pretrain.TEACHER_CACHE))
    assert not (tmp_path / "a" / "pretrain").exists()
    table = (tmp_path / "a" / "results.md").read_text()
    assert "| teacher (probe on image) |" in table and "trained by this run" in table

    second = run_main(tmp_path / "b", shared, *args, "--config.distill.steps=12")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "[pretrain] step" not in second.stderr and "reusing the teacher" in second.stderr
    again = json.loads((tmp_path / "b" / "results.json").read_text())["teacher"]
    assert not again["trained_by_this_run"]
    assert (again["export"], again["probe_top1"]) == (teacher["export"], teacher["probe_top1"])
    assert "(reused)" in (tmp_path / "b" / "results.md").read_text()

    meta = pathlib.Path(teacher["export"]) / "meta.json"
    meta.write_text("{")
    third = run_main(tmp_path / "c", shared, *args[1:], "--config.methods=random_init")
    assert third.returncode == 0, third.stderr[-3000:]
    assert "reusing the teacher" not in third.stderr
    assert f"[pretrain] export {meta.parent} is damaged" in third.stderr
    assert json.loads((tmp_path / "c" / "results.json").read_text())["teacher"][
        "trained_by_this_run"]
    assert (tmp_path / "c" / "figures" / "loss_curves.png").exists()  # the teacher's curve


def test_target_encoders_have_their_own_kwargs_and_the_teacher_the_source_ones():
    config = defaults.default_config()
    config.model.encoder_kwargs.convs_per_stage = 1
    config.model.target_encoder_kwargs.convs_per_stage = 2
    dataset = types.SimpleNamespace(audio_sample_rate=8000)
    assert common.encoder_spec(config, "image", dataset)["kwargs"]["convs_per_stage"] == 1
    assert common.encoder_spec(config, "sketch", dataset)["kwargs"]["convs_per_stage"] == 2
    config.data.target = "audio"
    audio = common.encoder_spec(config, "audio", dataset)["kwargs"]
    assert audio["backbone_kwargs"]["convs_per_stage"] == 2 and audio["sample_rate"] == 8000
    assert common.encoder_spec(config, "sketch", dataset)["kwargs"]["convs_per_stage"] == 1
