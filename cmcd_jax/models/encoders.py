"""2-D convolutional encoders (Flax Linen) for images, sketches and depth maps, and the registry
of image encoders (these and :class:`~cmcd_jax.models.vit.ViT`).

Every encoder maps an NHWC float batch with any channel count and spatial size >= 8 to
pooled float32 features ``(N, C)``; ``return_feature_map=True`` instead returns the last
``(N, h, w, C)`` map before global average pooling (for dense heads). BatchNorm statistics
live in the ``batch_stats`` collection and are updated only when ``train=True``.
"""

from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

# The encoders' one CPU-specific piece: nn.Conv's drop-in (same parameters and outputs) with a
# faster weight gradient on XLA:CPU, and nn.Conv's computation on TPU/GPU.
from cmcd_jax.cpu.conv import Conv
from cmcd_jax.models.vit import ViT

Dtype = Any

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# He-normal (fan_out) initialisation, as in torchvision ResNets.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def batch_norm(train: bool, dtype: Dtype, **kwargs) -> nn.BatchNorm:
    """BatchNorm using batch statistics when training, running averages otherwise."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        **kwargs,
    )


def _conv(features: int, kernel: int, strides: int, dtype: Dtype, **kwargs) -> Conv:
    """Bias-free square conv with SAME padding (a BatchNorm always follows)."""
    return Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding="SAME",
        use_bias=False,
        kernel_init=conv_init,
        dtype=dtype,
        **kwargs,
    )


def _pool_features(x: jnp.ndarray) -> jnp.ndarray:
    """Global average pool ``(N, h, w, C) -> (N, C)`` in float32."""
    return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


class ConvNet(nn.Module):
    """Small VGG-style convnet for quick CPU runs.

    Stage ``i`` is ``convs_per_stage`` x (conv3x3-BN-ReLU) with ``widths[i]`` filters; a 2x2
    max-pool (stride 2) precedes every stage but the first, so the feature map has stride
    ``2 ** (len(widths) - 1)`` (4 for the default: 32x32 -> 8x8x128).
    """

    widths: Sequence[int] = (32, 64, 128)
    convs_per_stage: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, train: bool, return_feature_map: bool = False
    ) -> jnp.ndarray:
        """``(N, H, W, C_in) -> (N, widths[-1])``, or the ``(N, h, w, widths[-1])`` map."""
        x = x.astype(self.dtype)
        for i, width in enumerate(self.widths):
            if i > 0:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
            for _ in range(self.convs_per_stage):
                x = _conv(width, 3, 1, self.dtype)(x)
                x = nn.relu(batch_norm(train, self.dtype)(x))
        return x if return_feature_map else _pool_features(x)


class BasicBlock(nn.Module):
    """ResNet basic block: two conv3x3-BN with an identity or 1x1-conv-BN shortcut."""

    filters: int
    strides: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        """``(N, H, W, C) -> (N, H / strides, W / strides, filters)``."""
        y = _conv(self.filters, 3, self.strides, self.dtype)(x)
        y = nn.relu(batch_norm(train, self.dtype)(y))
        y = _conv(self.filters, 3, 1, self.dtype)(y)
        y = batch_norm(train, self.dtype)(y)
        shortcut = x
        if x.shape[-1] != self.filters or self.strides != 1:
            shortcut = _conv(self.filters, 1, self.strides, self.dtype, name="proj_conv")(x)
            shortcut = batch_norm(train, self.dtype, name="proj_bn")(shortcut)
        return nn.relu(shortcut + y)


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stride-1 stem, no max-pool, ``len(stage_sizes)`` stages.

    Stage ``i`` has ``stage_sizes[i]`` basic blocks with ``num_filters * 2**i`` filters and
    stride 2 in its first block for ``i > 0``.
    """

    stage_sizes: Sequence[int]
    num_filters: int = 64
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, train: bool, return_feature_map: bool = False
    ) -> jnp.ndarray:
        """``(N, H, W, C_in) -> (N, num_filters * 2**(stages-1))``, or the pre-pool map."""
        x = _conv(self.num_filters, 3, 1, self.dtype, name="stem_conv")(x.astype(self.dtype))
        x = nn.relu(batch_norm(train, self.dtype, name="stem_bn")(x))
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                strides = 2 if i > 0 and j == 0 else 1
                x = BasicBlock(self.num_filters * 2**i, strides, self.dtype)(x, train)
        return x if return_feature_map else _pool_features(x)


ResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2))

#: Every encoder with the interface ``(x, train, return_feature_map=False)`` described above.
IMAGE_ENCODERS = {"convnet": ConvNet, "resnet18": ResNet18, "vit_t4": ViT}
