# Kitchenware: every target sets up what it needs on first use. `make help` lists them.
# A target's help is the `## ...` comment on its line; `##@` lines head a section.
# Deployment targets (compose, kind, EKS) live in make/deploy.mk; recipes longer than
# a few lines live in scripts/.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
GW_VENV := .venv-gateway
MODEL_VENV := .venv-model
BIN := $(VENV)/bin
# tensorflow-serving-api declares a dependency on full tensorflow; we install it
# with --no-deps (the protos it needs come from TensorFlow or tensorflow-protobuf).
TFS_API := tensorflow-serving-api==2.21.0
DEMO_DIR ?= demo
# COMMAND:Debian package, installed by `make system-deps` when the command is missing.
SYSTEM_DEPS := chromium:chromium docker-compose:docker-compose nginx:nginx-light

.DEFAULT_GOAL := help
.PHONY: help venv gateway-venv model-venv system-deps test test-fast lint demo serve quality skew-check \
	lock clean diagram bench bench-openvino load load-sweep faults probe

##@ Setting up and testing

help: ## list every target with its one-line help
	@awk 'BEGIN { FS = ":[^#]*## " } \
	  /^##@ / { printf "\n%s\n", substr($$0, 5); next } \
	  /^[a-zA-Z0-9_-]+:[^=]*## / { printf "  %-16s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

$(BIN)/.installed: pyproject.toml requirements/dev.txt
	PYTHON=$(PYTHON) scripts/venv.sh $(VENV) requirements/dev.txt $(TFS_API)
	touch $@

venv: $(BIN)/.installed ## .venv: everything (TensorFlow, tests, tools), this checkout editable

# The gateway tier exactly as its Docker image installs it (tests prove the gateway is small).
$(GW_VENV)/bin/.installed: pyproject.toml requirements/gateway.txt
	PYTHON=$(PYTHON) scripts/venv.sh $(GW_VENV) requirements/gateway.txt $(TFS_API)
	touch $@

gateway-venv: $(GW_VENV)/bin/.installed ## .venv-gateway: the TensorFlow-free gateway tier only

# The OpenVINO model server exactly as image-model-python.dockerfile installs it: the
# model-server tests run their --backend openvino servers here, proving they need no TensorFlow.
$(MODEL_VENV)/bin/.installed: pyproject.toml requirements/model-server.txt serving/protos
	PYTHON=$(PYTHON) scripts/model-venv.sh $(MODEL_VENV) $(TFS_API)
	touch $@

model-venv: $(MODEL_VENV)/bin/.installed ## .venv-model: the TensorFlow-free OpenVINO model server only

system-deps: ## Debian packages some tests drive for real (as root; otherwise those tests skip)
	@scripts/debian-deps.sh $(SYSTEM_DEPS)

test: venv gateway-venv model-venv system-deps ## the whole test-suite (what CI runs first)
	$(BIN)/python -m pytest

test-fast: venv ## the tests not marked slow
	$(BIN)/python -m pytest -m "not slow"

lint: venv ## ruff check, ruff format --check, import contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

lock: ## regenerate the pinned requirements/*.txt from pyproject.toml
	scripts/lock.sh

clean: ## remove the venvs, caches and the demo folder
	rm -rf $(VENV) $(GW_VENV) $(MODEL_VENV) .pytest_cache .ruff_cache $(DEMO_DIR)

##@ Running it

demo: venv gateway-venv ## sample data -> prep -> train -> export -> serve -> classify
	$(BIN)/python -m devtools.demo --dir $(DEMO_DIR)

serve: venv gateway-venv ## model server + gateway on the latest exported model
	$(BIN)/python -m devtools.serve

# About 20 minutes on 2 CPU cores; nice, since it is not part of `make test`.
quality: venv ## the quality report, docu/QUALITY.md (tune grid, recipe on real photos, TTA)
	nice $(BIN)/python -m devtools.quality

MODEL_BASE ?= models/kitchenware
skew-check: venv ## load MODEL_BASE with the serving image's TensorFlow (cached throw-away venv)
	$(BIN)/python -m devtools.skew $(MODEL_BASE)

diagram: venv ## docu/architecture.png from its source, docu/architecture.py
	$(BIN)/python docu/architecture.py docu/architecture.png

##@ Evidence (docu/BENCHMARKS.md, docu/RELIABILITY.md): long runs on 127.0.0.1

LOAD_ARGS ?= --clients 8 --seconds 60
SWEEP ?= 1,2,4,8,16

load: venv ## N clients x T s: throughput, p50/p95/p99, errors, RSS before/after (LOAD_ARGS)
	$(BIN)/python -m devtools.load $(LOAD_ARGS)

load-sweep: venv ## latency percentiles vs concurrency -> docu/images/latency_vs_concurrency.png
	$(BIN)/python -m devtools.load --concurrency-sweep $(SWEEP)

probe: venv gateway-venv ## hostile cases in a loopback-only network namespace (root), figures per case
	PY=$(BIN)/python scripts/probe.sh

faults: venv ## model server killed, slow URLs, worker SIGKILL, broken version, under load
	$(BIN)/python -m devtools.faults

bench: venv gateway-venv ## every benchmark script in turn (each prints its figures and the machine)
	PY=$(BIN)/python scripts/bench.sh $(LOAD_ARGS)

bench-openvino: venv gateway-venv model-venv ## model server on OpenVINO vs TensorFlow, side by side
	$(BIN)/python -m devtools.bench_openvino

include make/deploy.mk
