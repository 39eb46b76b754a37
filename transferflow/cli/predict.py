"""`transferflow predict`: top-k labels from a registered version."""

from __future__ import annotations

import argparse

from transferflow import tflogs
from transferflow.cli._output import print_json
from transferflow.cli.flags import add_verbose_flag
from transferflow.errors import CLIError


def add_predict_command(commands) -> None:
    predict = commands.add_parser("predict", help="classify images with a registered version",
                                  description="Top-k labels from a registered version (verified "
                                  "bytes), decoding and resizing the images as training did.")
    predict.add_argument("reference", metavar="NAME[:VERSION|@ALIAS]")
    predict.add_argument("images", metavar="IMAGE", nargs="+", help="image files, folders or s3:// URIs")
    predict.add_argument("--top-k", type=int, default=3, help="labels per image (default: 3)")
    predict.add_argument("--json", action="store_true", help="print JSON")
    add_verbose_flag(predict)
    predict.set_defaults(handler=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise CLIError("--top-k must be at least 1")
    tflogs.import_tensorflow(args.verbose)
    from transferflow.serving.predict import predict

    model, predictions = predict(args.reference, args.images, args.top_k)
    if args.json:
        print_json({"model": model, "predictions": [p.as_dict() for p in predictions]})
        return 0
    print(f"model {model}")
    for prediction in predictions:
        labels = ", ".join(f"{label} {probability:.3f}" for label, probability in prediction.top)
        print(f"{prediction.image}: {labels}")
    return 0
