"""cmcd_jax.analysis.plots: every figure is a non-blank PNG of the documented size."""

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from cmcd_jax.analysis import plots
from cmcd_jax.data import render

pytestmark = pytest.mark.filterwarnings("error")  # No silent matplotlib/scipy warnings.

SINGLE = tuple(int(round(s * plots.DPI)) for s in plots.FIGSIZE)


def grid_size(columns: int, rows: int) -> tuple[int, int]:
    return (int(round(columns * plots.CELL * plots.DPI)),
            int(round(rows * plots.CELL * plots.DPI)))


def check_png(path, size: tuple[int, int]) -> np.ndarray:
    """The PNG at `path` as an array, checked to have `size` (width, height) and content."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == size
        pixels = np.asarray(image.convert("RGB"), np.float64)
    assert pixels.std() > 10, "blank figure"
    return pixels


def fake_records(n: int, r: int = 16) -> list[dict]:
    rng = np.random.default_rng(0)
    t = np.arange(render.AUDIO_LENGTH) / render.AUDIO_SAMPLE_RATE
    tone = np.sin(2 * np.pi * 300 * t) * np.exp(-t / 0.1)  # A 300 Hz impact.
    return [{"image": rng.integers(0, 256, (r, r, 3), dtype=np.uint8),
             "sketch": (rng.random((r, r)) > 0.8).astype(np.uint8) * 255,
             "depth": rng.uniform(render.DEPTH_NEAR, render.DEPTH_FAR, (r, r)).astype(np.float32),
             "audio": (tone + 0.01 * rng.normal(size=t.shape)).astype(np.float32),
             "mask": rng.integers(0, render.NUM_CLASSES + 1, (r, r)).astype(np.uint8),
             "label": i % render.NUM_CLASSES} for i in range(n)]


def write_metrics(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_loss_curves_reads_every_stage(tmp_path):
    write_metrics(tmp_path / "pretrain" / "metrics.jsonl",
                  [{"step": s, "loss": 5.0 / s, "examples_per_sec": 100.0}
                   for s in range(5, 55, 5)])
    write_metrics(tmp_path / "distill" / "cmc" / "metrics.jsonl",
                  [{"step": 10, "loss": 1.5, "examples_per_sec": 100.0}])  # A single step.
    path = plots.loss_curves(tmp_path, tmp_path / "figs" / "loss.png")
    assert path == tmp_path / "figs" / "loss.png"
    check_png(path, panels_size(2, 1))


def panels_size(columns: int, rows: int) -> tuple[int, int]:
    return (int(round(columns * plots.PANEL[0] * plots.DPI)),
            int(round(rows * plots.PANEL[1] * plots.DPI)))


def test_loss_curves_one_panel_per_stage_one_line_per_seed(tmp_path):
    for run in ("seed_0", "seed_1", "gap_0.5/seed_0"):
        for stage in ("pretrain", "distill/cmc", "distill/l2", "ssl_target"):
            write_metrics(tmp_path / run / stage / "metrics.jsonl",
                          [{"step": s, "loss": 3.0 / s} for s in range(1, 6)])
    check_png(plots.loss_curves(tmp_path, tmp_path / "loss.png"), panels_size(3, 2))
    assert plots.stage_and_run(pathlib.Path("gap_0.5/seed_1/distill/cmc")) == (
        "distill/cmc", "gap_0.5/seed_1")
    assert plots.stage_and_run(pathlib.Path("downstream/target_only")) == (
        "downstream/target_only", "")


def test_loss_curves_negative_losses_and_no_metrics(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plots.loss_curves(tmp_path, tmp_path / "loss.png")
    write_metrics(tmp_path / "distill" / "crd" / "metrics.jsonl",
                  [{"step": s, "loss": -float(s)} for s in range(1, 4)])
    check_png(plots.loss_curves(tmp_path, tmp_path / "loss.png"), panels_size(1, 1))


def test_loss_curves_draws_a_shared_teacher_beside_the_workdir(tmp_path):
    teacher = tmp_path / "teachers" / "abc" / "metrics.jsonl"
    write_metrics(teacher, [{"step": s, "loss": 5.0 - s} for s in range(1, 4)])
    workdir = tmp_path / "run"
    workdir.mkdir()
    others = {"pretrain (shared teacher)": teacher}
    check_png(plots.loss_curves(workdir, workdir / "loss.png", others), panels_size(1, 1))
    write_metrics(workdir / "distill" / "cmc" / "metrics.jsonl", [{"step": 1, "loss": 2.0}])
    check_png(plots.loss_curves(workdir, workdir / "loss.png", others), panels_size(2, 1))


def test_read_losses_keeps_last_value_of_a_resumed_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_metrics(path, [{"step": 5, "loss": 3.0}, {"step": 10, "loss": 2.0},
                         {"step": 5, "loss": 2.5}, {"step": 10, "loss": 1.0},
                         {"step": 15, "accuracy": 0.5}])
    steps, losses = plots.read_losses(path)
    np.testing.assert_array_equal(steps, [5, 10])
    np.testing.assert_array_equal(losses, [2.5, 1.0])


def test_sample_grid_one_row_per_modality(tmp_path):
    modalities = ("image", "depth", "sketch", "audio", "mask")
    path = plots.sample_grid(fake_records(6), modalities, tmp_path / "samples.png", n=4,
                             class_names=render.CLASS_NAMES)
    check_png(path, grid_size(4, len(modalities)))


def test_sample_grid_fewer_records_than_columns(tmp_path):
    records = [{k: v for k, v in r.items() if k != "label"} for r in fake_records(1)]
    path = plots.sample_grid(records, ("image", "audio"), tmp_path / "one.png")
    check_png(path, grid_size(1, 2))


def test_audio_image_is_a_log_mel_spectrogram():
    wave = fake_records(1)[0]["audio"]
    spec = plots.audio_image(wave)
    assert spec.shape == (32, 1 + (render.AUDIO_LENGTH - 256) // 64)
    assert np.isfinite(spec).all()
    # A 300 Hz tone: the strongest band is a low one.
    assert spec.mean(axis=1).argmax() < 16


@pytest.mark.parametrize("inputs", [
    np.random.default_rng(1).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8),
    np.random.default_rng(1).normal(size=(4, 16, 16, 3)).astype(np.float32),  # normalised
    np.random.default_rng(1).normal(size=(4, 16, 16, 1)).astype(np.float32),  # one channel
])
def test_segmentation_grid(tmp_path, inputs):
    rng = np.random.default_rng(2)
    true = rng.integers(0, 11, (4, 16, 16))
    pred = rng.integers(0, 11, (4, 16, 16))
    path = plots.segmentation_grid(inputs, true, pred, tmp_path / "seg.png")
    check_png(path, grid_size(4, 3))


def test_pca_2d_matches_covariance_eigenvectors():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1]) + 7.0
    x = x @ np.linalg.qr(rng.normal(size=(6, 6)))[0]  # Random rotation.
    centred = x - x.mean(axis=0)
    eigvals, eigvecs = np.linalg.eigh(np.cov(centred, rowvar=False))
    expected = centred @ eigvecs[:, ::-1][:, :2]
    got = plots.pca_2d(x)
    assert got.shape == (200, 2)
    for k in range(2):
        sign = np.sign(got[:, k] @ expected[:, k])
        np.testing.assert_allclose(got[:, k], sign * expected[:, k], atol=1e-8)


def test_pca_2d_of_one_feature_pads_a_zero_axis():
    got = plots.pca_2d(np.arange(5.0)[:, None])
    np.testing.assert_allclose(np.abs(got[:, 0]), np.abs(np.arange(5.0) - 2))
    np.testing.assert_array_equal(got[:, 1], 0)


def test_embedding_projection(tmp_path):
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(10), 12)
    centres = rng.normal(size=(10, 32)) * 3
    source = centres[labels] + rng.normal(size=(120, 32))
    target = centres[labels] + 2 * rng.normal(size=(120, 32)) + 1.0
    path = plots.embedding_projection(source, target, labels, tmp_path / "emb.png",
                                      names=("image", "sketch"))
    check_png(path, SINGLE)


@pytest.mark.parametrize("results", [
    {"cmc": {"probe_top1": 0.61, "probe_top1_std": 0.02},
     "cmd": {"probe_top1": 0.55, "probe_top1_std": None},
     "target_only": {"probe_top1": 0.40},
     "random_init": {"probe_top1": 0.12, "probe_top1_std": 0.0}},
    {"cmc": {"probe_top1": 0.61, "retrieval_top1": 0.3}},
    {"cmc": {"probe_top1": None}, "crd": {"probe_top1": 0.5, "probe_top1_std": 0.1}},
])
def test_comparison_bars(tmp_path, results):
    check_png(plots.comparison_bars(results, tmp_path / "bars.png"), SINGLE)
    check_png(plots.comparison_bars(results, tmp_path / "ref.png", reference=0.8), SINGLE)


def test_error_vs_distance(tmp_path):
    points = [{"distance": d, "error": e, "label": f"image->{m}"}
              for d, e, m in [(0.2, 0.3, "depth"), (0.5, 0.45, "sketch"), (0.9, 0.7, "audio")]]
    check_png(plots.error_vs_distance(points, tmp_path / "dist.png"), SINGLE)
    check_png(plots.error_vs_distance(points[:1], tmp_path / "one.png"), SINGLE)


def test_spearman():
    assert plots.spearman([1, 2, 3, 4], [10, 20, 25, 100]) == pytest.approx(1.0)
    assert plots.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert plots.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert np.isnan(plots.spearman([1.0], [2.0]))
    assert np.isnan(plots.spearman([1, 2, 3], [5, 5, 5]))
