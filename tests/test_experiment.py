"""The experiment driver's pure parts: config checks, the gap levels, aggregation over seeds,
the results table, Spearman, the workdir claim; and the target corruption of the gap sweep."""

import dataclasses
import json
import os
import re
import types

import numpy as np
import pytest
from scipy import stats

from cmcd_jax import defaults, experiment, methods
from cmcd_jax.data import datasets, sources
from conftest import tree_digest

# --- gap_levels / check_config -------------------------------------------------------------


@pytest.mark.parametrize("text, levels", [
    ("", []),
    ("0,0.5,1", [0.0, 0.5, 1.0]),
    (" 0.25 , 1 ,", [0.25, 1.0]),
    ("1e-1", [0.1]),
])
def test_gap_levels_parse(text, levels):
    assert experiment.gap_levels(types.SimpleNamespace(gap_levels=text)) == levels


@pytest.mark.parametrize("text", ["1.5", "-0.1", "0,2", "a,b", "0;1", "nan", "inf"])
def test_gap_levels_errors_name_the_key(text):
    with pytest.raises(ValueError, match=re.escape(f"config.gap_levels={text!r}: give "
                                                   "comma-separated levels in [0, 1]")):
        experiment.gap_levels(types.SimpleNamespace(gap_levels=text))


def config(**changes):
    c = defaults.default_config()
    for key, value in changes.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def test_check_config_accepts_the_defaults_and_every_method(tmp_path):
    experiment.check_config(config())
    experiment.check_config(config(methods=",".join(methods.names()),
                                   gap_levels="0,1", num_seeds=3, **{"data.dir": str(tmp_path)}))
    assert "socket" in methods.names()


def test_each_built_in_method_writes_where_it_always_did():
    assert {name: m.directory for name, m in methods.REGISTRY.items()} == {
        "cmc": "distill/cmc", "cmd": "distill/cmd", "l2": "distill/l2",
        "socket": "distill/socket", "target_only": "downstream/target_only",
        "ssl_target": "ssl_target", "random_init": "random_init"}


@pytest.mark.parametrize("method, message", [
    (methods.Method("Cos", "student", loss=len), "method name 'Cos': use lowercase"),
    (methods.Method("cos", "teacher"), "trains='teacher'; valid: student, labels, simclr, "
                                       "nothing"),
    (methods.Method("cos", "student"), "method 'cos' trains a student and needs a loss"),
    (methods.Method("cos", "student", loss=len, teacher_output="logits"),
     "teacher_output='logits'; valid: projection, features"),
])
def test_a_method_is_checked_when_registered(monkeypatch, method, message):
    monkeypatch.setattr(methods, "REGISTRY", dict(methods.REGISTRY))
    with pytest.raises(ValueError, match=re.escape(message)):
        methods.register(method)
    assert method.name not in methods.REGISTRY


