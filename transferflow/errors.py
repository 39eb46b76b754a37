"""The error types users see. Every message names the input at fault and the fix."""


class TransferflowError(Exception):
    """Base class: anything transferflow raises on purpose."""


class ConfigError(TransferflowError):
    """A parameter is invalid."""


class DatasetError(TransferflowError):
    """The dataset is missing, malformed, or cannot be downloaded."""


class DownloadError(DatasetError):
    """A download failed after its retries (network, server); worth retrying later."""


class ChecksumError(DownloadError):
    """Downloaded bytes do not match the expected checksum; they were discarded."""


class PermanentError(TransferflowError):
    """Mixed into errors that retrying cannot heal (unknown host, HTTP 404/403, the same wrong
    bytes twice): retry policies fail these at once."""


class PermanentDownloadError(DownloadError, PermanentError):
    """The origin refused for good: its host does not resolve, or it answered 4xx."""


class PermanentChecksumError(ChecksumError, PermanentError):
    """Two downloads gave the same wrong bytes: the source serves them, a retry gets them again."""


class WeightsError(TransferflowError):
    """Backbone weights are missing or do not fit the backbone."""


class StorageError(TransferflowError):
    """Object storage is unreachable or refused a request."""


class RegistryError(TransferflowError):
    """A model, version or alias is missing or a registry write conflicted."""


class TrainingError(TransferflowError):
    """Training diverged or produced an unusable model."""


class CLIError(TransferflowError):
    """A command line that cannot be carried out as given (a missing --yes, a bad --top-k)."""


class RequestError(TransferflowError):
    """A request that `transferflow serve` refuses: bad input, too large, unknown model, no token.

    `status` is the HTTP status it is answered with (4xx: the client's fault, fixable by it; 429:
    the server is busy, retry later; 503: no model loaded yet), `kind` the label it is counted
    under in /metrics.
    """

    def __init__(self, message: str, status: int = 400, kind: str = "bad_request",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.headers = headers  # e.g. Retry-After on a 429


class ExportError(TransferflowError):
    """A portable export (ONNX, LiteRT) could not be made, or did not answer as the Keras model
    does on the test split: it is not published."""


class MonitoringError(TransferflowError):
    """Serving windows or a version's reference are missing or cannot be compared."""
