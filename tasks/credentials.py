"""Object-storage credentials from a Prefect Secret block, for workers whose environment has none."""

from __future__ import annotations

import os

from transferflow.errors import StorageError

BLOCK_VARIABLE = "TRANSFERFLOW_S3_CREDENTIALS_BLOCK"
FIELDS = {"aws_access_key_id": "AWS_ACCESS_KEY_ID", "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
          "aws_session_token": "AWS_SESSION_TOKEN", "endpoint_url": "AWS_ENDPOINT_URL",
          "region_name": "AWS_DEFAULT_REGION"}


def use_credentials_block() -> str | None:
    """If TRANSFERFLOW_S3_CREDENTIALS_BLOCK names a Secret block holding a JSON object with
    aws_access_key_id / aws_secret_access_key (and optionally aws_session_token, endpoint_url,
    region_name), put them in this process's environment for boto3. The values are never
    logged, returned or passed as parameters; returns the block's name."""
    name = os.environ.get(BLOCK_VARIABLE)
    if not name:
        return None
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(name).get()
    except ValueError:
        raise StorageError(f"{BLOCK_VARIABLE}={name}: no Secret block of that name; create it with "
                           "prefect.blocks.system.Secret(value={...}).save(name)") from None
    if not isinstance(value, dict) or not {"aws_access_key_id", "aws_secret_access_key"} <= set(value):
        raise StorageError(f"Secret block {name} must hold a JSON object with aws_access_key_id and "
                           "aws_secret_access_key")
    for field, variable in FIELDS.items():
        if value.get(field):
            os.environ[variable] = str(value[field])
    return name
