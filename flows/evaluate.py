"""The evaluate flow: re-check a registered model from its stored bytes.

Deployed as `evaluate/on-registration`, triggered by the transferflow.model.registered
event (see deployments/prefect.yaml): an example automation.
"""

from prefect import flow

from transferflow_tasks.credentials import use_credentials_block
from transferflow_tasks.evaluation import reproduce_evaluation


@flow(name="evaluate", flow_run_name="evaluate-{model}",
      description="Verify a registered model's bytes and reproduce its recorded test accuracy.")
def evaluate_registered(model: str, tolerance: float = 0.01) -> dict:
    """`tolerance` allows for float differences between the training and this worker's hardware."""
    use_credentials_block()
    return reproduce_evaluation(model, tolerance)
