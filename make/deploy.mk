# Deployment targets (docu/deploy.md): docker-compose, kind, AWS EKS; included by the Makefile.
# Every target first checks for the tools it needs (need-*) and stops with a clear
# message when one is missing. The artefacts themselves are validated offline by
# tests/deploy (part of `make test`).
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
# What `make compose-test` installs when missing (COMMAND:Debian package).
DOCKER_DEPS := dockerd:docker.io docker-compose:docker-compose mmdebstrap:mmdebstrap curl:curl \
	nsenter:util-linux iptables-save:iptables
MISSING = make $(MAKECMDGOALS):

.PHONY: need-docker need-compose need-kind need-kubectl need-eksctl need-aws model-check \
	images compose-up compose-down compose-test compose-smoke docker-deps kind-up kind-load \
	kind-deploy kind-test kind-down ecr-push eks-up eks-deploy eks-test eks-down smoke-images

##@ Tool checks (each deployment target runs the ones it needs first)

need-docker: ## docker is installed and its daemon answers
	@command -v docker >/dev/null 2>&1 || { echo "$(MISSING) docker is not installed (https://docs.docker.com/get-docker/)" >&2; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "$(MISSING) docker is installed but its daemon is not reachable (is it running? may you use it?)" >&2; exit 1; }
need-compose: need-docker ## docker compose (v2) or docker-compose is installed
	@docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 || { echo "$(MISSING) neither 'docker compose' nor docker-compose is installed" >&2; exit 1; }
need-kind: ## kind is installed
	@command -v kind >/dev/null 2>&1 || { echo "$(MISSING) kind is not installed (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)" >&2; exit 1; }
need-kubectl: ## kubectl is installed
	@command -v kubectl >/dev/null 2>&1 || { echo "$(MISSING) kubectl is not installed (https://kubernetes.io/docs/tasks/tools/)" >&2; exit 1; }
need-eksctl: ## eksctl is installed
	@command -v eksctl >/dev/null 2>&1 || { echo "$(MISSING) eksctl is not installed (https://eksctl.io/installation/)" >&2; exit 1; }
need-aws: ## the AWS CLI is installed and has working credentials
	@command -v aws >/dev/null 2>&1 || { echo "$(MISSING) the AWS CLI (aws) is not installed (https://aws.amazon.com/cli/)" >&2; exit 1; }
	@aws sts get-caller-identity >/dev/null 2>&1 || { echo "$(MISSING) aws has no working credentials (run 'aws configure' or set AWS_PROFILE)" >&2; exit 1; }

model-check: ## models/kitchenware/MODEL_VERSION holds an export
	@test -f models/kitchenware/$(MODEL_VERSION)/saved_model.pb || { echo "$(MISSING) no exported model in models/kitchenware/$(MODEL_VERSION)/; run: kitchenware export --model runs/latest/best.keras --out models/kitchenware --version $(MODEL_VERSION)" >&2; exit 1; }

##@ Docker and docker-compose

images: need-docker model-check ## build both images, tagged IMAGE_TAG (default: the model version)
	docker build -f image-model.dockerfile --build-arg MODEL_VERSION=$(MODEL_VERSION) -t $(MODEL_IMAGE):$(IMAGE_TAG) .
	docker build -f image-gateway.dockerfile --build-arg TFS_API=$(TFS_API) -t $(GATEWAY_IMAGE):$(IMAGE_TAG) .
	docker build -f image-proxy.dockerfile -t $(PROXY_IMAGE):$(IMAGE_TAG) .

smoke-images: gateway-venv ## a few synthetic photos for the smoke tests (unless TEST_IMAGES is set)
	@test -n "$(TEST_IMAGES)" || test -d $(DEPLOY_SAMPLE) || $(GW_VENV)/bin/kitchenware sample-data $(DEPLOY_SAMPLE) --per-class 1 --test-per-class 1 >/dev/null
