"""Paired folders: the user's own data, built once into a TFDS array_record dataset.

A folder holds `manifest.csv` (UTF-8) and the files it names. Its header has `split`, one
column per modality (`image`, `sketch`, `depth`, `audio` or any other lowercase name), and
optionally `label` and `mask`. Each further line is one sample: its split (an identifier
other than `all`; `train` and `test` are required), per modality a path relative to the
folder that stays inside it once resolved, symlinks included (empty when the sample lacks
that modality), its label (a class name or a non-negative integer id;
empty when unlabelled) and its mask.

Files become raw record fields as `cmcd_jax.data.datasets` describes them:

    image   .png .jpg .jpeg  -> uint8 (H, W, 3); grayscale replicated to 3 channels
    sketch  .png .jpg .jpeg  -> uint8 (H, W); colour converted to luminance
    depth   .npy (H, W)      -> float32 (H, W)
    mask    .png .npy        -> uint8 (H, W) class map; values must be integers in 0..255
    other   .png .jpg .jpeg  -> uint8 (H, W, C); .npy -> float32, shape as stored
    any     .wav             -> float32 (T,) mono in [-1, 1]: 8/16/24/32-bit PCM, channels
                                averaged, resampled to `audio_sample_rate` (0: the files'
                                rate; the highest, said in a note, when rates differ),
                                clipped, then centre-cropped or zero-padded (centred) to
                                `audio_seconds` plus a margin of `CLIP_MARGIN` of it either
                                side, from which training cuts a random window of
                                `audio_seconds` and evaluation the centre one (the
                                dataset's `clip_length`); 0: zero-padded at the end to the
                                longest clip of the column in the folder, used as stored

With `resolution` > 0 every image file (any column) and every depth and mask .npy is cropped
to its centre square and resized to (resolution, resolution) (`cmcd_jax.data.spatial`):
bilinear, antialiased, for images and sketches; nearest for masks, so class ids stay exact;
for depth the bilinear average of the valid pixels (finite and > 0), so invalid ones do not
bleed into it. Other .npy files keep their shape. With `resolution` 0 every file keeps its
size, and files of one column must agree.

Every record holds every column (zeros where the cell is empty) with a bool `has_<column>`
flag, and, when the folder is labelled, `label` (int64, -1 when unlabelled) whose class
names are the sorted names, or "0".."max" when the labels are integer ids (kept as is).
A split's records keep the manifest's row order.

The build lives in the TFDS data dir at `paired_folder/<folder name>_<key>/1.0.0`; `key`
hashes manifest.csv's bytes, the path, size and mtime of every file it names, the
`Conversion` as given (resolution, audio rate and seconds) and `FORMAT`: editing the
manifest, replacing or touching a file it names, or another setting builds anew (into a new
directory; old builds stay until deleted); anything else, moving the folder included, reuses
the build. Every file is read and checked before anything is written, and TFDS writes into a
temporary directory renamed only on success.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import math
import numbers
import os
import pathlib
import re
import wave
from collections.abc import Callable, Mapping
from typing import TypeVar

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from cmcd_jax import log
from cmcd_jax.data import datasets, modalities, readers, spatial

MANIFEST = "manifest.csv"
FORMAT = 3  # Bump whenever files are read differently: every cached build is redone.
#: Clips are stored with this fraction of `audio_seconds` either side: room for random crops.
CLIP_MARGIN = 0.25
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
EXTENSIONS = {"image": IMAGE_EXTENSIONS, "sketch": IMAGE_EXTENSIONS, "depth": (".npy",),
              "audio": (".wav",), "mask": (".png", ".npy")}
OTHER_EXTENSIONS = (*IMAGE_EXTENSIONS, ".npy", ".wav")
COLUMN_NAME = re.compile(r"[a-z][a-z0-9_]*")
READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, wave.Error,
               Image.DecompressionBombError)
MAX_PIXELS = 4096 * 4096  # Larger images are refused before they are decoded.
MAX_CLASSES = 100_000  # Integer label ids are class indices: 0 .. MAX_CLASSES - 1.
SQUARE_ARRAYS = ("depth", "mask")  # The columns whose .npy files are resized (as maps).

Spec = tuple[tuple[int, ...], np.dtype]
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Conversion:
    """How files become record fields: the side images and maps are cropped and resized to
    (0: their own size), the rate clips are resampled to (Hz; 0: the files' own, the highest
    when they differ) and the duration of a network input (seconds; 0: every clip padded at
    its end to the longest)."""

    resolution: int = 0
    audio_sample_rate: int = 0
    audio_seconds: float = 0.0

    @property
    def clip_length(self) -> int:
        """Samples of a network input (0: every clip as stored)."""
        return round(self.audio_seconds * self.audio_sample_rate)

    @property
    def clip_margin(self) -> int:
        """Samples stored either side of a clip's centre `clip_length`: room for crops."""
        return round(CLIP_MARGIN * self.clip_length)


