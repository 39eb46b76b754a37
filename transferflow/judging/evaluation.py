"""Scoring models on prepared datasets: a run's test split, a model's golden set, or every image
of any dataset (`transferflow models evaluate`). The flow's evaluate stage, the promotion gate's
scoring of production, the evaluate/on-registration automation and the CLI all score here.

A model answers in the order of its own classes; a dataset's labels are mapped into that order
by class name, so a dataset may hold a subset of the model's classes, in any order.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from transferflow import storage
from transferflow.data import DatasetRef, PrepareOptions, load_prepared, prepare_dataset
from transferflow.errors import DatasetError, RegistryError
from transferflow.judging.scoring import Scored, predict, scored
from transferflow.registry.golden import GoldenSet

log = logging.getLogger(__name__)

ALL = "all"  # every split of a dataset: a golden set, or a dataset given to `models evaluate`


def label_map(dataset_classes: list[str], model_classes: list[str], source: str) -> np.ndarray:
    """dataset label -> the model's class index; a class the model does not know is an error."""
    unknown = [name for name in dataset_classes if name not in model_classes]
    if unknown:
        raise DatasetError(
            f"dataset {source} has classes {unknown} that the model does not know (it has "
            f"{model_classes}): evaluate on images of the model's classes only"
        )
    return np.array([model_classes.index(name) for name in dataset_classes], np.int64)


def score_model(
    model,
    model_classes: list[str],
    dataset: DatasetRef,
    splits: str = "test",
    batch_size: int = 64,
    described: bool = False,
) -> Scored:
    """The model's answers and metrics on one split of a prepared dataset, or on all of them."""
    prepared = load_prepared(dataset)
    names = [name for name in prepared.splits if splits == ALL or name == splits]
    if not names:
        raise DatasetError(f"dataset {dataset.source} has no {splits} split")
    mapping = label_map(dataset.class_names, model_classes, dataset.source)
    labels, probabilities = [], []
    for name in names:
        y, p = predict(model, prepared.splits[name], batch_size)
        labels.append(mapping[y])
        probabilities.append(p)
    extra = {"dataset": dataset.source, "fingerprint": dataset.fingerprint} if described else {}
    return scored(np.concatenate(labels), np.concatenate(probabilities), model_classes, **extra)


def prepared_at(
    source: str, dataset: DatasetRef, options: PrepareOptions, image_size: int, logger=log
) -> DatasetRef:
    """The same dataset prepared at another size (for a model trained at that size): the same
    splits, since splits are carved from labels and seed alone. `source` is the dataset as the
    user gave it (a presigned URL keeps its token here; DatasetRef.source has it redacted)."""
    if dataset.image_size == image_size:
        return dataset
    resized = prepare_dataset(source, replace(options, image_size=image_size), logger=logger)
    if resized.counts != dataset.counts or not _same_test_images(resized, dataset):
        raise DatasetError(
            f"dataset {dataset.source} prepared at {image_size}px has other splits than at "
            f"{dataset.image_size}px ({resized.counts} vs {dataset.counts}): the two models "
            "cannot be scored on the same images"
        )
    return resized


def _same_test_images(a: DatasetRef, b: DatasetRef) -> bool:
    """The two copies hold the same test images in the same order (by content digest), when both
    recorded them: the comparison set is chosen by position."""
    from transferflow.data import read_membership

    if a.membership is None or b.membership is None:
        return True
    return read_membership(a.membership).digests("test") == read_membership(b.membership).digests("test")


# ---------------------------------------------------------------- golden sets


def golden_options() -> PrepareOptions:
    """A golden set is scored whole, so its split fractions only need to be valid."""
    return PrepareOptions(image_size=32, val_fraction=0.1, test_fraction=0.1, seed=0, max_bad_fraction=0.0)


def store_golden(name: str, dataset: str, logger=log):
    """Copy a dataset's images into object storage once, fingerprint them, and make them the
    model's golden set. Returns the GoldenSet document."""
    from transferflow.data import fingerprint_folder, local_folder, scan_folder
    from transferflow.data.downloads import redact
    from transferflow.registry import Registry
    from transferflow.registry.layout import golden_data_prefix

    if dataset.startswith(("http://", "https://")):
        raise DatasetError(
            f"golden set {redact(dataset)}: give a local folder or archive, or s3://...; "
            "download the archive first"
        )
    scan = scan_folder(local_folder(dataset, logger), label=redact(dataset))
    fingerprint = fingerprint_folder(scan)
    registry = Registry()
    prefix = golden_data_prefix(name, fingerprint)
    files = [path for split in scan.files.values() for path, _ in split]
    root = scan.data_root or scan.root
    if next(iter(storage.list_keys(registry.bucket, prefix + "/")), None) is None:  # stored once
        for path in files:
            storage.upload_file(path, registry.bucket, f"{prefix}/{path.relative_to(root).as_posix()}")
        logger.info("stored %d golden images at s3://%s/%s/", len(files), registry.bucket, prefix)
    golden = GoldenSet(
        name=name,
        source=redact(dataset),
        uri=f"s3://{registry.bucket}/{prefix}/",
        fingerprint=fingerprint,
        classes=scan.class_names,
        images=len(files),
    )
    golden_ref(golden, 32, logger)  # decodable and fingerprint-true before anyone relies on it
    return registry.set_golden(golden)


