"""Warm start (--init-from) against a real registry in SeaweedFS: the weights it copies, and the
cases it refuses before any training, each naming the input and the fix. No training here: the
flow-level warm run is in test_retraining.py."""

import numpy as np
import pytest

from transferflow import storage
from transferflow.config import RetrainConfig
from transferflow.errors import ConfigError, RegistryError
from transferflow.registry import Registry
from transferflow.training.warmstart import check_init_classes, resolve_init_from, warm_start

CLASSES = ["cat", "dog", "fox"]


def classifier(classes: int = 3, seed: int = 0):
    import keras

    from transferflow.training.backbones import construct, get_spec
    from transferflow.training.model import build_classifier

    keras.utils.set_random_seed(seed)
    spec = get_spec("vgg16")
    return build_classifier(construct(spec, 32, None), spec, classes, dropout=0.2)


def register(bucket, name: str, model=None) -> None:
    """NAME:1 in production: VGG16 on CLASSES at 32 px; a real model's bytes only when one is given
    (the refusals read the metadata alone)."""
    from transferflow.training.model import save_to

    uri = f"s3://{bucket}/staging/{name}.keras"
    if model is not None:
        sha, size = save_to(model, uri)
    else:
        storage.put_bytes(bucket, f"staging/{name}.keras", b"not read", "application/octet-stream")
        sha, size = storage.object_sha256(bucket, f"staging/{name}.keras")
    metadata = {"classes": CLASSES, "image_size": 32, "parameters": {"backbone": "vgg16"}}
    version = Registry().register(name, uri, sha, size, metadata, f"run-{name}").version
    Registry().promote(name, version, "production", reason="test")


@pytest.fixture
def registered(bucket):
    register(bucket, "zoo")


def test_warm_start_copies_the_backbone_and_the_head_column_by_class_name(bucket):
    registered = classifier(seed=1)
    register(bucket, "zoo", registered)
    fresh = classifier(seed=2)
    warm_start(fresh, "zoo:1", ["fox", "cat", "dog"])  # the dataset lists the classes in another order
    for layer in ("backbone", "standardize"):
        for got, want in zip(fresh.get_layer(layer).get_weights(), registered.get_layer(layer).get_weights(),
                             strict=True):
            np.testing.assert_array_equal(got, want)
    kernel, bias = registered.get_layer("classifier").get_weights()
    got_kernel, got_bias = fresh.get_layer("classifier").get_weights()
    np.testing.assert_array_equal(got_kernel, kernel[:, [2, 0, 1]])
    np.testing.assert_array_equal(got_bias, bias[[2, 0, 1]])


def test_the_reference_is_pinned_to_the_version_the_alias_names(registered):
    config = RetrainConfig(dataset="cifar10", weights="none", init_from="zoo@production", image_size=32)
    assert resolve_init_from(config).init_from == "zoo:1"


@pytest.mark.parametrize("changes, message", [
    ({"init_from": "nobody@production"}, "nobody@production does not exist"),
    ({"backbone": "resnet50"}, "was trained on backbone 'vgg16', not 'resnet50': warm start needs the same"),
    ({"image_size": 64}, "was trained at 32 px, not 64: pass --image-size 32"),
    ({"engine": "ray"}, "warm start runs with engine local only"),
])
def test_what_cannot_warm_start_is_refused_before_any_download(registered, changes, message):
    settings = {"dataset": "cifar10", "weights": "none", "init_from": "zoo@production"}
    config = RetrainConfig(**{**settings, **changes})
    with pytest.raises((ConfigError, RegistryError), match=message):
        resolve_init_from(config)


def test_another_class_set_is_refused_before_training(registered):
    config = RetrainConfig(dataset="cifar10", weights="none", init_from="zoo:1")
    with pytest.raises(ConfigError, match=r"added \['wolf'\], removed \['fox'\]\): a warm start needs"):
        check_init_classes(config, ["cat", "dog", "wolf"], 32)
    with pytest.raises(ConfigError, match="image_size auto chose 64 px: pass --image-size 32"):
        check_init_classes(config, CLASSES, 64)
    check_init_classes(config, ["fox", "dog", "cat"], 32)  # the same set in another order is fine


def test_a_malformed_reference_is_refused_by_the_config():
    with pytest.raises(ValueError, match="init_from"):
        RetrainConfig(init_from="Zoo production")
