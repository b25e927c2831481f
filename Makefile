# transferkit: the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.transferkit-installed
APT_PACKAGES := libpython3.11 python3.11-venv git dataset-fashion-mnist qemu-user
export TRANSFERKIT_CACHE ?= $(HOME)/.cache/transferkit
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo demo-vision demo-generative test test-unit test-integration lint bench compile images clean

setup: $(STAMP)
	@$(BIN)/python -m transferkit.setup_assets

$(STAMP): pyproject.toml
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "Installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps aclsum==0.1.2  # data only: never imported (needs sienna)
	@touch $(STAMP)

demo: setup
	$(BIN)/transferkit pipeline run --local

# Images: EfficientNet-Lite0 on Fashion-MNIST, ending with a test PNG answered by the local Triton.
demo-vision: setup
	$(BIN)/transferkit pipeline run --local --params pipelines/transfer_learning/params/demo-vision.yaml \
	  --work-dir runs/vision

demo-generative: setup
	$(BIN)/transferkit pipeline run --local --params pipelines/transfer_learning/params/demo-generative.yaml \
	  --work-dir runs/generative

test: setup
	$(BIN)/python -m pytest tests -q

test-unit: setup
	$(BIN)/python -m pytest tests -q -m "not integration"

test-integration: setup
	$(BIN)/python -m pytest tests -q -m integration

lint: setup
	$(BIN)/ruff check src components pipelines tests benchmarks

bench: setup
	@set -e; for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python $$script; done

compile: setup
	$(BIN)/transferkit pipeline compile

# Lint and build the runtime, runtime-cuda and triton images (docker, podman or buildah), tagged from
# src/transferkit/images.py. Exits 2 having built nothing where no builder exists (e.g. a dev machine
# without a Docker daemon). IMAGES_ARGS="--push" also pushes; "--dry-run" prints the commands.
images: $(STAMP)
	$(BIN)/python images/build.py $(IMAGES_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
