"""The whole CMCD pipeline for one config: pretrain, distil every method, evaluate, report.

`run(config, workdir)` is what `python -m cmcd_jax.main` calls; notebooks can call it too.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax

from cmcd_jax import checkpoints, parallel
from cmcd_jax.data import shapes
from cmcd_jax.models import IMAGE_ENCODERS
from cmcd_jax.stages import distill, downstream, pretrain

BASELINES = ("target_only", "random_init")
METHODS = (*distill.METHODS, *BASELINES)
METRICS = ("probe_top1", "retrieval_top1")


def method_list(config) -> list[str]:
    """`config.methods` ('cmc,cmd,...') as a list."""
    return [m.strip() for m in config.methods.split(",") if m.strip()]


def check_config(config) -> None:
    """Fails early, naming the key, on values no stage could run with."""
    unknown = [m for m in method_list(config) if m not in METHODS]
    if unknown:
        raise ValueError(f"config.methods: unknown method(s) {', '.join(map(repr, unknown))}; "
                         f"valid: {', '.join(METHODS)}")
    if config.dataset != "cmcd_shapes":
        raise ValueError(f"config.dataset={config.dataset!r}; valid: 'cmcd_shapes'")
    if config.data.source == config.data.target:
        raise ValueError(f"config.data.source and config.data.target are both "
                         f"{config.data.source!r}; distillation needs two modalities")
    for key in ("source", "target"):
        if config.data[key] not in shapes.MODALITIES:
            raise ValueError(f"config.data.{key}={config.data[key]!r}; valid: "
                             f"{', '.join(shapes.MODALITIES)}")
    if config.model.encoder not in IMAGE_ENCODERS:
        raise ValueError(f"config.model.encoder={config.model.encoder!r}; valid: "
                         f"{', '.join(sorted(IMAGE_ENCODERS))}")


def check_teacher(teacher_dir: pathlib.Path, config) -> None:
    """The teacher export must exist and encode the source modality."""
    meta = checkpoints.read_meta(teacher_dir)
    if meta["modality"] != config.data.source:
        raise ValueError(f"teacher export {teacher_dir} encodes {meta['modality']!r}, but "
                         f"config.data.source={config.data.source!r}")


def claim_workdir(config, workdir: pathlib.Path) -> None:
    """Writes config.json, refusing a workdir that holds a run of a different config."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    resolved = config.to_json(sort_keys=True, indent=2)
    if path.exists() and json.loads(path.read_text()) != json.loads(resolved):
        raise ValueError(f"workdir {workdir} holds a run of a different config ({path}); "
                         f"use another --workdir")
    if jax.process_index() == 0 and not path.exists():
        path.write_text(resolved)


def results_table(results: dict) -> str:
    """results.json as a Markdown table (percentages)."""
    lines = [f"# {results['dataset']}: {results['source']} -> {results['target']}", "",
             "| method | " + " | ".join(METRICS) + " |",
             "|---|" + "---|" * len(METRICS)]
    for method, row in results["methods"].items():
        cells = ["-" if row.get(k) is None else f"{100 * row[k]:.1f}" for k in METRICS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    ref = results["reference"]["source_probe_top1"]
    lines += ["", f"Reference: the teacher's probe on the source modality: {100 * ref:.1f}"]
    return "\n".join(lines) + "\n"


def run(config, workdir: str | pathlib.Path) -> dict:
    """Runs every stage the config asks for (skipping completed ones) and writes results."""
    workdir = pathlib.Path(workdir)
    check_config(config)
    parallel.initialize_distributed(config.parallel.distributed)
    claim_workdir(config, workdir)
    done = workdir / "results.json"
    if done.exists():
        results = json.loads(done.read_text())
        print(f"{workdir} holds a completed run; its results:\n", file=sys.stderr)
        print(results_table(results))
        return results
    mesh = parallel.make_mesh(config.parallel.num_devices)
    sources = shapes.load_shapes(config.data.config_name, config.data.data_dir)
    teacher_dir = (pathlib.Path(config.distill.teacher_export) if config.distill.teacher_export
                   else pretrain.run(config, workdir, sources, mesh))
    check_teacher(teacher_dir, config)
    data = downstream.load_eval_data(config, sources)
    methods = {}
    for method in method_list(config):
        if method == "target_only":
            methods[method] = downstream.run_target_only(config, workdir, sources, data, mesh)
        elif method == "random_init":
            methods[method] = downstream.evaluate_random_init(config, data)
        else:
            student_dir = distill.run(config, method, workdir, sources, mesh, teacher_dir)
            methods[method] = downstream.evaluate_student(config, student_dir, teacher_dir,
                                                          data, mesh)
        print(f"[downstream/{method}] {methods[method]}", file=sys.stderr, flush=True)
    results = {"dataset": config.dataset, "source": config.data.source,
               "target": config.data.target, "seed": config.seed, "methods": methods,
               "reference": {"source_probe_top1": downstream.evaluate_teacher(
                   config, teacher_dir, sources, data, mesh)}}
    if jax.process_index() == 0:
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
        (workdir / "results.md").write_text(results_table(results))
        print(results_table(results))
    return results
