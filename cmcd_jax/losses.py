"""Contrastive / distillation losses for cross-modality contrastive distillation.

All losses are pure ``jax.numpy`` and work in two modes:

* ``axis_name=None``: the arrays hold the whole (global) batch on one device.
* ``axis_name='data'`` (any mapped axis name) inside ``jax.shard_map``: each device
  holds a local slice of the batch. Embeddings are all-gathered to form the global
  columns, each device computes the loss of its *local* anchor rows against all
  global columns, and the local mean is ``lax.pmean``-ed. The returned value is then
  the global loss on every device, and ``jax.grad`` of it (taken inside the
  ``shard_map`` with the default ``check_vma=True``) is exactly the slice of the
  global gradient for the local inputs: the transpose of ``all_gather`` is a
  ``psum_scatter``, which routes the other devices' column gradients back here.

Notation: ``N`` is the global batch size, ``n`` the local one (``N`` when
``axis_name is None``), ``D`` the embedding dimension. Embeddings are
L2-normalised inside the losses; logits are computed in at least float32.

``socket_statistics_loss`` (the SOCKET baseline's BatchNorm-statistics term) works on
statistics of the global batch, computed outside any ``shard_map``.

Memory-lean path (``chunk_size``): ``nt_xent``, ``cmc_loss`` and ``cmd_loss`` naively
materialise ``[n, N]`` logits per device (and as much again in the backward pass).
With ``chunk_size=c`` the (gathered) columns are streamed in blocks of ``c`` through a
``lax.scan`` computing an online log-sum-exp, whose body is ``jax.checkpoint``-ed, so
the forward and the backward pass only hold ``[n, c]`` logit blocks (besides the
``[N, D]`` gathered embeddings and their gradient). Positive logits are row-wise dot
products. ``c`` must divide the number of columns (``N``; ``2N`` for ``nt_xent``).
Results equal the naive path's up to float rounding. ``python -m cmcd_jax.bench.memory``
compares the compiled per-device memory of both paths.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Hashable, Optional, Tuple

import jax
import jax.numpy as jnp

AxisName = Optional[Hashable]

CMD_VARIANTS = ("cross", "within")

__all__ = ["nt_xent", "cmc_loss", "cmd_loss", "l2_align", "socket_statistics_loss",
           "batch_norm_statistics", "CMD_VARIANTS"]


def _l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """L2-normalise the last axis; safe (finite value and gradient) at ``x == 0``."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    sq = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def _gather(x: jax.Array, axis_name: AxisName) -> Tuple[jax.Array, jax.Array]:
    """Global batch of ``x`` and the global row index of this device's first row.

    Args:
      x: ``[n, ...]`` local slice.
      axis_name: mapped axis name, or ``None`` for the single-device case.

    Returns:
      ``(x_all [N, ...], offset)``: ``x`` itself and ``0`` when ``axis_name`` is
      ``None``; otherwise ``all_gather(x, tiled=True)`` and
      ``axis_index(axis_name) * n``.
    """
    if axis_name is None:
        return x, jnp.zeros((), jnp.int32)
    x_all = jax.lax.all_gather(x, axis_name, tiled=True)
    offset = jax.lax.axis_index(axis_name) * x.shape[0]
    return x_all, offset


def _mean(x: jax.Array, axis_name: AxisName) -> jax.Array:
    """Mean of ``x``; global mean (``pmean`` of equal-size local means) if mapped."""
    m = jnp.mean(x)
    return m if axis_name is None else jax.lax.pmean(m, axis_name)


def _pick(logp: jax.Array, cols: jax.Array) -> jax.Array:
    """``logp[i, cols[i]]`` for each row ``i``. ``logp: [n, M]``, ``cols: [n]``."""
    return jnp.take_along_axis(logp, cols[:, None], axis=1)[:, 0]


