"""After training: judging the run's model, exporting it, building its metadata, registering it.

    stages   the stages after training as plain functions (tasks/ wrap them): calibration, the test
             evaluation, the promotion gate, exports, the version's metadata, registration, promotion
    exports  portable ONNX and LiteRT exports, each verified against the Keras model
"""

from transferflow import lazy_face

# name -> the submodule that defines it. Imported on first use (PEP 562), not with the package: some
# submodules load TensorFlow or matplotlib, and importing a light one (its package runs first) stays light.
_LAZY = {
    "Export": "exports", "ExportSpec": "exports", "SPECS": "exports", "check_installed": "exports",
    "check_ready": "exports", "export_registered": "exports", "export_spec": "exports",
    "export_verified": "exports", "Evaluation": "stages", "apply_promotion": "stages",
    "build_metadata": "stages", "calibrate_model": "stages", "cleanup_run": "stages",
    "decide_promotion": "stages", "evaluate_model": "stages", "export_formats": "stages",
    "export_model": "stages", "register_model": "stages", "evaluate_and_stage_reference": "stages",
}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_face(__name__, _LAZY, globals())
