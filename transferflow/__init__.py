"""transferflow: transfer-learning retraining with an S3 model registry.

This package imports neither TensorFlow nor Prefect at import time, so the registry commands stay
fast. Packages by concern, each with a face (`__init__.py`) re-exporting its public names:

    config/      RetrainConfig and the names its fields use
    pipeline/    the stages the Prefect tasks call; the engine (local or Ray) is chosen here
    data/        the dataset stage;  training/: the model and its fitting (engine local)
    scaleout/    engine ray;  judging/: scores, the promotion gate;  publishing/: metadata, exports
    registry/    the model registry;  reporting/: run report, model card, charts
    retraining/  change checks and the dataset watcher;  serving/, monitoring/, cli/, devstack/

The top level keeps only modules that every floor uses and that belong to no one concern
(tests/unit/test_layering.py holds this list):

    errors      the one error hierarchy, raised everywhere
    storage     the boto3 client and S3 helpers under data, registry, training, serving, monitoring
    localcache  local copies of S3 objects, shared by data, registry, training and scaleout
    tflogs      TensorFlow's start-up noise, quieted by the CLI, the exports and devstack's samples

config is a package (config/) whose face keeps `from transferflow.config import RetrainConfig`.
"""

__version__ = "0.1.0"


def lazy_face(package: str, table: dict[str, str], namespace: dict):
    """`__getattr__` and `__dir__` for a package face that imports each name's submodule on first use
    (PEP 562): `table` maps a public name to the submodule defining it. Faces whose submodules load
    TensorFlow or matplotlib use it, so importing a light submodule (its package runs first) stays
    light. Use: `__getattr__, __dir__ = lazy_face(__name__, _LAZY, globals())`."""
    import importlib

    def __getattr__(name: str):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{table[name]}"), name)

    def __dir__() -> list[str]:
        return sorted({*namespace, *table})

    return __getattr__, __dir__
