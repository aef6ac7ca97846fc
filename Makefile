# Developer entry points. `make test` is what CI runs (through .ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: setup test lint demo bench clean

setup: $(STAMP)

# torch pinned to the CPU wheel in every step (constraints.txt): a bare torch requirement would
# pull a CUDA build and nvidia-* packages.
$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[test]"
	@if $(PIP) list 2>/dev/null | grep -q '^nvidia-'; then echo "error: CUDA packages came in"; exit 1; fi
	@du -sh $(VENV) | sed 's/^/venv size: /'
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
