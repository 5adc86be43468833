#!/usr/bin/env bash
# `make bench`: every benchmark in turn; each prints its figures and the machine.
#   scripts/bench.sh [load options]    (PY: the project's python, default .venv/bin/python)
set -euo pipefail
py=${PY:-.venv/bin/python}
# ImageDataGenerator (the baseline of bench_train's pipeline) lives in tf-keras; --no-deps
# because tf-keras declares full tensorflow, which would overwrite tensorflow-cpu.
"$(dirname "$py")/pip" install --quiet --disable-pip-version-check --no-deps "${TF_KERAS:-tf-keras==2.21.0}"
"$py" -m devtools.bench_prep
for part in pipeline augment step; do "$py" -m devtools.bench_train "$part"; done
"$py" -m devtools.bench_serving
"$py" -m devtools.bench_gateway all
"$py" -m devtools.bench_explain
"$py" -m devtools.load "$@"
