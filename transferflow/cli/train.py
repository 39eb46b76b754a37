"""`transferflow train`: check the flags and the inputs in a second, then run the flow."""

from __future__ import annotations

import argparse
import importlib

from transferflow import storage, tflogs
from transferflow.cli.flags import add_config_flags, add_verbose_flag, config_values, parse_config
from transferflow.pipeline.preflight import preflight
from transferflow.pipeline.timing import mark_handover, table

# The Prefect wiring of `train` lives in flows/entry.py; the CLI reaches it only by this name.
TRAIN_ENTRY_POINT = "transferflow_flows.entry:train_here"
PREFECT_START = "transferflow_flows.entry:start_prefect"


def add_train_command(commands) -> None:
    train = commands.add_parser("train", help="run the retrain flow",
                                description="Run the retrain flow (Prefect's ephemeral API "
                                "when PREFECT_API_URL is unset).")
    add_config_flags(train)
    add_verbose_flag(train)
    train.set_defaults(handler=cmd_train)


def entry_point(spec: str):
    """The object that 'module:attribute' names, imported only when called for."""
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute)


def cmd_train(args: argparse.Namespace) -> int:
    config = parse_config(config_values(args))
    # Fail in a second on a missing path or a wrong endpoint, before Prefect and TensorFlow start up.
    preflight(config, as_flags=True)
    storage.ensure_bucket()
    entry_point(PREFECT_START)()  # its temporary server starts in the background while TensorFlow imports
    tflogs.import_tensorflow(args.verbose)
    mark_handover()
    result = entry_point(TRAIN_ENTRY_POINT)(config)
    if result.get("skipped"):
        print(result["reason"])
        return 0
    print(f"registered {result['name']} version {result['version']}")
    print(f"artifact   {result['artifact_uri']}")
    if result.get("timings"):
        print_timings(result["timings"])
    return 0


def print_timings(timings: dict) -> None:
    """Where the run's time went, one stage a line, at the end of `transferflow train`."""
    print("time per stage:")
    for label, seconds, share in table(timings):
        print(f"  {label:38} {seconds:7.1f} s  {share:4.0%}")
    print(f"  {'whole run':38} {timings.get('total', 0.0):7.1f} s")
