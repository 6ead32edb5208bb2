"""The `Dataset` contract: what every loader returns and the stages read.

Every loader (the embedded `cmcd_shapes`, a user's paired folder, the real TFDS recipes)
returns a `Dataset` and is registered by name in `sources.LOADERS`; loaders import this
module, never `sources`. Records are dicts of numpy arrays whose fields are named by modality
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
    clip_length: samples of an audio input; clips stored longer (with a margin either side)
        are cut to it, at random in training (0: clips are used as stored).
    """

    name: str
    pools: Mapping[str, Mapping[str, Any]]
    pairs: Mapping[str, Any]
    pairing: str = "instance"
    num_classes: int = 0
    has_mask: bool = False
    audio_sample_rate: float = 8000.0
    clip_length: int = 0
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


def check_modalities(name: str, modalities, source: str, target: str) -> None:
    """Source and target must be two different modalities of the dataset."""
    if source == target:
        raise ValueError(f"config.data.source and config.data.target are both {source!r}; "
                         f"distillation needs two modalities")
    for key, modality in (("source", source), ("target", target)):
        if modality not in modalities:
            raise ValueError(f"config.data.{key}={modality!r}; valid: "
                             f"{', '.join(modalities)} ({name})")


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
