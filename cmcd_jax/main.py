"""Command line: `python -m cmcd_jax.main --config=configs/quickstart.py --workdir=DIR`.

Overrides work the ml-collections way, e.g. `--config.distill.steps=200`; `--config_help`
lists every option with its meaning.
"""

import os
import re
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and results.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete the run of a different config "
                                "found in --workdir (only what cmcd_jax wrote there, never a "
                                "teacher the new config reuses) instead of refusing to start.")
_CONFIG_HELP = flags.DEFINE_bool("config_help", False, "List every option of --config "
                                  "(value and meaning) and exit.")
flags.mark_flags_as_required(["config"])

USER_ERRORS = (ValueError, OSError, FloatingPointError)
OVERRIDE_ERRORS = (KeyError, AttributeError, TypeError, ValueError, OSError, flags.Error)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG_HELP.value:
        from cmcd_jax import defaults
        print("\n".join(defaults.describe(_CONFIG.value)))
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    logging.set_verbosity(logging.WARNING)  # orbax and tfds log every file at INFO.
    from cmcd_jax.cpu import xla_flags
    xla_flags.apply()  # Before JAX creates its backends.
    from cmcd_jax import experiment, log  # Heavy imports only once the flags are parsed.
    from cmcd_jax.stages.common import Preempted
    try:
        experiment.run(_CONFIG.value, _WORKDIR.value, _OVERWRITE.value)
    except Preempted as e:
        log.say(f"cmcd_jax: {e}")
    except USER_ERRORS as e:
        sys.exit(f"cmcd_jax: error: {one_line(e)}")


def one_line(error: Exception) -> str:
    """An exception's message (however nested or multi-line) as one line: its one argument,
    else the whole message (an OS error's with its path, a codec error's with the byte)."""
    text = str(error.args[0]) if len(error.args) == 1 else str(error)
    return " ".join(text.replace("\\n", " ").replace("\\'", "'").split())


def config_path(argv: list[str]) -> str | None:
    """The file that --config names (without a `:argument` suffix), if any."""
    paths = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    paths += [b for a, b in zip(argv, argv[1:]) if a == "--config"]
    return paths[-1].split(":")[0] if paths else None


def config_file_error(error: Exception, path: str | None) -> str | None:
    """`file:line: what` for an error raised by the config file's own code (a syntax error
    included); None for any other error."""
    while error is not None:  # The flag error ml_collections raises wraps the file's own.
        if isinstance(error, SyntaxError) and error.filename == path:
            return f"{path}:{error.lineno}: syntax error: {error.msg}"
        lines = [f.lineno for f in traceback.extract_tb(error.__traceback__)
                 if f.filename == path]
        if lines:
            return f"{path}:{lines[-1]}: {type(error).__name__}: {one_line(error)}"
        error = error.__cause__ or error.__context__
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with a mistake in the config file or an override reported as one
    line."""
    path = config_path(argv)
    if path and not os.path.isfile(path):
        sys.exit(f"cmcd_jax: error: --config={path}: no such file")
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # The config file's own code may raise anything.
        located = config_file_error(e, path)
        if located:
            sys.exit(f"cmcd_jax: error: {located}")
        if not isinstance(e, OVERRIDE_ERRORS):
            raise
        message = one_line(e)
        key = re.search(r"'([^']+)'", message)
        culprit = next((a.split("=")[0] for a in argv[1:] if key and re.search(
            rf"^--config\.(.*\.)?{re.escape(key.group(1))}[.=]", a)), None)
        if key and culprit and "Did you mean" in message:
            suggestion = message.split("Did you mean", 1)[1].rstrip("'")
            message = f"unknown config key {key.group(0)}; did you mean{suggestion}"
        sys.exit(f"cmcd_jax: error: {culprit + ': ' if culprit else ''}{message}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
