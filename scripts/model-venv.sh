#!/usr/bin/env bash
# `make model-venv`: the TensorFlow-free OpenVINO model server, as
# image-model-python.dockerfile installs it: requirements/model-server.txt without
# openvino-telemetry (OpenVINO falls back to a no-op stub), tensorflow-serving-api
# without its dependencies, this checkout editable, and the two error-code protos
# that tensorflow-protobuf lacks (scripts/tf_free_protos.sh).
#   scripts/model-venv.sh VENV TFS_API
set -euo pipefail
venv=$1 tfs_api=$2
pip=("$venv/bin/pip" install --quiet --disable-pip-version-check)
test -x "$venv/bin/python" || "${PYTHON:-python3}" -m venv "$venv"
"${pip[@]}" -r requirements/model-server.txt
"$venv/bin/pip" uninstall --quiet --yes openvino-telemetry
"${pip[@]}" --no-deps "$tfs_api"
"${pip[@]}" --no-deps -e .
scripts/tf_free_protos.sh "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
