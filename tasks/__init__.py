"""Prefect tasks: thin wrappers over transferflow.phases that add retries on I/O,
timeouts on training, the run logger and artifacts."""