def checked_conversion(resolution: int = 0, audio_sample_rate: int = 0,
                       audio_seconds: float = 0.0) -> Conversion:
    """The settings as a `Conversion`; a ValueError naming the config key of a bad one."""
    for key, value in (("resolution", resolution), ("audio_sample_rate", audio_sample_rate)):
        if not (isinstance(value, numbers.Real) and float(value).is_integer() and value >= 0):
            raise ValueError(f"config.data.{key}={value!r}; it must be an integer >= 0 "
                             f"(0: the files' own)")
    if not (isinstance(audio_seconds, numbers.Real) and math.isfinite(audio_seconds)
            and audio_seconds >= 0):
        raise ValueError(f"config.data.audio_seconds={audio_seconds!r}; it must be finite and "
                         f">= 0 (0: every clip padded to the longest)")
    return Conversion(int(resolution), int(audio_sample_rate), float(audio_seconds))


@dataclasses.dataclass(frozen=True)
class Row:
    """One manifest line: its 1-based line number, split, file per column, label id."""

    line: int
    split: str
    files: Mapping[str, str]
    label: int = -1


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A parsed and checked manifest.csv."""

    path: pathlib.Path
    modalities: tuple[str, ...]
    rows: tuple[Row, ...]
    class_names: tuple[str, ...]

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(row.split for row in self.rows))

    def split_rows(self, split: str) -> list[Row]:
        return [row for row in self.rows if row.split == split]

    def file(self, relative: str) -> pathlib.Path:
        return self.path.parent / relative


def manifest_error(path: pathlib.Path, line: int, what: str | None, problem: str
                   ) -> ValueError:
    """The error for `what` (a file, a column, a label; None: the row) on line `line` of
    manifest `path`."""
    return ValueError(f"{path} row {line}{f', {what}' if what else ''}: {problem}")


def _check_header(path: pathlib.Path, header: list[str]) -> None:
    if "split" not in header:
        raise manifest_error(path, 1, "header", f"no 'split' column in {header}")
    for column in header:
        if header.count(column) > 1:
            raise manifest_error(path, 1, f"column {column!r}", "appears twice")
        if not COLUMN_NAME.fullmatch(column) or column.startswith("has_"):
            raise manifest_error(path, 1, f"column {column!r}",
                                 "unknown column: modality columns are lowercase "
                                 "identifiers not starting with 'has_'")
    if not set(header) - {"split", "label", "mask"}:
        raise manifest_error(path, 1, "header", "no modality column")


def _row_files(path: pathlib.Path, line: int, cells: Mapping[str, str]) -> dict[str, str]:
    """The row's non-empty file cells, each inside the folder (`path`'s, resolved) once
    resolved, symlinks included, and with an extension valid for its column."""
    files = {c: v for c, v in cells.items() if c not in ("split", "label") and v}
    for column, relative in files.items():
        if not (path.parent / relative).resolve().is_relative_to(path.parent):
            raise manifest_error(path, line, f"column {column!r} {relative!r}",
                                 f"resolves outside the folder {path.parent}; every file "
                                 f"must lie inside it")
        valid = EXTENSIONS.get(column, OTHER_EXTENSIONS)
        if os.path.splitext(relative)[1].lower() not in valid:
            raise manifest_error(path, line, relative,
                                 f"unknown extension for column {column!r}; valid: "
                                 f"{', '.join(valid)}")
    if not set(files) - {"mask"}:
        raise manifest_error(path, line, None, "the row names no modality file")
    return files


def parse_labels(path: pathlib.Path, cells: list[tuple[int, str]]
                 ) -> tuple[list[int], tuple[str, ...]]:
    """Label ids (-1 when empty) and class names: sorted names, or integer ids as is."""
    given = [(line, text) for line, text in cells if text]
    if not given:
        return [-1] * len(cells), ()
    numeric = [re.fullmatch(r"[+-]?\d+", text) is not None for _, text in given]
    for (line, text), is_int in zip(given, numeric):
        if is_int != numeric[0]:
            raise manifest_error(path, line, f"label {text!r}",
                                 "labels mix integer ids and class names")
        if is_int and int(text) < 0:
            raise manifest_error(path, line, f"label {text!r}", "negative label")
    if numeric[0]:
        ids = [int(text) if text else -1 for _, text in cells]
        for (line, text), label in zip(cells, ids):
            if label >= MAX_CLASSES:
                raise manifest_error(path, line, f"label {text!r}",
                                     f"integer ids are class indices below {MAX_CLASSES}; "
                                     "name the classes instead")
        names = tuple(str(i) for i in range(max(ids) + 1))
    else:
        names = tuple(sorted({text for _, text in given}))
        index = {name: i for i, name in enumerate(names)}
        ids = [index[text] if text else -1 for _, text in cells]
    check_classes(path, cells, ids, names)
    return ids, names


def check_classes(path: pathlib.Path, cells: list[tuple[int, str]], ids: list[int],
                  names: tuple[str, ...]) -> None:
    """Refuses labels of a single class; warns about integer ids that no row uses."""
    used = sorted({label for label in ids if label >= 0})
    if len(used) == 1:
        line = next(line for (line, _), label in zip(cells, ids) if label >= 0)
        raise manifest_error(path, line, None, f"every labelled row is class "
                                               f"{names[used[0]]!r}; a classifier needs two")
    unused = len(names) - len(used)
    if unused:
        log.say(f"warning: {path}: {unused} of the {len(names)} class ids 0..{len(names) - 1} "
                f"label no row (first: {min(set(range(len(names))) - set(used))}); they are "
                f"classes all the same")


def _parse_row(path: pathlib.Path, line: int, header: list[str], cells: list[str]
               ) -> tuple[int, str, dict[str, str], str]:
    """(line, split, files, label text) of one manifest line."""
    if len(cells) > len(header):
        raise manifest_error(path, line, None, "more cells than header columns")
    row = dict(zip(header, (c.strip() for c in cells)))
    split = row.get("split", "")
    if not split.isidentifier() or split == "all":
        raise manifest_error(path, line, None,
                             f"split {split!r} is not an identifier (or is 'all')")
    return line, split, _row_files(path, line, row), row.get("label", "")


def manifest_text(path: pathlib.Path) -> str:
    """The manifest's text; a ValueError naming the file and row when it is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise manifest_error(path, data[:e.start].count(b"\n") + 1, None,
                             f"not UTF-8 text (byte {data[e.start]:#04x} at offset "
                             f"{e.start}); save the manifest as UTF-8") from None


