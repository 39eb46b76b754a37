"""Training a classifier: the backbone, the model, the fitting loop and what makes it fast.

    backbones    the keras.applications backbones and their weights
    model        the classifier: the backbone's preprocessing, the frozen backbone, a new head
    fit          fitting a phase (head, fine-tune), the metrics it returns, feature extraction
    local        the training phases in this process (engine local); scaleout/ has the Ray ones
    outcomes     what a phase returns (PhaseOutcome, ...) and where its files go under the run
    features     backbone features kept in object storage (the frozen backbone runs once)
    activations  fine-tuning on cached activations of the frozen bottom
    checkpoints  checkpoints in object storage, so a preempted phase resumes exactly
    compute      precision, XLA and the distribution strategy
    gate         decisions between phases: fine-tune or not, keep the result or not
    warmstart    beginning from a registered version (--init-from)
The engine choice (local or Ray) is made one floor up, in transferflow.pipeline.phases.
"""

from transferflow import lazy_face

# name -> the submodule that defines it. Imported on first use (PEP 562), not with the package: some
# submodules load TensorFlow or matplotlib, and importing a light one (its package runs first) stays light.
_LAZY = {
    "ActivationKey": "activations", "Activations": "activations", "split_classifier": "activations",
    "wanted_cut": "activations", "BACKBONES": "backbones", "BackboneSpec": "backbones",
    "DEFAULT_BACKBONE": "backbones", "construct": "backbones", "get_spec": "backbones",
    "resolve_weights": "backbones", "ResumePoint": "checkpoints", "S3Checkpoint": "checkpoints",
    "ComputePlan": "compute", "compute_scope": "compute", "plan_compute": "compute",
    "visible_gpus": "compute", "FeatureKey": "features", "load_features": "features",
    "save_features": "features", "PhaseMetrics": "fit", "balanced_class_weights": "fit", "evaluate": "fit",
    "extract_features": "fit", "fit_head_on_features": "fit", "fit_phase": "fit", "Baseline": "gate",
    "GateDecision": "gate", "against_baseline": "gate", "fine_tune_gate": "gate", "head_converged": "gate",
    "keep_fine_tuned": "gate", "build_classifier": "model", "export_savedmodel": "model",
    "load_classifier": "model", "load_from": "model", "load_model": "model", "rebuild_classifier": "model",
    "save_to": "model", "unfreeze_top_blocks": "model", "check_init_classes": "warmstart",
    "resolve_init_from": "warmstart", "warm_start": "warmstart",
}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_face(__name__, _LAZY, globals())
