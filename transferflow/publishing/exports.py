"""Portable exports of a classifier: ONNX (run by onnxruntime) and LiteRT (.tflite, run by the LiteRT
interpreter), float32 or int8, each checked on a test split against the Keras model before anything
publishes it. Plain Python, no Prefect; TensorFlow and the runtimes are imported when used.

ONNX goes through Keras 3's own `Model.export(format="onnx")` (tf2onnx under the TensorFlow backend);
LiteRT through TensorFlow's TFLiteConverter from a SavedModel of the model's call. LiteRT is kept to
builtin ops, so the plain interpreter (phones, ai-edge-litert) runs it without the Flex delegate.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

from transferflow import storage
from transferflow.errors import ExportError
from transferflow.registry.layout import EXPORT_SUFFIXES

log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.995  # share of test images on which the export's top-1 class is the Keras model's
MAX_PROB_DIFF = 0.01  # float32 exports: largest absolute difference of any class probability
MAX_INT8_ACCURACY_DROP = 0.01  # int8 changes answers by design: it is held to the accuracy it keeps
REPRESENTATIVE_IMAGES = 100  # train images that calibrate int8 activation ranges
BATCH = 32

Runner = Callable[[np.ndarray], np.ndarray]  # float32 pixels [batch, size, size, 3] -> probabilities


@dataclass(frozen=True)
class Loaded:
    """An export opened in its own runtime: how to run it, and its tensors' names there."""

    run: Runner
    input_name: str
    output_name: str


@dataclass(frozen=True)
class ExportSpec:
    """One export format: how it is converted, and what runs it for the check."""

    name: str  # the key under metadata "exports" (config.ExportFormat's value)
    converter: tuple[str, ...]  # packages whose versions the metadata records
    runtime: str  # the package that runs it in the check
    int8: bool = False

    @property
    def suffix(self) -> str:
        return EXPORT_SUFFIXES[self.name]


SPECS = {spec.name: spec for spec in (
    ExportSpec("onnx", ("keras", "tensorflow", "tf2onnx", "onnx"), "onnxruntime"),
    ExportSpec("litert", ("keras", "tensorflow"), "ai-edge-litert"),
    ExportSpec("litert_int8", ("keras", "tensorflow"), "ai-edge-litert", int8=True),
)}


@dataclass(frozen=True)
class Check:
    """An export's answers against the Keras model's on the same images."""

    images: int
    agreement: float  # share of images with the same top-1 class
    max_prob_diff: float
    keras_accuracy: float
    export_accuracy: float

    @property
    def accuracy_change(self) -> float:
        return self.export_accuracy - self.keras_accuracy

    def problem(self, spec: ExportSpec) -> str | None:
        """Why the export must not be published, or None."""
        if spec.int8:
            if self.accuracy_change < -MAX_INT8_ACCURACY_DROP:
                return (f"int8 accuracy {self.export_accuracy:.4f} is {-self.accuracy_change:.4f} below the "
                        f"float model's {self.keras_accuracy:.4f} (allowed: {MAX_INT8_ACCURACY_DROP})")
            return None
        if self.agreement < MIN_AGREEMENT:
            return f"top-1 agreement {self.agreement:.4f} is below {MIN_AGREEMENT}"
        if self.max_prob_diff > MAX_PROB_DIFF:
            return f"max probability difference {self.max_prob_diff:.2e} is above {MAX_PROB_DIFF}"
        return None


@dataclass(frozen=True)
class Export:
    """A converted, verified export on local disk, and its metadata entry (without its place in a
    version: the registry adds `file`)."""

    path: Path
    entry: dict


def export_spec(name: str) -> ExportSpec:
    if name not in SPECS:
        raise ExportError(f"export format {name!r} is unknown: use one of {', '.join(SPECS)}")
    return SPECS[name]


def export_verified(model, name: str, test_split, labels_to_model: np.ndarray, workdir: Path,
                    train_split=None, logger=log) -> Export:
    """Convert `model` to the named format in `workdir`, run it on the test split beside the Keras
    model, and return it with its metadata entry; ExportError (with the numbers) if it fails the
    check. `labels_to_model` maps the split's labels to the model's class indices; int8 also needs
    the train split, whose images calibrate the quantisation."""
    spec = export_spec(name)
    check_ready(spec)
    if spec.int8 and train_split is None:
        raise ExportError("an int8 export calibrates on train images, and none were given: pass the "
                          "version's train split (a dataset prepared with one)")
    path = Path(workdir) / f"model{spec.suffix}"
    started = time.monotonic()
    details = convert(model, spec, path, train_split)
    seconds = time.monotonic() - started
    loaded = load(spec, path)
    check = verify(model, loaded.run, test_split, labels_to_model)
    problem = check.problem(spec)
    if problem:
        raise ExportError(f"the {name} export failed its check on {check.images} test images: {problem} "
                          f"(agreement {check.agreement:.4f}, max probability difference "
                          f"{check.max_prob_diff:.2e}); it was not published. Leave {name} out of --export "
                          "and serve the .keras artifact or the SavedModel instead, or try again with "
                          f"another converter or runtime than {_versions((*spec.converter, spec.runtime))}")
    logger.info("%s export: %d bytes in %.1f s; on %d test images agreement %.4f, max probability "
                "difference %.2e, accuracy %.4f (Keras %.4f)", name, path.stat().st_size, seconds,
                check.images, check.agreement, check.max_prob_diff, check.export_accuracy,
                check.keras_accuracy)
    return Export(path, entry(spec, path, check, details, seconds, model, loaded))


