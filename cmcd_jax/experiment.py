"""The whole CMCD pipeline for one config: pretrain, distil every method, evaluate, report.

`run(config, workdir)` is what `python -m cmcd_jax.main` calls; notebooks can call it too.
The step-1 teacher is trained once and shared by every method and seed. With
`num_seeds` > 1 each seed's stages live in `workdir/seed_<s>/` and the results report
the mean and std over seeds; with `gap_levels` each corruption level of the target lives in
`workdir/gap_<level>/`, and the results relate the probe's error to the measured distance.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import math
import operator
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import IO

import jax
import ml_collections
import numpy as np
from etils import epath

import cmcd_jax
from cmcd_jax import checkpoints, log, losses, methods, parallel, paths
from cmcd_jax.analysis import plots
from cmcd_jax.data import datasets, sources
from cmcd_jax.models import IMAGE_ENCODERS
from cmcd_jax.stages import common, distill, downstream, pretrain

TRAINED_STAGES = ("pretrain", "distill", "target_only", "finetune")
COMPUTE_DTYPES = ("float32", "bfloat16")  # model.dtype
METRICS = ("probe_top1", "retrieval_top1", "seg_miou", "tv_lower", "mmd")


def method_list(config) -> list[str]:
    """`config.methods` ('cmc,cmd,...') as a list."""
    return [m.strip() for m in config.methods.split(",") if m.strip()]


def gap_levels(config) -> list[float]:
    """`config.gap_levels` ('0,0.5,1') as floats in [0, 1]; empty: no sweep."""
    try:
        levels = [float(x) for x in config.gap_levels.split(",") if x.strip()]
    except ValueError:
        levels = [-1.0]
    if any(not 0.0 <= x <= 1.0 for x in levels):
        raise ValueError(f"config.gap_levels={config.gap_levels!r}: give comma-separated "
                         f"levels in [0, 1], e.g. '0,0.5,1'")
    return levels


#: Durations, batch sizes, temperatures and learning rates: each must be finite and > 0.
POSITIVE_KEYS = (
    "log_every", "checkpoint.every", "checkpoint.keep", "downstream.labels_per_class",
    "downstream.probe_steps", "downstream.probe_learning_rate", "downstream.seg_steps",
    "downstream.seg_batch_size", "downstream.seg_learning_rate", "pretrain.temperature",
    "distill.cmc.temperature", "distill.cmd.student_temperature",
    "distill.cmd.teacher_temperature",
    *(f"{s}.{k}" for s in TRAINED_STAGES for k in ("steps", "batch_size", "learning_rate")))


def check_positive(config) -> None:
    """Fails naming the first of `POSITIVE_KEYS` that is not finite and > 0."""
    for key in POSITIVE_KEYS:
        value = functools.reduce(operator.getitem, key.split("."), config)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"config.{key}={value!r}; it must be "
                             f"{'> 0' if isinstance(value, int) else 'finite and > 0'}")


def check_paths(config, workdir) -> None:
    """Fails naming the flag or key, before any work, on a remote path (gs://...) that no
    installed package can read or write, and on a remote `data.dir` (a paired folder is read
    from local files; its TFDS build goes to `data.data_dir`, which may be remote)."""
    named = {"--workdir": workdir, "config.data.data_dir": config.data.data_dir,
             "config.distill.teacher_export": config.distill.teacher_export}
    for name, value in named.items():
        problem = paths.backend_problem(str(value))
        if problem:
            raise ValueError(f"{name}={str(value)!r}: {problem}")
    if paths.is_remote(config.data.dir):
        raise ValueError(f"config.data.dir={config.data.dir!r}: a paired folder must be "
                         f"local; copy it to this machine (its TFDS build goes to "
                         f"config.data.data_dir, which may be remote)")


def check_config(config) -> None:
    """Fails early, naming the key, on values no stage could run with."""
    unknown = [m for m in method_list(config) if m not in methods.REGISTRY]
    if unknown or not method_list(config):
        raise ValueError(f"config.methods: unknown method(s) {', '.join(map(repr, unknown))}; "
                         f"valid: {', '.join(methods.names())}")
    if config.model.encoder not in IMAGE_ENCODERS:
        raise ValueError(f"config.model.encoder={config.model.encoder!r}; valid: "
                         f"{', '.join(sorted(IMAGE_ENCODERS))}")
    if config.model.dtype not in COMPUTE_DTYPES:
        raise ValueError(f"config.model.dtype={config.model.dtype!r}; valid: "
                         f"{', '.join(COMPUTE_DTYPES)}")
    if config.downstream.mode not in downstream.PROBE_MODES:
        raise ValueError(f"config.downstream.mode={config.downstream.mode!r}; valid: "
                         f"{', '.join(downstream.PROBE_MODES)}")
    if config.num_seeds < 1:
        raise ValueError(f"config.num_seeds={config.num_seeds}; it must be >= 1")
    if config.distill.cmd.variant not in losses.CMD_VARIANTS:
        raise ValueError(f"config.distill.cmd.variant={config.distill.cmd.variant!r}; valid: "
                         f"{', '.join(losses.CMD_VARIANTS)}")
    if config.dataset == "cmcd_shapes":
        from cmcd_jax.data import shapes
        if config.data.config_name not in shapes.CONFIG_NAMES:
            raise ValueError(f"config.data.config_name={config.data.config_name!r}; valid: "
                             f"{', '.join(shapes.CONFIG_NAMES)}")
    if config.dataset == "paired_folder":
        from cmcd_jax.data import paired_folder
        paired_folder.checked_conversion(config.data.resolution, config.data.audio_sample_rate,
                                         config.data.audio_seconds)
    check_positive(config)
    gap_levels(config)
    distill.check_cacheable(config)
    if config.data.dir and not epath.Path(config.data.dir).is_dir():
        raise ValueError(f"config.data.dir={config.data.dir!r}: no such directory")


def check_batch_sizes(config, mesh) -> None:
    """Every training stage's global batch splits evenly over the mesh's devices."""
    for stage in TRAINED_STAGES:
        parallel.check_batch_size(config[stage].batch_size, mesh, f"config.{stage}.batch_size")


def check_teacher(teacher_dir: epath.Path, config) -> None:
    """The teacher export must exist and encode the source modality."""
    meta = checkpoints.read_meta(teacher_dir)
    if meta["modality"] != config.data.source:
        raise ValueError(f"teacher export {teacher_dir} encodes {meta['modality']!r}, but "
                         f"config.data.source={config.data.source!r}")


MARKER = "cmcd_jax_run.json"
CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
#: Top-level files and folders a run writes besides its stage folders (`method_dir`,
#: `pretrain`, `seed_<s>`, `gap_<level>`).
RUN_FILES = (MARKER, CONFIG_FILE, LOCK_FILE, "results.json", "results.json.partial", "results.md",
             "figures")


def is_run_entry(name: str) -> bool:
    """Whether a top-level workdir entry is one a run writes."""
    stages = {"pretrain", *(m.directory.split("/")[0] for m in methods.REGISTRY.values())}
    return (name in RUN_FILES or name in stages
            or re.fullmatch(r"seed_-?\d+|gap_[0-9.e+-]+", name) is not None)


def is_marked(workdir: epath.Path) -> bool:
    """Whether `workdir` holds the marker a run writes when it claims its workdir."""
    try:
        return json.loads((workdir / MARKER).read_text())["project"] == "cmcd_jax"
    except (OSError, ValueError, KeyError, TypeError):
        return False


def run_entries(workdir: epath.Path) -> list[epath.Path]:
    """The top-level entries of the run in `workdir`; a ValueError when the workdir is not
    marked as a cmcd_jax run or holds anything a run does not write."""
    if not is_marked(workdir):
        raise ValueError(f"workdir {workdir} holds a {CONFIG_FILE} but no {MARKER}, so it is "
                         f"not a cmcd_jax run: nothing deleted; use another --workdir")
    entries = sorted(workdir.iterdir())
    foreign = [p.name for p in entries if not is_run_entry(p.name)]
    if foreign:
        raise ValueError(f"workdir {workdir} holds entries cmcd_jax did not write: "
                         f"{', '.join(foreign)}; nothing deleted; move them away or use "
                         f"another --workdir")
    return entries


def saved_work(entries: list[epath.Path]) -> list[epath.Path]:
    """What a run saved under `entries`: results, method rows, exports and checkpoints."""
    def is_saved(path: epath.Path) -> bool:
        return (path.name in ("results.json", "row.json")
                or (path.name == checkpoints.META_FILE and path.parent.name == "export")
                or (path.parent.name == "ckpt" and path.name.isdigit()))
    found = [p for e in entries if e.is_dir() for p in paths.tree(e) if is_saved(p)]
    return sorted(found + [e for e in entries if is_saved(e)])


def kept_teachers(old: dict, config, workdir: epath.Path) -> set[epath.Path]:
    """Entries holding a teacher that `config` would reuse: `pretrain` when the old run
    trained the same teacher there, or the entry holding `distill.teacher_export`."""
    if config.distill.teacher_export:
        export, root = paths.resolved(config.distill.teacher_export), paths.resolved(workdir)
        inside = export.relative_to(root).parts if export.is_relative_to(root) else ()
        return {workdir / inside[0]} if inside else set()
    return {workdir / "pretrain"} if pretrain.same_teacher(old, config) else set()


class WorkdirInUse(OSError):
    """Another process holds the workdir's lock."""


def locked_file(path: epath.Path) -> IO[str]:
    """`path` (a local file) opened and locked (an exclusive, non-blocking flock):
    WorkdirInUse naming the process written in it when another holds the lock; opened again
    when its holder removed it between our open and our lock."""
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "(not yet written)"
            f.close()
            raise WorkdirInUse(f"workdir {path.parent} is in use by process {holder}, which "
                               f"holds {path}; wait for it to end, or use another "
                               f"--workdir") from None
        if path.exists() and os.path.samestat(os.fstat(f.fileno()), os.stat(path)):
            return f
        f.close()


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike) -> Iterator[None]:
    """Within the block, process 0 holds an advisory lock on `workdir/.lock` (which names it:
    pid and host), so a second run on the workdir fails at once; the file is removed after.
    A remote workdir is not locked (a bucket has no file locks), and the run says so."""
    if jax.process_index():
        yield
        return
    if paths.is_remote(workdir):
        log.say(f"note: {workdir} is remote, so no lock keeps a second run out of it "
                f"(a bucket has no file locks): start one run per workdir")
        yield
        return
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_FILE
    with locked_file(path) as f:
        f.truncate(0)
        f.write(f"{os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)


def flat(tree: dict, prefix: str = "") -> dict:
    """{'distill.steps': 800, ...}: a nested config dict's leaves by dotted key."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def config_changes(old: dict, new: dict, shown: int = 5) -> list[str]:
    """'key old -> new' for the first `shown` keys where two configs differ (and how many
    more)."""
    before, after = flat(old), flat(new)
    keys = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    missing = "(absent)"
    changes = [f"{k} {json.dumps(before.get(k, missing))} -> {json.dumps(after.get(k, missing))}"
               for k in keys[:shown]]
    return changes + ([f"and {len(keys) - shown} more"] if len(keys) > shown else [])


def claim_workdir(config, workdir: str | os.PathLike, overwrite: bool = False) -> None:
    """Marks `workdir` as this config's run (the marker, then config.json); a run of the same
    config is accepted as is, to resume.

    A run of a different config that saved nothing (no checkpoint, export, row or results)
    is replaced; one that did is refused unless `overwrite`. Replacing deletes what that run
    wrote (only that, and never a teacher `config` would reuse); anything else in the
    workdir, or a workdir without the marker, is refused even then."""
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / CONFIG_FILE
    resolved = config.to_json(sort_keys=True, indent=2)
    old = json.loads(path.read_text()) if path.exists() else None
    if old is not None and old != json.loads(resolved):
        saved = saved_work([p for p in workdir.iterdir() if is_run_entry(p.name)])
        if saved and not overwrite:
            changes = ", ".join(config_changes(old, json.loads(resolved)))
            raise ValueError(f"workdir {workdir} holds a run of a different config ({path} "
                             f"differs: {changes}) that saved "
                             f"{saved[0].relative_to(workdir)}; use another --workdir for "
                             f"the new config, or --overwrite to delete that run")
        entries = run_entries(workdir)
        kept = kept_teachers(old, config, workdir) | {workdir / LOCK_FILE}
        if jax.process_index() == 0:
            log.say(f"deleting the run of another config in {workdir} "
                    f"({'--overwrite' if saved else 'it saved nothing'})"
                    + "".join(f"; keeping {p.name}/, a teacher this config reuses"
                              for p in sorted(kept) if p.is_dir()))
            for entry in entries:
                if entry not in kept:
                    entry.rmtree() if entry.is_dir() else entry.unlink()
    if jax.process_index() == 0:
        if not is_marked(workdir):
            marker = {"project": "cmcd_jax", "version": cmcd_jax.__version__}
            (workdir / MARKER).write_text(json.dumps(marker, indent=2))
        if not path.exists():
            path.write_text(resolved)


def cell(value, scale: float = 100, digits: int = 1) -> str:
    """A table cell: `value` x `scale` (percent by default), '-' when missing."""
    return "-" if value is None else f"{scale * value:.{digits}f}"


def metric_cell(row: dict, key: str) -> str:
    """'mean ± std' of one metric: percent, except the MMD (a squared kernel distance)."""
    scale, digits = (1, 4) if key == "mmd" else (100, 1)
    std = row.get(key + "_std")
    return cell(row.get(key), scale, digits) + ("" if std is None else
                                                f" ± {cell(std, scale, digits)}")


def results_header(results: dict) -> list[str]:
    """The title, seeds and the teacher-and-data line of results.md."""
    teacher, sizes = results["teacher"], results["data"]
    return [f"# {results['dataset']}: {results['source']} -> {results['target']}", "",
            f"Seeds: {', '.join(map(str, results.get('seeds', [results.get('seed')])))}", "",
            f"Teacher: {teacher['export']} "
            f"({'trained by this run' if teacher['trained_by_this_run'] else 'reused'}), "
            f"probe_top1 on {results['source']} {cell(teacher['probe_top1'])}. "
            f"Data: step 1 on {sizes['step1_source']} {results['source']} records "
            f"({sizes['unpaired_source']} unpaired), step 2 on {sizes['pairs']} pairs, "
            f"step 3 on {sizes['labelled_target']} labelled {results['target']} records "
            f"({sizes['labels_per_class']} per class).", ""]


LEGEND = ("probe_top1, retrieval_top1, seg_miou and tv_lower in percent, mmd raw (a squared "
          "kernel distance); mean ± std over seeds; - where the data cannot give it. tv_lower "
          "is a lower bound on the total variation distance between the teacher's source and "
          "the student's target embeddings (95% Clopper-Pearson interval), mmd comes with its "
          "permutation-test p-value.")


def metrics_table(rows: dict[str, dict]) -> list[str]:
    """{label: metrics row} as a Markdown table, one column per `METRICS`."""
    return (["| method | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
            + [f"| {label} | " + " | ".join(metric_cell(row, k) for k in METRICS) + " |"
               for label, row in rows.items()])


def distance_rows(results: dict) -> list[str]:
    """Each seed's tv_lower interval and MMD p-value, for the methods that have them."""
    seeds = results.get("seeds", [results.get("seed")])
    lines = [f"| {method} | {seed} | {cell(r['tv_lower'])} "
             f"[{cell(r['tv_lower_ci'][0])}, {cell(r['tv_lower_ci'][1])}] | "
             f"{cell(r['mmd'], 1, 4)} (p {cell(r['mmd_p_value'], 1, 3)}) |"
             for method, row in results["methods"].items()
             for seed, r in zip(seeds, row.get("per_seed", [row]))
             if r.get("tv_lower_ci") is not None and r.get("mmd_p_value") is not None]
    return (["", "| method | seed | tv_lower [95% CI] | mmd (p-value) |", "|---|---|---|---|",
             *lines] if lines else [])


def results_table(results: dict) -> str:
    """results.json as Markdown: the metrics table (mean ± std over seeds), its legend,
    each seed's intervals and p-values, and the gap sweep."""
    teacher = results["teacher"]
    rows = {f"teacher (probe on {results['source']})": {"probe_top1": teacher["probe_top1"]},
            **results["methods"]}
    lines = [*results_header(results), *metrics_table(rows), "", LEGEND,
             *distance_rows(results)]
    if "sweep" in results:
        lines += ["", "## Gap sweep: target corrupted at each level", "",
                  "| level | method | tv_lower | mmd | probe_top1 | error |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {p['level']} | {p['method']} | {cell(p['tv_lower'])} | "
                  f"{cell(p['mmd'], scale=1, digits=4)} | {cell(p['probe_top1'])} | "
                  f"{cell(p['error'])} |" for p in results["sweep"]]
        lines += [""] + [f"Spearman (error vs tv_lower), {m}: {r['tv_lower']}; "
                         f"(error vs mmd): {r['mmd']}" for m, r in results["spearman"].items()]
    return "\n".join(lines) + "\n"


def progress_table(config, workdir: epath.Path, results: dict) -> str:
    """results.md of a run still going: the rows of every finished method run (from their
    `row.json`) and the runs still to do, so a failure later loses nothing to read."""
    done, todo = {}, []
    for level in gap_levels(config) or [None]:
        for seed, seed_dir in seed_dirs(config, level_dir(workdir, level)).items():
            where = f"seed {seed}" + ("" if level is None else f", gap {level:g}")
            for method in method_list(config):
                path = method_dir(seed_dir, method) / "row.json"
                try:
                    done[f"{method} ({where})"] = json.loads(path.read_text())
                except (OSError, ValueError):
                    todo.append(f"{method} ({where})")
    return "\n".join([*results_header(results), "**Incomplete**: the rows finished so far; "
                      f"still to run: {', '.join(todo) or 'nothing'}.", "",
                      *metrics_table(done), "", LEGEND]) + "\n"


def row_summary(row: dict) -> str:
    """A metrics row as one readable line: 'probe_top1 46.0%, seg_miou 41.1%, mmd 0.0478'."""
    return ", ".join(f"{k} {metric_cell(row, k)}{'' if k == 'mmd' else '%'}"
                     for k in METRICS if row.get(k) is not None) or "no metric"


def with_seed(config, seed: int) -> ml_collections.ConfigDict:
    """A copy of `config` with another seed."""
    copy = ml_collections.ConfigDict(config.to_dict())
    copy.seed = seed
    return copy


def evaluate_method(method: str, config, workdir: epath.Path, dataset: datasets.Dataset,
                    data: dict, mesh, teacher_dir: epath.Path) -> dict:
    """Trains what `method` needs (skipping finished stages) and returns its metrics row."""
    row = dict.fromkeys(("probe_top1", "retrieval_top1", "seg_miou", "tv_lower",
                         "tv_lower_ci", "mmd", "mmd_p_value"))
    trains = methods.get(method).trains
    if trains == "labels":
        row["probe_top1"], export = downstream.run_supervised(config, method, workdir, dataset,
                                                              data, mesh)
        if export is not None:
            _, variables, meta = common.restore_model(export, mesh)
            row["seg_miou"] = downstream.segmentation_score(config, meta["encoder"], variables,
                                                            data)
    elif trains == "nothing":
        row.update(downstream.evaluate_random_init(config, dataset, data))
    elif trains == "simclr":
        encoder = pretrain.run(config, workdir, dataset, mesh, modality=config.data.target,
                               name=method)
        row.update(downstream.evaluate_encoder(config, method, encoder, workdir, dataset, data,
                                               mesh))
    else:
        student = distill.run(config, method, workdir, dataset, mesh, teacher_dir)
        row.update(downstream.evaluate_encoder(config, method, student, workdir, dataset, data,
                                               mesh))
        row.update(downstream.shared_space_metrics(config, student, teacher_dir, data, mesh))
    return row


class JobProgress:
    """Counts the job's method runs (method x seed x gap level): says which one starts, how
    long the job has run and, from the runs done so far, about how long it has left; calls
    `on_row()` after each new row."""

    def __init__(self, total: int, on_row: Callable[[], None]):
        self.total, self.on_row = total, on_row
        self.done = self.ran = 0
        self.start = time.perf_counter()

    def begin(self, method: str, seed: int) -> None:
        elapsed = time.perf_counter() - self.start
        left = "" if not self.ran else (
            f", about {minutes(elapsed / self.ran * (self.total - self.done))} left")
        log.say(f"[job] {method}, seed {seed}: method run {self.done + 1} of {self.total}; "
                f"{minutes(elapsed)} so far{left}")

    def finished(self, ran: bool) -> None:
        """One more method run done: `ran` here (its row is new), or found saved."""
        self.done += 1
        if ran:
            self.ran += 1
            self.on_row()


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def run_methods(config, workdir: epath.Path, dataset: datasets.Dataset, mesh,
                teacher_dir: epath.Path, job: JobProgress) -> dict:
    """{method: metrics row} of one seed. Each row is kept in `row.json` of the method's
    directory, so a resumed run does not evaluate a finished method again (deleting that
    directory redoes the method, its row included)."""
    data, rows = None, {}
    for method in method_list(config):
        saved = method_dir(workdir, method) / "row.json"
        rows[method] = read_saved(saved, ("probe_top1",))
        ran = rows[method] is None
        if ran:
            job.begin(method, config.seed)
            if data is None:
                data = downstream.load_eval_data(config, dataset)
            rows[method] = evaluate_method(method, config, workdir, dataset, data, mesh,
                                           teacher_dir)
            rows[method] = rounded(rows[method])
            save_json(saved, rows[method])
        job.finished(ran)
        log.say(f"[downstream/{method}] seed {config.seed}: {row_summary(rows[method])}")
    return rows


def method_dir(workdir: epath.Path, method: str) -> epath.Path:
    """Where `method`'s own stage writes: the student, the target-side encoder or the probe."""
    return workdir / methods.get(method).directory


def rounded(value, digits: int = 6):
    """`value` (nested dicts and lists) with each float rounded to `digits` significant
    digits: float32 metrics without their noise (0.27, not 0.27000001072883606)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def save_json(path: epath.Path, value: dict) -> None:
    """Writes `value` as JSON (process 0 only, floats `rounded`), atomically: a crash
    leaves none or all."""
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(rounded(value), indent=2))
        partial.replace(path)


def read_saved(path: epath.Path, required: tuple[str, ...]) -> dict | None:
    """The JSON object a run saved in `path`, or None when there is none; a damaged one (not
    JSON, or without the `required` keys) is reported and None returned, so that the caller
    rebuilds it from what the stages saved."""
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        why = f"not JSON ({e})"
    else:
        missing = [k for k in required if not isinstance(value, dict) or k not in value]
        if not missing:
            return value
        why = f"no {', '.join(missing)} in it"
    log.say(f"{path} is damaged: {why}; rebuilding it")
    return None


def aggregate(per_seed: list[dict]) -> dict:
    """Per method: each metric's mean and std over seeds (None where no seed has it)."""
    methods = {}
    for method in per_seed[0]:
        rows = [seed_rows[method] for seed_rows in per_seed]
        out = {}
        for key in rows[0]:
            values = [r[key] for r in rows if r[key] is not None]
            if values and not isinstance(values[0], list):
                out[key] = float(np.mean(values))
                out[key + "_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
            else:
                out[key] = values[0] if len(rows) == 1 and values else None
        methods[method] = {**out, "per_seed": rows}
    return methods


def seed_dirs(config, workdir: epath.Path) -> dict[int, epath.Path]:
    """{seed: where its stages live}: `workdir` itself for a single seed."""
    seeds = [config.seed + k for k in range(config.num_seeds)]
    return {s: workdir if len(seeds) == 1 else workdir / f"seed_{s}" for s in seeds}


def run_seeds(config, workdir: epath.Path, dataset: datasets.Dataset, mesh,
              teacher_dir: epath.Path, job: JobProgress) -> dict:
    """Every method for every seed; aggregated rows."""
    return aggregate([run_methods(with_seed(config, s), seed_dir, dataset, mesh, teacher_dir,
                                  job)
                      for s, seed_dir in seed_dirs(config, workdir).items()])


def spearman(x: list, y: list) -> float | None:
    """Spearman's rank correlation of the points where both are known (None if undefined)."""
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None]
    rho = plots.spearman(*zip(*pairs)) if len(pairs) >= 3 else math.nan
    return None if math.isnan(rho) else round(rho, 4)


def level_dir(workdir: epath.Path, level: float | None) -> epath.Path:
    """Where the gap sweep's `level` lives (None: no sweep, `workdir` itself)."""
    return workdir if level is None else workdir / f"gap_{level:g}"


def run_gap_sweep(config, workdir: epath.Path, dataset: datasets.Dataset, mesh,
                  teacher_dir: epath.Path, levels: list[float],
                  job: JobProgress) -> dict:
    """Every method at every corruption level of the target; error against distance."""
    points, by_level = [], {}
    for level in levels:
        corrupted = sources.with_corrupted_target(dataset, config.data.target, level,
                                                  config.seed)
        by_level[level] = run_seeds(config, level_dir(workdir, level), corrupted, mesh,
                                    teacher_dir, job)
        for method, row in by_level[level].items():
            error = None if row["probe_top1"] is None else 1.0 - row["probe_top1"]
            points.append({"level": level, "method": method, "tv_lower": row["tv_lower"],
                           "mmd": row["mmd"], "probe_top1": row["probe_top1"],
                           "error": error})
    correlations = {
        m: {d: spearman([p[d] for p in points if p["method"] == m],
                        [p["error"] for p in points if p["method"] == m])
            for d in ("tv_lower", "mmd")}
        for m in method_list(config) if methods.get(m).distils}
    return {"methods": by_level[levels[0]], "sweep": points, "spearman": correlations}


def run(config, workdir: str | os.PathLike, overwrite: bool = False) -> dict:
    """Runs every stage the config asks for (skipping completed ones) and writes results.

    The whole config is checked, the mesh made and the dataset loaded before the workdir is
    claimed, so a config error leaves nothing behind."""
    check_paths(config, workdir)
    workdir = epath.Path(workdir)
    check_config(config)
    parallel.initialize_distributed(config.parallel.distributed)
    mesh = parallel.make_mesh(config.parallel.num_devices)
    check_batch_sizes(config, mesh)
    dataset = parallel.process_zero_first(lambda: sources.load_dataset(config),
                                          "cmcd_jax: dataset prepared")
    with workdir_lock(workdir):
        claim_workdir(config, workdir, overwrite)
        parallel.barrier("cmcd_jax: workdir claimed")  # Process 0 deleted what it replaced.
        return run_stages(config, workdir, dataset, mesh)


def run_stages(config, workdir: epath.Path, dataset: datasets.Dataset, mesh) -> dict:
    """`run` in a claimed workdir: the results of a completed run, else every stage."""
    results = read_saved(workdir / "results.json", ("methods", "teacher"))
    if results is not None:
        log.say(f"{workdir} holds a completed run; its results:\n")
        print(results_table(results))
        return results
    teacher_dir, teacher = pretrain.teacher(config, workdir, dataset, mesh)
    check_teacher(teacher_dir, config)
    eval_data = downstream.load_eval_data(config, dataset)
    teacher["probe_top1"] = downstream.evaluate_teacher(config, teacher_dir, eval_data, mesh)
    log.say(f"[pretrain] teacher {teacher_dir}: probe_top1 on {config.data.source} "
            f"{cell(teacher['probe_top1'])}")
    levels = gap_levels(config)
    few = eval_data["target"]["few_indices"] if eval_data["target"] is not None else []
    results = {"dataset": config.dataset, "source": config.data.source,
               "target": config.data.target,
               "seeds": [config.seed + k for k in range(config.num_seeds)],
               "data": {**datasets.data_sizes(dataset, config.data.source, config.data.target),
                        "labels_per_class": config.downstream.labels_per_class,
                        "labelled_target": len(few)},
               "teacher": teacher}
    def on_row():
        if jax.process_index() == 0:
            (workdir / "results.md").write_text(progress_table(config, workdir, results))
    job = JobProgress(len(levels or [None]) * config.num_seeds * len(method_list(config)),
                      on_row)
    if levels:
        results.update(run_gap_sweep(config, workdir, dataset, mesh, teacher_dir, levels, job))
    else:
        results["methods"] = run_seeds(config, workdir, dataset, mesh, teacher_dir, job)
    results = rounded(results)
    if jax.process_index() == 0:
        draw_figures(config, workdir, dataset, results)
        save_json(workdir / "results.json", results)
        (workdir / "results.md").write_text(results_table(results))
        print(results_table(results))
    return results


def teacher_metrics(workdir: epath.Path, results: dict) -> dict[str, epath.Path]:
    """{"pretrain (shared teacher)": its metrics.jsonl} when this run's teacher was trained
    outside the workdir and its metrics are there; else {}."""
    stage_dir = epath.Path(results["teacher"]["export"]).parent
    metrics = stage_dir / "metrics.jsonl"
    if (paths.resolved(stage_dir).is_relative_to(paths.resolved(workdir))
            or not metrics.exists()):
        return {}
    return {"pretrain (shared teacher)": metrics}


def draw_figures(config, workdir: epath.Path, dataset: datasets.Dataset,
                 results: dict) -> None:
    """Loss curves, sample pairs, the comparison bars and the gap sweep, in workdir/figures."""
    figures = workdir / "figures"
    plots.loss_curves(workdir, figures / "loss_curves.png",
                      others=teacher_metrics(workdir, results))
    source, target = config.data.source, config.data.target
    if dataset.pairs:
        shown = (source, target, *(("mask",) if dataset.has_mask else ()))
        records = dataset.pairs["test"]
    else:
        shown, records = (target,), dataset.pools[target]["test"]
    plots.sample_grid([records[i] for i in range(min(8, len(records)))], shown,
                      figures / "samples.png")
    plots.comparison_bars(results["methods"], figures / "comparison.png",
                          reference=results["teacher"]["probe_top1"])
    for distance in ("tv_lower", "mmd") if "sweep" in results else ():
        points = [{"distance": p[distance], "error": p["error"],
                   "label": f"{p['method']} @ {p['level']:g}"} for p in results["sweep"]
                  if p[distance] is not None and p["error"] is not None]
        plots.error_vs_distance(points, figures / f"error_vs_{distance}.png")
