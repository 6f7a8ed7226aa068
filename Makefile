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
# the cgroup v2 test VM (vm/): QEMU, a busybox initramfs, Debian's 6.1 kernel (fetched by build.sh)
VM_PKGS  := qemu-system-x86 busybox-static e2fsprogs kmod util-linux
VM_BUILD := build/vm

.PHONY: install apt apt-test test-images run test test-host test-v2 vm vm-apt lint check bench

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

# On a cgroup v2 host under systemd the daemon must own a delegated subtree: give it a scope.
run: install
	@if [ -d /run/systemd/system ] && [ "$$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then \
		exec systemd-run --scope --quiet -p Delegate=yes $(VENV)/bin/sandboxd serve; \
	else exec $(VENV)/bin/sandboxd serve; fi

# SANDBOXD_TESTS_MUST_RUN: a skipped test fails the run (no privileged test may skip silently).
# `make test` = the suite on this host, then the cgroup v2 subset inside the VM.
test: test-host test-v2

test-host: install test-images lint
	SANDBOXD_TESTS_MUST_RUN=1 $(PY) -m pytest tests

vm-apt:
	@if ! dpkg -s $(VM_PKGS) >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $(VM_PKGS); \
	fi

vm: vm-apt
	sh vm/build.sh $(VM_BUILD)

# Boots the VM (TCG, 2 vCPUs, 2 GiB, no network), runs the v2 tests under systemd, prints the
# table of what the kernel measured; results and logs in build/vm/results.
# PYTEST_ARGS="tests/vm/v2_limits.py -k io" runs a part.
test-v2: install vm
	SBXVM_PYTEST_ARGS="$(PYTEST_ARGS)" sh vm/run.sh $(VM_BUILD) $(VM_BUILD)/results

# ruff covers the notebooks too: they are documentation users run, held to the same style
LINTED := sandboxd tests benchmarks deploy vm notebooks

lint: $(STAMP)
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)
	$(PY) -m mypy

# For a developer without root, in under a minute: lint, types and the pure tests (no daemon,
# no namespaces); tests marked `root` are deselected. `make test` (root) runs everything.
check: lint
	$(PY) -m pytest -q -m "not root" -p no:cacheprovider tests

bench: install test-images
	$(PY) benchmarks/run_all.py
