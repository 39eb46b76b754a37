"""`transferflow serve`: a registered version behind an HTTP API that follows its alias."""

from __future__ import annotations

import argparse
import logging
import os

from transferflow import tflogs
from transferflow.cli.flags import add_verbose_flag
from transferflow.errors import CLIError

TOKEN_VARIABLE = "TRANSFERFLOW_SERVE_TOKEN"
MIN_TOKEN_LENGTH = 16


def add_serve_command(commands) -> None:
    serve = commands.add_parser(
        "serve", help="serve a registered model over HTTP (TF Serving REST API, :classify, metrics)",
        description="Serve NAME@ALIAS (following the alias: a promote or rollback is swapped in, verified "
        "and warmed up, without failing a request) or NAME:VERSION (pinned). Endpoints: POST "
        "/v1/models/NAME:predict and :classify, GET /v1/models/NAME, /healthz, /readyz, /metrics. "
        f"With {TOKEN_VARIABLE} set, every endpoint but the probes needs `Authorization: Bearer TOKEN`.")
    serve.add_argument("reference", metavar="NAME[:VERSION|@ALIAS]")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, "
                       "loopback only; 0.0.0.0 in a container)")
    serve.add_argument("--port", type=int, default=8501, help="port (default: 8501, TF Serving's REST port)")
    serve.add_argument("--max-batch", type=int, default=32, help="images per model call (default: 32; "
                       "1 turns batching off)")
    serve.add_argument("--max-wait-ms", type=float, default=5.0, help="longest a request waits for others to "
                       "share its model call, only while more are arriving (default: 5)")
    serve.add_argument("--poll-seconds", type=float, default=10.0, help="how often the alias is checked for "
                       "a move (default: 10)")
    serve.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body in MiB "
                       "(default: 32)")
    serve.add_argument("--max-megapixels", type=float, default=40.0, help="largest image a header may "
                       "claim, checked before decoding (default: 40)")
    serve.add_argument("--max-queue", type=int, default=256, help="images waiting for the model at most; "
                       "a request beyond it gets 429 with Retry-After (default: 256)")
    serve.add_argument("--max-inflight", type=int, default=64, help=":predict and :classify requests in "
                       "progress at most; one more gets 429 with Retry-After before its body is read "
                       "(default: 64)")
    serve.add_argument("--stale-after-s", type=float, default=300.0, help="/readyz fails (503) when the "
                       "alias has pointed at a version that cannot be loaded for this long (default: 300)")
    add_watch_flags(serve)
    add_verbose_flag(serve)
    serve.set_defaults(handler=cmd_serve)


def add_watch_flags(serve) -> None:
    serve.add_argument("--no-monitor", dest="record", action="store_false",
                       help="write no monitoring windows (by default each window's statistics go to "
                       "monitoring/NAME/VERSION/ in the bucket; no inputs are kept)")
    serve.add_argument("--monitor-window-seconds", type=float, default=3600.0, help="length of a monitoring "
                       "window, aligned to multiples of it (default: 3600)")
    serve.add_argument("--monitor-window-requests", type=int, default=10_000,
                       help="close a window early after this many requests (default: 10000)")
    serve.add_argument("--capture-rate", type=float, default=0.0, metavar="R",
                       help="store this share (0-1) of inputs, as received, under feedback/NAME/unlabeled/ "
                       "for labelling (default: 0)")
    serve.add_argument("--capture-below-confidence", type=float, default=0.0, metavar="C",
                       help="also store every input whose top probability is below C (default: 0, none)")


def cmd_serve(args: argparse.Namespace) -> int:
    from transferflow.registry import Registry

    settings = settings_from(args)
    Registry().resolve(args.reference)  # a wrong name or alias fails now, not after TensorFlow's import
    for handler in logging.getLogger("transferflow").handlers:  # a server's log lines need their time
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    tflogs.import_tensorflow(args.verbose)
    from transferflow.serving import serve

    serve(args.reference, settings)
    return 0


def settings_from(args: argparse.Namespace):
    """The flags and the token, checked before anything is loaded."""
    from transferflow.serving.app import ServeSettings

    checks = [(1 <= args.port <= 65535, "--port must be 1-65535"),
              (args.max_batch >= 1, "--max-batch must be at least 1 (1: no batching)"),
              (args.max_wait_ms >= 0, "--max-wait-ms must be 0 or more"),
              (args.poll_seconds > 0, "--poll-seconds must be more than 0"),
              (args.max_body_mb > 0, "--max-body-mb must be more than 0"),
              (args.max_megapixels > 0, "--max-megapixels must be more than 0"),
              (args.max_queue >= args.max_batch, "--max-queue must be at least --max-batch"),
              (args.max_inflight >= 1, "--max-inflight must be at least 1"),
              (args.stale_after_s >= 0, "--stale-after-s must be 0 or more"),
              (args.monitor_window_seconds >= 1, "--monitor-window-seconds must be at least 1"),
              (args.monitor_window_requests >= 1, "--monitor-window-requests must be at least 1"),
              (0 <= args.capture_rate <= 1, "--capture-rate must be between 0 and 1 (a share of inputs)"),
              (0 <= args.capture_below_confidence <= 1,
               "--capture-below-confidence must be between 0 and 1 (a probability)")]
    for passed, message in checks:
        if not passed:
            raise CLIError(message)
    return ServeSettings(host=args.host, port=args.port, max_batch=args.max_batch,
                         max_wait_ms=args.max_wait_ms,
                         poll_seconds=args.poll_seconds, max_body_mb=args.max_body_mb,
                         max_megapixels=args.max_megapixels, max_queue=args.max_queue,
                         max_inflight=args.max_inflight, stale_after_s=args.stale_after_s,
                         token=token_from_environment(),
                         record=args.record, window_seconds=args.monitor_window_seconds,
                         window_requests=args.monitor_window_requests, capture_rate=args.capture_rate,
                         capture_below=args.capture_below_confidence)


def token_from_environment() -> str | None:
    """The bearer token, from the environment only (a flag would show in `ps` and shell history)."""
    token = os.environ.get(TOKEN_VARIABLE)
    if token is None:
        return None
    if len(token.strip()) < MIN_TOKEN_LENGTH:
        raise CLIError(f"{TOKEN_VARIABLE} is set but shorter than {MIN_TOKEN_LENGTH} characters; unset it to "
                       "serve without a token, or set a long random one: "
                       "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return token.strip()
