"""Exports without a server: the check's numbers and verdicts, the `export` parameter and its flag,
the content-addressed file names, the command line's --format/--int8, and the SavedModel's
`serving_bytes` decoding, pixel for pixel the decoding training does."""

import io

import numpy as np
import pytest

from transferflow.cli import build_parser, parse_config
from transferflow.cli.exports import export_name
from transferflow.config import RetrainConfig
from transferflow.errors import CLIError, ConfigError, ExportError
from transferflow.publishing import exports
from transferflow.registry.layout import export_file, pulled_name


def test_compare_counts_agreement_the_largest_difference_and_both_accuracies():
    reference = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    exported = np.array([[0.8, 0.2], [0.2, 0.8], [0.45, 0.55], [0.3, 0.7]])
    check = exports.compare(reference, exported, labels=np.array([0, 1, 1, 1]))
    assert check.images == 4 and check.agreement == 0.75
    assert check.max_prob_diff == pytest.approx(0.15)
    assert (check.keras_accuracy, check.export_accuracy) == (0.75, 1.0)
    assert check.accuracy_change == pytest.approx(0.25)


def check_of(agreement=1.0, max_prob_diff=1e-6, keras_accuracy=0.9, export_accuracy=0.9):
    return exports.Check(200, agreement, max_prob_diff, keras_accuracy, export_accuracy)


def test_a_float_export_needs_agreement_and_close_probabilities():
    onnx = exports.SPECS["onnx"]
    assert check_of().problem(onnx) is None
    assert check_of(agreement=0.995).problem(onnx) is None
    assert "top-1 agreement 0.9900 is below 0.995" in check_of(agreement=0.99).problem(onnx)
    assert "max probability difference 5.00e-02 is above 0.01" in check_of(max_prob_diff=0.05).problem(onnx)


def test_int8_is_held_to_the_accuracy_it_keeps_not_to_agreement():
    int8 = exports.SPECS["litert_int8"]
    assert check_of(agreement=0.9, max_prob_diff=0.2, export_accuracy=0.895).problem(int8) is None
    problem = check_of(export_accuracy=0.85).problem(int8)
    assert "int8 accuracy 0.8500 is 0.0500 below the float model's 0.9000" in problem


def test_a_missing_converter_or_runtime_is_refused_before_any_work(monkeypatch):
    monkeypatch.setattr(exports, "_versions", lambda packages: {p: "not installed" for p in packages})
    with pytest.raises(ExportError, match=r"--export onnx needs .*onnxruntime.*"
                                          r"pip install 'transferflow\[export\]'"):
        exports.check_installed(["onnx"], "--export")
    with pytest.raises(ExportError, match="unknown: use one of onnx, litert, litert_int8"):
        exports.export_spec("coreml")


def test_the_export_parameter_takes_a_comma_list_or_none():
    assert RetrainConfig().export == []
    assert RetrainConfig(export="onnx, litert").export == ["onnx", "litert"]
    assert RetrainConfig(export="none").export == []
    assert RetrainConfig(export=["litert_int8", "litert_int8"]).export == ["litert_int8"]
    assert RetrainConfig.model_json_schema()["properties"]["export"]["type"] == "array"  # a typed UI form
    with pytest.raises(ConfigError, match="--export: Input should be 'onnx', 'litert' or 'litert_int8'"):
        parse_config({"export": "onnx,tflite"})


def test_the_train_flag_parses_into_the_list():
    args = build_parser().parse_args(["train", "--export", "onnx,litert_int8"])
    assert parse_config({"export": args.export}).export == ["onnx", "litert_int8"]


def test_export_files_are_named_by_their_content():
    sha = "ab" * 32
    assert export_file("onnx", sha) == "exports/onnx-abababababababab.onnx"
    assert export_file("litert_int8", sha) == "exports/litert_int8-abababababababab.int8.tflite"
    assert export_file("litert", sha) != export_file("litert", "cd" * 32)
    assert pulled_name("shapes", 3) == "shapes-v3.keras"
    assert pulled_name("shapes", 3, "litert") == "shapes-v3.tflite"


def test_int8_is_a_litert_option_on_the_command_line():
    assert export_name("litert", True) == "litert_int8"
    assert export_name("onnx", False) == "onnx"
    with pytest.raises(CLIError, match="--int8 applies to --format litert only, not onnx"):
        export_name("onnx", True)
    args = build_parser().parse_args(["models", "pull", "m:1", "out", "--format", "litert", "--int8"])
    assert (args.export_format, args.int8) == ("litert", True)
    assert build_parser().parse_args(["models", "pull", "m:1", "out"]).export_format == "keras"


def encoded(array: np.ndarray, kind: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=kind)
    return buffer.getvalue()


@pytest.mark.parametrize("height, width, kind", [
    (32, 32, "PNG"),     # no resize
    (100, 120, "PNG"),   # generic decode, antialiased shrink
    (70, 90, "JPEG"),    # DCT scale 2
    (300, 280, "JPEG"),  # DCT scale 8, no antialias
    (600, 640, "JPEG"),  # DCT scale 8, then antialias
    (50, 40, "GIF"),
    (40, 60, "BMP"),
])
def test_serving_bytes_decodes_exactly_as_training(tmp_path, height, width, kind):
    from transferflow.data import decode_images
    from transferflow.training.model import serving_decoder

    rng = np.random.default_rng(height)
    ramp = np.linspace(0, 200, width)[None, :, None]
    array = np.clip(rng.integers(0, 60, (height, width, 3)) + ramp, 0, 255).astype(np.uint8)
    data = encoded(array, kind)
    path = tmp_path / f"image.{kind.lower()}"
    path.write_bytes(data)
    trained_on = decode_images([path], 32).images.astype(np.float32)
    served = serving_decoder(32)(np.array([data, data], dtype=object)).numpy()
    np.testing.assert_array_equal(served, np.concatenate([trained_on, trained_on]))
