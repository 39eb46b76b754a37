"""The one configuration model and the names its fields use. Shared by every layer: the CLI flags,
the flow's parameters (and so the Prefect UI form) and the saved metadata all come from RetrainConfig.

    retrain  RetrainConfig, its validation, the Backbone enum
    choices  the named choices of its fields, as string enums
    naming   names that become parts of S3 keys: model names, a dataset URI's slug

`from transferflow.config import RetrainConfig` is the way in.
"""

from transferflow.config.choices import Engine, ExportFormat, PromoteMetric, Schedule, TrainOn
from transferflow.config.naming import MODEL_NAME_RE, dataset_slug, default_model_name
from transferflow.config.retrain import WEIGHT_CHOICES, Backbone, RetrainConfig, has_credentials

__all__ = ["MODEL_NAME_RE", "WEIGHT_CHOICES", "Backbone", "Engine", "ExportFormat", "PromoteMetric",
           "RetrainConfig", "Schedule", "TrainOn", "dataset_slug", "default_model_name", "has_credentials"]
