"""`transferflow models evaluate` and `models golden`: scoring any version on any dataset, and
pinning a model's golden set."""

from __future__ import annotations

import argparse

from transferflow import tflogs
from transferflow.cli._output import cell, print_json, print_table
from transferflow.cli.flags import add_subcommand, add_verbose_flag
from transferflow.errors import CLIError


def add_evaluation_commands(commands, reference: str) -> None:
    """`models evaluate REF --dataset URI` and `models golden NAME [--dataset URI | --clear]`."""
    evaluate = add_subcommand(commands, "evaluate", cmd_models_evaluate,
                              "score a version on a dataset: accuracy, macro-F1, per class, calibration")
    evaluate.add_argument("reference", metavar=reference)
    evaluate.add_argument("--dataset", required=True, metavar="URI",
                          help="a folder, archive or s3:// prefix with one subfolder per class")
    evaluate.add_argument("--split", choices=("all", "test"), default="all",
                          help="every image (default), or the test split carved with the version's "
                          "own split settings")
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    add_verbose_flag(evaluate)
    golden = add_subcommand(commands, "golden", cmd_models_golden,
                            "show or set the model's golden set, scored at every promotion")
    golden.add_argument("name", metavar="NAME")
    action = golden.add_mutually_exclusive_group()
    action.add_argument("--dataset", metavar="URI", help="store this dataset's images once and pin them "
                        "as the golden set (a folder, archive or s3:// prefix, one subfolder per class)")
    action.add_argument("--clear", action="store_true", help="stop scoring on a golden set")
    golden.add_argument("--json", action="store_true", help="print JSON")
    add_verbose_flag(golden)


def cmd_models_evaluate(args: argparse.Namespace) -> int:
    tflogs.import_tensorflow(args.verbose)
    from transferflow.judging.evaluation import evaluate_reference

    result = evaluate_reference(args.reference, args.dataset, args.split)
    if args.json:
        print_json(result)
        return 0
    print(f"{result['reference']} on {result['dataset']} ({args.split}: {result['images']} images, "
          f"fingerprint {result['fingerprint'][:12]})")
    rows = [("accuracy", cell(result["accuracy"])), ("macro-F1", cell(result["macro_f1"]))]
    rows += [(f"top-{k} accuracy", cell(value)) for k, value in result["top_k"].items()]
    rows.append(("calibration error (ECE)", cell(result["ece"])))
    print_table(("measure", "value"), rows)
    print()
    print_table(("class", "precision", "recall", "f1", "images"),
                [(name, cell(row["precision"]), cell(row["recall"]), cell(row["f1"]), str(row["support"]))
                 for name, row in result["per_class"].items() if row["support"]])
    print()
    print("confusion matrix (rows: true class, columns: predicted class)")
    classes = result["classes"]
    print_table(("", *classes), [(name, *map(str, counts))
                                 for name, counts in zip(classes, result["confusion_matrix"], strict=True)])
    return 0


def cmd_models_golden(args: argparse.Namespace) -> int:
    from transferflow.registry import Registry

    registry = Registry()
    if args.clear:
        cleared = registry.clear_golden(args.name)
        print(f"{args.name}: golden set cleared" if cleared else f"{args.name} has no golden set")
        return 0
    if args.dataset:
        tflogs.import_tensorflow(args.verbose)  # decoding the images to check them
        from transferflow.judging.evaluation import store_golden

        golden = store_golden(args.name, args.dataset)
    else:
        golden = registry.golden(args.name)
        if golden is None:
            raise CLIError(f"{args.name} has no golden set: set one with "
                           f"`transferflow models golden {args.name} --dataset URI`")
    if args.json:
        print_json(golden.document())
        return 0
    print(f"{args.name} golden set: {golden.images} images in {len(golden.classes)} classes "
          f"({', '.join(golden.classes)})")
    print(f"  source       {golden.source}")
    print(f"  stored at    {golden.uri}")
    print(f"  fingerprint  {golden.fingerprint[:16]}")
    print(f"  set          {golden.set_at} by {golden.set_by}")
    return 0
