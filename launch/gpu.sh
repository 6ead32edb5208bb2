#!/usr/bin/env bash
# Runs `python -m cmcd_jax.main ARGS...` on the GPUs of this machine (one process driving all
# local GPUs), after creating a venv and installing jax[cuda12] and the package.
#
#   launch/gpu.sh --config=configs/quickstart.py --workdir=/tmp/cmcd_run
#
# Several hosts: run the same command on every host with
#   JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=<hosts> JAX_PROCESS_ID=<0..hosts-1>
# (or under SLURM / Open MPI, which are detected); the package calls
# jax.distributed.initialize() itself, and every process reads its own shard of the data.
set -euo pipefail
cd "$(dirname "$0")/.."
jax_version=$(sed -n 's/^jax==//p' requirements.txt)
[ -d .venv-gpu ] || python3 -m venv .venv-gpu
. .venv-gpu/bin/activate
pip install -q -r requirements.txt "jax[cuda12]==$jax_version" -e .
exec python -m cmcd_jax.main "$@"
