"""A trained encoder in your own code: restore an export, embed new inputs.

    from cmcd_jax import exports
    encoder = exports.load("/tmp/cmcd_quickstart/distill/cmc/export")
    features = encoder.embed(sketches)  # uint8 (N, 32, 32) as stored -> (N, feature_dim)

Every stage writes its encoder as an export (`<stage>/export`: orbax variables and
`meta.json`); `load` rebuilds the Flax model it describes and restores its variables, checked
against the sha256 the run recorded.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Encoder:
    """An exported encoder-with-head.

    `apply_fn(variables, inputs) -> (features, head_outputs)` is pure and jitted (inference
    mode: BatchNorm uses its stored statistics); `features` are the backbone's pooled
    features, what the linear probe reads; `head_outputs` are the projection (students,
    SimCLR encoders: the shared space of the loss) or the class logits (target_only)."""

    apply_fn: Callable
    variables: dict
    meta: dict

    @property
    def modality(self) -> str:
        return self.meta["modality"]

    def prepare(self, raw) -> np.ndarray:
        """Raw inputs as the dataset stores them (uint8 images and sketches, float depth,
        audio clips of any length: their centre, padded when short), batched -> float32
        network inputs, as the training pipeline makes them for evaluation."""
        from cmcd_jax.data import modalities, pipeline

        expected = tuple(self.meta["input_shape"])
        clip_length = expected[0] if modalities.get(self.modality).window else 0
        inputs = np.stack([pipeline.to_input(self.modality, x, clip_length) for x in raw])
        if inputs.shape[1:] != expected:
            raise ValueError(f"inputs of shape {inputs.shape[1:]} (after preparing "
                             f"{self.modality}); this export takes {expected}")
        return inputs

    def embed(self, raw, batch_size: int = 256, head: bool = False) -> np.ndarray:
        """Features (or, with `head`, the head's outputs) of raw inputs, as numpy (N, D)."""
        inputs = self.prepare(raw)
        outs = [self.apply_fn(self.variables, inputs[i:i + batch_size])[int(head)]
                for i in range(0, len(inputs), batch_size)]
        return np.concatenate([np.asarray(o) for o in outs])


def load(directory: str | os.PathLike) -> Encoder:
    """The export in `directory` (e.g. `<workdir>/distill/cmc/export`, or
    `gs://bucket/run/distill/cmc/export`) on the default device; a clear error when it is
    missing or damaged."""
    import jax

    from cmcd_jax import parallel, paths
    from cmcd_jax.stages import common

    problem = paths.backend_problem(directory)
    if problem:
        raise ValueError(f"{os.fspath(directory)}: {problem}")
    model, variables, meta = common.restore_model(directory, parallel.make_mesh(1))
    return Encoder(jax.jit(lambda v, x: model.apply(v, x, train=False)), variables, meta)
