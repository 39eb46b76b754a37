"""What requests carry, checked before any model sees it: TF Serving's JSON instances for
:predict, encoded images for :classify (header checked first, then decoded as training does)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from transferflow.data.decode import decode_image_bytes, image_shape
from transferflow.errors import RequestError

INPUT_NAME = "image"  # the SavedModel signature's input, also accepted as a key of each instance
SIGNATURE = "serving_default"


RAW_BODY = "body"  # the name of the image sent as the whole request body


@dataclass(frozen=True)
class Upload:
    """One encoded image from a request: its name (the multipart file name, or "body") and bytes."""

    name: str
    data: bytes

    @property
    def described(self) -> str:
        return "the request body" if self.name == RAW_BODY else f"file {self.name!r}"


def pixels_from_json(body: bytes, image_size: int) -> tuple[np.ndarray, str]:
    """TF Serving's REST request -> float32 pixels (n, size, size, 3), and the key its answer goes
    under: "predictions" for the row format ({"instances": [...]}), "outputs" for the columnar
    one ({"inputs": ...})."""
    document = _json_object(body)
    signature = document.get("signature_name", SIGNATURE)
    if signature != SIGNATURE:
        raise RequestError(f"signature_name {signature!r} does not exist; this model has {SIGNATURE!r}",
                           kind="bad_signature")
    if "instances" in document:
        values, key = [_instance(item) for item in _as_list(document["instances"])], "predictions"
    elif "inputs" in document:
        inputs, key = document["inputs"], "outputs"
        values = inputs[INPUT_NAME] if isinstance(inputs, dict) and INPUT_NAME in inputs else inputs
    else:
        raise RequestError('the body has neither "instances" nor "inputs": send {"instances": [IMAGE, ...]} '
                           f"with each IMAGE a [{image_size}][{image_size}][3] array of RGB values 0-255",
                           kind="bad_json")
    return _pixel_array(values, image_size), key


def _json_object(body: bytes) -> dict:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"the body is not JSON ({exc}); send {{\"instances\": [...]}} with "
                           "Content-Type application/json", kind="bad_json") from None
    if not isinstance(document, dict):
        raise RequestError('the body must be a JSON object such as {"instances": [...]}', kind="bad_json")
    return document


def _as_list(value) -> list:
    if not isinstance(value, list):
        raise RequestError('"instances" must be a list of images', kind="bad_json")
    return value


def _instance(item):
    """An instance is the image itself, or {"image": image} (TF Serving's named-input form)."""
    if not isinstance(item, dict):
        return item
    if set(item) != {INPUT_NAME}:
        raise RequestError(f"instance keys {sorted(item)} are not this model's inputs; its only input is "
                           f"{INPUT_NAME!r}", kind="bad_shape")
    return item[INPUT_NAME]


def _pixel_array(values, image_size: int) -> np.ndarray:
    """float32 (n, size, size, 3), or a RequestError naming the shape or type that was sent."""
    expected = (image_size, image_size, 3)
    try:
        array = np.asarray(values)
    except ValueError:  # NumPy refuses ragged nesting
        raise RequestError(f"the images are ragged (rows of different lengths); each must be "
                           f"[{image_size}][{image_size}][3]", kind="bad_shape") from None
    if array.dtype.kind not in "iuf":
        raise RequestError(f"pixel values must be numbers, not {_kind_name(array.dtype)}; send RGB values "
                           "0-255", kind="bad_dtype")
    if array.ndim != 4 or array.shape[1:] != expected or len(array) == 0:
        sent = f"{list(array.shape[1:])} (a list of {len(array)})" if array.ndim else "a single number"
        raise RequestError(f"the images have shape {sent}; this model takes a list of "
                           f"{list(expected)} arrays: RGB values 0-255, resized to {image_size}x{image_size}",
                           kind="bad_shape")
    pixels = array.astype(np.float32)
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 255:
        raise RequestError("pixel values must be RGB values in 0-255 (the model normalises them itself); "
                           f"got values from {pixels.min():g} to {pixels.max():g}", kind="bad_values")
    return pixels


def _kind_name(dtype: np.dtype) -> str:
    names = {"U": "strings", "S": "strings", "b": "booleans", "O": "mixed or null values"}
    return names.get(dtype.kind, str(dtype))


def decode_upload(upload: Upload, image_size: int, max_pixels: int) -> np.ndarray:
    """An uploaded image as uint8 (size, size, 3), decoded and resized exactly as training decodes
    its files. Its header is read first: anything but JPEG, PNG, GIF or BMP (what training reads)
    is refused, and so is an image whose header claims more pixels than max_pixels, before a
    decoder allocates them (a few KB of PNG can claim gigabytes)."""
    import tensorflow as tf

    shape = image_shape(upload.data)
    if shape is None:
        raise RequestError(f"{upload.described} is not a JPEG, PNG, GIF or BMP image; send one of those",
                           status=415, kind="not_an_image")
    height, width = shape
    if height * width > max_pixels:
        megapixels = height * width / 1e6
        raise RequestError(f"{upload.described} is {width}x{height} pixels ({megapixels:.1f} megapixels), "
                           f"over this server's limit of {max_pixels / 1e6:g} megapixels (--max-megapixels); "
                           "scale it down before sending", status=413, kind="too_many_pixels")
    try:
        return decode_image_bytes(upload.data, image_size)
    except tf.errors.OpError:
        raise RequestError(f"{upload.described} cannot be decoded: truncated or corrupt; send the whole "
                           "file", kind="corrupt_image") from None


def top_labels(probabilities: np.ndarray, classes: list[str], k: int) -> list[dict]:
    """The k most likely classes, most likely first, as {"class", "probability"} (predict's form)."""
    order = np.argsort(probabilities)[::-1][:k]
    return [{"class": classes[i], "probability": float(probabilities[i])} for i in order]
