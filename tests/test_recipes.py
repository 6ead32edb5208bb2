"""The real-data recipes: our TF-free builders on tiny generated copies of the real archives,
the TFDS-backed recipes on `tfds.testing.mock_data`, and the per-record conversions."""

import io
import json
import subprocess
import sys
import tarfile
import wave

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

from cmcd_jax.data import readers, recipes, sketchy, spoken_digit

FSDD_ROOT = "free-spoken-digit-dataset-1.0.9"
# name -> number of samples: shorter and longer than the 1 s clip; indices 0-4 are test.
FSDD_FILES = {"0_jackson_0": 4000, "3_nicolas_4": 9000, "7_theo_5": 8000, "9_yweweler_49": 300}
SIZE = 16


def wav_bytes(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(8000)
        f.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()


def fsdd_samples(name: str) -> np.ndarray:
    rng = np.random.default_rng(int(name[0]) + 10 * int(name.rsplit("_", 1)[1]))
    return rng.integers(-32768, 32768, FSDD_FILES[name]).astype(np.int16)


@pytest.fixture(scope="module")
def fsdd_archive(tmp_path_factory):
    """A tar.gz laid out like FSDD v1.0.9's GitHub archive, with 4 recordings."""
    path = tmp_path_factory.mktemp("fsdd") / f"{FSDD_ROOT}.tar.gz"
    files = {f"{FSDD_ROOT}/recordings/{n}.wav": wav_bytes(fsdd_samples(n)) for n in FSDD_FILES}
    files[f"{FSDD_ROOT}/README.md"] = b"not audio"
    files[f"{FSDD_ROOT}/utils/1_x_0.wav"] = wav_bytes(np.zeros(10))  # not under recordings/
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_spoken_digit_builds_without_tensorflow(tmp_path, fsdd_archive):
    """Importing and building `cmcd_spoken_digit` (from a local archive) never imports
    TensorFlow; the records hold the WAVs' samples as clips, split by FSDD's rule."""
    code = ("import sys, json\n"
            "from cmcd_jax.data import spoken_digit\n"
            f"spoken_digit.load_sources({str(tmp_path)!r}, archive={str(fsdd_archive)!r})\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('tensorflow.')"
            " or m == 'tensorflow')))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.splitlines()[-1]) == []

    splits = spoken_digit.load_sources(str(tmp_path))  # prepared: read back, no archive
    records = {s: {r["filename"].decode(): r for r in splits[s]} for s in ("train", "test")}
    assert sorted(records["test"]) == ["0_jackson_0.wav", "3_nicolas_4.wav"]
    assert sorted(records["train"]) == ["7_theo_5.wav", "9_yweweler_49.wav"]
    for split in records.values():
        for filename, record in split.items():
            name = filename[:-len(".wav")]
            expected = np.zeros(8000, np.float32)
            samples = fsdd_samples(name)[:8000] / 32768.0
            expected[:len(samples)] = samples
            assert record["audio"].dtype == np.float32 and record["audio"].shape == (8000,)
            np.testing.assert_allclose(record["audio"], expected, atol=1e-7)
            assert record["label"] == int(name[0])


def test_spoken_digit_checks_an_archive_found_in_the_manual_dir(tmp_path, fsdd_archive):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / spoken_digit.ARCHIVE_INFO.filename).write_bytes(fsdd_archive.read_bytes())
    builder = spoken_digit.CmcdSpokenDigit(data_dir=str(tmp_path), file_format="array_record")
    with pytest.raises(NonMatchingChecksumError):  # the fixture is not FSDD's own archive
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))


def test_read_wav_scales_8_bit_and_averages_channels():
    buf = io.BytesIO()
    with wave.open(buf, "wb") as f:
        f.setnchannels(2)
        f.setsampwidth(1)
        f.setframerate(8000)
        f.writeframes(bytes([0, 255, 128, 192]))
    samples, rate = readers.read_wav(io.BytesIO(buf.getvalue()))
    np.testing.assert_allclose(samples, [(-128 + 127) / 256, 64 / 256])
    assert rate == 8000


# --- Sketchy: a tiny extracted `rendered_256x256` tree -------------------------------------

def photo_ids(class_name: str) -> list[str]:
    """Three photo ids of a class: the first one falls in the test split, two in train."""
    ids = [f"n0{k:04d}_{k}" for k in range(200)]
    test = [i for i in ids if sketchy.is_test(class_name, i)]
    train = [i for i in ids if not sketchy.is_test(class_name, i)]
    return [test[0], *train[:2]]


