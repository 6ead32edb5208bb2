"""Paired folders: files -> TFDS records, pools and pairs, the build cache, bad inputs."""

import csv
import os
import pathlib
import re
import wave

import numpy as np
import pytest
from PIL import Image
from scipy import signal

from cmcd_jax import defaults, experiment
from cmcd_jax.data import paired_folder, pipeline, readers
from folder_fixture import CLASS_NAMES, make_paired_folder, write_wav


def manifest_rows(folder: pathlib.Path) -> list[dict]:
    """The manifest's rows, each with its 1-based `line`."""
    with open(folder / "manifest.csv", newline="") as f:
        return [dict(row, line=i + 2) for i, row in enumerate(csv.DictReader(f))]


def rewrite_manifest(folder: pathlib.Path, rows: list[dict]) -> None:
    header = [k for k in rows[0] if k != "line"]
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def expected_audio(file: pathlib.Path, rate: int) -> np.ndarray:
    """16-bit PCM -> mono float, resampled with scipy directly."""
    with wave.open(str(file)) as f:
        frames = np.frombuffer(f.readframes(f.getnframes()), "<i2")
        channels, file_rate = f.getnchannels(), f.getframerate()
    mono = (frames.reshape(-1, channels) / 32768.0).mean(axis=1)
    if file_rate != rate:
        mono = signal.resample_poly(mono, rate, file_rate)
    return np.clip(mono, -1, 1).astype(np.float32)


def expected_image(file: pathlib.Path) -> np.ndarray:
    pixels = np.asarray(Image.open(file))
    return np.stack([pixels] * 3, axis=-1) if pixels.ndim == 2 else pixels


def expected_map(file: pathlib.Path) -> np.ndarray:
    return np.load(file) if file.suffix == ".npy" else np.asarray(Image.open(file))