@pytest.mark.parametrize("changes, message", [
    ({"methods": "cmc,bogus"}, "config.methods: unknown method(s) 'bogus'; valid: cmc, cmd"),
    ({"methods": ""}, "config.methods"),
    ({"methods": " , "}, "config.methods"),
    ({"model.encoder": "vgg"}, "config.model.encoder='vgg'; valid:"),
    ({"downstream.mode": "semi"}, "config.downstream.mode='semi'; valid: linear, finetune"),
    ({"num_seeds": 0}, "config.num_seeds=0; it must be >= 1"),
    ({"num_seeds": -2}, "config.num_seeds=-2"),
    ({"gap_levels": "0,3"}, "config.gap_levels='0,3'"),
    ({"data.dir": "/no/such/dir/cmcd"}, "config.data.dir='/no/such/dir/cmcd': no such directory"),
    ({"distill.cmd.variant": "foo"}, "config.distill.cmd.variant='foo'; valid: cross, within"),
    ({"model.dtype": "float16"}, "config.model.dtype='float16'; valid: float32, bfloat16"),
    ({"data.config_name": "huge"}, "config.data.config_name='huge'; valid: 32, 64, tiny"),
    ({"distill.steps": 0}, "config.distill.steps=0; it must be > 0"),
    ({"pretrain.steps": -5}, "config.pretrain.steps=-5; it must be > 0"),
    ({"downstream.probe_steps": 0}, "config.downstream.probe_steps=0; it must be > 0"),
    ({"checkpoint.every": 0}, "config.checkpoint.every=0; it must be > 0"),
    ({"downstream.labels_per_class": 0}, "config.downstream.labels_per_class=0; it must be"),
    ({"pretrain.temperature": 0.0}, "config.pretrain.temperature=0.0; it must be finite and"),
    ({"distill.cmd.teacher_temperature": -0.1}, "config.distill.cmd.teacher_temperature=-0.1"),
    ({"distill.cmc.temperature": float("inf")}, "config.distill.cmc.temperature=inf; it must"),
    ({"target_only.batch_size": 0}, "config.target_only.batch_size=0; it must be > 0"),
    ({"downstream.seg_batch_size": -8}, "config.downstream.seg_batch_size=-8; it must be > 0"),
    ({"distill.learning_rate": float("nan")}, "config.distill.learning_rate=nan; it must be "
                                              "finite and > 0"),
    ({"finetune.learning_rate": -1e-3}, "config.finetune.learning_rate=-0.001; it must be"),
    ({"downstream.seg_learning_rate": 0.0}, "config.downstream.seg_learning_rate=0.0; it"),
])
def test_check_config_errors_name_the_key(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        experiment.check_config(config(**changes))


def test_load_dataset_and_modality_errors_name_the_key():
    with pytest.raises(ValueError, match=re.escape("config.data.dir is empty")):
        sources.load_dataset(config(dataset="paired_folder"))
    with pytest.raises(ValueError, match="config.data.source and config.data.target are both "
                                         "'image'"):
        datasets.check_modalities("toy", ("image", "sketch"), "image", "image")
    with pytest.raises(ValueError, match=re.escape("config.data.target='audio'; valid: image, "
                                                   "sketch (toy)")):
        datasets.check_modalities("toy", ("image", "sketch"), "image", "audio")


def test_with_seed_copies():
    c = config()
    other = experiment.with_seed(c, 7)
    assert other.seed == 7 and c.seed == 0
    other.data.source = "depth"
    assert c.data.source == "image"
    other.data.source = "image"
    other.seed = 0
    assert other.to_dict() == c.to_dict()


# --- aggregate / results_table / spearman --------------------------------------------------

KEYS = ("probe_top1", "retrieval_top1", "tv_lower", "tv_lower_ci", "mmd", "mmd_p_value")


def row(**values):
    return {k: values.get(k) for k in KEYS}


def seed_rows():
    return [
        {"cmc": row(probe_top1=0.61, retrieval_top1=0.30, tv_lower=0.20, tv_lower_ci=[0.1, 0.3],
                    mmd=0.012, mmd_p_value=0.01),
         "target_only": row(probe_top1=0.50)},
        {"cmc": row(probe_top1=0.65, retrieval_top1=None, tv_lower=0.22, tv_lower_ci=[0.1, 0.4],
                    mmd=0.010, mmd_p_value=0.02),
         "target_only": row(probe_top1=0.47)},
        {"cmc": row(probe_top1=0.58, retrieval_top1=0.34, tv_lower=0.25, tv_lower_ci=[0.2, 0.3],
                    mmd=0.015, mmd_p_value=0.03),
         "target_only": row(probe_top1=0.55)},
    ]


def test_aggregate_mean_and_sample_std_over_seeds():
    per_seed = seed_rows()
    out = experiment.aggregate(per_seed)
    assert set(out) == {"cmc", "target_only"}
    for method in out:
        for key in ("probe_top1", "tv_lower", "mmd", "mmd_p_value", "retrieval_top1"):
            values = np.array([r[method][key] for r in per_seed if r[method][key] is not None],
                              np.float64)
            if not values.size:
                continue
            assert out[method][key] == pytest.approx(values.mean(), rel=1e-12)
            assert out[method][key + "_std"] == pytest.approx(values.std(ddof=1), rel=1e-12)
    # a seed without the metric is left out (not counted as 0)
    assert out["cmc"]["retrieval_top1"] == pytest.approx(0.32)
    assert out["cmc"]["retrieval_top1_std"] == pytest.approx(np.std([0.30, 0.34], ddof=1))


def test_aggregate_missing_metrics_stay_none_and_per_seed_is_kept():
    per_seed = seed_rows()
    out = experiment.aggregate(per_seed)
    for key in ("retrieval_top1", "tv_lower", "mmd", "mmd_p_value", "tv_lower_ci"):
        assert out["target_only"][key] is None
        assert out["target_only"].get(key + "_std") is None
    assert out["cmc"]["per_seed"] == [r["cmc"] for r in per_seed]
    assert out["target_only"]["per_seed"] == [r["target_only"] for r in per_seed]
    json.dumps(out)  # results.json-ready: plain floats, lists and None


def test_aggregate_single_seed_has_no_std():
    per_seed = seed_rows()[:1]
    out = experiment.aggregate(per_seed)
    assert out["cmc"]["probe_top1"] == 0.61 and out["cmc"]["probe_top1_std"] is None
    assert out["cmc"]["mmd_std"] is None
    assert out["cmc"]["tv_lower_ci"] == [0.1, 0.3]  # a single seed's interval is kept
    assert out["target_only"]["tv_lower"] is None


def test_aggregate_one_seed_having_a_metric_has_no_std():
    per_seed = seed_rows()
    per_seed[0]["target_only"]["mmd"] = 0.5
    out = experiment.aggregate(per_seed)
    assert out["target_only"]["mmd"] == 0.5 and out["target_only"]["mmd_std"] is None


def results(**extra):
    return {"dataset": "cmcd_shapes", "source": "image", "target": "sketch", "seeds": [0, 1, 2],
            "methods": {"cmc": {"probe_top1": 0.6123, "probe_top1_std": 0.0456,
                                "retrieval_top1": None, "tv_lower": 0.25,
                                "tv_lower_std": None, "mmd": 0.012345, "mmd_std": 0.00067},
                        "random_init": {"probe_top1": 0.1, "retrieval_top1": None,
                                        "tv_lower": None, "mmd": None}},
            "teacher": {"probe_top1": 0.9, "export": "/data/cmcd_jax_teachers/abc/export",
                        "trained_by_this_run": False},
            "data": {"step1_source": 18000, "unpaired_source": 12000, "pairs": 6000,
                     "target_train": 6000, "labels_per_class": 10, "labelled_target": 100},
            **extra}


def table_row(method: str, cells: dict) -> str:
    """A method's expected row: its cells in `experiment.METRICS` order, '-' elsewhere."""
    return f"| {method} | " + " | ".join(cells.get(k, "-") for k in experiment.METRICS) + " |"


def test_results_table_renders_mean_std_dashes_and_raw_mmd():
    lines = experiment.results_table(results()).splitlines()
    assert lines[0] == "# cmcd_shapes: image -> sketch"
    assert "Seeds: 0, 1, 2" in lines
    assert {"probe_top1", "retrieval_top1", "tv_lower", "mmd"} <= set(experiment.METRICS)
    assert "| method | " + " | ".join(experiment.METRICS) + " |" in lines
    assert table_row("cmc", {"probe_top1": "61.2 ± 4.6", "tv_lower": "25.0",
                             "mmd": "0.0123 ± 0.0007"}) in lines
    assert table_row("random_init", {"probe_top1": "10.0"}) in lines
    assert table_row("teacher (probe on image)", {"probe_top1": "90.0"}) in lines
    assert lines.index(table_row("teacher (probe on image)", {"probe_top1": "90.0"})) < \
        lines.index(table_row("random_init", {"probe_top1": "10.0"}))
    assert ("Teacher: /data/cmcd_jax_teachers/abc/export (reused), probe_top1 on image 90.0. "
            "Data: step 1 on 18000 image records (12000 unpaired), step 2 on 6000 pairs, step 3 "
            "on 100 labelled sketch records (10 per class).") in lines
    assert experiment.LEGEND in lines
    assert not any("Gap sweep" in line or "p-value" in line for line in lines[:-1])


def test_results_table_lists_each_seeds_interval_and_p_value():
    res = results(methods=experiment.aggregate(seed_rows()))
    lines = experiment.results_table(res).splitlines()
    assert "| method | seed | tv_lower [95% CI] | mmd (p-value) |" in lines
    assert "| cmc | 0 | 20.0 [10.0, 30.0] | 0.0120 (p 0.010) |" in lines
    assert "| cmc | 2 | 25.0 [20.0, 30.0] | 0.0150 (p 0.030) |" in lines
    assert not any(line.startswith("| target_only | 0 |") for line in lines)


def test_rounded_drops_float32_noise_and_keeps_structure():
    value = {"a": float(np.float32(0.27)), "b": [float(np.float32(1e-5)), None, 3],
             "c": {"d": 123456.78912, "e": "text", "f": True}}
    assert experiment.rounded(value) == {"a": 0.27, "b": [1e-5, None, 3],
                                         "c": {"d": 123457.0, "e": "text", "f": True}}
    assert json.dumps(experiment.rounded(value)).count("0.27") == 1
    assert "0.27000001" in json.dumps(value)


def test_row_summary_names_each_known_metric_with_its_unit():
    assert (experiment.row_summary(row(probe_top1=0.46, mmd=0.0478))
            == "probe_top1 46.0%, mmd 0.0478")
    assert experiment.row_summary(row()) == "no metric"


def test_results_table_single_seed_and_sweep():
    sweep = [{"level": 0.5, "method": "cmc", "tv_lower": 0.3, "mmd": 0.02, "probe_top1": 0.5,
              "error": 0.5},
             {"level": 1.0, "method": "cmc", "tv_lower": None, "mmd": None,
              "probe_top1": None, "error": None}]
    res = results(sweep=sweep, spearman={"cmc": {"tv_lower": 1.0, "mmd": None}})
    del res["seeds"]
    res["seed"] = 4
    lines = experiment.results_table(res).splitlines()
    assert "Seeds: 4" in lines
    assert "| 0.5 | cmc | 30.0 | 0.0200 | 50.0 | 50.0 |" in lines
    assert "| 1.0 | cmc | - | - | - | - |" in lines
    assert "Spearman (error vs tv_lower), cmc: 1.0; (error vs mmd): None" in lines


def test_results_table_of_aggregated_rows():
    res = results(methods=experiment.aggregate(seed_rows()))
    lines = experiment.results_table(res).splitlines()
    probe = np.array([0.50, 0.47, 0.55])
    expected = f"{100 * probe.mean():.1f} ± {100 * probe.std(ddof=1):.1f}"
    assert table_row("target_only", {"probe_top1": expected}) in lines


def test_spearman_matches_scipy_on_known_points():
    x = [0.1, None, 0.4, 0.2, 0.9, 0.5, 0.3]
    y = [0.3, 0.1, None, 0.25, 0.8, 0.6, 0.2]
    kept = [(a, b) for a, b in zip(x, y) if a is not None and b is not None]
    expected = stats.spearmanr(*zip(*kept)).statistic
    assert experiment.spearman(x, y) == pytest.approx(expected, rel=1e-12)
    ties = ([1, 2, 2, 3], [4, 1, 1, 0])
    assert experiment.spearman(*ties) == pytest.approx(stats.spearmanr(*ties).statistic)
    assert experiment.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


@pytest.mark.parametrize("x, y", [
    ([], []),
    ([0.1, 0.2], [0.3, 0.1]),
    ([0.1, 0.2, None, 0.5], [0.3, 0.1, 0.2, None]),  # two known pairs
    ([None, None, None], [0.1, 0.2, 0.3]),
    ([0.1, 0.1, 0.1], [0.1, 0.2, 0.3]),  # constant: undefined
])
def test_spearman_is_none_when_undefined(x, y):
    assert experiment.spearman(x, y) is None


# --- claim_workdir -------------------------------------------------------------------------


def touch(workdir, *relatives: str) -> None:
    """Files (with their folders) under `workdir`, as a run would have written them."""
    for relative in relatives:
        (workdir / relative).parent.mkdir(parents=True, exist_ok=True)
        (workdir / relative).write_text(relative)


def test_claim_workdir_refuses_another_config_keeps_files_and_overwrites(tmp_path):
    workdir = tmp_path / "run"
    first = config()
    experiment.claim_workdir(first, workdir)
    written = json.loads((workdir / "config.json").read_text())
    assert written == json.loads(first.to_json())
    assert json.loads((workdir / experiment.MARKER).read_text())["project"] == "cmcd_jax"
    touch(workdir, "distill/cmc/weights", "results.json")

    experiment.claim_workdir(config(), workdir)  # the same config: accepted, nothing deleted
    assert (workdir / "distill" / "cmc" / "weights").read_text() == "distill/cmc/weights"

    second = config(seed=3, **{"distill.cmc.temperature": 0.5})
    before = tree_digest(workdir)
    with pytest.raises(ValueError, match="that saved results.json; use another --workdir for "
                                         "the new config, or --overwrite") as error:
        experiment.claim_workdir(second, workdir)
    assert str(workdir) in str(error.value)
    assert "config.json differs: distill.cmc.temperature 0.2 -> 0.5, seed 0 -> 3)" in str(
        error.value)
    assert tree_digest(workdir) == before

    experiment.claim_workdir(second, workdir, overwrite=True)
    assert sorted(p.name for p in workdir.iterdir()) == ["cmcd_jax_run.json", "config.json"]
    assert json.loads((workdir / "config.json").read_text()) == json.loads(second.to_json())
    experiment.claim_workdir(second, workdir)  # now the new config is the workdir's


def test_config_changes_names_the_keys_that_differ_and_counts_the_rest():
    old = {"a": 1, "b": {"c": "x", "d": [1, 2]}, "gone": 0}
    new = {"a": 1, "b": {"c": "y", "d": [1, 2], "e": True}}
    assert experiment.config_changes(old, new) == [
        'b.c "x" -> "y"', 'b.e "(absent)" -> true', 'gone 0 -> "(absent)"']
    assert experiment.config_changes(old, new, shown=1) == ['b.c "x" -> "y"', "and 2 more"]


def test_claim_workdir_creates_the_directory(tmp_path):
    workdir = tmp_path / "a" / "b"
    experiment.claim_workdir(config(), workdir, overwrite=True)
    assert (workdir / "config.json").exists() and (workdir / experiment.MARKER).exists()


@pytest.mark.parametrize("marked, message", [
    (True, "holds entries cmcd_jax did not write: IMPORTANT.txt, src; nothing deleted"),
    (False, "holds a config.json but no cmcd_jax_run.json, so it is not a cmcd_jax run"),
])
def test_overwrite_refuses_a_workdir_the_project_did_not_write(tmp_path, marked, message):
    workdir = tmp_path / "run"
    experiment.claim_workdir(config(), workdir)
    touch(workdir, "IMPORTANT.txt", "src/main.c", "pretrain/ckpt/4/state")
    if not marked:
        (workdir / experiment.MARKER).unlink()
    before = tree_digest(workdir)
    with pytest.raises(ValueError, match=re.escape(f"workdir {workdir} {message}")):
        experiment.claim_workdir(config(seed=3), workdir, overwrite=True)
    assert tree_digest(workdir) == before


def test_overwrite_deletes_the_runs_entries_but_a_teacher_the_new_config_reuses(tmp_path):
    workdir = tmp_path / "run"
    first = config(**{"pretrain.reuse_teacher": False, "num_seeds": 2, "gap_levels": "0,0.5"})
    experiment.claim_workdir(first, workdir)
    teacher = ("pretrain/export/meta.json", "pretrain/ckpt/10/state", "pretrain/metrics.jsonl")
    touch(workdir, *teacher, "gap_0/seed_0/distill/cmc/export/meta.json",
          "gap_0.5/seed_1/random_init/row.json", "downstream/target_only/row.json",
          "ssl_target/export/meta.json", "figures/comparison.png", "results.json",
          "results.md")
    kept = {k: v for k, v in tree_digest(workdir).items() if k.startswith("pretrain")}

    second = config(**{"pretrain.reuse_teacher": False, "distill.steps": 3})
    experiment.claim_workdir(second, workdir, overwrite=True)
    assert sorted(p.name for p in workdir.iterdir()) == ["cmcd_jax_run.json", "config.json",
                                                         "pretrain"]
    assert {k: v for k, v in tree_digest(workdir).items() if k.startswith("pretrain")} == kept

    export = workdir / "pretrain" / "export"  # a teacher the new config names by path
    third = config(**{"pretrain.steps": 7, "distill.teacher_export": str(export)})
    experiment.claim_workdir(third, workdir, overwrite=True)
    assert (export / "meta.json").is_file()

    experiment.claim_workdir(config(**{"pretrain.steps": 7}), workdir, overwrite=True)
    assert not (workdir / "pretrain").exists()  # another step-1 config: another teacher


def test_workdir_lock_refuses_a_second_holder_naming_its_pid(tmp_path):
    workdir = tmp_path / "run"
    with experiment.workdir_lock(workdir):
        before = tree_digest(workdir)
        with pytest.raises(experiment.WorkdirInUse,
                           match=f"workdir {workdir} is in use by process {os.getpid()} on "):
            with experiment.workdir_lock(workdir):
                pass
        assert tree_digest(workdir) == before
    assert not (workdir / experiment.LOCK_FILE).exists()
    with experiment.workdir_lock(workdir):  # released
        pass


def test_a_run_that_saved_nothing_is_replaced_without_overwrite(tmp_path):
    workdir = tmp_path / "run"
    experiment.claim_workdir(config(), workdir)
    touch(workdir, "pretrain/metrics.jsonl", "pretrain/ckpt/4.orbax-checkpoint-tmp-1/x",
          "distill/cmc/events.out.tfevents")
    second = config(seed=3)
    experiment.claim_workdir(second, workdir)
    assert sorted(p.name for p in workdir.iterdir()) == ["cmcd_jax_run.json", "config.json"]
    assert json.loads((workdir / "config.json").read_text()) == json.loads(second.to_json())

    touch(workdir, "distill/cmc/ckpt/4/state")
    before = tree_digest(workdir)
    with pytest.raises(ValueError, match=re.escape("that saved distill/cmc/ckpt/4;")):
        experiment.claim_workdir(config(), workdir)
    assert tree_digest(workdir) == before


# --- sources.corrupt / Corrupted / with_corrupted_target -----------------------------------


def strokes(seed: int = 0, size: int = 100) -> np.ndarray:
    """A sketch as cmcd_shapes draws it: 255 on strokes, 0 elsewhere (20% strokes: the
    background is the majority, as in any line drawing)."""
    return np.where(np.random.default_rng(seed).random((size, size)) < 0.2, 255,
                    0).astype(np.uint8)


def values(modality: str) -> np.ndarray:
    rng = np.random.default_rng(1)
    return {"sketch": strokes(),
            "depth": rng.uniform(1.0, 5.0, (32, 32)).astype(np.float32),
            "audio": (0.3 * np.sin(np.arange(4000) / 7.0)).astype(np.float32),
            "image": rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)}[modality]


