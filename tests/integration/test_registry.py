"""The registry's promises: unique versions under concurrency, `latest` on the highest,
nothing half-written visible."""

import hashlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from transferflow import storage
from transferflow.errors import RegistryError
from transferflow.registry import Registry


def stage(bucket: str, key: str, payload: bytes) -> tuple[str, str, int]:
    storage.client().put_object(Bucket=bucket, Key=key, Body=payload)
    return f"s3://{bucket}/{key}", hashlib.sha256(payload).hexdigest(), len(payload)


def test_register_publishes_verified_version_and_moves_latest(bucket):
    uri, sha, size = stage(bucket, "runs/r1/head.keras", b"model-bytes")
    version = Registry().register("demo", uri, sha, size, {"metrics": {"test": {"accuracy": 0.9}}}, "r1")
    registry = Registry()
    assert version.version == 1
    assert registry.versions("demo") == [1]
    assert registry.aliases("demo") == {"latest": 1}
    meta = registry.metadata("demo", 1)
    assert meta["artifact"] == {"uri": version.artifact_uri, "format": "keras", "size": size, "sha256": sha}
    assert meta["library_versions"]["boto3"]
    assert storage.object_sha256(bucket, f"{version.prefix}/model.keras") == (sha, size)


def test_concurrent_registrations_get_distinct_versions(bucket):
    staged = [stage(bucket, f"runs/r{i}/m.keras", f"model {i}".encode()) for i in range(8)]

    def register(i):
        uri, sha, size = staged[i]
        return Registry().register("race", uri, sha, size, {"i": i}, f"run-{i}").version

    with ThreadPoolExecutor(8) as pool:
        versions = list(pool.map(register, range(8)))
    assert sorted(versions) == list(range(1, 9))
    registry = Registry()
    assert registry.versions("race") == list(range(1, 9))
    assert registry.alias("race", "latest")["version"] == 8
    for i, version in enumerate(versions):  # each version holds its own run's bytes
        assert registry.metadata("race", version)["i"] == i
    moves = registry.history("race", "latest")  # forward only, and no lost entry: each starts where
    assert moves[-1]["to_version"] == 8  # the one before it ended
    assert [m["from_version"] for m in moves] == [None] + [m["to_version"] for m in moves[:-1]]
    assert all(m["from_version"] is None or m["from_version"] < m["to_version"] for m in moves)


def test_retry_of_the_same_run_reuses_its_version(bucket):
    uri, sha, size = stage(bucket, "runs/r/m.keras", b"abc")
    first = Registry().register("retry", uri, sha, size, {}, "same-run")
    again = Registry().register("retry", uri, sha, size, {}, "same-run")
    assert first.version == again.version == 1
    assert Registry().versions("retry") == [1]


def test_failed_verification_leaves_nothing_visible(bucket):
    uri, sha, size = stage(bucket, "runs/r/m.keras", b"the real bytes")
    good = Registry().register("safe", uri, sha, size, {}, "good-run")
    with pytest.raises(RegistryError, match="failed verification"):
        Registry().register("safe", uri, "0" * 64, size, {}, "bad-run")
    registry = Registry()
    assert registry.versions("safe") == [good.version]
    assert registry.alias("safe", "latest")["version"] == good.version
    with pytest.raises(RegistryError, match="does not exist"):
        registry.resolve("safe:2")


def test_latest_never_moves_backwards(bucket):
    uri, sha, size = stage(bucket, "runs/r/m.keras", b"abc")
    registry = Registry()
    registry.register("fwd", uri, sha, size, {}, "a")
    registry.register("fwd", uri, sha, size, {}, "b")
    assert not registry.move_alias("fwd", "latest", 1, reason="late writer", only_forward=True)
    assert registry.alias("fwd", "latest")["version"] == 2
    assert registry.move_alias("fwd", "production", 1, reason="pin")
    assert registry.resolve("fwd@production") == ("fwd", 1)
    assert registry.resolve("fwd") == ("fwd", 2)


def test_alias_on_missing_version_is_refused(bucket):
    with pytest.raises(RegistryError, match="not a registered version"):
        Registry().move_alias("ghost", "production", 3, reason="x")


def test_rerun_of_a_run_with_new_bytes_gets_a_new_version(bucket):
    first = stage(bucket, "runs/r/a.keras", b"first attempt")
    second = stage(bucket, "runs/r/b.keras", b"second attempt, retrained")
    v1 = Registry().register("rerun", *first, {}, "same-flow-run")
    v2 = Registry().register("rerun", *second, {}, "same-flow-run")
    assert (v1.version, v2.version) == (1, 2)
    assert Registry().metadata("rerun", 2)["artifact"]["sha256"] == second[1]
