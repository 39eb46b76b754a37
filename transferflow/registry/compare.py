"""`models diff`: two versions side by side, as plain data for the CLI to print."""

from __future__ import annotations

HEADLINE_METRICS = ("test.accuracy", "head.val_accuracy", "fine_tune.val_accuracy")  # shown even when absent
# Shown when a version has them: metadata written before schema 2 lacks them, and rows of dashes
# on both sides would say nothing. A pattern ending in a dot is a prefix.
NEWER_METRICS = ("test.macro_f1", "test.top_k.", "test.ece", "golden.accuracy", "golden.macro_f1")
PER_CLASS = ("test.per_class.", (".accuracy", ".precision"))  # a class's accuracy is its recall
ROW_ORDER = ("test.accuracy", *NEWER_METRICS, "head.val_accuracy", "fine_tune.val_accuracy",
             "test.per_class.")  # the order rows print in


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
        "promotion": {key: [a, b] for key, a, b in zip(PROMOTION_FACTS, promotion_facts(meta_a),
                                                       promotion_facts(meta_b), strict=True)},
    }


PROMOTION_FACTS = ("production_version", "test.images", "test.excluded", "action")


def promotion_facts(meta: dict) -> tuple:
    """What each version was judged against: production's version, the test images both were
    compared on, how many were excluded (production trained or validated on them), the outcome."""
    promotion = meta.get("promotion") or {}
    test = (promotion.get("comparisons") or {}).get("test") or {}
    return (promotion.get("production_version"), test.get("images"), test.get("excluded"),
            promotion.get("action"))


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
    """Test accuracy, macro-F1, top-k and ECE, golden-set accuracy and macro-F1, validation
    accuracy of each phase, and per-class test accuracy (recall), precision and recall."""
    flat = flatten(metrics)
    chosen = {key: flat.get(key) for key in HEADLINE_METRICS}
    prefix, suffixes = PER_CLASS
    chosen.update({key: value for key, value in flat.items()
                   if any(_matches(key, pattern) for pattern in NEWER_METRICS)
                   or (key.startswith(prefix) and key.endswith(suffixes))})
    return chosen


def _matches(key: str, pattern: str) -> bool:
    """A pattern ending in a dot is a prefix (`test.top_k.` takes every k); any other is the key."""
    return key.startswith(pattern) if pattern.endswith(".") else key == pattern


def _metric_order(key: str) -> tuple[int, str]:
    """Rows in ROW_ORDER; per-class rows grouped by class (accuracy, precision, recall)."""
    rank = next((i for i, pattern in enumerate(ROW_ORDER) if _matches(key, pattern)), len(ROW_ORDER))
    return rank, key
