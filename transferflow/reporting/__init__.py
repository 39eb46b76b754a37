"""What a run and a version say to humans: the run report, the model card, the charts.

    report  the markdown run report (Prefect artifact and REPORT.md)
    card    MODEL_CARD.md of a registered version
    charts  the learning curve and the confusion matrix as PNG bytes (matplotlib)
"""

from transferflow import lazy_face

# name -> the submodule that defines it. Imported on first use (PEP 562), not with the package: some
# submodules load TensorFlow or matplotlib, and importing a light one (its package runs first) stays light.
_LAZY = {
    "model_card": "card", "confusion_matrix_png": "charts", "learning_curve_png": "charts",
    "comparison_table": "report", "metrics_table": "report", "per_class_table": "report",
    "run_report": "report", "timings_lines": "report",
}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_face(__name__, _LAZY, globals())
