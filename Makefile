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

.PHONY: help venv gateway-venv system-deps test test-fast lint demo serve quality skew-check lock clean bench \
	load load-sweep faults probe

help:
	@echo "make test    - install everything into .venv and run the whole test-suite"
	@echo "make demo    - sample data -> prep -> train -> export -> serve -> classify"
	@echo "make serve   - model server + gateway on the latest exported model"
	@echo "make lint    - ruff"
	@echo "make lock    - regenerate the pinned requirements/*.txt from pyproject.toml"
	@echo "make load    - 8 clients x 60 s against gateway + model server (make load-sweep: plot)"
	@echo "make faults  - kill/slow/broken scenarios under load; make bench: every benchmark"
	@echo "make probe   - hostile cases in a loopback-only network namespace (root), figures per case"
	@echo "make compose-test - build both images, run compose and the kind pod specs under Docker (root, Linux)"

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
	$(GW_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

gateway-venv: $(GW_VENV)/bin/.installed

# Debian packages some tests drive for real (headless Chromium, docker-compose's
# offline config check, nginx in front of every test gateway). Installed only when
# missing, and only as root.
system-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null || missing="$$missing nginx-light"; \
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
	$(BIN)/lint-imports

demo: venv gateway-venv
	$(BIN)/python -m devtools.demo --dir $(DEMO_DIR)

# The quality report (docu/QUALITY.md): a tune grid ranked on val, the documented
# recipe on real photos scored once on the test split with and without TTA, class-weight
# and augmentation variants, a from-scratch baseline, and where stage 1's time goes.
# About 20 minutes on 2 CPU cores; nice, since it is not part of `make test`.
quality: venv
	nice $(BIN)/python -m devtools.quality

# Load an export with the serving image's TensorFlow (image-model.dockerfile's
# TF_SERVING_VERSION) in a cached throw-away venv; the tests run the same check.
MODEL_BASE ?= models/kitchenware
skew-check: venv
	$(BIN)/python -m devtools.skew $(MODEL_BASE)

serve: venv gateway-venv
	$(BIN)/python -m devtools.serve

# Pinned requirement files, generated from pyproject.toml in throw-away venvs.
lock:
	scripts/lock.sh

clean:
	rm -rf $(VENV) $(GW_VENV) .pytest_cache .ruff_cache $(DEMO_DIR)

# ---------------------------------------------------------------------------
# Evidence (docu/BENCHMARKS.md, docu/RELIABILITY.md): long runs, one command each.
# Each starts its own model server + gunicorn gateway on 127.0.0.1.
# ---------------------------------------------------------------------------
LOAD_ARGS ?= --clients 8 --seconds 60
SWEEP ?= 1,2,4,8,16

load: venv  # N clients x T s: throughput, p50/p95/p99, errors, RSS before/after
	$(BIN)/python -m devtools.load $(LOAD_ARGS)

load-sweep: venv  # latency percentiles vs concurrency -> docu/images/latency_vs_concurrency.png
	$(BIN)/python -m devtools.load --concurrency-sweep $(SWEEP)

probe: venv gateway-venv  # hostile cases (bombs, slow clients, metadata URLs, ...) in a loopback-only netns (root)
	PY=$(BIN)/python scripts/probe.sh

faults: venv  # model server killed, slow URLs, worker SIGKILL, broken version, under load
	$(BIN)/python -m devtools.faults

# ImageDataGenerator (the baseline of bench_train.py pipeline) lives in tf-keras;
# --no-deps because tf-keras declares full tensorflow, which would overwrite tensorflow-cpu.
TF_KERAS := tf-keras==2.21.0

bench: venv gateway-venv  # every benchmark script in turn (each prints its figures and the machine)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps $(TF_KERAS)
	$(BIN)/python -m devtools.bench_prep
	$(BIN)/python -m devtools.bench_train pipeline
	$(BIN)/python -m devtools.bench_train augment
	$(BIN)/python -m devtools.bench_train step
	$(BIN)/python -m devtools.bench_serving
	$(BIN)/python -m devtools.bench_gateway all
	$(BIN)/python -m devtools.load $(LOAD_ARGS)

# ===========================================================================
# Deployment (docu/deploy.md): docker-compose, kind, AWS EKS.
# Every target first checks for the tools it needs (need-*) and stops with a
# clear message when one is missing. The artefacts themselves are validated
# offline by tests/deploy/test_deploy.py (part of `make test`).
# ===========================================================================
MODEL_VERSION ?= 1
IMAGE_TAG ?= $(MODEL_VERSION)
MODEL_IMAGE := kitchenware-model
GATEWAY_IMAGE := kitchenware-gateway
PROXY_IMAGE := kitchenware-proxy
KIND_CLUSTER := kitchenware
KIND_CONTEXT := kind-$(KIND_CLUSTER)
KIND_URL := http://localhost:8080
COMPOSE_URL := http://localhost:9696
K8S_NAMESPACE := kitchenware
METRICS_SERVER := https://github.com/kubernetes-sigs/metrics-server/releases/download/v0.7.2/components.yaml
AWS_REGION ?= $(shell sed -n 's/^  region: *//p' eks-config.yaml)
# Evaluated only by the targets that use them (after need-aws).
AWS_ACCOUNT_ID = $(shell aws sts get-caller-identity --query Account --output text 2>/dev/null)
ECR_REGISTRY = $(AWS_ACCOUNT_ID).dkr.ecr.$(AWS_REGION).amazonaws.com
# Docker Compose v2 plugin when present, else the standalone docker-compose.
COMPOSE = $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
# Photos for the smoke tests; by default a few synthetic drawings.
TEST_IMAGES ?=
DEPLOY_SAMPLE := build/deploy-sample

.PHONY: need-docker need-compose need-kind need-kubectl need-eksctl need-aws model-check \
	images compose-up compose-down compose-test compose-smoke docker-deps kind-up kind-load kind-deploy kind-test \
	kind-down ecr-push eks-up eks-deploy eks-test eks-down diagram smoke-images

need-docker:
	@command -v docker >/dev/null 2>&1 || { echo "make $(MAKECMDGOALS): docker is not installed (https://docs.docker.com/get-docker/)" >&2; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "make $(MAKECMDGOALS): docker is installed but its daemon is not reachable (is it running? may you use it?)" >&2; exit 1; }
need-compose: need-docker
	@docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 || { echo "make $(MAKECMDGOALS): neither 'docker compose' nor docker-compose is installed" >&2; exit 1; }
need-kind:
	@command -v kind >/dev/null 2>&1 || { echo "make $(MAKECMDGOALS): kind is not installed (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)" >&2; exit 1; }
need-kubectl:
	@command -v kubectl >/dev/null 2>&1 || { echo "make $(MAKECMDGOALS): kubectl is not installed (https://kubernetes.io/docs/tasks/tools/)" >&2; exit 1; }
need-eksctl:
	@command -v eksctl >/dev/null 2>&1 || { echo "make $(MAKECMDGOALS): eksctl is not installed (https://eksctl.io/installation/)" >&2; exit 1; }
need-aws:
	@command -v aws >/dev/null 2>&1 || { echo "make $(MAKECMDGOALS): the AWS CLI (aws) is not installed (https://aws.amazon.com/cli/)" >&2; exit 1; }
	@aws sts get-caller-identity >/dev/null 2>&1 || { echo "make $(MAKECMDGOALS): aws has no working credentials (run 'aws configure' or set AWS_PROFILE)" >&2; exit 1; }

model-check:
	@test -f models/kitchenware/$(MODEL_VERSION)/saved_model.pb || { echo "make $(MAKECMDGOALS): no exported model in models/kitchenware/$(MODEL_VERSION)/; run: kitchenware export --model runs/latest/best.keras --out models/kitchenware --version $(MODEL_VERSION)" >&2; exit 1; }

# The three images, tagged IMAGE_TAG (default: the model version).
images: need-docker model-check
	docker build -f image-model.dockerfile --build-arg MODEL_VERSION=$(MODEL_VERSION) -t $(MODEL_IMAGE):$(IMAGE_TAG) .
	docker build -f image-gateway.dockerfile --build-arg TFS_API=$(TFS_API) -t $(GATEWAY_IMAGE):$(IMAGE_TAG) .
	docker build -f image-proxy.dockerfile -t $(PROXY_IMAGE):$(IMAGE_TAG) .

# Synthetic photos for the smoke tests, drawn with the TensorFlow-free gateway venv.
smoke-images: gateway-venv
	@test -n "$(TEST_IMAGES)" || test -d $(DEPLOY_SAMPLE) || $(GW_VENV)/bin/kitchenware sample-data $(DEPLOY_SAMPLE) --per-class 1 --test-per-class 1 >/dev/null
SMOKE_IMAGES = $(or $(TEST_IMAGES),$(shell ls $(DEPLOY_SAMPLE)/images/* 2>/dev/null | head -n 3))

compose-up: need-compose model-check gateway-venv
	MODEL_VERSION=$(MODEL_VERSION) IMAGE_TAG=$(IMAGE_TAG) $(COMPOSE) -f docker-compose.yaml up -d --build
	$(GW_VENV)/bin/python -m devtools.wait_ready $(COMPOSE_URL) --timeout 300

# Against a stack you started with compose-up (any Docker host, no root needed).
compose-smoke: gateway-venv smoke-images
	$(GW_VENV)/bin/python -m devtools.wait_ready $(COMPOSE_URL) --timeout 60
	$(GW_VENV)/bin/python test.py --gateway $(COMPOSE_URL) $(SMOKE_IMAGES)

# The deployment run for real (tests/docker, root on Linux): builds both images with a
# daemon that has no networking, runs docker-compose.yaml and the kind overlay's pod
# specs under a second daemon inside a loopback-only network namespace, and checks
# that the machine's iptables rules and ip_forward are unchanged. Cleans up after
# itself, also after a failure or Ctrl-C.
compose-test: venv docker-deps
	KITCHENWARE_REQUIRE_DOCKER=1 $(BIN)/python -m pytest tests/docker; \
	  status=$$?; $(BIN)/python -m devtools.docker_sandbox cleanup; exit $$status

# Debian's Docker engine, docker-compose, mmdebstrap (the stand-in base image) and curl.
docker-deps:
	@missing=""; \
	for tool in dockerd:docker.io docker-compose:docker-compose mmdebstrap:mmdebstrap curl:curl nsenter:util-linux iptables-save:iptables; do \
	  command -v $${tool%%:*} >/dev/null || missing="$$missing $${tool##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "make compose-test needs root (dockerd, network namespaces)" >&2; exit 1; fi; \
	fi

compose-down: need-compose
	$(COMPOSE) -f docker-compose.yaml down

kind-up: need-docker need-kind need-kubectl
	kind create cluster --config kube-config/kind-config.yaml
	# metrics-server feeds the HorizontalPodAutoscalers; kind's kubelets use self-signed certificates.
	kubectl --context $(KIND_CONTEXT) apply -f $(METRICS_SERVER)
	kubectl --context $(KIND_CONTEXT) -n kube-system patch deployment metrics-server --type=json \
	  -p '[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--kubelet-insecure-tls"}]'

kind-load: need-kind images
	kind load docker-image $(MODEL_IMAGE):$(IMAGE_TAG) $(GATEWAY_IMAGE):$(IMAGE_TAG) $(PROXY_IMAGE):$(IMAGE_TAG) --name $(KIND_CLUSTER)

kind-deploy: need-kubectl
	set -o pipefail; kubectl kustomize kube-config/overlays/kind \
	  | sed -e 's|:IMAGE_TAG$$|:$(IMAGE_TAG)|' \
	  | kubectl --context $(KIND_CONTEXT) apply -f -
	kubectl --context $(KIND_CONTEXT) -n $(K8S_NAMESPACE) rollout status deployment/model --timeout=300s
	kubectl --context $(KIND_CONTEXT) -n $(K8S_NAMESPACE) rollout status deployment/gateway --timeout=180s

kind-test: gateway-venv smoke-images
	$(GW_VENV)/bin/python -m devtools.wait_ready $(KIND_URL) --timeout 120
	$(GW_VENV)/bin/python test.py --gateway $(KIND_URL) $(SMOKE_IMAGES)

kind-down: need-kind
	kind delete cluster --name $(KIND_CLUSTER)

# COSTS MONEY from here on: see docu/deploy.md, and finish with `make eks-down`.
ecr-push: need-aws need-docker images
	@for repo in $(MODEL_IMAGE) $(GATEWAY_IMAGE) $(PROXY_IMAGE); do \
	  aws ecr describe-repositories --region $(AWS_REGION) --repository-names $$repo >/dev/null 2>&1 \
	  || aws ecr create-repository --region $(AWS_REGION) --repository-name $$repo >/dev/null || exit 1; \
	done
	aws ecr get-login-password --region $(AWS_REGION) | docker login --username AWS --password-stdin $(ECR_REGISTRY)
	for image in $(MODEL_IMAGE) $(GATEWAY_IMAGE) $(PROXY_IMAGE); do \
	  docker tag $$image:$(IMAGE_TAG) $(ECR_REGISTRY)/$$image:$(IMAGE_TAG) \
	  && docker push $(ECR_REGISTRY)/$$image:$(IMAGE_TAG) || exit 1; \
	done

eks-up: need-eksctl need-aws
	eksctl create cluster -f eks-config.yaml

eks-deploy: need-kubectl need-aws
	set -o pipefail; kubectl kustomize kube-config/overlays/eks \
	  | sed -e 's|ECR_REGISTRY/|$(ECR_REGISTRY)/|' -e 's|:IMAGE_TAG$$|:$(IMAGE_TAG)|' \
	  | kubectl apply -f -
	kubectl -n $(K8S_NAMESPACE) rollout status deployment/model --timeout=600s
	kubectl -n $(K8S_NAMESPACE) rollout status deployment/gateway --timeout=300s

eks-test: need-kubectl gateway-venv smoke-images
	@host=$$(kubectl -n $(K8S_NAMESPACE) get service gateway -o jsonpath='{.status.loadBalancer.ingress[0].hostname}'); \
	test -n "$$host" || { echo "make eks-test: the gateway Service has no load balancer address yet (kubectl -n $(K8S_NAMESPACE) get service gateway)" >&2; exit 1; }; \
	$(GW_VENV)/bin/python -m devtools.wait_ready http://$$host --timeout 600 \
	&& $(GW_VENV)/bin/python test.py --gateway http://$$host $(SMOKE_IMAGES)

# Deletes the namespace first so the AWS load balancer goes before the VPC.
eks-down: need-eksctl need-kubectl
	kubectl delete namespace $(K8S_NAMESPACE) --ignore-not-found --wait=true
	eksctl delete cluster -f eks-config.yaml --wait

# docu/architecture.png from its source, docu/architecture.py.
diagram: venv
	$(BIN)/python docu/architecture.py docu/architecture.png
