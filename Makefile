# transferflow: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
S3_DIR := .local/s3
S3_ENV := .local/s3.env
S3_PORT ?= 8333
ARGS ?=
PYTEST_ARGS ?=
DOCS_PORT ?= 8000
# MkDocs 1.6 with Material and mkdocs-gen-files print a banner about MkDocs 2 on every build; it says
# nothing about this site.
DOCS_ENV := NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true
# Three xdist workers on 2 cores: tests spend part of their time waiting on their servers and
# subprocesses, and a third worker fills those gaps (fresh clone: pytest 15:49 with 2, 14:50 with 3).
TEST_WORKERS ?= 3
PREFECT_PORT ?= 4200
RAY_DIR := .local/ray
RAY_WORKERS ?= 2
DEMO_DIR := .local/demo
# The demo's shapes are 32 px and its weights random: it trains at their own size (auto would
# upscale small photos to 64 px for pretrained filters' sake, at 4x the compute).
DEMO_ARGS := --dataset $(DEMO_DIR)/shapes --weights $(DEMO_DIR)/vgg16-random.weights.h5 \
	--image-size 32 --fine-tune-epochs 2
DEMO_PARAMS := {"dataset": "$(CURDIR)/$(DEMO_DIR)/shapes", \
	"weights": "$(CURDIR)/$(DEMO_DIR)/vgg16-random.weights.h5", "image_size": 32, "fine_tune_epochs": 2}
# Without PARAMS, `make trigger` runs the offline demo configuration; PARAMS='{}' means
# the production defaults (CIFAR-10 from its URL, ImageNet weights).
PARAMS ?= $(DEMO_PARAMS)
DEPLOYMENT ?= retrain/manual
# make stack-up WATCH=s3://bucket/photos/ also starts the dataset watcher (retrain/on-data runs when
# new data has landed there and stayed quiet for WATCH_DEBOUNCE seconds).
WATCH ?=
WATCH_DEBOUNCE ?= 600
STACK := $(BIN)/python -m transferflow.devstack.stack --port $(PREFECT_PORT)
# The local stack's server, unless PREFECT_API_URL points at another one.
STACK_API = $${PREFECT_API_URL:-http://127.0.0.1:$(PREFECT_PORT)/api}

# TensorFlow's C++ start-up lines: `transferflow` hides them itself (`transferflow --verbose ...`
# shows them). A TF_CPP_MIN_LOG_LEVEL set here would count as the user's choice and bring them back.

# True when the environment already names an object store (cloud or other).
S3_CONFIGURED := $(strip $(AWS_ENDPOINT_URL)$(AWS_ENDPOINT_URL_S3)$(AWS_ACCESS_KEY_ID)$(AWS_PROFILE))

.PHONY: help venv venv-run lock image run demo demo-data models datasets prefetch storage-up storage-down test test-faults test-unit lint clean \
	server pools worker-cpu worker-gpu deploy trigger ui stack-up stack-down stack-status logs serve \
	ray-up ray-down ray-status docs docs-serve

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'
	@echo "  variables: ARGS='--dataset DIR ...' (run, prefetch), DATASET (prefetch), PARAMS='{...}' DEPLOYMENT (trigger),"
	@echo "             WATCH=s3://bucket/prefix/ WATCH_DEBOUNCE (stack-up),"
	@echo "             PYTEST_ARGS TEST_WORKERS (test), S3_PORT (storage-up), PREFECT_PORT (server, ui), MODEL (serve),"
	@echo "             RAY_WORKERS (ray-up), DOCS_PORT (docs-serve), UPGRADE=1 (lock), TARGETS BASE GPU_BASE (image)"

venv: $(VENV)/.dev-stamp ## create .venv with every role and the dev tools, from the lock (requirements/dev.txt)

venv-run: $(VENV)/.run-stamp ## create .venv with only what running needs, from the lock (requirements/run.txt)

# A role's pinned, hash-checked requirements (exported from uv.lock by `make lock`), then transferflow
# itself without dependencies: nothing is resolved, so every install gets the versions in the lock.
# The installer is uv, at the version the lock pins (pip installs it, hash-checked): it installs the
# role in about 25 s where pip took 100 s, most of that compiling bytecode one file at a time.
# --no-config: the project's [tool.uv] settings are for `make lock`, not for installing exact pins.
# --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set (CI images often do), every process would
# otherwise compile TensorFlow's modules again as it imports them (13 s instead of 5).
# The dev role holds every package of the run role at the same version, so either order works;
# `make venv` then removes what the lock does not pin (left by an older install) and checks the rest.
# uv reads no pip configuration: a mirror set as PIP_INDEX_URL is passed on (or set UV_DEFAULT_INDEX).
UV_INSTALL = $(BIN)/uv pip install --quiet --no-config --python $(BIN)/python --no-deps \
	$(if $(PIP_INDEX_URL),--default-index $(PIP_INDEX_URL))
$(VENV)/.%-stamp: requirements/%.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11, 4) else "transferflow needs Python >= 3.11.4 (tarfile extraction filters); set PYTHON=python3.12")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@awk '/^uv==/ {on = 1} on {print} on && !/\\$$/ {exit}' requirements/dev.txt > $(VENV)/installer.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r $(VENV)/installer.txt
	$(UV_INSTALL) --require-hashes --compile-bytecode -r requirements/$*.txt
	$(UV_INSTALL) --no-build-isolation -e .
	@if [ $* = dev ]; then $(BIN)/python -m transferflow.devstack.lockfile check --remove-strays requirements/dev.txt; fi
	@touch $@

