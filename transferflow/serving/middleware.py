"""The layers every request passes before its endpoint, outermost first: metrics (Observe), the
bearer token (BearerAuth), admission (Admission: at most so many model requests at once), the
body size limit (BodyLimit). Plain ASGI, so they cost a few
attribute reads per request and never buffer a body."""

from __future__ import annotations

import hmac
import time

from starlette.responses import JSONResponse
from starlette.routing import Match

from transferflow.errors import RequestError
from transferflow.serving.batcher import overloaded
from transferflow.serving.metrics import ServeMetrics

ENDPOINT = "transferflow.endpoint"  # the scope key Observe puts the endpoint's label under
OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # probes: a kubelet or load balancer has no token


def endpoint_of(scope) -> str:
    return scope.get(ENDPOINT, "unmatched")


async def refuse(error: RequestError, metrics: ServeMetrics, scope, receive, send, headers=None) -> None:
    """Answer with the error as TF Serving does ({"error": message}) and count it."""
    metrics.errors.labels(endpoint_of(scope), error.kind).inc()
    response = JSONResponse({"error": str(error)}, status_code=error.status, headers=headers or error.headers)
    await response(scope, receive, send)


class Observe:
    """Labels the request with its route's path template (bounded: a scanner's random paths all
    count as "unmatched"), then counts its status and times it."""

    def __init__(self, app, metrics: ServeMetrics, routes):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope[ENDPOINT] = self.label(scope)
        started, status = time.perf_counter(), 500

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.observe(scope[ENDPOINT], status, time.perf_counter() - started)

    def label(self, scope) -> str:
        """The path template of the route that takes this request (or takes this path with another
        method), else "unmatched"."""
        matches = [(route.matches(scope)[0], route.path) for route in self.routes]
        for wanted in (Match.FULL, Match.PARTIAL):
            found = next((path for match, path in matches if match == wanted), None)
            if found:
                return found
        return "unmatched"


class BearerAuth:
    """With a token set, every request but the probes needs `Authorization: Bearer TOKEN`. The
    comparison takes the same time wherever the first wrong byte is (hmac.compare_digest)."""

    def __init__(self, app, token: str | None, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics
        self.token = token.encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.token is None or scope["path"] in OPEN_PATHS or self._valid(scope):
            return await self.app(scope, receive, send)
        error = RequestError("missing or wrong bearer token: send the header `Authorization: Bearer $TOKEN` "
                             "with the token this server was started with (TRANSFERFLOW_SERVE_TOKEN)",
                             status=401, kind="unauthorized")
        await refuse(error, self.metrics, scope, receive, send, headers={"WWW-Authenticate": "Bearer"})

    def _valid(self, scope) -> bool:
        header = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        scheme, _, given = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)


class BodyLimit:
    """Refuses a body over max_bytes: at once when Content-Length says so, otherwise as soon as the
    bytes received pass the limit (chunked uploads), before the rest is read."""

    def __init__(self, app, max_bytes: int, metrics: ServeMetrics):
        self.app, self.max_bytes, self.metrics = app, max_bytes, metrics

    def error(self, size: str) -> RequestError:
        return RequestError(f"the request body is {size}, over this server's limit of "
                            f"{self.max_bytes / 2**20:g} MiB (--max-body-mb); send fewer or smaller images "
                            "per request", status=413, kind="payload_too_large")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await refuse(self.error(f"{int(declared)} bytes"), self.metrics, scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # raised inside the endpoint's read: its handler answers 413
                raise self.error(f"over {received} bytes")
            return message

        await self.app(scope, limited, send)


class Admission:
    """At most `limit` requests to the model endpoints (:predict, :classify) at once, from the
    first byte read to the answer; one more is refused at once (429, Retry-After) before its body
    is read, so a burst costs neither memory nor an ever longer wait. Probes, metrics and the
    model status are never refused."""

    def __init__(self, app, limit: int, metrics: ServeMetrics):
        self.app, self.limit, self.metrics = app, limit, metrics
        self.inflight = 0  # changed on the event loop only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].endswith((":predict", ":classify")):
            return await self.app(scope, receive, send)
        if self.inflight >= self.limit:
            error = overloaded(f"the server is busy: {self.inflight} requests in progress "
                               f"(--max-inflight {self.limit})")
            return await refuse(error, self.metrics, scope, receive, send)
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
