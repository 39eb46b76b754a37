"""What users do with registered versions: promote, look back, roll back, delete, pull, compare.

Tiny fake artifacts: the registry never looks inside them, so no TensorFlow here."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.test_cli import run_cli
from tests.integration.test_registry import stage
from transferflow import storage
from transferflow.errors import RegistryError, StorageError
from transferflow.registry import MODELS, Registry, verified_download
from transferflow.registry import maintenance as registry_module

CLASSES = ("circle", "square")


def metadata(i: int) -> dict:
    return {
        "parameters": {"head_epochs": 2 + i, "learning_rate": 0.001,
                       "augment": {"flip": True, "zoom": i / 4}},
        "metrics": {
            "test": {"accuracy": 0.75 + i / 8, "images": 20,
                     "per_class": {c: {"accuracy": 0.5 + i / 4, "support": 10} for c in CLASSES}},
            "head": {"val_accuracy": 0.5 + i / 8, "epochs_run": 2},
            "fine_tune": None,
        },
    }


def publish(bucket: str, name: str, count: int) -> Registry:
    """Register versions 1..count of `name`; `latest` ends on the last."""
    registry = Registry()
    for i in range(count):
        uri, sha, size = stage(bucket, f"runs/{name}-{i}/m.keras", f"{name} model {i}".encode())
        registry.register(name, uri, sha, size, metadata(i), f"run-{name}-{i}")
    return registry


def artifact_key(name: str, version: int) -> str:
    return f"{MODELS}/{name}/versions/{version:06d}/model.keras"


def test_promote_moves_any_alias_and_history_records_each_move(bucket, monkeypatch):
    monkeypatch.setenv("TRANSFERFLOW_USER", "alice")
    registry = publish(bucket, "demo", 3)
    first = registry.promote("demo", 2, "production", "passed review", expected_current=None)
    second = registry.promote("demo", 3, "production", "better on night photos", expected_current=2)
    assert registry.resolve("demo@production") == ("demo", 3)
    assert registry.promote("demo", 3, "production", "again") is None  # already there: no entry

    history = registry.history("demo", "production")
    assert history == [first, second]
    assert [(e["from_version"], e["to_version"], e["action"]) for e in history] == [
        (None, 2, "promote"), (2, 3, "promote")]
    assert set(first) == {"alias", "from_version", "to_version", "action", "by", "at", "reason", "run_id"}
    assert (second["by"], second["reason"], second["run_id"]) == ("alice", "better on night photos", None)
    assert second["at"].endswith("+00:00")

    everything = registry.history("demo")
    assert [(e["alias"], e["to_version"]) for e in everything] == [
        ("latest", 1), ("latest", 2), ("latest", 3), ("production", 2), ("production", 3)]
    assert all(e["action"] == "register" and e["run_id"] for e in everything[:3])

    registry.promote("demo", 1, "latest", "explicit promote may move latest back")
    assert registry.resolve("demo") == ("demo", 1)


def test_promote_refuses_missing_versions_bad_aliases_and_stale_expectations(bucket):
    registry = publish(bucket, "strict", 2)
    with pytest.raises(RegistryError, match="strict:9 is not a registered version"):
        registry.promote("strict", 9, "production", "typo")
    with pytest.raises(RegistryError, match="alias 'Prod!' is not valid"):
        registry.promote("strict", 1, "Prod!", "x")
    registry.promote("strict", 1, "staging", "x")
    with pytest.raises(RegistryError, match=r"strict@staging moved concurrently: expected it at version 2, "
                                            r"but it was set to version 1 by .+ and retry"):
        registry.promote("strict", 2, "staging", "x", expected_current=2)
    assert registry.resolve("strict@staging") == ("strict", 1)


@pytest.mark.parametrize("start", [None, 1], ids=["create", "move"])
def test_racing_promotions_of_one_alias_exactly_one_wins(bucket, start):
    registry = publish(bucket, "race", 9)
    if start is not None:
        registry.promote("race", start, "production", "baseline")
    barrier = threading.Barrier(8)

    def promote(version):
        barrier.wait()
        try:
            return Registry().promote("race", version, "production", f"want {version}",
                                      expected_current=start)
        except RegistryError as exc:
            return exc

    with ThreadPoolExecutor(8) as pool:
        outcomes = dict(zip(range(2, 10), pool.map(promote, range(2, 10)), strict=True))
    winners = [v for v, outcome in outcomes.items() if isinstance(outcome, dict)]
    assert len(winners) == 1, outcomes
    winner = winners[0]
    for version, outcome in outcomes.items():
        if version != winner:
            assert f"moved concurrently: expected it {'unset' if start is None else 'at version 1'}" \
                in str(outcome)
            assert f"to version {winner} by" in str(outcome) and "retry" in str(outcome)
    assert registry.resolve("race@production") == ("race", winner)
    assert [e["to_version"] for e in registry.history("race", "production")] == \
        ([] if start is None else [start]) + [winner]


def test_rollback_undoes_moves_one_at_a_time(bucket):
    registry = publish(bucket, "undo", 3)
    for version in (1, 2, 3):
        registry.promote("undo", version, "production", f"ship {version}")
    assert registry.rollback("undo", "production", "3 misclassifies cats")["to_version"] == 2
    assert registry.rollback("undo", "production")["to_version"] == 1
    with pytest.raises(RegistryError, match="undo@production has no earlier version to roll back to"):
        registry.rollback("undo", "production")
    assert registry.resolve("undo@production") == ("undo", 1)

    registry.promote("undo", 3, "production", "fixed after all")
    assert registry.rollback("undo", "production")["to_version"] == 1  # undoes that promote
    assert registry.rollback("undo", "latest")["to_version"] == 2  # latest: registered 1, 2, 3
    history = registry.history("undo", "production")
    assert [(e["action"], e["from_version"], e["to_version"]) for e in history] == [
        ("promote", None, 1), ("promote", 1, 2), ("promote", 2, 3), ("rollback", 3, 2),
        ("rollback", 2, 1), ("promote", 1, 3), ("rollback", 3, 1)]
    with pytest.raises(RegistryError, match="undo@staging does not exist; nothing to roll back"):
        registry.rollback("undo", "staging")


def test_rollback_of_an_alias_written_before_history_existed(bucket):
    registry = publish(bucket, "old", 2)
    legacy = {"alias": "production", "version": 2, "previous_version": 1,
              "moved_at": "2026-01-01T00:00:00+00:00", "reason": "pin", "run_id": None}
    storage.put_json(bucket, f"{MODELS}/old/aliases/production.json", legacy)
    assert [e["to_version"] for e in registry.history("old", "production")] == [2]
    assert registry.rollback("old", "production")["to_version"] == 1
    assert len(registry.history("old", "production")) == 2


def test_delete_is_refused_while_aliased_and_never_reuses_the_number(bucket):
    registry = publish(bucket, "del", 3)
    registry.promote("del", 2, "production", "ship")
    with pytest.raises(RegistryError, match="del:2 is in use by alias production"):
        registry.delete("del", 2)
    with pytest.raises(RegistryError, match="del:3 is in use by alias latest"):
        registry.delete("del", 3)

    registry.promote("del", 2, "latest", "3 was bad")
    planned = registry.delete("del", 3, dry_run=True)
    assert planned == [f"{MODELS}/del/versions/000003/metadata.json", artifact_key("del", 3)]
    assert registry.versions("del") == [1, 2, 3]
    assert registry.delete("del", 3) == planned
    assert registry.versions("del") == [1, 2]
    assert storage.head(bucket, artifact_key("del", 3)) is None
    with pytest.raises(RegistryError, match="del:3 does not exist"):
        registry.resolve("del:3")
    with pytest.raises(RegistryError, match="del:3 does not exist"):
        registry.delete("del", 3)

    uri, sha, size = stage(bucket, "runs/new/m.keras", b"a new model")
    assert registry.register("del", uri, sha, size, {}, "run-new").version == 4
    registry.promote("del", 1, "staging", "try")
    registry.promote("del", 2, "staging", "try")
    registry.delete("del", 1)  # only a rollback target: delete allows it (gc would not)
    with pytest.raises(RegistryError, match="cannot roll del@staging back to version 1: that version was"):
        registry.rollback("del", "staging")


def test_an_interrupted_delete_hides_the_version_and_gc_finishes_it(bucket, monkeypatch):
    registry = publish(bucket, "half", 2)

    def lose_connection(bucket_name, key):
        if key.endswith("model.keras"):
            raise StorageError("connection lost")
        return delete_key(bucket_name, key)

    delete_key = registry_module._delete_key
    monkeypatch.setattr(registry_module, "_delete_key", lose_connection)
    with pytest.raises(StorageError, match="connection lost"):
        registry.delete("half", 1)
    monkeypatch.setattr(registry_module, "_delete_key", delete_key)
    assert registry.versions("half") == [2]
    assert storage.head(bucket, artifact_key("half", 1)) is not None
    assert registry.gc("half", keep=5) == []
    assert storage.head(bucket, artifact_key("half", 1)) is None
    assert registry.versions("half") == [2]


def test_gc_keeps_the_newest_and_every_aliased_or_rollback_version(bucket):
    registry = publish(bucket, "gc", 6)
    registry.promote("gc", 2, "production", "ship")
    assert registry.gc("gc", keep=2, dry_run=True) == [1, 3, 4]
    assert registry.versions("gc") == [1, 2, 3, 4, 5, 6]
    assert registry.gc("gc", keep=2) == [1, 3, 4]
    assert registry.versions("gc") == [2, 5, 6]

    registry.promote("gc", 5, "staging", "try")
    registry.promote("gc", 6, "staging", "try newer")  # staging would roll back to 5
    assert registry.gc("gc", keep=0) == []
    registry.promote("gc", 6, "production", "ship newer")  # production would roll back to 2
    assert registry.gc("gc", keep=0) == []
    registry.rollback("gc", "staging")
    registry.promote("gc", 5, "production", "x")
    assert registry.gc("gc", keep=0) == [2]  # no alias points at 2 or would roll back to it
    with pytest.raises(RegistryError, match="--keep must be 0 or more"):
        registry.gc("gc", keep=-1)


def test_pull_verifies_the_artifact_and_leaves_nothing_when_it_was_altered(bucket, tmp_path):
    registry = publish(bucket, "pull", 2)
    path = registry.pull("pull@latest", tmp_path / "ok")
    assert path == tmp_path / "ok" / "pull-v2.keras" and path.read_bytes() == b"pull model 1"
    assert registry.pull("pull:2", tmp_path / "ok") == path  # a verified copy is reused

    recorded = registry.metadata("pull", 2)["artifact"]["sha256"]
    storage.client().put_object(Bucket=bucket, Key=artifact_key("pull", 2), Body=b"pull model X")
    altered = rf"integrity check failed for pull:2 .*expected sha256 {recorded}, got [0-9a-f]{{64}}: " \
        "the stored artifact was altered"
    with pytest.raises(RegistryError, match=altered):
        registry.pull("pull:2", tmp_path / "bad")
    assert list((tmp_path / "bad").iterdir()) == []
    storage.client().put_object(Bucket=bucket, Key=artifact_key("pull", 1), Body=b"short")
    with pytest.raises(RegistryError, match="expected 12 bytes, got 5"):
        registry.pull("pull:1", tmp_path / "bad")
    assert list((tmp_path / "bad").iterdir()) == []


def test_verified_download_takes_references_and_registry_uris(bucket):
    publish(bucket, "vd", 1)
    path = verified_download("vd@latest")
    assert path.read_bytes() == b"vd model 0"
    assert verified_download(f"s3://{bucket}/{artifact_key('vd', 1)}") == path
    with pytest.raises(RegistryError, match="is not a registered model artifact"):
        verified_download(f"s3://{bucket}/runs/vd-0/m.keras")


def test_diff_shows_differing_parameters_and_the_headline_metrics(bucket):
    registry = publish(bucket, "cmp", 2)
    diff = registry.diff("cmp:1", "cmp@latest")
    assert (diff["a"], diff["b"]) == ("cmp:1", "cmp:2")
    assert diff["parameters"] == {"augment.zoom": [0.0, 0.25], "head_epochs": [2, 3]}
    assert list(diff["metrics"]) == ["test.accuracy", "head.val_accuracy", "fine_tune.val_accuracy",
                                     "test.per_class.circle.accuracy", "test.per_class.square.accuracy"]
    assert diff["metrics"]["test.accuracy"] == [0.75, 0.875]
    assert diff["metrics"]["head.val_accuracy"] == [0.5, 0.625]
    assert diff["metrics"]["fine_tune.val_accuracy"] == [None, None]
    assert diff["metrics"]["test.per_class.square.accuracy"] == [0.5, 0.75]
    assert registry.diff("cmp:2", "cmp:2")["parameters"] == {}


def test_cli_promote_history_rollback_diff_pull(bucket, tmp_path):
    publish(bucket, "cli", 3)
    env = {"TRANSFERFLOW_USER": "ci-bot"}
    promoted = run_cli("models", "promote", "cli:1", "--alias", "production", "--reason", "first ship",
                       env=env)
    assert promoted.returncode == 0, promoted.stderr
    assert "cli@production: - -> 1  (promote by ci-bot)" in promoted.stdout
    moved = run_cli("models", "promote", "cli@latest", "--alias", "production", "--expect", "1")
    assert moved.returncode == 0, moved.stderr
    stale = run_cli("models", "promote", "cli:1", "--alias", "production", "--expect", "1")
    assert stale.returncode == 1
    assert stale.stderr.startswith("error: cli@production moved concurrently: expected it at version 1")

    history = run_cli("models", "history", "cli", "--alias", "production")
    assert history.returncode == 0, history.stderr
    lines = history.stdout.splitlines()
    assert lines[0].split() == ["AT", "ALIAS", "FROM", "TO", "ACTION", "BY", "REASON"]
    assert lines[1].split()[1:] == ["production", "-", "1", "promote", "ci-bot", "first", "ship"]
    assert len(json.loads(run_cli("models", "history", "cli", "--json").stdout)) == 5

    rolled = run_cli("models", "rollback", "cli", "--alias", "production", env=env)
    assert rolled.returncode == 0, rolled.stderr
    assert "cli@production: 3 -> 1  (rollback by ci-bot)" in rolled.stdout
    again = run_cli("models", "rollback", "cli", "--alias", "production")
    assert again.returncode == 1 and "no earlier version to roll back to" in again.stderr

    diff = run_cli("models", "diff", "cli:1", "cli:2")
    assert diff.returncode == 0, diff.stderr
    rows = [line.split() for line in diff.stdout.splitlines()]
    assert ["head_epochs", "2", "3"] in rows
    assert ["test.accuracy", "0.7500", "0.8750", "+0.1250"] in rows
    assert json.loads(run_cli("models", "diff", "cli:1", "cli:2", "--json").stdout)["b"] == "cli:2"

    pulled = run_cli("models", "pull", "cli@production", str(tmp_path / "out"))
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "out" / "cli-v1.keras").read_bytes() == b"cli model 0"

    refused = run_cli("models", "delete", "cli:1", "--yes")
    assert refused.returncode == 1 and "cli:1 is in use by alias production" in refused.stderr
    unconfirmed = run_cli("models", "delete", "cli:2")
    assert unconfirmed.returncode == 1 and "rerun with --yes" in unconfirmed.stderr
    assert "would delete  models/cli/versions/000002/metadata.json" in unconfirmed.stdout
    assert run_cli("models", "delete", "cli:2", "--yes").returncode == 0
    assert [d["version"] for d in json.loads(run_cli("models", "list", "--json").stdout)] == [1, 3]
    assert run_cli("models", "gc", "cli", "--keep", "0", "--dry-run").stdout.startswith("nothing to delete")