def check_ready(spec: ExportSpec) -> None:
    """Fail before any work when the converter or runtime is missing, or Keras runs on JAX."""
    import keras

    check_installed([spec.name])
    if keras.backend.backend() != "tensorflow":
        raise ExportError(f"ONNX and LiteRT exports are converted through TensorFlow, but KERAS_BACKEND is "
                          f"{keras.backend.backend()!r}: run with KERAS_BACKEND=tensorflow (the default)")


def check_installed(names: list[str], label: str = "export") -> None:
    """Refuse formats whose converter or runtime is not installed: before a run trains for them."""
    packages = [package for name in names for package in (*SPECS[name].converter, SPECS[name].runtime)]
    missing = sorted(package for package, version in _versions(tuple(packages)).items()
                     if version == "not installed")
    if missing:
        raise ExportError(f"{label} {','.join(names)} needs {', '.join(missing)}, which is not installed: "
                          f"pip install 'transferflow[export]', or leave {label} out")


def convert(model, spec: ExportSpec, path: Path, train_split=None) -> dict:
    """Write the export to `path`; returns what the conversion recorded (opset, quantisation)."""
    from transferflow.tflogs import fd2_captured

    root = logging.getLogger()
    handlers = list(root.handlers)
    try:  # converters print their passes to file descriptor 2: shown only if they fail
        with warnings.catch_warnings(), fd2_captured():
            warnings.simplefilter("ignore", FutureWarning)  # tf2onnx's, about NumPy aliases
            if spec.name == "onnx":
                return _to_onnx(model, path)
            return _to_litert(model, path, representative_images(train_split) if spec.int8 else None)
    except Exception as exc:  # a converter's own error: say which format and which versions
        raise ExportError(f"converting the model to {spec.name} failed: {type(exc).__name__}: "
                          f"{str(exc)[:500]} (with {_versions(spec.converter)}); nothing was "
                          "published") from exc
    finally:  # TFLiteConverter logs through the root logger, which sets up a handler on it (basicConfig)
        root.handlers[:] = handlers  # that would print every later log line twice


def _to_onnx(model, path: Path) -> dict:
    import onnx
    import tensorflow as tf

    size = model.input_shape[1]  # a signature given: a model loaded but never called exports too
    model.export(str(path), format="onnx", verbose=False,
                 input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="image")])
    proto = onnx.load(str(path), load_external_data=False)
    opset = next((item.version for item in proto.opset_import if item.domain in ("", "ai.onnx")), None)
    return {"path": "keras Model.export(format='onnx'): tf2onnx from the TensorFlow graph",
            "producer": f"{proto.producer_name} {proto.producer_version.split()[0]}", "opset": opset}


def _to_litert(model, path: Path, representative=None) -> dict:
    """TensorFlow's documented Keras 3 route: a SavedModel of the model's call, then TFLiteConverter
    (what Model.export(format="litert") does, without depending on how it passes options on)."""
    import tempfile

    import keras
    import tensorflow as tf

    size = model.input_shape[1]
    with tempfile.TemporaryDirectory() as tmp:
        archive = keras.export.ExportArchive()
        archive.track_and_add_endpoint("serve", model, [tf.TensorSpec([None, size, size, 3], tf.float32,
                                                                      name="image")])
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        quantization = "none (float32)"
        if representative is not None:  # int8 inside, float32 input and output
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            quantization = (f"int8 weights and activations, ranges from {REPRESENTATIVE_IMAGES} train "
                            "images; float32 input and output")
        path.write_bytes(converter.convert())
    return {"path": "keras ExportArchive SavedModel -> tf.lite.TFLiteConverter, builtin ops only",
            "quantization": quantization}


def representative_images(train_split, count: int = REPRESENTATIVE_IMAGES):
    """The converter's representative_dataset: `count` train images, shuffled with a fixed seed so
    every class is likely among them, one at a time."""
    from transferflow.training.fit import split_dataset

    def images():
        for x, _ in split_dataset(train_split, 1, True, 0).take(count).as_numpy_iterator():
            yield [x]

    return images


def load(spec: ExportSpec, path: Path) -> Loaded:
    """The export opened with its own runtime (never TensorFlow's)."""
    if spec.name == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        given, answer = session.get_inputs()[0].name, session.get_outputs()[0].name
        return Loaded(lambda x: session.run([answer], {given: x})[0], given, answer)
    return _litert(path)


