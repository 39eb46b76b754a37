"""`transferflow datasets list|show|prefetch`: the dataset store and the mirror."""

from __future__ import annotations

import argparse
import logging

from transferflow import storage, tflogs
from transferflow.cli._output import print_json, print_table
from transferflow.cli.flags import (
    PREPARE_FIELDS,
    add_config_flags,
    add_list_and_show,
    add_verbose_flag,
    config_values,
    parse_config,
)
from transferflow.data.store import split_sizes, total_images
from transferflow.errors import CLIError


def add_dataset_commands(commands) -> None:
    datasets = commands.add_parser("datasets", help="inspect and fill the dataset store and mirror")
    dataset_commands = datasets.add_subparsers(dest="datasets_command", required=True)
    show = add_list_and_show(dataset_commands, ("prepared datasets and mirrored sources", cmd_datasets_list),
                             ("one dataset's prepared variants and mirror", cmd_datasets_show), "NAME|URI")
    show.add_argument("--splits", action="store_true",
                      help="list every image of the newest prepared variant: name, class, digest, split")
    show.add_argument("--fingerprint", metavar="PREFIX",
                      help="with --splits: the variant of this fingerprint (a prefix is enough)")
    prefetch = dataset_commands.add_parser(
        "prefetch", help="download, mirror and prepare a dataset now",
        description="Download a dataset (on a machine with internet), copy it to the object-storage "
        "mirror and prepare it, so that workers without internet can train on it.")
    prefetch.add_argument("dataset", metavar="URI",
                          help="built-in name, http(s) archive, s3:// or local path")
    add_config_flags(prefetch, only=PREPARE_FIELDS)
    add_verbose_flag(prefetch)
    prefetch.set_defaults(handler=cmd_datasets_prefetch)


def cmd_datasets_list(args: argparse.Namespace) -> int:
    from transferflow.data import catalog, mirror

    bucket = storage.bucket_name()
    variants, mirrors = catalog.prepared(bucket), mirror.entries(bucket)
    if args.json:
        print_json({"prepared": variants, "mirrors": mirrors})
        return 0
    if not variants and not mirrors:
        print(f"no datasets in s3://{bucket} at {storage.endpoint_label()}")
        return 0
    mirrored = {entry["fingerprint"] for entry in mirrors}
    rows = [(ref["name"], ref["fingerprint"][:12], f"{ref['image_size']}px", str(total_images(ref["counts"])),
             str(len(ref["class_names"])), "yes" if ref["fingerprint"] in mirrored else "-", ref["source"])
            for ref in variants]
    print_table(("NAME", "FINGERPRINT", "SIZE", "IMAGES", "CLASSES", "MIRRORED", "SOURCE"), rows)
    return 0


def cmd_datasets_show(args: argparse.Namespace) -> int:
    from transferflow.data import catalog

    if args.splits:
        return _show_splits(args)
    found = catalog.describe(storage.bucket_name(), args.reference)
    if args.json:
        print_json(found)
        return 0
    if not found["variants"] and not found["mirrors"]:
        raise CLIError(f"no dataset {args.reference!r} in s3://{storage.bucket_name()}: see "
                       "`transferflow datasets list`, or fill it with `transferflow datasets prefetch`")
    for ref in found["variants"]:
        print(f"{ref['name']}  {ref['image_size']}px  fingerprint {ref['fingerprint'][:12]}  "
              f"({split_sizes(ref['counts'])})")
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


def _show_splits(args: argparse.Namespace) -> int:
    """Every image of one prepared variant with its class, content digest and split."""
    from transferflow.data import catalog

    found = catalog.membership(storage.bucket_name(), args.reference, args.fingerprint)
    if args.json:
        print_json(found)
        return 0
    print(f"{found['name']}  fingerprint {found['fingerprint'][:12]}  ({found['manifest']})")
    print_table(("SPLIT", "CLASS", "DIGEST", "NAME"),
                [(row["split"] + ("*" if row["borrowed"] else ""), row["class"], (row["digest"] or "-")[:16],
                  row["name"]) for row in found["images"]])
    if any(row["borrowed"] for row in found["images"]):
        print("* borrowed: its class had no image of its own in that split (see docs/datasets.md)")
    return 0


def cmd_datasets_prefetch(args: argparse.Namespace) -> int:
    config = parse_config({**config_values(args, PREPARE_FIELDS), "dataset": args.dataset})
    storage.ensure_bucket()
    tflogs.import_tensorflow(args.verbose)
    from transferflow.pipeline import phases

    ref = phases.download_dataset(config, logger=logging.getLogger("transferflow.prefetch"))
    print(f"prepared   {ref.name} ({ref.image_size}px, {total_images(ref.counts)} images, fingerprint "
          f"{ref.fingerprint[:12]})")
    print(f"stored at  {ref.uri}")
    return 0
