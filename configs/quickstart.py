"""Quickstart: the three CMCD steps on cmcd_shapes, image -> sketch, in minutes on a CPU.

    python -m cmcd_jax.main --config=configs/quickstart.py --workdir=/tmp/cmcd_quickstart

Pick another target with `--config.data.target=depth` (or `audio`), fewer steps with
`--config.distill.steps=200`, the methods with `--config.methods=cmc,target_only`.
Every option and its meaning: `cmcd_jax.defaults`.
"""

from cmcd_jax import defaults


def get_config():
    return defaults.default_config()