def _scan_column_chunks(
    body: Callable[[Any, Tuple[jax.Array, ...], jax.Array], Any],
    init: Any,
    columns: Tuple[jax.Array, ...],
    chunk_size: int,
) -> Any:
    """Folds ``body`` over blocks of ``chunk_size`` columns; rematerialised per block.

    Args:
      body: ``body(carry, blocks, col_index) -> carry`` with ``blocks`` the
        ``[chunk_size, D]`` slices of ``columns`` and ``col_index`` their
        ``[chunk_size]`` column indices (into ``columns``).
      init: initial carry.
      columns: ``[M, D]`` arrays sharing ``M``, chunked together.
      chunk_size: block size; must divide ``M``.

    Returns:
      The final carry. ``body`` is ``jax.checkpoint``-ed, so the backward pass keeps
      only the per-block carries and recomputes each block's intermediates.
    """
    m = columns[0].shape[0]
    if not isinstance(chunk_size, int) or chunk_size <= 0 or m % chunk_size:
        raise ValueError(
            f"chunk_size={chunk_size!r} must be a positive divisor of the number of "
            f"columns M={m} (the global batch size N; 2N for nt_xent)."
        )
    steps = m // chunk_size
    xs = tuple(c.reshape(steps, chunk_size, *c.shape[1:]) for c in columns)
    idx = jnp.arange(m, dtype=jnp.int32).reshape(steps, chunk_size)

    @jax.checkpoint
    def step(carry, x):
        blocks, col_index = x
        return body(carry, blocks, col_index), None

    carry, _ = jax.lax.scan(step, init, (xs, idx))
    return carry


def _online_lse_init(rows: jax.Array) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """Empty online log-sum-exp state ``(max, sum, dot)`` for the ``[n, D]`` rows.

    Built from ``rows`` so that inside ``shard_map`` the carry has their
    (device-varying) type, as ``lax.scan`` requires.
    """
    zeros = jnp.zeros_like(rows[:, 0])
    return jnp.full_like(zeros, -jnp.inf), zeros, zeros


def _online_lse_update(
    state: Tuple[jax.Array, jax.Array, jax.Array],
    logits: jax.Array,
    values: Optional[jax.Array] = None,
) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """Folds a ``[n, c]`` block of logits into the streaming softmax state.

    State per row: running max ``m``, ``sum_j exp(l_j - m)`` and, if ``values`` is
    given, ``sum_j exp(l_j - m) values_j``. At the end ``lse = m + log(sum)`` and
    ``E_softmax(l)[values] = dot / sum`` (normalised by the accumulated ``sum``, not
    by an ``lse`` from a separate pass, so rounding differences between passes
    cannot unbalance the weights). ``m`` is ``stop_gradient``-ed: it is only a
    shift, ``d lse / d l = softmax(l)`` whatever its value.
    """
    run_max, run_sum, run_dot = state
    new_max = jax.lax.stop_gradient(jnp.maximum(run_max, jnp.max(logits, axis=-1)))
    shift = jnp.where(jnp.isneginf(new_max), 0.0, new_max)  # all masked so far
    rescale = jnp.exp(run_max - shift)
    w = jnp.exp(logits - shift[:, None])
    run_sum = run_sum * rescale + jnp.sum(w, axis=-1)
    if values is not None:
        run_dot = run_dot * rescale + jnp.sum(w * values, axis=-1)
    return new_max, run_sum, run_dot


def _chunked_lse(
    rows: jax.Array,
    columns: jax.Array,
    temperature: float,
    chunk_size: int,
    exclude: Optional[jax.Array] = None,
) -> jax.Array:
    """``logsumexp_j(rows_i . columns_j / temperature)`` over ``j != exclude[i]``, streamed.

    Args:
      rows: ``[n, D]``.
      columns: ``[M, D]``.
      temperature: logit divisor.
      chunk_size: columns per block (divides ``M``).
      exclude: optional ``[n]`` column index left out of row ``i`` (``-inf`` logit).

    Returns:
      ``[n]`` log-sum-exp.
    """

    def body(state, blocks, col_index):
        logits = rows @ blocks[0].T / temperature  # [n, chunk]
        if exclude is not None:
            logits = jnp.where(col_index[None, :] == exclude[:, None], -jnp.inf, logits)
        return _online_lse_update(state, logits)

    init = _online_lse_init(rows)
    run_max, run_sum, _ = _scan_column_chunks(body, init, (columns,), chunk_size)
    return run_max + jnp.log(run_sum)


