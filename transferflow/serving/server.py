"""`transferflow serve`: uvicorn running the app, with the follower that loads and swaps versions.

The server listens at once: /healthz answers while the first version downloads, /readyz only
once it is verified and warmed up. A first version that cannot be loaded stops the server with
the reason; a later one that cannot be loaded leaves the current one answering, is retried with
backoff, and shows in the model status, /metrics and (after --stale-after-s) /readyz.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging

from transferflow.errors import RegistryError, TransferflowError
from transferflow.registry import Registry
from transferflow.serving.app import ServerState, ServeSettings, create_app
from transferflow.serving.follower import AliasFollower, Reference
from transferflow.serving.versions import ServedVersion, load_version
from transferflow.serving.watch import watch_for

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S = 10  # on SIGTERM: stop accepting, let requests in flight finish this long


def serve(reference_text: str, settings: ServeSettings) -> None:
    """Serve a registered model until interrupted (SIGINT, SIGTERM); raises when it cannot start."""
    import uvicorn

    reference = Reference.parse(reference_text)
    Registry().resolve(str(reference))  # a wrong name or alias fails here, before anything listens
    state = ServerState(reference.name, settings)
    state.watch = watch_for(reference.name, settings, state.metrics)
    fatal: list[BaseException] = []

    def stop_on(exc: BaseException) -> None:  # called by the follower's thread
        fatal.append(exc)
        server.should_exit = True

    follower = AliasFollower(reference, state.slot, settings.poll_seconds, on_fatal=stop_on,
                             on_swap=lambda old, new: swapped(state, reference, old, new),
                             health=state.health,
                             on_failure=lambda version, exc: state.metrics.swap_failures.labels(
                                 reference.name, str(version)).inc(),
                             loader=functools.partial(load_version, features=state.watch is not None))
    app = create_app(state, lifespan=lifespan(state, follower, reference))
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S))
    warn_if_exposed(settings)
    server.run()
    if fatal:
        error = fatal[0]
        if isinstance(error, TransferflowError):
            raise error
        raise RegistryError(f"cannot serve {reference}: {type(error).__name__}: {error}") from error


def lifespan(state: ServerState, follower: AliasFollower, reference: Reference):
    """Start the batcher and the follower with the event loop; stop both with it."""
    settings = state.settings

    @contextlib.asynccontextmanager
    async def running(app):
        await state.batcher.start()
        if state.watch:
            state.watch.start()
        follower.start()
        log.info("serving %s on http://%s:%d (%s; batches up to %d, waiting up to %g ms)", reference,
                 settings.host, settings.port,
                 f"following the alias every {settings.poll_seconds:g} s" if reference.alias else "pinned",
                 settings.max_batch, settings.max_wait_ms)
        yield
        follower.stop()
        await state.batcher.stop()
        if state.watch:  # after the last request: the open windows and queued captures are written
            state.watch.stop()
        state.decoders.shutdown(wait=False)
        log.info("stopped serving %s", reference)

    return running


def swapped(state: ServerState, reference: Reference, previous: ServedVersion | None,
            served: ServedVersion) -> None:
    """After a swap: the version gauge, the swap counter and the log line saying from and to."""
    state.metrics.version.labels(served.name).set(served.version)
    if previous is None:
        log.info("ready: %s answers as %s", served.label, reference)
        return
    state.metrics.swaps.labels(served.name).inc()
    log.info("%s moved: version %d -> %d swapped in; requests already on version %d finish on it",
             reference, previous.version, served.version, previous.version)


def warn_if_exposed(settings: ServeSettings) -> None:
    """Say so when the server listens beyond loopback without a token."""
    if settings.host == "localhost":
        return
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(settings.host).is_loopback:
            return
    if settings.token is None:
        log.warning("listening on %s without a token: anyone who can reach it can use it; set "
                    "TRANSFERFLOW_SERVE_TOKEN, or keep --host 127.0.0.1 behind a proxy", settings.host)