def snapshot(root: pathlib.Path) -> dict:
    return {p.relative_to(root): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> pathlib.Path:
    return make_paired_folder(tmp_path_factory.mktemp("folders") / "my_folder")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def dataset(folder, store):
    return paired_folder.load_paired_folder(folder, data_dir=str(store), source="image",
                                            target="audio")


def split_rows(folder: pathlib.Path, split: str, *columns: str) -> list[dict]:
    return [r for r in manifest_rows(folder)
            if r["split"] == split and all(r[c] for c in columns)]


@pytest.mark.parametrize("split", ["train", "test"])
def test_image_pool_records_hold_the_files(folder, dataset, split):
    records, rows = dataset.pools["image"][split], split_rows(folder, split, "image")
    assert len(records) == len(rows)
    modes, dtypes = set(), set()
    for i, row in enumerate(rows):
        record = records[i]
        modes.add(Image.open(folder / row["image"]).mode)
        assert record["image"].dtype == np.uint8 and record["image"].shape == (16, 16, 3)
        np.testing.assert_array_equal(record["image"], expected_image(folder / row["image"]))
        np.testing.assert_array_equal(record["mask"], expected_map(folder / row["mask"]))
        assert record["mask"].dtype == np.uint8 and record["has_mask"]
        assert record["label"] == sorted(CLASS_NAMES).index(row["label"])
        assert record["has_depth"] == bool(row["depth"])
        if row["depth"]:
            depth = expected_map(folder / row["depth"])
            np.testing.assert_array_equal(record["depth"], depth.astype(np.float32))
            dtypes.add(depth.dtype.name)
            np.testing.assert_array_equal(record["sketch"],
                                          np.asarray(Image.open(folder / row["sketch"])))
        else:
            assert not record["depth"].any() and not record["has_sketch"]
    assert modes == {"RGB", "L"} and dtypes == {"float32", "float64"}


@pytest.mark.parametrize("split", ["train", "test"])
def test_audio_pool_is_resampled_and_padded(folder, dataset, split):
    rows = split_rows(folder, split, "audio")
    clips = {r["audio"]: expected_audio(folder / r["audio"], 16000)
             for r in manifest_rows(folder) if r["audio"]}
    longest = max(len(c) for c in clips.values())
    rates = set()
    for i, row in enumerate(rows):
        record = dataset.pools["audio"][split][i]
        with wave.open(str(folder / row["audio"])) as f:
            rates.add((f.getframerate(), f.getnchannels()))
        clip = clips[row["audio"]]
        assert record["audio"].dtype == np.float32 and record["audio"].shape == (longest,)
        np.testing.assert_allclose(record["audio"][:len(clip)], clip, atol=1e-6)
        assert not record["audio"][len(clip):].any()
        assert record["has_image"] == bool(row["image"])
        assert record["has_mask"] == bool(row["mask"])
    assert rates == {(16000, 1), (8000, 2)}


def test_pools_pairs_and_dataset_fields(folder, store, dataset):
    assert dataset.name == "paired_folder" and dataset.pairing == "instance"
    assert dataset.modalities == ("image", "audio")
    assert dataset.num_classes == 3 and dataset.has_mask
    assert dataset.audio_sample_rate == 16000
    for split, paired in (("train", 6), ("test", 4)):
        assert len(dataset.pools["image"][split]) == paired + 1  # one image-only row
        assert len(dataset.pools["audio"][split]) == paired + 1  # one audio-only row
        pairs = dataset.pairs[split]
        assert len(pairs) == paired
        assert all(pairs[i]["has_image"] and pairs[i]["has_audio"] for i in range(paired))
    manifest = paired_folder.read_manifest(folder)
    info = paired_folder.folder_builder(manifest, paired_folder.Conversion(), str(store)).info
    assert info.features["label"].names == sorted(CLASS_NAMES)


def test_integer_labels_other_modality_and_label_pairing(tmp_path):
    folder = make_paired_folder(tmp_path / "f", num_train=4, num_test=3, unpaired_rows=0,
                                modalities=("thermal", "sketch"), with_mask=False,
                                label_style="int")
    ds = paired_folder.load_paired_folder(folder, data_dir=str(tmp_path / "tfds"),
                                          source="thermal", target="sketch", pairing="label",
                                          audio_sample_rate=8000)
    assert ds.pairs == {} and ds.pairing == "label"
    assert (ds.num_classes, ds.has_mask, ds.audio_sample_rate) == (3, False, 8000)
    row = split_rows(folder, "test", "thermal")[1]
    record = ds.pools["thermal"]["test"][1]
    assert "mask" not in record and record["label"] == int(row["label"])
    assert record["thermal"].dtype == np.float32 and record["thermal"].shape == (16, 16, 2)
    np.testing.assert_array_equal(record["thermal"], np.load(folder / row["thermal"]))


def test_a_custom_map_modality_is_cropped_and_flipped_with_its_pair(tmp_path):
    folder = make_paired_folder(tmp_path / "f", num_train=6, num_test=2, unpaired_rows=0,
                                modalities=("image", "thermal"), with_mask=False)
    rng = np.random.default_rng(0)
    with open(folder / "manifest.csv") as f:
        for row in csv.DictReader(f):  # A thermal map: the red channel of its image.
            image = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
            Image.fromarray(image, "RGB").save(folder / row["image"])
            np.save(folder / row["thermal"], image[..., 0].astype(np.float32))
    ds = paired_folder.load_paired_folder(folder, data_dir=str(tmp_path / "tfds"),
                                          source="image", target="thermal")
    plain = pipeline.load_arrays(ds.pairs["train"], ("thermal",))["thermal"]
    batch = next(pipeline.paired_batches(ds.pairs["train"], ("image", "thermal"), 6, seed=1,
                                         min_scale=0.3, jitter=0.0))
    red = (batch["image"][..., 0] * 0.25 + 0.5) * 255  # The image input, back to its values.
    np.testing.assert_allclose(batch["thermal"][..., 0], red, atol=1e-3)  # Aligned.
    assert batch["thermal"].shape == (6, 16, 16, 1)
    assert not any(np.array_equal(t, p) for t in batch["thermal"] for p in plain)  # Cropped.


def test_build_is_reused_and_redone_when_the_folder_changes(tmp_path, monkeypatch):
    folder = make_paired_folder(tmp_path / "f", num_train=3, num_test=2, unpaired_rows=0)
    store = tmp_path / "tfds"

    def load(rate=16000):
        return paired_folder.load_paired_folder(folder, data_dir=str(store), source="image",
                                                target="depth", audio_sample_rate=rate)

    def builds():
        return sorted(p.name for p in (store / "paired_folder").iterdir())

    assert len(load().pairs["train"]) == 3
    first, before = builds(), snapshot(store)
    def rebuilt(*args):
        raise AssertionError("rebuilt")

    with monkeypatch.context() as m:
        m.setattr(paired_folder, "infer_specs", rebuilt)
        m.setattr(paired_folder, "make_example", rebuilt)
        assert len(load().pairs["train"]) == 3
    assert builds() == first and snapshot(store) == before

    rows = manifest_rows(folder)
    rewrite_manifest(folder, rows[:-1])
    dropped = rows[-1]["split"]
    assert len(load().pairs[dropped]) == {"train": 3, "test": 2}[dropped] - 1
    assert len(builds()) == 2 and set(first) < set(builds())
    longest = max(len(expected_audio(folder / r["audio"], 8000)) for r in rows[:-1])
    assert load(8000).pools["image"]["train"][0]["audio"].shape == (longest,)
    assert len(builds()) == 3
    os.utime(folder / rows[0]["depth"], ns=(1, 1))
    load()
    assert len(builds()) == 4


def test_failed_build_leaves_nothing_to_reuse(tmp_path, monkeypatch):
    folder = make_paired_folder(tmp_path / "f", num_train=3, num_test=2, unpaired_rows=0)
    store = tmp_path / "tfds"
    calls = []
    make_example = paired_folder.make_example

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return make_example(*args)

    with monkeypatch.context() as m:
        m.setattr(paired_folder, "make_example", failing)
        with pytest.raises(RuntimeError, match="disk full"):
            paired_folder.load_paired_folder(folder, data_dir=str(store), source="image",
                                             target="audio")
    assert not [p for p in store.rglob("*") if p.name == "1.0.0" or "incomplete" in p.name]
    ds = paired_folder.load_paired_folder(folder, data_dir=str(store), source="image",
                                          target="audio")
    assert len(ds.pairs["train"]) == 3 and len(ds.pairs["test"]) == 2


def test_unlabelled_rows_read_minus_one_and_are_refused_under_label_pairing(tmp_path):
    folder = make_paired_folder(tmp_path / "f", num_train=3, num_test=2, unpaired_rows=0)
    rows = manifest_rows(folder)
    unlabelled = next(r for r in rows if r["split"] == "train")
    unlabelled["label"] = ""
    rewrite_manifest(folder, rows)
    ds = paired_folder.load_paired_folder(folder, data_dir=str(tmp_path / "tfds"),
                                          source="image", target="audio")
    assert ds.num_classes == len({r["label"] for r in rows} - {""})
    assert ds.pairs["train"][0]["label"] == -1
    line = unlabelled["line"]
    with pytest.raises(ValueError, match=f"row {line}: label pairing needs every"):
        paired_folder.load_paired_folder(folder, data_dir=str(tmp_path / "tfds"),
                                         source="image", target="audio", pairing="label")


def _first(rows: list[dict], column: str, nth: int = 0) -> dict:
    return [r for r in rows if r.get(column)][nth]


def _overwrite(content):
    def edit(folder, rows, column):
        row = _first(rows, column)
        (folder / row[column]).write_bytes(content)
        return row["line"], row[column]
    return edit


def _missing_file(folder, rows, column):
    row = _first(rows, column)
    (folder / row[column]).unlink()
    return row["line"], row[column]


def _small_image(folder, rows, column):
    row = _first(rows, column, 1)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / row[column])
    return row["line"], row[column]


