"""The `transferflow` command line.

`models` commands import neither TensorFlow nor Prefect, so they answer fast;
`train` imports them only once its flags have been checked.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import sys
import typing
from enum import Enum
from typing import Any

from pydantic import ValidationError

from transferflow import __version__, storage, tflogs
from transferflow.config import RetrainConfig
from transferflow.errors import ConfigError, TransferflowError
from transferflow.preflight import preflight


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

    train = commands.add_parser("train", help="run the retrain flow",
                                description="Run the retrain flow (Prefect's ephemeral API "
                                "when PREFECT_API_URL is unset).")
    add_config_flags(train)
    add_verbose_flag(train)
    train.set_defaults(handler=cmd_train)

    datasets = commands.add_parser("datasets", help="inspect and fill the dataset store and mirror")
    dataset_commands = datasets.add_subparsers(dest="datasets_command", required=True)
    add_list_and_show(dataset_commands, ("prepared datasets and mirrored sources", cmd_datasets_list),
                      ("one dataset's prepared variants and mirror", cmd_datasets_show), "NAME|URI")
    prefetch = dataset_commands.add_parser(
        "prefetch", help="download, mirror and prepare a dataset now",
        description="Download a dataset (on a machine with internet), copy it to the object-storage "
        "mirror and prepare it, so that workers without internet can train on it.")
    prefetch.add_argument("dataset", metavar="URI",
                          help="built-in name, http(s) archive, s3:// or local path")
    add_config_flags(prefetch, only=PREPARE_FIELDS)
    add_verbose_flag(prefetch)
    prefetch.set_defaults(handler=cmd_datasets_prefetch)

    models = commands.add_parser("models", help="inspect and manage the model registry")
    add_model_commands(models.add_subparsers(dest="models_command", required=True))

    predict = commands.add_parser("predict", help="classify images with a registered version",
                                  description="Top-k labels from a registered version (verified "
                                  "bytes), decoding and resizing the images as training did.")
    predict.add_argument("reference", metavar="NAME[:VERSION|@ALIAS]")
    predict.add_argument("images", metavar="IMAGE", nargs="+", help="image files, folders or s3:// URIs")
    predict.add_argument("--top-k", type=int, default=3, help="labels per image (default: 3)")
    predict.add_argument("--json", action="store_true", help="print JSON")
    add_verbose_flag(predict)
    predict.set_defaults(handler=cmd_predict)
    return parser


def add_verbose_flag(parser: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    """--verbose before or after the command; subcommands leave the top-level default alone."""
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="show TensorFlow's C++ start-up logs (oneDNN, CUDA), hidden otherwise "
                        "unless TF_CPP_MIN_LOG_LEVEL is set")


def cmd_predict(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise TransferflowError("--top-k must be at least 1")
    tflogs.import_tensorflow(args.verbose)
    from transferflow.predict import predict

    model, predictions = predict(args.reference, args.images, args.top_k)
    if args.json:
        print(json.dumps({"model": model, "predictions": [p.as_dict() for p in predictions]}, indent=2))
        return 0
    print(f"model {model}")
    for prediction in predictions:
        labels = ", ".join(f"{label} {probability:.3f}" for label, probability in prediction.top)
        print(f"{prediction.image}: {labels}")
    return 0


def add_model_commands(commands) -> None:
    """`models list|show|history|diff|pull|promote|rollback|delete|gc`."""
    add_list_and_show(commands, ("every registered version", cmd_models_list),
                      ("one version's metadata", cmd_models_show), "NAME[:VERSION|@ALIAS]")
    ref = "NAME[:VERSION|@ALIAS]"
    history = _subcommand(commands, "history", cmd_models_history, "every alias move, oldest first")
    history.add_argument("name", metavar="NAME")
    history.add_argument("--alias", help="only this alias")
    history.add_argument("--json", action="store_true", help="print JSON")
    diff = _subcommand(commands, "diff", cmd_models_diff, "two versions' parameters and metrics")
    diff.add_argument("reference_a", metavar=ref)
    diff.add_argument("reference_b", metavar=ref)
    diff.add_argument("--json", action="store_true", help="print JSON")
    pull = _subcommand(commands, "pull", cmd_models_pull, "download a version, its sha256 checked")
    pull.add_argument("reference", metavar=ref)
    pull.add_argument("dir", metavar="DIR")
    promote = _subcommand(commands, "promote", cmd_models_promote, "point an alias at a version")
    promote.add_argument("reference", metavar=ref)
    promote.add_argument("--expect", type=_expected_version, default="any", metavar="VERSION|none",
                         help="only move the alias if it is still at this version (none: not set yet)")
    rollback = _subcommand(commands, "rollback", cmd_models_rollback, "undo an alias's last move")
    rollback.add_argument("name", metavar="NAME")
    for command in (promote, rollback):
        command.add_argument("--alias", required=True, help="e.g. production, staging")
        command.add_argument("--reason", default=None, help="recorded in the alias history")
    delete = _subcommand(commands, "delete", cmd_models_delete, "delete a version no alias uses")
    delete.add_argument("reference", metavar="NAME:VERSION")
    delete.add_argument("--yes", action="store_true", help="really delete (otherwise only list)")
    gc = _subcommand(commands, "gc", cmd_models_gc, "delete old versions no alias uses")
    gc.add_argument("name", metavar="NAME")
    gc.add_argument("--keep", type=int, required=True, metavar="N", help="newest versions to keep")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be deleted")


def _subcommand(commands, name: str, handler, help_text: str) -> argparse.ArgumentParser:
    command = commands.add_parser(name, help=help_text, description=help_text.capitalize() + ".")
    command.set_defaults(handler=handler)
    return command


def _expected_version(value: str) -> int | str | None:
    if value in ("any", "none"):
        return None if value == "none" else value
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a version number, 'none' or 'any'")
    return int(value)


def add_list_and_show(commands, listing: tuple[str, Any], showing: tuple[str, Any], metavar: str) -> None:
    """`list` and `show REFERENCE`, both with --json: (help, handler) for each."""
    for name, (help_text, handler) in (("list", listing), ("show", showing)):
        command = commands.add_parser(name, help=help_text)
        if name == "show":
            command.add_argument("reference", metavar=metavar)
        command.add_argument("--json", action="store_true", help="print JSON")
        command.set_defaults(handler=handler)


PREPARE_FIELDS = ("image_size", "backbone", "val_fraction", "test_fraction", "seed", "max_bad_image_fraction",
                  "stream_threshold_mb")


def add_config_flags(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """One flag per RetrainConfig field: --head-epochs for head_epochs, and so on."""
    for name, field in RetrainConfig.model_fields.items():
        if only is not None and name not in only:
            continue
        annotation = field.annotation
        options: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS,
                                   "help": f"{field.description} (default: {field.default})"}
        if annotation is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif isinstance(annotation, type) and issubclass(annotation, Enum):
            options["choices"] = [member.value for member in annotation]
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


# The Prefect wiring of `train` lives in flows/entry.py; the CLI reaches it only by this name.
TRAIN_ENTRY_POINT = "transferflow_flows.entry:train_here"


def entry_point(spec: str):
    """The object that 'module:attribute' names, imported only when called for."""
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute)


def cmd_train(args: argparse.Namespace) -> int:
    values = {k: v for k, v in vars(args).items() if k in RetrainConfig.model_fields}
    config = parse_config(values)
    # Fail in a second on a missing path or a wrong endpoint, before Prefect and TensorFlow start up.
    preflight(config, as_flags=True)
    storage.ensure_bucket()
    tflogs.import_tensorflow(args.verbose)
    result = entry_point(TRAIN_ENTRY_POINT)(config)
    print(f"registered {result['name']} version {result['version']}")
    print(f"artifact   {result['artifact_uri']}")
    return 0


def cmd_datasets_list(args: argparse.Namespace) -> int:
    from transferflow import catalog, mirror

    bucket = storage.bucket_name()
    variants, mirrors = catalog.prepared(bucket), mirror.entries(bucket)
    if args.json:
        print(json.dumps({"prepared": variants, "mirrors": mirrors}, indent=2, default=str))
        return 0
    if not variants and not mirrors:
        print(f"no datasets in s3://{bucket} at {storage.endpoint_label()}")
        return 0
    mirrored = {entry["fingerprint"] for entry in mirrors}
    rows = [(ref["name"], ref["fingerprint"][:12], f"{ref['image_size']}px", str(_images(ref)),
             str(len(ref["class_names"])), "yes" if ref["fingerprint"] in mirrored else "-", ref["source"])
            for ref in variants]
    print_table(("NAME", "FINGERPRINT", "SIZE", "IMAGES", "CLASSES", "MIRRORED", "SOURCE"), rows)
    return 0


def _images(ref: dict) -> int:
    return sum(sum(counts.values()) for counts in ref["counts"].values())


def cmd_datasets_show(args: argparse.Namespace) -> int:
    from transferflow import catalog

    found = catalog.describe(storage.bucket_name(), args.reference)
    if args.json:
        print(json.dumps(found, indent=2, default=str))
        return 0
    if not found["variants"] and not found["mirrors"]:
        raise TransferflowError(f"no dataset {args.reference!r} in s3://{storage.bucket_name()}: see "
                                "`transferflow datasets list`, or fill it with "
                                "`transferflow datasets prefetch`")
    for ref in found["variants"]:
        splits = ", ".join(f"{s} {sum(c.values())}" for s, c in ref["counts"].items())
        print(f"{ref['name']}  {ref['image_size']}px  fingerprint {ref['fingerprint'][:12]}  ({splits})")
        print(f"  source      {ref['source']}")
        more = " …" if len(ref["class_names"]) > 12 else ""
        print(f"  classes     {', '.join(ref['class_names'][:12])}{more}")
        print(f"  prepared    {ref['uri']}  ({ref['prepared_at']})")
    for entry in found["mirrors"]:
        size = sum(f["size"] for f in entry["files"]) / 1e6
        print(f"mirror of {entry['source']}  ({len(entry['files'])} files, {size:.1f} MB, "
              f"{entry['mirrored_at']})")
        for item in entry["files"]:
            print(f"  {item['uri']}")
    return 0


def cmd_datasets_prefetch(args: argparse.Namespace) -> int:
    values = {k: v for k, v in vars(args).items() if k in PREPARE_FIELDS}
    config = parse_config({**values, "dataset": args.dataset})
    storage.ensure_bucket()
    tflogs.import_tensorflow(args.verbose)
    from transferflow import phases

    ref = phases.download_dataset(config, logger=logging.getLogger("transferflow.prefetch"))
    print(f"prepared   {ref.name} ({ref.image_size}px, {_images(ref.model_dump())} images, fingerprint "
          f"{ref.fingerprint[:12]})")
    print(f"stored at  {ref.uri}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from transferflow.registry import Registry, VersionMetadata

    registry = Registry()
    rows, documents = [], []
    for name in registry.names():
        aliases = registry.aliases(name)
        for version in registry.versions(name):
            document = registry.metadata(name, version) or {}
            documents.append(document)
            meta = VersionMetadata.model_validate(document)
            tags = ",".join(sorted(a for a, v in aliases.items() if v == version))
            accuracy = meta.test_accuracy
            rows.append((name, str(version), meta.registered_at or "?",
                         f"{accuracy:.4f}" if accuracy is not None else "-", tags))
    if args.json:
        print(json.dumps(documents, indent=2))
    elif not rows:
        print(f"no models registered in s3://{registry.bucket} at {storage.endpoint_label()}")
    else:
        print_table(("NAME", "VERSION", "REGISTERED", "TEST_ACC", "ALIASES"), rows)
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    from transferflow.registry import Registry

    registry = Registry()
    name, version = registry.resolve(args.reference)
    if args.json:
        print(json.dumps(registry.metadata(name, version), indent=2))
        return 0
    meta = registry.record(name, version)
    test, artifact, dataset = meta.metrics.test, meta.artifact, meta.dataset
    print(f"{name} version {version}  (registered {meta.registered_at})")
    print(f"  artifact    {artifact.uri}  ({artifact.size} bytes, sha256 {artifact.sha256[:16]}...)")
    print(f"  dataset     {dataset.source}  (fingerprint {dataset.fingerprint[:12]})")
    print(f"  backbone    {meta.backbone['name']}, weights {meta.backbone['weights']}, {meta.image_size} px")
    print(f"  classes     {', '.join(meta.classes)}")
    print(f"  test acc    {test.accuracy:.4f} on {test.images} images")
    print(f"  gate        {meta.gate.fine_tune.reason}")
    if meta.gate.keep_fine_tuned:
        print(f"  fine-tune   {meta.gate.keep_fine_tuned.reason}")
    print(f"  flow run    {meta.lineage.flow_run_id}")
    return 0


def cmd_models_history(args: argparse.Namespace) -> int:
    entries = _registry().history_entries(args.name, args.alias)
    if args.json:
        print(json.dumps([entry.document() for entry in entries], indent=2))
    elif not entries:
        print(f"no alias moves recorded for {args.name}" + (f"@{args.alias}" if args.alias else ""))
    else:
        rows = [(e.at or "?", e.alias, _version(e.from_version), _version(e.to_version), e.action,
                 e.by or "?", e.reason or "") for e in entries]
        print_table(("AT", "ALIAS", "FROM", "TO", "ACTION", "BY", "REASON"), rows)
    return 0


def cmd_models_diff(args: argparse.Namespace) -> int:
    diff = _registry().diff(args.reference_a, args.reference_b)
    if args.json:
        print(json.dumps(diff, indent=2))
        return 0
    header = ("", diff["a"], diff["b"])
    params = [(key, _cell(a), _cell(b)) for key, (a, b) in diff["parameters"].items()]
    print("parameters that differ:" if params else "parameters: identical")
    if params:
        print_table(header, params)
    print("metrics:")
    print_table((*header, "B-A"), [(key, _cell(a), _cell(b), _delta(a, b))
                                   for key, (a, b) in diff["metrics"].items()])
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    path = _registry().pull(args.reference, args.dir)
    print(f"{path}  (size and sha256 verified)")
    return 0


def cmd_models_promote(args: argparse.Namespace) -> int:
    registry = _registry()
    name, version = registry.resolve(args.reference)
    entry = registry.promote(name, version, args.alias, args.reason or "promoted from the command line",
                             expected_current=args.expect)
    _print_move(name, args.alias, version, entry)
    return 0


def cmd_models_rollback(args: argparse.Namespace) -> int:
    entry = _registry().rollback(args.name, args.alias, args.reason)
    _print_move(args.name, args.alias, entry["to_version"], entry)
    return 0


def cmd_models_delete(args: argparse.Namespace) -> int:
    from transferflow.registry import REF_RE

    match = REF_RE.match(args.reference)
    if not match or not match["version"]:
        raise TransferflowError(f"delete takes NAME:VERSION, not {args.reference!r}: name the version")
    name, version = match["name"], int(match["version"])
    keys = _registry().delete(name, version, dry_run=not args.yes)
    for key in keys:
        print(f"{'deleted' if args.yes else 'would delete'}  {key}")
    if not args.yes:
        raise TransferflowError(f"nothing deleted: rerun with --yes to delete {name}:{version}")
    return 0


def cmd_models_gc(args: argparse.Namespace) -> int:
    removed = _registry().gc(args.name, args.keep, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {args.name} versions {', '.join(map(str, removed))}" if removed
          else f"nothing to delete: {args.name} has no unaliased versions beyond the newest {args.keep}")
    return 0


def _registry():
    from transferflow.registry import Registry

    return Registry()


def _print_move(name: str, alias: str, version: int, document: dict | None) -> None:
    from transferflow.registry import HistoryEntry

    if document is None:
        print(f"{name}@{alias} already at version {version}; nothing changed")
        return
    entry = HistoryEntry.model_validate(document)
    print(f"{name}@{alias}: {_version(entry.from_version)} -> {entry.to_version}  "
          f"({entry.action} by {entry.by})")


def _version(value: int | None) -> str:
    return "-" if value is None else str(value)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _delta(a: Any, b: Any) -> str:
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    return f"{b - a:+.4f}" if numeric else ""


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
