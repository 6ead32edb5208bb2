"""Quickstart: the three CMCD steps on cmcd_shapes, image -> sketch, in minutes on a CPU.

    python -m cmcd_jax.main --config=configs/quickstart.py --workdir=/tmp/cmcd_quickstart
    python -m cmcd_jax.main --config=configs/quickstart.py:tiny ...   # a smoke test, seconds

Pick another target with `--config.data.target=depth` (or `audio`), fewer steps with
`--config.distill.steps=200`, the methods with `--config.methods=cmc,target_only`.
The `tiny` variant (`defaults.tiny_config`, what the tests run) takes `cmcd_shapes/tiny`
and 10 steps of batch 32 a stage: it checks that everything runs, and learns nothing.
Every option and its meaning: `cmcd_jax.defaults`.
"""

from cmcd_jax import defaults

VARIANTS = {"": defaults.default_config, "tiny": defaults.tiny_config}


def get_config(variant: str = ""):
    return defaults.config_variant("configs/quickstart.py", VARIANTS, variant)
