"""Encoders, heads and a name -> constructor registry (jax/flax only)."""

from typing import Any

import flax.linen as nn

from cmcd_jax.models.audio import AudioEncoder, log_mel_spectrogram, mel_filterbank
from cmcd_jax.models.encoders import IMAGE_ENCODERS, BasicBlock, ConvNet, ResNet, ResNet18
from cmcd_jax.models.heads import EncoderWithHead, LinearClassifier, ProjectionHead
from cmcd_jax.models.vit import ViT

ENCODERS = {**IMAGE_ENCODERS, "audio": AudioEncoder}


def make_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Build the encoder registered under ``name`` with ``kwargs``; ValueError if unknown."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; valid: {', '.join(sorted(ENCODERS))}")
    return ENCODERS[name](**kwargs)


__all__ = [
    "AudioEncoder",
    "BasicBlock",
    "ConvNet",
    "ENCODERS",
    "EncoderWithHead",
    "IMAGE_ENCODERS",
    "LinearClassifier",
    "ProjectionHead",
    "ResNet",
    "ResNet18",
    "ViT",
    "log_mel_spectrogram",
    "make_encoder",
    "mel_filterbank",
]
