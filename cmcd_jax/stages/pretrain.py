"""Step 1: self-supervised SimCLR pretraining of the source encoder (the future teacher)."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import optax

from cmcd_jax import losses, parallel
from cmcd_jax.data import pipeline, sources
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


def run(config, workdir: pathlib.Path, dataset: sources.Dataset, mesh,
        modality: str | None = None, name: str = "pretrain") -> pathlib.Path:
    """SimCLR on `modality` (default: the source) unless `workdir/name`'s export exists;
    returns the export directory. The `ssl_target` baseline runs it on the target."""
    cfg, modality = config.pretrain, modality or config.data.source
    records = dataset.pools[modality]["train"]
    head = {"kind": "projection", "hidden_dim": config.model.proj_hidden_dim,
            "out_dim": config.model.proj_dim}
    batches = pipeline.two_view_batches(
        records, modality,
        common.per_process_batch(cfg.batch_size, mesh, "pretrain.batch_size"), config.seed,
        min_scale=cfg.min_crop_scale, jitter=cfg.colour_jitter, shard=common.data_shard())
    loss_fn = parallel.sharded_loss(losses.nt_xent, mesh, temperature=cfg.temperature,
                                    chunk_size=cfg.loss_chunk_size or None)
    return common.fit_and_export(
        name, workdir / name, config, mesh, spec=common.encoder_spec(config, modality, dataset),
        head=head, modality=modality, batches=batches,
        example=pipeline.first_input(records, modality), stage_cfg=cfg,
        make_step=lambda model, tx: make_pretrain_step(model, tx, loss_fn))