def nt_xent(
    z1: jax.Array,
    z2: jax.Array,
    temperature: float = 0.1,
    axis_name: AxisName = None,
    chunk_size: Optional[int] = None,
) -> jax.Array:
    """SimCLR NT-Xent loss over ``2N`` views.

    Views are ordered ``[z1_all; z2_all]`` (``2N`` columns). For each anchor view
    the positive is the other view of the same sample; the negatives are the other
    ``2N - 2`` views (self-similarity is excluded). Mean over the ``2N`` anchors.
    The embeddings are L2-normalised inside (pass them raw): similarities are cosines.

    Args:
      z1, z2: ``[n, D]`` two views' embeddings (local slice if ``axis_name``).
      temperature: softmax temperature.
      axis_name: mapped batch axis name or ``None``.
      chunk_size: stream the ``2N`` columns in blocks of this size (memory-lean
        path, see the module docstring); must divide ``2N``. ``None``: naive.

    Returns:
      Scalar loss (the global value on every device).
    """
    z1 = _l2_normalize(z1)
    z2 = _l2_normalize(z2)
    n = z1.shape[0]
    z1_all, offset = _gather(z1, axis_name)
    z2_all, _ = _gather(z2, axis_name)
    big_n = z1_all.shape[0]

    anchors = jnp.concatenate([z1, z2], axis=0)  # [2n, D]
    columns = jnp.concatenate([z1_all, z2_all], axis=0)  # [2N, D]
    local = jnp.arange(n) + offset  # global sample index of the local rows
    self_col = jnp.concatenate([local, local + big_n])
    if chunk_size is not None:
        pos = jnp.sum(z1 * z2, axis=-1) / temperature  # the other view of the sample
        lse = _chunked_lse(anchors, columns, temperature, chunk_size, exclude=self_col)
        return _mean(lse - jnp.concatenate([pos, pos]), axis_name)

    logits = anchors @ columns.T / temperature  # [2n, 2N]
    pos_col = jnp.concatenate([local + big_n, local])
    is_self = jnp.arange(2 * big_n)[None, :] == self_col[:, None]
    logits = jnp.where(is_self, -jnp.inf, logits)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return _mean(-_pick(logp, pos_col), axis_name)


def cmc_loss(
    z_student: jax.Array,
    z_teacher: jax.Array,
    temperature: float = 0.07,
    symmetric: bool = True,
    axis_name: AxisName = None,
    chunk_size: Optional[int] = None,
) -> jax.Array:
    """CLIP-style cross-modal InfoNCE between student (target B) and teacher (source A).

    ``L = -1/(2N) sum_i [log softmax_j(zB_i.zA_j/tau)[i] + log softmax_j(zA_i.zB_j/tau)[i]]``.
    ``symmetric=False`` keeps only the target->source term (mean over ``N``).
    The teacher is ``stop_gradient``-ed. Both embeddings are L2-normalised inside (pass
    them raw): ``z`` above is the unit vector, so similarities are cosines.

    Args:
      z_student: ``[n, D]`` student (target-modality) embeddings.
      z_teacher: ``[n, D]`` teacher (source-modality) embeddings.
      temperature: softmax temperature ``tau``.
      symmetric: include the source->target term.
      axis_name: mapped batch axis name or ``None``.
      chunk_size: stream the ``N`` columns in blocks of this size (memory-lean
        path, see the module docstring); must divide ``N``. ``None``: naive.

    Returns:
      Scalar loss (the global value on every device).
    """
    zb = _l2_normalize(z_student)
    za = _l2_normalize(jax.lax.stop_gradient(z_teacher))
    za_all, offset = _gather(za, axis_name)
    if chunk_size is not None:
        pos = jnp.sum(zb * za, axis=-1) / temperature  # the local pair is the positive
        per_row = _chunked_lse(zb, za_all, temperature, chunk_size) - pos
        if symmetric:
            zb_all, _ = _gather(zb, axis_name)
            lse_ab = _chunked_lse(za, zb_all, temperature, chunk_size)
            per_row = 0.5 * (per_row + lse_ab - pos)
        return _mean(per_row, axis_name)

    labels = jnp.arange(zb.shape[0]) + offset

    logp_ba = jax.nn.log_softmax(zb @ za_all.T / temperature, axis=-1)  # [n, N]
    per_row = -_pick(logp_ba, labels)
    if symmetric:
        zb_all, _ = _gather(zb, axis_name)
        logp_ab = jax.nn.log_softmax(za @ zb_all.T / temperature, axis=-1)
        per_row = 0.5 * (per_row - _pick(logp_ab, labels))
    return _mean(per_row, axis_name)


