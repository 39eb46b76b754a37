"""A short markdown report of a retrain run, for the Prefect UI and humans.

The pieces (metrics table, calibration, leakage, promotion checks and comparisons, per-class
table) are public functions, so that the model card says the same things the same way. Each
copes with metadata written before the piece existed (None, or keys missing) by saying less.
"""

from __future__ import annotations

from transferflow.registry.documents import Calibration, Decision, Registration, TestMetrics, TrainingRecord

MARKS = {"pass": "✅", "fail": "❌", "skipped": "➖"}
PLAIN_MARKS = {"pass": "pass", "fail": "FAIL", "skipped": "skipped"}
LEAKAGE_EXAMPLES = 3


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def number(value: float | None, digits: int = 3) -> str:
    """A score that is not a share of images (F1, ECE, NLL, temperature), to `digits` decimals."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def run_report(metadata: TrainingRecord, registered: Registration, curve_url: str | None = None,
               elapsed_s: float | None = None, confusion_url: str | None = None,
               timings: dict | None = None) -> str:
    """The run's report: what was registered, how good it is, where the time went (`timings`, else
    the metadata's), why it was (not) promoted, charts."""
    metrics = metadata.metrics
    lines = _summary(metadata, registered) + _phase_table(metadata, elapsed_s)
    lines += timings_lines(timings or metadata.timings)
    lines += ["", "## Metrics", *metrics_table(metrics.test, metrics.golden)]
    lines += calibration_lines(metrics.calibration)
    lines += [line for line in (golden_line(metrics.golden), leakage_line(metadata.dataset.leakage)) if line]
    lines += _gate_lines(metadata)
    lines += promotion_lines(metadata.promotion, MARKS)
    if metrics.test is not None:
        lines += ["", "## Per class (test)", *per_class_table(metrics.test)]
    lines += _images(curve_url, confusion_url)
    return "\n".join(lines) + "\n"


def _summary(metadata: TrainingRecord, registered: Registration) -> list[str]:
    params, test = metadata.parameters, metadata.metrics.test
    aliases = ", ".join(f"`{a}`" for a in registered.aliases) or "none"
    lines = [
        f"# {registered.name} version {registered.version}",
        "",
        f"- artifact: `{registered.artifact_uri}` (aliases: {aliases})",
        f"- dataset: `{params.get('dataset')}` (fingerprint `{metadata.dataset.fingerprint[:12]}`)",
        f"- backbone: {params.get('backbone')}, weights `{params.get('weights')}`, {metadata.image_size} px"
        + (" (chosen by image_size auto)" if params.get("image_size") == "auto" else ""),
    ]
    if test is not None:
        lines.append(f"- test accuracy: **{percent(test.accuracy)}** on {test.images} images")
    return lines


def _phase_table(metadata: TrainingRecord, elapsed_s: float | None) -> list[str]:
    lines = ["", "| phase | epochs | val accuracy | seconds |", "|---|---|---|---|"]
    for phase, m in (("head", metadata.metrics.head), ("fine_tune", metadata.metrics.fine_tune)):
        if m is not None:
            lines.append(f"| {phase} | {m.epochs_run} | {percent(m.val_accuracy)} | {m.seconds} |")
    if elapsed_s is not None:
        lines.append(f"| whole run | | | {elapsed_s:.0f} |")
    return lines + cluster_lines(metadata.training)


def timings_lines(timings: dict | None) -> list[str]:
    """Where the run's wall time went, stage by stage (metadata written before timings: nothing)."""
    from transferflow.pipeline.timing import table

    if not timings:
        return []
    lines = ["", "## Where the time went", "", "| stage | seconds | share |", "|---|---|---|"]
    lines += [f"| {label} | {seconds:.1f} | {share:.0%} |" for label, seconds, share in table(timings)]
    if "total" in timings:
        lines.append(f"| whole run (start-up to now) | {timings['total']:.1f} | |")
    return lines


