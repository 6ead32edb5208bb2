"""Speed of one CMCD distillation step, side by side with the PyTorch reference.

    python -m cmcd_jax.bench.speed --model resnet18 --batch 64 [--steps 5] [--warmup 2]
        [--repeats 1] [--teacher online|cached]
        [--vs-torch [--torch-python PY] [--torch-script PATH] [--torch-threads N]]
    python -m cmcd_jax.bench.speed --mode input [--config-name 32] [--data-dir DIR] ...
    python -m cmcd_jax.bench.speed --mode stage [--stage-steps 20] ...

``--mode step`` (default) builds the two models and the step of
``shared/bench/torch_reference.py`` in JAX: a frozen teacher (eval mode) on a 32x32x3 source
batch, the student (train mode) forward/backward on the paired 32x32x1 target batch, the
symmetric CMC loss (tau 0.07, :func:`cmcd_jax.losses.cmc_loss`) and the optimizer update
(SGD momentum 0.9, lr 0.05, weight decay 5e-4 for ``resnet18``; AdamW lr 1e-3, weight decay
0.05 for ``vit_t4``); both models end in a linear projection to 128. The step is the real one
(:func:`cmcd_jax.stages.distill.make_distill_step`), jitted with the train state donated.
Each repeat prints one JSON line with the reference's fields (``framework, version, model,
batch, threads, step_sec_median, samples_per_sec``) plus ``compile_sec``,
``flops_per_sample`` (the model's FLOPs: XLA's cost analysis of the step with plain-autodiff
convolutions, per sample), ``achieved_flops_per_sec``, ``peak_flops_per_sec`` (a 2048^3
fp32 matmul measured right after each timed window), ``utilization`` (their ratio) and
``compiled_flops_per_sample`` (XLA's count for the compiled step, which counts loop bodies
once). ``--vs-torch`` first runs the reference with ``--torch-python`` (default: this
interpreter; skipped with a note when it cannot import torch) and adds its line as ``torch``
and ``ratio`` = ours / torch samples/s. ``--teacher cached`` times the step
without the teacher's forward, its outputs coming with the batch as in the distill stage with
``distill.cache_teacher`` (the reference still runs its teacher: that ratio is not like for
like); ``teacher`` in the record says which. On a loaded machine torch's
OpenMP threads can spin against other processes (seen: 2 threads 4-5x slower than 1), so
compare ``--torch-threads 1`` too.

``--mode input`` times the real input pipeline
(:func:`cmcd_jax.data.pipeline.paired_batches` of image/sketch pairs from ``cmcd_shapes``,
as the distill stage builds it) and reports ``batches_per_sec`` against the step's
``step_batches_per_sec`` (``ratio`` = input / step; the target is >= 3).

``--mode stage`` runs ``python -m cmcd_jax.main`` (quickstart config with the encoder set to
``--model``, methods ``cmc``, a 1-step teacher pretraining, ``--stage-steps`` distill steps)
in a temporary workdir, reads ``distill/cmc/metrics.jsonl`` and reports the median
``examples_per_sec`` of the logged intervals after the first (which includes compilation)
against the bare step (``ratio`` = stage / step); with ``--teacher cached`` both run with
the cached teacher (the stage with ``distill.min_crop_scale=1``). The stage's student has the
config's projection head and AdamW schedule, not the reference's linear head and optimizer.

Last measured (the README's Speed table: a quiet 2-core AMD EPYC, batch 64, ``--repeats 2
--vs-torch [--teacher cached]``). Runs of the same code vary by up to ~10% from process to
process and from day to day (one commit's ResNet-18 step measured 29.1-29.2 samples/s, and
32.5-32.8 in a rerun), so read ranges, not digits; the table's resnet18 row spans two sessions
(33.1-33.5 against torch's 41.3-44.5, and a day later 30.6-33.4 against 43.9-44.3). FLOPs per
sample: resnet18 3.86 G (2.90 G with the cached teacher), vit_t4 2.90 G (2.17 G). The ViT-T/4
step went from 37.7-38.5 to 40.9-41.2 samples/s with the erf GELU and the split q, k, v of
:mod:`cmcd_jax.models.vit`. The whole distill stage runs at 0.99-1.05x the bare step (``--mode
stage``; resnet18 with ``--stage-steps 20``: 40.8 examples/s with the cached teacher, 33.4
without), and the input pipeline delivers 55x the batches the step consumes (``--mode input``).
Dropping the crops for the cached teacher cost nothing measurable on image -> sketch
(``configs/compare.py`` with ``--config.methods=cmc --config.distill.cache_teacher=True
--config.distill.min_crop_scale=1``, 3 seeds: probe 31.5 ± 0.2, retrieval 2.6 ± 0.7, against
31.6 ± 0.6 and 2.7 ± 0.3 with crops). bf16 does not pay on this CPU: YNNPACK's bf16 matmul runs
at 1.9x fp32's rate (336 vs 179 GFLOP/s), but the ViT-T/4 step in bf16 ran at 33-36 samples/s
against 41 in fp32.

Set XLA flags through the ``XLA_FLAGS`` environment variable; they are echoed in the output
(with :mod:`cmcd_jax.cpu.xla_flags` added, as ``python -m cmcd_jax.main`` adds them).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cmcd_jax import losses
from cmcd_jax.cpu import xla_flags
from cmcd_jax.cpu.conv import fast_weight_grad_default
from cmcd_jax.data import pipeline
from cmcd_jax.models import EncoderWithHead, LinearClassifier, make_encoder
from cmcd_jax.stages import common, distill

MODELS = ("resnet18", "vit_t4")
MODES = ("step", "input", "stage")
EMBED_DIM = 128
TEMPERATURE = 0.07
SOURCE, TARGET = "image", "sketch"
INPUT_SHAPES = {SOURCE: (32, 32, 3), TARGET: (32, 32, 1)}
PEAK_MATMUL_SIZE = 2048
REPO = pathlib.Path(__file__).resolve().parents[2]
TORCH_SCRIPT = REPO.parent / "shared" / "bench" / "torch_reference.py"


def build_model(name: str, **encoder_kwargs: Any) -> EncoderWithHead:
    """Encoder ``name`` with the reference's linear projection to ``EMBED_DIM``."""
    return EncoderWithHead(make_encoder(name, **encoder_kwargs), LinearClassifier(EMBED_DIM))


