"""--checkpoint-every-steps and --balance-classes, end to end through the training phases:
what a user can see of them in object storage, in the logs and in the recorded metrics."""

import logging
import math
import shutil

import pytest

from tests.conftest import Lines
from transferflow import storage
from transferflow.config import RetrainConfig
from transferflow.pipeline import phases

pytestmark = pytest.mark.slow


def listening_logger(name: str) -> tuple[logging.Logger, Lines]:
    logger, lines = logging.getLogger(name), Lines()
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    return logger, lines


def config_for(dataset, weights, **overrides) -> RetrainConfig:
    settings = dict(dataset=str(dataset), weights=str(weights), image_size=32, head_epochs=2,
                    head_learning_rate=1e-2, fine_tune_epochs=1, batch_size=16, patience=5, seed=1)
    return RetrainConfig(**{**settings, **overrides})


def saved_positions(bucket: str, run_id: str, phase: str) -> list[tuple[int, int]]:
    """(epoch, step) of every checkpoint kept, from the names of its weights files."""
    prefix = f"runs/{run_id}/checkpoints/{phase}/"
    names = [o["Key"][len(prefix):] for o in storage.list_keys(bucket, prefix)]
    stems = sorted(n.split(".")[0] for n in names if n.endswith(".weights.h5"))
    return [(int(stem.split("-e")[1][:4]), int(stem.split("-s")[1])) for stem in stems]


def every_n_steps(n: int, steps_per_epoch: int, epochs: int) -> list[tuple[int, int]]:
    """A save every n steps; one that falls on an epoch's last step is taken after that epoch's
    validation, as (next epoch, step 0)."""
    return [divmod(total, steps_per_epoch) for total in range(n, epochs * steps_per_epoch + 1, n)]


def test_checkpoints_are_written_every_n_steps(bucket, sample_dataset, random_weights):
    config = config_for(sample_dataset, random_weights, checkpoint_every_steps=3, checkpoint_keep=100)
    quiet = logging.getLogger("every-steps")
    dataset = phases.download_dataset(config, logger=quiet)
    steps = math.ceil(sum(dataset.counts["train"].values()) / config.batch_size)
    assert steps % 3, "the test needs saves that fall inside epochs"
    backbone = phases.build_backbone(config, logger=quiet)
    head = phases.train_head(config, dataset, backbone, "steps-run", logger=quiet)
    tuned = phases.fine_tune(config, dataset, head, "steps-run", logger=quiet)

    assert saved_positions(bucket, "steps-run", "head") == every_n_steps(3, steps, config.head_epochs)
    assert saved_positions(bucket, "steps-run", "fine_tune") == every_n_steps(3, steps, 1)
    assert any(step for _, step in saved_positions(bucket, "steps-run", "head"))  # some mid-epoch
    for phase, epochs in (("head", 2), ("fine_tune", 1)):  # the pointer names the newest
        pointer = storage.get_json(bucket, f"runs/steps-run/checkpoints/{phase}/checkpoint.json")[0]
        newest = every_n_steps(3, steps, epochs)[-1]
        assert (pointer["epoch"], pointer["step"], pointer["steps_per_epoch"]) == (*newest, steps)
    assert head.metrics["epochs_run"] == 2 and tuned.tuned.metrics["epochs_run"] == 1


def test_only_the_newest_step_checkpoints_are_kept(bucket, sample_dataset, random_weights):
    config = config_for(sample_dataset, random_weights, checkpoint_every_steps=2, checkpoint_keep=2)
    quiet = logging.getLogger("keep")
    dataset = phases.download_dataset(config, logger=quiet)
    steps = math.ceil(sum(dataset.counts["train"].values()) / config.batch_size)
    phases.train_head(config, dataset, phases.build_backbone(config, logger=quiet), "keep-run", logger=quiet)
    assert saved_positions(bucket, "keep-run", "head") == every_n_steps(2, steps, 2)[-2:]


@pytest.fixture
def imbalanced_dataset(sample_dataset, tmp_path):
    """The sample classes, with class_2 cut to 10 of its 30 images."""
    root = tmp_path / "imbalanced"
    shutil.copytree(sample_dataset, root)
    for path in sorted((root / "class_2").iterdir())[10:]:
        path.unlink()
    return root


def test_balanced_class_weights_are_applied_logged_and_recorded(bucket, imbalanced_dataset, random_weights):
    logger, lines = listening_logger("balance")
    balanced_config = config_for(imbalanced_dataset, random_weights, balance_classes=True)
    dataset = phases.download_dataset(balanced_config, logger=logger)
    backbone = phases.build_backbone(balanced_config, logger=logger)
    balanced = phases.train_head(balanced_config, dataset, backbone, "balanced", logger=logger)
    plain = phases.train_head(config_for(imbalanced_dataset, random_weights), dataset, backbone, "plain",
                              logger=logging.getLogger("plain"))

    counts = [dataset.counts["train"][name] for name in dataset.class_names]
    expected = {str(c): round(sum(counts) / (3 * n), 5) for c, n in enumerate(counts)}
    assert counts[2] < counts[0] and expected["2"] > 1.0 > expected["0"]
    assert balanced.metrics["class_weight"] == expected  # recorded with the phase's metrics
    assert plain.metrics["class_weight"] is None
    logged = {name: round(sum(counts) / (3 * n), 3) for name, n in zip(dataset.class_names, counts,
                                                                        strict=True)}
    assert f"class weights (inverse frequency): {logged}" in lines.lines
    # the same data, seed and steps: only the loss weights differ, so the training loss does
    assert balanced.metrics["history"]["loss"] != plain.metrics["history"]["loss"]
