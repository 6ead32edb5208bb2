"""Step 2: cross-modality distillation from the frozen source teacher into a target student,
with any method of :mod:`cmcd_jax.methods` that trains a student: `cmc` and `cmd` (ours:
contrastive, positive and negative correspondence), and the baselines `l2` (supervision
transfer: regress the teacher's features through a learned linear map) and `socket` (`l2`
plus matching the target batch's BatchNorm statistics, layer by layer, to the teacher's
stored running statistics).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import numpy as np
import optax
from etils import epath

from cmcd_jax import checkpoints, log, losses, methods, parallel
from cmcd_jax.data import datasets, modalities, pipeline
from cmcd_jax.models.encoders import BN_MOMENTUM
from cmcd_jax.stages import common


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a student is trained on: its `loss` (student_out, teacher_out) -> scalar, the
    teacher output it matches (`teacher_output`: 'projection' or 'features') and the weight
    of SOCKET's BatchNorm-statistics term (0: none)."""
    loss: Callable
    teacher_output: str = "projection"
    statistics_weight: float = 0.0


def method_objective(method: str, config, mesh) -> Objective:
    """The :class:`Objective` that `method` declares, its loss sharded over `mesh`."""
    spec = methods.get(method)
    if not spec.distils:
        raise ValueError(f"method {method!r} trains no student (it trains {spec.trains!r})")
    return Objective(parallel.sharded_loss(spec.loss(config), mesh), spec.teacher_output,
                     spec.statistics_weight(config))


def matched_output(teacher_output: str, features, projection):
    """The teacher output a student matches: its `projection` or its backbone `features`."""
    return projection if teacher_output == "projection" else features


def make_distill_step(student, teacher, tx: optax.GradientTransformation,
                      objective: Objective, *, source: str, target: str,
                      cached_teacher: bool = False):
    """A pure step: frozen teacher forward on `batch[source]`, student update on
    `batch[target]` towards `objective` (with its statistics weight > 0, SOCKET's
    BatchNorm-statistics term: the student's batch statistics against the teacher's
    running ones).

    `cached_teacher`: the batch carries the teacher's output as `batch[TEACHER_OUT]`
    (:func:`cmcd_jax.data.pipeline.cached_teacher_batches`) and the forward is skipped."""

    def teacher_output(teacher_variables: dict, batch: dict) -> jax.Array:
        if cached_teacher:
            return batch[pipeline.TEACHER_OUT]
        features, projection = teacher.apply(teacher_variables, batch[source], train=False)
        out = matched_output(objective.teacher_output, features, projection)
        return jax.lax.stop_gradient(out)

    def distill_step(state: common.TrainState, teacher_variables: dict, batch: dict):
        teacher_out = teacher_output(teacher_variables, batch)

        def loss_of(params):
            (_, out), batch_stats = common.apply_train_mode(student, params, state.batch_stats,
                                                            batch[target])
            loss = objective.loss(out, teacher_out)
            if objective.statistics_weight:
                if "encoder" not in state.batch_stats:
                    raise ValueError("the socket baseline matches BatchNorm statistics, and "
                                     "this encoder has no BatchNorm layer (config.model.encoder)")
                student_stats = losses.batch_norm_statistics(
                    state.batch_stats["encoder"], batch_stats["encoder"], BN_MOMENTUM)
                teacher_stats = losses.statistics_pairs(
                    teacher_variables["batch_stats"]["encoder"])
                loss += objective.statistics_weight * losses.socket_statistics_loss(
                    student_stats, teacher_stats)
            return loss, batch_stats

        (loss, batch_stats), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        return common.apply_gradients(state, tx, grads, batch_stats), {"loss": loss}

    return distill_step


def student_head(teacher_output: str, config, teacher_meta: dict) -> dict:
    """A projection head into the teacher's embedding space, or a linear map onto its
    backbone features (the L2 baseline's regressor)."""
    if teacher_output == "projection":
        return {"kind": "projection", "hidden_dim": config.model.proj_hidden_dim,
                "out_dim": teacher_meta["head"]["out_dim"]}
    return {"kind": "linear", "num_classes": teacher_meta["feature_dim"]}