@pytest.fixture(scope="module")
def sketchy_tree(tmp_path_factory):
    """{'root': the manual dir, 'photos': {(class, photo id): grey value}}.

    Photos are solid (v, 0, 0); their sketches -2, -3, -10 (the first is -2, not -10) solid
    grey v, except -3 of the first photo: RGBA, top half opaque, bottom half transparent.
    Plus a photo without sketches and a sketch without a photo, both skipped."""
    manual = tmp_path_factory.mktemp("manual")
    base = manual / "rendered_256x256"
    values, value = {}, 20
    for class_name in ("airplane", "cat"):
        photo_dir = base / sketchy.PHOTO_DIR / class_name
        sketch_dir = base / sketchy.SKETCH_DIR / class_name
        photo_dir.mkdir(parents=True)
        sketch_dir.mkdir(parents=True)
        for photo_id in photo_ids(class_name):
            values[class_name, photo_id] = value
            Image.new("RGB", (40, 32), (value, 0, 0)).save(photo_dir / f"{photo_id}.jpg")
            for n in (2, 3, 10):
                Image.new("L", (40, 32), value).save(sketch_dir / f"{photo_id}-{n}.png")
            value += 30
        Image.new("RGB", (8, 8)).save(photo_dir / "lonely.jpg")
        Image.new("L", (8, 8)).save(sketch_dir / "orphan-1.png")
    class_name, photo_id = next(iter(values))
    rgba = np.full((32, 40, 4), values[class_name, photo_id], np.uint8)
    rgba[..., 3] = 255
    rgba[16:, :, 3] = 0
    Image.fromarray(rgba).save(base / sketchy.SKETCH_DIR / class_name / f"{photo_id}-3.png")
    return {"root": manual, "photos": values}


@pytest.fixture(scope="module")
def sketchy_data_dir(tmp_path_factory, sketchy_tree):
    path = tmp_path_factory.mktemp("tfds_sketchy")
    sketchy.load_sources(str(path), manual_dir=str(sketchy_tree["root"]))
    return path


def test_sketchy_class_names_are_the_125_sorted():
    assert len(sketchy.CLASS_NAMES) == 125 == len(set(sketchy.CLASS_NAMES))
    assert list(sketchy.CLASS_NAMES) == sorted(sketchy.CLASS_NAMES)


def test_sketchy_builder_records_and_splits(sketchy_data_dir, sketchy_tree):
    splits = sketchy.load_sources(str(sketchy_data_dir))
    photos = sketchy_tree["photos"]
    rgba_sketch = "{}/{}-3".format(*next(iter(photos)))
    for split in sketchy.SPLITS:
        test = split.startswith("test")
        expected = {f"{c}/{p}-{n}" for (c, p) in photos if sketchy.is_test(c, p) == test
                    for n in ((2,) if split.endswith("_photos") else (2, 3, 10))}
        got = set()
        for record in splits[split]:
            class_name = sketchy.CLASS_NAMES[record["label"]]
            photo_id, sketch_id = record["photo_id"].decode(), record["sketch_id"].decode()
            got.add(f"{class_name}/{sketch_id}")
            assert sketch_id.startswith(f"{photo_id}-")
            value = photos[class_name, photo_id]
            assert record["image"].shape == (32, 40, 3)
            assert np.abs(record["image"].astype(int) - [value, 0, 0]).max() <= 3
            sketch = record["sketch"]
            assert sketch.shape == (32, 40, 1) and sketch.dtype == np.uint8
            assert (sketch[:16] == value).all()
            transparent = f"{class_name}/{sketch_id}" == rgba_sketch
            assert (sketch[16:] == (255 if transparent else value)).all()
        assert got == expected, split


