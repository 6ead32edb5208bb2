"""Figures of a run, written as PNG files: loss curves, samples, embeddings, comparisons.

Every function draws one `matplotlib.figure.Figure` (rendered by the Agg backend, without
pyplot, so importing this module leaves a notebook's backend alone), saves it to `path`
(creating its directory) at `DPI` and returns the path. Figure sizes are fixed (no tight
bounding box): a grid of `c` columns and `r` rows is `c * CELL * DPI` by `r * CELL * DPI`
pixels, the loss curves' `c` x `r` panels `c * PANEL * DPI`, every other figure
`FIGSIZE * DPI`.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from etils import epath
from matplotlib.figure import Figure
from scipy import stats

from cmcd_jax import log, paths
from cmcd_jax.data import render
from cmcd_jax.models.audio import log_mel_spectrogram

DPI = 100
CELL = 1.5           # inches per sample-grid cell
FIGSIZE = (7, 4.5)   # inches of the single-panel figures
PANEL = (4.0, 3.0)   # inches of one panel of the loss curves
PANEL_COLUMNS = 3
MASK_CMAP = "tab20"  # mask value k (0 = background) is colour k of the colormap


def _save(fig: Figure, path: str | os.PathLike) -> epath.Path:
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        fig.savefig(f, dpi=DPI, format="png")
    return path


def _figure(figsize: tuple[float, float] = FIGSIZE) -> Figure:
    return Figure(figsize=figsize, dpi=DPI, layout="constrained")


def read_losses(metrics_file: epath.Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, losses) of a metrics.jsonl, sorted by step; a step logged again (after a
    resume) keeps its last value, a line that is not JSON is reported and skipped."""
    losses = {}
    for number, line in enumerate(metrics_file.read_text().splitlines(), 1):
        try:
            row = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError:
            log.say(f"{metrics_file}:{number}: not JSON, skipped")
            continue
        if "loss" in row:
            losses[int(row["step"])] = float(row["loss"])
    steps = np.array(sorted(losses), dtype=np.int64)
    return steps, np.array([losses[s] for s in steps], dtype=np.float64)


def stage_and_run(relative: epath.Path) -> tuple[str, str]:
    """('distill/cmc', 'gap_0.5/seed_1') of a stage folder relative to the workdir: the
    stage, and the seed / gap level it ran for ('' for a single run)."""
    parts = relative.parts
    runs = [p for p in parts if p.startswith(("seed_", "gap_"))]
    return "/".join(p for p in parts if p not in runs), "/".join(runs)