def check_cacheable(config) -> None:
    """`distill.cache_teacher` needs un-augmented, instance-paired, spatial sources."""
    cfg = config.distill
    if not cfg.cache_teacher:
        return
    if cfg.min_crop_scale < 1:
        raise ValueError(f"config.distill.cache_teacher needs un-cropped sources: set "
                         f"config.distill.min_crop_scale=1 (it is {cfg.min_crop_scale})")
    if config.data.pairing != "instance":
        raise ValueError(f"config.distill.cache_teacher needs config.data.pairing='instance' "
                         f"(it is {config.data.pairing!r}: partners are re-drawn every epoch)")
    if modalities.get(config.data.source).spatial is False:
        raise ValueError(f"config.distill.cache_teacher: the {config.data.source!r} source is "
                         f"augmented on every draw, so its teacher output cannot be cached")


def teacher_table(teacher, teacher_variables: dict, records, source: str,
                  teacher_output: str, chunk: int = 256) -> np.ndarray:
    """(records, 2, dim) float32: the frozen teacher's output (projection or backbone
    features) on every record's `source` input, plain and mirrored (left-right)."""
    def both_views():  # Record by record: plain, mirrored; a chunk of records at a time.
        for start in range(0, len(records), chunk):
            indices = range(start, min(start + chunk, len(records)))
            x = pipeline.load_arrays(records, (source,), indices=indices)[source]
            yield np.stack([x, x[:, :, ::-1]], 1).reshape(-1, *x.shape[1:])

    features, projection = common.embed_chunks(teacher, teacher_variables, both_views())
    out = matched_output(teacher_output, features, projection)
    return out.reshape(len(records), 2, -1).astype(np.float32)


def distill_batches(config, dataset: datasets.Dataset, mesh, table: np.ndarray | None = None):
    """Training pairs (source, target): by instance, or by label under label pairing; with a
    teacher `table`, the source replaced by its cached teacher output."""
    cfg, source, target = config.distill, config.data.source, config.data.target
    batch_size = common.per_process_batch(cfg.batch_size, mesh, "distill.batch_size")
    if table is not None:
        return pipeline.cached_teacher_batches(dataset.pairs["train"], (source, target), table,
                                               batch_size, config.seed + 1,
                                               shard=common.data_shard(),
                                               clip_length=dataset.clip_length)
    if dataset.pairing == "label":
        return pipeline.label_paired_batches(
            dataset.pools[target]["train"], dataset.pools[source]["train"], source, target,
            batch_size, config.seed + 1, min_scale=cfg.min_crop_scale,
            shard=common.data_shard(), clip_length=dataset.clip_length)
    return pipeline.paired_batches(
        dataset.pairs["train"], (source, target), batch_size, config.seed + 1,
        min_scale=cfg.min_crop_scale, jitter=0.0, shard=common.data_shard(),
        clip_length=dataset.clip_length)


def run(config, method: str, workdir: epath.Path, dataset: datasets.Dataset, mesh,
        teacher_dir: epath.Path) -> epath.Path:
    """Distils into the target encoder with `method` unless its export exists."""
    cfg, modality = config.distill, config.data.target
    objective = method_objective(method, config, mesh)
    teacher, teacher_variables, teacher_meta = common.restore_model(teacher_dir, mesh)
    stage_dir = workdir / "distill" / method
    table = None
    if cfg.cache_teacher and not checkpoints.export_complete(stage_dir / "export"):
        start = time.perf_counter()
        table = teacher_table(teacher, teacher_variables, dataset.pairs["train"],
                              config.data.source, objective.teacher_output)
        log.say(f"[distill/{method}] teacher outputs cached: {table.shape[0]} records x 2 views "
                f"in {time.perf_counter() - start:.1f}s")
    return common.fit_and_export(
        f"distill/{method}", stage_dir, config, mesh,
        spec=common.encoder_spec(config, modality, dataset),
        head=student_head(objective.teacher_output, config, teacher_meta), modality=modality,
        batches=distill_batches(config, dataset, mesh, table),
        example=pipeline.first_input(dataset.pools[modality]["train"], modality,
                                     dataset.clip_length),
        stage_cfg=cfg, extra_args=(teacher_variables,),
        make_step=lambda model, tx: make_distill_step(
            model, teacher, tx, objective, source=config.data.source, target=modality,
            cached_teacher=table is not None))
