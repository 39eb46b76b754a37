"""`models diff`: two versions side by side, as plain data for the CLI to print."""

from __future__ import annotations

HEADLINE_METRICS = ("test.accuracy", "head.val_accuracy", "fine_tune.val_accuracy")


def diff(labelled: list[tuple[str, dict]]) -> dict:
    """The parameters that differ, and the headline metrics, of two (label, metadata document)
    pairs. It reads the stored documents, so that values show exactly as they were written.

    Nested keys are dotted (`augment.flip`); each value is [a, b], None where absent.
    """
    (label_a, meta_a), (label_b, meta_b) = labelled
    pa, pb = (flatten(meta.get("parameters") or {}) for meta in (meta_a, meta_b))
    ma, mb = (headline_metrics(meta.get("metrics") or {}) for meta in (meta_a, meta_b))
    return {
        "a": label_a, "b": label_b,
        "parameters": {k: [pa.get(k), pb.get(k)] for k in sorted(pa.keys() | pb.keys())
                       if pa.get(k) != pb.get(k)},
        "metrics": {k: [ma.get(k), mb.get(k)] for k in sorted(ma.keys() | mb.keys(), key=_metric_order)},
    }


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and other values stay as they are."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def headline_metrics(metrics: dict) -> dict:
    """Test accuracy, per-class test accuracy, and validation accuracy of each phase."""
    flat = flatten(metrics)
    chosen = {key: flat.get(key) for key in HEADLINE_METRICS}
    chosen.update({key: value for key, value in flat.items()
                   if key.startswith("test.per_class.") and key.endswith(".accuracy")})
    return chosen


def _metric_order(key: str) -> tuple[int, str]:
    return (HEADLINE_METRICS.index(key) if key in HEADLINE_METRICS else len(HEADLINE_METRICS), key)
