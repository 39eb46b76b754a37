#!/bin/sh
# Install one role's wheels into the image's virtual environment ($VIRTUAL_ENV): the pinned
# requirements with their hashes checked, then transferflow itself; no package index is consulted.
set -eu
wheels=$1
want=$(cat "$wheels/python-version")
have=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$want" != "$have" ]; then
    echo "the wheelhouse $wheels holds wheels for Python $want but this base has Python $have:" >&2
    echo "rebuild it with: python -m transferflow.devstack.images image --python $have ..." >&2
    exit 1
fi
python3 -m venv "$VIRTUAL_ENV"
pip install --no-cache-dir --no-index --find-links "$wheels" --no-deps --require-hashes \
    -r "$wheels/requirements.txt"
pip install --no-cache-dir --no-index --no-deps "$wheels"/transferflow-*.whl