# The roles' requirement files, exported from uv.lock. uv is needed here only (the dev role has it);
# tests/unit/test_lock.py checks that the files match the lock.
UV ?= $(if $(wildcard $(BIN)/uv),$(BIN)/uv,uv)
EXPORT = $(UV) export --quiet --frozen --no-emit-project --format requirements-txt

lock: ## re-resolve uv.lock (UPGRADE=1: newest allowed versions) and export requirements/<role>.txt
	@command -v $(UV) >/dev/null || { echo "make lock needs uv: make venv (the dev role has it) or pip install uv"; exit 2; }
	$(UV) lock $(if $(UPGRADE),--upgrade)
	$(EXPORT) --extra=local --extra=serve -o requirements/run.txt   # make run: core + local S3 + serve
	$(EXPORT) --extra=dev -o requirements/dev.txt                    # make test, make docs: every role

run: venv-run ## run the retrain flow: make run ARGS="--dataset DIR --weights none"
ifeq ($(S3_CONFIGURED),)
	@$(MAKE) --no-print-directory storage-up
endif
	$(BIN)/transferflow train $(ARGS)

demo: venv-run demo-data ## offline demo: retrain on generated images with random weights
	@$(MAKE) --no-print-directory run ARGS="$(DEMO_ARGS) $(ARGS)"

demo-data: $(DEMO_DIR)/.done ## generate the demo's images and random VGG16 weights in .local/demo

$(DEMO_DIR)/.done: | venv-run
	$(BIN)/python -m transferflow.devstack.samples $(DEMO_DIR)/shapes --classes 3 --per-class 40 \
		--weights $(DEMO_DIR)/vgg16-random.weights.h5
	@touch $@

models: venv-run ## list registered models and versions
	$(BIN)/transferflow models list

datasets: venv-run ## list prepared datasets and mirrored sources
	$(BIN)/transferflow datasets list

prefetch: venv-run ## download, mirror and prepare a dataset: make prefetch DATASET=cifar10 [ARGS=--image-size 224]
	@test -n "$(DATASET)" || { echo "usage: make prefetch DATASET=<built-in, URL, s3:// or path> [ARGS=...]"; exit 2; }
ifeq ($(S3_CONFIGURED),)
	@$(MAKE) --no-print-directory storage-up
endif
	$(BIN)/transferflow datasets prefetch "$(DATASET)" $(ARGS)

serve: venv-run ## serve a model over HTTP, in the foreground: make serve MODEL=name@production [ARGS="--port 8501"]
	@test -n "$(MODEL)" || { echo "usage: make serve MODEL=<name>@<alias> or <name>:<version> [ARGS='--port 8501 ...']"; exit 2; }
ifeq ($(S3_CONFIGURED),)
	@$(MAKE) --no-print-directory storage-up
endif
	$(BIN)/transferflow serve "$(MODEL)" $(ARGS)

storage-up: venv-run ## start the local S3 server (SeaweedFS, loopback, credentials) on S3_PORT
	$(BIN)/python -m transferflow.devstack.s3server up --dir $(S3_DIR) --env-file $(S3_ENV) --port $(S3_PORT)