@pytest.mark.parametrize("modality", ["sketch", "depth", "audio", "image"])
def test_corrupt_level_zero_is_identity(modality):
    value = values(modality)
    assert sources.corrupt(modality, value, 0.0, np.random.default_rng(0)) is value
    assert sources.corrupt(modality, value, -0.5, np.random.default_rng(0)) is value


@pytest.mark.parametrize("modality", ["sketch", "depth", "audio", "image"])
def test_corrupt_is_deterministic_for_the_rng_seed(modality):
    value = values(modality)
    original = value.copy()
    a = sources.corrupt(modality, value, 0.4, np.random.default_rng(5))
    b = sources.corrupt(modality, value, 0.4, np.random.default_rng(5))
    c = sources.corrupt(modality, value, 0.4, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == value.shape and a.dtype == value.dtype
    np.testing.assert_array_equal(value, original)  # the input is not modified


@pytest.mark.parametrize("level", [0.2, 0.5, 1.0])
def test_corrupt_sketch_erases_that_fraction_of_strokes(level):
    sketch = strokes(2)
    out = sources.corrupt("sketch", sketch, level, np.random.default_rng(3))
    on = sketch == 255
    assert set(np.unique(out)) <= {0, 255}
    np.testing.assert_array_equal(out[~on], 0)  # nothing drawn on the background
    erased = np.mean(out[on] == 0)
    assert erased == pytest.approx(level, abs=0.03)


def test_corrupt_dark_on_white_sketch_erases_strokes_not_background():
    sketch = (255 - strokes(4)).astype(np.uint8)  # strokes 0 on a white (255) background
    out = sources.corrupt("sketch", sketch, 0.5, np.random.default_rng(3))
    on = sketch == 0
    np.testing.assert_array_equal(out[~on], 255)  # background untouched
    assert np.mean(out[on] == 255) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("level", [0.1, 0.5, 1.0])
def test_corrupt_audio_noise_rms_is_three_level_times_signal_rms(level):
    clip = values("audio")
    noise = sources.corrupt("audio", clip, level, np.random.default_rng(4)).astype(np.float64) - clip
    rms = np.sqrt(np.mean(clip.astype(np.float64) ** 2))
    assert np.sqrt(np.mean(noise ** 2)) == pytest.approx(3 * level * rms, rel=0.04)
    assert abs(noise.mean()) < 0.05 * 3 * level * rms


def test_corrupt_depth_leaves_invalid_pixels_and_scales_noise_by_valid_std():
    depth = values("depth").copy()
    depth[:4] = 0.0
    depth[4, :5] = np.nan
    depth[5, :5] = np.inf
    invalid = ~np.isfinite(depth) | (depth == 0)
    out = sources.corrupt("depth", depth, 0.5, np.random.default_rng(6))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[invalid], depth[invalid])  # 0, nan and inf kept
    noise = out[~invalid].astype(np.float64) - depth[~invalid]
    assert np.all(noise != 0)
    assert noise.std() == pytest.approx(0.5 * depth[~invalid].std(), rel=0.06)


