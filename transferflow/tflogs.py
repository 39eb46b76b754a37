"""TensorFlow's C++ start-up logs (`oneDNN custom operations are on`, `Could not find cuda
drivers`, `failed call to cuInit`) kept out of the command line's output.

TF_CPP_MIN_LOG_LEVEL=3 silences TensorFlow's logging once absl is set up, but `import tensorflow`
writes a few lines to the process's stderr (file descriptor 2, below Python) before that. So the
import runs with fd 2 pointed at a temporary file, which is shown only if the import fails.
`--verbose`, or a TF_CPP_MIN_LOG_LEVEL the user set, leaves everything as TensorFlow does it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"


def import_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow now, without its start-up lines unless asked for them."""
    if "tensorflow" in sys.modules:
        return  # imported already: too late to hide anything
    if verbose or LEVEL_VARIABLE in os.environ:  # the user chose what to see
        import tensorflow  # noqa: F401
        return
    os.environ[LEVEL_VARIABLE] = "3"
    with fd2_captured():
        import tensorflow  # noqa: F401


@contextlib.contextmanager
def fd2_captured() -> Iterator[None]:
    """Point file descriptor 2 (sys.stderr included) at a temporary file for the block; show what
    was written only if the block raises, since those lines may say why."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            _restore(saved)
            captured.seek(0)
            os.write(2, captured.read())
            raise
        else:
            _restore(saved)


def _restore(saved: int) -> None:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
