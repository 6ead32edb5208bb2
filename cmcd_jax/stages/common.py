"""Pieces every stage shares: train state, optimizer, model construction, the train loop."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tensorboardX
from etils import epath
from tensorboardX import record_writer

from cmcd_jax import checkpoints, log, parallel, paths
from cmcd_jax.data import modalities
from cmcd_jax.models import EncoderWithHead, LinearClassifier, ProjectionHead, make_encoder


@flax.struct.dataclass
class TrainState:
    """Everything a stage's step updates: step counter, params, BatchNorm stats, optimizer."""

    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: optax.OptState

    @classmethod
    def create(cls, variables: dict, tx: optax.GradientTransformation) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=variables["params"],
                   batch_stats=variables.get("batch_stats", {}),
                   opt_state=tx.init(variables["params"]))

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def apply_train_mode(model, params: dict, batch_stats: dict, inputs) -> tuple:
    """(model outputs, updated BatchNorm stats) of a training-mode forward pass."""
    outputs, updates = model.apply({"params": params, "batch_stats": batch_stats}, inputs,
                                   train=True, mutable=["batch_stats"])
    return outputs, updates["batch_stats"]


def apply_gradients(state: TrainState, tx: optax.GradientTransformation, grads: dict,
                    batch_stats: dict) -> TrainState:
    """One optimizer update of `state` (and its new BatchNorm stats)."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         batch_stats=batch_stats, opt_state=opt_state)


def make_optimizer(opt_cfg, steps: int) -> optax.GradientTransformation:
    """AdamW with linear warm-up and cosine decay over `steps`."""
    warmup = min(opt_cfg.warmup_steps, max(steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(0.0, opt_cfg.learning_rate, warmup,
                                                  max(steps, warmup + 1))
    return optax.adamw(schedule, weight_decay=opt_cfg.weight_decay)


def encoder_spec(config, modality: str, dataset) -> dict:
    """Name and kwargs of the encoder the config picks for `modality` of `dataset`: the
    target's with `model.target_encoder_kwargs`, any other's with `model.encoder_kwargs`,
    computing in `model.dtype`."""
    kwargs = (config.model.target_encoder_kwargs if modality == config.data.target
              else config.model.encoder_kwargs).to_dict()
    kwargs["dtype"] = config.model.dtype
    if modalities.get(modality).encoder == "audio":
        return {"name": "audio", "kwargs": {
            "backbone": config.model.encoder, "backbone_kwargs": kwargs,
            "sample_rate": float(dataset.audio_sample_rate)}}
    return {"name": config.model.encoder, "kwargs": kwargs}


def build_model(spec: dict, head: dict) -> EncoderWithHead:
    """An encoder-with-head from its spec and a head spec {'kind': ..., **kwargs}."""
    kwargs = dict(head)
    kind = kwargs.pop("kind")
    heads = {"projection": ProjectionHead, "linear": LinearClassifier}
    return EncoderWithHead(make_encoder(spec["name"], **spec["kwargs"]), heads[kind](**kwargs))


def embed_chunks(model, variables, chunks: Iterable[np.ndarray]) -> tuple:
    """(features, head outputs) of `model` in inference mode on each chunk of inputs,
    concatenated as numpy arrays (one compilation per chunk shape)."""
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    outs = [apply(variables, jnp.asarray(x)) for x in chunks]
    return tuple(np.concatenate([np.asarray(o[k]) for o in outs]) for k in range(2))


def init_variables(model, rng: jax.Array, example: jax.Array) -> dict:
    return model.init(rng, example, train=False)


def export_meta(spec: dict, head: dict, modality: str, input_shape, feature_dim: int,
                step: int) -> dict:
    """What a later stage needs to rebuild an exported model and check where it came from."""
    return {"encoder": spec, "head": head, "modality": modality,
            "input_shape": list(input_shape), "feature_dim": int(feature_dim),
            "step": int(step)}


def restore_model(directory, mesh) -> tuple[EncoderWithHead, dict, dict]:
    """(model, variables replicated on `mesh`, meta) from an encoder export."""
    meta = checkpoints.read_meta(directory)
    model = build_model(meta["encoder"], meta["head"])
    example = jnp.zeros((1, *meta["input_shape"]), jnp.float32)
    abstract = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), example))
    sharding = parallel.replicated(mesh)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            abstract)
    return model, checkpoints.restore_encoder(directory, abstract), meta


def with_encoder_of(variables: dict, export_dir: epath.Path, mesh) -> dict:
    """`variables` whose encoder part (params and BatchNorm stats) comes from an export."""
    _, exported, _ = restore_model(export_dir, mesh)
    checkpoints.check_shapes(exported["params"]["encoder"], variables["params"]["encoder"],
                             export_dir)
    return {collection: {**tree, "encoder": exported[collection]["encoder"]}
            for collection, tree in variables.items()}


EVENTS_FLUSH_SECS = 1  # How soon a logged scalar reaches the event file on disk.
REMOTE_EVENTS_FLUSH_SECS = 10  # ... in a bucket, where each flush rewrites the whole file.


class RemoteEventFile:
    """A TensorBoard event file in a bucket, written through epath: an object cannot be
    appended to, so each flush with new events rewrites it whole."""

    def __init__(self, path: str):
        self.path, self.buffer, self.flushed = epath.Path(path), io.BytesIO(), -1

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        if self.buffer.tell() != self.flushed:
            self.path.write_bytes(self.buffer.getvalue())
            self.flushed = self.buffer.tell()

    def close(self) -> None:
        self.flush()


class RemoteEventFiles:
    """tensorboardX's writer factory for a remote scheme: event files through epath, like
    every other file of a run (tensorboardX's own gs:// and s3:// writers need
    google-cloud-storage or boto3)."""

    def open(self, path: str) -> RemoteEventFile:
        return RemoteEventFile(path)

    def directory_check(self, path: str) -> None:
        epath.Path(path).mkdir(parents=True, exist_ok=True)


def event_writer(logdir: str | os.PathLike, first_step: int) -> tensorboardX.SummaryWriter:
    """A new TensorBoard event file in `logdir` (local or remote) for a run whose first step
    is `first_step`.

    The file opens with a SessionLog.START at `first_step`: TensorBoard then drops the
    events an earlier, killed run logged from that step on, so a resumed stage shows each
    step once (the rerun's values)."""
    remote = paths.scheme(logdir)
    if remote:
        record_writer.register_writer_factory(remote, RemoteEventFiles())
    return tensorboardX.SummaryWriter(
        os.fspath(logdir), purge_step=first_step,
        flush_secs=REMOTE_EVENTS_FLUSH_SECS if remote else EVENTS_FLUSH_SECS)


class Progress:
    """Prints step, the interval's mean metrics, examples/s and ETA; writes them to
    `workdir/metrics.jsonl` and to TensorBoard event files in `workdir` (`tensorboard
    --logdir WORKDIR`). The first step (which compiles) is timed on its own and left out of
    the rates and the ETA. Use it as a context manager: leaving it writes the last events
    and closes the event file."""

    def __init__(self, name: str, total_steps: int, batch_size: int,
                 workdir: str | os.PathLike, every: int):
        self.name, self.total, self.batch, self.every = name, total_steps, batch_size, every
        self.workdir = epath.Path(workdir)
        self.metrics_file = self.workdir / "metrics.jsonl"
        self.is_writer = jax.process_index() == 0  # Only process 0 prints and writes.
        if self.is_writer:
            drop_torn_line(self.metrics_file)
        self.start = time.perf_counter()
        self.last = self.last_step = None  # Set once the first step has run.
        self.window: list[dict] = []  # The metrics of the steps since the last log.
        self.events = None  # Opened on the first step, so skipped stages leave no file.

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self.events is not None:
            self.events.close()

    def check_finite(self, step: int, metrics: dict) -> dict:
        """The metrics as floats; FloatingPointError naming the step if one is not finite."""
        metrics = {k: float(v) for k, v in metrics.items()}
        if not all(map(math.isfinite, metrics.values())):
            raise FloatingPointError(f"[{self.name}] non-finite metrics at step {step}: "
                                     f"{metrics}")
        return metrics

    def first_step_done(self, step: int, metrics: dict) -> None:
        """Waits for the first step of this process (compilation included) and says so;
        process 0 opens the run's event file."""
        jax.block_until_ready(metrics)
        self.last, self.last_step = time.perf_counter(), step
        log.say(f"[{self.name}] step {step} compiled and ran in "
                f"{self.last - self.start:.0f}s; {self.total} steps in all")
        if self.is_writer:
            self.events = event_writer(self.workdir, first_step=step)

    def __call__(self, step: int, metrics: dict) -> None:
        """Logs (and checks) the mean metrics every `every` steps and at the end."""
        if self.last is None:
            self.first_step_done(step, metrics)
        self.window.append(metrics)
        if step % self.every and step != self.total:
            return
        window, self.window = jax.device_get(self.window), []
        metrics = self.check_finite(step, {k: np.mean([m[k] for m in window])
                                           for k in window[0]})
        now = time.perf_counter()
        rate = (step - self.last_step) * self.batch / max(now - self.last, 1e-9)
        eta = (self.total - step) * self.batch / max(rate, 1e-9)
        if step > self.last_step:
            self.last, self.last_step = now, step
        if not self.is_writer:
            return
        shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        pace = f"{rate:.0f} ex/s ETA {eta:.0f}s" if rate else "done"
        log.say(f"[{self.name}] step {step}/{self.total} {shown} {pace}")
        scalars = {**metrics, **({"examples_per_sec": rate} if rate else {})}
        paths.append_text(self.metrics_file, json.dumps({"step": step, **scalars}) + "\n")
        for tag, value in scalars.items():
            self.events.add_scalar(tag, value, step)


@contextlib.contextmanager
def announced(what: str) -> Iterator[None]:
    """Says (process 0) that the evaluation step `what` starts, and how long it took."""
    start = time.perf_counter()
    log.say(f"[eval] {what} ...")
    yield
    log.say(f"[eval] {what}: {time.perf_counter() - start:.1f}s")


def drop_torn_line(path: epath.Path) -> None:
    """Cuts from `path` a last line that a killed run left unfinished (no newline)."""
    data = path.read_bytes() if path.exists() else b""
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[:data.rfind(b"\n") + 1])
        log.say(f"{path}: dropped its last line, cut short by a killed run")


