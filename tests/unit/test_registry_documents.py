"""The registry's typed documents and its pure functions: old documents still read, the layout's
keys, the alias history as an undo stack, and the diff's flattening."""

import json
from pathlib import Path

from transferflow.registry import (
    SCHEMA_VERSION,
    AliasDocument,
    Claim,
    HistoryEntry,
    ModelVersion,
    Registration,
    VersionMetadata,
    flatten,
    headline_metrics,
    version_stack,
)
from transferflow.registry.layout import alias_key, alias_of_key, version_of_key
from transferflow.reporting.card import model_card
from transferflow.reporting.report import run_report

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def old_metadata() -> dict:
    """metadata.json as registered by 4efa04d (before schema_version)."""
    return json.loads((FIXTURES / "metadata_4efa04d.json").read_text())


def test_metadata_written_by_4efa04d_reads_through_the_typed_model():
    meta = VersionMetadata.model_validate(old_metadata())
    assert meta.schema_version == 0  # written before the field existed
    assert meta.test_accuracy == 1 / 3 and meta.metrics.test.images == 3
    assert meta.metrics.test.per_class["class_2"].support == 1
    assert meta.metrics.test.per_class["class_2"].accuracy == 1.0
    assert meta.metrics.head.val_accuracy == 0.3333333432674408 and meta.metrics.fine_tune.epochs_run == 1
    assert meta.gate.fine_tune.reason.startswith("head val_accuracy") and meta.gate.final_phase == "fine_tune"
    assert meta.dataset.fingerprint.startswith("72ae8ad9") and len(meta.dataset.fingerprint) == 64
    assert meta.dataset.split_origin == {"test": "carved", "val": "carved"}
    assert meta.dataset.counts["train"] == {"class_0": 8, "class_1": 8, "class_2": 8}
    assert meta.classes == ["class_0", "class_1", "class_2"]
    assert meta.artifact.size == 115609875 and meta.artifact.uri.endswith("/000001/model.keras")
    assert meta.lineage.flow_run_id and meta.promotion.reason.endswith("moving production to it")
    assert meta.document() == old_metadata()  # nothing lost, nothing added


def test_the_report_and_card_render_old_metadata():
    meta = VersionMetadata.model_validate(old_metadata())
    registered = Registration(name="shapes-vgg16", version=1, artifact_uri=meta.artifact.uri,
                              aliases=["latest"])
    report = run_report(meta, registered)
    assert "**33.3%** on 3 images" in report and "| fine_tune | 1 | 33.3% | 5.95 |" in report
    card = model_card("shapes-vgg16", 1, meta)
    assert "Weakest class on test: class_0 (0.0%)" in card
    assert "; test carved, val carved" in card


def test_unknown_keys_survive_a_round_trip():
    document = {"schema_version": SCHEMA_VERSION, "metrics": {"test": {"accuracy": 0.5, "new_metric": 3}},
                "something_new": {"a": 1}}
    assert VersionMetadata.model_validate(document).document() == document


def test_an_alias_document_from_before_history_gives_its_last_move():
    legacy = AliasDocument.model_validate({"alias": "production", "version": 2, "previous_version": 1,
                                           "moved_at": "2026-01-01T00:00:00+00:00", "reason": "pin",
                                           "run_id": None})
    (entry,) = legacy.entries()
    assert (entry.from_version, entry.to_version, entry.action, entry.by) == (1, 2, "move", None)
    assert set(entry.document()) == {"alias", "from_version", "to_version", "action", "by", "at", "reason",
                                     "run_id"}


def test_an_alias_document_written_by_4efa04d_reads_through_the_typed_model():
    document = json.loads((FIXTURES / "alias_4efa04d.json").read_text())  # production, as promoted
    alias = AliasDocument.model_validate(document)
    assert (alias.alias, alias.version, alias.previous_version, alias.run_id) == ("production", 1, None, None)
    (entry,) = alias.entries()
    assert (entry.from_version, entry.to_version, entry.action) == (None, 1, "promote")
    assert entry.by == alias.moved_by and entry.at == alias.moved_at and entry.reason == alias.reason
    assert version_stack(alias.entries()) == [1]
    assert alias.document() == document  # nothing lost, nothing added


def test_version_stack_pops_on_rollback():
    def move(a, b, action="promote"):
        return HistoryEntry(alias="p", from_version=a, to_version=b, action=action)

    assert version_stack([move(None, 1), move(1, 2), move(2, 3)]) == [1, 2, 3]
    assert version_stack([move(None, 1), move(1, 2), move(2, 1, "rollback")]) == [1]
    assert version_stack([move(4, 5)]) == [4, 5]  # history that starts mid-way


def test_a_claim_with_deleted_at_is_a_tombstone():
    assert not Claim(run_id="r", sha256="s", claimed_at="t").deleted
    assert Claim.model_validate({"deleted_at": "t", "deleted_by": "me"}).deleted


def test_every_key_of_the_layout():
    version = ModelVersion("m", 3, "b")
    assert version.artifact_key == "models/m/versions/000003/model.keras"
    assert version.metadata_key == "models/m/versions/000003/metadata.json"
    assert version.claim_key == "models/m/versions/000003/claim.json"
    assert version.key("savedmodel/saved_model.pb") == "models/m/versions/000003/savedmodel/saved_model.pb"
    assert version.artifact_uri == "s3://b/models/m/versions/000003/model.keras"
    assert alias_key("m", "production") == "models/m/aliases/production.json"
    assert alias_of_key("m", alias_key("m", "production")) == "production"
    assert version_of_key("m", version.metadata_key) == "000003"


def test_flatten_and_headline_metrics():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": 1, "a.c": [1, 2], "d": {}}
    headline = headline_metrics(old_metadata()["metrics"])
    assert headline["test.accuracy"] == 1 / 3 and headline["fine_tune.val_accuracy"] == 0.3333333432674408
    assert headline["test.per_class.class_2.accuracy"] == 1.0
