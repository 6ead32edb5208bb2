"""The TFDS build and the grain pipelines: fields, determinism, paired augmentation."""

import numpy as np
import pytest

from cmcd_jax.data import modalities, pipeline, shapes


def test_tiny_build_has_paired_fields(tiny_sources):
    assert len(tiny_sources["train"]) == 320 and len(tiny_sources["test"]) == 160
    record = tiny_sources["train"][0]
    assert record["image"].shape == (32, 32, 3) and record["image"].dtype == np.uint8
    assert record["depth"].shape == (32, 32) and record["depth"].dtype == np.float32
    assert record["sketch"].shape == (32, 32) and record["mask"].shape == (32, 32)
    assert record["audio"].shape == (4000,)
    assert set(np.unique(record["mask"])) <= {0, int(record["label"]) + 1}


def test_build_is_deterministic(tmp_path, tiny_sources):
    again = shapes.load_shapes("tiny", str(tmp_path))
    for i in (0, 17, 159):
        a, b = tiny_sources["test"][i], again["test"][i]
        for key in ("image", "depth", "audio", "label"):
            np.testing.assert_array_equal(a[key], b[key])


def test_paired_augmentation_keeps_modalities_aligned():
    rng = np.random.default_rng(0)
    image = rng.random((32, 32, 3)).astype(np.float32)
    inputs = {"image": image, "sketch": image[..., :1].copy()}
    for seed in range(20):
        out = pipeline.augment(np.random.default_rng(seed), inputs, 0.3, 0.0)
        np.testing.assert_array_equal(out["image"][..., :1], out["sketch"])
        assert out["image"].shape == (32, 32, 3)


def test_simclr_views_of_depth_get_contrast_and_offset_jitter():
    depth = np.random.default_rng(0).normal(size=(32, 32, 1)).astype(np.float32)
    for seed in range(10):
        plain = pipeline.augment(np.random.default_rng(seed), {"depth": depth}, 0.3, 0.0)
        jittered = pipeline.augment(np.random.default_rng(seed), {"depth": depth}, 0.3, 0.4)
        (contrast, offset), *_ = np.linalg.lstsq(
            np.stack([plain["depth"].ravel(), np.ones(32 * 32)], 1), jittered["depth"].ravel())
        np.testing.assert_allclose(jittered["depth"], contrast * plain["depth"] + offset,
                                   rtol=1e-5, atol=1e-5)
        assert 0.6 <= contrast <= 1.4 and abs(offset) <= 0.4 and (contrast, offset) != (1, 0)


def test_unregistered_maps_are_spatial_and_a_registered_modality_has_its_own_entry(
        monkeypatch):
    monkeypatch.setattr(modalities, "TABLE", dict(modalities.TABLE))
    field = np.arange(32 * 32, dtype=np.float32).reshape(32, 32, 1)
    wave = np.arange(100, dtype=np.float32)
    inputs = {"sketch": field, "lidar": field.copy(), "ecg": wave}
    for seed in range(5):
        out = pipeline.augment(np.random.default_rng(seed), inputs, 0.3, 0.0)
        np.testing.assert_array_equal(out["lidar"], out["sketch"])  # Cropped with its pair.
        np.testing.assert_array_equal(out["ecg"], wave)  # 1-D: not a map, left as it is.
    assert not np.array_equal(out["lidar"], field)
    modalities.register(modalities.Modality("lidar", spatial=False))
    out = pipeline.augment(np.random.default_rng(0), inputs, 0.3, 0.0)
    np.testing.assert_array_equal(out["lidar"], field)
    with pytest.raises(ValueError, match="modality 'radar': encoder='rnn'; valid: image, audio"):
        modalities.register(modalities.Modality("radar", encoder="rnn"))


def test_crop_indices_cover_a_square_window_and_flip():
    rows, cols = pipeline.crop_indices(np.random.default_rng(3), 32, 0.3)
    assert len(rows) == len(cols) == 32
    assert np.all(np.diff(rows) >= 0) and rows.max() < 32
    assert np.all(np.diff(cols) >= 0) or np.all(np.diff(cols) <= 0)
    assert rows.max() - rows.min() == abs(int(cols.max()) - int(cols.min()))


def test_to_input_shapes_depth_validity_and_other_modalities():
    assert pipeline.to_input("sketch", np.zeros((8, 8), np.uint8)).shape == (8, 8, 1)
    raw = np.arange(1, 65, dtype=np.float32).reshape(8, 8)
    raw[0, :3], raw[1, 0] = 0.0, np.nan  # invalid depth pixels
    depth = pipeline.to_input("depth", raw)[..., 0]
    valid = np.isfinite(raw) & (raw != 0)
    expected = (raw[valid] - raw[valid].mean()) / raw[valid].std()
    np.testing.assert_allclose(depth[valid], expected, atol=1e-5)
    assert np.all(depth[~valid] == 0)
    lidar = pipeline.to_input("lidar", np.full((4, 4), 255, np.uint8))
    assert lidar.shape == (4, 4, 1) and np.all(lidar == 1.0)
    thermal = np.random.default_rng(0).normal(size=(4, 4, 2)).astype(np.float32)
    np.testing.assert_array_equal(pipeline.to_input("thermal", thermal), thermal)


