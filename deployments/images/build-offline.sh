#!/usr/bin/env bash
# Build the trainer and serving images on a machine that reaches no container registry (only Debian's
# archive and the Python package index), then smoke-test them:
#   1. start dockerd (Debian's docker.io) when no daemon answers;
#   2. make a Debian trixie base (python3 3.13) with mmdebstrap and `docker import` it, unless that
#      image exists already;
#   3. fill build/wheelhouse/{trainer,serve} from uv.lock and build transferflow-trainer and
#      transferflow-serve, tagged <version> and <version>-<git sha>;
#   4. smoke: `transferflow --help` and `transferflow train` on generated shapes in the trainer image,
#      registering into a SeaweedFS started on the host, then `transferflow serve` in the serving image
#      with /readyz answering 200 from the host.
# Needs root (dockerd, mmdebstrap), docker.io, mmdebstrap and `make venv` (uv, packaging, weed).
# Run from the repository root: deployments/images/build-offline.sh [BASE_IMAGE]
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${1:-transferflow-base:trixie}
PYTHON=${PYTHON:-.venv/bin/python}
started=$(date +%s)

if ! docker info >/dev/null 2>&1; then
    echo "starting dockerd (log: /tmp/transferflow-dockerd.log)"
    nohup dockerd >/tmp/transferflow-dockerd.log 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { echo "dockerd did not start: see /tmp/transferflow-dockerd.log" >&2; exit 1; }
fi

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    echo "making the base image $BASE with mmdebstrap (Debian trixie, minbase, python3)"
    tarball=$(mktemp --suffix=.tar)
    trap 'rm -f "$tarball"' EXIT
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates trixie "$tarball"
    docker import "$tarball" "$BASE"
fi

"$PYTHON" -m transferflow.devstack.images image --targets trainer,serve --base "$BASE"
docker images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^(transferflow-(trainer|serve)|${BASE%%:*}):"
"$PYTHON" -m transferflow.devstack.images smoke
echo "build-offline: done in $(( $(date +%s) - started )) s"
