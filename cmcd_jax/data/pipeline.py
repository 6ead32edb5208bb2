"""grain input pipelines: per-record (paired) transforms, shuffling, batching.

A data source is anything indexable that returns records (dicts of numpy arrays), such as
`tfds.data_source(...)[split]`. Spatial modalities of one record share the same random crop
and flip so that paired inputs stay aligned; then each modality gets its own augmentation
(:mod:`cmcd_jax.data.modalities`: colour jitter of the image, contrast and offset of a depth
map, gain and time shift of audio). `clip_length` > 0 (a dataset's `clip_length`): clips
stored longer are cut to that many samples, a random window in training, the centre at
evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grain
import numpy as np

from cmcd_jax.data import modalities

#: The batch key of a frozen teacher's cached output (:func:`cached_teacher_batches`).
TEACHER_OUT = "teacher_out"


def to_input(modality: str, value: np.ndarray, clip_length: int = 0,
             rng: np.random.Generator | None = None) -> np.ndarray:
    """Raw record field -> network input: the modality's `to_input` (float32 (H, W, C) for
    images and maps, (T,) for audio; :mod:`cmcd_jax.data.modalities`), then its `window` of
    `clip_length` samples (random with `rng`) where it has one and `clip_length` > 0."""
    return cut(modality, modalities.get(modality).to_input(value), clip_length, rng)


def cut(modality: str, x: np.ndarray, clip_length: int,
        rng: np.random.Generator | None = None) -> np.ndarray:
    """Input `x` cut to `clip_length` samples by its modality's `window` (random with
    `rng`); as it is without a window or with `clip_length` 0."""
    window = modalities.get(modality).window
    return window(x, clip_length, rng) if clip_length and window else x


def is_spatial(modality: str, x: np.ndarray) -> bool:
    """Whether input `x` of `modality` is a map, cropped and flipped with its pair."""
    return modalities.get(modality).is_spatial(x)


def first_input(source, modality: str, clip_length: int = 0) -> np.ndarray:
    """The prepared `modality` input of the first record: fixes a model's input shape."""
    return to_input(modality, source[0][modality], clip_length)


def crop_indices(rng: np.random.Generator, size: int, min_scale: float) -> tuple:
    """Row and column indices of a random square crop (area >= min_scale) resized to `size`."""
    side = max(2, int(round(size * np.sqrt(rng.uniform(min_scale, 1.0)))))
    top, left = rng.integers(0, size - side + 1, size=2)
    grid = np.floor(np.arange(size) * side / size).astype(np.int64)
    cols = left + grid
    if rng.random() < 0.5:
        cols = cols[::-1]
    return top + grid, cols


def augment(rng: np.random.Generator, inputs: dict, min_scale: float,
            jitter: float) -> dict:
    """Augments one record's prepared inputs; spatial ones share one crop and flip."""
    return augment_view(rng, inputs, min_scale, jitter)[0]


def augment_view(rng: np.random.Generator, inputs: dict, min_scale: float,
                 jitter: float) -> tuple[dict, bool]:
    """:func:`augment`, and whether the spatial inputs' shared crop was mirrored."""
    out, mirrored = dict(inputs), False
    spatial = [k for k in inputs if is_spatial(k, inputs[k])]
    if spatial:
        rows, cols = crop_indices(rng, inputs[spatial[0]].shape[0], min_scale)
        mirrored = bool(cols[0] > cols[-1])
        for k in spatial:
            out[k] = inputs[k][rows][:, cols]
    out = {k: modalities.get(k).augment(rng, v, jitter) for k, v in out.items()}
    # Augmentations may compute in float64; integer maps (masks) keep their class ids.
    return {k: v.astype(np.float32) if v.dtype.kind == "f" else v
            for k, v in out.items()}, mirrored


def _prepare(record: dict, modalities: Sequence[str], clip_length: int,
             rng: np.random.Generator) -> dict:
    """A training record's inputs (random clip windows)."""
    return {m: to_input(m, record[m], clip_length, rng) for m in modalities}


def _batched(ds: grain.MapDataset, batch_size: int, seed: int,
             shard: tuple[int, int]) -> Iterator[dict]:
    """This process's part of every global batch: the records shuffled, endlessly repeated
    (reshuffled each epoch) and cut into global batches of `batch_size` x count rows, of
    which process `index` reads rows index x batch_size onwards (`shard` = (index, count)).
    The global batches, and so the training, do not depend on the number of processes."""
    index, count = shard
    if len(ds) < batch_size * count:
        raise ValueError(f"batch size {batch_size * count} exceeds the {len(ds)} records "
                         f"available")
    parts = ds.shuffle(seed=seed).repeat().batch(batch_size, drop_remainder=True)
    return iter(parts.slice(slice(index, None, count)).to_iter_dataset())


