"""`transferflow serve`: a registered model behind HTTP, following its alias. Imports no Prefect;
TensorFlow only once a model is loaded.

    versions    the served version (verified, loaded, warmed up) and the slot swapped atomically
    follower    the thread that loads the first version and polls the alias's ETag for moves
    batcher     micro-batching: concurrent requests answered by one model call, off the event loop
    inputs      TF Serving JSON instances and encoded images, checked (shape, header, pixels), decoded
    app         the FastAPI app: /v1/models/NAME (:predict, :classify), /healthz, /readyz, /metrics
    middleware  metrics, bearer token and body limit, as plain ASGI layers
    metrics     the Prometheus metrics, in a registry of their own
    server      uvicorn, the follower and the app put together: serve()
    predict     `transferflow predict`: a registered version on image files, in this process
"""

from transferflow.serving.app import ServerState, ServeSettings, create_app
from transferflow.serving.server import serve

__all__ = ["ServeSettings", "ServerState", "create_app", "serve"]
