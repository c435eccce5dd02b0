# The README's two commands are `make demo` and `make test`; each builds .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest servers servers-up servers-down bench bench-quick chaos \
	clean dist docs ci-dist ci-pythons ci-floor ci-django

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

# The Redis and PostgreSQL the examples and guides expect, on 127.0.0.1:6379 and 127.0.0.1:5432
# (PostgreSQL: user postgres, no password); `make servers-down` stops them and deletes their data.
# SERVERS_OPTS="--redis-port 6380 --postgres-port 5433" moves them (scripts/servers.py --help).
servers-up: servers
	$(PYTHON) scripts/servers.py up $(SERVERS_OPTS)

servers-down:
	$(PYTHON) scripts/servers.py down $(SERVERS_OPTS)

test: $(STAMP) servers
	$(PY) -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; fi; test $$rc -eq 0
	$(PY) -m ruff check geventconnpool tests examples bench
	$(PY) -m ruff format --check geventconnpool tests examples bench
	$(PY) -m mypy --strict geventconnpool tests/typing

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) -m bench.prepare
	$(PY) -m bench
	$(PY) -m bench.hotpath --against 7c02a3d

bench-quick: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) -m bench.prepare
	$(PY) -m bench --quick

chaos: $(STAMP) servers
	$(PY) -m tests.chaos

# The sdist and the wheel in dist/, checked as the package index would (twine check --strict);
# rebuilt only when something they contain changed.
DIST_INPUTS := $(shell find geventconnpool tests docs examples bench scripts -type f \
	-not -path '*/__pycache__/*' -not -path 'docs/_build/*' 2>/dev/null) \
	pyproject.toml setup.py MANIFEST.in README.rst LICENSE CHANGES.rst Makefile

dist/.built: $(STAMP) $(DIST_INPUTS)
	$(PY) -m pip install --quiet -e '.[test,dist]'
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(PY) -m twine check --strict dist/*.whl dist/*.tar.gz
	touch dist/.built

dist: dist/.built

# The documentation site in docs/_build/html; a warning is an error.
docs: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,docs]'
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

# CI, after `make test` (.ci/run): the package as users install it (scripts/ci-package).
ci-dist: dist/.built
	bash scripts/ci-package dist

ci-pythons: dist/.built
	bash scripts/ci-package pythons

ci-floor: dist/.built
	bash scripts/ci-package floor

# The Django backend's tests on each supported Django series, one small venv each.
ci-django: servers
	bash scripts/ci-django

clean:
	rm -rf $(VENV) build dist docs/_build *.egg-info .pytest_cache .mypy_cache .ruff_cache
