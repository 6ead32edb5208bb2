"""Measurements, run as commands: :mod:`~cmcd_jax.bench.speed` (the distillation step, its
input pipeline and its stage, against the PyTorch reference) and
:mod:`~cmcd_jax.bench.memory` (compiled memory of the sharded contrastive losses)."""
