"""Flags from RetrainConfig's fields (--head-epochs for head_epochs), and pydantic's errors
written back in flag terms."""

from __future__ import annotations

import argparse
import re
import typing
from enum import Enum
from typing import Any

from pydantic import ValidationError

from transferflow.config import RetrainConfig
from transferflow.errors import ConfigError

PREPARE_FIELDS = ("image_size", "backbone", "val_fraction", "test_fraction", "seed", "max_bad_image_fraction",
                  "stream_threshold_mb")


def add_verbose_flag(parser: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    """--verbose before or after the command; subcommands leave the top-level default alone."""
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="show TensorFlow's C++ start-up logs (oneDNN, CUDA), hidden otherwise "
                        "unless TF_CPP_MIN_LOG_LEVEL is set")


def add_subcommand(commands, name: str, handler, help_text: str) -> argparse.ArgumentParser:
    command = commands.add_parser(name, help=help_text, description=help_text.capitalize() + ".")
    command.set_defaults(handler=handler)
    return command


def add_list_and_show(commands, listing: tuple[str, Any], showing: tuple[str, Any],
                      metavar: str) -> argparse.ArgumentParser:
    """`list` and `show REFERENCE`, both with --json: (help, handler) for each. Returns `show`."""
    for name, (help_text, handler) in (("list", listing), ("show", showing)):
        command = commands.add_parser(name, help=help_text)
        if name == "show":
            command.add_argument("reference", metavar=metavar)
        command.add_argument("--json", action="store_true", help="print JSON")
        command.set_defaults(handler=handler)
    return command


def add_config_flags(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """One flag per RetrainConfig field: --head-epochs for head_epochs, and so on."""
    for name, field in RetrainConfig.model_fields.items():
        if only is not None and name not in only:
            continue
        annotation = field.annotation
        default = field.get_default(call_default_factory=True)
        shown = "none" if default == [] else default  # an empty list of formats reads as "none"
        options: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS,
                                   "help": f"{field.description} (default: {shown})"}
        if annotation is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif isinstance(annotation, type) and issubclass(annotation, Enum):
            options["choices"] = [member.value for member in annotation]
        elif typing.get_origin(annotation) is list:  # list[ExportFormat]: "onnx,litert" or "none"
            (member,) = typing.get_args(annotation)
            options["metavar"] = ",".join(item.value for item in member) + "|none"
        elif annotation in (int, float):
            options["type"] = annotation
            options["metavar"] = "N" if annotation is int else "X"
        elif literals := _number_or_word(annotation):  # e.g. int | "auto": pydantic parses the string
            options["metavar"] = literals
        parser.add_argument("--" + name.replace("_", "-"), **options)


def _number_or_word(annotation) -> str | None:
    """'N|auto' for int | Literal["auto"], 'X|auto' for float | Literal["auto"]; else None."""
    parts = typing.get_args(annotation)
    words = [str(word) for part in parts if typing.get_origin(part) is typing.Literal
             for word in typing.get_args(part)]
    numbers = ["N" if part is int else "X" for part in parts if part in (int, float)]
    return "|".join(numbers + words) if words and numbers else None


def config_values(args: argparse.Namespace, fields=RetrainConfig.model_fields) -> dict[str, Any]:
    """The flags the user gave that are config fields (unset flags are absent, not None)."""
    return {k: v for k, v in vars(args).items() if k in fields}


def parse_config(values: dict[str, Any]) -> RetrainConfig:
    try:
        return RetrainConfig(**values)
    except ValidationError as exc:
        problems = "; ".join(_flag_problem(err) for err in exc.errors())
        raise ConfigError(f"invalid parameters: {problems}") from None


def _flag_problem(err: dict) -> str:
    """One pydantic error in flag terms: '--image-size: ...' for a field, and a check of several
    fields together ('image_size 16 is below ...') with its field names written as flags."""
    message = err["msg"].removeprefix("Value error, ")
    if err["loc"]:
        return f"--{str(err['loc'][0]).replace('_', '-')}: {message}"
    return as_flags(message)


def as_flags(text: str) -> str:
    """Every RetrainConfig field name with an underscore in `text`, as its flag (--image-size).
    Single-word names (dataset, backbone) are left alone: they are also ordinary words."""
    names = sorted((n for n in RetrainConfig.model_fields if "_" in n), key=len, reverse=True)
    pattern = r"(?<![\w-])(" + "|".join(names) + r")(?!\w)"
    return re.sub(pattern, lambda match: "--" + match[1].replace("_", "-"), text)
