"""`transferflow models export`: add a verified ONNX or LiteRT export to a registered version, and
the `--format` choice that `models pull` shares with it. Imports TensorFlow only once a conversion
runs."""

from __future__ import annotations

import argparse

from transferflow import tflogs
from transferflow.cli._output import print_json
from transferflow.cli.flags import add_subcommand, add_verbose_flag
from transferflow.errors import CLIError

PORTABLE = ("onnx", "litert")


def add_export_command(commands, reference: str) -> None:
    export = add_subcommand(commands, "export", cmd_models_export,
                            "convert a version (onnx, litert), check it on its test split, add it")
    export.add_argument("reference", metavar=reference)
    export.add_argument("--format", required=True, choices=PORTABLE, dest="export_format",
                        help="onnx (checked with onnxruntime) or litert (.tflite, checked with the "
                        "LiteRT interpreter)")
    add_int8_flag(export, "quantise to int8 (LiteRT only), calibrated on the version's train images; "
                  "the accuracy change is recorded")
    export.add_argument("--json", action="store_true", help="print the metadata entry as JSON")
    add_verbose_flag(export)


def add_int8_flag(command: argparse.ArgumentParser, help_text: str) -> None:
    command.add_argument("--int8", action="store_true", help=help_text)


def export_name(export_format: str, int8: bool) -> str:
    """The metadata key of a --format/--int8 pair: onnx, litert, litert_int8 (or keras)."""
    if not int8:
        return export_format
    if export_format != "litert":
        raise CLIError(f"--int8 applies to --format litert only, not {export_format}: drop --int8 or "
                       "use --format litert")
    return "litert_int8"


def cmd_models_export(args: argparse.Namespace) -> int:
    name = export_name(args.export_format, args.int8)
    tflogs.import_tensorflow(args.verbose)
    from transferflow.publishing.exports import export_registered

    listed = export_registered(args.reference, name)
    if args.json:
        print_json(listed)
        return 0
    check = listed["verification"]
    print(f"added {name} to {args.reference}: {listed['file']} ({listed['size']} bytes, sha256 "
          f"{listed['sha256'][:16]}..., verified)")
    print(f"  on {check['images']} test images: agreement {check['agreement']:.4f}, max probability "
          f"difference {check['max_prob_diff']:.2e}, accuracy {check['accuracy']:.4f} "
          f"({check['accuracy_change']:+.4f} against Keras {check['keras_accuracy']:.4f})")
    return 0
