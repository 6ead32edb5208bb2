"""Square crops and resizes of images, class maps and depth maps.

The recipes apply them to each record when it is read, paired folders to each file when the
folder is built. Every resize first takes the largest centred square, so maps of one sample
stay aligned whatever their sizes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def centre_square(array: np.ndarray) -> np.ndarray:
    """The largest centred square of an (H, W, ...) array."""
    h, w = array.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return array[top:top + side, left:left + side]


def resize_array(array: np.ndarray, size: int,
                 resample: Image.Resampling = Image.Resampling.BILINEAR) -> np.ndarray:
    """A 2-D uint8 or float32 array, or an RGB uint8 one, resized to (size, size) by PIL
    (bilinear by default: antialiased, PIL widens the filter when shrinking)."""
    image = Image.fromarray(np.ascontiguousarray(array))
    return np.asarray(image.resize((size, size), resample))


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W) or (H, W, C) -> centre square -> uint8 (size, size[, C]), bilinear (RGB
    at once, other channel counts one by one)."""
    square = centre_square(np.asarray(image, np.uint8))
    if square.ndim == 2 or square.shape[-1] == 3:
        return resize_array(square, size)
    return np.stack([resize_array(square[..., c], size) for c in range(square.shape[-1])], -1)


def resize_class_map(classes: np.ndarray, size: int) -> np.ndarray:
    """uint8 class map (H, W) -> centre square -> (size, size), nearest: ids stay exact."""
    square = centre_square(np.asarray(classes, np.uint8))
    return resize_array(square, size, Image.Resampling.NEAREST)


def resize_depth(depth: np.ndarray, size: int) -> np.ndarray:
    """Depth (H, W) -> centre square -> float32 (size, size), the bilinear average of its
    valid pixels (finite and > 0); 0 where no valid pixel contributes."""
    depth = centre_square(np.asarray(depth, np.float32))
    valid = np.isfinite(depth) & (depth > 0)
    total = resize_array(np.where(valid, depth, 0.0).astype(np.float32), size)
    weight = resize_array(valid.astype(np.float32), size)
    return np.where(weight > 1e-3, total / np.maximum(weight, 1e-3), 0.0).astype(np.float32)
