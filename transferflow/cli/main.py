"""The parser and the dispatch of `transferflow`."""

from __future__ import annotations

import argparse
import logging
import sys

from transferflow import __version__, storage
from transferflow.cli.datasets import add_dataset_commands
from transferflow.cli.flags import add_verbose_flag
from transferflow.cli.models import add_model_commands
from transferflow.cli.monitor import add_monitor_command
from transferflow.cli.predict import add_predict_command
from transferflow.cli.serve import add_serve_command
from transferflow.cli.train import add_train_command, cmd_train
from transferflow.cli.watch import add_watch_command
from transferflow.errors import TransferflowError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.handler is not cmd_train:  # in flows, Prefect's logging setup shows our logs
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger("transferflow").addHandler(handler)
    logging.getLogger("transferflow").setLevel(logging.INFO)
    storage.load_local_env()
    try:
        return args.handler(args)
    except TransferflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transferflow", description="Transfer-learning retraining "
                                     "pipeline with an S3 model registry.")
    parser.add_argument("--version", action="version", version=f"transferflow {__version__}")
    add_verbose_flag(parser, default=False)
    commands = parser.add_subparsers(dest="command", required=True)
    add_train_command(commands)
    add_dataset_commands(commands)
    add_model_commands(commands)
    add_predict_command(commands)
    add_serve_command(commands)
    add_monitor_command(commands)
    add_watch_command(commands)
    return parser