def cluster_lines(training: dict) -> list[str]:
    """Where each phase trained, for phases run on a Ray cluster (engine ray): workers, nodes, GPUs,
    attempts (more than one: a failed worker was replaced) and the phase's wall time."""
    lines = []
    for phase in ("head", "fine_tune"):
        cluster = (training.get(phase) or {}).get("cluster")
        if cluster:
            c = cluster.get
            lines.append(f"- {phase} on Ray: {c('workers')} workers on {c('nodes')} nodes ({c('cpus')} CPUs, "
                         f"{c('gpus')} GPUs), {c('attempts')} attempt(s), {c('seconds')} s")
    return [""] + lines if lines else []


def _gate_lines(metadata: TrainingRecord) -> list[str]:
    gate = metadata.gate
    lines = ["", "## Decisions", ""] + ([f"**Gate:** {gate.fine_tune.reason}"] if gate.fine_tune else [])
    if gate.keep_fine_tuned:
        lines.append(f"**Fine-tune kept?** {gate.keep_fine_tuned.reason}")
    return lines


def _images(curve_url: str | None, confusion_url: str | None) -> list[str]:
    lines = []
    if curve_url:
        lines += ["", "## Learning curve",
                  "Accuracy (left) and loss (right) per epoch; blue train, orange validation; the dashed "
                  "line marks the start of fine-tuning. The image link expires after 7 days.",
                  "", f"![learning curve]({curve_url})"]
    if confusion_url:
        lines += ["", "## Confusion matrix (test)",
                  "Rows are the true class, columns the predicted one; counts in the cells, colour the share "
                  "of the true class's images. The image link expires after 7 days.",
                  "", f"![confusion matrix]({confusion_url})"]
    return lines


# ---------------------------------------------------------------- pieces shared with the model card

