"""grain input pipelines: per-record (paired) transforms, shuffling, batching.

A data source is anything indexable that returns records (dicts of numpy arrays), such as
`tfds.data_source(...)[split]`. Spatial modalities of one record share the same random crop
and flip so that paired inputs stay aligned; jitter touches the RGB image's colours and a
depth map's contrast and offset.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grain
import numpy as np

SPATIAL = ("image", "sketch", "depth", "mask")

#: The batch key of a frozen teacher's cached output (:func:`cached_teacher_batches`).
TEACHER_OUT = "teacher_out"


def to_input(modality: str, value: np.ndarray) -> np.ndarray:
    """Raw record field -> float32 network input: (H,W,C) for images and maps, (T,) for audio.

    Depth is standardised over its valid pixels (finite, non-zero); invalid ones become 0.
    Modalities without a rule of their own: uint8 scaled to [0, 1], floats as stored, a
    channel axis added to 2-D maps.
    """
    value = np.asarray(value)
    if modality == "audio":
        return value.astype(np.float32)
    if modality == "image":
        x = (value.astype(np.float32) / 255.0 - 0.5) / 0.25
    elif modality == "depth":
        x = value.astype(np.float32)
        valid = np.isfinite(x) & (x != 0)
        mean, std = (x[valid].mean(), x[valid].std()) if valid.any() else (0.0, 1.0)
        x = np.where(valid, (x - mean) / (std + 1e-6), 0.0).astype(np.float32)
    elif value.dtype == np.uint8:
        x = value.astype(np.float32) / 255.0
    else:
        x = value.astype(np.float32)
    return x[..., None] if x.ndim == 2 else x


def first_input(source, modality: str) -> np.ndarray:
    """The prepared `modality` input of the first record: fixes a model's input shape."""
    return to_input(modality, source[0][modality])


def crop_indices(rng: np.random.Generator, size: int, min_scale: float) -> tuple:
    """Row and column indices of a random square crop (area >= min_scale) resized to `size`."""
    side = max(2, int(round(size * np.sqrt(rng.uniform(min_scale, 1.0)))))
    top, left = rng.integers(0, size - side + 1, size=2)
    grid = np.floor(np.arange(size) * side / size).astype(np.int64)
    cols = left + grid
    if rng.random() < 0.5:
        cols = cols[::-1]
    return top + grid, cols


def colour_jitter(rng: np.random.Generator, image: np.ndarray, strength: float) -> np.ndarray:
    """Brightness, contrast, saturation jitter and random grayscale on a normalised RGB image."""
    grey = image.mean(axis=-1, keepdims=True)
    if rng.random() < 0.2:
        return np.broadcast_to(grey, image.shape).copy()
    b, c, s = 1.0 + strength * rng.uniform(-1.0, 1.0, size=3)
    image = grey + s * (image - grey)
    image = image.mean() + c * (image - image.mean())
    return image + (b - 1.0) * 2.0


def depth_jitter(rng: np.random.Generator, depth: np.ndarray, strength: float) -> np.ndarray:
    """Contrast and offset jitter of a standardised depth map (colour jitter's analogue)."""
    contrast, offset = 1.0 + strength * rng.uniform(-1.0, 1.0), strength * rng.uniform(-1.0, 1.0)
    return depth * contrast + offset


