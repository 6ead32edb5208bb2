"""Heads on top of pooled encoder features, and the encoder+head composition."""

from typing import Tuple

import flax.linen as nn
import jax.numpy as jnp

from cmcd_jax.models.encoders import Dtype, batch_norm


class ProjectionHead(nn.Module):
    """SimCLR-style projection MLP: Dense-[BN]-ReLU-Dense, ``(N, D) -> (N, out_dim)``."""

    hidden_dim: int = 512
    out_dim: int = 128
    use_bn: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """``(N, D) -> (N, out_dim)`` float32; ``train`` only matters with ``use_bn``."""
        x = nn.Dense(self.hidden_dim, use_bias=not self.use_bn, dtype=self.dtype)(x)
        if self.use_bn:
            x = batch_norm(train, self.dtype)(x)
        x = nn.Dense(self.out_dim, dtype=self.dtype)(nn.relu(x))
        return x.astype(jnp.float32)


class LinearClassifier(nn.Module):
    """A single Dense layer: ``(N, D) -> (N, num_classes)`` float32 logits."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """``train`` is accepted for a uniform head interface and unused."""
        del train
        return nn.Dense(self.num_classes)(x).astype(jnp.float32)


class EncoderWithHead(nn.Module):
    """``encoder`` then ``head``; variables are ``{'encoder': ..., 'head': ...}`` per collection."""

    encoder: nn.Module
    head: nn.Module

    def __call__(self, x: jnp.ndarray, train: bool) -> Tuple[jnp.ndarray, jnp.ndarray]:
        """``x -> (features (N, D), head output (N, K))``."""
        features = self.encoder(x, train=train)
        return features, self.head(features, train=train)
