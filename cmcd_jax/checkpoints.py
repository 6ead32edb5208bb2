"""Encoder exports shared between stages (orbax), and their restore onto a mesh.

An export is a directory holding `variables/` (an orbax checkpoint of the encoder-with-head
variables: params and BatchNorm statistics) and `meta.json` (model name and kwargs, modality,
step and the sha256 of the variables). `meta.json` is written last, so its presence marks a
complete export; the sha256 tells an intact one from a damaged one.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from cmcd_jax import log, parallel, paths

META_FILE = "meta.json"
T = TypeVar("T")


def export_complete(directory: str | os.PathLike) -> bool:
    return (epath.Path(directory) / META_FILE).is_file()


def export_encoder(directory: str | os.PathLike, variables, meta: dict) -> epath.Path:
    """Writes `variables` and `meta` to `directory` (which must not hold an export yet)."""
    directory = paths.absolute(directory)
    if export_complete(directory):
        raise FileExistsError(f"{directory} already holds an export; refusing to overwrite it")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / "variables", jax.device_get(variables), force=True)
        ckptr.wait_until_finished()
    if jax.process_index() == 0:
        meta = {**meta, "sha256": fingerprint(variables)}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    parallel.barrier(f"cmcd_jax: exported {directory}")  # Others may read it next.
    return directory


def read_meta(directory: str | os.PathLike) -> dict:
    path = epath.Path(directory) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no encoder export at {directory} (missing {META_FILE})")
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"export {directory} is damaged: {META_FILE} is not JSON ({e})") from e
    if not isinstance(meta, dict) or not {"encoder", "head", "input_shape"} <= meta.keys():
        raise ValueError(f"export {directory} is damaged: {META_FILE} lacks the model's "
                         f"description (encoder, head, input_shape)")
    return meta


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def check_shapes(stored, expected, directory) -> None:
    """Raises a ValueError naming the first parameter whose path or shape differs."""
    stored_leaves = {_path_str(p): tuple(x.shape)
                     for p, x in jax.tree_util.tree_leaves_with_path(stored)}
    for path, leaf in jax.tree_util.tree_leaves_with_path(expected):
        name = _path_str(path)
        if name not in stored_leaves:
            raise ValueError(f"export {directory} has no parameter {name!r} that the model "
                             f"expects (architecture mismatch)")
        if stored_leaves[name] != tuple(leaf.shape):
            raise ValueError(f"export {directory}: parameter {name!r} has shape "
                             f"{stored_leaves[name]}, the model expects {tuple(leaf.shape)}")


def restore_encoder(directory: str | os.PathLike, abstract_variables):
    """Restores an export into the structure (and shardings) of `abstract_variables`;
    a ValueError names the export when its variables are missing, unreadable or not the
    ones its meta.json fingerprinted."""
    path = paths.absolute(directory) / "variables"
    expected = read_meta(directory).get("sha256")
    with ocp.StandardCheckpointer() as ckptr:
        try:
            stored = ckptr.metadata(path).item_metadata
        except Exception as e:  # noqa: BLE001 -- any failure to read means damage.
            raise ValueError(f"export {directory} is damaged: {path} cannot be read "
                             f"({_reason(e)})") from e
        if not jax.tree_util.tree_leaves(stored):
            raise ValueError(f"export {directory} is damaged: {path} holds no readable "
                             f"variables")
        check_shapes(stored, abstract_variables, directory)
        variables, problem = attempt_restore(lambda: ckptr.restore(path, abstract_variables))
        if problem:
            raise ValueError(f"export {directory} is damaged: {path} cannot be restored "
                             f"({problem})")
    if expected and fingerprint(variables) != expected:
        raise ValueError(f"export {directory} is damaged: its variables do not match the "
                         f"sha256 in its {META_FILE}")
    return variables


def _abandoned(error: BaseException | None, source=None) -> bool:
    """Whether an error is the echo of a read that a failed restore abandoned: one of
    orbax's concurrent array reads (a coroutine), or its event loop closed under it."""
    return inspect.iscoroutine(source) or (
        isinstance(error, RuntimeError) and "Event loop is closed" in str(error))


