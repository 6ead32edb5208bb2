"""The modality table: what each modality is, in one entry.

An entry says how a stored field becomes a network input (`to_input`), whether it is a map
that is cropped and flipped together with its pair (`spatial`; None: when its input is an
(H, W, C) map), how a training view is augmented beyond that shared crop (`augment(rng, x,
strength)`; `strength` is SimCLR's `pretrain.colour_jitter`, 0 in the other stages), how the
gap sweep degrades it (`corrupt(value, level, rng)`, level in (0, 1]) and which encoder front
end reads it (`encoder`: 'image', the config's backbone on (H, W, C); 'audio', log-mel
spectrograms into it). A clip stored longer than the network's input (a paired folder's, with
`data.audio_seconds`) is cut to it by `window(x, length, rng)`: the centre at evaluation, a
random window in training (rng given); None: inputs are used as stored. A name without an
entry gets `generic(name)`. Register your own::

    modalities.register(modalities.Modality("thermal", spatial=True))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np


def _as_map(x: np.ndarray) -> np.ndarray:
    """A channel axis added to a 2-D map."""
    return x[..., None] if x.ndim == 2 else x


def generic_input(value: np.ndarray) -> np.ndarray:
    """uint8 scaled to [0, 1], other types as float32, a channel axis added to 2-D maps."""
    value = np.asarray(value)
    x = value.astype(np.float32) / 255.0 if value.dtype == np.uint8 else value.astype(np.float32)
    return _as_map(x)


def image_input(value: np.ndarray) -> np.ndarray:
    """uint8 -> float32 centred on 0.5 with scale 0.25."""
    return _as_map((np.asarray(value).astype(np.float32) / 255.0 - 0.5) / 0.25)


def depth_input(value: np.ndarray) -> np.ndarray:
    """Standardised over its valid pixels (finite, non-zero); invalid ones become 0."""
    x = np.asarray(value).astype(np.float32)
    valid = np.isfinite(x) & (x != 0)
    mean, std = (x[valid].mean(), x[valid].std()) if valid.any() else (0.0, 1.0)
    return _as_map(np.where(valid, (x - mean) / (std + 1e-6), 0.0).astype(np.float32))


def audio_input(value: np.ndarray) -> np.ndarray:
    return np.asarray(value).astype(np.float32)


def colour_jitter(rng: np.random.Generator, image: np.ndarray, strength: float) -> np.ndarray:
    """Brightness, contrast, saturation jitter and random grayscale on a normalised RGB image."""
    if strength <= 0:
        return image
    grey = image.mean(axis=-1, keepdims=True)
    if rng.random() < 0.2:
        return np.broadcast_to(grey, image.shape).copy()
    b, c, s = 1.0 + strength * rng.uniform(-1.0, 1.0, size=3)
    image = grey + s * (image - grey)
    image = image.mean() + c * (image - image.mean())
    return image + (b - 1.0) * 2.0


def depth_jitter(rng: np.random.Generator, depth: np.ndarray, strength: float) -> np.ndarray:
    """Contrast and offset jitter of a standardised depth map (colour jitter's analogue)."""
    if strength <= 0:
        return depth
    contrast, offset = 1.0 + strength * rng.uniform(-1.0, 1.0), strength * rng.uniform(-1.0, 1.0)
    return depth * contrast + offset


def augment_audio(rng: np.random.Generator, wave: np.ndarray, strength: float) -> np.ndarray:
    """Random gain and a random circular time shift of up to 10% of the clip (every stage)."""
    shift = int(rng.integers(-len(wave) // 10, len(wave) // 10 + 1))
    return np.roll(wave, shift) * rng.uniform(0.7, 1.3)


def clip_window(wave: np.ndarray, length: int, rng: np.random.Generator | None = None,
                margin: int = 0) -> np.ndarray:
    """`length` samples of `wave` (zeros outside it), and `margin` more either side: its
    centre (an odd surplus or shortfall falls at the end), or with `rng` a random window
    (a random crop of a longer clip; a shorter one placed at random)."""
    surplus = len(wave) - length
    if rng is not None:
        start = int(rng.integers(min(surplus, 0), max(surplus, 0) + 1))
    else:
        start = surplus // 2 if surplus >= 0 else -(-surplus // 2)
    low, high = start - margin, start + length + margin
    before = max(0, -low)
    return np.pad(wave, (before, max(0, high - len(wave))))[low + before:high + before]


def erase_strokes(value: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Each stroke pixel (any pixel unlike the background, the median value: light or dark
    strokes alike) erased with probability `level`."""
    background = np.median(value)
    erase = (value != background) & (rng.random(value.shape) < level)
    return np.where(erase, background, value).astype(value.dtype)


def depth_noise(value: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of `level` x the map's std on its valid pixels."""
    x = value.astype(np.float32)
    valid = np.isfinite(x) & (x != 0)
    scale = x[valid].std() if valid.any() else 0.0
    return np.where(valid, x + rng.normal(0, level * scale, x.shape), x).astype(np.float32)


def _noise(value: np.ndarray, level: float, rng: np.random.Generator,
           scale: float) -> np.ndarray:
    noisy = value.astype(np.float32) + rng.normal(0.0, level * scale, value.shape)
    if value.dtype == np.uint8:
        return np.clip(noisy, 0, 255).astype(np.uint8)
    return noisy.astype(np.float32)


def gaussian_noise(value: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of `level` x the field's std (uint8 fields clipped to [0, 255])."""
    return _noise(value, level, rng, value.astype(np.float32).std())


def white_noise(value: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """White noise of RMS 3 x `level` x the clip's RMS (SNR -20 log10(3 level) dB)."""
    return _noise(value, level, rng, 3.0 * np.sqrt(np.mean(value.astype(np.float32) ** 2)))


def _no_augmentation(rng: np.random.Generator, x: np.ndarray, strength: float) -> np.ndarray:
    return x


@dataclasses.dataclass(frozen=True)
class Modality:
    name: str
    spatial: bool | None = None
    to_input: Callable[[np.ndarray], np.ndarray] = generic_input
    augment: Callable = _no_augmentation
    corrupt: Callable = gaussian_noise
    encoder: str = "image"
    window: Callable | None = None

    def is_spatial(self, x: np.ndarray) -> bool:
        """Whether input `x` of this modality is cropped and flipped with its pair."""
        return self.spatial if self.spatial is not None else np.ndim(x) == 3


TABLE: dict[str, Modality] = {}


def register(modality: Modality) -> Modality:
    """Adds (or replaces) `modality`'s entry."""
    if modality.encoder not in ("image", "audio"):
        raise ValueError(f"modality {modality.name!r}: encoder={modality.encoder!r}; valid: "
                         f"image, audio")
    TABLE[modality.name] = modality
    return modality


def generic(name: str) -> Modality:
    """The entry of a modality nobody registered: `generic_input`, spatial when its input is
    an (H, W, C) map, no augmentation of its own, Gaussian noise in the gap sweep."""
    return Modality(name)


def get(name: str) -> Modality:
    return TABLE.get(name) or generic(name)


for _modality in (
        Modality("image", True, image_input, colour_jitter),
        Modality("sketch", True, corrupt=erase_strokes),
        Modality("depth", True, depth_input, depth_jitter, depth_noise),
        Modality("audio", False, audio_input, augment_audio, white_noise, encoder="audio",
                 window=clip_window),
        Modality("mask", True, to_input=np.asarray)):  # Class ids: kept as stored.
    register(_modality)