SMOKE_IMAGES = $(or $(TEST_IMAGES),$(shell ls $(DEPLOY_SAMPLE)/images/* 2>/dev/null | head -n 3))

compose-up: need-compose model-check gateway-venv ## docker-compose.yaml up (builds), then wait until ready
	MODEL_VERSION=$(MODEL_VERSION) IMAGE_TAG=$(IMAGE_TAG) $(COMPOSE) -f docker-compose.yaml up -d --build
	$(GW_VENV)/bin/python -m devtools.wait_ready $(COMPOSE_URL) --timeout 300

compose-smoke: gateway-venv smoke-images ## classify the smoke photos through a stack you started with compose-up
	$(GW_VENV)/bin/python -m devtools.wait_ready $(COMPOSE_URL) --timeout 60
	$(GW_VENV)/bin/python test.py --gateway $(COMPOSE_URL) $(SMOKE_IMAGES)

# The deployment run for real (tests/docker, root on Linux): builds both images with a
# daemon that has no networking, runs docker-compose.yaml and the kind overlay's pod
# specs under a second daemon inside a loopback-only network namespace, and checks
# that the machine's iptables rules and ip_forward are unchanged. Cleans up after
# itself, also after a failure or Ctrl-C.
compose-test: venv docker-deps ## build both images, run compose and the kind pod specs under Docker (root, Linux)
	KITCHENWARE_REQUIRE_DOCKER=1 $(BIN)/python -m pytest tests/docker; \
	  status=$$?; $(BIN)/python -m devtools.docker_sandbox cleanup; exit $$status

docker-deps: ## Debian's Docker engine, docker-compose, mmdebstrap, curl, nsenter, iptables (root)
	@scripts/debian-deps.sh --strict --no-recommends $(DOCKER_DEPS)

compose-down: need-compose ## stop the compose stack
	$(COMPOSE) -f docker-compose.yaml down

##@ kind (a local Kubernetes cluster)

kind-up: need-docker need-kind need-kubectl ## create the cluster, with metrics-server for the autoscalers
	kind create cluster --config kube-config/kind-config.yaml
	kubectl --context $(KIND_CONTEXT) apply -f $(METRICS_SERVER)
	# kind's kubelets use self-signed certificates.
	kubectl --context $(KIND_CONTEXT) -n kube-system patch deployment metrics-server --type=json \
	  -p '[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--kubelet-insecure-tls"}]'

kind-load: need-kind images ## build both images and load them into the cluster
	kind load docker-image $(MODEL_IMAGE):$(IMAGE_TAG) $(GATEWAY_IMAGE):$(IMAGE_TAG) $(PROXY_IMAGE):$(IMAGE_TAG) --name $(KIND_CLUSTER)

kind-deploy: need-kubectl ## apply the kind overlay and wait for both rollouts
	set -o pipefail; kubectl kustomize kube-config/overlays/kind \
	  | sed -e 's|:IMAGE_TAG$$|:$(IMAGE_TAG)|' \
	  | kubectl --context $(KIND_CONTEXT) apply -f -
	kubectl --context $(KIND_CONTEXT) -n $(K8S_NAMESPACE) rollout status deployment/model --timeout=300s
	kubectl --context $(KIND_CONTEXT) -n $(K8S_NAMESPACE) rollout status deployment/gateway --timeout=180s

kind-test: gateway-venv smoke-images ## classify the smoke photos through the kind cluster
	$(GW_VENV)/bin/python -m devtools.wait_ready $(KIND_URL) --timeout 120
	$(GW_VENV)/bin/python test.py --gateway $(KIND_URL) $(SMOKE_IMAGES)

kind-down: need-kind ## delete the cluster
	kind delete cluster --name $(KIND_CLUSTER)

##@ AWS EKS (COSTS MONEY: see docu/deploy.md, and finish with `make eks-down`)

ecr-push: need-aws need-docker images ## push both images to ECR (creates the repositories)
	scripts/ecr-push.sh $(AWS_REGION) $(ECR_REGISTRY) $(IMAGE_TAG) $(MODEL_IMAGE) $(GATEWAY_IMAGE) $(PROXY_IMAGE)

eks-up: need-eksctl need-aws ## create the cluster from eks-config.yaml
	eksctl create cluster -f eks-config.yaml

eks-deploy: need-kubectl need-aws ## apply the EKS overlay and wait for both rollouts
	set -o pipefail; kubectl kustomize kube-config/overlays/eks \
	  | sed -e 's|ECR_REGISTRY/|$(ECR_REGISTRY)/|' -e 's|:IMAGE_TAG$$|:$(IMAGE_TAG)|' \
	  | kubectl apply -f -
	kubectl -n $(K8S_NAMESPACE) rollout status deployment/model --timeout=600s
	kubectl -n $(K8S_NAMESPACE) rollout status deployment/gateway --timeout=300s

eks-test: need-kubectl gateway-venv smoke-images ## classify the smoke photos through the load balancer
	scripts/eks-test.sh $(K8S_NAMESPACE) $(GW_VENV)/bin/python $(SMOKE_IMAGES)

# Deletes the namespace first so the AWS load balancer goes before the VPC.
eks-down: need-eksctl need-kubectl ## delete the namespace, then the cluster
	kubectl delete namespace $(K8S_NAMESPACE) --ignore-not-found --wait=true
	eksctl delete cluster -f eks-config.yaml --wait
