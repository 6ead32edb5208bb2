"""Step 3 segmentation: a light decoder head on the target encoder's feature maps.

`train_segmenter` trains a `SegmentationHead` (see `cmcd_jax.models.decoder`) on few labelled
masks, either on a frozen encoder (`mode='linear'`, the dense analogue of the linear probe) or
fine-tuning the encoder with it (`mode='finetune'`); `predict_masks` and `mean_iou` score it
on the test set.

Masks are integer class maps ``(N, H, W)`` with values in ``[0, num_classes)``; class 0 is
background (cmcd_shapes: ``label + 1`` on the main object, 0 elsewhere, so 11 classes).

``seg_miou``, over all pixels of the test set at once (not averaged per image): from the
confusion matrix ``C`` summed over the test set, class ``c`` has
``IoU_c = C[c, c] / (sum_j C[c, j] + sum_i C[i, c] - C[c, c])``; the mean runs over every
class that occurs in the truth or in the prediction, background included. A class absent
from both (union 0) is left out of the mean; a class only predicted, or only true, counts
with IoU 0.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cmcd_jax.models import make_encoder
from cmcd_jax.models.decoder import EncoderWithDecoder, SegmentationHead
from cmcd_jax.stages import common

MODES = ("linear", "finetune")


def confusion_matrix(pred: np.ndarray, true: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K)`` int64 pixel counts, rows the true class, columns the predicted one."""
    pred, true = np.asarray(pred).ravel(), np.asarray(true).ravel()
    for name, v in (("pred", pred), ("true", true)):
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            raise ValueError(f"{name} holds classes outside [0, {num_classes})")
    counts = np.bincount(true.astype(np.int64) * num_classes + pred, minlength=num_classes ** 2)
    return counts.reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """``(K,)`` IoU of every class of a confusion matrix; NaN where the union is empty."""
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - inter
    return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def mean_iou(pred: np.ndarray, true: np.ndarray, num_classes: int) -> float:
    """Mean IoU over the classes present in `pred` or `true` (see the module docstring)."""
    return float(np.nanmean(iou_per_class(confusion_matrix(pred, true, num_classes))))


def encoder_variables(variables: dict) -> dict:
    """The encoder's own variables out of an encoder-with-head's (e.g. a restored export)."""
    return {k: v["encoder"] for k, v in variables.items() if "encoder" in v}


def build_segmenter(spec: dict, num_classes: int, mode: str = "linear",
                    hidden_dim: int = 64) -> EncoderWithDecoder:
    """The encoder of `spec` ({'name', 'kwargs'}) with a `SegmentationHead`."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; valid: {', '.join(MODES)}")
    return EncoderWithDecoder(make_encoder(spec["name"], **spec["kwargs"]),
                              SegmentationHead(num_classes, hidden_dim),
                              freeze_encoder=mode == "linear")


def init_segmenter(model: EncoderWithDecoder, encoder_vars: dict, example: jax.Array,
                   rng: jax.Array) -> dict:
    """Variables of `model`: the given encoder's and a freshly initialised head's.

    `example` is a batch ``(N, H, W, C)`` fixing the shapes.
    """
    features = jax.eval_shape(
        lambda v, x: model.encoder.apply(v, x, train=False, return_feature_map=True),
        encoder_vars, example)
    head = model.head.init(rng, jnp.zeros(features.shape, jnp.float32), example.shape[1:3])
    return {"params": {"encoder": encoder_vars["params"], "head": head["params"]},
            "batch_stats": {"encoder": encoder_vars.get("batch_stats", {})}}


def make_optimizer(model: EncoderWithDecoder, steps: int, learning_rate: float,
                   weight_decay: float) -> optax.GradientTransformation:
    """Cosine-decayed AdamW on the head (and the encoder unless frozen: it gets no update)."""
    adamw = optax.adamw(optax.cosine_decay_schedule(learning_rate, max(steps, 1)),
                        weight_decay=weight_decay)
    labels = {"encoder": "frozen" if model.freeze_encoder else "train", "head": "train"}
    return optax.partition({"train": adamw, "frozen": optax.set_to_zero()}, labels)


def random_flip(key: jax.Array, inputs: jax.Array, masks: jax.Array) -> tuple:
    """Flips each example's input ``(N, H, W, C)`` and mask ``(N, H, W)`` left-right
    together with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (inputs.shape[0],))
    inputs = jnp.where(flip[:, None, None, None], inputs[:, :, ::-1], inputs)
    return inputs, jnp.where(flip[:, None, None], masks[:, :, ::-1], masks)


def make_segmentation_step(model: EncoderWithDecoder, tx: optax.GradientTransformation,
                           batch_size: int) -> Callable:
    """`step(state, key, inputs, masks) -> (state, loss)`: one AdamW step of pixel-wise
    softmax cross-entropy on a random flipped batch drawn from all of `inputs`/`masks`."""

    def step(state: common.TrainState, key: jax.Array, inputs: jax.Array, masks: jax.Array):
        pick, flip = jax.random.split(key)
        idx = jax.random.choice(pick, inputs.shape[0], (batch_size,), replace=False)
        x, y = random_flip(flip, inputs[idx], masks[idx])

        def loss_of(params):
            logits, batch_stats = common.apply_train_mode(model, params, state.batch_stats, x)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, batch_stats

        (loss, batch_stats), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        return common.apply_gradients(state, tx, grads, batch_stats), loss

    return step


def train_segmenter(spec: dict, encoder_vars: dict, inputs: np.ndarray, masks: np.ndarray, *,
                    num_classes: int, steps: int, batch_size: int, learning_rate: float,
                    weight_decay: float = 1e-4, seed: int = 0, mode: str = "linear",
                    hidden_dim: int = 64) -> tuple[EncoderWithDecoder, dict]:
    """(model, trained variables) of a segmenter fit on `inputs` ``(N, H, W, C)`` float and
    `masks` ``(N, H, W)`` int; batches of ``min(batch_size, N)`` without replacement."""
    model = build_segmenter(spec, num_classes, mode, hidden_dim)
    inputs, masks = jnp.asarray(inputs, jnp.float32), jnp.asarray(masks, jnp.int32)
    init_key, data_key = jax.random.split(jax.random.key(seed))
    variables = init_segmenter(model, encoder_vars, inputs[:1], init_key)
    tx = make_optimizer(model, steps, learning_rate, weight_decay)
    state = common.TrainState.create(variables, tx)
    step = jax.jit(make_segmentation_step(model, tx, min(batch_size, len(inputs))))
    loss = jnp.zeros(())
    for key in jax.random.split(data_key, steps):
        state, loss = step(state, key, inputs, masks)
    if not np.isfinite(float(loss)):
        raise FloatingPointError(f"segmentation loss is {float(loss)} after {steps} steps")
    return model, state.variables


def predict_masks(model: EncoderWithDecoder, variables: dict, inputs: np.ndarray,
                  batch_size: int = 256) -> np.ndarray:
    """``(N, H, W)`` int32 argmax classes of `model` in inference mode on `inputs`."""
    apply = jax.jit(lambda v, x: jnp.argmax(model.apply(v, x, train=False), -1))
    return np.concatenate([np.asarray(apply(variables, jnp.asarray(inputs[i:i + batch_size])))
                           for i in range(0, len(inputs), batch_size)]).astype(np.int32)
