"""Every key of the registry's layout under the bucket, built here and nowhere else.

    models/<name>/versions/<000001>/claim.json     who reserved the version number; kept as a
                                                   tombstone when the version is deleted, so a
                                                   number is never handed out twice
    models/<name>/versions/<000001>/model.keras    the artifact
    models/<name>/versions/<000001>/exports/<format>-<sha256[:16]>.<suffix>
                                                   a portable export (ONNX, LiteRT), named by its
                                                   content; listed in metadata.json once verified
    models/<name>/versions/<000001>/splits.json.gz the content digest and split of every image it
                                                   trained, validated and was tested on
    models/<name>/versions/<000001>/metadata.json  written last, deleted first: a version exists
                                                   exactly while it does
    models/<name>/aliases/<alias>.json             {"version": N, ..., "history": [every move]},
                                                   moved by conditional write
    models/<name>/golden.json                      the model's golden set: a pinned evaluation dataset
    golden/<name>/<fingerprint[:16]>/...           its stored copy (class folders), written once
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transferflow.config import MODEL_NAME_RE
from transferflow.errors import RegistryError

MODELS = "models"
ARTIFACT = "model.keras"
METADATA = "metadata.json"
MEMBERSHIP = "splits.json.gz"
CLAIM = "claim.json"
EXPORTS = "exports"
# The portable formats (config.ExportFormat's values) and their file suffixes; "keras" is the artifact.
EXPORT_SUFFIXES = {"onnx": ".onnx", "litert": ".tflite", "litert_int8": ".int8.tflite"}
KERAS = "keras"
REF_RE = re.compile(r"^(?P<name>[^:@]+)(?::(?P<version>\d+)|@(?P<alias>[a-z0-9._-]+))?$")
ALIAS_RE = re.compile(r"^[a-z0-9._-]{1,63}$")
ARTIFACT_KEY_RE = re.compile(rf"^{MODELS}/(?P<name>[^/]+)/versions/(?P<version>\d+)/{re.escape(ARTIFACT)}$")


# Every key and file name built from a model name checks it here, so that whatever entry a name
# came in by (CLI, serving, a flow parameter, Python), "/" or ".." never reaches a key or a path.


def versions_prefix(name: str) -> str:
    check_name(name)
    return f"{MODELS}/{name}/versions/"


def aliases_prefix(name: str) -> str:
    check_name(name)
    return f"{MODELS}/{name}/aliases/"


def alias_key(name: str, alias: str) -> str:
    check_alias(alias)
    return f"{aliases_prefix(name)}{alias}.json"


def golden_key(name: str) -> str:
    check_name(name)
    return f"{MODELS}/{name}/golden.json"


def golden_data_prefix(name: str, fingerprint: str) -> str:
    check_name(name)
    return f"golden/{name}/{fingerprint[:16]}"


def export_file(export: str, sha256: str) -> str:
    """Where an export lives inside its version, named by its content: two `models export` runs
    racing on one version can then never overwrite the bytes the other verified and listed."""
    return f"{EXPORTS}/{export}-{sha256[:16]}{EXPORT_SUFFIXES[export]}"


def pulled_name(name: str, version: int, export: str = KERAS) -> str:
    """The local file name `models pull` gives a version's artifact or one of its exports."""
    check_name(name)
    return f"{name}-v{version}{EXPORT_SUFFIXES.get(export, '.keras')}"


def version_of_key(name: str, key: str) -> str:
    """The version folder ('000003') a key under versions_prefix(name) belongs to."""
    return key[len(versions_prefix(name)):].split("/")[0]


def alias_of_key(name: str, key: str) -> str:
    return key[len(aliases_prefix(name)):].removesuffix(".json")


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    bucket: str

    @property
    def prefix(self) -> str:
        return f"{versions_prefix(self.name)}{self.version:06d}"

    def key(self, relative: str) -> str:
        """The key of a file inside this version (relative: 'model.keras', 'savedmodel/...')."""
        return f"{self.prefix}/{relative}"

    @property
    def artifact_key(self) -> str:
        return self.key(ARTIFACT)

    @property
    def metadata_key(self) -> str:
        return self.key(METADATA)

    @property
    def claim_key(self) -> str:
        return self.key(CLAIM)

    @property
    def artifact_uri(self) -> str:
        return f"s3://{self.bucket}/{self.artifact_key}"


def check_name(name: str) -> None:
    if not isinstance(name, str) or not MODEL_NAME_RE.match(name):
        raise RegistryError(f"model name {name!r} is not valid: use 1-63 lowercase letters, digits, '.', "
                            "'_' or '-', starting with a letter or digit (no '/' or '..')")


def parse_reference(reference: str) -> tuple[str, int | None, str | None]:
    """'name', 'name:3' or 'name@production' -> (name, version or None, alias or None), the name
    and alias checked."""
    match = REF_RE.match(reference)
    if not match:
        raise RegistryError(f"{reference!r} is not NAME, NAME:VERSION or NAME@ALIAS "
                            "(e.g. flowers@production)")
    check_name(match["name"])
    if match["alias"]:
        check_alias(match["alias"])
    return match["name"], int(match["version"]) if match["version"] else None, match["alias"]


def check_alias(alias: str) -> None:
    if not ALIAS_RE.match(alias):
        raise RegistryError(f"alias {alias!r} is not valid: use 1-63 lowercase letters, digits, . _ -")
