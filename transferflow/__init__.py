"""transferflow: transfer-learning retraining with an S3 model registry.

This package imports neither TensorFlow nor Prefect at import time, so the
registry commands stay fast. Training code lives in `transferflow.training`.
"""

__version__ = "0.1.0"
