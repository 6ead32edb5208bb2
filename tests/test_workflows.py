"""End to end through the command line: a user's paired folder, and label pairing with seeds
and the gap sweep."""

import json

from conftest import run_main
from folder_fixture import make_paired_folder

FOLDER_CONFIG = "configs/paired_folder.py:tiny"
SHORT = ("--config.pretrain.steps=6", "--config.distill.steps=6",
         "--config.target_only.steps=6", "--config.downstream.probe_steps=20",
         "--config.log_every=3")


def test_paired_folder_of_png_npy_wav_runs_end_to_end(tmp_path, data_dir):
    folder = make_paired_folder(tmp_path / "folder", num_train=40, num_test=24, size=32)
    workdir = tmp_path / "run"
    proc = run_main(workdir, data_dir, f"--config.data.dir={folder}", "--config.data.target=audio",
                    "--config.methods=cmc,target_only", "--config.target_only.batch_size=16",
                    *SHORT, config=FOLDER_CONFIG)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert (results["dataset"], results["source"], results["target"]) == (
        "paired_folder", "image", "audio")
    cmc = results["methods"]["cmc"]
    assert 0 <= cmc["probe_top1"] <= 1 and 0 <= cmc["retrieval_top1"] <= 1
    assert 0 <= cmc["tv_lower"] <= 1 and cmc["mmd"] is not None
    assert results["methods"]["target_only"]["retrieval_top1"] is None
    for figure in ("loss_curves", "samples", "comparison"):
        assert (workdir / "figures" / f"{figure}.png").stat().st_size > 1000
    assert list((workdir / "distill" / "cmc").glob("events.out.tfevents.*"))

    (folder / "audio" / sorted(p.name for p in (folder / "audio").iterdir())[0]).unlink()
    proc = run_main(tmp_path / "broken", data_dir, f"--config.data.dir={folder}",
                    "--config.data.target=audio", *SHORT, config=FOLDER_CONFIG)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "manifest.csv row" in last and "audio/" in last and "cmcd_jax: error" in last


def test_label_pairing_with_two_seeds_and_a_gap_sweep(tmp_path, data_dir):
    workdir = tmp_path / "run"
    proc = run_main(workdir, data_dir, "--config.data.pairing=label", "--config.num_seeds=2",
                    "--config.gap_levels=0,1", "--config.methods=cmc", "--config.seed=3",
                    "--config.data.target=depth", *SHORT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["seeds"] == [3, 4]
    for level in ("0", "1"):
        for seed in (3, 4):
            assert (workdir / f"gap_{level}" / f"seed_{seed}" / "distill" / "cmc" /
                    "export").is_dir()
    assert not (workdir / "distill").exists()  # one teacher, shared, in workdir/pretrain
    cmc = results["methods"]["cmc"]
    assert cmc["retrieval_top1"] is None  # label pairs: no instance to retrieve
    assert len(cmc["per_seed"]) == 2 and cmc["probe_top1_std"] is not None
    assert cmc["seg_miou"] is not None and 0 < cmc["seg_miou"] <= 1
    assert [(p["level"], p["method"]) for p in results["sweep"]] == [(0.0, "cmc"), (1.0, "cmc")]
    assert results["spearman"]["cmc"] == {"tv_lower": None, "mmd": None}  # 2 points
    assert (workdir / "figures" / "error_vs_tv_lower.png").exists()
    assert "Gap sweep" in (workdir / "results.md").read_text()
