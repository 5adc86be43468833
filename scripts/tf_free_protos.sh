#!/usr/bin/env bash
# Compile serving/protos into a TensorFlow-free environment's site-packages, so TF
# Serving's GetModelStatus protos import there (see serving/protos/xla/tsl/...).
# Usage: scripts/tf_free_protos.sh SITE_PACKAGES_DIR
# grpcio-tools runs from a throwaway venv: the target keeps its own grpcio/protobuf.
set -euo pipefail
site=${1:?usage: $0 SITE_PACKAGES_DIR}
cd "$(dirname "$0")/.."
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
"${PYTHON:-python3}" -m venv "$tools/venv"
"$tools/venv/bin/pip" install --quiet --disable-pip-version-check "grpcio-tools==${GRPCIO_TOOLS_VERSION:-1.85.4}"
"$tools/venv/bin/python" -m grpc_tools.protoc -I serving/protos --python_out="$site" \
  xla/tsl/protobuf/error_codes.proto tensorflow/core/protobuf/error_codes.proto
echo "compiled serving/protos into $site"
