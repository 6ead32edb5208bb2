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

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

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

    def __post_init__(self):
        if self.pairing not in PAIRINGS:
            raise ValueError(f"pairing={self.pairing!r}; valid: {', '.join(PAIRINGS)}")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.pools)


def instance_paired(name: str, splits: Mapping[str, Any], modalities: tuple[str, ...],
                    **info) -> Dataset:
    """A `Dataset` whose every record holds every modality (one source per split)."""
    return Dataset(name, pools={m: dict(splits) for m in modalities}, pairs=dict(splits),
                   **info)
