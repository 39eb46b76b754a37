"""A learning-curve PNG drawn with numpy and written with zlib: no plotting library needed.

Two panels, accuracy (0-1) and loss, over all epochs of all phases; train blue,
validation orange; a grey line marks where fine-tuning starts.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

WIDTH, HEIGHT, MARGIN = 360, 240, 24
TRAIN, VAL = (31, 119, 180), (255, 127, 14)
AXIS, GRID, PHASE = (60, 60, 60), (225, 225, 225), (150, 150, 150)


def learning_curve_png(histories: list[dict[str, list[float]]]) -> bytes:
    """Histories of consecutive phases (Keras History.history dicts) -> PNG bytes."""
    def series(key: str) -> list[float]:
        return [v for h in histories for v in h.get(key, [])]

    boundaries = np.cumsum([len(h.get("loss", [])) for h in histories])[:-1].tolist()
    accuracy = _panel([series("accuracy"), series("val_accuracy")], 0.0, 1.0, boundaries)
    losses = series("loss") + series("val_loss")
    finite = [v for v in losses if np.isfinite(v)] or [1.0]
    loss = _panel([series("loss"), series("val_loss")], 0.0, max(finite) * 1.05 or 1.0, boundaries)
    return encode_png(np.concatenate([accuracy, loss], axis=1))


def _panel(lines: list[list[float]], low: float, high: float, boundaries: list[int]) -> np.ndarray:
    canvas = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    epochs = max((len(line) for line in lines), default=0)
    x_of = _scale(0, max(epochs - 1, 1), MARGIN, WIDTH - MARGIN // 2)
    y_of = _scale(low, high, HEIGHT - MARGIN, MARGIN // 2)
    for fraction in (0.25, 0.5, 0.75, 1.0):
        _line(canvas, (MARGIN, y_of(low + fraction * (high - low))),
              (WIDTH - MARGIN // 2, y_of(low + fraction * (high - low))), GRID, 1)
    for boundary in boundaries:
        _line(canvas, (x_of(boundary - 0.5), MARGIN // 2), (x_of(boundary - 0.5), HEIGHT - MARGIN), PHASE, 1)
    _line(canvas, (MARGIN, HEIGHT - MARGIN), (WIDTH - MARGIN // 2, HEIGHT - MARGIN), AXIS, 1)
    _line(canvas, (MARGIN, MARGIN // 2), (MARGIN, HEIGHT - MARGIN), AXIS, 1)
    for values, color in zip(lines, (TRAIN, VAL), strict=True):
        points = [(x_of(i), y_of(min(max(v, low), high))) for i, v in enumerate(values) if np.isfinite(v)]
        for start, end in zip(points, points[1:], strict=False):
            _line(canvas, start, end, color, 2)
        for x, y in points:
            canvas[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3] = color
    return canvas


def _scale(low: float, high: float, out_low: int, out_high: int):
    span = (high - low) or 1.0
    return lambda v: int(round(out_low + (v - low) / span * (out_high - out_low)))


def _line(canvas: np.ndarray, start: tuple[int, int], end: tuple[int, int], color, width: int) -> None:
    steps = max(abs(end[0] - start[0]), abs(end[1] - start[1]), 1)
    xs = np.linspace(start[0], end[0], steps + 1).round().astype(int)
    ys = np.linspace(start[1], end[1], steps + 1).round().astype(int)
    for dx in range(width):
        for dy in range(width):
            canvas[np.clip(ys + dy, 0, canvas.shape[0] - 1), np.clip(xs + dx, 0, canvas.shape[1] - 1)] = color


def encode_png(image: np.ndarray) -> bytes:
    """RGB uint8 (H, W, 3) -> PNG bytes."""
    height, width, _ = image.shape
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body
