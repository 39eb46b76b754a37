"""Training phases: the head on a frozen backbone, then an optional fine-tune.

Progress goes to the logger passed in (a Prefect run logger inside tasks), one
line per epoch plus in-epoch progress for long epochs.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np

from transferflow.errors import TrainingError

log = logging.getLogger(__name__)


@dataclass
class PhaseMetrics:
    """What one training phase achieved, measured after training on the restored best weights."""

    phase: str
    epochs_run: int
    val_accuracy: float
    val_loss: float
    train_accuracy: float
    seconds: float
    history: dict[str, list[float]] = field(default_factory=dict)
    resumed_from_epoch: int | None = None  # set when a checkpoint of an earlier attempt was used
    class_weight: dict[str, float] | None = None  # the loss weight of each class index, if balanced
    epoch_seconds: list[float] = field(default_factory=list)  # wall time of each epoch this attempt ran

    def as_dict(self) -> dict:
        return {"resumed_from_epoch": self.resumed_from_epoch,
            "phase": self.phase, "epochs_run": self.epochs_run,
            "val_accuracy": self.val_accuracy, "val_loss": self.val_loss,
            "train_accuracy": self.train_accuracy, "seconds": round(self.seconds, 2),
            "history": self.history, "class_weight": self.class_weight,
            "epoch_seconds": [round(s, 3) for s in self.epoch_seconds],
        }


class ProgressLog(keras.callbacks.Callback):
    """Logs each epoch's metrics, and in-epoch progress at most every `every_s` seconds.

    `on_epoch(done, total)`, if given, is called after every epoch (e.g. to update a
    progress bar in an orchestrator's UI).
    """

    def __init__(self, logger, phase: str, epochs: int, steps: int, every_s: float = 30.0,
                 on_epoch: Callable[[int, int], None] | None = None):
        super().__init__()
        self.logger, self.phase, self.epochs, self.steps, self.every_s = logger, phase, epochs, steps, every_s
        self.on_epoch = on_epoch
        self.epoch_seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = self.last = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self.logger.info("%s epoch %d/%d: step %d/%d, loss %.4f", self.phase, self.epoch + 1,
                             self.epochs, batch + 1, self.steps, (logs or {}).get("loss", math.nan))

    def on_epoch_end(self, epoch, logs=None):
        self.epoch = epoch + 1
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items())
                            if isinstance(v, (int, float)) and k != "learning_rate")
        self.epoch_seconds.append(time.monotonic() - self.epoch_started)
        self.logger.info("%s epoch %d/%d (%.1fs): %s", self.phase, epoch + 1, self.epochs,
                         self.epoch_seconds[-1], metrics)
        if self.on_epoch is not None:
            self.on_epoch(epoch + 1, self.epochs)

    def on_train_begin(self, logs=None):
        self.epoch = 0

    def on_train_end(self, logs=None):
        if self.on_epoch is not None and self.epoch < self.epochs:  # early stopping ended it
            self.on_epoch(self.epochs, self.epochs)


def split_labels(split) -> np.ndarray:
    """A split's labels: the y of an (x, y) pair, or a streamed split's labels."""
    return split.labels if hasattr(split, "labels") else split[1]


def split_dataset(split, batch_size: int, shuffle: bool, seed: int):
    """Batches of (float32 pixels, label) from an in-memory (x, y) pair or a streamed split;
    shuffled, it is the first training epoch of `train_batches`."""
    if hasattr(split, "dataset"):
        return without_autotune_thread(split.dataset(batch_size, shuffle, seed))
    return without_autotune_thread(make_dataset(*split, batch_size, shuffle, seed))


def without_autotune_thread(dataset):
    """The dataset without tf.data's autotuning thread. Its optimisation period doubles up to 60 s,
    and an iterator's destructor waits for it: after a fine-tuning phase of minute-long epochs, Keras's
    fit() returned up to 25 s after its last epoch (measured on 2 cores, VGG16 at 64 px). Without it,
    AUTOTUNE parallelism is the number of cores and prefetch buffers grow as they need (tf.data's
    own rule when autotuning is off): these pipelines only gather or decode a batch at a time."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int):
    """A tf.data pipeline of float32 pixel batches."""
    import tensorflow as tf

    if shuffle:
        return array_epochs(x, y)(batch_size, seed, 0).prefetch(tf.data.AUTOTUNE)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = ds.batch(batch_size).map(lambda a, b: (tf.cast(a, tf.float32), b),
                                  num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def array_epochs(x: np.ndarray, y: np.ndarray):
    """`epoch_batches(batch_size, seed, epoch)` for in-memory arrays: each epoch a full permutation
    drawn from (seed, epoch) by a stateless shuffle, gathered a batch at a time (no shuffle buffer)."""
    import tensorflow as tf

    images, labels = tf.constant(x), tf.constant(y)

    def epoch_batches(batch_size: int, seed: int, epoch):
        key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
        order = tf.random.experimental.stateless_shuffle(tf.range(len(y), dtype=tf.int64), seed=key)
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size).map(
            lambda index: (tf.cast(tf.gather(images, index), tf.float32), tf.gather(labels, index)),
            num_parallel_calls=tf.data.AUTOTUNE)

    return epoch_batches


def train_batches(split, batch_size: int, seed: int, epochs: int, start: tuple[int, int] = (0, 0)):
    """Every training batch of epochs start[0]..epochs-1 as one stream, less the first start[1]
    batches of the first: what a run resumed at (epoch, step) has left to see.

    An epoch's order is a function of (seed, epoch) alone, not of how often a tf.data iterator
    was started, so a new process rebuilds the order of the epoch it resumes. Read it with
    fit(steps_per_epoch=...), which keeps one iterator across epochs.
    """
    import tensorflow as tf

    first_epoch, skip = start
    if hasattr(split, "epoch_batches"):  # streamed: fetch the shards now, not inside flat_map's trace
        shards = split.local_shards()
        epoch_batches = functools.partial(split.epoch_batches, shards=shards)
    else:
        epoch_batches = array_epochs(*split)
    stream = tf.data.Dataset.range(first_epoch, epochs).flat_map(
        lambda epoch: epoch_batches(batch_size, seed, epoch))
    return without_autotune_thread(stream.skip(skip).prefetch(tf.data.AUTOTUNE))


def compile_for(model: keras.Model, learning_rate, jit_compile: bool = False) -> None:
    """Adam on sparse labels; `learning_rate` is a float or a Keras schedule."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=jit_compile)


def learning_rate_for(schedule: str, learning_rate: float, steps_per_epoch: int, epochs: int):
    """A constant rate, cosine decay to 0, or a one-epoch linear warm-up then cosine decay.

    The warm-up starts at 0 so the first updates to freshly unfrozen weights are small; it
    lasts one epoch but never more than a fifth of the phase.
    """
    total = steps_per_epoch * epochs
    if schedule == "constant":
        return learning_rate
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=total)
    if schedule == "warmup_cosine":
        warmup = max(1, min(steps_per_epoch, total // 5))
        return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=max(1, total - warmup),
                                                      warmup_target=learning_rate, warmup_steps=warmup)
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")


def balanced_class_weights(y: np.ndarray, num_classes: int) -> dict[int, float]:
    """Inverse class frequency, scaled so a balanced dataset gets 1.0 for every class."""
    counts = np.bincount(y, minlength=num_classes)
    return {c: float(len(y) / (num_classes * n)) if n else 0.0 for c, n in enumerate(counts)}


def fit_phase(model: keras.Model, phase: str, train, val, *, epochs: int, learning_rate: float,
              batch_size: int, patience: int, seed: int, logger=log,
              on_epoch: Callable[[int, int], None] | None = None, schedule: str = "constant",
              class_weight: dict[int, float] | None = None, jit_compile: bool = False,
              checkpoint_uri: str | None = None, checkpoint_every_steps: int = 0,
              checkpoint_keep: int = 2, checkpoint_scratch: bool = False,
              checkpoint_interval_s: float = 0.0, checkpoint_background: bool = True) -> PhaseMetrics:
    """Compile, fit with early stopping (best weights restored), then measure on val.

    `batch_size` is the global batch (all replicas together). With `checkpoint_uri`, the
    phase checkpoints there at the end of an epoch once `checkpoint_interval_s` seconds have passed
    since the last checkpoint (or every `checkpoint_every_steps` steps), and a new attempt resumes
    from the last checkpoint at the step it was taken: it skips the batches of that epoch already
    trained on, so it sees what an uninterrupted run sees.
    `checkpoint_background`: a checkpoint's upload overlaps the next steps (else they wait for it).
    `checkpoint_scratch`: this process is a multi-worker strategy's non-chief worker, which
    resumes from the chief's checkpoints but writes its own to a discarded scratch folder.
    """
    keras.utils.set_random_seed(seed)
    steps = math.ceil(len(split_labels(train)) / batch_size)
    # recompile: `trainable` may have changed
    compile_for(model, learning_rate_for(schedule, learning_rate, steps, epochs), jit_compile)
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    progress = ProgressLog(logger, phase, epochs, steps, on_epoch=on_epoch)
    callbacks = [keras.callbacks.TerminateOnNaN(), stopper, progress]
    checkpoint, start = None, (0, 0)
    if checkpoint_uri:
        from transferflow.training.checkpoints import EndResumedEpoch, S3Checkpoint

        checkpoint = S3Checkpoint(checkpoint_uri, phase, seed, steps, checkpoint_every_steps,
                                  checkpoint_keep, early_stopping=stopper, logger=logger,
                                  scratch=checkpoint_scratch, interval_s=checkpoint_interval_s,
                                  background=checkpoint_background)
        callbacks.append(checkpoint)  # after EarlyStopping: it restores that callback's state
        start = checkpoint.resume_point()
        if start[1]:  # first: it must undo its own stop before EarlyStopping decides
            callbacks.insert(0, EndResumedEpoch(steps - start[1]))
    started = time.monotonic()
    try:
        history = model.fit(
            train_batches(train, batch_size, seed, epochs, start), steps_per_epoch=steps,
            initial_epoch=start[0], validation_data=split_dataset(val, batch_size, False, seed),
            epochs=epochs, verbose=0, class_weight=class_weight, shuffle=False,  # the dataset shuffles
            callbacks=callbacks,
        ).history
    except BaseException:
        if checkpoint is not None:
            checkpoint.after_failure()
        raise
    if checkpoint is not None:
        history = checkpoint.history  # the epochs before a resume too
    losses = history.get("loss", [])
    if any(not math.isfinite(v) for v in losses):
        raise TrainingError(f"{phase}: the loss became {losses[-1]} (diverged). Lower the "
                            "learning rate or check the images; nothing was registered.")
    val_loss, val_accuracy = model.evaluate(split_dataset(val, batch_size, False, seed), verbose=0)
    return PhaseMetrics(
        phase=phase, epochs_run=len(losses), val_accuracy=float(val_accuracy),
        val_loss=float(val_loss), train_accuracy=float(history["accuracy"][-1]),
        seconds=time.monotonic() - started,
        history={k: [round(float(v), 5) for v in vals] for k, vals in history.items()},
        resumed_from_epoch=checkpoint.resumed_from if checkpoint is not None else None,
        class_weight={str(c): round(w, 5) for c, w in class_weight.items()} if class_weight else None,
        epoch_seconds=progress.epoch_seconds,
    )


def extract_features(classifier: keras.Model, splits: dict, batch_size: int) -> dict[str, np.ndarray]:
    """The pooled backbone output (what the head sees) for each split's images, as float32."""
    extractor = keras.Model(classifier.input, classifier.get_layer("pool").output)
    return {name: np.asarray(extractor.predict(split_dataset(split, batch_size, False, 0), verbose=0),
                             dtype=np.float32)
            for name, split in splits.items()}


def fit_head_on_features(classifier: keras.Model, train, val, *, epochs: int, learning_rate: float,
                         batch_size: int, patience: int, seed: int, logger=log,
                         on_epoch: Callable[[int, int], None] | None = None,
                         features: dict[str, np.ndarray] | None = None, **fit_options) -> PhaseMetrics:
    """Train the head of a frozen-backbone classifier on features computed once.

    With the backbone frozen (and no augmentation), every epoch would feed the same
    images through the same backbone. Instead: run it once over train and val (or take
    `features` computed earlier), set the standardize layer from the train features, train
    dropout -> dense on the standardised features, then copy the dense weights back into the
    classifier. Same model, same math; the backbone's cost is paid once, not per epoch.
    """
    from transferflow.training.model import STANDARDIZE_LAYER

    started = time.monotonic()
    if features is None:
        features = extract_features(classifier, {"train": train, "val": val}, batch_size)
        logger.info("backbone features computed once for %d train + %d val images (%.1fs); training "
                    "the head on them", len(features["train"]), len(features["val"]),
                    time.monotonic() - started)
    standardize = classifier.get_layer(STANDARDIZE_LAYER)
    standardized = {"train": standardize.adapt_to(features["train"]),
                    "val": standardize.standardized(features["val"])}
    dense = classifier.get_layer("classifier")
    head = keras.Sequential([
        keras.Input((features["train"].shape[1],)),
        keras.layers.Dropout(classifier.get_layer("dropout").rate, name="dropout"),
        keras.layers.Dense(dense.units, activation="softmax", dtype="float32", name="classifier"),
    ])
    head.get_layer("classifier").set_weights(dense.get_weights())
    metrics = fit_phase(head, "head", (standardized["train"], split_labels(train)),
                        (standardized["val"], split_labels(val)),
                        epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                        patience=patience, seed=seed, logger=logger, on_epoch=on_epoch, **fit_options)
    dense.set_weights(head.get_layer("classifier").get_weights())
    metrics.seconds = time.monotonic() - started
    return metrics


def evaluate(model: keras.Model, split, class_names: list[str], batch_size: int = 64) -> dict:
    """Accuracy and per-class accuracy on a held-out split ((x, y) or streamed)."""
    y = split_labels(split)
    probabilities = model.predict(split_dataset(split, batch_size, False, 0), verbose=0)
    predicted = probabilities.argmax(axis=1)
    per_class = {}
    for index, name in enumerate(class_names):
        mask = y == index
        per_class[name] = {"accuracy": float((predicted[mask] == index).mean()) if mask.any() else None,
                           "support": int(mask.sum())}
    return {"accuracy": float((predicted == y).mean()), "images": int(len(y)), "per_class": per_class}