def _huge_image(folder, rows, column):
    row = _first(rows, column)
    Image.new("L", (4097, 4097)).save(folder / row[column])
    return row["line"], row[column]


def _rgb_mask(folder, rows, column):
    row = [r for r in rows if r[column].endswith(".png")][0]
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / row[column])
    return row["line"], row[column]


def _edit_cell(value, line_of=lambda rows: rows[1]["line"]):
    def edit(folder, rows, column):
        line = line_of(rows)
        rows[line - 2][column] = value
        rewrite_manifest(folder, rows)
        return line, value
    return edit


def _rename_header(folder, rows, column):
    rewrite_manifest(folder, [{("Image" if k == column else k): v for k, v in r.items()}
                              for r in rows])
    return 1, "Image"


def _no_test_split(folder, rows, column):
    rewrite_manifest(folder, [dict(r, split="val" if r["split"] == "test" else "train")
                              for r in rows])
    return 1, "manifest.csv"


def _source_absent_from_test(folder, rows, column):
    test = [r for r in rows if r["split"] == "test"]
    for r in test:
        r[column] = ""
    rewrite_manifest(folder, rows)
    return test[0]["line"], "manifest.csv"


def _symlink_outside(folder, rows, column):
    row = _first(rows, column)
    secret = folder.parent / "secret.png"
    (folder / row[column]).rename(secret)
    (folder / row[column]).symlink_to(secret)
    return row["line"], row[column]


