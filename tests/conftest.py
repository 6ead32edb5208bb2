"""Shared fixtures: the tiny cmcd_shapes build, and a runner for the command line."""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from cmcd_jax.cpu import xla_flags

xla_flags.apply()  # In-process tests run with the flags the entry points use.

REPO = pathlib.Path(__file__).resolve().parents[1]
# The command-line tests compile the same programs again and again: share XLA's results.
COMPILATION_CACHE = tempfile.mkdtemp(prefix="cmcd_jax_xla_cache_")


def pytest_sessionfinish(session, exitstatus):
    """The compilation cache (~1.5 MB a session) goes with the session."""
    shutil.rmtree(COMPILATION_CACHE, ignore_errors=True)


def assert_close(actual, expected, rtol: float = 1e-5) -> None:
    """float32 closeness that survives another summation order on another machine: relative
    `rtol`, and an absolute floor of `rtol` times the largest expected magnitude."""
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    scale = float(np.max(np.abs(expected))) or 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def tree_digest(root: pathlib.Path) -> dict:
    """{relative path: sha256 of a file's bytes, or 'dir'} of everything under `root`: equal
    before and after an action that changed, added and deleted nothing there."""
    return {p.relative_to(root).as_posix(): "dir" if p.is_dir() else
            hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> pathlib.Path:
    """A TFDS data dir holding `cmcd_shapes/tiny`, built once per test session."""
    from cmcd_jax.data import shapes

    path = tmp_path_factory.mktemp("tfds")
    shapes.load_shapes("tiny", str(path))
    return path


@pytest.fixture(scope="session")
def tiny_sources(data_dir) -> dict:
    from cmcd_jax.data import shapes

    return shapes.load_shapes("tiny", str(data_dir))


def main_command(workdir, data_dir, *overrides, devices: int = 1,
                 config: str = "configs/quickstart.py:tiny") -> tuple[list, dict]:
    """Arguments and environment of `python -m cmcd_jax.main` on `config` (by default the
    quickstart's smoke test, `defaults.tiny_config`) over the session's data dir, training
    its own teacher."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=COMPILATION_CACHE,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    args = [sys.executable, "-m", "cmcd_jax.main", f"--config={config}",
            f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
            "--config.pretrain.reuse_teacher=False", *overrides]
    return args, env


def run_main(workdir, data_dir, *overrides, devices: int = 1,
             config: str = "configs/quickstart.py:tiny") -> subprocess.CompletedProcess:
    """Runs the smoke-test command to completion."""
    args, env = main_command(workdir, data_dir, *overrides, devices=devices, config=config)
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


#: Overrides of the tiny quickstart that the two-process test runs (with methods=cmc).
MULTI_DEVICE_OVERRIDES = ("--config.distill.steps=16", "--config.log_every=1",
                          "--config.checkpoint.every=1000")


@pytest.fixture(scope="session")
def eight_device_run(tmp_path_factory, data_dir) -> pathlib.Path:
    """The workdir of one finished tiny run of cmc and target_only on 8 devices: the
    quickstart's multi-device check and the two-process test's reference (one run for both,
    the cost is the run)."""
    workdir = tmp_path_factory.mktemp("eight_devices") / "run"
    proc = run_main(workdir, data_dir, "--config.methods=cmc,target_only",
                    *MULTI_DEVICE_OVERRIDES, devices=8)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def start_main(workdir, data_dir, *overrides) -> subprocess.Popen:
    """Starts the smoke-test command in the background (stderr to workdir.log)."""
    args, env = main_command(workdir, data_dir, *overrides)
    log = open(f"{workdir}.log", "w")
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for_step(metrics_file: pathlib.Path, step: int, proc: subprocess.Popen,
                  timeout: float = 300) -> None:
    """Blocks until `metrics_file` logs `step` (or fails if the process ends first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics_file.exists() and any(
                json.loads(line)["step"] >= step for line in metrics_file.read_text().splitlines()):
            return
        assert proc.poll() is None, f"process ended before step {step}"
        time.sleep(0.05)
    raise TimeoutError(f"step {step} not reached in {timeout}s")


def tensorboard_scalars(logdir: pathlib.Path) -> list[tuple[str, int, float]]:
    """[(tag, step, value), ...] as TensorBoard's own EventAccumulator reads `logdir` (the
    test is skipped without the tensorboard package)."""
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(logdir))
    acc.Reload()
    return [(tag, e.step, e.value) for tag in sorted(acc.Tags()["scalars"])
            for e in acc.Scalars(tag)]


def run_on_eight_devices(script: str, *args: str, extra_xla_flags: str = "",
                         timeout: float = 600):
    """Runs `script` (python source) in a subprocess on 8 simulated CPU devices and returns
    the JSON it prints on a line starting with RESULT."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count=8 {extra_xla_flags}")
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-5000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert lines, proc.stdout[-3000:]
    return json.loads(lines[-1][len("RESULT"):])
