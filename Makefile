# Kitchenware: every target sets up what it needs on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
GW_VENV := .venv-gateway
BIN := $(VENV)/bin
# tensorflow-serving-api declares a dependency on full tensorflow; we install it
# with --no-deps (the protos it needs come from TensorFlow or tensorflow-protobuf).
TFS_API := tensorflow-serving-api==2.21.0
DEMO_DIR ?= demo

.PHONY: help venv gateway-venv system-deps test test-fast lint demo serve lock clean bench

help:
	@echo "make test    - install everything into .venv and run the whole test-suite"
	@echo "make demo    - sample data -> prep -> train -> export -> serve -> classify"
	@echo "make serve   - model server + gateway on the latest exported model"
	@echo "make lint    - ruff"
	@echo "make lock    - regenerate the pinned requirements/*.txt from pyproject.toml"

$(BIN)/.installed: pyproject.toml requirements/dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps $(TFS_API)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

venv: $(BIN)/.installed

# A second, TensorFlow-free environment: the gateway tier exactly as its
# Docker image installs it (used by the tests that prove the gateway is small).
$(GW_VENV)/bin/.installed: pyproject.toml requirements/gateway.txt
	test -x $(GW_VENV)/bin/python || $(PYTHON) -m venv $(GW_VENV)
	$(GW_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements/gateway.txt
	$(GW_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps $(TFS_API)
	$(GW_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps .
	touch $@

gateway-venv: $(GW_VENV)/bin/.installed

# Debian packages some tests drive for real (headless Chromium, docker-compose's
# offline config check). Installed only when missing, and only as root.
system-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "not root: install$$missing yourself, or the tests that need them skip"; fi; \
	fi

test: venv gateway-venv system-deps
	$(BIN)/python -m pytest

test-fast: venv
	$(BIN)/python -m pytest -m "not slow"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

demo: venv
	$(BIN)/python scripts/demo.py --dir $(DEMO_DIR)

serve: venv
	$(BIN)/python scripts/serve.py

# Pinned requirement files, generated from pyproject.toml in throw-away venvs.
lock:
	scripts/lock.sh

clean:
	rm -rf $(VENV) $(GW_VENV) .pytest_cache .ruff_cache $(DEMO_DIR)
