"""A small paired folder of ordinary files (PNG, NPY, WAV, masks, manifest.csv) for tests."""

from __future__ import annotations

import csv
import os
import pathlib
import wave

import numpy as np
from PIL import Image

CLASS_NAMES = ("zebra", "apple", "mango")  # Not sorted: the loader's ids sort them.
SPATIAL = ("image", "sketch", "depth")


def write_wav(path: pathlib.Path, samples: np.ndarray, rate: int) -> None:
    """Writes float samples in [-1, 1] ((T,) mono or (T, C)) as 16-bit PCM."""
    frames = np.round(np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(os.fspath(path), "wb") as f:
        f.setnchannels(1 if frames.ndim == 1 else frames.shape[1])
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(frames.tobytes())


def _square(rng: np.random.Generator, size: int) -> np.ndarray:
    side = size // 2
    top, left = rng.integers(0, size - side + 1, size=2)
    inside = np.zeros((size, size), bool)
    inside[top:top + side, left:left + side] = True
    return inside


def _file(path: pathlib.Path, column: str, index: int, extension: str) -> str:
    """`<column>/<column>_<index>.<extension>`, its folder created under `path`."""
    (path / column).mkdir(exist_ok=True)
    return f"{column}/{column}_{index:03d}{extension}"


def _write(path: pathlib.Path, modality: str, index: int, label: int, inside: np.ndarray,
           rng: np.random.Generator, audio_sample_rate: int) -> str:
    """Writes one modality of one sample under `path`; returns its relative file name."""
    size = inside.shape[0]
    noise = rng.integers(0, 40, size=(size, size, 3))
    if modality == "image" and index % 2 == 0:
        colour = np.eye(3, dtype=np.int64)[label] * 200
        image = Image.fromarray((noise + inside[..., None] * colour).astype(np.uint8), "RGB")
    elif modality == "image":
        image = Image.fromarray((noise[..., 0] + inside * 70 * (label + 1)).astype(np.uint8),
                                "L")
    elif modality == "sketch":
        outline = inside ^ np.roll(inside, 1, axis=(0, 1))
        image = Image.fromarray(outline.astype(np.uint8) * 255, "L")
    elif modality == "audio":
        stereo = index % 3 == 2
        rate = audio_sample_rate // 2 if stereo else audio_sample_rate
        t = np.arange(int(rate * (0.05 + 0.01 * (index % 4)))) / rate
        tone = 0.5 * np.sin(2 * np.pi * 220 * (label + 1) * t)
        relative = _file(path, modality, index, ".wav")
        write_wav(path / relative, np.stack([tone, 0.5 * tone], 1) if stereo else tone, rate)
        return relative
    else:
        relative = _file(path, modality, index, ".npy")
        if modality == "depth":
            depth = 1.0 + inside * 0.5 * (label + 1) + rng.normal(0, 0.01, inside.shape)
            array = depth.astype(np.float32 if index % 2 == 0 else np.float64)
        else:
            array = rng.normal(size=(size, size, 2)).astype(np.float32)
        np.save(path / relative, array)
        return relative
    relative = _file(path, modality, index, ".png")
    image.save(path / relative)
    return relative


def _write_mask(path: pathlib.Path, index: int, classes: np.ndarray) -> str:
    """Writes a class map as a PNG (even `index`) or a uint8 NPY (odd)."""
    relative = _file(path, "mask", index, ".npy" if index % 2 else ".png")
    if index % 2:
        np.save(path / relative, classes)
    else:
        Image.fromarray(classes, "L").save(path / relative)
    return relative


def make_paired_folder(path: str | os.PathLike, *, num_train: int = 6, num_test: int = 4,
                       modalities: tuple[str, ...] = ("image", "depth", "sketch", "audio"),
                       with_mask: bool = True, unpaired_rows: int = 2,
                       label_style: str | None = "name", size: int = 16,
                       audio_sample_rate: int = 16000, seed: int = 0) -> pathlib.Path:
    """Writes a paired folder at `path` and returns it.

    Each split holds `num_train` / `num_test` samples with every modality plus
    `unpaired_rows` samples with only the first (even ones) or the last (odd ones)
    modality; manifest rows come shuffled. Sample i has class i % 3: a square whose colour
    (image), outline (sketch), height (depth) and tone pitch (audio) follow the class.
    Images alternate RGB and grayscale PNGs, depth maps float32 and float64 NPYs, masks
    (the square = class + 1, on rows holding an image, sketch or depth) PNGs and uint8 NPYs;
    clip lengths vary and every third clip is stereo at half `audio_sample_rate`. Other
    modality names get float32 (size, size, 2) NPYs. label_style: "name" (CLASS_NAMES),
    "int" (class ids) or None (no label column).
    """
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    header = ["split", *modalities, *(["mask"] if with_mask else []),
              *(["label"] if label_style else [])]
    rows = []
    index = 0
    for split, num_paired in (("train", num_train), ("test", num_test)):
        for i in range(num_paired + unpaired_rows):
            label = i % 3
            unpaired = i - num_paired
            kept = (modalities if unpaired < 0 else
                    modalities[:1] if unpaired % 2 == 0 else modalities[-1:])
            inside = _square(rng, size)
            row = {"split": split, "label": CLASS_NAMES[label] if label_style == "name"
                   else str(label)}
            for m in kept:
                row[m] = _write(path, m, index, label, inside, rng, audio_sample_rate)
            if with_mask and set(kept) & set(SPATIAL):
                row["mask"] = _write_mask(path, index, (inside * (label + 1)).astype(np.uint8))
            rows.append(row)
            index += 1
    with open(path / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i in rng.permutation(len(rows)):
            writer.writerow([rows[i].get(column, "") for column in header])
    return path
