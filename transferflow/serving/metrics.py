"""The server's Prometheus metrics, in a registry of its own (not prometheus_client's global one,
which would mix in whatever else the process imported and clash between app instances)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

PREFIX = "transferflow_serve"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    """Requests by endpoint and status, refusals by kind, latency, batch sizes, the served version."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(f"{PREFIX}_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.errors = Counter(f"{PREFIX}_errors", "requests answered with an error, by endpoint and kind "
                              "(not_an_image, too_many_pixels, payload_too_large, bad_shape, unknown_model, "
                              "unauthorized, internal, ...)", ["endpoint", "kind"], registry=self.registry)
        self.latency = Histogram(f"{PREFIX}_request_seconds", "time from request to response, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram(f"{PREFIX}_batch_size", "images per model call", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.version = Gauge(f"{PREFIX}_model_version", "the registered version answering requests",
                             ["model"], registry=self.registry)
        self.swaps = Counter(f"{PREFIX}_swaps", "versions swapped in after the followed alias moved",
                             ["model"], registry=self.registry)
        self.swap_failures = Counter("transferflow_swap_failures", "attempts to load the version the "
                                     "followed alias points at that failed (each retry counts)",
                                     ["model", "version"], registry=self.registry)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)
