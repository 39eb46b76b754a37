# transferflow: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
S3_DIR := .local/s3
S3_ENV := .local/s3.env
S3_PORT ?= 8333
ARGS ?=
PYTEST_ARGS ?=

export TF_CPP_MIN_LOG_LEVEL ?= 2

# True when the environment already names an object store (cloud or other).
S3_CONFIGURED := $(strip $(AWS_ENDPOINT_URL)$(AWS_ENDPOINT_URL_S3)$(AWS_ACCESS_KEY_ID)$(AWS_PROFILE))

.PHONY: help venv run demo models storage-up storage-down test test-unit lint clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'
	@echo "  variables: ARGS='--dataset DIR ...' (run), PYTEST_ARGS (test), S3_PORT (storage-up)"

venv: $(STAMP) ## create .venv and install transferflow with its dev tools

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "transferflow needs Python >= 3.11; set PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

run: venv ## run the retrain flow: make run ARGS="--dataset DIR --weights none"
ifeq ($(S3_CONFIGURED),)
	@$(MAKE) --no-print-directory storage-up
endif
	$(BIN)/transferflow train $(ARGS)

demo: venv ## offline demo: generate a small dataset and random weights, then retrain on them
	$(BIN)/python -m transferflow.samples .local/demo/shapes --classes 3 --per-class 40 \
		--weights .local/demo/vgg16-random.weights.h5
	@$(MAKE) --no-print-directory run ARGS="--dataset .local/demo/shapes \
		--weights .local/demo/vgg16-random.weights.h5 --head-epochs 8 --head-learning-rate 0.01 \
		--fine-tune-epochs 2 $(ARGS)"

models: venv ## list registered models and versions
	$(BIN)/transferflow models list

storage-up: venv ## start the local S3 server (SeaweedFS, loopback, credentials) on S3_PORT
	$(BIN)/python -m transferflow.s3server up --dir $(S3_DIR) --env-file $(S3_ENV) --port $(S3_PORT)

storage-down: ## stop the local S3 server (its data stays in .local/s3)
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m transferflow.s3server down --dir $(S3_DIR); fi

test: venv ## run the whole test suite (starts its own S3 and Prefect servers)
	$(BIN)/pytest --durations=8 $(PYTEST_ARGS)

test-unit: venv ## fast tests only: no servers, no training
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: venv ## ruff
	$(BIN)/ruff check .

clean: storage-down ## remove .venv and .local (the local store's data too)
	rm -rf $(VENV) .local .pytest_cache .ruff_cache *.egg-info
