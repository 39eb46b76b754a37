"""MODEL_CARD.md: what a registered version is for, what it was trained on, how good it is."""

from __future__ import annotations

from transferflow.registry.documents import ClassResult, TrainingRecord
from transferflow.report import percent


def model_card(name: str, version: int, metadata: TrainingRecord) -> str:
    """A model card (Mitchell et al. 2019, trimmed to what a retrain run knows) in markdown."""
    params, data, metrics = metadata.parameters, metadata.dataset, metadata.metrics
    test, classes = metrics.test, metadata.classes
    counts = {split: sum(c.values()) for split, c in data.counts.items()}
    size, shown = metadata.image_size, ", ".join(classes[:20]) + (" …" if len(classes) > 20 else "")
    lines = [
        f"# Model card: {name} version {version}",
        "",
        "## Intended use",
        f"Classifies {size}x{size} RGB images into {len(classes)} classes: {shown}. "
        "Trained by transferflow by transfer "
        f"learning from {params['backbone']} ({params['weights']} weights). Not for inputs unlike the "
        "training images, and not for decisions about people without further evaluation.",
        "",
        "## Data",
        f"- source: `{data.source}` (fingerprint `{data.fingerprint[:16]}`)",
        f"- images: {', '.join(f'{split} {n}' for split, n in counts.items())}; "
        + ", ".join(f"{split} {origin}" for split, origin in sorted(data.split_origin.items())),
        f"- preprocessing: {metadata.preprocessing['resize']}; {metadata.preprocessing['in_model']}",
        "",
        "## Metrics",
        "| measure | value |",
        "|---|---|",
        f"| test accuracy | {percent(test.accuracy)} on {test.images} images |",
        f"| head val accuracy | {percent(metrics.head.val_accuracy)} |",
    ]
    if metrics.fine_tune is not None:
        lines.append(f"| fine-tuned val accuracy | {percent(metrics.fine_tune.val_accuracy)} |")
    lines += ["", "### Per class (test)", "| class | accuracy | images |", "|---|---|---|"]
    lines += [f"| {cls} | {percent(row.accuracy)} | {row.support} |" for cls, row in test.per_class.items()]
    lines += ["", "## Decisions", f"- fine-tune gate: {metadata.gate.fine_tune.reason}"]
    if metadata.gate.keep_fine_tuned:
        lines.append(f"- keep fine-tuned: {metadata.gate.keep_fine_tuned.reason}")
    if metadata.promotion:
        lines.append(f"- promotion: {metadata.promotion.reason}")
    lines += ["", "## Limitations",
              f"- Evaluated on {test.images} held-out images from the same source as the training data; "
              "accuracy on other data (other cameras, lighting, populations) is unknown.",
              _weakest_class(test.per_class),
              "- Inputs must be RGB pixel values 0-255 resized as above; the model applies its own "
              "normalisation.", ""]
    return "\n".join(lines)


def _weakest_class(per_class: dict[str, ClassResult]) -> str:
    scored = [(row.accuracy, cls) for cls, row in per_class.items() if row.accuracy is not None]
    if not scored:
        return "- No per-class results."
    accuracy, cls = min(scored)
    return f"- Weakest class on test: {cls} ({percent(accuracy)})."
