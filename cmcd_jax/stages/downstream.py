"""Step 3: evaluation on the target modality with few labels.

`probe_top1` (mode `linear`, the default): a linear classifier trained on frozen encoder
features of `labels_per_class` labelled train records per class, evaluated on every labelled
test record; mode `finetune`: the encoder and a linear head trained together on those
records, starting from the evaluated encoder. `retrieval_top1`: cross-modal retrieval on test
pairs (instance pairing only): each target query's nearest source embedding (cosine) must be
its own pair. `tv_lower`, `mmd`: the modality distance (`cmcd_jax.analysis`) between the
teacher's source embeddings and the student's target embeddings of the test split, in the
space the student was trained to match (L2-normalised). `seg_miou` (datasets with masks,
spatial targets): a decoder head on the encoder's feature maps trained with the same few
labelled records (`cmcd_jax.stages.segmentation`; background included in the mean). Baselines: `target_only` trains the
encoder from scratch on the few labels; `random_init` probes a random encoder.
Every metric a dataset cannot give (no labels, no pairs) is None.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath

from cmcd_jax import analysis, log
from cmcd_jax.analysis import plots
from cmcd_jax.data import datasets, pipeline
from cmcd_jax.stages import common, segmentation

PROBE_MODES = ("linear", "finetune")
DISTANCE_KEYS = ("tv_lower", "tv_lower_ci", "mmd", "mmd_p_value")


def labelled(config, dataset: datasets.Dataset, modality: str, extra: tuple = ()) -> dict | None:
    """Few labelled train records of `modality` and every labelled test record, as arrays
    ({'few_indices', 'train', 'test'}); None for a dataset without labels."""
    if not dataset.num_classes:
        return None
    pool = dataset.pools[modality]
    train_labels = pipeline.load_arrays(pool["train"], (), ("label",))["label"]
    few = pipeline.few_shot_indices(train_labels, config.downstream.labels_per_class,
                                    config.seed)
    test_labels = pipeline.load_arrays(pool["test"], (), ("label",))["label"]
    fields = ("label", *extra)
    return {"few_indices": few,
            "train": pipeline.load_arrays(pool["train"], (modality,), fields, few,
                                          dataset.clip_length),
            "test": pipeline.load_arrays(pool["test"], (modality,), fields,
                                         np.flatnonzero(test_labels >= 0),
                                         dataset.clip_length)}


def load_eval_data(config, dataset: datasets.Dataset) -> dict:
    """Labelled target and source records, and every test pair (instance pairing)."""
    source, target = config.data.source, config.data.target
    pairs = dataset.pairs.get("test")
    labels = ("label",) if dataset.num_classes else ()
    return {"target": labelled(config, dataset, target, ("mask",) if dataset.has_mask else ()),
            "source": labelled(config, dataset, source),
            "pairs": None if pairs is None else pipeline.load_arrays(
                pairs, (source, target), labels, clip_length=dataset.clip_length)}


def embed(model, variables, inputs: np.ndarray, batch_size: int = 500) -> tuple:
    """(features, head outputs) of `model` in inference mode, as numpy arrays."""
    return common.embed_chunks(model, variables, (inputs[i:i + batch_size]
                                                  for i in range(0, len(inputs), batch_size)))


@functools.partial(jax.jit, static_argnames=("num_classes", "steps", "learning_rate",
                                             "weight_decay"))
def fit_softmax(xs: jax.Array, ys: jax.Array, *, num_classes: int, steps: int,
                learning_rate: float, weight_decay: float) -> dict:
    """{'w', 'b'} of a softmax classifier on `xs` fit by `steps` full-batch AdamW steps from
    zeros. The data are arguments, not constants of the compiled function: one compile
    serves every probe of the same shapes."""
    params = {"w": jnp.zeros((xs.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
    tx = optax.adamw(learning_rate, weight_decay=weight_decay)

    def loss_of(p):
        logits = xs @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, ys).mean()

    def body(carry, _):
        p, opt = carry
        updates, opt = tx.update(jax.grad(loss_of)(p), opt, p)
        return (optax.apply_updates(p, updates), opt), None
    return jax.lax.scan(body, (params, tx.init(params)), length=steps)[0][0]


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, *, steps: int, learning_rate: float,
                 weight_decay: float) -> float:
    """Test accuracy of a softmax classifier fit on standardised frozen features."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xs, xt = (train_x - mean) / std, (test_x - mean) / std
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    params = fit_softmax(xs, train_y, num_classes=num_classes, steps=steps,
                         learning_rate=learning_rate, weight_decay=weight_decay)
    return float(np.mean(np.argmax(xt @ params["w"] + params["b"], -1) == test_y))