def data_shard() -> tuple[int, int]:
    """(this process's index, number of processes): each process reads its own records."""
    return jax.process_index(), jax.process_count()


def per_process_batch(batch_size: int, mesh, key: str) -> int:
    parallel.check_batch_size(batch_size, mesh, key)
    return batch_size // jax.process_count()


def fit_and_export(name: str, stage_dir: epath.Path, config, mesh, *, spec: dict, head: dict,
                   modality: str, batches: Iterator[dict], example: np.ndarray, stage_cfg,
                   make_step: Callable, extra_args: tuple = (),
                   init_encoder: epath.Path | None = None) -> epath.Path:
    """Trains an encoder-with-head for `stage_cfg.steps` and exports it.

    `example` is one unbatched input of `modality`, which fixes the parameter shapes. The
    encoder starts from the export `init_encoder` (fine-tuning) or from scratch.

    A stage whose export is complete is not redone: its directory is returned as is. A
    damaged export is rebuilt (from the stage's last checkpoint, else by training again).
    """
    export_dir = stage_dir / "export"
    if intact_export(name, export_dir, mesh):
        log.say(f"[{name}] already done: {export_dir}")
        return export_dir
    stage_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(spec, head)
    example = jnp.asarray(example)[None]
    rng = jax.random.fold_in(jax.random.key(config.seed), zlib.crc32(name.encode()))
    variables = init_variables(model, rng, example)
    if init_encoder is not None:
        variables = with_encoder_of(variables, init_encoder, mesh)
    tx = make_optimizer(stage_cfg, stage_cfg.steps)
    state = parallel.replicate(TrainState.create(variables, tx), mesh)
    step_fn = jax.jit(with_param_norm(make_step(model, tx)), donate_argnums=0,
                      out_shardings=parallel.replicated(mesh))
    with (Progress(name, stage_cfg.steps, stage_cfg.batch_size, stage_dir,
                   config.log_every) as progress,
          checkpoints.train_checkpoints(stage_dir / "ckpt", config.checkpoint.every,
                                        config.checkpoint.keep) as manager):
        state = checkpoints.restore_train(manager, state, batches)
        if int(state.step):
            log.say(f"[{name}] resuming from step {int(state.step)}")
        state = train(state, step_fn, batches, stage_cfg.steps, mesh, progress, manager,
                      *extra_args)
    features, _ = jax.eval_shape(lambda v: model.apply(v, example, train=False), variables)
    meta = export_meta(spec, head, modality, example.shape[1:], features.shape[-1],
                       stage_cfg.steps)
    return checkpoints.export_encoder(export_dir, state.variables, meta)


