from prefect import task
from prefect.logging import get_run_logger

from transferflow import phases
from transferflow.config import RetrainConfig
from transferflow.data import DatasetRef
from transferflow.gate import GateDecision, fine_tune_gate

TRAIN_TIMEOUT_S = 6 * 3600  # a hung accelerator should not hold a worker forever


@task(name="train_head", timeout_seconds=TRAIN_TIMEOUT_S)
def train_head(config: RetrainConfig, dataset: DatasetRef, backbone: phases.BackboneRef,
               run_id: str) -> phases.PhaseOutcome:
    """Train the new classifier head on the frozen backbone."""
    return phases.train_head(config, dataset, backbone, run_id, logger=get_run_logger())


@task(name="decide_fine_tune")
def decide_fine_tune(config: RetrainConfig, head: phases.PhaseOutcome) -> GateDecision:
    """The gate: fine-tune only a head whose validation accuracy clears fine_tune_gate."""
    decision = fine_tune_gate(head.metrics["val_accuracy"], config.fine_tune_gate,
                              config.fine_tune_epochs)
    get_run_logger().info("gate: %s", decision.reason)
    return decision


@task(name="fine_tune", timeout_seconds=TRAIN_TIMEOUT_S)
def fine_tune(config: RetrainConfig, dataset: DatasetRef, head: phases.PhaseOutcome,
              run_id: str) -> phases.FineTuneOutcome:
    """Unfreeze the top blocks and train at a low learning rate; keep only if not worse."""
    return phases.fine_tune(config, dataset, head, run_id, logger=get_run_logger())
