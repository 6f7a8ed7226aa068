# sandboxd: `make run` starts the daemon on its embedded defaults, `make test` runs the tests.
# Both install what they need first (as root, on Debian 12) and are safe to re-run.

VENV     := .venv
PY       := $(VENV)/bin/python
PYTHON   ?= python3
APT_PKGS := python3 python3-venv bubblewrap nftables iproute2 libseccomp2 util-linux procps prometheus
# the image tests: a real registry, OCI tooling and the sources of the fixture images
TEST_APT_PKGS := docker-registry umoci skopeo mmdebstrap apache2-utils busybox-static tar
TEST_CACHE    ?= /var/cache/sandboxd-test
STAMP    := $(VENV)/.installed
NODE_DIR := .node
CHP      := $(NODE_DIR)/node_modules/.bin/configurable-http-proxy

.PHONY: install apt apt-test test-images run test lint bench

install: apt $(STAMP) $(CHP)

apt:
	@if ! dpkg -s $(APT_PKGS) >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS); \
	fi

apt-test:
	@if ! dpkg -s $(TEST_APT_PKGS) >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_APT_PKGS); \
	fi

# OCI images built from Debian packages (busybox; python3-ipykernel in 4 layers; jupyterhub), cached in
# $(TEST_CACHE) outside the repo: the only step that needs the Debian mirror; tests read the cache
test-images: apt-test
	tests/fixtures/build-images.sh $(TEST_CACHE)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

# JupyterHub's proxy for the hub tests (tests/test_hub.py), project-local; nodejs only if missing
$(CHP):
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	npm install --silent --no-audit --no-fund --prefix $(NODE_DIR) configurable-http-proxy
	@test -x $(CHP)

run: install
	$(VENV)/bin/sandboxd serve

# SANDBOXD_TESTS_MUST_RUN: a skipped test fails the run (no privileged test may skip silently)
test: install test-images
	$(PY) -m ruff check sandboxd tests benchmarks deploy
	SANDBOXD_TESTS_MUST_RUN=1 $(PY) -m pytest tests

lint: install
	$(PY) -m ruff check sandboxd tests benchmarks
	$(PY) -m ruff format --check sandboxd tests benchmarks deploy

bench: install test-images
	$(PY) benchmarks/run_all.py