def cmd_loss(
    z_student: jax.Array,
    z_teacher: jax.Array,
    student_temperature: float = 0.07,
    teacher_temperature: float = 0.04,
    variant: str = "cross",
    axis_name: AxisName = None,
    chunk_size: Optional[int] = None,
) -> jax.Array:
    """SEED-style similarity-distribution distillation (soft cross-entropy).

    ``p_A^i(j) = softmax_j(zA_i.zA_j / tau_T)`` (stop-gradient) and
    ``p_B^i(j) = softmax_j(zB_i.zA_j / tau_S)`` (``variant='cross'``) or
    ``softmax_j(zB_i.zB_j / tau_S)`` (``variant='within'``);
    ``L = -1/N sum_i sum_j p_A^i(j) log p_B^i(j)``, ``j`` over the global batch.
    Both embeddings are L2-normalised inside (pass them raw): similarities are cosines.

    Args:
      z_student: ``[n, D]`` student (target-modality) embeddings.
      z_teacher: ``[n, D]`` teacher (source-modality) embeddings.
      student_temperature: ``tau_S``.
      teacher_temperature: ``tau_T``.
      variant: ``'cross'`` or ``'within'``.
      axis_name: mapped batch axis name or ``None``.
      chunk_size: stream the ``N`` columns in blocks of this size (memory-lean
        path, see the module docstring); must divide ``N``. One streamed pass
        accumulating ``lse_B`` and ``sum_j p_A(j) s_B(j)`` (``s``: logits), using
        ``sum_j p_A(j) log p_B(j) = sum_j p_A(j) s_B(j) - lse_B``. ``None``: naive.

    Returns:
      Scalar loss (the global value on every device).
    """
    if variant not in CMD_VARIANTS:
        raise ValueError(
            f"Unknown cmd_loss variant {variant!r}; valid variants: {CMD_VARIANTS}."
        )
    zb = _l2_normalize(z_student)
    za = _l2_normalize(jax.lax.stop_gradient(z_teacher))
    za_all, _ = _gather(za, axis_name)
    cols = za_all if variant == "cross" else _gather(zb, axis_name)[0]
    if chunk_size is not None:
        # one streamed pass: lse_B, and E_{p_A}[s_B] = sum_j p_A(j) s_B(j) with p_A
        # normalised by its own running max and sum (s: logits)

        def body(state, blocks, _):
            state_a, state_b = state
            s_a = za @ blocks[0].T / teacher_temperature
            s_b = zb @ blocks[1].T / student_temperature
            return _online_lse_update(state_a, s_a, s_b), _online_lse_update(state_b, s_b)

        init = (_online_lse_init(zb),) * 2
        state_a, state_b = _scan_column_chunks(body, init, (za_all, cols), chunk_size)
        lse_b = state_b[0] + jnp.log(state_b[1])
        return _mean(lse_b - state_a[2] / state_a[1], axis_name)

    p_a = jax.nn.softmax(za @ za_all.T / teacher_temperature, axis=-1)  # [n, N]
    logp_b = jax.nn.log_softmax(zb @ cols.T / student_temperature, axis=-1)
    return _mean(-jnp.sum(p_a * logp_b, axis=-1), axis_name)


