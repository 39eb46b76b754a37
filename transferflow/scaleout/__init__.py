"""engine ray: the stages that run on a Ray cluster instead of in this process.

    cluster    connect to RAY_ADDRESS or start a local cluster for a stage; the cluster's facts
    prepare    dataset preparation: the local plan, with decoding as a Ray Data job
    features   backbone features: the frozen backbone over the prepared shards, on every worker
    training   (and its helpers) both training phases under Ray Train's TensorflowTrainer

Imported only where config.engine is "ray" chooses it: nothing in the local path imports this
package, and its modules import Ray inside the functions that use it (tests/unit/
test_scaleout_files.py checks both).
"""