def make_tx(name: str) -> optax.GradientTransformation:
    """The reference's optimizer: torch SGD(lr 0.05, momentum 0.9, wd 5e-4; wd coupled, i.e.
    added to the gradient before momentum) for resnet18, torch AdamW(lr 1e-3, wd 0.05)
    otherwise."""
    if name == "resnet18":
        return optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.05, momentum=0.9))
    return optax.adamw(1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05)


def random_batch(batch: int, seed: int = 0) -> dict:
    """``{'image': (B, 32, 32, 3), 'sketch': (B, 32, 32, 1)}`` standard-normal float32."""
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal((batch, *s), dtype=np.float32)
            for k, s in INPUT_SHAPES.items()}


def make_step(name: str, batch: int, seed: int = 0, cached_teacher: bool = False,
              **encoder_kwargs: Any) -> tuple:
    """``(jitted step, jitted init, batch)`` of the reference step for ``name``.

    ``step(state, teacher_variables, batch) -> (state, {'loss'})`` donates ``state``;
    ``init(key) -> (teacher_variables, state)``. ``cached_teacher``: the batch holds the
    teacher's output (random values; the cost does not depend on them) instead of the source,
    as in the distill stage with ``distill.cache_teacher``.
    """
    teacher, student = build_model(name, **encoder_kwargs), build_model(name, **encoder_kwargs)
    inputs = jax.tree.map(jnp.asarray, random_batch(batch, seed))
    source_inputs = inputs[SOURCE]
    if cached_teacher:
        inputs = {TARGET: inputs[TARGET], pipeline.TEACHER_OUT: jax.random.normal(
            jax.random.key(seed), (batch, EMBED_DIM))}
    tx = make_tx(name)

    @jax.jit  # One program: eager init would compile every op separately (slow).
    def init(key: jax.Array) -> tuple:
        key_t, key_s = jax.random.split(key)
        student_variables = student.init(key_s, inputs[TARGET][:1], train=False)
        return (teacher.init(key_t, source_inputs[:1], train=False),
                common.TrainState.create(student_variables, tx))

    objective = distill.Objective(functools.partial(losses.cmc_loss, temperature=TEMPERATURE,
                                                    symmetric=True))
    step = distill.make_distill_step(student, teacher, tx, objective, source=SOURCE,
                                     target=TARGET, cached_teacher=cached_teacher)
    return jax.jit(step, donate_argnums=0), init, inputs


