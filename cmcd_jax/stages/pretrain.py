"""Step 1: self-supervised SimCLR pretraining of the source encoder (the future teacher)."""

from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp
import ml_collections
import optax
from etils import epath

from cmcd_jax import checkpoints, log, losses, parallel
from cmcd_jax.data import datasets, pipeline
from cmcd_jax.stages import common


def make_pretrain_step(model, tx: optax.GradientTransformation, loss_fn):
    """A pure SimCLR step: both views through the model, `loss_fn(z1, z2)`, one update."""

    def pretrain_step(state: common.TrainState, batch: dict):
        views = jnp.concatenate([batch["view1"], batch["view2"]])

        def loss_of(params):
            (_, z), batch_stats = common.apply_train_mode(model, params, state.batch_stats,
                                                          views)
            return loss_fn(*jnp.split(z, 2)), batch_stats

        (loss, batch_stats), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        return common.apply_gradients(state, tx, grads, batch_stats), {"loss": loss}

    return pretrain_step


def run(config, workdir: epath.Path, dataset: datasets.Dataset, mesh,
        modality: str | None = None, name: str = "pretrain") -> epath.Path:
    """SimCLR on `modality` (default: the source) unless `workdir/name`'s export exists;
    returns the export directory. The `ssl_target` baseline runs it on the target."""
    return train_encoder(config, workdir / name, dataset, mesh, modality or config.data.source,
                         name)


def train_encoder(config, stage_dir: epath.Path, dataset: datasets.Dataset, mesh,
                  modality: str, name: str) -> epath.Path:
    """SimCLR on every unlabelled train record of `modality` (`datasets.unlabelled_records`)
    in `stage_dir`, unless its export exists; returns the export directory."""
    cfg = config.pretrain
    records = datasets.unlabelled_records(dataset, modality)
    head = {"kind": "projection", "hidden_dim": config.model.proj_hidden_dim,
            "out_dim": config.model.proj_dim}
    batches = pipeline.two_view_batches(
        records, modality,
        common.per_process_batch(cfg.batch_size, mesh, "pretrain.batch_size"), config.seed,
        min_scale=cfg.min_crop_scale, jitter=cfg.colour_jitter, shard=common.data_shard(),
        clip_length=dataset.clip_length)
    loss_fn = parallel.sharded_loss(losses.nt_xent, mesh, temperature=cfg.temperature,
                                    chunk_size=cfg.loss_chunk_size or None)
    return common.fit_and_export(
        name, stage_dir, config, mesh, spec=common.encoder_spec(config, modality, dataset),
        head=head, modality=modality, batches=batches,
        example=pipeline.first_input(records, modality, dataset.clip_length), stage_cfg=cfg,
        make_step=lambda model, tx: make_pretrain_step(model, tx, loss_fn))


TEACHER_CACHE = "cmcd_jax_teachers"


AUDIO_KEYS = {"audio_sample_rate", "audio_seconds"}


def teacher_settings(config) -> dict:
    """The config's part that fixes the step-1 teacher: the data's sizes, the source
    modality, the step-1 and model settings and the seed (not the target nor its encoder,
    not where the data lives, not the audio settings of a non-audio source)."""
    ignored = {"target", "data_dir"} | (set() if config.data.source == "audio" else AUDIO_KEYS)
    data = {k: v for k, v in config.data.to_dict().items() if k not in ignored}
    step1 = {k: v for k, v in config.pretrain.to_dict().items() if k != "reuse_teacher"}
    model = {k: v for k, v in config.model.to_dict().items() if k != "target_encoder_kwargs"}
    return {"data": data, "pretrain": step1, "model": model, "seed": config.seed}


def teacher_key(config, dataset: datasets.Dataset) -> str:
    """What fixes the step-1 teacher: the dataset's version and `teacher_settings`."""
    what = {"dataset": dataset.version, **teacher_settings(config)}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def same_teacher(old: dict, config) -> bool:
    """Whether a run of the config `old` (config.json's contents) trained in its workdir the
    teacher that `config` would train there: same dataset and `teacher_settings`, and `old`
    named no teacher export (a run that did trained none)."""
    try:
        before = ml_collections.ConfigDict(old)
        if before.distill.teacher_export:
            return False
        what = [{"dataset": c.dataset, **teacher_settings(c)} for c in (before, config)]
    except (AttributeError, KeyError, TypeError):  # Not a config of this version.
        return False
    return json.dumps(what[0], sort_keys=True) == json.dumps(what[1], sort_keys=True)


def teacher_stage_dir(config, workdir: epath.Path, dataset: datasets.Dataset) -> epath.Path:
    """Where step 1 trains the teacher: shared, in the TFDS data dir's `cmcd_jax_teachers/<key>`
    (`pretrain.reuse_teacher` on a dataset with a version, such as cmcd_shapes), so every run
    on the same data and step-1 config reuses it; else `workdir/pretrain`."""
    if not (config.pretrain.reuse_teacher and dataset.version):
        return workdir / "pretrain"
    from tensorflow_datasets.core import constants  # TFDS's own default ($TFDS_DATA_DIR)
    data_dir = epath.Path(config.data.data_dir or constants.DATA_DIR)
    return data_dir / TEACHER_CACHE / teacher_key(config, dataset)


def teacher(config, workdir: epath.Path, dataset: datasets.Dataset, mesh) -> tuple:
    """(export directory, description) of step 1's teacher: `distill.teacher_export` when
    given, else the shared teacher of this data and step-1 config, trained if missing."""
    if config.distill.teacher_export:
        export = epath.Path(config.distill.teacher_export)
        return export, {"export": str(export), "trained_by_this_run": False}
    stage_dir = teacher_stage_dir(config, workdir, dataset)
    reused = common.intact_export("pretrain", stage_dir / "export", mesh)
    if reused:
        log.say(f"[pretrain] reusing the teacher in {stage_dir} (same data and step-1 config)")
    export = train_encoder(config, stage_dir, dataset, mesh, config.data.source, "pretrain")
    return export, {"export": str(export), "trained_by_this_run": not reused,
                    "steps": config.pretrain.steps}
