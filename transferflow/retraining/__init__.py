"""The retraining loop's triggers: whether anything changed since the version at production, and a
watcher that says once when new data has landed and stayed quiet.

    changes  the cheap check, before any download, of dataset and configuration against a version
    watch    the dataset watcher (`transferflow watch`), its state in object storage
"""

from transferflow.retraining.changes import ChangeCheck, ChangeSignature, change_signature, check_changes
from transferflow.retraining.watch import DatasetChange, Watcher, WatchState, watch

__all__ = ["ChangeCheck", "ChangeSignature", "DatasetChange", "WatchState", "Watcher", "change_signature",
           "check_changes", "watch"]