def two_view_batches(source, modality: str, batch_size: int, seed: int, *,
                     min_scale: float = 0.3, jitter: float = 0.4,
                     shard: tuple[int, int] = (0, 1), clip_length: int = 0) -> Iterator[dict]:
    """SimCLR batches {'view1', 'view2'} of one modality, two independent augmentations
    (each its own clip window)."""
    def view(x, rng):
        return augment(rng, {modality: cut(modality, x, clip_length, rng)}, min_scale,
                       jitter)[modality]

    def two_views(record, rng):
        x = to_input(modality, record[modality])  # Once: each view cuts and augments it.
        return {"view1": view(x, rng), "view2": view(x, rng)}
    ds = grain.MapDataset.source(source).random_map(two_views, seed=seed)
    return _batched(ds, batch_size, seed, shard)


def paired_batches(source, modalities: Sequence[str], batch_size: int, seed: int, *,
                   indices: Sequence[int] | None = None, min_scale: float = 0.3,
                   jitter: float = 0.4, extra: Sequence[str] = (),
                   shard: tuple[int, int] = (0, 1), clip_length: int = 0) -> Iterator[dict]:
    """Batches of aligned, jointly augmented modalities (plus raw `extra` fields, e.g. label)."""
    def transform(record, rng):
        out = augment(rng, _prepare(record, modalities, clip_length, rng), min_scale, jitter)
        out.update({k: np.asarray(record[k]) for k in extra})
        return out
    ds = grain.MapDataset.source(source)
    if indices is not None:
        ds = _subset(ds, indices)
    return _batched(ds.random_map(transform, seed=seed), batch_size, seed, shard)


def cached_teacher_batches(source, modalities: Sequence[str], table: np.ndarray,
                           batch_size: int, seed: int, *,
                           shard: tuple[int, int] = (0, 1),
                           clip_length: int = 0) -> Iterator[dict]:
    """The batches of ``paired_batches(source, modalities, batch_size, seed, min_scale=1,
    jitter=0, clip_length=clip_length)``, with the source input replaced by its frozen
    teacher's output.

    Un-cropped, the source's only augmentation is the shared random mirror, so
    ``table[i, m]`` (records x 2 x dim) holds the teacher's output on record ``i``'s
    source (``m = 0``) and on its mirror image (``m = 1``): a lookup instead of a forward
    pass. Batches are ``{target: ..., TEACHER_OUT: ...}`` (same order and target views).
    """
    source_key, target = modalities
    if not is_spatial(source_key, first_input(source, source_key)):
        raise ValueError(f"the {source_key!r} source is augmented on every draw; only "
                         f"spatial sources (maps cropped with their pair) can have cached "
                         f"outputs")
    if len(table) != len(source) or table.shape[1] != 2:
        raise ValueError(f"the teacher table has shape {table.shape}; expected "
                         f"({len(source)}, 2, dim): one row per record, plain and mirrored")

    def transform(index, rng):
        inputs = _prepare(source[int(index)], modalities, clip_length, rng)
        out, mirrored = augment_view(rng, inputs, 1.0, 0.0)
        return {target: out[target], TEACHER_OUT: table[int(index), int(mirrored)]}
    ds = grain.MapDataset.range(len(source)).random_map(transform, seed=seed)
    return _batched(ds, batch_size, seed, shard)


def _subset(ds: grain.MapDataset, indices: Sequence[int]) -> grain.MapDataset:
    indices = np.asarray(indices)
    return grain.MapDataset.range(len(indices)).map(lambda i: ds[int(indices[i])])


def label_paired_batches(targets, partners, source: str, target: str, batch_size: int,
                         seed: int, *, min_scale: float = 0.3,
                         shard: tuple[int, int] = (0, 1),
                         clip_length: int = 0) -> Iterator[dict]:
    """Batches pairing every `targets` record with a random `partners` record of the same
    class (its `source` field), drawn anew each epoch: pairs by label, not by instance."""
    by_class = class_indices(load_arrays(partners, (), ("label",))["label"])

    def transform(record, rng):
        label = int(record["label"])
        if label not in by_class:
            raise ValueError(f"class {label} has target records but no {source!r} record "
                             f"to pair with")
        partner = partners[int(rng.choice(by_class[label]))]
        return {m: augment(rng, _prepare(r, [m], clip_length, rng), min_scale, 0.0)[m]
                for m, r in ((source, partner), (target, record))}
    ds = grain.MapDataset.source(targets).random_map(transform, seed=seed)
    return _batched(ds, batch_size, seed, shard)


def class_indices(labels: np.ndarray) -> dict[int, np.ndarray]:
    """{class: indices of its records} (unlabelled records, label -1, left out)."""
    return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels) if c >= 0}


def load_arrays(source, modalities: Sequence[str], extra: Sequence[str] = (),
                indices: Sequence[int] | None = None, clip_length: int = 0) -> dict:
    """All (or the given) records, prepared without augmentation (centre clip windows),
    stacked into arrays."""
    indices = range(len(source)) if indices is None else indices
    records = [source[int(i)] for i in indices]
    out = {m: np.stack([to_input(m, r[m], clip_length) for r in records]) for m in modalities}
    out.update({k: np.stack([np.asarray(r[k]) for r in records]) for k in extra})
    return out


def few_shot_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """`per_class` random indices of every class (all of a class when it has fewer);
    unlabelled records (label -1) are never picked."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class]
             for c in np.unique(labels) if c >= 0]
    return np.sort(np.concatenate(picks))