def read_manifest(directory: str | os.PathLike) -> Manifest:
    """Parses and checks `directory`/manifest.csv (columns, splits, extensions, labels)."""
    path = pathlib.Path(directory).resolve() / MANIFEST
    if not path.is_file():
        raise ValueError(f"{path}: no such manifest")
    reader = csv.reader(io.StringIO(manifest_text(path), newline=""))
    header = [c.strip() for c in next(reader, [])]
    _check_header(path, header)
    raw = [_parse_row(path, reader.line_num, header, cells)
           for cells in reader if any(c.strip() for c in cells)]
    labels, names = parse_labels(path, [(line, text) for line, _, _, text in raw])
    rows = tuple(Row(line, split, files, label)
                 for (line, split, files, _), label in zip(raw, labels))
    splits = sorted({row.split for row in rows})
    for split in ("train", "test"):
        if split not in splits:
            raise manifest_error(path, 1, None,
                                 f"no {split!r} split; splits: {', '.join(splits)}")
    modalities = tuple(c for c in header if c not in ("split", "label", "mask"))
    for column in (*modalities, "mask"):
        if column in header and not any(column in row.files for row in rows):
            raise manifest_error(path, 1, f"column {column!r}", "names no file")
    return Manifest(path, modalities, rows, names)


def check_request(manifest: Manifest, source: str, target: str, pairing: str) -> None:
    """Checks that every split can serve `source` -> `target` under `pairing`."""
    path = manifest.path
    if pairing not in datasets.PAIRINGS:
        raise ValueError(f"pairing={pairing!r}; valid: {', '.join(datasets.PAIRINGS)}")
    for role, name in (("source", source), ("target", target)):
        if name not in manifest.modalities:
            raise manifest_error(path, 1, None,
                                 f"{role} {name!r} is not a modality column; columns: "
                                 f"{', '.join(manifest.modalities)}")
    if source == target:
        raise ValueError(f"source and target are both {source!r}")
    if pairing == "label" and not manifest.class_names:
        raise manifest_error(path, 1, None, "label pairing needs labels; none given")
    for split in manifest.splits:
        rows = manifest.split_rows(split)
        for name in (source, target):
            if not any(name in row.files for row in rows):
                raise manifest_error(path, rows[0].line, None,
                                     f"split {split!r} (from this row on) has no {name!r} "
                                     "file")
        if pairing == "instance" and not any(
                source in row.files and target in row.files for row in rows):
            raise manifest_error(path, rows[0].line, None,
                                 f"split {split!r} (from this row on) has no row with both "
                                 f"{source!r} and {target!r}")
        for row in rows:
            if pairing == "label" and row.label < 0 and {source, target} & set(row.files):
                raise manifest_error(path, row.line, None,
                                     "label pairing needs every source/target row labelled")


