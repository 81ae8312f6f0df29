# safedrop — the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install demo test test-fast bench lint lock clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

## The main job on a throwaway local PostgreSQL, zero configuration.
demo: install
	mkdir -p .tmp/prefect-demo
	PREFECT_HOME=$(CURDIR)/.tmp/prefect-demo $(BIN)/safedrop demo

## The whole suite: real PostgreSQL, pg_dump/pg_restore, Prefect harness, a real Prefect server + worker.
## Two pytest-xdist workers (the two cores), each with its own PostgreSQL cluster and Prefect home.
XDIST := -n 2 --dist loadgroup

test: install
	$(BIN)/python -m pytest $(XDIST)

## Everything but the slow end-to-end and console-script tests.
test-fast: install
	$(BIN)/python -m pytest $(XDIST) -m "not e2e and not cli"

## Benchmarks: ratios against the raw tools, measured in the same run.
bench: install
	$(BIN)/python bench/run_all.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## Re-resolve the pinned dependency set in a clean virtualenv.
lock:
	rm -rf .tmp/lockenv && $(PYTHON) -m venv .tmp/lockenv
	.tmp/lockenv/bin/pip install --quiet -e ".[dev]"
	{ echo "# Exact versions of every dependency (pip freeze of a clean install on Python 3.11). Regenerate: make lock"; \
	  .tmp/lockenv/bin/pip freeze --exclude-editable | grep -vi '^safedrop'; } > requirements.lock
	rm -rf .tmp/lockenv

clean:
	rm -rf $(VENV) .tmp .pytest_cache .ruff_cache *.egg-info
