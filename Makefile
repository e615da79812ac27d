# xmdpt — `make run` runs the embedded default DAG; `make test` runs the test suite.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Offline-friendly defaults for local runs and tests (users with a network may override).
export MLFLOW_DISABLE_TELEMETRY ?= true
export DVC_NO_ANALYTICS ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db

.PHONY: install ray-local run lint-imports test test-fast ui clean bench

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Ray's dashboard probes the cloud-metadata address unless this file exists: keep traffic local.
ray-local:
	@test -f $(HOME)/ray_bootstrap_config.yaml || echo 'provider: {type: local}' > $(HOME)/ray_bootstrap_config.yaml

run: install ray-local
	@test -d .dvc || $(BIN)/dvc init -q
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro
	@$(BIN)/python -m pipelines.summary

# the package layers (pyproject.toml [tool.importlinter], docs/architecture.md), then the suite
lint-imports: install
	PYTHONPATH=$(CURDIR) $(BIN)/lint-imports --no-cache

test: install ray-local lint-imports
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

test-fast: install ray-local lint-imports
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" tests

ui: install
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port 5000

bench: install
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f; done

clean:
	rm -rf artifacts data/store data/synth mlflow.db mlartifacts
