"""Segmentation head and step-3 segmentation against independent computations."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmcd_jax.models import IMAGE_ENCODERS, make_encoder
from cmcd_jax.stages import common, segmentation

SMALL = {"name": "convnet", "kwargs": {"widths": (8, 16), "convs_per_stage": 1}}


def init_encoder(spec: dict, example: np.ndarray) -> dict:
    encoder = make_encoder(spec["name"], **spec["kwargs"])
    return jax.jit(partial(encoder.init, train=False))(jax.random.key(0), example)


def blobs(rng: np.random.Generator, n: int, size: int = 16) -> tuple:
    """Smooth random fields ``(n, size, size, 1)`` and their 3-class thresholded masks:
    1 where the field is high, 2 where it is low, background 0 in between."""
    f = np.fft.fftfreq(size)
    kernel = np.exp(-8 * np.pi ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))  # sigma 2 px
    x = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(n, size, size))) * kernel))
    x = (x - x.mean()) / x.std()
    mask = np.where(x > 0.6, 1, np.where(x < -0.6, 2, 0)).astype(np.uint8)
    return x[..., None].astype(np.float32), mask


@pytest.fixture(scope="module")
def small_encoder() -> dict:
    """Random-init variables of the `SMALL` encoder for ``(16, 16, 1)`` inputs."""
    return init_encoder(SMALL, np.zeros((1, 16, 16, 1), np.float32))


def loop_mean_iou(pred: np.ndarray, true: np.ndarray, num_classes: int) -> float:
    ious = []
    for c in range(num_classes):
        union = np.sum((pred == c) | (true == c))
        if union:
            ious.append(np.sum((pred == c) & (true == c)) / union)
    return float(np.mean(ious))


def test_mean_iou_matches_per_class_loop():
    true, pred = np.array([[0, 0, 1, 1]]), np.array([[0, 1, 1, 1]])
    assert segmentation.mean_iou(pred, true, 3) == pytest.approx((1 / 2 + 2 / 3) / 2)
    rng = np.random.default_rng(0)
    true = rng.integers(0, 4, size=(5, 8, 8))  # 0 background; 4 and 5 never true
    pred = np.where(rng.random(true.shape) < 0.6, true, rng.integers(0, 5, true.shape))
    assert (pred == 4).any() and not (pred == 5).any()  # 4 only predicted, 5 absent
    assert segmentation.mean_iou(pred, true, 6) == pytest.approx(loop_mean_iou(pred, true, 6))
    assert segmentation.mean_iou(true, true, 6) == 1.0
    assert segmentation.mean_iou(np.zeros_like(true), true, 6) == pytest.approx(
        np.mean(true == 0) / 4)
    with pytest.raises(ValueError):
        segmentation.mean_iou(pred, true, 4)


@pytest.mark.parametrize("name", sorted(IMAGE_ENCODERS))
@pytest.mark.parametrize("shape", [(2, 32, 32, 1), (2, 32, 32, 3), (1, 8, 12, 2)])
def test_segmenter_outputs_logits_at_input_size(name, shape):
    model = segmentation.build_segmenter({"name": name, "kwargs": {}}, num_classes=5)
    x = jnp.zeros(shape)
    variables = jax.eval_shape(partial(model.init, train=False), jax.random.key(0), x)
    for train in (False, True):
        out = jax.eval_shape(partial(model.apply, train=train, mutable=["batch_stats"]),
                             variables, x)[0]
        assert (out.shape, out.dtype) == ((*shape[:3], 5), jnp.float32)


def test_encoder_variables_of_an_export_fit_the_segmenter():
    x = jnp.zeros((1, 16, 16, 1))
    export = jax.eval_shape(partial(common.init_variables, common.build_model(
        SMALL, {"kind": "linear", "num_classes": 3})), jax.random.key(0), x)
    encoder = jax.eval_shape(partial(init_encoder, SMALL), x)
    encoder_vars = segmentation.encoder_variables(export)
    assert jax.tree.structure(encoder_vars) == jax.tree.structure(encoder)
    model = segmentation.build_segmenter(SMALL, 3)
    variables = jax.eval_shape(partial(segmentation.init_segmenter, model),
                               encoder_vars, x, jax.random.key(1))
    full = jax.eval_shape(partial(model.init, train=False), jax.random.key(0), x)
    assert jax.tree.map(np.shape, variables) == jax.tree.map(np.shape, full)


def test_random_flip_moves_inputs_and_masks_together():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 8, 8, 2)), jnp.float32)
    mask = (x[..., 0] > 0).astype(jnp.int32)
    fx, fmask = segmentation.random_flip(jax.random.key(0), x, mask)
    flipped = np.all(np.asarray(fx) == np.asarray(x)[:, :, ::-1], axis=(1, 2, 3))
    assert 0 < flipped.sum() < 16
    np.testing.assert_array_equal(fmask, (fx[..., 0] > 0).astype(jnp.int32))


def test_linear_mode_freezes_the_encoder_and_finetune_trains_it(small_encoder):
    x, mask = blobs(np.random.default_rng(0), 8)
    trained = {}
    for mode in ("linear", "finetune"):
        model, variables = segmentation.train_segmenter(
            SMALL, small_encoder, x, mask, num_classes=3, steps=3, batch_size=4,
            learning_rate=1e-2, mode=mode, hidden_dim=8)
        trained[mode] = segmentation.encoder_variables(variables)
        assert variables["params"]["head"]["Conv_1"]["bias"].any()  # initialised to 0
        assert segmentation.predict_masks(model, variables, x).shape == mask.shape
    same = jax.tree.map(np.array_equal, trained["linear"], small_encoder)
    assert all(jax.tree.leaves(same))
    same = jax.tree.map(np.array_equal, trained["finetune"], small_encoder)
    assert not any(jax.tree.leaves(same["params"])) and not any(jax.tree.leaves(
        same["batch_stats"]))


def test_frozen_random_encoder_head_learns_thresholded_blobs(small_encoder):
    rng = np.random.default_rng(1)
    (train_x, train_mask), (test_x, test_mask) = blobs(rng, 32), blobs(rng, 64)
    background = segmentation.mean_iou(np.zeros_like(test_mask), test_mask, 3)
    model, variables = segmentation.train_segmenter(
        SMALL, small_encoder, train_x, train_mask, num_classes=3, steps=60, batch_size=16,
        learning_rate=1e-2, hidden_dim=16)
    pred = segmentation.predict_masks(model, variables, test_x)
    assert background < 0.2
    assert segmentation.mean_iou(pred, test_mask, 3) > background + 0.3
    assert np.mean(pred == test_mask) > np.mean(test_mask == 0) + 0.15
