"""The HTTP API: TF Serving's REST endpoints, :classify for encoded images, probes and metrics.

Every refusal is {"error": message} (TF Serving's form) with a 4xx status (429 with Retry-After
when the server is full); 503 while no model is loaded yet or the batcher stopped; 500 for a
fault of the server or the model itself.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from transferflow.errors import RequestError
from transferflow.serving.batcher import MicroBatcher
from transferflow.serving.health import ServingHealth
from transferflow.serving.inputs import RAW_BODY, Upload, decode_upload, pixels_from_json, top_labels
from transferflow.serving.metrics import ServeMetrics
from transferflow.serving.middleware import Admission, BearerAuth, BodyLimit, Observe, endpoint_of
from transferflow.serving.versions import ModelSlot, ServedVersion
from transferflow.serving.watch import Watch

log = logging.getLogger(__name__)

MAX_FILES = 256  # images in one multipart :classify request
RAW_TYPES = ("image/", "application/octet-stream")  # bodies taken as one encoded image
VERSION_HEADER = "X-Model-Version"
DECODE_THREADS = 4  # parsing and decoding at once: bounds the memory a burst of large images takes


@dataclass
class ServeSettings:
    """The knobs of `transferflow serve` (its flags); the token comes from the environment."""

    host: str = "127.0.0.1"
    port: int = 8501
    max_batch: int = 32
    max_wait_ms: float = 5.0
    poll_seconds: float = 10.0
    max_body_mb: float = 32.0
    max_megapixels: float = 40.0
    max_queue: int = 256  # images waiting for the model; more: 429
    max_inflight: int = 64  # model requests being read, decoded or answered at once; more: 429
    stale_after_s: float = 300.0  # behind the alias this long (a version that fails to load): unready
    token: str | None = field(default=None, repr=False)
    # Monitoring and feedback (transferflow.serving.watch): windows on unless record is off.
    record: bool = True
    window_seconds: float = 3600.0
    window_requests: int = 10_000
    capture_rate: float = 0.0
    capture_below: float = 0.0


@dataclass
class ServerState:
    """What the endpoints share: the model name, its slot and health, the batcher, metrics, the
    decode threads."""

    name: str
    settings: ServeSettings
    slot: ModelSlot = field(default_factory=ModelSlot)
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    batcher: MicroBatcher | None = None
    health: ServingHealth | None = None
    decoders: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode"))
    watch: Watch | None = None  # monitoring windows and feedback capture; None: off

    def __post_init__(self):
        if self.batcher is None:
            self.batcher = MicroBatcher(self.settings.max_batch, self.settings.max_wait_ms / 1000,
                                        on_batch=self.metrics.batch_size.observe,
                                        max_queue=self.settings.max_queue)
        if self.health is None:
            self.health = ServingHealth(self.settings.stale_after_s)

    def serving(self, name: str) -> ServedVersion:
        """The version to answer a request for `name` with, taken once for the whole request."""
        if name != self.name:
            raise RequestError(f"model {name!r} is not served here; this server serves {self.name!r} "
                               f"(POST /v1/models/{self.name}:predict or :classify)", status=404,
                               kind="unknown_model")
        served = self.slot.current
        if served is None:
            raise RequestError(f"{self.name} is still loading; retry once /readyz answers 200", status=503,
                               kind="not_ready")
        return served

    def observed(self, served: ServedVersion, outputs: np.ndarray, received, endpoint: str) -> np.ndarray:
        """The probabilities of a model call's outputs, after the watch (if on) has seen them."""
        return self.watch.observe(served, outputs, received, endpoint) if self.watch else outputs

    async def in_decoders(self, function, *args):
        """Run CPU-bound parsing or decoding off the event loop, in a bounded pool (memory too)."""
        return await asyncio.get_running_loop().run_in_executor(self.decoders, function, *args)


