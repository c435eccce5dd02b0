# The README's two commands are `make demo` and `make test`; each builds .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest servers bench bench-quick chaos clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(VENV)/bin/python pyproject.toml setup.py
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(VENV)/bin/python
	$(PY) -m pip install --quiet -e .
	$(PY) -m geventconnpool demo

servers:
	bash scripts/ensure-servers

test: $(STAMP) servers
	$(PY) -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; fi; test $$rc -eq 0
	$(PY) -m ruff check geventconnpool tests examples bench
	$(PY) -m ruff format --check geventconnpool tests examples bench
	$(PY) -m mypy --strict geventconnpool tests/typing

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) -m bench.prepare
	$(PY) -m bench

bench-quick: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) -m bench.prepare
	$(PY) -m bench --quick

chaos: $(STAMP) servers
	$(PY) -m tests.chaos

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
