#!/usr/bin/env bash
# Runs `python -m cmcd_jax.main ARGS...` on every worker of a Cloud TPU VM (single host or pod
# slice): copies this checkout to each worker, creates a venv there, installs jax[tpu] and the
# package, and starts the job on all workers at once (jax.distributed is initialised by the
# package itself on pod slices).
#
#   launch/tpu_vm.sh TPU_NAME ZONE --config=configs/quickstart.py --workdir=/tmp/cmcd_run
#
# Set PROJECT to pass --project to gcloud. On pod slices give a --workdir on storage every
# worker can read: a shared file system, or a GCS bucket mounted with gcsfuse (gs:// paths
# themselves are refused with a clear error: not supported yet).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 TPU_NAME ZONE --config=... --workdir=... [--config.key=value ...]" >&2
  exit 2
fi
tpu=$1 zone=$2
shift 2
gcloud_tpu=(gcloud compute tpus tpu-vm --zone="$zone" ${PROJECT:+--project="$PROJECT"})
jax_version=$(sed -n 's/^jax==//p' "$(dirname "$0")/../requirements.txt")

archive=$(mktemp /tmp/cmcd_jax.XXXXXX.tar.gz)
git -C "$(dirname "$0")/.." archive --format=tar.gz -o "$archive" HEAD
"${gcloud_tpu[@]}" scp "$archive" "$tpu":cmcd_jax.tar.gz --worker=all
rm -f "$archive"

printf -v args ' %q' "$@"
"${gcloud_tpu[@]}" ssh "$tpu" --worker=all --command="set -e
  mkdir -p ~/cmcd_jax && tar -xzf ~/cmcd_jax.tar.gz -C ~/cmcd_jax && cd ~/cmcd_jax
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q -r requirements.txt 'jax[tpu]==$jax_version' -e .
  python -m cmcd_jax.main$args"
