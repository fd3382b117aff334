# One-command set-up: `make train` runs the main job, `make test` the tests; both install first.
# GPU users: make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install install-ui test test-all lint format train mutation clean

install: $(STAMP)

# Re-runs only when the venv is missing or pyproject.toml changed.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The browser for tests/inference/test_serve.py's page test: Debian's chromium (as root, or with sudo). Playwright drives it
# from the dev extra; `playwright install`'s own browser download is not needed.
install-ui:
	$(SUDO) apt-get update && $(SUDO) apt-get install -y chromium

# Two pytest workers (pytest-xdist): most tests wait on a subprocess's imports or on one thread, so two share
# two cores well (about 6 min on our 2-core machine: docs/testing.md). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2

test: install
	$(BIN)/python -m pytest -q -m "not slow" -n $(TEST_WORKERS)

test-all: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

train: install
	$(BIN)/python train.py $(ARGS)

# Mutation score of the test suite (not part of `make test`; ~20 min): make mutation ARGS="--only predict-inverted"
mutation: install
	nice -n 10 $(BIN)/python tests/mutation/run_mutations.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
