"""The classifier: the backbone's own preprocessing, the frozen backbone, a new head.

Built from Keras 3 layers and keras.ops only, so it also runs under KERAS_BACKEND=jax.
The model takes raw RGB pixel values (0-255); preprocessing is inside it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import keras
import numpy as np

from transferflow.training.backbones import BackboneSpec, get_spec

BACKBONE_LAYER = "backbone"
STANDARDIZE_LAYER = "standardize"


@keras.saving.register_keras_serializable(package="transferflow")
class BackbonePreprocess(keras.layers.Layer):
    """Applies the named backbone's keras.applications preprocess_input."""

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self._preprocess = get_spec(backbone).preprocess_input()

    def call(self, inputs):
        return self._preprocess(keras.ops.cast(inputs, self.compute_dtype))

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone}


@keras.saving.register_keras_serializable(package="transferflow")
class Standardize(keras.layers.Layer):
    """(features - mean) * scale per feature, with statistics measured on the training features,
    never learned.

    Pooled backbone features come in whatever scale the backbone has (VGG16's reach the
    hundreds), so a new softmax head starts with a loss of 8-10 and needs many epochs to
    recover. Standardised, every backbone gives the head inputs of unit scale: its loss starts
    near log(classes) and Adam's usual 1e-3 converges in a few epochs. The statistics are weights
    of the model, so the registered model still takes raw pixels.
    """

    def build(self, input_shape):
        dim = input_shape[-1]
        self.mean = self.add_weight(name="mean", shape=(dim,), initializer="zeros", trainable=False)
        self.scale = self.add_weight(name="scale", shape=(dim,), initializer="ones", trainable=False)

    def call(self, inputs):
        return (inputs - keras.ops.cast(self.mean, inputs.dtype)) * keras.ops.cast(self.scale, inputs.dtype)

    def adapt_to(self, features: np.ndarray) -> np.ndarray:
        """Set the statistics from training features (N, dim); returns them standardised.

        The variance gets a floor of 1% of the mean variance, so that a channel that is nearly
        constant on the training images (a dead ReLU, say) is not blown up on new ones.
        """
        features = np.asarray(features, np.float64)
        mean, variance = features.mean(axis=0), features.var(axis=0)
        scale = 1.0 / np.sqrt(variance + 0.01 * variance.mean() + 1e-12)
        self.set_weights([mean.astype(np.float32), scale.astype(np.float32)])
        return self.standardized(features)

    def standardized(self, features: np.ndarray) -> np.ndarray:
        """The layer's transform in float32 NumPy, whatever the model's compute precision."""
        mean, scale = self.get_weights()
        return ((np.asarray(features, np.float32) - mean) * scale).astype(np.float32)


def augmentation() -> keras.Sequential:
    """Random flip, rotation, zoom and contrast: active in training only, identity at inference."""
    return keras.Sequential([
        keras.layers.RandomFlip("horizontal"),
        keras.layers.RandomRotation(0.1),
        keras.layers.RandomZoom(0.1),
        keras.layers.RandomContrast(0.1, value_range=(0, 255)),
    ], name="augment")


def build_classifier(base: keras.Model, spec: BackboneSpec, num_classes: int,
                     dropout: float, augment: bool = False) -> keras.Model:
    """raw pixels -> [augment] -> preprocess -> frozen backbone (training=False) -> pool ->
    standardize -> dropout -> softmax. The softmax layer is float32 under any mixed-precision
    policy. Set the standardize layer's statistics (`Standardize.adapt_to`) before training."""
    base.trainable = False
    base.name = BACKBONE_LAYER
    size = base.input_shape[1]
    inputs = keras.Input(shape=(size, size, 3), name="image")
    x = augmentation()(inputs) if augment else inputs
    x = BackbonePreprocess(spec.name, name="preprocess")(x)
    # training=False keeps BatchNorm layers in inference mode, even when unfrozen later.
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = Standardize(name=STANDARDIZE_LAYER)(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                 name="classifier")(x)
    return keras.Model(inputs, outputs, name=f"{spec.name}_classifier")


def unfreeze_top_blocks(model: keras.Model, spec: BackboneSpec, blocks: int | str) -> list[str]:
    """Make the backbone's last `blocks` blocks (or "all") trainable; returns the unfrozen layers.

    BatchNorm layers stay frozen: their statistics are not meant for small datasets, and the
    backbone is called with training=False, so they also stay in inference mode.
    """
    base = model.get_layer(BACKBONE_LAYER)
    top = ("",) if blocks == "all" else spec.blocks[-blocks:]
    base.trainable = True
    unfrozen = []
    for layer in base.layers:
        wanted = layer.name.startswith(top) and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = wanted
        if wanted and layer.weights:
            unfrozen.append(layer.name)
    if not unfrozen:
        from transferflow.errors import ConfigError

        raise ConfigError(f"fine_tune_blocks={blocks} unfreezes no weights of {spec.name} "
                          f"(blocks {list(top)}); raise fine_tune_blocks")
    return unfrozen


