"""One voice for a run: every message goes to stderr from process 0 only, so a run on many
hosts prints each line once."""

from __future__ import annotations

import sys


def say(message: str) -> None:
    """Prints `message` to stderr (flushed) on process 0 of the run."""
    import jax

    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)
