"""Compiled per-device memory of the sharded contrastive losses: naive vs chunked.

    python -m cmcd_jax.bench.memory [--loss cmc|cmd|nt_xent] [--chunk_size 512]

For each global batch it compiles (never runs, no data is allocated) the jitted
``value_and_grad`` w.r.t. the first (student) embeddings of the loss wrapped by
``parallel.sharded_loss`` (``shard_map`` over a 1-D 'data' mesh, ``P('data')``
inputs), once naive (``chunk_size=None``) and once chunked, and reads XLA's
``compiled.memory_analysis()``. By default it runs on ``--devices=8`` simulated host
CPU devices: ``main()`` sets ``XLA_FLAGS=--xla_force_host_platform_device_count`` and
``JAX_PLATFORMS=cpu`` itself when jax is not imported yet (this module does not
import jax at import time).

Per device or whole program? The script checks it: ``argument_size_in_bytes`` is
compared with the global inputs' bytes (an SPMD executable is the program of one
device), and the naive temp size on 1 device is compared with that on ``--devices``
at the same global batch (a per-device ``n x N`` logits block shrinks with the
device count).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

MIB = 2.0**20


def _setup_host_devices(devices: int, platform: str) -> None:
    """Requests ``devices`` host devices before jax is imported (error if too late)."""
    if "jax" not in sys.modules:
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        flags.append(f"--xla_force_host_platform_device_count={devices}")
        os.environ["XLA_FLAGS"] = " ".join(flags)
        os.environ["JAX_PLATFORMS"] = platform
    import jax

    if jax.device_count() < devices:
        raise SystemExit(
            f"need {devices} devices but jax (already initialised) has "
            f"{jax.device_count()}; run with XLA_FLAGS="
            f"--xla_force_host_platform_device_count={devices}")


def _memory(loss_name: str, num_devices: int, global_batch: int, dim: int,
            chunk_size: Optional[int]):
    """``memory_analysis()`` of the compiled sharded ``value_and_grad`` (argnum 0)."""
    import jax
    import jax.numpy as jnp

    from cmcd_jax import losses, parallel

    loss_fn = {"cmc": losses.cmc_loss, "cmd": losses.cmd_loss, "nt_xent": losses.nt_xent}
    mesh = parallel.make_mesh(num_devices)
    fn = parallel.sharded_loss(loss_fn[loss_name], mesh, chunk_size=chunk_size)
    spec = jax.ShapeDtypeStruct((global_batch, dim), jnp.float32,
                                sharding=parallel.batch_sharded(mesh))
    compiled = jax.jit(jax.value_and_grad(fn)).lower(spec, spec).compile()
    return compiled.memory_analysis()


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cmcd_jax.bench.memory",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--loss", choices=("cmc", "cmd", "nt_xent"), default="cmc")
    p.add_argument("--chunk_size", type=int, default=512)
    p.add_argument("--batches", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--platform", default="cpu",
                   help="JAX_PLATFORMS, if jax is not imported yet (default cpu)")
    args = p.parse_args(argv)
    _setup_host_devices(args.devices, args.platform)
    import jax

    d, dim, loss = args.devices, args.dim, args.loss
    cols = 2 if loss == "nt_xent" else 1  # nt_xent: 2n anchor rows x 2N columns
    print(f"# {loss} value_and_grad, sharded over {d} {jax.devices()[0].platform} "
          f"devices, D={dim}, float32, chunk_size={args.chunk_size}\n")

    # per device or whole program?
    n0 = args.batches[0]
    on_d = _memory(loss, d, n0, dim, None)
    on_1 = _memory(loss, 1, n0, dim, None)
    global_args = 2 * n0 * dim * 4
    per_device = abs(on_d.argument_size_in_bytes - global_args / d) < abs(
        on_d.argument_size_in_bytes - global_args)
    print(f"memory_analysis reports {'PER DEVICE' if per_device else 'THE WHOLE PROGRAM'}: "
          f"global batch {n0}: argument size {on_d.argument_size_in_bytes / MIB:.3f} MiB on "
          f"{d} devices vs {global_args / MIB:.3f} MiB of global inputs; naive temp "
          f"{on_1.temp_size_in_bytes / MIB:.1f} MiB on 1 device vs "
          f"{on_d.temp_size_in_bytes / MIB:.1f} MiB on {d} "
          f"(ratio {on_1.temp_size_in_bytes / max(on_d.temp_size_in_bytes, 1):.1f}).\n")
    scale = 1 if per_device else d  # -> per device

    print("| global batch | local batch | local x global x 4 B (MiB) | naive temp MiB/device "
          "| lean temp MiB/device | ratio | args / out MiB/device |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.batches:
        naive = on_d if n == n0 else _memory(loss, d, n, dim, None)
        lean = _memory(loss, d, n, dim, args.chunk_size)
        t_naive, t_lean = naive.temp_size_in_bytes / scale, lean.temp_size_in_bytes / scale
        local = n // d
        ref = (cols * local) * (cols * n) * 4
        print(f"| {n} | {local} | {ref / MIB:.1f} | {t_naive / MIB:.1f} | {t_lean / MIB:.2f} "
              f"| {t_naive / max(t_lean, 1):.1f} | {lean.argument_size_in_bytes / scale / MIB:.2f}"
              f" / {lean.output_size_in_bytes / scale / MIB:.2f} |")


if __name__ == "__main__":
    main()
