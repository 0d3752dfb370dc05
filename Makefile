# capture-export developer tasks. `make help` lists them.
#
# The e2e suite needs docker (with a running engine), kind, kubectl and helm:
#   make e2e                 create a kind cluster, build and load the image, deploy MinIO and a bucket,
#                            helm install the chart, run tests/e2e, delete the cluster
#   make e2e KEEP=1          same, but keep the cluster afterwards (then `make e2e-down`)
#   make e2e-up              only set the cluster up (then `pytest -m e2e tests/e2e` reuses it)

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTEST ?= .venv/bin/pytest
DOCKER ?= docker
KIND ?= kind

# Shared with tests/e2e (exported): change them here or on the command line, e.g. `make e2e E2E_CLUSTER=ci`.
E2E_CLUSTER ?= capture-export-e2e
E2E_IMAGE ?= capture-export:e2e
E2E_NAMESPACE ?= capture-export
E2E_RELEASE ?= capture-export
KIND_NODE_IMAGE ?=
KEEP ?= 0
export E2E_CLUSTER E2E_IMAGE E2E_NAMESPACE E2E_RELEASE

KUBECTL := kubectl --context kind-$(E2E_CLUSTER)
HELM := helm --kube-context kind-$(E2E_CLUSTER)
CHART := charts/capture-export

.PHONY: help test chart-crds image e2e e2e-tools e2e-cluster e2e-load e2e-minio e2e-install e2e-up e2e-logs e2e-down

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

test: ## the normal test suite (what CI runs): lint, CRD drift check, pytest
	./test.sh

chart-crds: ## copy the generated CRDs (crds/) into the chart (a test fails when they differ)
	cp crds/*.yaml $(CHART)/crds/

image: ## build the operator image (tag: E2E_IMAGE, default capture-export:e2e)
	$(DOCKER) build -t $(E2E_IMAGE) .

e2e: ## the kind e2e suite, from nothing to nothing (KEEP=1 keeps the cluster)
	@$(MAKE) e2e-tools
	@status=0; \
	$(MAKE) e2e-up && CAPTURE_EXPORT_E2E_READY=1 $(PYTEST) -m e2e tests/e2e -v --timeout=3600 || status=$$?; \
	if [ $$status -ne 0 ]; then $(MAKE) e2e-logs || true; fi; \
	if [ "$(KEEP)" != 1 ]; then $(MAKE) e2e-down; fi; \
	exit $$status

e2e-tools: ## check that docker (running), kind, kubectl and helm are there
	@missing=""; for tool in $(DOCKER) $(KIND) kubectl helm; do \
	  command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then echo "e2e needs docker, kind, kubectl and helm; missing:$$missing" >&2; exit 1; fi; \
	$(DOCKER) info >/dev/null 2>&1 || { echo "the docker engine is not running (docker info failed)" >&2; exit 1; }

e2e-cluster: e2e-tools ## create the kind cluster (kind-config.yaml) unless it exists
	@if $(KIND) get clusters 2>/dev/null | grep -qx '$(E2E_CLUSTER)'; then \
	  echo "kind cluster $(E2E_CLUSTER) exists"; \
	else \
	  $(KIND) create cluster --name $(E2E_CLUSTER) --config kind-config.yaml --wait 180s \
	    $(if $(KIND_NODE_IMAGE),--image $(KIND_NODE_IMAGE)); \
	fi
	$(KUBECTL) wait --for=condition=Ready nodes --all --timeout=180s

# An archive, not `kind load docker-image`: that fails with Docker's containerd image store ("content
# digest not found"). Saving only the engine's own platform keeps the archive importable either way.
e2e-load: e2e-cluster image ## build the image and load it into the kind node (as an image archive)
	archive=$$(mktemp --suffix=.tar); trap 'rm -f "$$archive"' EXIT; \
	platform=linux/$$($(DOCKER) version --format '{{.Server.Arch}}'); \
	$(DOCKER) image save --platform "$$platform" --output "$$archive" $(E2E_IMAGE) 2>/dev/null \
	  || $(DOCKER) image save --output "$$archive" $(E2E_IMAGE); \
	$(KIND) load image-archive "$$archive" --name $(E2E_CLUSTER)

e2e-minio: e2e-load ## deploy MinIO (tests/e2e/minio.yaml) and create the bucket
	$(KUBECTL) apply -f tests/e2e/minio.yaml
	$(KUBECTL) -n minio rollout status deployment/minio --timeout=300s
	$(KUBECTL) -n minio delete job minio-bucket --ignore-not-found --wait
	sed 's|image: capture-export:e2e|image: $(E2E_IMAGE)|' tests/e2e/minio-bucket.yaml | $(KUBECTL) apply -f -
	$(KUBECTL) -n minio wait --for=condition=Complete job/minio-bucket --timeout=300s

e2e-install: e2e-minio ## helm install the chart into a namespace enforcing the restricted Pod Security profile
	$(KUBECTL) create namespace $(E2E_NAMESPACE) --dry-run=client -o yaml | $(KUBECTL) apply -f -
	$(KUBECTL) label namespace $(E2E_NAMESPACE) --overwrite \
	  pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/warn=restricted
	# helm installs crds/ only on first install: apply them so a re-run picks up regenerated CRDs.
	$(KUBECTL) apply --server-side --force-conflicts -f $(CHART)/crds/
	image_id=$$($(DOCKER) image inspect --format '{{.Id}}' $(E2E_IMAGE)); \
	$(HELM) upgrade --install $(E2E_RELEASE) $(CHART) --namespace $(E2E_NAMESPACE) \
	  --values tests/e2e/values.yaml \
	  --set image.repository=$${E2E_IMAGE%:*} --set image.tag=$${E2E_IMAGE##*:} \
	  --set-string "podAnnotations.e2e/image-id=$$image_id" \
	  --wait --timeout 5m
	$(KUBECTL) -n $(E2E_NAMESPACE) rollout status deployment/$(E2E_RELEASE) --timeout=300s

e2e-up: e2e-install ## everything the e2e tests need, idempotent

e2e-logs: ## print what helps debug a failed e2e run
	-$(KUBECTL) get nodes,pods,pvc,events -A -o wide
	-$(KUBECTL) get s3exporters,retentionpolicies -A -o yaml
	-$(KUBECTL) -n $(E2E_NAMESPACE) describe deployment/$(E2E_RELEASE)
	-$(KUBECTL) -n $(E2E_NAMESPACE) logs deployment/$(E2E_RELEASE) --all-containers --tail=500
	-$(KUBECTL) -n minio logs deployment/minio --tail=100

e2e-down: ## delete the kind cluster
	$(KIND) delete cluster --name $(E2E_CLUSTER)
