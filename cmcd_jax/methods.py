"""The method registry: every method a run can evaluate, each declared once.

A method says what it trains on the target modality:

- `student`: distilled from the frozen step-1 teacher with its `loss` (`distill/<name>/`);
- `labels`: trained from scratch on the few labels alone (`downstream/<name>/`);
- `simclr`: SimCLR on the target's unlabelled data, then probed (`<name>/`);
- `nothing`: a randomly initialised encoder, probed (`<name>/`).

A student matches the teacher's projection through a projection head, or its backbone
features through a linear map (`teacher_output`). Register your own with :func:`register`::

    def cosine(config):  # config -> a per-device loss; axis_name: the batch's device axis
        def loss(student, teacher, axis_name):
            s = student / jnp.linalg.norm(student, axis=-1, keepdims=True)
            t = teacher / jnp.linalg.norm(teacher, axis=-1, keepdims=True)
            return jax.lax.pmean(1 - jnp.mean(jnp.sum(s * t, -1)), axis_name)
        return loss

    methods.register(methods.Method("cosine", "student", loss=cosine))
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable

from cmcd_jax import losses

TRAINS = {"student": "distill/{}", "labels": "downstream/{}", "simclr": "{}", "nothing": "{}"}


def _no_statistics(config) -> float:
    return 0.0


@dataclasses.dataclass(frozen=True)
class Method:
    """One method: its `name` (as in `config.methods`), what it `trains` (a key of TRAINS),
    and for a student its `loss` (config -> per-device loss(student_out, teacher_out,
    axis_name=None)), what of the teacher it matches (`teacher_output`: 'projection' or
    'features') and the weight of SOCKET's BatchNorm-statistics term (config -> float)."""
    name: str
    trains: str
    loss: Callable | None = None
    teacher_output: str = "projection"
    statistics_weight: Callable = _no_statistics

    @property
    def directory(self) -> str:
        """Where, relative to a seed's directory, the method's own stage writes."""
        return TRAINS[self.trains].format(self.name)

    @property
    def distils(self) -> bool:
        return self.trains == "student"


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Adds (or replaces) `method`; a ValueError names what is wrong with it."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", method.name):
        raise ValueError(f"method name {method.name!r}: use lowercase letters, digits and _")
    if method.trains not in TRAINS:
        raise ValueError(f"method {method.name!r}: trains={method.trains!r}; valid: "
                         f"{', '.join(TRAINS)}")
    if method.distils and method.loss is None:
        raise ValueError(f"method {method.name!r} trains a student and needs a loss")
    if method.teacher_output not in ("projection", "features"):
        raise ValueError(f"method {method.name!r}: teacher_output={method.teacher_output!r}; "
                         f"valid: projection, features")
    REGISTRY[method.name] = method
    return method


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str) -> Method:
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def _chunk(config) -> int | None:
    return config.distill.get("loss_chunk_size") or None


def _cmc(config) -> Callable:
    cfg = config.distill.cmc
    return functools.partial(losses.cmc_loss, temperature=cfg.temperature,
                             symmetric=cfg.symmetric, chunk_size=_chunk(config))


def _cmd(config) -> Callable:
    cfg = config.distill.cmd
    return functools.partial(losses.cmd_loss, student_temperature=cfg.student_temperature,
                             teacher_temperature=cfg.teacher_temperature,
                             variant=cfg.variant, chunk_size=_chunk(config))


def _l2(config) -> Callable:
    return losses.l2_align


def _socket_weight(config) -> float:
    return config.distill.socket.statistics_weight


for _method in (
        Method("cmc", "student", loss=_cmc),  # Ours: contrastive, positive and negative pairs.
        Method("cmd", "student", loss=_cmd),
        Method("l2", "student", loss=_l2, teacher_output="features"),  # Supervision transfer.
        Method("socket", "student", loss=_l2, teacher_output="features",
               statistics_weight=_socket_weight),  # l2 + the teacher's BatchNorm statistics.
        Method("target_only", "labels"),
        Method("ssl_target", "simclr"),
        Method("random_init", "nothing")):
    register(_method)