def check_golden_classes(name: str, dataset: DatasetRef) -> None:
    """Before training: a golden set holding a class this dataset lacks could never be scored."""
    from transferflow.registry import Registry

    golden = Registry().golden(name)
    unknown = [cls for cls in golden.classes if cls not in dataset.class_names] if golden else []
    if unknown:
        raise DatasetError(f"the golden set of {name} ({golden.source}) has classes {unknown} that dataset "
                           f"{dataset.source} does not (it has {dataset.class_names}): set a golden set of "
                           f"these classes (`transferflow models golden {name} --dataset ...`) or clear it "
                           "with --clear")


def golden_ref(golden: GoldenSet, image_size: int, logger=log) -> DatasetRef:
    """The golden set prepared at a model's size, after checking its stored copy is unchanged."""
    ref = prepare_dataset(golden.uri, replace(golden_options(), image_size=image_size), logger=logger)
    if ref.fingerprint != golden.fingerprint:
        raise RegistryError(
            f"golden set of {golden.name} at {golden.uri} no longer matches its fingerprint "
            f"{golden.fingerprint[:12]} (found {ref.fingerprint[:12]}): its stored copy was "
            "changed; set it again with `transferflow models golden`"
        )
    return ref


def score_on_golden(
    model, model_classes: list[str], golden: GoldenSet, image_size: int, batch_size: int = 64, logger=log
) -> Scored:
    return score_model(
        model, model_classes, golden_ref(golden, image_size, logger), ALL, batch_size, described=True
    )


# ---------------------------------------------------------------- registered versions


def evaluate_reference(
    reference: str, dataset: str, split: str = ALL, batch_size: int = 64, logger=log
) -> dict:
    """`models evaluate`: a registered version (bytes verified) scored on any dataset, prepared at
    the version's size with its recorded split settings."""
    from transferflow.registry import Registry
    from transferflow.training import model as modeling

    registry = Registry()
    name, version = registry.resolve(reference)
    meta = registry.record(name, version)
    params = meta.parameters
    options = PrepareOptions(
        meta.image_size,
        params.get("val_fraction", 0.1),
        params.get("test_fraction", 0.1),
        params.get("seed", 42),
        params.get("max_bad_image_fraction", 0.01),
    )
    ref = prepare_dataset(dataset, options, logger=logger)
    result = score_model(
        modeling.load_model(f"{name}:{version}"), meta.classes, ref, split, batch_size, described=True
    )
    return {"reference": f"{name}:{version}", "split": split, "classes": meta.classes, **result.metrics}


def reproduce_evaluation(reference: str, tolerance: float = 0.0, logger=log) -> dict:
    """Download a registered version, check its bytes, and re-measure it on its own test split.

    Fails if the artifact does not match its recorded sha256 or the accuracy moved by more
    than `tolerance`.
    """
    from transferflow.data import ref_for
    from transferflow.registry import Registry
    from transferflow.training import model as modeling

    registry = Registry()
    name, version = registry.resolve(reference)
    meta = registry.record(name, version)
    model = modeling.load_model(f"{name}:{version}")  # RegistryError if the bytes were altered
    result = score_model(model, meta.classes, ref_for(meta.dataset.prepared_uri), "test").metrics
    recorded = meta.test_accuracy
    logger.info(
        "%s:%d test accuracy recorded %.4f, reproduced %.4f (macro-F1 %.4f)",
        name,
        version,
        recorded,
        result["accuracy"],
        result["macro_f1"],
    )
    if abs(result["accuracy"] - recorded) > tolerance:
        raise RegistryError(
            f"{name}:{version} reproduces test accuracy {result['accuracy']:.4f}, "
            f"not the recorded {recorded:.4f}"
        )
    return {
        "reference": f"{name}:{version}",
        "sha256": meta.artifact.sha256,
        "recorded": recorded,
        "reproduced": result["accuracy"],
        "macro_f1": result["macro_f1"],
        "ece": result["ece"],
    }
