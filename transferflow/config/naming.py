"""Names that become parts of S3 keys: model names, and the short slug of a dataset URI."""

import hashlib
import re
import unicodedata

MODEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")

# Latin letters that Unicode does not decompose into an ASCII letter plus accents.
_LATIN_LETTERS = str.maketrans({"ß": "ss", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O",
                                "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "ł": "l", "Ł": "L", "þ": "th",
                                "Þ": "TH", "ı": "i"})


def dataset_slug(dataset: str, limit: int = 50) -> str:
    """A key-safe short name from the dataset's last path part, e.g. 'flowers'. Accents fold
    ('données' -> 'donnees'); letters with no ASCII form (Cyrillic, CJK...) become a short hash
    of the name ('ds-1a2b3c4d'), so that different names keep different slugs."""
    stem = dataset.split("#")[0].split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        stem = stem.removesuffix(suffix)
    folded = unicodedata.normalize("NFKD", stem.translate(_LATIN_LETTERS))
    slug = re.sub(r"[^a-z0-9._-]+", "-", folded.encode("ascii", "ignore").decode().lower()).strip("-._")
    if not any(not c.isascii() and unicodedata.category(c)[0] in "LN" for c in folded):
        return slug[:limit] or "dataset"
    tag = hashlib.sha256(unicodedata.normalize("NFC", stem).encode()).hexdigest()[:8]
    return f"{slug[: limit - 9].rstrip('-._') or 'ds'}-{tag}"


def default_model_name(dataset: str, backbone: str) -> str:
    """A registry name from the dataset and backbone, e.g. 'flowers-vgg16' (at most 63 characters)."""
    slug = dataset_slug(dataset, limit=min(50, 62 - len(backbone))).rstrip("-._") or "dataset"
    return f"{slug}-{backbone}"
