"""MultiWorkerMirroredStrategy for Keras 3, inside a Ray Train worker (engine ray).

Ray Train's TensorflowTrainer sets TF_CONFIG on each worker; the strategy built here reads it, so
every worker holds a replica of the model and each step all-reduces the gradients of one global
batch (`batch_size` per replica x replicas) over the workers.

Keras 3's TensorFlow trainer does not run under MultiWorkerMirroredStrategy with more than one
worker as released (keras-team/keras#20585, still open for keras 3.15): `fit` averages its first
input batch across workers through `strategy.reduce` on a tuple (TypeError: PerReplica to Tensor),
and the per-step metrics are reduced with `axis=0` although they are scalars. `patch_keras` fixes
both, in the worker process only: the first batch is only needed for its shapes, so the local
replica's part is used; and the scalars are averaged over replicas with `axis=None`, which is what
Keras does under MirroredStrategy on one machine. tests/scaleout checks a 2-worker training
against a 1-worker one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator

from transferflow.training.compute import ComputePlan, plan_compute

log = logging.getLogger(__name__)

STRATEGY = "multi_worker_mirrored"


def multi_worker_strategy(shared_gpu: bool = False):
    """The strategy for this Ray Train worker (from TF_CONFIG), with data sharding by element.

    Every worker reads the same global batches in the same order and keeps its own slice
    (AutoShardPolicy.DATA): the batches are exactly the local path's, so a run resumed at a step
    sees what an uninterrupted one sees. Sharding by file would read less but split the data
    differently for each worker count. `shared_gpu` (a fraction of a GPU per worker): each worker
    takes GPU memory as it needs it rather than all of it, and the all-reduce goes over gRPC
    (RING), since NCCL refuses two workers on one GPU. Must be built before TensorFlow runs any
    operation.
    """
    import tensorflow as tf

    patch_keras()
    if shared_gpu:
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    implementation = (tf.distribute.experimental.CommunicationImplementation.RING if shared_gpu
                      else tf.distribute.experimental.CommunicationImplementation.AUTO)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(implementation=implementation))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    distribute = strategy.experimental_distribute_dataset

    def by_element(dataset, *args, **kwargs):
        return distribute(dataset.with_options(options), *args, **kwargs)

    strategy.experimental_distribute_dataset = by_element
    return strategy


def worker_plan(mixed_precision: bool, xla: bool, strategy, workers: int) -> ComputePlan:
    """The compute plan of a worker: precision and XLA chosen for its own GPUs as locally, and the
    multi-worker strategy with the replicas of the whole group (so the plan's global batch is the
    group's)."""
    local = plan_compute(mixed_precision, xla, "none")
    replicas = strategy.num_replicas_in_sync
    why = (f"MultiWorkerMirroredStrategy over {workers} Ray worker{'s' * (workers > 1)} "
           f"({replicas} replica{'s' * (replicas > 1)}; Ray Train set TF_CONFIG)")
    return dataclasses.replace(local, strategy=STRATEGY, replicas=replicas,
                               reasons=[*local.reasons[:2], why])


@contextlib.contextmanager
def strategy_scope(plan: ComputePlan, strategy) -> Iterator[None]:
    """Build and train under the plan's dtype policy and the strategy; restores the policy after."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(plan.precision)
    try:
        with strategy.scope():
            yield
    finally:
        keras.config.set_dtype_policy(previous)


KERAS_PATCHED = (">=3.15", "<3.16")  # the Keras releases whose private trainer the patch was checked on


def patch_keras() -> None:
    """Make Keras 3's TensorFlow trainer run under MultiWorkerMirroredStrategy (see the module's
    docstring). Idempotent; only called in Ray Train workers. Refused, naming the fix, outside the
    Keras releases it was checked on or when the private functions it replaces no longer look as
    it expects."""
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_transferflow_multi_worker", False):
        return
    check_patchable(trainer)
    original = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            from keras.src import tree

            return tree.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None), values)
        return original(values, strategy, reduction)

    trainer.reduce_per_replica = reduce_per_replica
    trainer.TensorFlowTrainer._maybe_symbolic_build = _symbolic_build_on_local_batch
    trainer._transferflow_multi_worker = True


def check_patchable(trainer) -> None:
    """The Keras version is in KERAS_PATCHED, and the replaced functions have the parameters the
    patch calls them with (a probe of the behaviour it relies on, not only of the names)."""
    import inspect

    import keras
    from packaging.specifiers import SpecifierSet

    from transferflow.errors import ConfigError

    wanted = SpecifierSet(",".join(KERAS_PATCHED))
    problem = None
    if keras.__version__ not in wanted:
        problem = f"it was checked on keras {wanted} only"
    else:
        probes = [(trainer, "reduce_per_replica", ["values", "strategy", "reduction"]),
                  (trainer, "_collective_all_reduce_multi_worker", ["strategy"]),
                  (getattr(trainer, "TensorFlowTrainer", None), "_maybe_symbolic_build",
                   ["self", "iterator", "data_batch"])]
        for owner, name, parameters in probes:
            function = getattr(owner, name, None)
            if function is None or list(inspect.signature(function).parameters) != parameters:
                problem = f"its private {name}({', '.join(parameters)}) has changed"
                break
    if problem:
        raise ConfigError(f"engine ray: keras {keras.__version__}'s TensorFlow trainer cannot be adapted to "
                          f"MultiWorkerMirroredStrategy ({problem}; keras-team/keras#20585): install keras "
                          f"{wanted} on the Ray workers (pip install 'keras{wanted}'), or train with "
                          "engine local")


def _symbolic_build_on_local_batch(self, iterator=None, data_batch=None):
    """Keras's `_maybe_symbolic_build`, building from this replica's part of the first batch
    (shapes and dtypes are all it needs) instead of a cross-worker average of it."""
    import tensorflow as tf
    from keras.src import tree

    if self._distribute_strategy is None:
        return  # built when the step function is traced, as Keras does without a strategy
    if iterator is not None:
        for _, _, batches in iterator:
            first = next(batches)
            data_batch = tree.map_structure(
                lambda value: self.distribute_strategy.experimental_local_results(value)[0]
                if isinstance(value, tf.distribute.DistributedValues) else value, first)
            break
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)
