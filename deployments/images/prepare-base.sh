#!/bin/sh
# Ready a base image for transferflow: python3 with its venv module (installed from the distribution's
# archive only when the base lacks it, as NVIDIA's CUDA bases do), and the unprivileged user 10001 that
# the targets run as. The user is written into /etc/passwd directly: a minbase image has no useradd.
set -eu
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt-get update
    apt-get install --yes --no-install-recommends python3 python3-venv ca-certificates
    rm -rf /var/lib/apt/lists/*
fi
grep -q '^transferflow:' /etc/passwd \
    || echo "transferflow:x:10001:10001:transferflow:/home/transferflow:/usr/sbin/nologin" >> /etc/passwd
grep -q '^transferflow:' /etc/group || echo "transferflow:x:10001:" >> /etc/group
mkdir -p /home/transferflow
chown 10001:10001 /home/transferflow
