"""The cheap check behind if_changed, against real SeaweedFS: what counts as a change (the
dataset's listing, the effective configuration, the weights file) and what does not."""

import pytest

from tests.conftest import upload_folder
from transferflow import storage
from transferflow.config import RetrainConfig
from transferflow.registry import Registry
from transferflow.retraining.changes import change_signature, check_changes


def register(name: str, config: RetrainConfig, alias: str | None = None) -> int:
    """A version whose metadata records the change signature of `config`, as the flow records it."""
    bucket = storage.bucket_name()
    storage.put_bytes(bucket, f"staging/{name}.keras", b"model bytes", "application/octet-stream")
    sha, size = storage.object_sha256(bucket, f"staging/{name}.keras")
    metadata = {"change_check": change_signature(config).model_dump(), "classes": ["a", "b"]}
    version = Registry().register(name, f"s3://{bucket}/staging/{name}.keras", sha, size, metadata,
                                  f"run-{name}-{len(Registry().versions(name))}").version
    if alias:
        Registry().promote(name, version, alias, reason="test")
    return version


@pytest.fixture
def photos(bucket, sample_dataset):
    return upload_folder(sample_dataset, bucket, "sources/photos")


def test_unchanged_data_and_configuration_skip_and_force_trains(photos):
    config = RetrainConfig(dataset=photos, weights="none", model_name="same", if_changed=True)
    register("same", config, alias="production")
    check = check_changes(config)
    assert check.skip and "those of same:1 (production)" in check.reason
    assert not check_changes(config.model_copy(update={"force": True})).skip
    assert not check_changes(config.model_copy(update={"if_changed": False})).skip  # manual runs train
    # Fields that only say where or how long a run executes are not changes.
    assert check_changes(config.model_copy(update={"train_on": "local", "training_timeout_minutes": 5})).skip


def test_a_new_object_or_a_changed_setting_trains(bucket, photos, sample_dataset):
    config = RetrainConfig(dataset=photos, weights="none", model_name="moved", if_changed=True)
    register("moved", config, alias="production")
    assert not check_changes(config.model_copy(update={"head_epochs": 7})).skip
    storage.upload_file(next(sample_dataset.rglob("*.png")), bucket, "sources/photos/class_0/new.png")
    check = check_changes(config)
    assert not check.skip and "changed since moved's production and latest" in check.reason


def test_latest_counts_when_it_was_trained_on_the_same_data(photos):
    """latest (not promoted) already tried this data and configuration: no point training it again."""
    old = RetrainConfig(dataset=photos, weights="none", model_name="tried", if_changed=True, head_epochs=3)
    register("tried", old, alias="production")
    current = old.model_copy(update={"head_epochs": 4})
    register("tried", current)  # v2: latest, refused by the gate
    check = check_changes(current)
    assert check.skip and "those of tried:2 (latest)" in check.reason


def test_a_replaced_weights_file_is_a_change(bucket, photos, random_weights):
    storage.upload_file(random_weights, bucket, "weights/w.weights.h5")
    config = RetrainConfig(dataset=photos, weights=f"s3://{bucket}/weights/w.weights.h5", model_name="w",
                           if_changed=True)
    register("w", config, alias="production")
    assert check_changes(config).skip
    storage.put_bytes(bucket, "weights/w.weights.h5", b"other weights", "application/octet-stream")
    assert not check_changes(config).skip


def test_a_local_folder_is_compared_by_paths_sizes_and_mtimes(bucket, sample_dataset, tmp_path):
    import shutil

    root = tmp_path / "local"
    shutil.copytree(sample_dataset, root)
    config = RetrainConfig(dataset=str(root), weights="none", model_name="local", if_changed=True)
    register("local", config, alias="production")
    assert check_changes(config).skip
    (root / "class_1" / "renamed.png").write_bytes((root / "class_1").joinpath(
        sorted(p.name for p in (root / "class_1").iterdir())[0]).read_bytes())
    assert not check_changes(config).skip


def test_newly_labelled_extra_data_is_a_change(bucket, photos, sample_dataset):
    extra = upload_folder(sample_dataset / "class_0", bucket, "feedback/x/labeled/class_0")
    config = RetrainConfig(dataset=photos, weights="none", model_name="fb", if_changed=True,
                           extra_data=extra.rsplit("class_0/", 1)[0])
    register("fb", config, alias="production")
    assert check_changes(config).skip
    storage.put_bytes(bucket, "feedback/x/labeled/class_0/new.png", b"a new label", "image/png")
    assert not check_changes(config).skip


def test_an_unpinned_url_is_compared_by_what_a_head_request_says(tmp_path):
    import http.server
    import threading
    from functools import partial

    from transferflow.retraining.changes import dataset_signature

    (tmp_path / "photos.tar.gz").write_bytes(b"first upload")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/photos.tar.gz"
    try:
        first = dataset_signature(url)
        assert first is not None and first == dataset_signature(url)
        (tmp_path / "photos.tar.gz").write_bytes(b"a larger second upload")
        assert dataset_signature(url) != first
        assert dataset_signature(url, ask_origin=False) is None  # only if_changed asks the origin
        assert dataset_signature(f"{url}#sha256={'ab' * 32}").endswith(f"#sha256={'ab' * 32}")  # pinned
    finally:
        server.shutdown()