def create_app(state: ServerState, lifespan=None) -> FastAPI:
    """The app over a state; `lifespan` starts and stops what runs beside it (batcher, follower).
    No OpenAPI pages: a model server exposes only its API."""
    app = FastAPI(title="transferflow serve", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    add_probe_routes(app, state)
    add_model_routes(app, state)
    add_error_handlers(app, state.metrics)
    settings = state.settings
    app.add_middleware(BodyLimit, max_bytes=int(settings.max_body_mb * 2**20), metrics=state.metrics)
    app.add_middleware(Admission, limit=settings.max_inflight, metrics=state.metrics)
    app.add_middleware(BearerAuth, token=settings.token, metrics=state.metrics)
    app.add_middleware(Observe, metrics=state.metrics, routes=app.routes)  # added last: outermost
    return app


def add_probe_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/healthz")
    async def healthz():
        """Liveness: the process answers."""
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz():
        """Readiness: a verified, warmed-up version answers, the batcher runs, and the server is
        not stuck behind its alias beyond the grace period (see serving/health.py)."""
        status, body = state.health.readiness(state.name, state.slot.current, state.batcher.running)
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    async def metrics():
        """Prometheus text, from the server's own registry."""
        return Response(state.metrics.text(), media_type=state.metrics.content_type)


def add_model_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/v1/models/{name}")
    async def model_status(name: str):
        """TF Serving's model status: the version answering (AVAILABLE), and one loading (LOADING)
        or one that failed to load (END, with its error), if any."""
        if name != state.name:
            state.serving(name)  # the 404, naming the model that is served
        return {"model_version_status": state.health.version_states(state.slot)}

    @app.post("/v1/models/{name}:predict")
    async def predict(name: str, request: Request):
        """TF Serving's predict: {"instances": [pixels, ...]} -> {"predictions": [probabilities, ...]}."""
        served = state.serving(name)
        with state.batcher.admitted():
            body = await request.body()
            pixels, key = await state.in_decoders(pixels_from_json, body, served.image_size)
        probabilities = state.observed(served, await state.batcher.predict(served, pixels), pixels, "predict")
        return JSONResponse({key: probabilities.tolist()}, headers={VERSION_HEADER: str(served.version)})

    @app.post("/v1/models/{name}:classify")
    async def classify(name: str, request: Request, top_k: int = 3):
        """Encoded images (one raw body, or multipart files) -> top-k labels and the version."""
        served = state.serving(name)
        if top_k < 1:
            raise RequestError(f"top_k={top_k}: ask for at least one label (?top_k=3)", kind="bad_query")
        with state.batcher.admitted():
            uploads = await read_uploads(request)
            images = await state.in_decoders(decode_all, uploads, served.image_size,
                                             int(state.settings.max_megapixels * 1e6))
        probabilities = state.observed(served, await state.batcher.predict(served, images.astype(np.float32)),
                                       uploads, "classify")
        k = min(top_k, len(served.classes))
        predictions = [{"image": upload.name, "top": top_labels(row, served.classes, k)}
                       for upload, row in zip(uploads, probabilities, strict=True)]
        return JSONResponse({"model": served.name, "version": served.version, "predictions": predictions},
                            headers={VERSION_HEADER: str(served.version)})


async def read_uploads(request: Request) -> list[Upload]:
    """The images of a :classify request: the whole body (image/* or octet-stream), or every
    file of a multipart/form-data body, in order."""
    content_type = request.headers.get("content-type", "application/octet-stream").lower()
    if content_type.startswith(RAW_TYPES):
        return [Upload(RAW_BODY, await request.body())]
    if not content_type.startswith("multipart/form-data"):
        raise RequestError(f"Content-Type {content_type!r} is not an image: send the bytes with "
                           "`Content-Type: image/jpeg` (or image/png, ...), or several images as "
                           "multipart/form-data files", status=415, kind="not_an_image")
    async with request.form(max_files=MAX_FILES) as form:
        uploads = [Upload(value.filename or key, await value.read())
                   for key, value in form.multi_items() if not isinstance(value, str)]
    if not uploads:
        raise RequestError("the multipart body has no files; attach images as file fields "
                           "(curl -F 'image=@photo.jpg')", kind="no_images")
    return uploads


def decode_all(uploads: list[Upload], image_size: int, max_pixels: int) -> np.ndarray:
    """Every upload decoded, uint8 (n, size, size, 3); the first bad one refuses the request."""
    return np.stack([decode_upload(upload, image_size, max_pixels) for upload in uploads])


def add_error_handlers(app: FastAPI, metrics: ServeMetrics) -> None:
    def answer(request: Request, status: int, kind: str, message: str, headers=None) -> JSONResponse:
        metrics.errors.labels(endpoint_of(request.scope), kind).inc()
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError):
        return answer(request, exc.status, exc.kind, str(exc), exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        message = {404: f"no endpoint {request.url.path}; see /v1/models/NAME:predict, :classify, /healthz, "
                        "/readyz, /metrics"}.get(exc.status_code, str(exc.detail))
        return answer(request, exc.status_code, f"http_{exc.status_code}", message)

    @app.exception_handler(RequestValidationError)
    async def bad_query(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return answer(request, 400, "bad_query", f"bad request parameters: {problems}")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return answer(request, 500, "internal",
                      f"internal error ({type(exc).__name__}); see the server's log")
