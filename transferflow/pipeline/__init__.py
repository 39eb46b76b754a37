"""The pipeline's stages as plain functions, one floor above data/, training/ and scaleout/: Prefect
tasks in tasks/ wrap these, and tests, notebooks or another orchestrator can call them directly.

    phases     the stages up to a trained model; the engine choice (local or Ray) is made here
    preflight  checks of a RetrainConfig before Prefect or TensorFlow load
    timing     where a run's wall time goes, stage by stage
"""

from transferflow.pipeline.phases import (
    BackboneRef,
    FineTuneOutcome,
    PhaseOutcome,
    build_backbone,
    check_storage,
    dataset_cache_key,
    decide_fine_tune,
    download_dataset,
    fine_tune,
    train_head,
)
from transferflow.pipeline.preflight import preflight
from transferflow.pipeline.timing import StageClock

__all__ = ["BackboneRef", "FineTuneOutcome", "PhaseOutcome", "StageClock", "build_backbone", "check_storage",
           "dataset_cache_key", "decide_fine_tune", "download_dataset", "fine_tune", "preflight",
           "train_head"]