def test_label_paired_batches_pair_same_class_and_redraw_each_epoch():
    def record(label, value):
        return {"label": np.int64(label), "image": np.full((8, 8, 3), value, np.uint8),
                "audio": np.full((16,), label, np.float32)}
    targets = [record(i % 2, 0) for i in range(4)]
    partners = [record(i % 2, 10 * i) for i in range(10)]
    it = pipeline.label_paired_batches(targets, partners, "image", "audio", 4, seed=0,
                                       min_scale=1.0)
    drawn = []
    for _ in range(6):  # 6 epochs of 4 targets
        batch = next(it)
        value = np.round(((batch["image"][:, 0, 0, 0] * 0.25) + 0.5) * 255).astype(int)
        assert np.all(value // 10 % 2 == np.abs(np.round(batch["audio"][:, 0] / 1.0)) % 2)
        drawn.append(sorted(value))
    assert len({tuple(d) for d in drawn}) > 1  # partners are drawn anew
    with pytest.raises(ValueError, match="class 1 has target records but no 'image'"):
        next(pipeline.label_paired_batches(targets, partners[::2], "image", "audio", 4, 0))


def test_few_shot_indices_pick_per_class():
    labels = np.repeat(np.arange(5), [30, 30, 30, 30, 3])
    picked = pipeline.few_shot_indices(labels, 10, seed=0)
    counts = np.bincount(labels[picked])
    np.testing.assert_array_equal(counts, [10, 10, 10, 10, 3])
    assert len(np.unique(picked)) == len(picked)


def test_processes_read_disjoint_parts_of_the_same_global_batches(tiny_sources):
    def batches(shard, size):
        """12 batches (over an epoch: 160 records); no crop or jitter, so rows compare."""
        it = pipeline.paired_batches(tiny_sources["test"], ("image",), size, 0,
                                     min_scale=1.0, jitter=0.0, shard=shard)
        return [next(it)["image"] for _ in range(12)]

    alone = batches((0, 1), 16)
    first, second = batches((0, 2), 8), batches((1, 2), 8)
    for whole, a, b in zip(alone, first, second):
        np.testing.assert_array_equal(np.concatenate([a, b]), whole)
        sums_a, sums_b = ({round(float(x.sum()), 2) for x in part} for part in (a, b))
        assert len(sums_a) == len(sums_b) == 8 and not sums_a & sums_b


def test_two_view_batches_give_different_views(tiny_sources):
    batch = next(pipeline.two_view_batches(tiny_sources["train"], "image", 8, 0))
    assert batch["view1"].shape == batch["view2"].shape == (8, 32, 32, 3)
    assert not np.allclose(batch["view1"], batch["view2"])


def test_batch_larger_than_data_is_an_error(tiny_sources):
    with pytest.raises(ValueError, match="batch size 1000 exceeds the 160 records"):
        pipeline.paired_batches(tiny_sources["test"], ("sketch",), 1000, 0)


def _offset_in(window: np.ndarray, clip: np.ndarray) -> int:
    """Where `window` starts in `clip` (it must be a contiguous part of it)."""
    starts = [s for s in range(len(clip) - len(window) + 1)
              if np.array_equal(clip[s:s + len(window)], window)]
    assert len(starts) == 1
    return starts[0]


def test_clip_window_centre_margin_and_random_crops():
    wave = np.arange(1, 101, dtype=np.float32)  # 100 samples, none zero.
    np.testing.assert_array_equal(modalities.clip_window(wave, 40), wave[30:70])
    np.testing.assert_array_equal(modalities.clip_window(wave, 41), wave[29:70])
    stored = modalities.clip_window(wave, 40, margin=10)
    np.testing.assert_array_equal(stored, wave[20:80])
    np.testing.assert_array_equal(modalities.clip_window(stored, 40), wave[30:70])
    short = modalities.clip_window(wave[:15], 40, margin=10)  # 12 zeros, clip, 13 zeros + 10.
    assert short.shape == (60,) and np.flatnonzero(short)[[0, -1]].tolist() == [22, 36]
    rng = np.random.default_rng(0)
    offsets = {_offset_in(modalities.clip_window(stored, 40, rng), stored) for _ in range(200)}
    assert offsets == set(range(21))  # Every window inside the stored clip, all drawn.
    placed = [np.flatnonzero(modalities.clip_window(wave[:15], 40, rng))[0] for _ in range(200)]
    assert set(placed) == set(range(26))  # A short clip whole, anywhere in the window.


def test_clip_length_cuts_random_windows_in_training_and_the_centre_for_evaluation(
        monkeypatch):
    rng = np.random.default_rng(1)
    clips = rng.uniform(-1, 1, (8, 60)).astype(np.float32)
    records = [{"audio": c, "clip": c, "image": np.zeros((8, 8, 3), np.uint8), "index": i}
               for i, c in enumerate(clips)]
    evaluation = pipeline.load_arrays(records, ("audio",), clip_length=40)["audio"]
    np.testing.assert_array_equal(evaluation, clips[:, 10:50])
    assert pipeline.first_input(records, "audio", 40).shape == (40,)
    assert pipeline.load_arrays(records, ("audio",))["audio"].shape == (8, 60)  # 0: as stored.
    # A clip modality without audio's gain and shift shows the crops themselves.
    monkeypatch.setitem(modalities.TABLE, "clip", modalities.Modality(
        "clip", False, modalities.audio_input, window=modalities.clip_window))
    batches = pipeline.paired_batches(records, ("image", "clip"), 8, seed=0, extra=("index",),
                                      clip_length=40)
    offsets = set()
    for batch in (next(batches) for _ in range(5)):
        assert batch["clip"].shape == (8, 40) and batch["image"].shape == (8, 8, 8, 3)
        offsets |= {_offset_in(w, clips[i]) for w, i in zip(batch["clip"], batch["index"])}
    assert len(offsets) > 5 and offsets <= set(range(21))
    views = next(pipeline.two_view_batches(records, "clip", 8, seed=0, clip_length=40))
    assert views["view1"].shape == views["view2"].shape == (8, 40)
    assert not np.array_equal(views["view1"], views["view2"])  # Each view its own crop.