def loss_curves(workdir: str | os.PathLike, path: str | os.PathLike,
                others: dict[str, epath.Path] | None = None) -> epath.Path:
    """Loss vs step of every stage under `workdir` (each `<stage>/metrics.jsonl`), and of
    `others` (panel title -> a metrics.jsonl elsewhere, such as a shared teacher's): one panel
    per stage (`pretrain`, `distill/cmc`: each loss on its own axis), one line per seed or
    gap level; log scale where positive and spanning a factor of 10 or more. Panels of
    `PANEL` inches, `PANEL_COLUMNS` a row."""
    workdir = epath.Path(workdir)
    panels: dict[str, dict[str, tuple]] = {}
    for title, f in (others or {}).items():
        curve = read_losses(f)
        if len(curve[0]):
            panels[title] = {"": curve}
    for f in sorted(p for p in paths.tree(workdir) if p.name == "metrics.jsonl"):
        curve = read_losses(f)
        if len(curve[0]):
            stage, run = stage_and_run(f.parent.relative_to(workdir))
            panels.setdefault(stage, {})[run] = curve
    if not panels:
        raise FileNotFoundError(f"no metrics.jsonl with a logged loss under {workdir}")
    columns = min(PANEL_COLUMNS, len(panels))
    rows = -(-len(panels) // columns)
    fig = _figure((columns * PANEL[0], rows * PANEL[1]))
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, (stage, curves) in zip(axes, panels.items()):
        for run, (steps, losses) in curves.items():
            ax.plot(steps, losses, marker="o" if len(steps) == 1 else None, label=run or None)
        losses = np.concatenate([curve[1] for curve in curves.values()])
        if losses.min() > 0 and losses.max() > 10 * losses.min():
            ax.set_yscale("log")
        ax.set(xlabel="step", ylabel="loss", title=stage)
        ax.grid(alpha=0.3)
        if len(curves) > 1:
            ax.legend(fontsize="small")
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    return _save(fig, path)


def audio_image(wave: np.ndarray, sample_rate: float = render.AUDIO_SAMPLE_RATE) -> np.ndarray:
    """(n_mels, frames) log-mel spectrogram of a (T,) waveform, low frequencies first."""
    return np.asarray(log_mel_spectrogram(np.asarray(wave)[None], sample_rate))[0].T


def _show(ax, modality: str, value: np.ndarray) -> None:
    """Draws one record field: RGB as is, audio as a log-mel image, masks in MASK_CMAP,
    depth in a colormap, other maps in grey."""
    value = np.asarray(value)
    if value.ndim == 3 and value.shape[-1] == 1:
        value = value[..., 0]
    if value.ndim == 1:
        ax.imshow(audio_image(value), origin="lower", aspect="auto", cmap="magma")
    elif value.ndim == 3:
        if value.dtype != np.uint8:  # Normalised network input: rescale to [0, 1].
            value = (value - value.min()) / max(float(np.ptp(value)), 1e-12)
        ax.imshow(value)
    elif modality == "mask":
        ax.imshow(value, cmap=MASK_CMAP, vmin=-0.5, vmax=19.5, interpolation="nearest")
    elif modality == "depth":
        ax.imshow(value, cmap="viridis_r")
    else:
        ax.imshow(value, cmap="gray")
    ax.set(xticks=[], yticks=[])


def _grid(rows: Sequence[str], columns: int) -> tuple[Figure, np.ndarray]:
    """A figure of `rows` x `columns` image cells, each row named on its left."""
    fig = _figure((columns * CELL, len(rows) * CELL))
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for name, ax in zip(rows, axes[:, 0]):
        ax.set_ylabel(name)
    return fig, axes


def sample_grid(records: Sequence[Mapping[str, np.ndarray]], modalities: Sequence[str],
                path: str | os.PathLike, n: int = 8,
                class_names: Sequence[str] | None = None) -> epath.Path:
    """The first `n` records, one column each, one row per modality; a record's `label`
    (or its name in `class_names`) titles its column."""
    records = list(records)[:n]
    fig, axes = _grid(modalities, len(records))
    for j, record in enumerate(records):
        for i, modality in enumerate(modalities):
            _show(axes[i, j], modality, record[modality])
        if "label" in record:
            label = int(record["label"])
            axes[0, j].set_title(class_names[label] if class_names else str(label))
    return _save(fig, path)


def segmentation_grid(inputs: np.ndarray, true_masks: np.ndarray, pred_masks: np.ndarray,
                      path: str | os.PathLike) -> epath.Path:
    """Rows of inputs, true masks and predicted masks (class maps, 0 = background)."""
    rows = {"input": inputs, "true mask": true_masks, "predicted": pred_masks}
    fig, axes = _grid(list(rows), len(inputs))
    for i, values in enumerate(rows.values()):
        for j, value in enumerate(values):
            _show(axes[i, j], "input" if i == 0 else "mask", value)
    return _save(fig, path)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """(n, 2) projection of the centred rows of `x` on its two principal axes (signs fixed
    so that each axis's largest loading is positive; zero columns if `x` has < 2 axes)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    axes = vt[:2]
    axes = axes * np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])[:, None]
    projected = x @ axes.T
    return np.pad(projected, ((0, 0), (0, 2 - projected.shape[1])))


def embedding_projection(source_emb: np.ndarray, target_emb: np.ndarray, labels: np.ndarray,
                         path: str | os.PathLike,
                         names: tuple[str, str] = ("source", "target")) -> epath.Path:
    """Scatter of both modalities' embeddings in their joint 2-D PCA: colour = class
    (tab10, repeating after 10 classes), marker = modality (circles `names[0]`, triangles
    `names[1]`); `labels` are the classes of the (paired) rows of both."""
    points = pca_2d(np.concatenate([source_emb, target_emb]))
    colours = matplotlib.colormaps["tab10"](np.asarray(labels, np.int64) % 10)
    fig = _figure()
    ax = fig.subplots()
    for part, marker, name in zip(np.split(points, [len(source_emb)]), "o^", names):
        ax.scatter(part[:, 0], part[:, 1], c=colours, marker=marker, s=18, alpha=0.7,
                   edgecolors="none", label=name)
    legend = ax.legend(title="modality")
    for handle in legend.legend_handles:
        handle.set_color("grey")
    ax.set(xlabel="PC 1", ylabel="PC 2", title="test embeddings (joint PCA), colour = class")
    return _save(fig, path)


def _floats(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def comparison_bars(results: Mapping[str, Mapping[str, float | None]],
                    path: str | os.PathLike, reference: float | None = None) -> epath.Path:
    """Per-method mean probe accuracy (`probe_top1`, in %) with `probe_top1_std` error bars
    where present (a missing mean reads n/a); `reference` (e.g. the teacher's source probe)
    as a dashed line."""
    methods = list(results)
    means = 100 * _floats([results[m].get("probe_top1") for m in methods])
    stds = 100 * _floats([results[m].get("probe_top1_std") for m in methods])
    labels = ["n/a" if np.isnan(m) else f"{m:.1f}" + ("" if np.isnan(s) else f" ± {s:.1f}")
              for m, s in zip(means, stds)]
    fig = _figure()
    ax = fig.subplots()
    bars = ax.bar(np.arange(len(methods)), np.nan_to_num(means), yerr=stds,
                  capsize=4, color="tab:blue", tick_label=methods)
    ax.bar_label(bars, labels=labels, padding=2)
    ax.margins(y=0.12)
    if reference is not None:
        ax.axhline(100 * reference, color="black", linestyle="--",
                   label="teacher (probe on source)")
        ax.legend()
    ax.set(ylabel="probe top-1 (%)", title="linear probe accuracy on the target modality")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation; nan with fewer than two points or a constant input."""
    if len(x) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(x, y).statistic)


def error_vs_distance(points: Sequence[Mapping], path: str | os.PathLike) -> epath.Path:
    """Target test error vs estimated modality distance, one labelled point per dict
    {"distance", "error", "label"}; the Spearman correlation titles the plot."""
    distance = [float(p["distance"]) for p in points]
    error = [float(p["error"]) for p in points]
    fig = _figure()
    ax = fig.subplots()
    ax.scatter(distance, error, s=30)
    for p, x, y in zip(points, distance, error):
        ax.annotate(str(p["label"]), (x, y), xytext=(4, 4), textcoords="offset points")
    ax.set(xlabel="estimated modality distance", ylabel="target test error",
           title=f"Spearman ρ = {spearman(distance, error):.2f} (n = {len(points)})")
    ax.margins(x=0.25, y=0.15)  # Room for the point labels.
    ax.grid(alpha=0.3)
    return _save(fig, path)
