"""`transferflow monitor` (the monitor flow's tests on the windows written so far) and `transferflow
feedback` (captured inputs: count them, purge them). Neither imports Prefect; TensorFlow only when a
version's reference has to be computed first."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta

from transferflow import storage, tflogs
from transferflow.cli._output import print_json, print_table
from transferflow.cli.flags import add_subcommand, add_verbose_flag
from transferflow.errors import CLIError

SINCE_RE = re.compile(r"^(?P<amount>\d+(?:\.\d+)?)(?P<unit>[mhd])$")
UNITS = {"m": "minutes", "h": "hours", "d": "days"}
TESTS = ("class_mix", "confidence", "features")


def parse_since(text: str, now: datetime | None = None) -> datetime | None:
    """'24h', '30m', '7d' (ago), 'all', or an ISO date or time (UTC unless it says otherwise)."""
    if text == "all":
        return None
    now = now or datetime.now(UTC)
    if match := SINCE_RE.match(text):
        return now - timedelta(**{UNITS[match["unit"]]: float(match["amount"])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CLIError(f"--since {text!r}: give a duration (30m, 24h, 7d), an ISO date or time "
                       "(2026-01-31, 2026-01-31T14:00), or all") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def add_monitor_command(commands) -> None:
    from transferflow.monitoring.drift import DEFAULT_ALPHA, MIN_IMAGES

    monitor = add_subcommand(commands, "monitor", cmd_monitor, "compare a served version's monitoring "
                             "windows with its reference: drift per window")
    monitor.add_argument("reference", metavar="NAME[:VERSION|@ALIAS]")
    monitor.add_argument("--since", default="24h", help="windows whose period starts after this: 30m, 24h, "
                         "7d, an ISO date or time, or all (default: 24h)")
    monitor.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="family-wise level per window, "
                         f"after Holm's correction over the three tests (default: {DEFAULT_ALPHA})")
    monitor.add_argument("--min-images", type=int, default=MIN_IMAGES, help="windows with fewer images are "
                         f"listed but not tested (default: {MIN_IMAGES})")
    monitor.add_argument("--json", action="store_true", help="print JSON: each window with `drift` and "
                         "every test's statistic and p-values")
    add_verbose_flag(monitor)
    feedback = commands.add_parser("feedback", help="inputs captured by `serve --capture-*`: list, purge")
    actions = feedback.add_subparsers(dest="action", required=True)
    listing = add_subcommand(actions, "list", cmd_feedback_list, "count captured and labelled inputs per day "
                             "and class")
    listing.add_argument("name", metavar="NAME")
    purge = add_subcommand(actions, "purge", cmd_feedback_purge, "delete captured inputs and their sidecars")
    purge.add_argument("name", metavar="NAME")
    purge.add_argument("--before", metavar="YYYY-MM-DD", help="only days before this one (default: all)")
    purge.add_argument("--labeled", action="store_true", help="also delete feedback/NAME/labeled/")
    purge.add_argument("--yes", action="store_true", help="really delete (without it: say what would go)")


def cmd_monitor(args: argparse.Namespace) -> int:
    from transferflow.monitoring.monitor import monitor_version
    from transferflow.registry import Registry

    if not 0 < args.alpha < 1:
        raise CLIError("--alpha must be between 0 and 1 (e.g. 0.01)")
    since = parse_since(args.since)
    registry = Registry()
    name, version = registry.resolve(args.reference)
    if registry.reference_entry(name, version) is None:
        tflogs.import_tensorflow(args.verbose)  # its reference is computed first, with the model
    reports = monitor_version(name, version, since, args.alpha, args.min_images)
    if args.json:
        print_json({"model": name, "version": version, "alpha": args.alpha,
                    "since": since.isoformat() if since else None,
                    "windows": [report.model_dump(exclude={"summaries"}) for report in reports]})
        return 0
    if not reports:
        print(f"no monitoring windows of {name}:{version} since {args.since} (is it served, with "
              "recording on?)")
        return 0
    rows = [(report.window, report.closed_at[:19], str(len(report.replicas)), str(report.requests),
             str(report.errors), *(p_cell(report, test) for test in TESTS),
             {True: "DRIFT", False: "no", None: "-"}[report.drift]) for report in reports]
    print(f"{name}:{version}: {len(reports)} windows, adjusted p-values (Holm), drift at <= {args.alpha:g}")
    print_table(("window", "closed (UTC)", "replicas", "requests", "errors", *TESTS, "drift"), rows)
    notes = [f"{report.window}: {report.verdict.note}" for report in reports if report.verdict.note]
    for note in notes:
        print(note)
    return 0


def p_cell(report, name: str) -> str:
    found = next((test for test in report.verdict.tests if test.name == name), None)
    if found is None or found.p_adjusted is None:
        return "-"
    shown = f"{found.p_adjusted:.4f}" if found.p_adjusted >= 1e-4 else "<0.0001"
    return ("*" if found.fired else "") + shown


def feedback_counts(name: str) -> dict[str, dict[str, int]]:
    """{"unlabeled": {day: images}, "labeled": {class: images}} (sidecars not counted)."""
    from transferflow.monitoring.layout import labeled_prefix, unlabeled_prefix

    bucket, counts = storage.bucket_name(), {"unlabeled": {}, "labeled": {}}
    for kind, prefix in (("unlabeled", unlabeled_prefix(name)), ("labeled", labeled_prefix(name))):
        for entry in storage.list_keys(bucket, prefix):
            relative = entry["Key"][len(prefix):]
            if "/" in relative and not relative.endswith(".json"):
                group = relative.split("/", 1)[0]
                counts[kind][group] = counts[kind].get(group, 0) + 1
    return counts


def cmd_feedback_list(args: argparse.Namespace) -> int:
    counts = feedback_counts(args.name)
    bucket = storage.bucket_name()
    print(f"s3://{bucket}/feedback/{args.name}/")
    print_table(("kind", "day or class", "images"),
                [(kind, group, str(number)) for kind, groups in counts.items()
                 for group, number in sorted(groups.items())] or [("-", "-", "0")])
    return 0


def cmd_feedback_purge(args: argparse.Namespace) -> int:
    from transferflow.monitoring.layout import labeled_prefix, unlabeled_prefix

    if args.before and not re.match(r"^\d{4}-\d{2}-\d{2}$", args.before):
        raise CLIError(f"--before {args.before!r}: give a day as YYYY-MM-DD")
    bucket, unlabeled = storage.bucket_name(), unlabeled_prefix(args.name)
    prefixes = [f"{unlabeled}{day}/" for day in storage.list_children(bucket, unlabeled)
                if not args.before or day < args.before]
    prefixes += [labeled_prefix(args.name)] if args.labeled else []
    if not args.yes:
        count = sum(1 for prefix in prefixes for _ in storage.list_keys(bucket, prefix))
        print(f"would delete {count} objects (images and sidecars) under "
              f"s3://{bucket}/feedback/{args.name}/; add --yes to delete them")
        return 0
    deleted = sum(storage.delete_prefix(bucket, prefix) for prefix in prefixes)
    print(f"deleted {deleted} objects under s3://{bucket}/feedback/{args.name}/")
    return 0
