"""Local development tooling, not the pipeline: the local S3 server (s3server), the Prefect
stack and its background processes (stack, daemons) and generated sample data (samples).

    python -m transferflow.devstack.s3server up|down
    python -m transferflow.devstack.stack up|down|status|...
    python -m transferflow.devstack.samples DIR
"""