def test_sketchy_recipe_pairs_sketches_with_their_photos(sketchy_data_dir, sketchy_tree):
    data = recipes.load_sketchy(str(sketchy_data_dir), SIZE, "image", "sketch")
    photos = sketchy_tree["photos"]
    n_test = sum(sketchy.is_test(c, p) for c, p in photos)
    assert (data.pairing, data.num_classes) == ("instance", 125)
    assert {s: len(v) for s, v in data.pools["image"].items()} == {
        "train": len(photos) - n_test, "test": n_test}
    assert {s: len(v) for s, v in data.pools["sketch"].items()} == {
        "train": 3 * (len(photos) - n_test), "test": 3 * n_test}
    assert {s: len(v) for s, v in data.pairs.items()} == {
        "train": 3 * (len(photos) - n_test), "test": n_test}
    labels = {sketchy.CLASS_NAMES.index(c) for c, _ in photos}
    for split in ("train", "test"):
        for record in map(data.pairs[split].__getitem__, range(len(data.pairs[split]))):
            assert record["image"].shape == (SIZE, SIZE, 3) and record["image"].dtype == np.uint8
            assert record["sketch"].shape == (SIZE, SIZE) and record["sketch"].dtype == np.uint8
            assert record["label"] in labels
            # The photo's red level is its sketches' grey level.
            assert abs(record["image"][..., 0].mean() - record["sketch"][:SIZE // 4].mean()) < 4
    assert set(data.pools["image"]["test"][0]) == {"image", "label"}
    assert set(data.pools["sketch"]["test"][0]) == {"sketch", "label"}


# --- TFDS-backed recipes on mock data ------------------------------------------------------

def check_pool(records, modality: str, shape: tuple, dtype, num_classes: int) -> None:
    assert len(records) == 3
    for record in map(records.__getitem__, range(len(records))):
        assert record[modality].shape == shape and record[modality].dtype == dtype
        if num_classes:
            assert 0 <= record["label"] < num_classes
        else:
            assert "label" not in record


@pytest.fixture
def mock_tfds():
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


def test_spoken_digit_mnist_recipe(tmp_path, mock_tfds):
    data = recipes.load_spoken_digit_mnist(str(tmp_path), SIZE, "image", "audio")
    assert (data.pairing, data.pairs, data.num_classes) == ("label", {}, 10)
    assert data.audio_sample_rate == 8000 and set(data.modalities) == {"image", "audio"}
    for split in ("train", "test"):
        check_pool(data.pools["image"][split], "image", (SIZE, SIZE, 1), np.uint8, 10)
        check_pool(data.pools["audio"][split], "audio", (8000,), np.float32, 10)


def test_nyu_depth_v2_recipe(tmp_path, mock_tfds):
    data = recipes.load_nyu_depth_v2(str(tmp_path), SIZE, "image", "depth")
    assert (data.pairing, data.num_classes) == ("instance", 0)
    for split in ("train", "test"):
        check_pool(data.pools["image"][split], "image", (SIZE, SIZE, 3), np.uint8, 0)
        check_pool(data.pools["depth"][split], "depth", (SIZE, SIZE), np.float32, 0)
        check_pool(data.pairs[split], "depth", (SIZE, SIZE), np.float32, 0)
        assert data.pairs[split][0]["image"].shape == (SIZE, SIZE, 3)


def test_domainnet_recipe(tmp_path, mock_tfds):
    data = recipes.load_domainnet(str(tmp_path), SIZE, "image", "sketch")
    assert (data.pairing, data.pairs, data.num_classes) == ("label", {}, 345)
    for split in ("train", "test"):
        check_pool(data.pools["image"][split], "image", (SIZE, SIZE, 3), np.uint8, 345)
        check_pool(data.pools["sketch"][split], "sketch", (SIZE, SIZE), np.uint8, 345)


def test_unprepared_tfds_dataset_names_the_build_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="tfds build mnist --file_format=array_record"):
        recipes.load_spoken_digit_mnist(str(tmp_path), SIZE, "image", "audio")


@pytest.mark.parametrize("name,valid", [("spoken_digit_mnist", "image, audio"),
                                        ("nyu_depth_v2", "image, depth"),
                                        ("domainnet", "image, sketch"),
                                        ("sketchy", "image, sketch")])
def test_recipes_refuse_modalities_they_lack(name, valid):
    with pytest.raises(ValueError, match=f"valid: {valid}"):
        recipes.RECIPES[name]("", SIZE, "image", "mask")


# --- per-record conversions ----------------------------------------------------------------

def test_conversions_crop_the_centre_and_resize():
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 10:50] = 200  # the centre square
    out = recipes.rgb_image(image, SIZE)
    assert out.shape == (SIZE, SIZE, 3) and (out == 200).all()
    assert recipes.rgb_image(image[..., 0], SIZE).shape == (SIZE, SIZE, 3)
    assert recipes.grey_image(image[..., :1], 8).shape == (8, 8, 1)
    grey = recipes.sketch_map(np.full((30, 30, 3), (255, 0, 0), np.uint8), 8)
    assert grey.shape == (8, 8) and (grey == 76).all()  # 0.299 * 255


def test_depth_resize_averages_valid_pixels_only():
    depth = np.full((64, 64), 2.0, np.float16)
    depth[:, :16] = 0.0
    depth[0, 40] = np.nan
    out = recipes.depth_map(depth, 8)
    assert out.dtype == np.float32 and out.shape == (8, 8)
    assert (out[:, :1] == 0).all()
    np.testing.assert_allclose(out[:, 1:], 2.0, rtol=1e-5)  # no blending with invalid 0s