def l2_align(
    prediction: jax.Array,
    target: jax.Array,
    axis_name: AxisName = None,
) -> jax.Array:
    """Supervision-transfer baseline: ``mean_i ||prediction_i - sg(target_i)||^2``.

    Raw features (no normalisation); ``prediction`` is the student's features after
    the (model-side) learned linear map.

    Args:
      prediction: ``[n, D]``.
      target: ``[n, D]`` teacher features (``stop_gradient``-ed).
      axis_name: mapped batch axis name or ``None`` (then a global ``pmean``).

    Returns:
      Scalar loss (the global value on every device).
    """
    prediction = prediction.astype(jnp.promote_types(prediction.dtype, jnp.float32))
    diff = prediction - jax.lax.stop_gradient(target).astype(prediction.dtype)
    sq = jnp.sum(diff * diff, axis=tuple(range(1, diff.ndim)))
    return _mean(sq, axis_name)


def batch_norm_statistics(old_stats: Any, new_stats: Any, momentum: float) -> list:
    """Each BatchNorm layer's batch ``(mean, var)``, recovered from one training-mode update.

    A layer updates ``running = momentum * running + (1 - momentum) * batch``, so the batch
    statistic is ``(new - momentum * old) / (1 - momentum)``. ``old_stats``/``new_stats``
    are ``batch_stats`` trees before and after the forward pass; one pair per layer, in
    flattening order.
    """
    def batch_value(old, new):
        return (new - momentum * old) / (1.0 - momentum)
    recovered = jax.tree.map(batch_value, old_stats, new_stats)
    return statistics_pairs(recovered)


def statistics_pairs(stats: Any) -> list:
    """``[(mean, var), ...]`` of every BatchNorm layer of a ``batch_stats`` tree."""
    layers = []

    def visit(node):
        if isinstance(node, Mapping) and set(node) == {"mean", "var"}:
            layers.append((node["mean"], node["var"]))
        elif isinstance(node, Mapping):
            for key in sorted(node):
                visit(node[key])
    visit(stats)
    return layers


def stage_ends(stats: list) -> list:
    """The last layer of every run of consecutive layers with the same width: the statistics
    at the end of each stage of a plain convnet."""
    return [layer for layer, after in zip(stats, [*stats[1:], None])
            if after is None or after[0].shape != layer[0].shape]


def socket_statistics_loss(student_stats: list, teacher_stats: list) -> jax.Array:
    """SOCKET's statistics term: mean over layers of ``mean_c (mu_s - mu_t)^2 + (sd_s -
    sd_t)^2`` between the target batch's BatchNorm statistics and the teacher's stored ones.

    A student with more convolutions per stage than the teacher (same stage widths) is
    matched at the end of each stage (:func:`stage_ends`).

    Args:
      student_stats: ``[(mean [C_l], var [C_l]), ...]`` of the student's batch.
      teacher_stats: the teacher's running ``(mean, var)`` per layer, same shapes.
    """
    if len(student_stats) != len(teacher_stats):
        ends = stage_ends(student_stats), stage_ends(teacher_stats)
        if len(ends[0]) != len(ends[1]):
            raise ValueError(f"the student has {len(student_stats)} BatchNorm layers in "
                             f"{len(ends[0])} stages, the teacher {len(teacher_stats)} in "
                             f"{len(ends[1])}; SOCKET needs as many stages")
        student_stats, teacher_stats = ends
    terms = []
    for (mu_s, var_s), (mu_t, var_t) in zip(student_stats, teacher_stats):
        if mu_s.shape != mu_t.shape:
            raise ValueError(f"BatchNorm statistics of shape {mu_s.shape} (student) and "
                             f"{mu_t.shape} (teacher) differ")
        sd_s = jnp.sqrt(jnp.maximum(var_s, 0.0) + 1e-5)
        sd_t = jnp.sqrt(jnp.maximum(jax.lax.stop_gradient(var_t), 0.0) + 1e-5)
        terms.append(jnp.mean((mu_s - jax.lax.stop_gradient(mu_t)) ** 2 + (sd_s - sd_t) ** 2))
    return jnp.mean(jnp.stack(terms))
