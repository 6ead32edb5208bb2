"""Dense (segmentation) heads on an encoder's last feature map, and the encoder+decoder pair.

`SegmentationHead` is FCN-style: conv3x3-ReLU then a 1x1 conv to per-class logits on the
encoder's stride-s feature map ``(N, h, w, C)``, bilinearly upsampled to the input size. It
sees only the encoder's last map (no skip connections to earlier stages or to the input), so
what it can segment reflects what that map encodes -- the point of a step-3 evaluation -- at
the cost of blurry boundaries (stride 4 for the default ConvNet, 8 for ResNet18). It has no
BatchNorm, so a frozen encoder leaves the model without any state that training updates.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class SegmentationHead(nn.Module):
    """``(N, h, w, C)`` feature map -> ``(N, H, W, num_classes)`` float32 logits."""

    num_classes: int
    hidden_dim: int = 64

    @nn.compact
    def __call__(self, features: jnp.ndarray, size: Sequence[int],
                 train: bool = False) -> jnp.ndarray:
        """Logits at spatial ``size = (H, W)``; ``train`` is unused (uniform head interface)."""
        del train
        x = nn.relu(nn.Conv(self.hidden_dim, (3, 3), padding="SAME")(features.astype(jnp.float32)))
        logits = nn.Conv(self.num_classes, (1, 1))(x)
        n, _, _, k = logits.shape
        return jax.image.resize(logits, (n, *size, k), method="bilinear")


class EncoderWithDecoder(nn.Module):
    """``encoder`` feature map then ``head``; variables are ``{'encoder': ..., 'head': ...}``.

    With ``freeze_encoder`` the encoder always runs in inference mode (BatchNorm running
    averages, no stat updates) and no gradient flows into it, whatever ``train`` says.
    """

    encoder: nn.Module
    head: nn.Module
    freeze_encoder: bool = False

    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        """``(N, H, W, C_in) -> (N, H, W, num_classes)`` float32 logits."""
        features = self.encoder(x, train=train and not self.freeze_encoder,
                                return_feature_map=True)
        if self.freeze_encoder:
            features = jax.lax.stop_gradient(features)
        return self.head(features, x.shape[1:3], train=train)
