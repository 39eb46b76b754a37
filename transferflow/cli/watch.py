"""`transferflow watch`: a run when data lands (transferflow.retraining.watch; the stack starts it)."""

from __future__ import annotations

import argparse
import os

from transferflow.cli.train import entry_point
from transferflow.errors import CLIError
from transferflow.retraining.watch import DEFAULT_DEBOUNCE_S, DEFAULT_INTERVAL_S

# The Prefect side (the event emitter) lives in flows/entry.py, reached only by this name.
WATCH_ENTRY_POINT = "transferflow_flows.entry:watch_here"


def add_watch_command(commands) -> None:
    watch = commands.add_parser(
        "watch", help="emit transferflow.dataset.changed when new data has landed and settled",
        description="List each s3:// prefix every --interval seconds; once its listing changed and then "
        "stayed the same for --debounce seconds, emit the Prefect event transferflow.dataset.changed "
        "(once), which starts retrain/on-data. State is kept in the bucket: a restart emits nothing twice.")
    watch.add_argument("prefixes", nargs="+", metavar="s3://BUCKET/PREFIX/")
    watch.add_argument("--debounce", type=float, default=DEFAULT_DEBOUNCE_S, metavar="SECONDS",
                       help="quiet time after the last change before the event "
                       f"(default {DEFAULT_DEBOUNCE_S:.0f})")
    watch.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, metavar="SECONDS",
                       help=f"how often each prefix is listed (default {DEFAULT_INTERVAL_S:.0f})")
    watch.add_argument("--polls", type=int, default=None, help=argparse.SUPPRESS)  # tests: stop after N
    watch.set_defaults(handler=cmd_watch)


def cmd_watch(args: argparse.Namespace) -> int:
    bad = [prefix for prefix in args.prefixes if not prefix.startswith("s3://")]
    if bad:
        raise CLIError(f"watch takes s3:// prefixes, not {bad}: upload the data to object storage")
    if args.debounce < 0 or args.interval <= 0:
        raise CLIError("--debounce must be 0 or more and --interval above 0 (seconds)")
    if not os.environ.get("PREFECT_API_URL"):
        raise CLIError("PREFECT_API_URL is not set: the watcher sends its events to a running Prefect server "
                       "(make stack-up starts one; export PREFECT_API_URL=http://127.0.0.1:4200/api)")
    print(f"watching {', '.join(args.prefixes)} every {args.interval:g}s (debounce {args.debounce:g}s)",
          flush=True)
    entry_point(WATCH_ENTRY_POINT)(args.prefixes, args.interval, args.debounce, args.polls)
    return 0
