"""A short markdown report of a retrain run, for the Prefect UI and humans."""

from __future__ import annotations

from transferflow.registry.documents import Registration, TrainingRecord


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def run_report(metadata: TrainingRecord, registered: Registration, curve_url: str | None = None,
               elapsed_s: float | None = None) -> str:
    metrics, gate, params = metadata.metrics, metadata.gate, metadata.parameters
    aliases = ", ".join(f"`{a}`" for a in registered.aliases) or "none"
    lines = [
        f"# {registered.name} version {registered.version}",
        "",
        f"- artifact: `{registered.artifact_uri}` (aliases: {aliases})",
        f"- dataset: `{params['dataset']}` (fingerprint `{metadata.dataset.fingerprint[:12]}`)",
        f"- backbone: {params['backbone']}, weights `{params['weights']}`, {metadata.image_size} px"
        + (" (chosen by image_size auto)" if params["image_size"] == "auto" else ""),
        f"- test accuracy: **{percent(metrics.test.accuracy)}** on {metrics.test.images} images",
        "",
        "| phase | epochs | val accuracy | seconds |",
        "|---|---|---|---|",
    ]
    for phase, m in (("head", metrics.head), ("fine_tune", metrics.fine_tune)):
        if m is not None:
            lines.append(f"| {phase} | {m.epochs_run} | {percent(m.val_accuracy)} | {m.seconds} |")
    if elapsed_s is not None:
        lines.append(f"| whole run | | | {elapsed_s:.0f} |")
    lines += ["", f"**Gate:** {gate.fine_tune.reason}"]
    if gate.keep_fine_tuned:
        lines.append(f"**Fine-tune kept?** {gate.keep_fine_tuned.reason}")
    if metadata.promotion:
        lines.append(f"**Promotion:** {metadata.promotion.reason}")
    lines += ["", "| class | test accuracy | images |", "|---|---|---|"]
    for name, row in metrics.test.per_class.items():
        lines.append(f"| {name} | {percent(row.accuracy)} | {row.support} |")
    if curve_url:
        lines += ["", "## Learning curve",
                  "Accuracy (left, 0 to 1) and loss (right) per epoch; blue train, orange validation; "
                  "the grey line marks the start of fine-tuning. The image link expires after 7 days.",
                  "", f"![learning curve]({curve_url})"]
    return "\n".join(lines) + "\n"
