"""The `transferflow` command line.

`models` commands import neither TensorFlow nor Prefect, so they answer fast;
`train` imports them only once its flags have been checked.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from enum import Enum
from typing import Any

from pydantic import ValidationError

from transferflow import __version__, storage
from transferflow.config import RetrainConfig
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
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="run the retrain flow",
                                description="Run the retrain flow (Prefect's ephemeral API "
                                "when PREFECT_API_URL is unset).")
    add_config_flags(train)
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
    prefetch.set_defaults(handler=cmd_datasets_prefetch)

    models = commands.add_parser("models", help="inspect the model registry")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    add_list_and_show(model_commands, ("every registered version", cmd_models_list),
                      ("one version's metadata", cmd_models_show), "NAME[:VERSION|@ALIAS]")
    return parser


def add_list_and_show(commands, listing: tuple[str, Any], showing: tuple[str, Any], metavar: str) -> None:
    """`list` and `show REFERENCE`, both with --json: (help, handler) for each."""
    for name, (help_text, handler) in (("list", listing), ("show", showing)):
        command = commands.add_parser(name, help=help_text)
        if name == "show":
            command.add_argument("reference", metavar=metavar)
        command.add_argument("--json", action="store_true", help="print JSON")
        command.set_defaults(handler=handler)


PREPARE_FIELDS = ("image_size", "val_fraction", "test_fraction", "seed", "max_bad_image_fraction",
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
        elif name == "fine_tune_blocks":  # int | "all": pydantic parses the string
            options["metavar"] = "N|all"
        parser.add_argument("--" + name.replace("_", "-"), **options)


def parse_config(values: dict[str, Any]) -> RetrainConfig:
    try:
        return RetrainConfig(**values)
    except ValidationError as exc:
        problems = "; ".join(
            (f"--{'.'.join(str(p) for p in err['loc']).replace('_', '-')}: " if err["loc"] else "")
            + err["msg"].removeprefix("Value error, ")
            for err in exc.errors())
        raise TransferflowError(f"invalid parameters: {problems}") from None


def cmd_train(args: argparse.Namespace) -> int:
    values = {k: v for k, v in vars(args).items() if k in RetrainConfig.model_fields}
    config = parse_config(values)
    # Fail in a second on a wrong endpoint, before Prefect and TensorFlow start up.
    storage.ensure_bucket()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The ephemeral server's usage heartbeat calls out to the internet: not on training clusters.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.retrain import retrain

    result = retrain(config=config)
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
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from transferflow import phases

    ref = phases.download_dataset(config, logger=logging.getLogger("transferflow.prefetch"))
    print(f"prepared   {ref.name} ({ref.image_size}px, {_images(ref.model_dump())} images, fingerprint "
          f"{ref.fingerprint[:12]})")
    print(f"stored at  {ref.uri}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from transferflow.registry import Registry

    registry = Registry()
    rows, documents = [], []
    for name in registry.names():
        aliases = registry.aliases(name)
        for version in registry.versions(name):
            meta = registry.metadata(name, version) or {}
            documents.append(meta)
            tags = ",".join(sorted(a for a, v in aliases.items() if v == version))
            accuracy = meta.get("metrics", {}).get("test", {}).get("accuracy")
            rows.append((name, str(version), meta.get("registered_at", "?"),
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
    meta = registry.metadata(name, version)
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    test = meta["metrics"]["test"]
    print(f"{name} version {version}  (registered {meta['registered_at']})")
    print(f"  artifact    {meta['artifact']['uri']}  ({meta['artifact']['size']} bytes, "
          f"sha256 {meta['artifact']['sha256'][:16]}...)")
    print(f"  dataset     {meta['dataset']['source']}  (fingerprint {meta['dataset']['fingerprint'][:12]})")
    print(f"  backbone    {meta['backbone']['name']}, weights {meta['backbone']['weights']}, "
          f"{meta['image_size']} px")
    print(f"  classes     {', '.join(meta['classes'])}")
    print(f"  test acc    {test['accuracy']:.4f} on {test['images']} images")
    print(f"  gate        {meta['gate']['fine_tune']['reason']}")
    if meta["gate"].get("keep_fine_tuned"):
        print(f"  fine-tune   {meta['gate']['keep_fine_tuned']['reason']}")
    print(f"  flow run    {meta['lineage']['flow_run_id']}")
    return 0


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
