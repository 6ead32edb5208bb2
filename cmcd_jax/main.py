"""Command line: `python -m cmcd_jax.main --config=configs/quickstart.py --workdir=DIR`.

Overrides work the ml-collections way, e.g. `--config.distill.steps=200`.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and results.")
flags.mark_flags_as_required(["config", "workdir"])

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax and tfds log every file at INFO.
    from cmcd_jax import experiment  # Heavy imports only once the flags are parsed.
    from cmcd_jax.stages.common import Preempted
    try:
        experiment.run(_CONFIG.value, _WORKDIR.value)
    except Preempted as e:
        print(f"cmcd_jax: {e}", file=sys.stderr)
    except USER_ERRORS as e:
        sys.exit(f"cmcd_jax: error: {e}")


if __name__ == "__main__":
    app.run(main)
