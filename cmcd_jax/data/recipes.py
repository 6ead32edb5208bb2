"""The real-data recipes: `RECIPES[name](data_dir, resolution, source, target)` -> `Dataset`.

| recipe               | modalities    | pairing  | classes | data                              |
|----------------------|---------------|----------|---------|-----------------------------------|
| `spoken_digit_mnist` | image, audio  | label    | 10      | TFDS `mnist`, `cmcd_spoken_digit` |
| `nyu_depth_v2`       | image, depth  | instance | 0       | TFDS `nyu_depth_v2`               |
| `domainnet`          | image, sketch | label    | 345     | TFDS `domainnet/real`, `/sketch`  |
| `sketchy`            | image, sketch | instance | 125     | `cmcd_sketchy` (manual download)  |

TFDS's own datasets are read, never built, here: prepare them once as array_record (building
needs TensorFlow), e.g. `tfds build mnist --file_format=array_record --data_dir=DIR`. Our
builders (`cmcd_spoken_digit`, `cmcd_sketchy`) are built on first use, without TensorFlow.

Records stay on disk; each is converted when read (`Converted`, with `spatial`): images and
maps are centre cropped to a square, then resized to `resolution` with PIL's bilinear filter
(antialiased: PIL widens the filter when shrinking). Depth is resized as a valid-weighted
average (0 or non-finite = invalid, left out of the average; 0 where no valid pixel
contributes). MNIST images keep their single channel: (H, W, 1); other images are RGB
(H, W, 3); sketches are grey (H, W). Splits are `train` and `test` (NYU's `validation`
serves as `test`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from cmcd_jax.data import datasets, sketchy, spatial, spoken_digit

Converter = Callable[[np.ndarray, int], np.ndarray]
TRAIN_TEST = {"train": "train", "test": "test"}


def as_channels(image: np.ndarray) -> np.ndarray:
    """An (H, W) or (H, W, C) image as (H, W, C)."""
    image = np.asarray(image)
    return image[..., None] if image.ndim == 2 else image


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Grey, RGB or RGBA uint8 -> RGB (H, W, 3) (grey repeated, alpha dropped)."""
    image = as_channels(image)
    return np.repeat(image, 3, -1) if image.shape[-1] == 1 else image[..., :3]


def as_grey(image: np.ndarray) -> np.ndarray:
    """Grey or RGB(A) uint8 -> grey (H, W) (ITU-R 601 luma, PIL's 'L')."""
    image = as_channels(image)
    if image.shape[-1] == 1:
        return image[..., 0]
    return np.asarray(Image.fromarray(np.ascontiguousarray(image[..., :3])).convert("L"))


def rgb_image(value: np.ndarray, size: int) -> np.ndarray:
    """Raw image -> uint8 (size, size, 3)."""
    return spatial.resize_image(as_rgb(value), size)


def grey_image(value: np.ndarray, size: int) -> np.ndarray:
    """Raw one-channel image -> uint8 (size, size, 1)."""
    return spatial.resize_image(as_channels(value), size)


def sketch_map(value: np.ndarray, size: int) -> np.ndarray:
    """Raw drawing -> grey uint8 (size, size)."""
    return spatial.resize_image(as_grey(value), size)


def depth_map(value: np.ndarray, size: int) -> np.ndarray:
    """Depth (H, W) -> float32 (size, size): centre square, valid-weighted bilinear average."""
    return spatial.resize_depth(value, size)


def waveform(value: np.ndarray, size: int) -> np.ndarray:
    """Audio as stored (a fixed-length float32 clip); `size` does not apply."""
    del size
    return np.asarray(value, np.float32)


class Converted:
    """The records of `source`, converted when read: {modality: convert(record[field], size)}
    for `fields` = {modality: (field, convert)}, plus `label` when the source has one."""

    def __init__(self, source, fields: Mapping[str, tuple[str, Converter]], size: int):
        self.source, self.fields, self.size = source, dict(fields), size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        record = self.source[int(index)]
        out = {m: convert(record[field], self.size)
               for m, (field, convert) in self.fields.items()}
        if "label" in record:
            out["label"] = np.int64(record["label"])
        return out


def converted(splits: Mapping[str, object], fields: Mapping[str, tuple[str, Converter]],
              size: int) -> dict:
    """`Converted` views of every split."""
    return {split: Converted(source, fields, size) for split, source in splits.items()}


def check_modalities(recipe: str, offered: tuple[str, ...], source: str, target: str) -> None:
    """Fails unless `source` and `target` are modalities `recipe` offers."""
    for role, modality in (("source", source), ("target", target)):
        if modality not in offered:
            raise ValueError(f"{recipe} has no {role} modality {modality!r}; "
                             f"valid: {', '.join(offered)}")