storage-down: ## stop the local S3 server (its data stays in .local/s3)
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m transferflow.devstack.s3server down --dir $(S3_DIR); fi

server: venv-run ## start `prefect server` (SQLite in .local/prefect, loopback) and wait until ready
	$(STACK) server

pools: venv-run ## create or update the cpu and gpu work pools (idempotent)
	$(STACK) pools

worker-cpu: venv-run ## start a process worker for the cpu pool (background, log in .local/prefect)
	$(STACK) worker --pool cpu

worker-gpu: venv-run ## start a process worker for the gpu pool, one training run at a time
	$(STACK) worker --pool gpu

deploy: venv-run ## create or update the deployments in deployments/prefect.yaml
	$(STACK) deploy

trigger: venv-run $(if $(filter file,$(origin PARAMS)),demo-data) ## run retrain/manual and watch it (PARAMS='{...}')
	PREFECT_API_URL=$(STACK_API) $(BIN)/prefect deployment run $(DEPLOYMENT) \
		--param config='$(PARAMS)' --watch

ui: ## print the Prefect UI's URL
	@echo "http://127.0.0.1:$(PREFECT_PORT)"

stack-up: venv-run ## storage, server, pools, workers, deployments (and the watcher: WATCH=s3://...), in the background
ifeq ($(S3_CONFIGURED),)
	@$(MAKE) --no-print-directory storage-up
endif
	$(STACK) up $(if $(WATCH),--watch $(WATCH) --debounce $(WATCH_DEBOUNCE))

stack-down: ## stop workers, server and the local storage
	@if [ -x $(BIN)/python ]; then $(STACK) down; fi
	@$(MAKE) --no-print-directory storage-down

stack-status: venv-run ## which stack processes run
	@$(STACK) status

logs: venv-run ## the last lines of the server's and workers' logs
	@$(STACK) logs

ray-up: venv ## start a local Ray cluster: a head + RAY_WORKERS worker nodes, 1 CPU each; prints RAY_ADDRESS
ifeq ($(S3_CONFIGURED),)
	@$(MAKE) --no-print-directory storage-up  # before the nodes: they inherit its settings
endif
	$(BIN)/python -m transferflow.devstack.raycluster up --dir $(RAY_DIR) --workers $(RAY_WORKERS)

ray-down: ## stop the local Ray cluster; no process of it is left running
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m transferflow.devstack.raycluster down --dir $(RAY_DIR); fi

ray-status: venv ## whether the local Ray cluster runs, and its RAY_ADDRESS
	@$(BIN)/python -m transferflow.devstack.raycluster status --dir $(RAY_DIR)

# make image: TARGETS among trainer,gpu,serve,ray; BASE / GPU_BASE override the Dockerfile's bases. A
# target whose base is neither here nor pullable (NVIDIA's CUDA base without a registry) is skipped
# with a message; deployments/images/build-offline.sh makes a CPU base where no registry is reachable.
TARGETS ?= trainer,gpu,serve,ray
image: venv ## build the images, tagged transferflow-<target>:<version> and :<version>-<git sha> (TARGETS, BASE, GPU_BASE)
	$(BIN)/python -m transferflow.devstack.images image --targets $(TARGETS) \
		$(if $(BASE),--base $(BASE)) $(if $(GPU_BASE),--gpu-base $(GPU_BASE))

test: venv ## run the whole test suite on TEST_WORKERS workers (each starts its own S3 and Prefect servers)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup --durations=30 $(PYTEST_ARGS)

test-faults: venv ## the fault-injection suite: killed store and trainer, hostile inputs
	$(BIN)/pytest tests/faults $(PYTEST_ARGS)

test-unit: venv ## fast tests only: no servers, no training
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

docs: venv ## build the documentation site into site/, strictly: any warning (a broken link) fails
	$(DOCS_ENV) $(BIN)/mkdocs build --strict --site-dir site

docs-serve: venv ## serve the documentation on 127.0.0.1:DOCS_PORT, rebuilt on every change
	$(DOCS_ENV) $(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:$(DOCS_PORT)

lint: venv ## ruff
	$(BIN)/ruff check .

clean: stack-down ray-down ## remove .venv and .local (the local store's and Prefect's data too)
	rm -rf $(VENV) .local .pytest_cache .ruff_cache *.egg-info site
