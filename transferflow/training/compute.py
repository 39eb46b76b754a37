"""How a training phase uses the machine: precision, XLA, and the distribution strategy.

`plan_compute` decides from the visible accelerators and the run's flags, and says why;
`compute_scope` applies a plan while models are built and trained. Defaults turn on
only what helps on the hardware found: mixed precision and XLA on GPUs, neither on CPUs
(where half-precision maths is emulated, and where Keras itself leaves XLA off), and
MirroredStrategy when a worker has more than one GPU.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from transferflow.errors import ConfigError

log = logging.getLogger(__name__)

FLOAT32 = "float32"


class Strategy(StrEnum):
    """How training spreads over a worker's accelerators."""

    AUTO = "auto"  # mirrored when the worker has more than one GPU, else none
    NONE = "none"  # one device
    MIRRORED = "mirrored"  # tf.distribute.MirroredStrategy over every visible GPU (or the CPU)


@dataclass(frozen=True)
class Accelerator:
    """One visible GPU: its name and CUDA compute capability (major, minor)."""

    name: str
    compute_capability: tuple[int, int] | None = None


@dataclass(frozen=True)
class ComputePlan:
    """What a phase will use, and why: recorded in the run log and the model's metadata."""

    precision: str  # float32 | mixed_float16 | mixed_bfloat16 (a Keras dtype policy)
    jit_compile: bool
    strategy: str  # none | mirrored
    replicas: int
    accelerators: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def global_batch(self, per_replica: int) -> int:
        """Each replica gets `per_replica` images, so one step sees this many."""
        return per_replica * self.replicas

    def describe(self, per_replica: int) -> str:
        return (f"precision {self.precision}, XLA {'on' if self.jit_compile else 'off'}, strategy "
                f"{self.strategy} ({self.replicas} replica{'s' * (self.replicas > 1)}, batch "
                f"{self.global_batch(per_replica)} = {per_replica} per replica); "
                + "; ".join(self.reasons))

    def as_dict(self) -> dict:
        return asdict(self)


def visible_gpus() -> list[Accelerator]:
    """The GPUs this process can use (TensorFlow's view), with compute capability when known."""
    import tensorflow as tf

    found = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        found.append(Accelerator(details.get("device_name", gpu.name), details.get("compute_capability")))
    return found


def plan_compute(mixed_precision: bool, xla: bool, strategy: str,
                 gpus: list[Accelerator] | None = None) -> ComputePlan:
    """Choose precision, XLA and strategy for the GPUs found (looked up when not given)."""
    gpus = visible_gpus() if gpus is None else gpus
    precision, why_precision = _choose_precision(mixed_precision, gpus)
    jit, why_jit = _choose_jit(xla, gpus)
    chosen, replicas, why_strategy = _choose_strategy(Strategy(strategy), gpus)
    return ComputePlan(precision=precision, jit_compile=jit, strategy=chosen, replicas=replicas,
                       accelerators=[g.name for g in gpus], reasons=[why_precision, why_jit, why_strategy])


def _choose_precision(wanted: bool, gpus: list[Accelerator]) -> tuple[str, str]:
    if not wanted:
        return FLOAT32, "mixed precision switched off"
    if not gpus:
        return FLOAT32, "no GPU: mixed precision would slow a CPU down"
    capabilities = [g.compute_capability or (0, 0) for g in gpus]
    oldest = min(capabilities)
    if oldest >= (8, 0):
        return "mixed_bfloat16", f"GPU compute capability {oldest[0]}.{oldest[1]} has bfloat16 tensor cores"
    if oldest >= (7, 0):
        return "mixed_float16", f"GPU compute capability {oldest[0]}.{oldest[1]} has float16 tensor cores"
    return FLOAT32, f"GPU compute capability {oldest[0]}.{oldest[1]} has no tensor cores"


def _choose_jit(wanted: bool, gpus: list[Accelerator]) -> tuple[bool, str]:
    if not wanted:
        return False, "XLA switched off"
    if not gpus:
        return False, "no GPU: XLA stays off on CPUs, as in Keras's own default"
    return True, "XLA compiles the training step for the GPU"


def _choose_strategy(wanted: Strategy, gpus: list[Accelerator]) -> tuple[str, int, str]:
    if wanted is Strategy.NONE or (wanted is Strategy.AUTO and len(gpus) < 2):
        return Strategy.NONE.value, 1, f"one device ({len(gpus)} GPUs visible)"
    replicas = max(1, len(gpus))
    where = f"{len(gpus)} GPUs" if gpus else "the CPU (no GPU visible)"
    return Strategy.MIRRORED.value, replicas, f"MirroredStrategy over {where}"


@contextlib.contextmanager
def compute_scope(plan: ComputePlan) -> Iterator[None]:
    """Build and train models under the plan's dtype policy and strategy; restores both after."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(plan.precision)
    try:
        with _strategy_scope(plan):
            yield
    finally:
        keras.config.set_dtype_policy(previous)


@contextlib.contextmanager
def _strategy_scope(plan: ComputePlan) -> Iterator[None]:
    if plan.strategy == Strategy.NONE.value:
        yield
        return
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ConfigError(f"strategy mirrored needs KERAS_BACKEND=tensorflow, not {keras.backend.backend()}; "
                          "pass --strategy none")
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy()
    if strategy.num_replicas_in_sync != plan.replicas:
        raise ConfigError(f"the plan expected {plan.replicas} replicas, MirroredStrategy found "
                          f"{strategy.num_replicas_in_sync}: did CUDA_VISIBLE_DEVICES change?")
    with strategy.scope():
        yield
