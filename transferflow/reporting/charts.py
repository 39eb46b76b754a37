"""The run's charts as PNG bytes, drawn with matplotlib: the learning curve and the confusion matrix.

Each chart is its own `Figure` on an Agg canvas, never pyplot: no global state, no GUI backend,
so charts can be drawn from several threads (Prefect runs tasks in a thread pool) and on
headless workers.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
WIDTH, HEIGHT = 350, 350  # pixels of one learning-curve panel; the PNG is two panels wide
TRAIN, VAL, PHASE = "tab:blue", "tab:orange", "grey"
LOG_LOSS_RANGE = 50  # a loss falling by more than this factor is drawn on a log axis
ROTATE_AFTER_CHARS = 40  # x tick labels turn vertical when the names would need more characters
CELL_NUMBERS_MAX = 30  # above this many classes the cells hold no numbers: they would not fit


def learning_curve_png(histories: list[dict[str, list[float]]]) -> bytes:
    """Histories of consecutive phases (Keras History.history dicts) -> PNG of two panels,
    accuracy and loss per epoch, train and validation, a line where fine-tuning starts."""
    figure = Figure(figsize=(2 * WIDTH / DPI, HEIGHT / DPI), dpi=DPI, layout="constrained")
    accuracy_axes, loss_axes = figure.subplots(1, 2)
    boundaries = np.cumsum([len(h.get("loss", [])) for h in histories])[:-1].tolist()
    for axes, measure in ((accuracy_axes, "accuracy"), (loss_axes, "loss")):
        train, val = _series(histories, measure), _series(histories, f"val_{measure}")
        _draw_phase_lines(axes, train, val, boundaries)
        axes.set(title=measure, xlabel="epoch", ylabel=measure)
        axes.grid(alpha=0.3)
    accuracy_axes.set_ylim(-0.02, 1.02)
    _scale_loss_axis(loss_axes, _series(histories, "loss") + _series(histories, "val_loss"))
    if accuracy_axes.get_legend_handles_labels()[0]:
        accuracy_axes.legend(loc="lower right", fontsize="small")
    return _png(figure)


def _series(histories: list[dict[str, list[float]]], key: str) -> list[float]:
    """One measure over all phases, non-finite values (a NaN loss) as NaN: a gap in the line."""
    return [float(v) if np.isfinite(v) else float("nan") for h in histories for v in h.get(key, [])]


def _draw_phase_lines(axes, train: list[float], val: list[float], boundaries: list[int]) -> None:
    """Train and validation lines over epochs 1..N, and a vertical line before each later phase."""
    for values, colour, label in ((train, TRAIN, "train"), (val, VAL, "validation")):
        if values:
            axes.plot(range(1, len(values) + 1), values, color=colour, marker="o", markersize=3, label=label)
    for index, boundary in enumerate(boundaries):
        axes.axvline(boundary + 0.5, color=PHASE, linestyle="--", linewidth=1,
                     label="fine-tuning starts" if index == 0 else None)
    if not train and not val:
        axes.text(0.5, 0.5, "no epochs recorded", ha="center", va="center", transform=axes.transAxes)
    axes.xaxis.get_major_locator().set_params(integer=True)


def _scale_loss_axis(axes, losses: list[float]) -> None:
    """From 0 on a linear axis; a log axis when the loss falls by orders of magnitude (a head
    starting at a loss of 100 on raw features would otherwise flatten the rest of the curve)."""
    finite = [v for v in losses if np.isfinite(v)]
    positive = [v for v in finite if v > 0]
    if positive and max(positive) / min(positive) > LOG_LOSS_RANGE:
        axes.set_yscale("log")
        axes.set_ylabel("loss (log scale)")
    elif finite:
        axes.set_ylim(0, max(max(finite) * 1.05, 1e-3))


def confusion_matrix_png(matrix: list[list[int]], class_names: list[str]) -> bytes:
    """Confusion-matrix heatmap: rows the true class, columns the predicted one, colour the share of
    the true class's images (so that rare classes show as clearly as common ones), counts in cells."""
    counts = np.asarray(matrix, dtype=np.int64).reshape(len(matrix), -1) if matrix else np.zeros((0, 0), int)
    classes = len(class_names)
    if counts.shape != (classes, classes):
        raise ValueError(f"confusion matrix of shape {counts.shape} does not match {classes} class names")
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    side = float(np.clip(4 + 0.1 * classes, 5, 7))
    figure = Figure(figsize=(side, side), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the true class")
    _label_classes(axes, class_names)
    if 0 < classes <= CELL_NUMBERS_MAX:
        _write_counts(axes, counts, shares)
    axes.set(title="confusion matrix (test)", xlabel="predicted class", ylabel="true class")
    return _png(figure)


def _label_classes(axes, class_names: list[str]) -> None:
    """Class names on both axes; smaller and rotated as the classes get more or longer."""
    classes = len(class_names)
    size = float(np.clip(200 / max(classes, 1), 4, 9))
    rotate = classes * max((len(name) for name in class_names), default=0) > ROTATE_AFTER_CHARS
    axes.set_xticks(range(classes), class_names, fontsize=size, rotation=90 if rotate else 0)
    axes.set_yticks(range(classes), class_names, fontsize=size)


def _write_counts(axes, counts: np.ndarray, shares: np.ndarray) -> None:
    size = 9 if len(counts) <= 12 else 6
    for (row, column), count in np.ndenumerate(counts):
        colour = "white" if shares[row, column] > 0.5 else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=size)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()
