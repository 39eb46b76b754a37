"""Watching a model in production: what serving saw, compared with what the version was tested on.
Plain Python (no Prefect); TensorFlow only where a reference is computed.

    sketch     a window's (or reference's) statistics: counts, histograms, a projected feature sample
    features   the classifier with its penultimate features as a second view of one forward pass
    layout     every key monitoring and feedback capture write
    windows    serving windows in object storage, read back merged across replicas
    reference  a version's reference statistics on its test and val splits (at registration, or on demand)
    drift      the two-sample tests and Holm's correction: a window's verdict
    monitor    windows compared with their version's reference (the CLI and the flow run this)
    chart      the verdicts over time, as a PNG
"""
