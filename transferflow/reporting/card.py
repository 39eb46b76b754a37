"""MODEL_CARD.md: what a registered version is for, what it was trained on, how good it is.

It shares its tables and lines with the run report (transferflow.reporting.report), so that both say the
same numbers the same way, and like the report it renders metadata older than those numbers.
"""

from __future__ import annotations

from transferflow.registry.documents import ClassResult, TrainingRecord
from transferflow.reporting.report import (
    PLAIN_MARKS,
    calibration_lines,
    golden_line,
    leakage_line,
    metrics_table,
    per_class_table,
    percent,
    promotion_lines,
)


def model_card(name: str, version: int, metadata: TrainingRecord) -> str:
    """A model card (Mitchell et al. 2019, trimmed to what a retrain run knows) in markdown."""
    params, classes = metadata.parameters, metadata.classes
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
        *_data_section(metadata),
        "",
        *_metrics_section(metadata),
        "",
        *_decisions_section(metadata),
        "",
        *_exports_section(metadata),
        *_limitations(metadata),
        "",
    ]
    return "\n".join(lines)


def _exports_section(metadata: TrainingRecord) -> list[str]:
    """The portable exports registered with the version and how well each matched the Keras model."""
    checked = {name: item for name, item in metadata.exports.items()
               if isinstance(item, dict) and "verification" in item}
    if not checked:
        return []
    lines = ["## Exports", "| format | file | agreement with Keras | max probability difference |",
             "|---|---|---|---|"]
    for name, item in sorted(checked.items()):
        check = item["verification"]
        lines.append(f"| {name} | `{item.get('file')}` | {percent(check.get('agreement'))} | "
                     f"{check.get('max_prob_diff', 0):.1e} |")
    return [*lines, ""]


def _data_section(metadata: TrainingRecord) -> list[str]:
    data = metadata.dataset
    counts = {split: sum(c.values()) for split, c in data.counts.items()}
    origins = data.split_origin if isinstance(data.split_origin, dict) else {}
    lines = [
        "## Data",
        f"- source: `{data.source}` (fingerprint `{data.fingerprint[:16]}`)",
        f"- images: {', '.join(f'{split} {n}' for split, n in counts.items())}; "
        + ", ".join(f"{split} {origin}" for split, origin in sorted(origins.items())),
        f"- preprocessing: {metadata.preprocessing.get('resize')}; {metadata.preprocessing.get('in_model')}",
    ]
    leakage = leakage_line(data.leakage)
    return lines + ([leakage] if leakage else [])


def _metrics_section(metadata: TrainingRecord) -> list[str]:
    metrics = metadata.metrics
    lines = ["## Metrics", *metrics_table(metrics.test, metrics.golden)]
    if metrics.test is not None:  # validation rows join the table, blank in the golden column
        pad = " |" if metrics.golden is not None else ""
        lines += [f"| {label} val accuracy | {percent(phase.val_accuracy)} |{pad}"
                  for label, phase in (("head", metrics.head), ("fine-tuned", metrics.fine_tune)) if phase]
    lines += calibration_lines(metrics.calibration)
    golden = golden_line(metrics.golden)
    if golden:
        lines.append(golden)
    if metrics.test is not None:
        lines += ["", "### Per class (test)", *per_class_table(metrics.test)]
    return lines


def _decisions_section(metadata: TrainingRecord) -> list[str]:
    gate = metadata.gate
    lines = ["## Decisions"]
    if gate.fine_tune:
        lines.append(f"- fine-tune gate: {gate.fine_tune.reason}")
    if gate.keep_fine_tuned:
        lines.append(f"- keep fine-tuned: {gate.keep_fine_tuned.reason}")
    return lines + promotion_lines(metadata.promotion, PLAIN_MARKS)


def _limitations(metadata: TrainingRecord) -> list[str]:
    test, leakage = metadata.metrics.test, metadata.dataset.leakage or {}
    images = test.images if test is not None else 0
    lines = ["## Limitations",
             f"- Evaluated on {images} held-out images from the same source as the training data; "
             "accuracy on other data (other cameras, lighting, populations) is unknown.",
             _weakest_class(test.per_class if test is not None else {})]
    if leakage.get("exact", 0) + leakage.get("near", 0) > 0:
        lines.append(f"- {percent(leakage.get('share'))} of the test images duplicate training images: the "
                     "test scores above are likely optimistic.")
    lines.append("- Inputs must be RGB pixel values 0-255 resized as above; the model applies its own "
                 "normalisation.")
    return lines


def _weakest_class(per_class: dict[str, ClassResult]) -> str:
    scored = [(row.accuracy, cls) for cls, row in per_class.items() if row.accuracy is not None]
    if not scored:
        return "- No per-class results."
    accuracy, cls = min(scored)
    return f"- Weakest class on test: {cls} ({percent(accuracy)})."
