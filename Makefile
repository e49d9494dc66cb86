# Two commands: `make run` and `make test`. Everything else is here so neither needs anything by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test e2e install install-dev lint bench image clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

$(VENV)/.installed-dev: $(STAMP) requirements-dev.lock
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.lock
	touch $@

$(VENV)/.installed-e2e: $(VENV)/.installed-dev requirements-e2e.lock
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-e2e.lock
	touch $@

install: $(STAMP)
install-dev: $(VENV)/.installed-dev

run: install  ## start the gateway on 127.0.0.1:8080 with config/gateway.yaml and the in-memory store
	$(PY) -m gateway

test: install-dev  ## the whole suite; starts a throwaway redis-server when none answers on 127.0.0.1:6379
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null)
	$(PY) -m pytest $(PYTEST_ARGS)

e2e: $(VENV)/.installed-e2e  ## the gateway against llama.cpp's real server on Gemma 3 270M (not part of `make test`)
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

lint: install-dev
	$(PY) -m ruff check gateway policies config tests
	$(PY) -m mypy

bench: install  ## by hand; writes docs/benchmarks.md
	$(PY) benchmarks/run.py

image:  ## by hand, as root; builds the Dockerfile with buildah, no daemon or registry, and smoke-tests it (docs/image.md)
	bash scripts/image.sh

clean:
	rm -rf $(VENV) .pytest_cache
