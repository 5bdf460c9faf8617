# Each target makes its own virtual environment (.venv) and installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# Tests and the quickstart keep all traffic on 127.0.0.1.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER = 0

.PHONY: quickstart test test-fast lint install lock smoke clean

# Installs the exact versions of requirements.lock, then the project itself without resolving anything.
$(BIN)/study: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# Regenerates requirements.lock from pyproject.toml (its dependencies and the test extra), under the torch
# caps of lock-constraints.txt. Run it after changing a dependency, then commit both files.
lock: $(BIN)/study
	$(BIN)/pip install -q pip-tools
	$(BIN)/pip-compile -q --extra test --strip-extras --no-emit-index-url --no-emit-find-links \
	    -c lock-constraints.txt -o requirements.lock pyproject.toml

install: $(BIN)/study

quickstart: $(BIN)/study   ## the main job: a CPU study of coupled vs independent decay, then its landscape
	$(BIN)/study run search_spaces/quickstart.yaml

lint: $(BIN)/study         ## no unused import or variable, no dead code (seconds)
	$(BIN)/ruff check --select F401,F821,F841 study tests bench
	$(BIN)/vulture study .ci/dead_code_allowed.py --min-confidence 60

test: $(BIN)/study lint    ## lint, then the test suite (CPU, real Ray / Optuna / MLflow)
	$(BIN)/python -m pytest -q -n 2 --durations=25 tests

test-fast: $(BIN)/study    ## the inner loop: the suite without the statistical calibration tests (marked slow)
	$(BIN)/python -m pytest -q -n 2 -m "not slow" tests

# A folder of CIFAR-10 Parquet files (train.parquet, test.parquet) for the CIFAR specs: make smoke SMOKE_DATA=…
SMOKE_DATA ?= ../shared/data/cifar10
smoke: $(BIN)/study        ## every shipped spec, shrunk to a few members and one epoch
	for f in search_spaces/*.yaml; do \
	  if grep -q "dataset: digits" $$f; then $(BIN)/study run --smoke $$f || exit 1; \
	  else $(BIN)/study run --smoke --data-path $(SMOKE_DATA) $$f || exit 1; fi; done

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
