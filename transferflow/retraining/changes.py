"""No work when nothing changed: a cheap check, before any download or decode, of whether the
dataset and the effective training configuration are those of a version already trained.

The dataset side is the dataset stage's cheap source signature (S3 keys, ETags and sizes; local
paths, sizes and mtimes; the pinned sha256 of a built-in or URL, else the URL's ETag from a HEAD);
the configuration side a hash of every RetrainConfig field that can change the model or its
judging (EXECUTION_ONLY fields cannot), plus the weights file's own signature. Both are stored in
each version's metadata (`change_check`) and compared with the version at production, then latest.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from pydantic import BaseModel

from transferflow import storage
from transferflow.config import RetrainConfig

log = logging.getLogger(__name__)

# Fields that say where or how a run executes, or whether it runs, never what it trains.
EXECUTION_ONLY = frozenset({"train_on", "force", "if_changed", "training_timeout_minutes",
                            "checkpoint_every_steps", "checkpoint_keep", "gpus_per_worker"})
COMPARED_ALIASES = ("production", "latest")


class ChangeSignature(BaseModel):
    """What a version was trained from, cheaply identified (stored as metadata `change_check`)."""

    source: str | None  # None: the source cannot be identified without downloading it
    config: str  # sha256 of the effective configuration and the weights file's signature


class ChangeCheck(BaseModel):
    """The check's answer: whether to skip, why (one line), and the signature to record."""

    skip: bool
    reason: str
    signature: ChangeSignature


def change_signature(config: RetrainConfig) -> ChangeSignature:
    """The dataset's and the effective configuration's cheap signatures: listings and stats, no reads."""
    effective = {key: value for key, value in config.model_dump(mode="json").items()
                 if key not in EXECUTION_ONLY}
    effective["weights_signature"] = weights_signature(config.weights)
    digest = hashlib.sha256(json.dumps(effective, sort_keys=True, default=str).encode()).hexdigest()
    source = dataset_signature(config.dataset, ask_origin=config.if_changed)
    if config.extra_data and source is not None:  # labelled feedback trains too: its listing counts
        extra = dataset_signature(config.extra_data, ask_origin=False)
        source = None if extra is None else f"{source}\n+extra {extra}"
    return ChangeSignature(source=source, config=digest)


def dataset_signature(dataset: str, ask_origin: bool = True) -> str | None:
    """source_signature, and for an http(s) URL without #sha256= its ETag (or Last-Modified and
    size) from a HEAD request (only if `ask_origin`: an offline run then waits for no timeout);
    None when the origin gives neither."""
    from transferflow.data import source_signature
    from transferflow.data.downloads import probe, redact

    signature = source_signature(dataset)
    if signature is not None or not ask_origin or not dataset.startswith(("http://", "https://")):
        return signature
    found = probe(dataset)
    if not found or not (found.get("etag") or found.get("last_modified")):
        return None
    return (f"{redact(dataset)}#etag={found.get('etag')}#modified={found.get('last_modified')}"
            f"#size={found.get('size')}")


def weights_signature(weights: str) -> str:
    """imagenet/none as they are; a weights file by its ETag (s3://) or size and mtime (local)."""
    if weights in ("imagenet", "none"):
        return weights
    if weights.startswith("s3://"):
        location = storage.parse_s3_object_uri(weights)
        found = storage.head(location.bucket, location.key)
        return f"{weights}#{found['ETag'] if found else 'missing'}"
    path = Path(weights.removeprefix("file://")).expanduser()
    stat = path.stat() if path.is_file() else None
    return f"{path}#{stat.st_size}-{stat.st_mtime_ns}" if stat else f"{path}#missing"


def check_changes(config: RetrainConfig, logger=log) -> ChangeCheck:
    """Skip when config.if_changed is set (and force is not) and the signature equals that of the
    version at production, else latest."""
    from transferflow.registry import Registry

    signature = change_signature(config)
    if not config.if_changed or config.force:
        why = "force is set" if config.if_changed else "if_changed is off"
        return ChangeCheck(skip=False, reason=f"training: {why}", signature=signature)
    if signature.source is None:
        return ChangeCheck(skip=False, signature=signature, reason=(
            f"training: {config.dataset} cannot be compared cheaply (an http(s) URL without #sha256= "
            "whose server sends no ETag or Last-Modified)"))
    registry, name = Registry(), config.registry_name
    for alias in COMPARED_ALIASES:
        document = registry.alias_document(name, alias)
        record = registry.record(name, document.version) if document else None
        recorded = (record.model_extra or {}).get("change_check") if record else None
        if recorded and ChangeSignature.model_validate(recorded) == signature:
            return ChangeCheck(skip=True, signature=signature, reason=(
                f"skipped: the dataset and the training configuration are those of {name}:{document.version} "
                f"({alias}); pass force to train anyway"))
    return ChangeCheck(skip=False, signature=signature,
                       reason=f"training: the dataset or the configuration changed since {name}'s "
                       "production and latest versions (or it has none)")
