"""Log-mel front end (pure jax.numpy) and the audio encoder built on a 2-D backbone."""

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict

from cmcd_jax.models.encoders import IMAGE_ENCODERS


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """HTK mel scale: ``2595 * log10(1 + hz / 700)``."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_band_edges(n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """``(n_mels + 2,)`` Hz points equally spaced in mel; filter ``m`` peaks at entry ``m + 1``."""
    return mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))


def mel_filterbank(
    sample_rate: float, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: Optional[float] = None
) -> np.ndarray:
    """``(n_fft // 2 + 1, n_mels)`` HTK triangular filters (peak 1, no area normalisation)."""
    fmax = sample_rate / 2 if fmax is None else fmax
    edges = mel_band_edges(n_mels, fmin, fmax)
    freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)[:, None]
    lower, centre, upper = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window of length ``n`` (as ``torch.hann_window``)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


def frame(waveform: jnp.ndarray, n_fft: int, hop: int) -> jnp.ndarray:
    """``(N, T) -> (N, 1 + (T - n_fft) // hop, n_fft)`` overlapping frames (no padding)."""
    num_frames = 1 + (waveform.shape[-1] - n_fft) // hop
    if num_frames < 1:
        raise ValueError(f"waveform length {waveform.shape[-1]} < n_fft {n_fft}")
    index = hop * np.arange(num_frames)[:, None] + np.arange(n_fft)[None, :]
    return waveform[..., index]


def log_mel_spectrogram(
    waveform: jnp.ndarray,
    sample_rate: float,
    n_fft: int = 256,
    hop: int = 64,
    n_mels: int = 32,
    fmin: float = 0.0,
    fmax: Optional[float] = None,
    eps: float = 1e-6,
) -> jnp.ndarray:
    """``(N, T)`` waveform -> ``(N, 1 + (T - n_fft) // hop, n_mels)`` log-mel power.

    Hann-windowed frames (no centre padding), ``|rfft|^2``, HTK mel filters, ``log(eps + .)``.
    """
    frames = frame(jnp.asarray(waveform, jnp.float32), n_fft, hop) * hann_window(n_fft)
    power = jnp.abs(jnp.fft.rfft(frames, axis=-1)) ** 2
    mel = power @ mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
    return jnp.log(eps + mel)


def normalize_per_example(x: jnp.ndarray, eps: float = 1e-5) -> jnp.ndarray:
    """Zero-mean, unit-std per example over all non-batch axes."""
    axes = tuple(range(1, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    std = x.std(axis=axes, keepdims=True)
    return (x - mean) / (std + eps)


class AudioEncoder(nn.Module):
    """Waveform ``(N, T)`` -> normalised log-mel image ``(N, frames, n_mels, 1)`` -> 2-D backbone.

    ``backbone`` names an image encoder (``'convnet'`` or ``'resnet18'``) built with
    ``backbone_kwargs``; its parameters sit under ``'backbone'``.
    """

    sample_rate: float = 8000
    n_mels: int = 32
    n_fft: int = 256
    hop: int = 64
    backbone: str = "convnet"
    backbone_kwargs: Mapping[str, Any] = FrozenDict()

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, train: bool, return_feature_map: bool = False
    ) -> jnp.ndarray:
        """``(N, T) -> (N, C)`` features, or the backbone's ``(N, h, w, C)`` map."""
        spec = log_mel_spectrogram(x, self.sample_rate, self.n_fft, self.hop, self.n_mels)
        image = normalize_per_example(spec)[..., None]
        if self.backbone not in IMAGE_ENCODERS:
            valid = ", ".join(sorted(IMAGE_ENCODERS))
            raise ValueError(f"unknown audio backbone {self.backbone!r}; valid: {valid}")
        backbone = IMAGE_ENCODERS[self.backbone](**self.backbone_kwargs, name="backbone")
        return backbone(image, train, return_feature_map=return_feature_map)
