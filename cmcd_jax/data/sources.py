"""Datasets as the stages see them: per-modality record pools and instance pairs.

Every loader (the embedded `cmcd_shapes`, a user's paired folder, the real TFDS recipes)
returns a `Dataset`. Records are dicts of numpy arrays whose fields are named by modality
and hold raw values: `image` uint8 (H, W, 3) or (H, W, 1); `sketch` uint8 (H, W); `depth`
float32 (H, W) in any unit, 0 or non-finite where invalid; `audio` float32 (T,) in [-1, 1];
any other modality a uint8 or float array of fixed shape; plus `label` (int) when labelled
and `mask` (uint8 (H, W) class map) when segmented. Within one pool every record has the same
shapes, so records batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from cmcd_jax import log

PAIRINGS = ("instance", "label")


class Records:
    """The records of `source` at `indices` (all when None): a light, indexable view."""

    def __init__(self, source: Any, indices: np.ndarray | None = None):
        self.source = source
        self.indices = None if indices is None else np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.source) if self.indices is None else len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.source[int(index if self.indices is None else self.indices[index])]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What the three stages read.

    pools: modality -> split -> records holding that modality (with `label` when
        `num_classes` > 0, `mask` when `has_mask`); stage 1 reads the source pool, stage 3
        the target pool.
    pairs: split -> records holding both the source and the target modality of one instance
        (stage 2 and retrieval); empty under label pairing, where stage 2 pairs each target
        record with a random source record of the same class, re-drawn every epoch.
    """

    name: str
    pools: Mapping[str, Mapping[str, Any]]
    pairs: Mapping[str, Any]
    pairing: str = "instance"
    num_classes: int = 0
    has_mask: bool = False
    audio_sample_rate: float = 8000.0
    version: str = ""

    def __post_init__(self):
        if self.pairing not in PAIRINGS:
            raise ValueError(f"pairing={self.pairing!r}; valid: {', '.join(PAIRINGS)}")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.pools)


