"""The dataset a config names, loaded through its registered loader and checked; its target
corrupted for the gap sweep."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from cmcd_jax.data import datasets, modalities

# config.dataset -> "module:function" of its loader: a function of the run's config returning
# a `datasets.Dataset`. Resolved on use, so loading one dataset imports its module alone, and
# no loader is imported here (loaders import `datasets`, never this module).
LOADERS = {
    "cmcd_shapes": "cmcd_jax.data.shapes:from_config",
    "paired_folder": "cmcd_jax.data.paired_folder:from_config",
    "spoken_digit_mnist": "cmcd_jax.data.recipes:from_config",
    "nyu_depth_v2": "cmcd_jax.data.recipes:from_config",
    "domainnet": "cmcd_jax.data.recipes:from_config",
    "sketchy": "cmcd_jax.data.recipes:from_config",
}


def loader(name: str) -> Callable[..., datasets.Dataset]:
    """The loader `LOADERS` registers for dataset `name`, its module imported."""
    if name not in LOADERS:
        raise ValueError(f"config.dataset={name!r}; valid: {', '.join(LOADERS)}")
    module, function = LOADERS[name].split(":")
    return getattr(importlib.import_module(module), function)


def corrupt(modality: str, value: np.ndarray, level: float,
            rng: np.random.Generator) -> np.ndarray:
    """`value` with its information degraded by `level` in [0, 1] (0: unchanged), the
    modality's way (:mod:`cmcd_jax.data.modalities`): sketch strokes erased with probability
    `level`, depth and other fields with Gaussian noise of `level` x their std, audio with
    white noise of RMS 3 x `level` x the clip's RMS. The gap sweep uses it to widen the
    distance between the modalities.
    """
    if level <= 0:
        return value
    return modalities.get(modality).corrupt(value, level, rng)


class Corrupted(datasets.Records):
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


def with_corrupted_target(dataset: datasets.Dataset, target: str, level: float,
                          seed: int) -> datasets.Dataset:
    """`dataset` whose `target` records (in pools and pairs) are corrupted at `level`."""
    if level <= 0:
        return dataset
    pools = {m: ({s: Corrupted(r, target, level, seed) for s, r in splits.items()}
                 if m == target else splits) for m, splits in dataset.pools.items()}
    pairs = {s: Corrupted(r, target, level, seed) for s, r in dataset.pairs.items()}
    return dataclasses.replace(dataset, pools=pools, pairs=pairs)


def load_dataset(config) -> datasets.Dataset:
    """The `Dataset` that `config.dataset` and `config.data` name (built on first use)."""
    data = config.data
    if config.dataset != "cmcd_shapes" and data.num_pairs:
        raise ValueError(f"config.data.num_pairs={data.num_pairs} sizes the embedded "
                         f"cmcd_shapes only; {config.dataset} has the pairs it has (set 0)")
    dataset = loader(config.dataset)(config)
    datasets.check_modalities(dataset.name, dataset.modalities, data.source, data.target)
    check_splits(dataset, data.source, data.target)
    if data.pairing not in datasets.PAIRINGS:
        raise ValueError(f"config.data.pairing={data.pairing!r}; valid: "
                         f"{', '.join(datasets.PAIRINGS)}")
    if data.pairing == "label" and dataset.pairing == "instance":
        if not dataset.num_classes:
            raise ValueError(f"config.data.pairing='label' needs labels; {dataset.name} has "
                             f"none")
        dataset = dataclasses.replace(dataset, pairs={}, pairing="label")
    return dataset


def check_splits(dataset: datasets.Dataset, source: str, target: str) -> None:
    """Both modalities need a train and a test split."""
    for modality in (source, target):
        missing = {"train", "test"} - set(dataset.pools[modality])
        if missing:
            raise ValueError(f"{dataset.name}: no {' or '.join(sorted(missing))} split "
                             f"holding {modality!r}")
