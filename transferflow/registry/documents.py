"""The registry's JSON documents as typed records: a version's metadata, an alias document and
its history entries, a version-number claim, and what a registration returns.

Every record tolerates keys it does not know (`extra="allow"`), so documents written by an
older or newer transferflow still read, and dumping one gives back what was read. Metadata
written before `schema_version` existed reads as version 0.
"""

from __future__ import annotations

import getpass
import os
import socket
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION = 2  # of VersionMetadata; 0 is what was written before the field existed
# 2: metrics beyond accuracy, calibration, golden-set scores, leakage, promotion checks


class Record(BaseModel):
    model_config = ConfigDict(extra="allow")

    def document(self) -> dict:
        """The JSON document: the keys that were given or read, none filled in by defaults.

        Python mode, so that values pass through as they are (a NaN stays a NaN, as json.dumps
        writes it) rather than being rewritten by pydantic's JSON conventions.
        """
        return self.model_dump(exclude_unset=True)


# ---------------------------------------------------------------- version metadata

class ClassResult(Record):
    accuracy: float | None = None  # the class's recall: kept under this name for older readers
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    support: int = 0


class TestMetrics(Record):
    """A model's scores on one set of labelled images (the test split, a golden set, any dataset).

    Versions registered before these existed have only accuracy, images and per_class accuracy.
    """

    accuracy: float | None = None
    images: int = 0
    per_class: dict[str, ClassResult] = {}
    macro_f1: float | None = None
    top_k: dict[str, float] = {}  # "3" -> top-3 accuracy, for k below the number of classes
    confusion_matrix: list[list[int]] | None = None  # [true class][predicted class], in `classes` order
    ece: float | None = None  # expected calibration error, 15 equal-width confidence bins
    dataset: str | None = None  # what was scored, when it is not the version's own test split
    fingerprint: str | None = None


class Calibration(Record):
    """Temperature scaling fitted on the validation split (probabilities = softmax(logits / T))."""

    temperature: float = 1.0
    applied: bool = False
    val_ece_before: float | None = None
    val_ece_after: float | None = None
    val_nll_before: float | None = None
    val_nll_after: float | None = None
    reason: str = ""


class PhaseMetrics(Record):
    phase: str | None = None
    epochs_run: int | None = None
    val_accuracy: float | None = None
    seconds: float | None = None
    history: dict[str, Any] = {}


class Metrics(Record):
    head: PhaseMetrics | None = None
    fine_tune: PhaseMetrics | None = None
    test: TestMetrics | None = None
    golden: TestMetrics | None = None  # the model's golden set, when one is set
    calibration: Calibration | None = None


class Decision(Record):
    """A gate's or the promotion's recorded decision; `reason` says it in words."""

    reason: str = ""


class GateRecord(Record):
    fine_tune: Decision | None = None
    keep_fine_tuned: Decision | None = None
    final_phase: str | None = None


class DatasetLineage(Record):
    source: str | None = None
    fingerprint: str = ""
    prepared_uri: str | None = None
    split_origin: Any = None
    counts: dict[str, dict[str, int]] = {}
    leakage: dict[str, Any] | None = None  # test images duplicated in train (data.leakage.LeakageReport)
    membership: dict[str, Any] | None = None  # splits.json.gz in the version: {file, sha256, size, images}


class Lineage(Record):
    flow_run_id: str | None = None
    staged_model_uri: str | None = None


class Artifact(Record):
    uri: str
    format: str = "keras"
    size: int
    sha256: str


class TrainingRecord(Record):
    """What a retrain run knows about its model before it is registered (publishing.build_metadata)."""

    schema_version: int = 0
    parameters: dict[str, Any] = {}
    metrics: Metrics = Metrics()
    gate: GateRecord = GateRecord()
    dataset: DatasetLineage = DatasetLineage()
    backbone: dict[str, Any] = {}
    classes: list[str] = []
    image_size: int | None = None
    preprocessing: dict[str, str] = {}
    training: dict[str, Any] = {}
    lineage: Lineage = Lineage()
    promotion: Decision | None = None
    exports: dict[str, Any] = {}
    monitoring: dict[str, Any] = {}  # {"reference": {file, sha256, size, ...}}: transferflow.monitoring
    timings: dict[str, float] | None = None  # seconds per stage until the export (timing.StageClock)

    @property
    def test_accuracy(self) -> float | None:
        return self.metrics.test.accuracy if self.metrics.test else None


class VersionMetadata(TrainingRecord):
    """metadata.json of a registered version: the training record plus what registration added."""

    name: str | None = None
    version: int | None = None
    registered_at: str | None = None
    artifact: Artifact | None = None
    library_versions: dict[str, str] = {}
    run_id: str | None = None


# ---------------------------------------------------------------- aliases

class AliasAction(StrEnum):
    REGISTER = "register"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    MOVE = "move"  # what an entry written before history existed is shown as


class HistoryEntry(Record):
    alias: str
    from_version: int | None = None
    to_version: int
    action: str = AliasAction.MOVE
    by: str | None = None
    at: str | None = None
    reason: str | None = None
    run_id: str | None = None


class AliasDocument(Record):
    """aliases/<alias>.json: where the alias points and, since history existed, every move."""

    alias: str
    version: int
    previous_version: int | None = None
    moved_at: str | None = None
    moved_by: str | None = None
    reason: str | None = None
    run_id: str | None = None
    history: list[HistoryEntry] | None = None

    def entries(self) -> list[HistoryEntry]:
        """The moves, oldest first; a document written before history existed gives its last move."""
        if self.history is not None:
            return self.history
        return [HistoryEntry(alias=self.alias, from_version=self.previous_version, to_version=self.version,
                             action=AliasAction.MOVE, by=None, at=self.moved_at, reason=self.reason,
                             run_id=self.run_id)]


def history_entries(document: AliasDocument | None) -> list[HistoryEntry]:
    return document.entries() if document is not None else []


# ---------------------------------------------------------------- claims and results

class Claim(Record):
    """claim.json: who reserved a version number; a tombstone once `deleted_at` is set."""

    run_id: str | None = None
    sha256: str | None = None
    claimed_at: str | None = None
    deleted_at: str | None = None
    deleted_by: str | None = None

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None


class Registration(Record):
    """What register_model (and promote_model) return: the version and the aliases on it now."""

    name: str
    version: int
    artifact_uri: str
    aliases: list[str] = []


# ---------------------------------------------------------------- stamps

def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def now_precise() -> str:
    """UTC time to the millisecond, so that history entries from one second sort in order."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def actor() -> str:
    """Who moves an alias: $TRANSFERFLOW_USER, else login@hostname."""
    if os.environ.get("TRANSFERFLOW_USER"):
        return os.environ["TRANSFERFLOW_USER"]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