def tfds_splits(name: str, splits: Mapping[str, str], data_dir: str | None) -> dict:
    """{our split: data source of TFDS split} of the prepared dataset `name` (read only)."""
    try:
        read = tfds.data_source(name, split=list(splits.values()), data_dir=data_dir or None,
                                download=False)
    except NotImplementedError as error:  # TFDS's answer when no array_record copy exists
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared as array_record in "
            f"{data_dir or 'the default TFDS data dir'}; prepare it once (needs TensorFlow): "
            f"tfds build {name} --file_format=array_record --data_dir=DIR") from error
    return dict(zip(splits, read))


def load_spoken_digit_mnist(data_dir: str | None, resolution: int, source: str,
                            target: str) -> datasets.Dataset:
    """MNIST digits (image) and spoken digits (audio, 1 s at 8 kHz), paired by label."""
    check_modalities("spoken_digit_mnist", ("image", "audio"), source, target)
    images = tfds_splits("mnist", TRAIN_TEST, data_dir)
    audio = spoken_digit.load_sources(data_dir)
    return datasets.Dataset(
        "spoken_digit_mnist",
        pools={"image": converted(images, {"image": ("image", grey_image)}, resolution),
               "audio": converted(audio, {"audio": ("audio", waveform)}, resolution)},
        pairs={}, pairing="label", num_classes=10,
        audio_sample_rate=float(spoken_digit.SAMPLE_RATE))


def load_nyu_depth_v2(data_dir: str | None, resolution: int, source: str,
                      target: str) -> datasets.Dataset:
    """NYU Depth V2 RGB-D frames (image, depth in metres), paired by instance, no labels."""
    check_modalities("nyu_depth_v2", ("image", "depth"), source, target)
    frames = tfds_splits("nyu_depth_v2", {"train": "train", "test": "validation"}, data_dir)
    fields = {"image": ("image", rgb_image), "depth": ("depth", depth_map)}
    return datasets.Dataset(
        "nyu_depth_v2",
        pools={m: converted(frames, {m: fields[m]}, resolution) for m in fields},
        pairs=converted(frames, fields, resolution), pairing="instance", num_classes=0)


def load_domainnet(data_dir: str | None, resolution: int, source: str,
                   target: str) -> datasets.Dataset:
    """DomainNet's real photos (image) and sketches (sketch) of 345 classes, paired by label."""
    check_modalities("domainnet", ("image", "sketch"), source, target)
    real = tfds_splits("domainnet/real", TRAIN_TEST, data_dir)
    drawn = tfds_splits("domainnet/sketch", TRAIN_TEST, data_dir)
    return datasets.Dataset(
        "domainnet",
        pools={"image": converted(real, {"image": ("image", rgb_image)}, resolution),
               "sketch": converted(drawn, {"sketch": ("image", sketch_map)}, resolution)},
        pairs={}, pairing="label", num_classes=345)


def load_sketchy(data_dir: str | None, resolution: int, source: str,
                 target: str) -> datasets.Dataset:
    """Sketchy photos (image) and the sketches drawn from them (sketch), paired by instance.

    The sketch pool and training pairs hold every sketch; the image pool and test pairs hold
    each photo once (with its first sketch), so test retrieval has one key per photo.
    """
    check_modalities("sketchy", ("image", "sketch"), source, target)
    splits = sketchy.load_sources(data_dir)
    fields = {"image": ("image", rgb_image), "sketch": ("sketch", sketch_map)}
    photos = {"train": splits["train_photos"], "test": splits["test_photos"]}
    sketches = {"train": splits["train"], "test": splits["test"]}
    return datasets.Dataset(
        "sketchy",
        pools={"image": converted(photos, {"image": fields["image"]}, resolution),
               "sketch": converted(sketches, {"sketch": fields["sketch"]}, resolution)},
        pairs={"train": Converted(sketches["train"], fields, resolution),
               "test": Converted(photos["test"], fields, resolution)},
        pairing="instance", num_classes=len(sketchy.CLASS_NAMES))


RECIPES: dict[str, Callable[..., datasets.Dataset]] = {
    "spoken_digit_mnist": load_spoken_digit_mnist,
    "nyu_depth_v2": load_nyu_depth_v2,
    "domainnet": load_domainnet,
    "sketchy": load_sketchy,
}


def from_config(config) -> datasets.Dataset:
    """The recipe `config.dataset` names, as `config.data` sets it (the `sources.LOADERS`
    entry of every recipe)."""
    data = config.data
    return RECIPES[config.dataset](data.data_dir or None, data.resolution, data.source,
                                   data.target)
