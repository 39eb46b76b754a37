"""`transferflow models ...`: the model registry. Imports neither TensorFlow nor Prefect."""

from __future__ import annotations

import argparse

from transferflow import storage
from transferflow.cli._output import cell, delta, print_json, print_table, version_cell
from transferflow.cli.evaluate import add_evaluation_commands
from transferflow.cli.exports import PORTABLE, add_export_command, add_int8_flag, export_name
from transferflow.cli.flags import add_list_and_show, add_subcommand
from transferflow.errors import CLIError
from transferflow.registry.aliases import ANY

REFERENCE = "NAME[:VERSION|@ALIAS]"


def add_model_commands(commands) -> None:
    """`models list|show|history|diff|evaluate|golden|export|pull|promote|rollback|delete|gc`."""
    models = commands.add_parser("models", help="inspect and manage the model registry")
    commands = models.add_subparsers(dest="models_command", required=True)
    add_list_and_show(commands, ("every registered version", cmd_models_list),
                      ("one version's metadata", cmd_models_show), REFERENCE)
    history = add_subcommand(commands, "history", cmd_models_history, "every alias move, oldest first")
    history.add_argument("name", metavar="NAME")
    history.add_argument("--alias", help="only this alias")
    history.add_argument("--json", action="store_true", help="print JSON")
    diff = add_subcommand(commands, "diff", cmd_models_diff, "two versions' parameters and metrics")
    diff.add_argument("reference_a", metavar=REFERENCE)
    diff.add_argument("reference_b", metavar=REFERENCE)
    diff.add_argument("--json", action="store_true", help="print JSON")
    add_evaluation_commands(commands, REFERENCE)
    add_export_command(commands, REFERENCE)
    pull = add_subcommand(commands, "pull", cmd_models_pull, "download a version, its sha256 checked")
    pull.add_argument("reference", metavar=REFERENCE)
    pull.add_argument("dir", metavar="DIR")
    pull.add_argument("--format", choices=("keras", *PORTABLE), default="keras", dest="export_format",
                      help="the .keras artifact (default), or a verified export of the version")
    add_int8_flag(pull, "the int8 LiteRT export (with --format litert)")
    promote = add_subcommand(commands, "promote", cmd_models_promote, "point an alias at a version")
    promote.add_argument("reference", metavar=REFERENCE)
    promote.add_argument("--expect", type=_expected_version, default=ANY, metavar="VERSION|none",
                         help="only move the alias if it is still at this version (none: not set yet)")
    rollback = add_subcommand(commands, "rollback", cmd_models_rollback, "undo an alias's last move")
    rollback.add_argument("name", metavar="NAME")
    for command in (promote, rollback):
        command.add_argument("--alias", required=True, help="e.g. production, staging")
        command.add_argument("--reason", default=None, help="recorded in the alias history")
    delete = add_subcommand(commands, "delete", cmd_models_delete, "delete a version no alias uses")
    delete.add_argument("reference", metavar="NAME:VERSION")
    delete.add_argument("--yes", action="store_true", help="really delete (otherwise only list)")
    gc = add_subcommand(commands, "gc", cmd_models_gc, "delete old versions no alias uses")
    gc.add_argument("name", metavar="NAME")
    gc.add_argument("--keep", type=int, required=True, metavar="N", help="newest versions to keep")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be deleted")


def _expected_version(value: str) -> int | str | None:
    if value in (ANY, "none"):
        return None if value == "none" else value
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a version number, 'none' or {ANY!r}")
    return int(value)


def _registry():
    from transferflow.registry import Registry

    return Registry()