def build_step(name: str, batch: int, seed: int = 0, cached_teacher: bool = False,
               **encoder_kwargs: Any) -> tuple:
    """``(jitted step, state, teacher_variables, batch)``, initialised (see :func:`make_step`)."""
    step, init, inputs = make_step(name, batch, seed, cached_teacher, **encoder_kwargs)
    teacher_variables, state = init(jax.random.key(seed))
    return step, state, teacher_variables, inputs


def _flops(stage: Any) -> float:
    """FLOPs of a lowered or compiled program from XLA's cost analysis (NaN if absent)."""
    cost = stage.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", float("nan")))


def compile_step(step: Callable, *args: Any) -> tuple[Callable, float, float]:
    """``(compiled step, compile seconds, FLOPs per call XLA counts in the compiled step)``.

    XLA counts a loop body once, so this undercounts the scanned weight-gradient taps of
    :mod:`cmcd_jax.cpu.conv`; :func:`model_flops` does not.
    """
    t0 = time.perf_counter()
    compiled = step.lower(*args).compile()
    return compiled, time.perf_counter() - t0, _flops(compiled)


def model_flops(name: str, batch: int, cached_teacher: bool = False,
                **encoder_kwargs: Any) -> float:
    """FLOPs per step of the model itself: XLA's count for the step traced with plain
    autodiff convolutions (no loops), lowered only (no compilation)."""
    with fast_weight_grad_default(False):
        step, init, inputs = make_step(name, batch, 0, cached_teacher, **encoder_kwargs)
        teacher_variables, state = jax.eval_shape(init, jax.random.key(0))
        return _flops(step.lower(state, teacher_variables, inputs))


def time_steps(step: Callable, state: Any, args: tuple, steps: int, warmup: int) -> tuple:
    """``(final state, per-step seconds)``: ``warmup`` untimed calls, then ``steps`` timed.

    Each call is ``state, metrics = step(state, *args)``, waited for to completion.
    """
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        state, metrics = step(state, *args)
        jax.block_until_ready((state, metrics))
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return state, times