def _litert(path: Path) -> Loaded:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    given, answer = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    shape: list = [None]

    def run(x: np.ndarray) -> np.ndarray:
        if shape[0] != x.shape:  # the batch dimension is dynamic: size the tensors for this batch
            interpreter.resize_tensor_input(given["index"], x.shape)
            interpreter.allocate_tensors()
            shape[0] = x.shape
        interpreter.set_tensor(given["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(answer["index"]).copy()

    return Loaded(run, given["name"], answer["name"])


def verify(model, run: Runner, split, labels_to_model: np.ndarray) -> Check:
    """Run the Keras model and the export on the same batches of a split and compare them."""
    from transferflow.training.fit import split_dataset

    keras_answers, export_answers, labels = [], [], []
    for x, y in split_dataset(split, BATCH, False, 0).as_numpy_iterator():
        x = np.ascontiguousarray(x, np.float32)
        keras_answers.append(np.asarray(model.predict_on_batch(x), np.float32))
        export_answers.append(np.asarray(run(x), np.float32))
        labels.append(labels_to_model[y])
    if not labels:
        raise ExportError("the test split holds no images: an export cannot be checked without them; "
                          "register the version from a dataset with a test split")
    return compare(np.concatenate(keras_answers), np.concatenate(export_answers), np.concatenate(labels))


def compare(reference: np.ndarray, exported: np.ndarray, labels: np.ndarray) -> Check:
    """The numbers of a Check from two models' probabilities on the same labelled images."""
    top_reference, top_exported = reference.argmax(axis=1), exported.argmax(axis=1)
    return Check(images=len(labels), agreement=float(np.mean(top_reference == top_exported)),
                 max_prob_diff=float(np.max(np.abs(reference - exported))),
                 keras_accuracy=float(np.mean(top_reference == labels)),
                 export_accuracy=float(np.mean(top_exported == labels)))


def entry(spec: ExportSpec, path: Path, check: Check, details: dict, seconds: float, model,
          loaded: Loaded) -> dict:
    """The export's metadata entry: its bytes, how it was made and run, and its check."""
    size, classes = model.input_shape[1], model.output_shape[-1]
    return {
        "format": spec.name, "size": path.stat().st_size, "sha256": storage.sha256_file(path),
        "converter": {**details, "versions": _versions(spec.converter)},
        "runtime": _versions((spec.runtime,)),
        "inputs": {loaded.input_name: f"float32 [batch, {size}, {size}, 3]: RGB pixel values 0-255, "
                                      "decoded and resized as training does (as `transferflow predict`)"},
        "outputs": {loaded.output_name: f"float32 [batch, {classes}]: class probabilities, in the order "
                                        "of metadata classes"},
        "verification": {
            "split": "test", "images": check.images, "agreement": check.agreement,
            "max_prob_diff": check.max_prob_diff, "keras_accuracy": check.keras_accuracy,
            "accuracy": check.export_accuracy, "accuracy_change": check.accuracy_change,
            "required": ({"max_accuracy_drop": MAX_INT8_ACCURACY_DROP} if spec.int8 else
                         {"min_agreement": MIN_AGREEMENT, "max_prob_diff": MAX_PROB_DIFF}),
        },
        "conversion_seconds": round(seconds, 2),
    }


def _versions(packages: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for package in packages:
        try:
            found[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def export_registered(reference: str, name: str, logger=log) -> dict:
    """`models export`: convert a registered version's verified artifact, check it on the version's
    own test split (its recorded prepared dataset), then add it to the version: uploaded and
    verified before metadata.json lists it. Returns the entry as listed."""
    import tempfile

    from transferflow.data import load_prepared, ref_for
    from transferflow.judging.evaluation import label_map
    from transferflow.registry import Registry
    from transferflow.training import model as modeling

    spec = export_spec(name)
    check_ready(spec)
    registry = Registry()
    model_name, version = registry.resolve(reference)
    registry.export_slot(model_name, version, spec.name)  # already there: say so before converting
    meta = registry.record(model_name, version)
    if not meta.dataset.prepared_uri:
        raise ExportError(f"{model_name}:{version} records no prepared dataset (metadata dataset."
                          "prepared_uri), so there is no test split to check an export on: register "
                          "the version again with --export")
    dataset = ref_for(meta.dataset.prepared_uri)
    prepared = load_prepared(dataset)
    model = modeling.load_model(f"{model_name}:{version}")  # size and sha256 checked first
    mapping = label_map(dataset.class_names, meta.classes, dataset.source)
    with tempfile.TemporaryDirectory() as tmp:
        made = export_verified(model, spec.name, prepared.splits["test"], mapping, Path(tmp),
                               prepared.splits.get("train"), logger)
        return registry.add_export(model_name, version, spec.name, made.path, made.entry)
