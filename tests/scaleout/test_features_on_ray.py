"""Backbone features on Ray (engine ray): computed on the session's 2-node cluster over the prepared
shards, stored under the key the local path uses, and reused by a later local run."""

from __future__ import annotations

import pytest

from transferflow.config import RetrainConfig
from transferflow.data import load_prepared, prepare_dataset
from transferflow.pipeline import phases
from transferflow.training import backbones

pytestmark = pytest.mark.slow


def test_features_computed_on_ray_are_the_local_ones_and_a_local_run_reuses_them(
        ray_cluster, bucket, sample_dataset, random_weights):
    import keras
    import numpy as np

    from transferflow.training import model as modeling
    from transferflow.training.compute import compute_scope
    from transferflow.training.fit import extract_features

    on_ray = RetrainConfig(dataset=str(sample_dataset), weights=str(random_weights), image_size=32,
                           batch_size=16, engine="ray", num_workers=2)
    local = on_ray.model_copy(update={"engine": "local"})
    dataset = prepare_dataset(on_ray.dataset, phases.prepare_options(on_ray))  # shards, prepared here
    backbone, data = phases.build_backbone(local, dataset), load_prepared(dataset)
    spec, plan = backbones.get_spec(backbone.name), phases.plan_for(local)
    with compute_scope(plan):
        keras.utils.set_random_seed(on_ray.seed)
        base = backbones.construct(spec, dataset.image_size, backbones.resolve_weights(on_ray.weights))
        classifier = modeling.build_classifier(base, spec, len(dataset.class_names), on_ray.dropout)
        computed, info = phases.head_features(on_ray, dataset, backbone, classifier, data, plan)
        reused, again = phases.head_features(local, dataset, backbone, classifier, data, plan)
        here = extract_features(classifier, {name: data.splits[name] for name in ("train", "val")}, 16)
    assert info["source"] == "computed" and (info["ray"]["nodes"], info["ray"]["workers"]) == (2, 2)
    assert again == {"source": "reused", "uri": info["uri"]}  # the same key: the local run found them
    for split in ("train", "val"):
        np.testing.assert_array_equal(reused[split], computed[split])
        np.testing.assert_allclose(computed[split], here[split], rtol=1e-4, atol=1e-4, err_msg=split)
