"""Flow-run names that say what ran: dataset, backbone and time."""

from datetime import UTC, datetime

from prefect.runtime import flow_run

from transferflow.config import dataset_slug


def _config() -> dict:
    config = flow_run.parameters.get("config") or {}
    config = config if isinstance(config, dict) else config.model_dump()
    changed = flow_run.parameters.get("changed")  # the on-data trigger's dataset replaces config's
    if changed:
        config = {**config, "dataset": changed["dataset"] if isinstance(changed, dict) else changed.dataset}
    return config


def _prefix() -> str:
    config = _config()
    return f"{dataset_slug(config.get('dataset', 'cifar10'))}-{config.get('backbone', 'vgg16')}"


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def retrain_run_name() -> str:
    return f"{_prefix()}-{_stamp()}"


def train_run_name() -> str:
    return f"{_prefix()}-{flow_run.parameters.get('phase', 'train')}-{_stamp()}"