def metrics_table(test: TestMetrics | None, golden: TestMetrics | None) -> list[str]:
    """measure | test [| golden]: accuracy, macro-F1, top-k, ECE, the images scored; rows that
    neither set has (metadata older than these metrics) are left out."""
    sets = [("test", test)] + ([("golden", golden)] if golden is not None else [])
    sets = [(label, scores) for label, scores in sets if scores is not None]
    if not sets:
        return ["No test scores recorded."]
    ks = sorted({k for _, scores in sets for k in scores.top_k}, key=int)
    rows = [("accuracy", lambda s: percent(s.accuracy), True),
            ("macro-F1", lambda s: number(s.macro_f1), any(s.macro_f1 is not None for _, s in sets))]
    rows += [(f"top-{k} accuracy", lambda s, k=k: percent(s.top_k.get(k)), True) for k in ks]
    rows += [("ECE (calibration error, lower is better)", lambda s: number(s.ece),
              any(s.ece is not None for _, s in sets)),
             ("images", lambda s: str(s.images), True)]
    lines = ["| measure | " + " | ".join(label for label, _ in sets) + " |", "|---" * (len(sets) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(show(scores) for _, scores in sets) + " |"
              for name, show, wanted in rows if wanted]
    return lines


def calibration_lines(calibration: Calibration | None) -> list[str]:
    """Temperature scaling: T, whether it was applied, validation ECE and NLL before and after."""
    if calibration is None:
        return []
    state = "applied" if calibration.applied else "not applied"
    lines = ["", f"- calibration: temperature **{number(calibration.temperature)}** ({state}); "
             f"validation ECE {number(calibration.val_ece_before)} -> {number(calibration.val_ece_after)}, "
             f"NLL {number(calibration.val_nll_before)} -> {number(calibration.val_nll_after)}"]
    if calibration.reason:
        lines[-1] += f" ({calibration.reason})"
    return lines


def golden_line(golden: TestMetrics | None) -> str | None:
    if golden is None:
        return None
    source = f"`{golden.dataset or 'unnamed'}`" + (f" (fingerprint `{golden.fingerprint[:12]}`)"
                                                    if golden.fingerprint else "")
    return (f"- golden set {source}: accuracy {percent(golden.accuracy)}, "
            f"macro-F1 {number(golden.macro_f1)} on {golden.images} images")


def leakage_line(leakage: dict | None, examples: int = LEAKAGE_EXAMPLES) -> str | None:
    """Test images that duplicate training images: counts, share, a few example pairs."""
    if not leakage:
        return None
    exact, near, tested = leakage.get("exact", 0), leakage.get("near", 0), leakage.get("test_images", 0)
    bits = leakage.get("near_bits")
    how = leakage.get("method") if bits is None else f"exact pixels, or perceptual hash within {bits} bits"
    sampled = leakage.get("near_sampled")
    scope = f"; near duplicates sought among {sampled} sampled test images" if sampled else ""
    if exact + near == 0:
        return f"- leakage: none of {tested} test images duplicates a training image ({how}{scope})"
    pairs = ", ".join(f"`{test}` = `{train}`" for test, train in leakage.get("examples", [])[:examples])
    return (f"- leakage: **{exact} exact and {near} near duplicates** of training images among {tested} test "
            f"images ({percent(leakage.get('share'))}; {how}{scope})" + (f"; e.g. {pairs}" if pairs else ""))


def promotion_lines(promotion: Decision | None, marks: dict[str, str]) -> list[str]:
    """The promotion's reason, each check with its mark and detail, and each comparison with production."""
    if promotion is None:
        return []
    extra = promotion.model_extra or {}
    lines = ["", f"**Promotion:** {promotion.reason}"]
    checks = extra.get("checks") or []
    if checks:
        lines += [""] + [check_line(check, marks) for check in checks]
    for name, comparison in (extra.get("comparisons") or {}).items():
        lines += ["", f"### Against production on the {name} set", "",
                  *comparison_table(comparison, extra.get("production_version")), "",
                  *excluded_lines(comparison), mcnemar_line(comparison)]
    return lines


def excluded_lines(comparison: dict) -> list[str]:
    """How many images of the set were left out because production trained or validated on them."""
    excluded = comparison.get("excluded")
    if excluded is None:
        return []
    return [f"Compared on {comparison['images']} images; **{excluded} excluded**: production trained or "
            "validated on them.", ""]


def check_line(check: dict, marks: dict[str, str]) -> str:
    state = "skipped" if check.get("skipped") else "pass" if check.get("passed") else "fail"
    return f"- {marks[state]} `{check.get('name')}`: {check.get('detail', '')}"


def comparison_table(comparison: dict, production_version: int | None) -> list[str]:
    """measure | production vN | new version | change, for accuracy, macro-F1 and per-class recall."""
    from transferflow.judging.promotion import Comparison, summary_table

    production = f"production v{production_version}" if production_version is not None else "production"
    lines = [f"| measure | {production} | new version | change |", "|---|---|---|---|"]
    for measure, old, new in summary_table(Comparison.model_validate(comparison)):
        show = percent if measure == "accuracy" else number
        change = "" if old is None or new is None else f"{new - old:+.3f}"
        lines.append(f"| {measure} | {show(old)} | {show(new)} | {change} |")
    return lines


def mcnemar_line(comparison: dict) -> str:
    test, images = comparison["mcnemar"], comparison["images"]
    return (f"McNemar (exact, paired, {images} images): production alone right on {test['champion_only']}, "
            f"the new version alone on {test['challenger_only']}; one-sided p = {test['p_worse']:.3g} "
            f"that the new version is worse (two-sided p = {test['p_two_sided']:.3g}).")


def per_class_table(test: TestMetrics) -> list[str]:
    """Precision, recall, F1 and support per class; accuracy only for metadata older than those."""
    rows = test.per_class.items()
    if not any(row.precision is not None or row.f1 is not None for _, row in rows):
        return ["| class | test accuracy | images |", "|---|---|---|",
                *(f"| {name} | {percent(row.accuracy)} | {row.support} |" for name, row in rows)]
    lines = ["| class | precision | recall | F1 | images |", "|---|---|---|---|---|"]
    for name, row in rows:
        recall = row.recall if row.recall is not None else row.accuracy
        cells = (name, number(row.precision), number(recall), number(row.f1), row.support)
        lines.append("| " + " | ".join(str(value) for value in cells) + " |")
    return lines
