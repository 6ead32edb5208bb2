"""File readers shared by the loaders: PCM .wav clips as mono float samples."""

from __future__ import annotations

import math
import os
import wave
from typing import IO

import numpy as np
from scipy import signal


def _pcm(data: bytes, width: int) -> np.ndarray:
    """Little-endian PCM samples of `width` bytes -> float64 in [-1, 1)."""
    if width == 1:
        return (np.frombuffer(data, np.uint8) - 128.0) / 128.0
    if width == 3:
        padded = np.zeros((len(data) // 3, 4), np.uint8)
        padded[:, 1:] = np.frombuffer(data, np.uint8).reshape(-1, 3)
        return (padded.view("<i4")[:, 0] >> 8) / 2.0 ** 23
    if width in (2, 4):
        return np.frombuffer(data, f"<i{width}") / 2.0 ** (8 * width - 1)
    raise ValueError(f"unsupported sample width: {8 * width} bits")


def read_wav(file: str | os.PathLike | IO[bytes]) -> tuple[np.ndarray, int]:
    """A PCM .wav file (path or binary file object) as mono float64 samples in [-1, 1]
    (channels averaged) and its rate."""
    with wave.open(file if hasattr(file, "read") else os.fspath(file), "rb") as f:
        width, channels, rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
        data = f.readframes(f.getnframes())
    samples = _pcm(data, width).reshape(-1, channels).mean(axis=1)
    if not samples.size:
        raise ValueError("the clip has no samples")
    return samples, rate


def wav_rate(file: str | os.PathLike) -> int:
    """The sample rate of a .wav file (its header only is read)."""
    with wave.open(os.fspath(file), "rb") as f:
        return f.getframerate()


def resample(samples: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """`samples` at `rate` -> float32 at `new_rate` (polyphase filter), clipped to [-1, 1]."""
    if rate != new_rate:
        g = math.gcd(rate, new_rate)
        samples = signal.resample_poly(samples, new_rate // g, rate // g)
    return np.clip(samples, -1.0, 1.0).astype(np.float32)