def cmd_models_list(args: argparse.Namespace) -> int:
    from transferflow.registry import VersionMetadata

    registry = _registry()
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
        print_json(documents)
    elif not rows:
        print(f"no models registered in s3://{registry.bucket} at {storage.endpoint_label()}")
    else:
        print_table(("NAME", "VERSION", "REGISTERED", "TEST_ACC", "ALIASES"), rows)
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    registry = _registry()
    name, version = registry.resolve(args.reference)
    if args.json:
        print_json(registry.metadata(name, version))
        return 0
    meta = registry.record(name, version)
    test, artifact, dataset = meta.metrics.test, meta.artifact, meta.dataset
    print(f"{name} version {version}  (registered {meta.registered_at})")
    print(f"  artifact    {artifact.uri}  ({artifact.size} bytes, sha256 {artifact.sha256[:16]}...)")
    print(f"  dataset     {dataset.source}  (fingerprint {dataset.fingerprint[:12]})")
    print(f"  backbone    {meta.backbone['name']}, weights {meta.backbone['weights']}, {meta.image_size} px")
    print(f"  classes     {', '.join(meta.classes)}")
    print(f"  test acc    {test.accuracy:.4f} on {test.images} images" + _more_metrics(test))
    if meta.metrics.golden is not None:
        golden = meta.metrics.golden
        print(f"  golden acc  {golden.accuracy:.4f} on {golden.images} images" + _more_metrics(golden))
    if meta.metrics.calibration is not None:
        print(f"  calibrated  {meta.metrics.calibration.reason}")
    print(f"  gate        {meta.gate.fine_tune.reason}")
    if meta.gate.keep_fine_tuned:
        print(f"  fine-tune   {meta.gate.keep_fine_tuned.reason}")
    if meta.promotion is not None:
        print(f"  promotion   {meta.promotion.reason}")
    print(f"  flow run    {meta.lineage.flow_run_id}")
    for export, listed in meta.exports.items():
        if isinstance(listed, dict) and "verification" in listed:
            check = listed["verification"]
            print(f"  {export:<11} {listed['file']}  ({listed['size']} bytes; agreement "
                  f"{check['agreement']:.4f}, max prob diff {check['max_prob_diff']:.1e}, accuracy "
                  f"{check['accuracy_change']:+.4f})")
    return 0


def _more_metrics(scores) -> str:
    """', macro-F1 0.9412, calibration error 0.0213' for metadata that has them (schema 2)."""
    named = (("macro-F1", scores.macro_f1), ("calibration error", scores.ece))
    parts = [f"{label} {value:.4f}" for label, value in named if value is not None]
    return (", " + ", ".join(parts)) if parts else ""


def cmd_models_history(args: argparse.Namespace) -> int:
    entries = _registry().history_entries(args.name, args.alias)
    if args.json:
        print_json([entry.document() for entry in entries])
    elif not entries:
        print(f"no alias moves recorded for {args.name}" + (f"@{args.alias}" if args.alias else ""))
    else:
        rows = [(e.at or "?", e.alias, version_cell(e.from_version), version_cell(e.to_version), e.action,
                 e.by or "?", e.reason or "") for e in entries]
        print_table(("AT", "ALIAS", "FROM", "TO", "ACTION", "BY", "REASON"), rows)
    return 0


def cmd_models_diff(args: argparse.Namespace) -> int:
    diff = _registry().diff(args.reference_a, args.reference_b)
    if args.json:
        print_json(diff)
        return 0
    header = ("", diff["a"], diff["b"])
    params = [(key, cell(a), cell(b)) for key, (a, b) in diff["parameters"].items()]
    print("parameters that differ:" if params else "parameters: identical")
    if params:
        print_table(header, params)
    print("metrics:")  # all higher-is-better but the calibration error, which says so
    print_table((*header, "B-A"), [(f"{key} (lower is better)" if key.endswith(".ece") else key,
                                    cell(a), cell(b), delta(a, b))
                                   for key, (a, b) in diff["metrics"].items()])
    print("promotion (test.excluded: images production had trained or validated on, left out):")
    print_table(header, [(key, cell(a), cell(b)) for key, (a, b) in diff["promotion"].items()])
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    path = _registry().pull(args.reference, args.dir, export_name(args.export_format, args.int8))
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
    from transferflow.registry.layout import parse_reference

    name, version, _ = parse_reference(args.reference)
    if version is None:
        raise CLIError(f"delete takes NAME:VERSION, not {args.reference!r}: name the version")
    keys = _registry().delete(name, version, dry_run=not args.yes)
    for key in keys:
        print(f"{'deleted' if args.yes else 'would delete'}  {key}")
    if not args.yes:
        raise CLIError(f"nothing deleted: rerun with --yes to delete {name}:{version}")
    return 0


def cmd_models_gc(args: argparse.Namespace) -> int:
    removed = _registry().gc(args.name, args.keep, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {args.name} versions {', '.join(map(str, removed))}" if removed
          else f"nothing to delete: {args.name} has no unaliased versions beyond the newest {args.keep}")
    return 0


def _print_move(name: str, alias: str, version: int, document: dict | None) -> None:
    from transferflow.registry import HistoryEntry

    if document is None:
        print(f"{name}@{alias} already at version {version}; nothing changed")
        return
    entry = HistoryEntry.model_validate(document)
    print(f"{name}@{alias}: {version_cell(entry.from_version)} -> {entry.to_version}  "
          f"({entry.action} by {entry.by})")
