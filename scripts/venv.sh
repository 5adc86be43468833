#!/usr/bin/env bash
# `make venv` / `make gateway-venv`: create VENV (if missing) and install REQUIREMENTS,
# tensorflow-serving-api without its dependencies (it declares full tensorflow; the
# protos it needs come from TensorFlow or tensorflow-protobuf), and this checkout
# in editable mode.
#   scripts/venv.sh VENV REQUIREMENTS TFS_API
set -euo pipefail
venv=$1 requirements=$2 tfs_api=$3
pip=("$venv/bin/pip" install --quiet --disable-pip-version-check)
test -x "$venv/bin/python" || "${PYTHON:-python3}" -m venv "$venv"
"${pip[@]}" -r "$requirements"
"${pip[@]}" --no-deps "$tfs_api"
"${pip[@]}" --no-deps -e .