def augment_audio(rng: np.random.Generator, wave: np.ndarray) -> np.ndarray:
    """Random gain and a random circular time shift of up to 10% of the clip."""
    shift = int(rng.integers(-len(wave) // 10, len(wave) // 10 + 1))
    return np.roll(wave, shift) * rng.uniform(0.7, 1.3)


def augment(rng: np.random.Generator, inputs: dict, min_scale: float,
            jitter: float) -> dict:
    """Augments one record's prepared inputs; spatial ones share one crop and flip."""
    return augment_view(rng, inputs, min_scale, jitter)[0]


def augment_view(rng: np.random.Generator, inputs: dict, min_scale: float,
                 jitter: float) -> tuple[dict, bool]:
    """:func:`augment`, and whether the spatial inputs' shared crop was mirrored."""
    out, mirrored = dict(inputs), False
    spatial = [k for k in inputs if k in SPATIAL]
    if spatial:
        rows, cols = crop_indices(rng, inputs[spatial[0]].shape[0], min_scale)
        mirrored = bool(cols[0] > cols[-1])
        for k in spatial:
            out[k] = inputs[k][rows][:, cols]
    if "image" in out and jitter > 0:
        out["image"] = colour_jitter(rng, out["image"], jitter)
    if "depth" in out and jitter > 0:
        out["depth"] = depth_jitter(rng, out["depth"], jitter)
    if "audio" in out:
        out["audio"] = augment_audio(rng, out["audio"])
    return {k: v.astype(np.float32) if k != "mask" else v for k, v in out.items()}, mirrored


def _prepare(record: dict, modalities: Sequence[str]) -> dict:
    return {m: to_input(m, record[m]) for m in modalities}


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
                     shard: tuple[int, int] = (0, 1)) -> Iterator[dict]:
    """SimCLR batches {'view1', 'view2'} of one modality, two independent augmentations."""
    def two_views(record, rng):
        x = _prepare(record, [modality])
        return {"view1": augment(rng, x, min_scale, jitter)[modality],
                "view2": augment(rng, x, min_scale, jitter)[modality]}
    ds = grain.MapDataset.source(source).random_map(two_views, seed=seed)
    return _batched(ds, batch_size, seed, shard)


def paired_batches(source, modalities: Sequence[str], batch_size: int, seed: int, *,
                   indices: Sequence[int] | None = None, min_scale: float = 0.3,
                   jitter: float = 0.4, extra: Sequence[str] = (),
                   shard: tuple[int, int] = (0, 1)) -> Iterator[dict]:
    """Batches of aligned, jointly augmented modalities (plus raw `extra` fields, e.g. label)."""
    def transform(record, rng):
        out = augment(rng, _prepare(record, modalities), min_scale, jitter)
        out.update({k: np.asarray(record[k]) for k in extra})
        return out
    ds = grain.MapDataset.source(source)
    if indices is not None:
        ds = _subset(ds, indices)
    return _batched(ds.random_map(transform, seed=seed), batch_size, seed, shard)


def cached_teacher_batches(source, modalities: Sequence[str], table: np.ndarray,
                           batch_size: int, seed: int, *,
                           shard: tuple[int, int] = (0, 1)) -> Iterator[dict]:
    """The batches of ``paired_batches(source, modalities, batch_size, seed, min_scale=1,
    jitter=0)``, with the source input replaced by its frozen teacher's output.

    Un-cropped, the source's only augmentation is the shared random mirror, so
    ``table[i, m]`` (records x 2 x dim) holds the teacher's output on record ``i``'s
    source (``m = 0``) and on its mirror image (``m = 1``): a lookup instead of a forward
    pass. Batches are ``{target: ..., TEACHER_OUT: ...}`` (same order and target views).
    """
    source_key, target = modalities
    if source_key not in SPATIAL:
        raise ValueError(f"the {source_key!r} source is augmented on every draw; only "
                         f"spatial sources ({', '.join(SPATIAL)}) can have cached outputs")
    if len(table) != len(source) or table.shape[1] != 2:
        raise ValueError(f"the teacher table has shape {table.shape}; expected "
                         f"({len(source)}, 2, dim): one row per record, plain and mirrored")

    def transform(index, rng):
        out, mirrored = augment_view(rng, _prepare(source[int(index)], modalities), 1.0, 0.0)
        return {target: out[target], TEACHER_OUT: table[int(index), int(mirrored)]}
    ds = grain.MapDataset.range(len(source)).random_map(transform, seed=seed)
    return _batched(ds, batch_size, seed, shard)


def _subset(ds: grain.MapDataset, indices: Sequence[int]) -> grain.MapDataset:
    indices = np.asarray(indices)
    return grain.MapDataset.range(len(indices)).map(lambda i: ds[int(indices[i])])


def label_paired_batches(targets, partners, source: str, target: str, batch_size: int,
                         seed: int, *, min_scale: float = 0.3,
                         shard: tuple[int, int] = (0, 1)) -> Iterator[dict]:
    """Batches pairing every `targets` record with a random `partners` record of the same
    class (its `source` field), drawn anew each epoch: pairs by label, not by instance."""
    by_class = class_indices(load_arrays(partners, (), ("label",))["label"])

    def transform(record, rng):
        label = int(record["label"])
        if label not in by_class:
            raise ValueError(f"class {label} has target records but no {source!r} record "
                             f"to pair with")
        partner = partners[int(rng.choice(by_class[label]))]
        return {source: augment(rng, _prepare(partner, [source]), min_scale, 0.0)[source],
                target: augment(rng, _prepare(record, [target]), min_scale, 0.0)[target]}
    ds = grain.MapDataset.source(targets).random_map(transform, seed=seed)
    return _batched(ds, batch_size, seed, shard)


def class_indices(labels: np.ndarray) -> dict[int, np.ndarray]:
    """{class: indices of its records} (unlabelled records, label -1, left out)."""
    return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels) if c >= 0}


def load_arrays(source, modalities: Sequence[str], extra: Sequence[str] = (),
                indices: Sequence[int] | None = None) -> dict:
    """All (or the given) records, prepared without augmentation, stacked into arrays."""
    indices = range(len(source)) if indices is None else indices
    records = [source[int(i)] for i in indices]
    out = {m: np.stack([to_input(m, r[m]) for r in records]) for m in modalities}
    out.update({k: np.stack([np.asarray(r[k]) for r in records]) for k in extra})
    return out


def few_shot_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """`per_class` random indices of every class (all of a class when it has fewer);
    unlabelled records (label -1) are never picked."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class]
             for c in np.unique(labels) if c >= 0]
    return np.sort(np.concatenate(picks))
