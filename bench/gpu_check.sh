#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU, JAX (CUDA) and no TensorFlow: runs
# bench/gpu_check.py (VGG16 head-on-features and block5 fine-tune images/s, mixed precision
# against float32) on Keras 3 with KERAS_BACKEND=jax, at its defaults (2048 images, 224 px).
# Extra arguments pass through, e.g. `bash bench/gpu_check.sh --policy mixed_bfloat16`.
#
# If keras is not importable, it is installed offline from bench/wheels/ when that folder exists.
# Fill it on a machine with internet, for the GPU machine's Python version, e.g.:
#   pip download keras -d bench/wheels --only-binary=:all: --python-version 3.11 \
#       --platform manylinux2014_x86_64
# The last line of output is `RESULT {json}`; the exit status is non-zero when there is no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export KERAS_BACKEND=jax  # without it, `import keras` looks for TensorFlow

if ! "$PYTHON" -c "import jax" 2>/dev/null; then
    echo "gpu_check.sh: $PYTHON has no JAX; install a CUDA build (pip install 'jax[cuda12]')" >&2
    exit 2
fi
if ! "$PYTHON" -c "import keras" 2>/dev/null; then
    if [ -d bench/wheels ]; then
        "$PYTHON" -m pip install --no-index --find-links bench/wheels keras
    else
        echo "gpu_check.sh: keras is missing and bench/wheels/ does not exist" >&2
        exit 2
    fi
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
exec "$PYTHON" bench/gpu_check.py "$@"