def test_corrupt_other_modalities_add_noise_of_level_times_std_clipped_to_uint8():
    image = values("image")
    out = sources.corrupt("image", image, 1.0, np.random.default_rng(7))
    assert out.dtype == np.uint8 and 0 <= out.min() and out.max() <= 255
    field = np.random.default_rng(8).normal(2.0, 3.0, (64, 64)).astype(np.float32)
    noise = sources.corrupt("thermal", field, 0.3, np.random.default_rng(9)) - field
    assert noise.std() == pytest.approx(0.3 * field.std(), rel=0.05)


def make_records(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [{"image": rng.integers(0, 256, (8, 8, 3)).astype(np.uint8), "sketch": strokes(i, 16),
             "label": i % 2} for i in range(n)]


def test_corrupted_gives_the_same_record_on_every_read():
    records = make_records(5, 0)
    corrupted = sources.Corrupted(records, "sketch", 0.5, seed=3)
    assert len(corrupted) == 5
    for i in range(5):
        first, again = corrupted[i], corrupted[i]
        np.testing.assert_array_equal(first["sketch"], again["sketch"])
        assert not np.array_equal(first["sketch"], records[i]["sketch"])
        assert first["image"] is records[i]["image"] and first["label"] == records[i]["label"]
    for i, record in enumerate(records):  # the source records are not modified
        np.testing.assert_array_equal(record["sketch"], strokes(i, 16))
    # per-record draws: identical records are corrupted differently; another seed differs
    same = sources.Corrupted([make_records(1, 0)[0]] * 2, "sketch", 0.5, seed=3)
    assert not np.array_equal(same[0]["sketch"], same[1]["sketch"])
    other = sources.Corrupted(records, "sketch", 0.5, seed=4)
    assert not np.array_equal(other[0]["sketch"], corrupted[0]["sketch"])
    # over a Records view
    view = sources.Corrupted(datasets.Records(records, [3, 1]), "sketch", 0.5, seed=3)
    assert len(view) == 2 and view[0]["label"] == records[3]["label"]


def test_with_corrupted_target_corrupts_only_the_target_in_pools_and_pairs():
    train, test = make_records(6, 1), make_records(3, 2)
    dataset = datasets.Dataset("toy", pools={"image": {"train": train, "test": test},
                                             "sketch": {"train": train, "test": test}},
                               pairs={"train": train, "test": test}, num_classes=2,
                               has_mask=False, audio_sample_rate=123.0)
    assert sources.with_corrupted_target(dataset, "sketch", 0.0, seed=1) is dataset
    out = sources.with_corrupted_target(dataset, "sketch", 0.5, seed=1)
    assert dataclasses.replace(out, pools=dataset.pools, pairs=dataset.pairs) == dataset
    assert out.pools["image"]["train"] is train and out.pools["image"]["test"] is test
    for records in (out.pools["sketch"], out.pairs):
        assert set(records) == {"train", "test"}
        for split, originals in (("train", train), ("test", test)):
            assert len(records[split]) == len(originals)
            for i, original in enumerate(originals):
                record = records[split][i]
                np.testing.assert_array_equal(record["image"], original["image"])
                assert record["label"] == original["label"]
                sketch = record["sketch"]
                assert not np.array_equal(sketch, original["sketch"])
                assert np.all(sketch <= original["sketch"])  # only strokes erased
                np.testing.assert_array_equal(sketch, records[split][i]["sketch"])
    # the source modality in the pairs stays clean: the teacher sees the same inputs
    assert all(np.array_equal(out.pairs["train"][i]["image"], train[i]["image"])
               for i in range(len(train)))


def test_with_corrupted_target_under_label_pairing():
    train, test = make_records(4, 3), make_records(2, 4)
    dataset = datasets.Dataset("toy", pools={"image": {"train": train, "test": test},
                                             "sketch": {"train": train, "test": test}},
                               pairs={}, pairing="label", num_classes=2)
    out = sources.with_corrupted_target(dataset, "sketch", 1.0, seed=0)
    assert out.pairs == {} and out.pairing == "label"
    np.testing.assert_array_equal(out.pools["sketch"]["train"][0]["sketch"], 0)  # all erased
    assert out.pools["image"]["train"] is train
    np.testing.assert_array_equal(out.pools["sketch"]["test"][1]["image"], test[1]["image"])


def test_progress_table_shows_finished_rows_and_what_is_left(tmp_path):
    c = config(methods="cmc,target_only", num_seeds=2)
    experiment.save_json(experiment.method_dir(tmp_path / "seed_0", "cmc") / "row.json",
                         row(probe_top1=0.46))
    experiment.save_json(experiment.method_dir(tmp_path / "seed_1", "target_only") / "row.json",
                         row(probe_top1=0.397))
    text = experiment.progress_table(c, tmp_path, results())
    assert ("**Incomplete**: the rows finished so far; still to run: target_only (seed 0), "
            "cmc (seed 1).") in text.splitlines()
    assert table_row("cmc (seed 0)", {"probe_top1": "46.0"}) in text.splitlines()
    assert table_row("target_only (seed 1)", {"probe_top1": "39.7"}) in text.splitlines()


def test_progress_table_of_a_sweep_names_the_level(tmp_path):
    c = config(methods="cmc", gap_levels="0,0.5")
    experiment.save_json(tmp_path / "gap_0.5" / "distill" / "cmc" / "row.json",
                         row(probe_top1=0.3))
    lines = experiment.progress_table(c, tmp_path, results()).splitlines()
    assert table_row("cmc (seed 0, gap 0.5)", {"probe_top1": "30.0"}) in lines
    assert "still to run: cmc (seed 0, gap 0)." in " ".join(lines)