def matmul_peak(size: int, repeats: int = 5) -> float:
    """Best FLOP/s of a jitted ``(size, size) @ (size, size)`` fp32 matmul."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size), dtype=np.float32))
    matmul = jax.jit(jnp.matmul).lower(a, a).compile()
    jax.block_until_ready(matmul(a, a))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(matmul(a, a))
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best


def step_record(name: str, batch: int, times: Sequence[float], compile_sec: float,
                flops: float, compiled_flops: float, peak: float) -> dict:
    """The JSON record of one timed window (the reference's fields first)."""
    sec = float(np.median(times))
    per_sample = flops / batch
    return {"framework": "jax", "version": jax.__version__, "model": name, "batch": batch,
            "threads": len(os.sched_getaffinity(0)), "step_sec_median": sec,
            "samples_per_sec": batch / sec, "compile_sec": compile_sec,
            "flops_per_sample": per_sample, "achieved_flops_per_sec": per_sample * batch / sec,
            "peak_flops_per_sec": peak, "utilization": per_sample * batch / sec / peak,
            "compiled_flops_per_sample": compiled_flops / batch,
            "backend": jax.default_backend(), "xla_flags": os.environ.get("XLA_FLAGS", "")}


def run_torch(python: str, script: pathlib.Path, name: str, batch: int, steps: int,
              warmup: int, threads: int = 0) -> dict | None:
    """The reference's JSON line, or ``None`` (with a note on stderr) if torch is missing.

    ``threads > 0`` sets ``OMP_NUM_THREADS`` (torch's intra-op threads) for the run.
    """
    probe = subprocess.run([python, "-c", "import torch"], capture_output=True)
    if probe.returncode:
        print(f"benchmark: {python} cannot import torch; skipping the reference",
              file=sys.stderr)
        return None
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads > 0 else {}))
    proc = subprocess.run([python, str(script), "--model", name, "--batch", str(batch),
                           "--steps", str(steps), "--warmup", str(warmup)],
                          capture_output=True, text=True, check=True, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_step(args: argparse.Namespace, emit: Callable[[dict], None],
               **encoder_kwargs: Any) -> list[dict]:
    """``--mode step``: one record per repeat (with the reference's when ``--vs-torch``)."""
    cached = args.teacher == "cached"
    step, state, teacher_variables, inputs = build_step(args.model, args.batch, 0, cached,
                                                        **encoder_kwargs)
    compiled, compile_sec, compiled_flops = compile_step(step, state, teacher_variables, inputs)
    flops = model_flops(args.model, args.batch, cached, **encoder_kwargs)
    records = []
    for _ in range(args.repeats):
        ref = (run_torch(args.torch_python, args.torch_script, args.model, args.batch,
                         args.steps, args.warmup, args.torch_threads)
               if args.vs_torch else None)
        state, times = time_steps(compiled, state, (teacher_variables, inputs), args.steps,
                                  args.warmup)
        peak = matmul_peak(PEAK_MATMUL_SIZE)
        record = step_record(args.model, args.batch, times, compile_sec, flops, compiled_flops,
                             peak)
        record["teacher"] = args.teacher
        if ref is not None:
            record.update(torch=ref, ratio=record["samples_per_sec"] / ref["samples_per_sec"])
        emit(record)
        records.append(record)
    return records


def bare_step_rate(args: argparse.Namespace) -> float:
    """Samples/s of the bare step (median of ``--steps`` after ``--warmup``)."""
    step, state, teacher_variables, inputs = build_step(args.model, args.batch, 0,
                                                        args.teacher == "cached")
    _, times = time_steps(step, state, (teacher_variables, inputs), args.steps,
                          max(args.warmup, 1))
    return args.batch / float(np.median(times))


def time_batches(batches: Iterator[dict], count: int, warmup: int) -> float:
    """Batches/s of drawing ``count`` batches after ``warmup`` untimed ones."""
    for _ in range(warmup):
        next(batches)
    t0 = time.perf_counter()
    for _ in range(count):
        next(batches)
    return count / (time.perf_counter() - t0)


def bench_input(args: argparse.Namespace, emit: Callable[[dict], None]) -> dict:
    """``--mode input``: the distill stage's grain pipeline vs the step's consumption."""
    from cmcd_jax.data import pipeline, shapes

    sources = shapes.load_shapes(args.config_name, args.data_dir)
    batches = pipeline.paired_batches(sources["train"], (SOURCE, TARGET), args.batch, seed=1,
                                      min_scale=0.3, jitter=0.0)
    rate = time_batches(batches, args.input_batches, warmup=2)
    step_rate = bare_step_rate(args) / args.batch
    record = {"mode": "input", "model": args.model, "batch": args.batch,
              "config_name": args.config_name, "batches_per_sec": rate,
              "samples_per_sec": rate * args.batch, "step_batches_per_sec": step_rate,
              "ratio": rate / step_rate}
    emit(record)
    return record


STAGE_CONFIG = '''from cmcd_jax import defaults


def get_config():
    config = defaults.default_config()
    config.model.encoder = {model!r}
    config.model.encoder_kwargs = config.model.target_encoder_kwargs = {{}}
    return config
'''


def stage_command(workdir: pathlib.Path, args: argparse.Namespace) -> list[str]:
    """``python -m cmcd_jax.main`` with a config (written into ``workdir``) for ``--model``."""
    config = workdir / "bench_config.py"
    config.write_text(STAGE_CONFIG.format(model=args.model))
    every = max(args.stage_steps // 4, 1)
    command = [sys.executable, "-m", "cmcd_jax.main", f"--config={config}",
               f"--workdir={workdir / 'run'}", "--config.methods=cmc",
               f"--config.data.config_name={args.config_name}",
               "--config.pretrain.steps=1", f"--config.pretrain.batch_size={args.batch}",
               f"--config.distill.steps={args.stage_steps}",
               f"--config.distill.batch_size={args.batch}", f"--config.log_every={every}",
               f"--config.checkpoint.every={args.stage_steps}"]
    if args.teacher == "cached":
        command += ["--config.distill.cache_teacher=True", "--config.distill.min_crop_scale=1"]
    return command + ([f"--config.data.data_dir={args.data_dir}"] if args.data_dir else [])


def logged_rates(metrics_file: pathlib.Path) -> list[float]:
    """``examples_per_sec`` of every line of a stage's ``metrics.jsonl`` that has one (an
    interval holding only the compiling first step has none)."""
    lines = metrics_file.read_text().splitlines() if metrics_file.exists() else []
    rows = [json.loads(line) for line in lines]
    return [row["examples_per_sec"] for row in rows if "examples_per_sec" in row]


def run_stage(args: argparse.Namespace, timeout: float = 3600) -> list[float]:
    """Runs the distill stage until its last step is logged (then kills it: SIGTERM would
    only make it checkpoint and go on); its logged rates."""
    with tempfile.TemporaryDirectory(prefix="cmcd_bench_stage_") as tmp:
        workdir = pathlib.Path(tmp)
        metrics = workdir / "run" / "distill" / "cmc" / "metrics.jsonl"
        expected = -(-args.stage_steps // max(args.stage_steps // 4, 1))
        with open(workdir / "log.txt", "w") as log:
            proc = subprocess.Popen(stage_command(workdir, args), cwd=REPO, stdout=log,
                                    stderr=subprocess.STDOUT)
            deadline = time.monotonic() + timeout
            while len(logged_rates(metrics)) < expected and proc.poll() is None:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            if proc.poll() is None:  # Past its last step (or the deadline): not needed.
                proc.kill()
                proc.wait()
        rates = logged_rates(metrics)
        if len(rates) < expected:
            tail = (workdir / "log.txt").read_text()[-2000:]
            raise RuntimeError(f"the distill stage logged {len(rates)}/{expected} rates:\n{tail}")
        return rates


def bench_stage(args: argparse.Namespace, emit: Callable[[dict], None]) -> dict:
    """``--mode stage``: end-to-end distill-stage examples/s vs the bare step."""
    step_rate = bare_step_rate(args)
    rates = run_stage(args)
    stage_rate = float(np.median(rates[1:] or rates))
    record = {"mode": "stage", "model": args.model, "batch": args.batch,
              "teacher": args.teacher, "stage_steps": args.stage_steps,
              "examples_per_sec": stage_rate,
              "logged_examples_per_sec": rates, "step_samples_per_sec": step_rate,
              "ratio": stage_rate / step_rate}
    emit(record)
    return record


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m cmcd_jax.bench.speed",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=MODES, default="step")
    ap.add_argument("--model", choices=MODELS, default="resnet18")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per repeat")
    ap.add_argument("--repeats", type=int, default=1, help="step mode: timed windows")
    ap.add_argument("--vs-torch", action="store_true", help="step mode: run the reference too")
    ap.add_argument("--teacher", choices=("online", "cached"), default="online",
                    help="step, stage: the teacher's forward per step (as the reference), or "
                         "its cached outputs (distill.cache_teacher)")
    ap.add_argument("--torch-python", default=sys.executable)
    ap.add_argument("--torch-script", type=pathlib.Path, default=TORCH_SCRIPT)
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="OMP_NUM_THREADS for the reference (0: torch's default)")
    ap.add_argument("--config-name", default="32", help="cmcd_shapes variant (input, stage)")
    ap.add_argument("--data-dir", default="", help="TFDS data dir (input, stage)")
    ap.add_argument("--input-batches", type=int, default=50, help="input mode: timed batches")
    ap.add_argument("--stage-steps", type=int, default=20, help="stage mode: distill steps")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None, **encoder_kwargs: Any) -> list[dict] | dict:
    """Runs the benchmark ``argv`` asks for; prints (and returns) its JSON record(s).

    ``encoder_kwargs`` (step mode only, for tests) shrink the encoder, e.g. ``depth=1``.
    """
    args = parse_args(argv)

    def emit(record: dict) -> None:
        print(json.dumps(record), flush=True)

    if args.mode == "step":
        return bench_step(args, emit, **encoder_kwargs)
    return {"input": bench_input, "stage": bench_stage}[args.mode](args, emit)


if __name__ == "__main__":
    xla_flags.apply()  # Before JAX creates its backends.
    main()