class _AbandonedReadsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "exception was never retrieved" not in record.getMessage()


def quiet_abandoned_reads() -> Callable[[], None]:
    """When one array of a damaged checkpoint fails to read, orbax abandons its other
    concurrent reads, and each may print a traceback, later, from the garbage collector,
    asyncio's logger or tensorstore's threads ("Exception ignored in: <coroutine ...>",
    "Task exception was never retrieved", "Event loop is closed"). Drops those echoes;
    returns what undoes it (a no-op when they were dropped already)."""
    asyncio_log = logging.getLogger("asyncio")
    if any(isinstance(f, _AbandonedReadsFilter) for f in asyncio_log.filters):
        return lambda: None
    log_filter, unraisable, excepthook = _AbandonedReadsFilter(), sys.unraisablehook, sys.excepthook
    asyncio_log.addFilter(log_filter)
    sys.unraisablehook = lambda u: (None if _abandoned(u.exc_value, u.object)
                                    else unraisable(u))
    sys.excepthook = lambda kind, error, tb: (None if _abandoned(error)
                                              else excepthook(kind, error, tb))

    def undo() -> None:
        asyncio_log.removeFilter(log_filter)
        sys.unraisablehook, sys.excepthook = unraisable, excepthook
    return undo


def attempt_restore(restore: Callable[[], T]) -> tuple[T | None, str | None]:
    """(restore(), None), or (None, why it failed: any failure to read means damage).
    The echoes of a failed restore's abandoned reads (:func:`quiet_abandoned_reads`) stay
    quiet for the rest of the process: they may come at any time after it."""
    undo = quiet_abandoned_reads()
    try:
        result = restore()
    except Exception as e:  # noqa: BLE001
        problem = _reason(e)
    else:
        undo()
        return result, None
    gc.collect()  # Collect the abandoned reads now, not in the middle of later output.
    return None, problem


def _reason(error: Exception) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__


def fingerprint(tree) -> str:
    """sha256 over every leaf's bytes: tells a faithfully restored state from garbage."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(tree)):
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def train_checkpoints(directory: str | os.PathLike, every: int,
                      keep: int) -> ocp.CheckpointManager:
    """A manager of periodic train-state + data-iterator checkpoints under `directory`."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every)
    return ocp.CheckpointManager(
        paths.absolute(directory), options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler(),
                       "fingerprint": ocp.JsonCheckpointHandler()})


def save_train(manager: ocp.CheckpointManager, step: int, state, iterator,
               force: bool = False) -> None:
    """Saves the train state, its fingerprint and the grain iterator's position together."""
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator),
        fingerprint=ocp.args.JsonSave({"sha256": fingerprint(state)})), force=force)


def restore_train(manager: ocp.CheckpointManager, state, iterator):
    """The latest intact checkpointed state (in `state`'s shardings, with the iterator moved
    to its saved position), or `state` itself when there is none.

    A damaged checkpoint (unreadable, or whose contents no longer match the fingerprint
    taken when it was saved) is reported and skipped for the one before it.
    """
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    start = iterator.get_state()
    for step in sorted(manager.all_steps(), reverse=True):
        restored, problem = attempt_restore(functools.partial(
            manager.restore, step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract),
                data=grain.checkpoint.CheckpointRestore(iterator),
                fingerprint=ocp.args.JsonRestore())))
        if not problem and (fingerprint(restored["state"])
                            != restored["fingerprint"].get("sha256")):
            problem = "its contents do not match the fingerprint saved with it"
        if not problem:
            return restored["state"]
        log.say(f"checkpoint {manager.directory}/{step} is damaged ({problem}); "
                f"falling back to an earlier one")
    iterator.set_state(start)
    return state
