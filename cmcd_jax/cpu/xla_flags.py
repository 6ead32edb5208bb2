"""XLA:CPU flags the CMCD step runs fastest with; the entry points apply them, importing
this module does nothing.

jaxlib 0.10 hands convolutions, dots and reductions on CPU to YNNPACK by default. Its
reductions are fast, but its convolutions are ~1.8x slower than XLA's own (Eigen) ones on
x86: a 3x3 conv 64->64 on 32x32 maps, batch 64, takes 50 ms through YNNPACK and 28 ms
without (2-core AMD EPYC). Keeping YNNPACK for reductions only (BatchNorm statistics) makes
the ResNet-18 distillation step ~10% faster and leaves the ViT step as fast or faster
(``python -m cmcd_jax.bench.speed``). XLA aborts on a flag it does not know, so the flags are
added only for the jaxlib releases they were measured on; a flag the user sets in
``XLA_FLAGS`` always wins.
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import MutableMapping

#: jaxlib version prefixes the flags were measured on.
TESTED_JAXLIB = ("0.10.",)

#: Flags added to ``XLA_FLAGS`` (each only if the user has not set that flag).
CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=reduce",)


def with_cpu_defaults(xla_flags: str, jaxlib_version: str) -> str:
    """``xla_flags`` plus each of :data:`CPU_FLAGS` whose flag it does not set; unchanged
    for a jaxlib outside :data:`TESTED_JAXLIB`."""
    if not jaxlib_version.startswith(TESTED_JAXLIB):
        return xla_flags
    given = {flag.split("=", 1)[0] for flag in xla_flags.split()}
    added = [flag for flag in CPU_FLAGS if flag.split("=", 1)[0] not in given]
    return " ".join([xla_flags.strip(), *added]).strip()


def apply(environ: MutableMapping[str, str] = os.environ) -> str:
    """Sets ``environ['XLA_FLAGS']`` to :func:`with_cpu_defaults` of its value and returns it.

    Call it before JAX first uses a device (XLA reads the flags when it creates its
    backends); later calls change nothing in a running process.
    """
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        version = ""
    environ["XLA_FLAGS"] = with_cpu_defaults(environ.get("XLA_FLAGS", ""), version)
    return environ["XLA_FLAGS"]
