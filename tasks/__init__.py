"""Prefect tasks: thin wrappers over transferflow.pipeline.phases that add retries on I/O,
timeouts on training, the run logger and artifacts."""