def cache_key(manifest: Manifest, conversion: Conversion) -> str:
    """`<folder name>_<hash>` of `FORMAT`, the conversion, the manifest and its files' sizes
    and mtimes."""
    digest = hashlib.sha256(f"{FORMAT} {conversion}\n".encode())
    digest.update(manifest.path.read_bytes())
    for row in manifest.rows:
        for relative in row.files.values():
            file = manifest.file(relative)
            if not file.is_file():
                raise manifest_error(manifest.path, row.line, relative, "file not found")
            stat = file.stat()
            digest.update(f"{relative} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    folder = re.sub(r"[^a-z0-9]+", "_", manifest.path.parent.name.lower()).strip("_")
    return f"{folder[:40] or 'folder'}_{digest.hexdigest()[:16]}"


def _class_map(array: np.ndarray) -> np.ndarray:
    if array.ndim != 2:
        raise ValueError(f"a mask must be a 2-D class map, not shape {array.shape}")
    values = array.astype(np.float64)
    if not (np.all(values == np.round(values)) and values.min() >= 0 and values.max() <= 255):
        raise ValueError("mask values must be integers in 0..255")
    return array.astype(np.uint8)


def _image(column: str, image: Image.Image) -> np.ndarray:
    if column == "image":
        return np.asarray(image.convert("RGB"))
    if column == "sketch":
        return np.asarray(image.convert("L"))
    if column == "mask":
        return _class_map(np.asarray(image))
    if image.mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert("RGB")
    array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


def _array(column: str, array: np.ndarray) -> np.ndarray:
    if column == "mask":
        return _class_map(array)
    if column == "depth" and array.ndim != 2:
        raise ValueError(f"a depth map must be 2-D (H, W), not shape {array.shape}")
    return array.astype(np.float32)


def resizes(column: str, file: str) -> bool:
    """Whether `file` of `column` is cropped and resized to the resolution: image files,
    and .npy files of the depth and mask columns."""
    extension = os.path.splitext(file)[1].lower()
    return extension in IMAGE_EXTENSIONS or (extension == ".npy" and column in SQUARE_ARRAYS)


def resize(column: str, array: np.ndarray, size: int) -> np.ndarray:
    """A field of `column` cropped to its centre square and resized to (size, size):
    nearest for masks, valid-weighted for depth, bilinear otherwise."""
    if column == "mask":
        return spatial.resize_class_map(array, size)
    if column == "depth":
        return spatial.resize_depth(array, size)
    return spatial.resize_image(array, size)


def read_file(column: str, file: pathlib.Path, conversion: Conversion) -> np.ndarray:
    """One file as the raw record field of `column` (see the module docstring), unpadded."""
    extension = file.suffix.lower()
    if extension == ".wav":
        samples = readers.resample(*readers.read_wav(file), conversion.audio_sample_rate)
        length, margin = conversion.clip_length, conversion.clip_margin
        return modalities.clip_window(samples, length, margin=margin) if length else samples
    if extension == ".npy":
        array = _array(column, np.load(file, allow_pickle=False))
    else:
        with Image.open(file) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ValueError(f"{image.width}x{image.height} pixels, over the limit of "
                                 f"{MAX_PIXELS} ({math.isqrt(MAX_PIXELS)} squared): "
                                 f"downscale it")
            array = _image(column, image)
    if conversion.resolution and resizes(column, file.name):
        return resize(column, array, conversion.resolution)
    return array


def _checked(manifest: Manifest, row: Row, column: str, relative: str,
             read: Callable[[pathlib.Path], T]) -> T:
    """`read` of the row's file of `column`; its read errors as one naming row and file."""
    try:
        return read(manifest.file(relative))
    except READ_ERRORS as e:
        problem = str(e) or type(e).__name__
        raise manifest_error(manifest.path, row.line, relative,
                             f"cannot read as {column!r}: {problem}") from e


def infer_specs(manifest: Manifest, conversion: Conversion) -> dict[str, Spec]:
    """Reads every file: each column's (shape, dtype), equal within the column (clips are
    padded to the longest). Raises on the first unreadable or inconsistent file."""
    specs: dict[str, Spec] = {}
    first: dict[str, tuple[Row, str, tuple]] = {}
    for row in manifest.rows:
        for column, relative in row.files.items():
            array = _checked(manifest, row, column, relative,
                             lambda file: read_file(column, file, conversion))
            clip = relative.lower().endswith(".wav")
            kind = (array.dtype, "clip" if clip else array.shape)
            if column not in first:
                first[column] = (row, relative, kind)
                specs[column] = (array.shape, array.dtype)
            elif kind != first[column][2]:
                row0, relative0, kind0 = first[column]
                hint = ("; data.resolution > 0 crops and resizes every image and map to that "
                        "side" if resizes(column, relative) else "")
                raise manifest_error(manifest.path, row.line, relative,
                                     f"{column} is {kind[1]} {kind[0]} but {relative0} "
                                     f"(row {row0.line}) is {kind0[1]} {kind0[0]}{hint}")
            elif clip:
                specs[column] = ((max(specs[column][0][0], len(array)),), array.dtype)
    return {c: specs[c] for c in (*manifest.modalities, "mask") if c in specs}


def _pad(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.pad(value, [(0, size - n) for size, n in zip(shape, value.shape)])


def make_example(manifest: Manifest, row: Row, specs: Mapping[str, Spec],
                 conversion: Conversion) -> dict:
    """The record of `row`: every column (zeros when absent), its flag, and the label."""
    example = {}
    for column, (shape, dtype) in specs.items():
        relative = row.files.get(column)
        value = (np.zeros(shape, dtype) if relative is None else
                 read_file(column, manifest.file(relative), conversion))
        example[column] = _pad(value, shape)
        example[f"has_{column}"] = relative is not None
    if manifest.class_names:
        example["label"] = row.label
    return example


def make_features(specs: Mapping[str, Spec], class_names: tuple[str, ...]
                  ) -> tfds.features.FeaturesDict:
    """A fixed-shape Tensor and a bool flag per column, and a ClassLabel when labelled."""
    features = {}
    for column, (shape, dtype) in specs.items():
        features[column] = tfds.features.Tensor(shape=shape, dtype=dtype)
        features[f"has_{column}"] = tfds.features.Tensor(shape=(), dtype=np.bool_)
    if class_names:
        features["label"] = tfds.features.ClassLabel(names=class_names)
    return tfds.features.FeaturesDict(features)


@dataclasses.dataclass(eq=False)
class PairedFolderConfig(tfds.core.BuilderConfig):
    """One state of one folder; `specs` is None when only reading an existing build."""

    manifest: Manifest | None = dataclasses.field(default=None, repr=False)
    conversion: Conversion = Conversion()
    specs: Mapping[str, Spec] | None = dataclasses.field(default=None, repr=False)


class PairedFolder(tfds.core.GeneratorBasedBuilder):
    """A user's paired folder (see the module docstring), one config per folder state."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        features = (None if cfg.specs is None else
                    make_features(cfg.specs, cfg.manifest.class_names))
        return tfds.core.DatasetInfo(builder=self, description=__doc__, features=features,
                                     disable_shuffling=True)

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is local.
        return {split: self._generate_examples(split)
                for split in self.builder_config.manifest.splits}

    def _generate_examples(self, split: str):
        cfg = self.builder_config
        for index, row in enumerate(cfg.manifest.split_rows(split)):
            yield index, make_example(cfg.manifest, row, cfg.specs, cfg.conversion)


def with_audio_rate(manifest: Manifest, conversion: Conversion) -> Conversion:
    """`conversion` whose audio rate 0 becomes the highest rate of the folder's clips (0 when
    it has none), said in a note when their rates differ; clips must last a sample."""
    rate = conversion.audio_sample_rate
    if not rate:
        rates = sorted({_checked(manifest, row, column, relative, readers.wav_rate)
                        for row in manifest.rows for column, relative in row.files.items()
                        if relative.lower().endswith(".wav")})
        rate = max(rates, default=0)
        if len(rates) > 1:
            log.say(f"note: {manifest.path.parent}: its clips are at "
                    f"{', '.join(map(str, rates))} Hz; all are resampled to the highest, "
                    f"{rate} Hz (data.audio_sample_rate sets another rate)")
    conversion = dataclasses.replace(conversion, audio_sample_rate=rate)
    if conversion.audio_seconds and rate and not conversion.clip_length:
        raise ValueError(f"config.data.audio_seconds={conversion.audio_seconds!r} is under one "
                         f"sample at {rate} Hz")
    return conversion


def folder_builder(manifest: Manifest, conversion: Conversion,
                   data_dir: str | os.PathLike | None = None) -> PairedFolder:
    """The folder's prepared builder: reused from `data_dir`, else checked and built. The
    build is keyed by `conversion` as given and made `with_audio_rate`."""
    name = cache_key(manifest, conversion)
    conversion = with_audio_rate(manifest, conversion)
    config = PairedFolderConfig(name=name, description=str(manifest.path.parent),
                                manifest=manifest, conversion=conversion)
    builder = PairedFolder(config=config, data_dir=data_dir, file_format="array_record")
    if builder.data_path.exists() and builder.is_prepared():
        return builder
    config = dataclasses.replace(config, specs=infer_specs(manifest, conversion))
    builder = PairedFolder(config=config, data_dir=data_dir, file_format="array_record")
    datasets.build_once(builder, f"the paired folder {manifest.path.parent} "
                                 f"({len(manifest.rows)} manifest rows) as TFDS "
                                 f"paired_folder/{config.name}")
    return builder


def _indices(rows: list[Row], modalities: tuple[str, ...]) -> np.ndarray:
    return np.array([i for i, row in enumerate(rows)
                     if all(m in row.files for m in modalities)], np.int64)


def load_paired_folder(directory: str | os.PathLike, *,
                       data_dir: str | os.PathLike | None = None,
                       source: str, target: str, pairing: str = "instance",
                       resolution: int = 0, audio_sample_rate: int = 0,
                       audio_seconds: float = 0.0) -> datasets.Dataset:
    """The folder as a `Dataset` of its source and target pools, converted as
    `Conversion` says (by default: images and maps as stored, clips at the files' rate and
    padded to the longest); the TFDS build is made on first use and reused while the folder
    and the settings are unchanged."""
    conversion = checked_conversion(resolution, audio_sample_rate, audio_seconds)
    manifest = read_manifest(directory)
    check_request(manifest, source, target, pairing)
    builder = folder_builder(manifest, conversion, data_dir or None)
    built = builder.builder_config.conversion  # At the clips' resolved rate.
    data = builder.as_data_source()
    rows = {split: manifest.split_rows(split) for split in manifest.splits}
    pools = {m: {s: datasets.Records(data[s], _indices(rows[s], (m,))) for s in rows}
             for m in (source, target)}
    pairs = ({} if pairing == "label" else
             {s: datasets.Records(data[s], _indices(rows[s], (source, target))) for s in rows})
    return datasets.Dataset(name="paired_folder", pools=pools, pairs=pairs, pairing=pairing,
                           num_classes=len(manifest.class_names),
                           has_mask=any("mask" in row.files for row in manifest.rows),
                           audio_sample_rate=built.audio_sample_rate,
                           clip_length=built.clip_length)


def from_config(config) -> datasets.Dataset:
    """`load_paired_folder` of `config.data.dir` as `config.data` sets it (the
    `sources.LOADERS` entry)."""
    data = config.data
    if not data.dir:
        raise ValueError("config.data.dir is empty; paired_folder needs the directory "
                         "holding manifest.csv")
    return load_paired_folder(
        data.dir, data_dir=data.data_dir or None, source=data.source, target=data.target,
        pairing=data.pairing, resolution=data.resolution,
        audio_sample_rate=data.audio_sample_rate, audio_seconds=data.audio_seconds)