def retrieval_top1(queries: np.ndarray, keys: np.ndarray) -> float:
    """Fraction of queries whose most cosine-similar key is the key at the same index."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    k = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    return float(np.mean(np.argmax(q @ k.T, axis=1) == np.arange(len(q))))


def probe(config, model, variables, data: dict | None, modality: str) -> float | None:
    """`linear_probe` of `model`'s backbone features on labelled `data` of `modality`."""
    if data is None:
        return None
    cfg = config.downstream
    with common.announced(f"linear probe on {modality}: {len(data['train']['label'])} "
                          f"labelled train, {len(data['test']['label'])} test records, "
                          f"{cfg.probe_steps} steps"):
        train_x, _ = embed(model, variables, data["train"][modality])
        test_x, _ = embed(model, variables, data["test"][modality])
        return linear_probe(train_x, data["train"]["label"], test_x, data["test"]["label"],
                            steps=cfg.probe_steps, learning_rate=cfg.probe_learning_rate,
                            weight_decay=cfg.probe_weight_decay)


def evaluate_encoder(config, name: str, encoder_dir: epath.Path, workdir: epath.Path,
                     dataset: datasets.Dataset, data: dict, mesh) -> dict:
    """`probe_top1` (in `config.downstream.mode`) and `seg_miou` of an exported encoder."""
    model, variables, meta = common.restore_model(encoder_dir, mesh)
    if config.downstream.mode == "finetune":
        probe_top1 = run_supervised(config, name, workdir, dataset, data, mesh,
                                    init_encoder=encoder_dir)[0]
    else:
        probe_top1 = probe(config, model, variables, data["target"], config.data.target)
    return {"probe_top1": probe_top1,
            "seg_miou": segmentation_score(config, meta["encoder"], variables, data,
                                           encoder_dir.parent / "segmentation.png")}


def segmentation_score(config, spec: dict, variables: dict, data: dict,
                       figure: epath.Path | None = None) -> float | None:
    """mIoU of a decoder head trained on the encoder's feature maps with the few labelled
    masks (`cmcd_jax.stages.segmentation`); None without masks or spatial inputs. Draws
    true and predicted test masks into `figure`."""
    target, modality, cfg = data["target"], config.data.target, config.downstream
    if (not cfg.segmentation or target is None or "mask" not in target["train"]
            or target["train"][modality].ndim != 4):
        return None
    train, test = target["train"], target["test"]
    num_classes = int(max(train["mask"].max(), test["mask"].max())) + 1
    with common.announced(f"segmentation head on {modality}: {len(train['mask'])} labelled "
                          f"masks, {cfg.seg_steps} steps, {len(test['mask'])} test masks"):
        model, trained = segmentation.train_segmenter(
            spec, segmentation.encoder_variables(variables), train[modality], train["mask"],
            num_classes=num_classes, steps=cfg.seg_steps, batch_size=cfg.seg_batch_size,
            learning_rate=cfg.seg_learning_rate, seed=config.seed, mode=cfg.mode)
        predicted = segmentation.predict_masks(model, trained, test[modality])
    if figure is not None and jax.process_index() == 0:
        plots.segmentation_grid(test[modality][:8], test["mask"][:8], predicted[:8], figure)
    return segmentation.mean_iou(predicted, test["mask"], num_classes)


def shared_space_metrics(config, student_dir: epath.Path, teacher_dir: epath.Path,
                         data: dict, mesh) -> dict:
    """Retrieval and modality distance between the teacher's source embeddings and the
    student's target embeddings, in the space the student was trained to match; draws
    both (PCA, by class) into the student's stage directory."""
    source, target = config.data.source, config.data.target
    student, s_vars, s_meta = common.restore_model(student_dir, mesh)
    teacher, t_vars, _ = common.restore_model(teacher_dir, mesh)
    if data["pairs"] is not None:
        s_in, t_in, labels = data["pairs"][target], data["pairs"][source], data["pairs"].get(
            "label")
    else:
        s_in, t_in = data["target"]["test"][target], data["source"]["test"][source]
        labels = None  # Label-paired test sets differ in size and order: no joint picture.
    _, s_out = embed(student, s_vars, s_in)
    t_feats, t_proj = embed(teacher, t_vars, t_in)
    keys = t_proj if s_meta["head"]["kind"] == "projection" else t_feats
    if labels is not None and jax.process_index() == 0:
        plots.embedding_projection(normalized(keys), normalized(s_out), labels,
                                   student_dir.parent / "embeddings.png", names=(source, target))
    distance = dict.fromkeys(DISTANCE_KEYS)  # Too few test records: no estimate.
    if min(len(keys), len(s_out)) >= 2 * analysis.MIN_SAMPLES:
        with common.announced(f"modality distance (C2ST, MMD) between {len(keys)} {source} "
                              f"and {len(s_out)} {target} test embeddings"):
            distance = analysis.modality_distance(normalized(keys), normalized(s_out),
                                                  seed=config.seed)
    return {"retrieval_top1": None if data["pairs"] is None else retrieval_top1(s_out, keys),
            **{k: distance[k] for k in DISTANCE_KEYS}}