class Concatenated:
    """Several record sources read one after another, as one."""

    def __init__(self, *parts: Any):
        self.parts = parts
        self.offsets = np.cumsum([0, *map(len, parts)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[part][index - int(self.offsets[part])]


UNPAIRED = "unpaired"


def unlabelled_records(dataset: Dataset, modality: str):
    """Every train record of `modality` a self-supervised stage may see: its `train` split
    and, where the pool has one, its `unpaired` split (labels are never read)."""
    pool = dataset.pools[modality]
    parts = [pool["train"], *([pool[UNPAIRED]] if UNPAIRED in pool else [])]
    return parts[0] if len(parts) == 1 else Concatenated(*parts)


def data_sizes(dataset: Dataset, source: str, target: str) -> dict:
    """The regime actually used: step 1's source records (M, of which unpaired), step 2's
    train pairs (m) and the target's train records."""
    unpaired = dataset.pools[source].get(UNPAIRED)
    return {"step1_source": len(unlabelled_records(dataset, source)),
            "unpaired_source": 0 if unpaired is None else len(unpaired),
            "pairs": len(dataset.pairs["train"]) if "train" in dataset.pairs else 0,
            "target_train": len(dataset.pools[target]["train"])}


def instance_paired(name: str, splits: Mapping[str, Any], modalities: tuple[str, ...],
                    **info) -> Dataset:
    """A `Dataset` whose every record holds every modality (one source per split)."""
    return Dataset(name, pools={m: dict(splits) for m in modalities}, pairs=dict(splits),
                   **info)


def corrupt(modality: str, value: np.ndarray, level: float,
            rng: np.random.Generator) -> np.ndarray:
    """`value` with its information degraded by `level` in [0, 1] (0: unchanged).

    sketch: each stroke pixel (any pixel unlike the background, the median value: light or
    dark strokes alike) erased with probability `level`; depth: Gaussian noise of
    `level` x the map's std on valid pixels; audio: white noise of RMS 3 x `level` x the
    clip's RMS (SNR -20 log10(3 level) dB); any other modality: Gaussian noise of `level` x
    its std. The gap sweep uses it to widen the distance between the modalities.
    """
    if level <= 0:
        return value
    if modality == "sketch":  # Strokes: pixels unlike the background (the median value).
        background = np.median(value)
        erase = (value != background) & (rng.random(value.shape) < level)
        return np.where(erase, background, value).astype(value.dtype)
    x = value.astype(np.float32)
    if modality == "depth":
        valid = np.isfinite(x) & (x != 0)
        scale = x[valid].std() if valid.any() else 0.0
        return np.where(valid, x + rng.normal(0, level * scale, x.shape), x).astype(np.float32)
    scale = (3.0 * np.sqrt(np.mean(x ** 2))) if modality == "audio" else x.std()
    noisy = x + rng.normal(0.0, level * scale, x.shape)
    if value.dtype == np.uint8:
        return np.clip(noisy, 0, 255).astype(np.uint8)
    return noisy.astype(np.float32)


class Corrupted(Records):
    """`records` with field `modality` corrupted at `level`, the same way on every read."""

    def __init__(self, records: Any, modality: str, level: float, seed: int):
        super().__init__(records)
        self.modality, self.level, self.seed = modality, level, seed

    def __getitem__(self, index: int) -> dict:
        record = dict(self.source[int(index)])
        rng = np.random.default_rng((self.seed, int(index)))
        record[self.modality] = corrupt(self.modality, np.asarray(record[self.modality]),
                                        self.level, rng)
        return record


def with_corrupted_target(dataset: Dataset, target: str, level: float, seed: int) -> Dataset:
    """`dataset` whose `target` records (in pools and pairs) are corrupted at `level`."""
    if level <= 0:
        return dataset
    pools = {m: ({s: Corrupted(r, target, level, seed) for s, r in splits.items()}
                 if m == target else splits) for m, splits in dataset.pools.items()}
    pairs = {s: Corrupted(r, target, level, seed) for s, r in dataset.pairs.items()}
    return dataclasses.replace(dataset, pools=pools, pairs=pairs)


def build_once(builder, what: str) -> None:
    """Prepares a TFDS `builder` whose records this machine makes itself (nothing is
    downloaded), saying what is built and how long it took instead of TFDS's 'Downloading
    and preparing dataset Unknown size' lines; a prepared one is reused silently."""
    if builder.is_prepared():
        return
    log.say(f"building {what} in {builder.data_dir} (once: later runs on this data dir reuse "
            f"it)")
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare()
    log.say(f"built {what} in {time.perf_counter() - start:.0f}s")


def load_dataset(config) -> Dataset:
    """The `Dataset` that `config.dataset` and `config.data` name (built on first use)."""
    data = config.data
    if config.dataset != "cmcd_shapes" and data.num_pairs:
        raise ValueError(f"config.data.num_pairs={data.num_pairs} sizes the embedded "
                         f"cmcd_shapes only; {config.dataset} has the pairs it has (set 0)")
    if config.dataset == "cmcd_shapes":
        from cmcd_jax.data import shapes
        check_modalities("cmcd_shapes", shapes.MODALITIES, data.source, data.target)
        dataset = shapes.load_dataset(data.config_name, data.data_dir or None,
                                      num_unpaired=data.source_pool, num_pairs=data.num_pairs)
    elif config.dataset == "paired_folder":
        from cmcd_jax.data import paired_folder
        if not data.dir:
            raise ValueError("config.data.dir is empty; paired_folder needs the directory "
                             "holding manifest.csv")
        dataset = paired_folder.load_paired_folder(
            data.dir, data_dir=data.data_dir or None, source=data.source, target=data.target,
            pairing=data.pairing, resolution=data.resolution,
            audio_sample_rate=data.audio_sample_rate, audio_seconds=data.audio_seconds)
    else:
        from cmcd_jax.data import recipes
        if config.dataset not in recipes.RECIPES:
            valid = ", ".join(("cmcd_shapes", "paired_folder", *recipes.RECIPES))
            raise ValueError(f"config.dataset={config.dataset!r}; valid: {valid}")
        dataset = recipes.RECIPES[config.dataset](data.data_dir or None, data.resolution,
                                                  data.source, data.target)
    check_modalities(dataset.name, dataset.modalities, data.source, data.target)
    check_splits(dataset, data.source, data.target)
    if data.pairing not in PAIRINGS:
        raise ValueError(f"config.data.pairing={data.pairing!r}; valid: {', '.join(PAIRINGS)}")
    if data.pairing == "label" and dataset.pairing == "instance":
        if not dataset.num_classes:
            raise ValueError(f"config.data.pairing='label' needs labels; {dataset.name} has "
                             f"none")
        dataset = dataclasses.replace(dataset, pairs={}, pairing="label")
    return dataset


def check_modalities(name: str, modalities, source: str, target: str) -> None:
    """Source and target must be two different modalities of the dataset."""
    if source == target:
        raise ValueError(f"config.data.source and config.data.target are both {source!r}; "
                         f"distillation needs two modalities")
    for key, modality in (("source", source), ("target", target)):
        if modality not in modalities:
            raise ValueError(f"config.data.{key}={modality!r}; valid: "
                             f"{', '.join(modalities)} ({name})")


def check_splits(dataset: Dataset, source: str, target: str) -> None:
    """Both modalities need a train and a test split."""
    for modality in (source, target):
        missing = {"train", "test"} - set(dataset.pools[modality])
        if missing:
            raise ValueError(f"{dataset.name}: no {' or '.join(sorted(missing))} split "
                             f"holding {modality!r}")