def with_param_norm(step_fn: Callable) -> Callable:
    """`step_fn` that also reports the parameters' global norm: a diverged model (its norm
    overflowing to inf) then stops training like a non-finite loss does."""
    def step_and_norm(state: TrainState, *args):
        state, metrics = step_fn(state, *args)
        return state, {**metrics, "param_norm": optax.global_norm(state.params)}
    return step_and_norm


def intact_export(name: str, export_dir: epath.Path, mesh) -> bool:
    """Whether the stage `name` has its export; a damaged one is reported and removed."""
    if not checkpoints.export_complete(export_dir):
        return False
    try:
        restore_model(export_dir, mesh)
        return True
    except ValueError as e:
        log.say(f"[{name}] {e}; rebuilding it")
    if jax.process_index() == 0:
        export_dir.rmtree()
    return False


class Preempted(Exception):
    """The run was asked to stop (SIGTERM) and saved a checkpoint to resume from."""


@contextlib.contextmanager
def stop_requests():
    """Within the block, `should_stop(step)` says whether to stop after `step`.

    One process: after a SIGTERM (which then no longer kills it). Several: at the step that
    every process agrees on once any of them got a SIGTERM (JAX's preemption sync point,
    whose notifier owns SIGTERM in multi-process runs), so all save that same step.
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        yield multihost_utils.reached_preemption_sync_point
        return
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        yield lambda step: stop.is_set()
    finally:
        signal.signal(signal.SIGTERM, previous)


def train(state: TrainState, step_fn: Callable, batches, num_steps: int, mesh,
          progress: Progress, manager, *extra_args) -> TrainState:
    """Runs `step_fn(state, *extra_args, batch) -> (state, metrics)` up to `num_steps`,
    checkpointing state and data position through `manager` (always at the end, and at
    the step where a SIGTERM is honoured, then raising `Preempted`)."""
    with stop_requests() as should_stop:
        for i in range(int(state.step), num_steps):
            batch = parallel.to_global(next(batches), mesh)
            state, metrics = step_fn(state, *extra_args, batch)
            progress(i + 1, metrics)
            stop = should_stop(i + 1)
            if stop or i + 1 == num_steps or manager.should_save(i + 1):
                progress.check_finite(i + 1, metrics)  # Only finite states are saved.
                checkpoints.save_train(manager, i + 1, state, batches, force=True)
            if stop:
                manager.wait_until_finished()
                raise Preempted(f"[{progress.name}] stopped by SIGTERM after step {i + 1}; "
                                f"checkpoint saved in {manager.directory}; rerun the same "
                                f"command to resume")
    manager.wait_until_finished()
    return state
