# Each target makes its own virtual environment (.venv) and installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# Tests and the quickstart keep all traffic on 127.0.0.1.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER = 0

.PHONY: quickstart test install smoke clean

$(BIN)/study: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/study

quickstart: $(BIN)/study   ## the main job: a CPU study of coupled vs independent decay, then its landscape
	$(BIN)/study run search_spaces/quickstart.yaml

test: $(BIN)/study         ## the test suite (CPU, real Ray / Optuna / MLflow)
	$(BIN)/python -m pytest -q -n 2 tests

# CIFAR-10 Parquet files for the CIFAR specs (offline)
SMOKE_DATA ?= ../shared/data/cifar10
smoke: $(BIN)/study        ## every shipped spec, shrunk to a few members and one epoch
	for f in search_spaces/*.yaml; do $(BIN)/study run --smoke --data-path $(SMOKE_DATA) $$f || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
