"""The classifier: the backbone's own preprocessing, the frozen backbone, a new head.

Built from Keras 3 layers and keras.ops only, so it also runs under KERAS_BACKEND=jax.
The model takes raw RGB pixel values (0-255); preprocessing is inside it.
"""

from __future__ import annotations

import keras

from transferflow.backbones import BackboneSpec, get_spec

BACKBONE_LAYER = "backbone"


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


def build_classifier(base: keras.Model, spec: BackboneSpec, num_classes: int,
                     dropout: float) -> keras.Model:
    """raw pixels -> preprocess -> frozen backbone (training=False) -> pool -> dropout -> softmax."""
    base.trainable = False
    base.name = BACKBONE_LAYER
    size = base.input_shape[1]
    inputs = keras.Input(shape=(size, size, 3), name="image")
    x = BackbonePreprocess(spec.name, name="preprocess")(inputs)
    # training=False keeps BatchNorm layers in inference mode, even when unfrozen later.
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                 name="classifier")(x)
    return keras.Model(inputs, outputs, name=f"{spec.name}_classifier")


def unfreeze_top_blocks(model: keras.Model, spec: BackboneSpec, blocks: int) -> list[str]:
    """Make the backbone's last `blocks` blocks trainable; returns the unfrozen layer names.

    BatchNorm layers stay frozen: their statistics are not meant for small datasets.
    """
    base = model.get_layer(BACKBONE_LAYER)
    top = spec.blocks[-blocks:]
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


def load_classifier(path: str) -> keras.Model:
    """Load a saved classifier with Keras safe mode on (no arbitrary code)."""
    return keras.models.load_model(path, safe_mode=True)


def save_to(model: keras.Model, uri: str) -> tuple[str, int]:
    """Save a model as .keras to an s3:// URI; returns its (sha256, size)."""
    import tempfile
    from pathlib import Path

    from transferflow import storage

    location = storage.parse_s3_uri(uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        digest, size = storage.sha256_file(path), path.stat().st_size
        storage.upload_file(path, location.bucket, location.key)
    return digest, size


def load_from(uri: str) -> keras.Model:
    """Load a .keras model from an s3:// URI (cached locally by ETag)."""
    from transferflow import storage

    return load_classifier(str(storage.cached_download(uri)))
