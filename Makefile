# Developer entry points. `make test` is what CI runs (through .ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: setup test lint demo bench clean

setup: $(STAMP)

# torch first, pinned to the CPU wheel: a bare torch requirement would pull CUDA packages.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	touch $(STAMP)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: setup lint
	$(PY) -m pytest -q

demo: setup
	$(VENV)/bin/faceveil demo --out demo-out

bench: setup
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_privacy.py

clean:
	rm -rf demo-out bench-out .pytest_cache .ruff_cache
