"""The train flow: one training phase, deployed as `train/gpu` on the gpu pool.

`retrain` starts it with run_deployment; inputs and outputs travel as S3 URIs.
"""

from typing import Literal

from prefect import flow

from transferflow.config import RetrainConfig, TrainOn
from transferflow.data import DatasetRef
from transferflow.errors import ConfigError
from transferflow.pipeline.phases import BackboneRef, PhaseOutcome
from transferflow_flows.naming import train_run_name
from transferflow_tasks.credentials import use_credentials_block
from transferflow_tasks.training import run_phase, store_outcome


@flow(name="train", flow_run_name=train_run_name,
      description="One training phase (head or fine_tune) of a retrain run, on a GPU worker.")
def train(config: RetrainConfig, dataset: DatasetRef, run_id: str,
          phase: Literal["head", "fine_tune"] = "head", backbone: BackboneRef | None = None,
          head: PhaseOutcome | None = None) -> str:
    if phase == "head" and backbone is None:
        raise ConfigError("phase head needs the backbone parameter")
    if phase == "fine_tune" and head is None:
        raise ConfigError("phase fine_tune needs the head parameter (the head phase's outcome)")
    use_credentials_block()
    inputs = {"backbone": backbone} if phase == "head" else {"head": head}
    outcome = run_phase(phase, TrainOn.LOCAL, config, dataset, run_id, **inputs)
    return store_outcome(run_id, phase, outcome)
