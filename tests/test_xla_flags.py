"""The XLA:CPU flags the entry points add: only missing ones, only on tested jaxlibs."""

import os
import subprocess
import sys

import pytest

from cmcd_jax.cpu import xla_flags

FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def test_adds_the_flag_to_empty_or_other_flags():
    assert xla_flags.with_cpu_defaults("", "0.10.2") == f"{FLAG}=reduce"
    assert xla_flags.with_cpu_defaults(" --xla_force_host_platform_device_count=8 ",
                                       "0.10.2") == (
        f"--xla_force_host_platform_device_count=8 {FLAG}=reduce")


@pytest.mark.parametrize("given", [f"{FLAG}=", f"{FLAG}=reduce,dot"])
def test_a_flag_the_user_sets_wins(given):
    assert xla_flags.with_cpu_defaults(f"--xla_dump_to=/x {given}", "0.10.2") == (
        f"--xla_dump_to=/x {given}")


@pytest.mark.parametrize("version", ["0.9.2", "0.11.0", "1.0.10", ""])
def test_untested_jaxlib_is_left_alone(version):
    assert xla_flags.with_cpu_defaults("--a=1", version) == "--a=1"


def test_apply_sets_the_environment_and_xla_accepts_it():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    flags = xla_flags.apply(env)
    assert env["XLA_FLAGS"] == flags and flags.startswith("--xla_force_host_platform_device_count=2")
    # A flag XLA does not know aborts the process at backend creation: run one for real.
    proc = subprocess.run(
        [sys.executable, "-c", "import jax, jax.numpy as jnp; "
         "print(len(jax.devices()), float(jnp.mean(jnp.arange(4.0))))"],
        env={**os.environ, **env, "JAX_PLATFORMS": "cpu"},
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["2", "1.5"]
