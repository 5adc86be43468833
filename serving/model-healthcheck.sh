#!/bin/bash
# Healthy only when TF Serving reports a version of the model as AVAILABLE.
#
# TF Serving's REST status page answers 200 while the model is still loading
# (or after it failed), so the status code alone proves nothing: we read the
# body of GET /v1/models/<name> and look for "state": "AVAILABLE".
# The tensorflow/serving image ships bash but no curl or wget, so the request
# goes through bash's /dev/tcp; nothing is installed into the image.
#
# Used by the Docker HEALTHCHECK (image-model.dockerfile) and by the Kubernetes
# readiness/startup probes (kube-config/model-deployment.yaml).
# Environment: MODEL_NAME (default kitchenware), REST_PORT (default 8501),
# HEALTHCHECK_HOST (default 127.0.0.1).
set -u
name="${MODEL_NAME:-kitchenware}"
port="${REST_PORT:-8501}"
host="${HEALTHCHECK_HOST:-127.0.0.1}"

if ! exec 3<>"/dev/tcp/${host}/${port}"; then
    echo "model-healthcheck: nothing listens on ${host}:${port}" >&2
    exit 1
fi
printf 'GET /v1/models/%s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' \
    "$name" "$host" >&3
response="$(timeout 5 cat <&3)"
exec 3<&-

status_line="${response%%$'\r'*}"
case "$status_line" in
    "HTTP/1."?" 200"*) ;;
    *)
        echo "model-healthcheck: ${name}: ${status_line:-no answer}" >&2
        exit 1
        ;;
esac
if grep -Eq '"state"[[:space:]]*:[[:space:]]*"AVAILABLE"' <<<"$response"; then
    exit 0
fi
echo "model-healthcheck: ${name} has no AVAILABLE version yet" >&2
exit 1