def _latin1_manifest(folder, rows, column):
    rows[1][column] = "image/caf\xe9.png"
    rewrite_manifest(folder, rows)
    manifest = folder / "manifest.csv"
    manifest.write_bytes(manifest.read_text().encode("latin-1"))
    return rows[1]["line"], "manifest.csv"


BAD_INPUTS = {
    "missing file": ("image", _missing_file, "file not found"),
    "unreadable image": ("image", _overwrite(b"not a png"), "cannot read"),
    "unreadable npy": ("depth", _overwrite(b"\x93NUMPY garbage"), "cannot read"),
    "unreadable wav": ("audio", _overwrite(b"RIFF\x00\x00"), "cannot read"),
    "mask not a class map": ("mask", _rgb_mask, "2-D class map"),
    "inconsistent shapes": ("image", _small_image, "(8, 8, 3) uint8 but"),
    "cell outside the folder": ("image", _edit_cell("../../outside/secret.png"),
                                "resolves outside the folder"),
    "absolute cell": ("depth", _edit_cell("/abs/secret.npy"), "resolves outside the folder"),
    "symlink out of the folder": ("image", _symlink_outside, "resolves outside the folder"),
    "manifest not UTF-8": ("image", _latin1_manifest, "not UTF-8 text (byte 0xe9"),
    "image over the pixel limit": ("image", _huge_image, "4097x4097 pixels, over the limit of "
                                                       "16777216 (4096 squared)"),
    "unknown extension": ("image", _edit_cell("image/photo.bmp"), "unknown extension"),
    "unknown column": ("image", _rename_header, "unknown column"),
    "split not an identifier": ("split", _edit_cell("my split"), "not an identifier"),
    "labels mixing ids and names": ("label", _edit_cell("7"), "mix integer ids"),
    "no test split": ("split", _no_test_split, "no 'test' split; splits: train, val"),
    "source absent from a split": ("image", _source_absent_from_test,
                                   "split 'test' (from this row on) has no 'image' file"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_names_row_and_file_and_writes_nothing(case, tmp_path, store, dataset):
    column, edit, problem = BAD_INPUTS[case]
    folder = make_paired_folder(tmp_path / "f", num_train=3, num_test=3, unpaired_rows=0)
    line, file = edit(folder, manifest_rows(folder), column)
    before = snapshot(store)
    with pytest.raises(ValueError) as error:
        paired_folder.load_paired_folder(folder, data_dir=str(store), source="image",
                                         target="audio")
    message = str(error.value)
    assert f"row {line}" in message and file in message and problem in message, message
    assert snapshot(store) == before


@pytest.mark.parametrize("kwargs, label, message", [
    ({"label_style": "int"}, "-2", "manifest.csv row {line}, label '-2': negative label"),
    ({"label_style": "int"}, "50000000", "manifest.csv row {line}, label '50000000': integer "
                                         "ids are class indices below 100000"),
    ({"label_style": "name"}, "all", "manifest.csv row 2: every labelled row is class 'cat'; "
                                     "a classifier needs two"),
    ({"label_style": None}, None, "manifest.csv row 1: label pairing needs labels"),
])
def test_bad_labels(tmp_path, kwargs, label, message):
    folder = make_paired_folder(tmp_path / "f", num_train=3, num_test=2, **kwargs)
    rows = manifest_rows(folder)
    for row in rows if label == "all" else rows[2:3] if label else []:
        row["label"] = "cat" if label == "all" else label
    rewrite_manifest(folder, rows)
    with pytest.raises(ValueError, match=message.format(line=rows[2]["line"])):
        paired_folder.load_paired_folder(folder, data_dir=str(tmp_path / "tfds"),
                                         source="image", target="audio", pairing="label")
    assert not (tmp_path / "tfds").exists()


def test_unused_integer_class_ids_are_a_warning(tmp_path, capsys):
    folder = make_paired_folder(tmp_path / "f", num_train=3, num_test=2, label_style="int")
    rows = manifest_rows(folder)
    rows[2]["label"] = "50"
    rewrite_manifest(folder, rows)
    ds = paired_folder.load_paired_folder(folder, data_dir=str(tmp_path / "tfds"),
                                          source="image", target="audio")
    assert ds.num_classes == 51
    assert re.search(r"warning: .*manifest.csv: \d+ of the 51 class ids 0..50 label no row",
                     capsys.readouterr().err)


@pytest.mark.parametrize("source, target, message", [
    ("lidar", "audio", "manifest.csv row 1: source 'lidar' is not a modality column"),
    ("image", "mask", "manifest.csv row 1: target 'mask' is not a modality column"),
])
def test_source_and_target_must_be_modality_columns(folder, tmp_path, source, target, message):
    with pytest.raises(ValueError, match=message):
        paired_folder.load_paired_folder(folder, data_dir=str(tmp_path), source=source,
                                         target=target)
    assert not list(tmp_path.iterdir())


def _write_pcm(path: pathlib.Path, data: bytes, width: int, channels: int) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(width)
        f.setframerate(8000)
        f.writeframes(data)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_read_wav_decodes_every_pcm_width_and_averages_channels(tmp_path, width):
    left = np.array([0.0, 0.5, -0.5, -1.0, 0.25, 0.75])
    frames = np.stack([left, -0.5 * left], axis=1).ravel()
    full = 2 ** (8 * width - 1)
    ints = np.clip(np.round(frames * full), -full, full - 1).astype(np.int64)
    if width == 1:
        data = (ints + 128).astype(np.uint8).tobytes()
    else:
        data = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints)
    _write_pcm(tmp_path / "a.wav", data, width, channels=2)
    samples, rate = readers.read_wav(tmp_path / "a.wav")
    assert rate == 8000
    np.testing.assert_allclose(samples, 0.25 * left, atol=1.0 / full)


# --- data.resolution: images and maps cropped and resized at build time --------------------


def _rewrite_spatial(folder: pathlib.Path, row: dict, shape: tuple[int, int],
                     rng: np.random.Generator) -> None:
    """Rewrites the row's image, sketch, depth and mask files at `shape` (H, W)."""
    if row.get("image"):
        Image.fromarray(rng.integers(0, 256, (*shape, 3), np.uint8)).save(folder / row["image"])
    if row.get("sketch"):
        Image.fromarray(rng.integers(0, 256, shape, np.uint8)).save(folder / row["sketch"])
    if row.get("depth"):
        np.save(folder / row["depth"], rng.uniform(1, 3, shape).astype(np.float32))
    if row.get("mask"):
        _save_mask(folder / row["mask"], rng.choice(np.array([0, 3, 7], np.uint8), shape))


def _save_mask(file: pathlib.Path, classes: np.ndarray) -> None:
    if file.suffix == ".npy":
        np.save(file, classes)
    else:
        Image.fromarray(classes, "L").save(file)


def _all_records(dataset, modality: str):
    return [records[i] for records in dataset.pools[modality].values()
            for i in range(len(records))]


def test_mixed_sizes_are_cropped_and_resized_to_the_resolution(tmp_path):
    folder = make_paired_folder(tmp_path / "f", num_train=3, num_test=2, unpaired_rows=1)
    rows = manifest_rows(folder)
    rng = np.random.default_rng(1)
    for row, shape in zip(rows, [(24, 40), (30, 18), (9, 13), (16, 16)] * len(rows)):
        _rewrite_spatial(folder, row, shape, rng)
    centred = _first(rows, "image")  # A wide image whose centre square is pure red.
    wide = rng.integers(0, 256, (24, 40, 3), np.uint8)
    wide[:, 8:32] = (200, 0, 0)
    Image.fromarray(wide).save(folder / centred["image"])

    with pytest.raises(ValueError) as error:
        paired_folder.load_paired_folder(folder, data_dir=str(tmp_path / "tfds"),
                                         source="image", target="depth", resolution=0)
    line, file = re.search(r"row (\d+), (\S+): ", str(error.value)).groups()
    assert file in rows[int(line) - 2].values(), str(error.value)
    assert "data.resolution > 0 crops and resizes" in str(error.value)
    assert not (tmp_path / "tfds").exists()

    ds = paired_folder.load_paired_folder(folder, data_dir=str(tmp_path / "tfds"),
                                          source="image", target="depth", resolution=8)
    shapes = {"image": (8, 8, 3), "sketch": (8, 8), "depth": (8, 8), "mask": (8, 8)}
    for record in _all_records(ds, "image") + _all_records(ds, "depth"):
        assert {k: record[k].shape for k in shapes} == shapes
    index = [r["line"] for r in split_rows(folder, centred["split"], "image")].index(
        centred["line"])
    red = ds.pools["image"][centred["split"]][index]["image"]
    assert (red == np.array([200, 0, 0], np.uint8)).all()


def test_masks_are_resized_nearest_and_keep_their_ids(tmp_path):
    folder = make_paired_folder(tmp_path / "f", num_train=2, num_test=2, unpaired_rows=0,
                                modalities=("image", "sketch"))
    rng = np.random.default_rng(2)
    for row in manifest_rows(folder):
        _save_mask(folder / row["mask"], rng.choice(np.array([0, 3, 7], np.uint8), (20, 30)))
    ds = paired_folder.load_paired_folder(folder, data_dir=str(tmp_path / "tfds"),
                                          source="image", target="sketch", resolution=8)
    masks = [record["mask"] for record in _all_records(ds, "image")]
    assert {m.shape for m in masks} == {(8, 8)}
    assert set(np.unique(masks)) == {0, 3, 7}


def _triangle(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of an antialiased linear resize, each row summing to 1: a
    triangle as wide as the scale on either side of each output pixel's centre."""
    scale = n_in / n_out
    distance = np.abs((np.arange(n_in) + 0.5)[None] - (np.arange(n_out) + 0.5)[:, None] * scale)
    weights = np.maximum(0.0, 1.0 - distance / max(scale, 1.0))
    return weights / weights.sum(axis=1, keepdims=True)


def test_depth_is_resized_as_the_average_of_valid_pixels(tmp_path):
    folder = make_paired_folder(tmp_path / "f", num_train=2, num_test=2, unpaired_rows=0,
                                modalities=("image", "depth"), with_mask=False)
    row = split_rows(folder, "train", "depth")[0]
    rng = np.random.default_rng(3)
    depth = rng.uniform(1, 3, (10, 8)).astype(np.float32)
    depth[rng.random(depth.shape) < 0.3] = 0.0
    depth[4, 4] = np.nan
    np.save(folder / row["depth"], depth)
    ds = paired_folder.load_paired_folder(folder, data_dir=str(tmp_path / "tfds"),
                                          source="image", target="depth", resolution=4)
    square = depth[1:9]  # The centre 8x8 square of the 10x8 map.
    valid = np.isfinite(square) & (square > 0)
    w = _triangle(8, 4)
    weight = w @ valid @ w.T
    expected = (w @ np.where(valid, square, 0.0) @ w.T) / weight
    got = ds.pools["depth"]["train"][0]["depth"]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    naive = w @ np.nan_to_num(square) @ w.T  # Invalid zeros bleeding into the average.
    assert not np.allclose(got, naive, rtol=1e-3)


# --- audio: the files' rate, data.audio_seconds ---------------------------------------------


def _audio_folder(path: pathlib.Path, clips: list[tuple[int, int]]) -> pathlib.Path:
    """A folder of image and audio rows (two train, two test) whose clips, in manifest
    order, are noise at the (rate, number of samples) of `clips`."""
    folder = make_paired_folder(path, num_train=2, num_test=2, unpaired_rows=0,
                                modalities=("image", "audio"), with_mask=False)
    rng = np.random.default_rng(4)
    for row, (rate, length) in zip(manifest_rows(folder), clips, strict=True):
        write_wav(folder / row["audio"], rng.uniform(-0.9, 0.9, length), rate)
    return folder


def _clips(folder: pathlib.Path, dataset) -> list[tuple[dict, np.ndarray]]:
    """(manifest row, its clip as evaluation reads it) of every audio row."""
    return [(row, pipeline.to_input("audio", dataset.pools["audio"][split][i]["audio"],
                                    dataset.clip_length))
            for split in ("train", "test")
            for i, row in enumerate(split_rows(folder, split, "audio"))]


def test_clips_keep_the_files_rate_and_are_centre_cropped_or_padded(tmp_path, capsys):
    folder = _audio_folder(tmp_path / "f", [(8000, 9001), (8000, 3001), (8000, 8000),
                                            (8000, 12345)])
    ds = paired_folder.load_paired_folder(folder, data_dir=str(tmp_path / "tfds"),
                                          source="image", target="audio", audio_seconds=1.0)
    assert ds.audio_sample_rate == 8000 and "note:" not in capsys.readouterr().err
    assert ds.clip_length == 8000 and ds.pools["audio"]["train"][0]["audio"].shape == (12000,)
    middles = {9001: slice(500, 8500), 12345: slice(2172, 10172), 8000: slice(0, 8000)}
    for row, clip in _clips(folder, ds):
        source = expected_audio(folder / row["audio"], 8000)
        assert clip.dtype == np.float32 and clip.shape == (8000,)
        if len(source) in middles:  # Longer clips: their middle second.
            np.testing.assert_array_equal(clip, source[middles[len(source)]])
        else:  # 3001 samples: 2499 zeros before, 2500 after.
            np.testing.assert_array_equal(clip[2499:5500], source)
            assert not clip[:2499].any() and not clip[5500:].any()


def test_mixed_rates_are_resampled_to_the_highest_with_a_note(tmp_path, capsys):
    folder = _audio_folder(tmp_path / "f", [(8000, 4000), (16000, 8000), (8000, 6000),
                                            (16000, 20000)])
    ds = paired_folder.load_paired_folder(folder, data_dir=str(tmp_path / "tfds"),
                                          source="image", target="audio", audio_seconds=0.5)
    notes = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
    assert len(notes) == 1 and re.search(r"note: .*f: its clips are at 8000, 16000 Hz; all "
                                         r"are resampled to the highest, 16000 Hz", notes[0])
    assert ds.audio_sample_rate == 16000
    for row, clip in _clips(folder, ds):
        source = expected_audio(folder / row["audio"], 16000)
        start = (len(source) - 8000) // 2
        np.testing.assert_allclose(clip, source[start:start + 8000], atol=1e-6)
    ds = paired_folder.load_paired_folder(folder, data_dir=str(tmp_path / "tfds"),
                                          source="image", target="audio",
                                          audio_sample_rate=8000, audio_seconds=0.5)
    assert ds.audio_sample_rate == 8000 and "note:" not in capsys.readouterr().err
    assert {clip.shape for _, clip in _clips(folder, ds)} == {(4000,)}


def test_a_changed_setting_rebuilds(tmp_path):
    folder = make_paired_folder(tmp_path / "f", num_train=3, num_test=2, unpaired_rows=0)
    store = tmp_path / "tfds"

    def load(**settings):
        ds = paired_folder.load_paired_folder(folder, data_dir=str(store), source="image",
                                              target="audio", **settings)
        builds = len(list((store / "paired_folder").iterdir()))
        return builds, ds.pairs["train"][0]["audio"].shape, ds.pairs["train"][0]["image"].shape

    # Clips are stored with a quarter of `audio_seconds` either side (random crops).
    assert load(audio_seconds=1.0) == (1, (24000,), (16, 16, 3))
    assert load(audio_seconds=0.5) == (2, (12000,), (16, 16, 3))
    assert load(audio_seconds=1.0) == (2, (24000,), (16, 16, 3))  # Reused.
    assert load(audio_seconds=1.0, resolution=8) == (3, (24000,), (8, 8, 3))


@pytest.mark.parametrize("settings, message", [
    ({"audio_seconds": -1.0}, "config.data.audio_seconds=-1.0; it must be finite and >= 0"),
    ({"audio_seconds": float("nan")}, "config.data.audio_seconds=nan; it must be finite"),
    ({"audio_seconds": float("inf")}, "config.data.audio_seconds=inf; it must be finite"),
    ({"audio_sample_rate": -8000}, "config.data.audio_sample_rate=-8000; it must be an "
                                   "integer >= 0"),
    ({"resolution": 2.5}, "config.data.resolution=2.5; it must be an integer >= 0"),
])
def test_bad_settings_name_the_config_key_before_any_work(tmp_path, settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):  # Before the folder is read.
        paired_folder.load_paired_folder(tmp_path / "no_folder", data_dir=str(tmp_path),
                                         source="image", target="audio", **settings)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("key, value", [("audio_seconds", -1.0), ("audio_sample_rate", -1),
                                        ("resolution", -32)])
def test_a_run_checks_the_settings_up_front(key, value):
    config = defaults.default_config()
    config.dataset = "paired_folder"
    config.data[key] = value
    with pytest.raises(ValueError, match=re.escape(f"config.data.{key}={value!r}; it must")):
        experiment.check_config(config)


def test_clips_shorter_than_a_sample_are_refused(folder, tmp_path):
    with pytest.raises(ValueError, match=re.escape("config.data.audio_seconds=1e-05 is under "
                                                   "one sample at 16000 Hz")):
        paired_folder.load_paired_folder(folder, data_dir=str(tmp_path), source="image",
                                         target="audio", audio_seconds=1e-5)
    assert not list(tmp_path.iterdir())
