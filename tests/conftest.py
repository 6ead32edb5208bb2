"""Shared fixtures: the tiny cmcd_shapes build, and a runner for the command line."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


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


def run_main(workdir, data_dir, *overrides, devices: int = 1) -> subprocess.CompletedProcess:
    """`python -m cmcd_jax.main` on the quickstart config shrunk to a smoke test."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    args = [sys.executable, "-m", "cmcd_jax.main", "--config=configs/quickstart.py",
            f"--workdir={workdir}", "--config.data.config_name=tiny",
            f"--config.data.data_dir={data_dir}", "--config.log_every=5",
            "--config.pretrain.steps=10", "--config.pretrain.batch_size=32",
            "--config.distill.steps=10", "--config.distill.batch_size=32",
            "--config.target_only.steps=10", "--config.target_only.batch_size=32",
            "--config.downstream.probe_steps=50", *overrides]
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
