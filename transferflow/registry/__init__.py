"""The model registry in object storage. This package imports neither TensorFlow nor Prefect.

    layout       every key under the bucket (models/<name>/versions/..., aliases/...)
    documents    the typed JSON documents: version metadata, alias documents, claims
    versions     register: reserve a number, copy and verify, publish the metadata
    exports      add a verified ONNX/LiteRT export to a registered version (conditional metadata write)
    references   a version's monitoring reference: read verified, or added later (conditional metadata write)
    aliases      move, promote, rollback; the alias history as an undo stack
    maintenance  delete and gc
    reads        names, versions, metadata, aliases, history, resolve, verified pull (artifact or export)
    compare      `models diff`
"""

from transferflow.registry.aliases import ANY, version_stack
from transferflow.registry.compare import HEADLINE_METRICS, flatten, headline_metrics
from transferflow.registry.documents import (
    SCHEMA_VERSION,
    AliasDocument,
    Claim,
    HistoryEntry,
    Registration,
    TrainingRecord,
    VersionMetadata,
    actor,
    history_entries,
    now,
    now_precise,
)
from transferflow.registry.layout import (
    ALIAS_RE,
    ARTIFACT,
    ARTIFACT_KEY_RE,
    EXPORT_SUFFIXES,
    KERAS,
    MODELS,
    REF_RE,
    ModelVersion,
)
from transferflow.registry.registry import Registry, verified_download
from transferflow.registry.versions import LIBRARIES, MAX_RACE_ATTEMPTS, library_versions

__all__ = [
    "ALIAS_RE", "ANY", "ARTIFACT", "ARTIFACT_KEY_RE", "EXPORT_SUFFIXES", "HEADLINE_METRICS", "KERAS",
    "LIBRARIES", "MAX_RACE_ATTEMPTS",
    "MODELS", "REF_RE", "SCHEMA_VERSION", "AliasDocument", "Claim", "HistoryEntry", "ModelVersion",
    "Registration", "Registry", "TrainingRecord", "VersionMetadata", "actor", "flatten", "headline_metrics",
    "history_entries", "library_versions", "now", "now_precise", "verified_download", "version_stack",
]
