"""Step 3: evaluation on the target modality with few labels.

`probe_top1`: a linear classifier trained on frozen encoder features of `labels_per_class`
labelled train records per class, evaluated on the whole test split. `retrieval_top1`:
cross-modal retrieval on test pairs: each target query's nearest source embedding (cosine)
must be its own pair. `target_only` trains the same encoder from scratch on the few labels.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cmcd_jax.data import pipeline
from cmcd_jax.stages import common


def load_eval_data(config, sources: dict) -> dict:
    """Few labelled train records of the target, and every test pair (source, target, label)."""
    source, target = config.data.source, config.data.target
    train_labels = pipeline.load_arrays(sources["train"], (), extra=("label",))["label"]
    few = pipeline.few_shot_indices(train_labels, config.downstream.labels_per_class,
                                    config.seed)
    return {"few_indices": few,
            "train": pipeline.load_arrays(sources["train"], (target,), ("label",), few),
            "test": pipeline.load_arrays(sources["test"], (source, target), ("label",))}


def embed(model, variables, inputs: np.ndarray, batch_size: int = 500) -> tuple:
    """(features, head outputs) of `model` in inference mode, as numpy arrays."""
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    outs = [apply(variables, jnp.asarray(inputs[i:i + batch_size]))
            for i in range(0, len(inputs), batch_size)]
    return tuple(np.concatenate([np.asarray(o[k]) for o in outs]) for k in range(2))


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, *, steps: int, learning_rate: float,
                 weight_decay: float) -> float:
    """Test accuracy of a softmax classifier fit on standardised frozen features."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xs, xt = (train_x - mean) / std, (test_x - mean) / std
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    params = {"w": jnp.zeros((xs.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
    tx = optax.adamw(learning_rate, weight_decay=weight_decay)

    def loss_of(p):
        logits = xs @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, train_y).mean()

    @jax.jit
    def fit(params):
        def body(carry, _):
            p, opt = carry
            updates, opt = tx.update(jax.grad(loss_of)(p), opt, p)
            return (optax.apply_updates(p, updates), opt), None
        return jax.lax.scan(body, (params, tx.init(params)), length=steps)[0][0]

    params = fit(params)
    return float(np.mean(np.argmax(xt @ params["w"] + params["b"], -1) == test_y))


def retrieval_top1(queries: np.ndarray, keys: np.ndarray) -> float:
    """Fraction of queries whose most cosine-similar key is the key at the same index."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    k = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    return float(np.mean(np.argmax(q @ k.T, axis=1) == np.arange(len(q))))


def probe(config, model, variables, data: dict, modality: str) -> float:
    """`linear_probe` of `model`'s backbone features for `modality`."""
    cfg = config.downstream
    train_x, _ = embed(model, variables, data["train"][modality])
    test_x, _ = embed(model, variables, data["test"][modality])
    return linear_probe(train_x, data["train"]["label"], test_x, data["test"]["label"],
                        steps=cfg.probe_steps, learning_rate=cfg.probe_learning_rate,
                        weight_decay=cfg.probe_weight_decay)


def evaluate_student(config, student_dir: pathlib.Path, teacher_dir: pathlib.Path,
                     data: dict, mesh) -> dict:
    """Probe accuracy and cross-modal retrieval of a distilled student."""
    student, s_vars, _ = common.restore_model(student_dir, mesh)
    teacher, t_vars, _ = common.restore_model(teacher_dir, mesh)
    s_feats, s_out = embed(student, s_vars, data["test"][config.data.target])
    t_feats, t_proj = embed(teacher, t_vars, data["test"][config.data.source])
    keys = t_proj if s_out.shape[1] == t_proj.shape[1] else t_feats
    return {"probe_top1": probe(config, student, s_vars, data, config.data.target),
            "retrieval_top1": retrieval_top1(s_out, keys)}


def make_supervised_step(model, tx: optax.GradientTransformation, input_key: str):
    """A pure supervised step: cross-entropy of the classifier head on `batch[input_key]`."""

    def supervised_step(state: common.TrainState, batch: dict):
        def loss_of(params):
            (_, logits), batch_stats = common.apply_train_mode(model, params, state.batch_stats,
                                                               batch[input_key])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
            return loss.mean(), batch_stats

        (loss, batch_stats), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        return common.apply_gradients(state, tx, grads, batch_stats), {"loss": loss}

    return supervised_step


def run_target_only(config, workdir: pathlib.Path, sources: dict, data: dict, mesh) -> dict:
    """The `target_only` baseline: the target encoder trained from scratch on the few labels."""
    cfg, modality = config.target_only, config.data.target
    batch_size = common.per_process_batch(cfg.batch_size, mesh, "target_only.batch_size")
    batches = pipeline.paired_batches(
        sources["train"], (modality,), batch_size, config.seed + 2,
        indices=data["few_indices"], min_scale=cfg.min_crop_scale, jitter=0.0,
        extra=("label",), shard=common.data_shard())
    num_classes = int(data["train"]["label"].max()) + 1
    export_dir = common.fit_and_export(
        "downstream/target_only", workdir / "downstream" / "target_only", config, mesh,
        spec=common.encoder_spec(config, modality),
        head={"kind": "linear", "num_classes": num_classes}, modality=modality,
        batches=batches, example=pipeline.first_input(sources["train"], modality),
        stage_cfg=cfg, make_step=lambda model, tx: make_supervised_step(model, tx, modality))
    model, variables, _ = common.restore_model(export_dir, mesh)
    _, logits = embed(model, variables, data["test"][modality])
    return {"probe_top1": float(np.mean(logits.argmax(-1) == data["test"]["label"])),
            "retrieval_top1": None}


def evaluate_random_init(config, data: dict) -> dict:
    """Sanity reference: the probe on a randomly initialised target encoder."""
    modality = config.data.target
    model = common.build_model(common.encoder_spec(config, modality),
                               {"kind": "linear", "num_classes": 1})
    example = jnp.asarray(data["train"][modality][:1])
    variables = common.init_variables(model, jax.random.key(config.seed), example)
    return {"probe_top1": probe(config, model, variables, data, modality),
            "retrieval_top1": None}


def evaluate_teacher(config, teacher_dir: pathlib.Path, sources: dict, data: dict,
                     mesh) -> float:
    """Reference: the same probe on the teacher's features of the *source* modality."""
    model, variables, _ = common.restore_model(teacher_dir, mesh)
    source = config.data.source
    train = pipeline.load_arrays(sources["train"], (source,), ("label",), data["few_indices"])
    return probe(config, model, variables, {"train": train, "test": data["test"]}, source)
