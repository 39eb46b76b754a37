"""The `transferflow` command line: one module per command group.

`models` and `datasets list|show` import neither TensorFlow nor Prefect, so they answer fast;
`train` imports them only once its flags have been checked.

    main      the parser and the dispatch
    flags     flags from RetrainConfig's fields, and pydantic errors in flag terms
    train     `train` (through the flows' entry point)
    datasets  `datasets list|show|prefetch`
    models    `models list|show|history|diff|pull|promote|rollback|delete|gc`
    predict   `predict`
    serve     `serve`: the HTTP server (transferflow.serving), TensorFlow imported once flags are checked
    watch     `watch`: emit transferflow.dataset.changed when data lands (Prefect reached by name)
    _output   tables, cells and JSON
"""

from transferflow.cli.flags import PREPARE_FIELDS, add_config_flags, as_flags, parse_config
from transferflow.cli.main import build_parser, main
from transferflow.cli.train import TRAIN_ENTRY_POINT, entry_point

__all__ = ["PREPARE_FIELDS", "TRAIN_ENTRY_POINT", "add_config_flags", "as_flags", "build_parser",
           "entry_point", "main", "parse_config"]