def rebuild_classifier(model: keras.Model, policy: str | None = None) -> keras.Model:
    """The same architecture and weights under another dtype policy (default: the current one),
    created in the current distribution scope.

    A model keeps the dtype policy it was built or saved with. Rebuilding from its own config
    lets a float32 artifact fine-tune in mixed precision, and a mixed-precision model be saved
    as float32, without touching its structure. The classifier layer stays float32.
    """
    policy = policy or keras.config.dtype_policy().name
    config = _with_policy(keras.saving.serialize_keras_object(model), policy)
    fresh = keras.saving.deserialize_keras_object(config)
    fresh.set_weights(model.get_weights())
    for layer in fresh._flatten_layers():
        if isinstance(layer, keras.layers.Normalization):
            layer.finalize_state()  # it computes from copies of its weights; set_weights alone is ignored
    return fresh


def _with_policy(node, policy: str):
    """A copy of a serialized model with every layer's DTypePolicy set to `policy`, except the
    float32 classifier's."""
    if isinstance(node, list):
        return [_with_policy(item, policy) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("class_name") == "DTypePolicy":
        return {**node, "config": {**node["config"], "name": policy}}
    layer_config = node.get("config")
    if isinstance(layer_config, dict) and layer_config.get("name") == "classifier":
        return node
    return {key: _with_policy(value, policy) for key, value in node.items()}


def export_savedmodel(model: keras.Model, directory) -> dict:
    """Export a TensorFlow SavedModel for TF Serving and KServe; returns its signatures' description.

    `serving_default` takes resized pixels (as it always has); `serving_bytes` takes encoded images,
    so clients post JPEG/PNG files and the server decodes and resizes them exactly as training did.
    The SavedModel is TensorFlow's format, so this is the one place model code uses tf.* ops.
    """
    import tensorflow as tf

    size, classes = model.input_shape[1], model.output_shape[-1]
    archive = keras.export.ExportArchive()
    archive.track_and_add_endpoint("serve", model, [tf.TensorSpec([None, size, size, 3], tf.float32,
                                                                  name="image")])
    decode = serving_decoder(size)
    archive.add_endpoint("serving_bytes",
                         lambda image_bytes: {"probabilities": model(decode(image_bytes), training=False)},
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.write_out(str(directory), verbose=False)
    probabilities = f"float32 [batch, {classes}]: class probabilities, in the order of metadata classes"
    pixels = {"inputs": {"image": f"float32 [batch, {size}, {size}, 3]: RGB pixel values 0-255, already "
                                  f"resized to {size}x{size} (the model normalises them itself)"},
              "outputs": {"output_0": probabilities}}
    encoded = {"inputs": {"image_bytes": "string [batch]: encoded JPEG, PNG, BMP or GIF files (TF Serving "
                                         'REST: {"b64": ...}), decoded and resized to '
                                         f"{size}x{size} exactly as training did"},
               "outputs": {"probabilities": probabilities}}
    return {"format": "tf_saved_model", "signature": "serving_default", **pixels,
            "signatures": {"serving_default": pixels, "serving_bytes": encoded}}


def serving_decoder(size: int):
    """A TF function: a batch of encoded images -> float32 [batch, size, size, 3] pixels, with the
    plan decode_images makes per file (JPEG DCT scale from the header, then antialias or not)
    chosen in-graph, and the very decode-and-resize op it runs."""
    import tensorflow as tf

    from transferflow.data.decode import _decode_resize

    plans = [(ratio, antialias) for ratio in (1, 2, 4, 8) for antialias in (False, True)]

    def jpeg(contents):
        smallest = tf.reduce_min(tf.image.extract_jpeg_shape(contents)[:2])
        ratio = tf.constant(1)
        for scale in (2, 4, 8):  # the largest scale the image still covers size * scale pixels at
            ratio = tf.where(smallest >= size * scale, scale, ratio)
        antialias = tf.cast(smallest, tf.float64) / tf.cast(ratio, tf.float64) >= 2 * size
        index = tf.argmax(tf.cast(tf.equal(ratio, [1, 2, 4, 8]), tf.int32), output_type=tf.int32)
        return tf.switch_case(2 * index + tf.cast(antialias, tf.int32),
                              [lambda r=r, a=a: _decode_resize(contents, size, r, a) for r, a in plans])

    def one(contents):
        image = tf.cond(tf.io.is_jpeg(contents), lambda: jpeg(contents),
                        lambda: _decode_resize(contents, size, 0, None))
        return tf.cast(tf.ensure_shape(image, [size, size, 3]), tf.float32)

    return lambda batch: tf.map_fn(one, batch, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))


def load_model(reference: str) -> keras.Model:
    """A registered version ("name", "name:3", "name@production"), its downloaded bytes checked
    against the recorded size and sha256 before Keras sees them, loaded with safe_mode on."""
    from transferflow.registry import verified_download

    return load_classifier(str(verified_download(reference)))


def load_classifier(path: str) -> keras.Model:
    """Load a saved classifier with Keras safe mode on (no arbitrary code)."""
    return keras.models.load_model(path, safe_mode=True)


def save_to(model: keras.Model, uri: str) -> tuple[str, int]:
    """Save a model as .keras to an s3:// URI; returns its (sha256, size). The file stays in the local
    cache, so that the run's next stage loads it without downloading it again."""
    from transferflow import localcache, storage

    location = storage.parse_s3_uri(uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        digest, size = storage.sha256_file(path), path.stat().st_size
        storage.upload_file(path, location.bucket, location.key)
        localcache.keep_uploaded(path, location.bucket, location.key)
    return digest, size


def load_from(uri: str) -> keras.Model:
    """Load a .keras model from an s3:// URI (cached locally by ETag)."""
    from transferflow import localcache

    return load_classifier(str(localcache.cached_download(uri)))
