# transferflow's container images, one target per role:
#   trainer  `transferflow train` and Prefect process workers for the cpu pool (CPU TensorFlow)
#   gpu      the same for the gpu pool (deployments/pools/gpu-kubernetes.json): TensorFlow with
#            NVIDIA's CUDA and cuDNN pip wheels, on a CUDA base
#   serve    `transferflow serve` alone: no Prefect, no training-only libraries
#   ray      a node of the KubeRay cluster for --engine ray (deployments/ray/raycluster.yaml),
#            whose workers are GPU nodes: the gpu target's base and TensorFlow, plus Ray
#
# Build with `make image` (every target whose base is at hand) or `make image TARGETS=serve`. Every
# target installs pinned, hash-checked wheels from build/wheelhouse/<role>/, which the host fills from
# uv.lock first (transferflow/devstack/images.py), so the build itself reads no package index.
#   BASE      any Debian-like image with python3 and its venv module: python:3.13-slim-trixie where
#             a registry can be reached, or one made locally with mmdebstrap
#             (deployments/images/build-offline.sh does that on a machine with no registry).
#   GPU_BASE  NVIDIA's CUDA base (Ubuntu 24.04: Python 3.12 from apt, which needs its archive). It
#             brings the variables that make the NVIDIA container runtime mount the driver.
# A role's wheels are built for its base's Python (3.13 on BASE, 3.12 on GPU_BASE); install-role.sh
# refuses a mismatch with a message rather than installing wheels that cannot import.
ARG BASE=python:3.13-slim-trixie
ARG GPU_BASE=nvidia/cuda:12.5.1-base-ubuntu24.04

FROM ${BASE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/transferflow PATH=/opt/transferflow/bin:$PATH HOME=/home/transferflow \
    TRANSFERFLOW_CACHE_DIR=/home/transferflow/.cache/transferflow \
    PREFECT_HOME=/home/transferflow/.prefect PREFECT_SERVER_ANALYTICS_ENABLED=false
COPY deployments/images/prepare-base.sh deployments/images/install-role.sh /usr/local/bin/
RUN prepare-base.sh
WORKDIR /home/transferflow

# The same settings on the CUDA base (ENV does not carry across FROM).
FROM ${GPU_BASE} AS gpu-base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/transferflow PATH=/opt/transferflow/bin:$PATH HOME=/home/transferflow \
    TRANSFERFLOW_CACHE_DIR=/home/transferflow/.cache/transferflow \
    PREFECT_HOME=/home/transferflow/.prefect PREFECT_SERVER_ANALYTICS_ENABLED=false \
    TF_FORCE_GPU_ALLOW_GROWTH=true
COPY deployments/images/prepare-base.sh deployments/images/install-role.sh /usr/local/bin/
RUN prepare-base.sh
WORKDIR /home/transferflow

# One install stage per role: a virtual environment from that role's wheels, nothing else. The
# wheels stay in these stages; the targets copy only the environment.
FROM base AS install-trainer
COPY build/wheelhouse/trainer/ /wheels/
RUN install-role.sh /wheels

FROM gpu-base AS install-gpu
COPY build/wheelhouse/gpu/ /wheels/
RUN install-role.sh /wheels

FROM base AS install-serve
COPY build/wheelhouse/serve/ /wheels/
RUN install-role.sh /wheels

FROM gpu-base AS install-ray
COPY build/wheelhouse/ray/ /wheels/
RUN install-role.sh /wheels

# The targets: a base plus one role's environment, run as the unprivileged user 10001 (the
# manifests' runAsUser).
FROM base AS trainer
COPY --from=install-trainer /opt/transferflow /opt/transferflow
USER 10001:10001
ENTRYPOINT ["transferflow"]
CMD ["--help"]

FROM gpu-base AS gpu
COPY --from=install-gpu /opt/transferflow /opt/transferflow
USER 10001:10001
ENTRYPOINT ["transferflow"]
CMD ["--help"]

FROM base AS serve
COPY --from=install-serve /opt/transferflow /opt/transferflow
USER 10001:10001
EXPOSE 8501
ENTRYPOINT ["transferflow", "serve"]
CMD ["--help"]

FROM gpu-base AS ray
COPY --from=install-ray /opt/transferflow /opt/transferflow
USER 10001:10001
# KubeRay starts the node itself (ray start ... --block): no entrypoint of ours in the way.
CMD ["ray", "--help"]
