"""What a user reads about a version: the run report, the model card, the charts and `models diff`.
They show every metric of schema 2 (F1, top-k, calibration, golden set, leakage, the promotion's
checks and its comparison with production), and still render metadata written before those."""

import io
import json
from pathlib import Path

import matplotlib.image
import pytest

from transferflow.data.leakage import LeakageReport
from transferflow.judging.promotion import PromotionDecision
from transferflow.registry import Registration, TrainingRecord, VersionMetadata, headline_metrics
from transferflow.registry.compare import diff
from transferflow.reporting.card import model_card
from transferflow.reporting.charts import confusion_matrix_png, learning_curve_png
from transferflow.reporting.report import run_report

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CLASSES = ["cat", "dog", "fox", "owl"]


def old_metadata() -> dict:
    """metadata.json as registered by 4efa04d (before schema_version)."""
    return json.loads((FIXTURES / "metadata_4efa04d.json").read_text())


def scores(accuracy: float, images: int, **extra) -> dict:
    per_class = {c: {"accuracy": 0.8, "precision": 0.75, "recall": 0.8, "f1": 0.7742, "support": images // 4}
                 for c in CLASSES}
    per_class["owl"] = {"accuracy": 0.6, "precision": 0.9, "recall": 0.6, "f1": 0.72, "support": images // 4}
    return {"accuracy": accuracy, "images": images, "per_class": per_class, "macro_f1": 0.7607,
            "top_k": {"3": 0.97}, "ece": 0.0412,
            "confusion_matrix": [[40, 5, 3, 2], [4, 40, 4, 2], [2, 3, 40, 5], [9, 6, 5, 30]], **extra}


def promotion() -> dict:
    """A decision as judging.promotion.promotion_gate dumps it: production v3 compared on test."""
    comparison = {"images": 200, "mcnemar": {"champion_only": 7, "challenger_only": 19, "p_worse": 0.9953,
                                             "p_two_sided": 0.0290},
                  "challenger": {"accuracy": 0.75, "macro_f1": 0.7607, "recall": {c: 0.8 for c in CLASSES}},
                  "champion": {"accuracy": 0.69, "macro_f1": 0.6811, "recall": {c: 0.7 for c in CLASSES}}}
    checks = [{"name": "floor", "passed": True, "detail": "test accuracy 0.7500 beats the majority class"},
              {"name": "class_set", "passed": True, "detail": "same 4 classes as production v3"},
              {"name": "metric:test", "passed": True, "detail": "accuracy 0.7500 vs production v3's 0.6900"},
              {"name": "class_recall:test", "passed": False, "detail": "class 'owl' recall drops 0.1200"},
              {"name": "mcnemar:test", "passed": True, "skipped": True, "detail": "McNemar test off"}]
    decision = {"blessed": False, "action": "none", "test_accuracy": 0.75, "min_accuracy": 0.25,
                "floor_rule": "auto", "floor_p_value": 1e-30, "tolerance": 0.0, "metric": "accuracy",
                "production_version": 3, "production_accuracy": 0.69, "same_dataset": True, "checks": checks,
                "comparisons": {"test": comparison}, "reason": "…; class 'owl' recall drops -> not blessed"}
    return PromotionDecision.model_validate(decision).model_dump(mode="json")  # the real record's shape


def new_metadata() -> TrainingRecord:
    """Metadata of schema 2 with every new key, validated like publishing.build_metadata's."""
    leakage = LeakageReport(method="blake2b pixels + dct phash", test_images=200, train_images=1600, exact=2,
                            near=3, share=0.025, examples=[["t1.png", "a1.png"], ["t2.png", "a2.png"],
                                                           ["t3.png", "a3.png"], ["t4.png", "a4.png"]],
                            near_bits=4)
    old = old_metadata()
    return TrainingRecord.model_validate({
        **{key: old[key] for key in ("parameters", "gate", "backbone", "image_size", "preprocessing")},
        "schema_version": 2, "classes": CLASSES,
        "metrics": {"head": old["metrics"]["head"], "fine_tune": old["metrics"]["fine_tune"],
                    "test": scores(0.75, 200),
                    "golden": scores(0.625, 40, dataset="s3://bucket/golden/", fingerprint="ab" * 32),
                    "calibration": {"temperature": 1.8421, "applied": True, "val_ece_before": 0.1234,
                                    "val_ece_after": 0.0321, "val_nll_before": 0.9876,
                                    "val_nll_after": 0.6543, "reason": "validation ECE fell"}},
        "dataset": {**old["dataset"], "leakage": leakage.model_dump()},
        "promotion": promotion(),
    })


def registration(version: int = 4) -> Registration:
    return Registration(name="zoo", version=version, artifact_uri="s3://bucket/models/zoo/versions/000004/model.keras",
                        aliases=["latest"])


def png_shape(png: bytes) -> tuple[int, ...]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(io.BytesIO(png), format="png").shape


def test_the_learning_curve_is_a_readable_png_two_panels_wide():
    png = learning_curve_png([{"accuracy": [0.3, 0.5], "val_accuracy": [0.2, 0.4], "loss": [200.0, 2.0],
                               "val_loss": [100.0, float("nan")]},
                              {"accuracy": [0.7], "val_accuracy": [0.6], "loss": [0.5], "val_loss": [0.7]}])
    height, width, _ = png_shape(png)
    assert (width, height) == (700, 350)
    assert png_shape(learning_curve_png([])) == (350, 700, 4)  # no epochs: still a chart, saying so


@pytest.mark.parametrize("classes", [3, 45])  # numbers in the cells / too many classes for numbers
def test_the_confusion_matrix_is_a_readable_png_of_a_sensible_size(classes):
    matrix = [[10 if row == column else 1 for column in range(classes)] for row in range(classes)]
    height, width, _ = png_shape(confusion_matrix_png(matrix, [f"class_{i}" for i in range(classes)]))
    assert 400 <= width <= 800 and 400 <= height <= 800


def test_a_confusion_matrix_that_does_not_match_the_classes_is_refused():
    with pytest.raises(ValueError, match="does not match 3 class names"):
        confusion_matrix_png([[1, 0], [0, 1]], ["a", "b", "c"])


def test_the_report_shows_every_new_metric_check_and_comparison():
    report = run_report(new_metadata(), registration(), curve_url="http://c", confusion_url="http://m")
    assert "| measure | test | golden |" in report and "| accuracy | 75.0% | 62.5% |" in report
    assert "| macro-F1 | 0.761 | 0.761 |" in report and "| top-3 accuracy | 97.0% | 97.0% |" in report
    assert "| ECE (calibration error, lower is better) | 0.041 | 0.041 |" in report
    assert "temperature **1.842** (applied); validation ECE 0.123 -> 0.032, NLL 0.988 -> 0.654" in report
    assert "golden set `s3://bucket/golden/` (fingerprint `abababababab`)" in report
    assert "**2 exact and 3 near duplicates** of training images among 200 test images (2.5%" in report
    assert "`t3.png` = `a3.png`" in report and "t4.png" not in report  # three examples at most
    assert "- ✅ `floor`: test accuracy 0.7500" in report
    assert "- ❌ `class_recall:test`: class 'owl'" in report
    assert "- ➖ `mcnemar:test`: McNemar test off" in report
    assert "| measure | production v3 | new version | change |" in report
    assert "| accuracy | 69.0% | 75.0% | +0.060 |" in report
    assert "| macro-F1 | 0.681 | 0.761 | +0.080 |" in report
    assert "| recall owl | 0.700 | 0.800 | +0.100 |" in report
    assert "production alone right on 7, the new version alone on 19; one-sided p = 0.995" in report
    assert "(two-sided p = 0.029)" in report and "**Promotion:** …; class 'owl'" in report
    assert "| class | precision | recall | F1 | images |" in report
    assert "| owl | 0.900 | 0.600 | 0.720 | 50 |" in report
    assert "![learning curve](http://c)" in report and "![confusion matrix](http://m)" in report


def test_the_card_shows_every_new_metric_and_the_checks_in_plain_words():
    card = model_card("zoo", 4, new_metadata())
    assert "| macro-F1 | 0.761 | 0.761 |" in card and "| top-3 accuracy | 97.0% | 97.0% |" in card
    assert "| head val accuracy | 33.3% | |" in card  # validation rows join the table, golden blank
    assert "validation ECE 0.123 -> 0.032" in card and "temperature **1.842** (applied)" in card
    assert "| owl | 0.900 | 0.600 | 0.720 | 50 |" in card and "accuracy 62.5%, macro-F1 0.761 on 40" in card
    assert "**2 exact and 3 near duplicates**" in card and "likely optimistic" in card
    assert "- FAIL `class_recall:test`" in card and "- pass `floor`" in card
    assert "- skipped `mcnemar:test`" in card
    assert "one-sided p = 0.995" in card and "Weakest class on test: owl (60.0%)" in card


def test_old_metadata_renders_without_the_new_sections():
    meta = VersionMetadata.model_validate(old_metadata())
    report = run_report(meta, registration(1), curve_url="http://c")
    assert "| measure | test |" in report and "| accuracy | 33.3% |" in report and "macro-F1" not in report
    assert "| class | test accuracy | images |" in report and "| class_0 | 0.0% | 1 |" in report
    assert "**Promotion:** test accuracy 0.3333 >= floor" in report
    for absent in ("ECE", "golden", "leakage", "calibration", "| production", "McNemar", "confusion matrix"):
        assert absent not in report, absent
    card = model_card("shapes-vgg16", 1, meta)
    assert "| head val accuracy | 33.3% |" in card and "| class_2 | 100.0% | 1 |" in card
    assert "- promotion" not in card and "**Promotion:** test accuracy 0.3333" in card
    assert "leakage" not in card and "golden" not in card


def test_models_diff_adds_the_new_metrics_only_where_a_version_has_them():
    new = json.loads(new_metadata().model_dump_json())
    compared = diff([("zoo:1", old_metadata()), ("zoo:4", new)])["metrics"]
    assert list(compared)[:8] == ["test.accuracy", "test.macro_f1", "test.top_k.3", "test.ece",
                                  "golden.accuracy", "golden.macro_f1", "head.val_accuracy",
                                  "fine_tune.val_accuracy"]
    assert compared["test.macro_f1"] == [None, 0.7607] and compared["golden.accuracy"] == [None, 0.625]
    assert compared["test.per_class.owl.precision"] == [None, 0.9]
    assert "test.per_class.owl.recall" not in compared  # the same number as .accuracy, shown once
    assert "test.per_class.owl.f1" not in compared and "test.confusion_matrix" not in compared
    assert "test.macro_f1" not in headline_metrics(old_metadata()["metrics"])  # no rows of dashes


def test_the_card_lists_verified_exports():
    meta = new_metadata().model_dump()
    meta["exports"]["onnx"] = {"file": "exports/onnx-0123.onnx", "verification": {"agreement": 0.998,
                                                                                  "max_prob_diff": 2e-6}}
    card = model_card("zoo", 4, TrainingRecord.model_validate(meta))
    assert "## Exports" in card and "| onnx | `exports/onnx-0123.onnx` | 99.8% | 2.0e-06 |" in card
    assert "## Exports" not in model_card("zoo", 4, new_metadata())  # none registered: no section


def test_the_excluded_count_is_in_the_report_the_card_and_models_diff():
    meta = new_metadata()
    decision = meta.promotion.model_dump()
    decision["comparisons"]["test"]["excluded"] = 37
    meta = meta.model_copy(update={"promotion": meta.promotion.model_validate(decision)})
    expected = "Compared on 200 images; **37 excluded**: production trained or validated on them."
    assert expected in run_report(meta, registration()) and expected in model_card("zoo", 4, meta)
    facts = diff([("zoo:1", old_metadata()), ("zoo:4", json.loads(meta.model_dump_json()))])["promotion"]
    assert facts == {"production_version": [None, 3], "test.images": [None, 200], "test.excluded": [None, 37],
                     "action": ["promote", "none"]}
    assert "excluded" not in run_report(new_metadata(), registration())  # not recorded: not shown


def test_the_report_shows_where_the_time_went_stage_by_stage():
    timings = {"startup": 6.0, "prefect_start": 12.5, "dataset": 20.0, "features": 30.0, "head": 2.0,
               "fine_tune": 100.0, "calibration": 3.0, "evaluation": 4.0, "export": 5.0, "total": 190.0}
    meta = new_metadata().model_copy(update={"timings": timings})
    report = run_report(meta, registration())
    assert "## Where the time went" in report
    assert "| Prefect start | 12.5 | 7% |" in report and "| fine-tuning | 100.0 | 53% |" in report
    assert "| whole run (start-up to now) | 190.0 | |" in report
    later = run_report(meta, registration(), timings={**timings, "registration": 1.5, "total": 192.0})
    assert "| registration | 1.5 | 1% |" in later  # the report's own, more complete timings win
    assert "Where the time went" not in run_report(new_metadata(), registration())  # none recorded


def test_the_stage_clock_counts_each_stage_and_moves_the_features_out_of_the_head():
    from transferflow.pipeline.timing import STAGES, StageClock, mark_handover

    mark_handover()  # as `transferflow train` does before it starts the flow
    clock = StageClock()
    assert {"startup", "prefect_start"} <= set(clock.seconds)  # from this process's start (Linux /proc)
    assert "startup" not in StageClock().seconds  # a later flow in the same process: no start-up of its own
    with clock("head"):
        sum(range(200_000))
    head = clock.seconds["head"]
    clock.split("head", "features", head / 4)
    stages = clock.stages()
    assert stages["features"] == pytest.approx(head / 4, abs=0.01)
    assert stages["head"] == pytest.approx(3 * head / 4, abs=0.01)
    assert list(stages) == [s for s in STAGES if s in stages] + ["total"]
    assert stages["total"] >= stages["startup"] + stages["prefect_start"] + head - 0.01
