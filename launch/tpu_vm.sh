#!/usr/bin/env bash
# Runs `python -m cmcd_jax.main ARGS...` on every worker of a Cloud TPU VM (single host or pod
# slice): copies this checkout to each worker, creates a venv there, installs jax[tpu] and the
# package, and starts the job on all workers at once (jax.distributed is initialised by the
# package itself on pod slices).
#
#   launch/tpu_vm.sh TPU_NAME ZONE --config=configs/quickstart.py --workdir=/tmp/cmcd_run
#
# Set PROJECT to pass --project to gcloud. On pod slices give a --workdir every worker can
# reach: a bucket (--workdir=gs://bucket/run; gcsfs is then installed on the workers too),
# a shared file system, or a bucket mounted with gcsfuse. The README's "Many devices, many
# hosts" says what works in a bucket and how it was tested.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 TPU_NAME ZONE --config=... --workdir=... [--config.key=value ...]" >&2
  exit 2
fi
tpu=$1 zone=$2
shift 2
gcloud_tpu=(gcloud compute tpus tpu-vm --zone="$zone" ${PROJECT:+--project="$PROJECT"})
jax_version=$(sed -n 's/^jax==//p' "$(dirname "$0")/../requirements.txt")
gcs=""
case " $* " in *gs://*) gcs=gcsfs ;; esac  # gs:// paths are read and written through gcsfs.

archive=$(mktemp /tmp/cmcd_jax.XXXXXX.tar.gz)
git -C "$(dirname "$0")/.." archive --format=tar.gz -o "$archive" HEAD
"${gcloud_tpu[@]}" scp "$archive" "$tpu":cmcd_jax.tar.gz --worker=all
rm -f "$archive"

printf -v args ' %q' "$@"
"${gcloud_tpu[@]}" ssh "$tpu" --worker=all --command="set -e
  mkdir -p ~/cmcd_jax && tar -xzf ~/cmcd_jax.tar.gz -C ~/cmcd_jax && cd ~/cmcd_jax
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q -r requirements.txt 'jax[tpu]==$jax_version' $gcs -e .
  python -m cmcd_jax.main$args"