def normalized(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


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


def fitted_to_labels(stage_cfg, num_labelled: int, mesh, key: str):
    """`stage_cfg` with its batch no larger than the `num_labelled` records it trains on
    (rounded down to split over the mesh's devices and processes); a note when it shrinks."""
    step = math.lcm(mesh.size, jax.process_count())
    fitted = min(stage_cfg.batch_size, num_labelled // step * step)
    if fitted == stage_cfg.batch_size:
        return stage_cfg
    if fitted == 0:
        raise ValueError(f"{key}: {num_labelled} labelled records cannot fill a batch over "
                         f"the {mesh.size} devices; label more records or use fewer devices")
    log.say(f"{key}={stage_cfg.batch_size} exceeds the {num_labelled} labelled records; "
            f"training on batches of {fitted}")
    return ml_collections.ConfigDict({**stage_cfg.to_dict(), "batch_size": fitted})


def run_supervised(config, name: str, workdir: epath.Path, dataset: datasets.Dataset,
                   data: dict, mesh, init_encoder: epath.Path | None = None) -> tuple:
    """(test accuracy, export) of the target encoder and a linear head trained on the few
    labels: from scratch (`target_only`, `config.target_only`) or from an export
    (fine-tuning, `config.finetune`), in `workdir/downstream/<name>`; (None, None) without
    labels."""
    if data["target"] is None:
        return None, None
    key = "target_only" if init_encoder is None else "finetune"
    few = data["target"]["few_indices"]
    cfg = fitted_to_labels(config[key], len(few), mesh, f"config.{key}.batch_size")
    modality, records = config.data.target, dataset.pools[config.data.target]["train"]
    batches = pipeline.paired_batches(
        records, (modality,), common.per_process_batch(cfg.batch_size, mesh, f"{key}.batch_size"),
        config.seed + 2, indices=few, min_scale=cfg.min_crop_scale,
        jitter=0.0, extra=("label",), shard=common.data_shard(),
        clip_length=dataset.clip_length)
    export_dir = common.fit_and_export(
        f"downstream/{name}", workdir / "downstream" / name, config, mesh,
        spec=common.encoder_spec(config, modality, dataset),
        head={"kind": "linear", "num_classes": dataset.num_classes}, modality=modality,
        batches=batches, example=pipeline.first_input(records, modality, dataset.clip_length),
        stage_cfg=cfg,
        make_step=lambda model, tx: make_supervised_step(model, tx, modality),
        init_encoder=init_encoder)
    model, variables, _ = common.restore_model(export_dir, mesh)
    test = data["target"]["test"]
    _, logits = embed(model, variables, test[modality])
    return float(np.mean(logits.argmax(-1) == test["label"])), export_dir


def evaluate_random_init(config, dataset: datasets.Dataset, data: dict) -> dict:
    """Sanity reference: the probe (and segmentation) on a randomly initialised encoder."""
    if data["target"] is None:
        return {"probe_top1": None, "seg_miou": None}
    modality = config.data.target
    spec = common.encoder_spec(config, modality, dataset)
    model = common.build_model(spec, {"kind": "linear", "num_classes": 1})
    example = jnp.asarray(data["target"]["train"][modality][:1])
    variables = common.init_variables(model, jax.random.key(config.seed), example)
    return {"probe_top1": probe(config, model, variables, data["target"], modality),
            "seg_miou": segmentation_score(config, spec, variables, data)}


def evaluate_teacher(config, teacher_dir: epath.Path, data: dict, mesh) -> float | None:
    """Reference: the same probe on the teacher's features of the *source* modality."""
    model, variables, _ = common.restore_model(teacher_dir, mesh)
    return probe(config, model, variables, data["source"], config.data.source)
