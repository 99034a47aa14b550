# Everything here runs as root on a fresh Debian 12 machine with only Python.
# Each target installs what it needs; re-running does no work when nothing changed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
APT_PACKAGES := fuse3 libfuse3-dev pkg-config attr gcc python3-dev
STAMP_APT := $(VENV)/.apt-ok
STAMP_PIP := $(VENV)/.pip-ok

.PHONY: all test lint unit check deps bench bench-fs bench-fs-quick clean demo demo-stop install

all: test

# apt packages: installed only when one is missing.
$(STAMP_APT):
	@missing=""; for p in $(APT_PACKAGES); do \
	    dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	    echo "installing apt packages:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@mkdir -p $(VENV)
	@touch $@

$(STAMP_PIP): $(STAMP_APT) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

deps: $(STAMP_PIP)

lint: deps
	$(BIN)/ruff check .
	$(BIN)/mypy

# install first: the mount tests use mount(8) with /sbin/mount.fuse.pyglfs.
test: lint install
	$(BIN)/python -m pytest -q tests

unit: deps
	$(BIN)/python -m pytest -q tests/unit tests/contract

# Benchmarks (not part of `make test`; as root). bench-fs takes ~40 min with all targets.
bench: deps
	$(BIN)/python bench/rpc_bench.py

bench-fs: install
	$(BIN)/python bench/fs_bench.py --targets local,passthrough,pyglfs,glusterfs --json bench/fs.json

bench-fs-quick: install
	$(BIN)/python bench/fs_bench.py --quick

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

# Console scripts onto the system PATH (symlinks to the venv's) and the mount(8)
# helper, so `mount -t fuse.pyglfs`, fstab lines and `umount` work.
PREFIX ?= /usr/local
SBINDIR ?= /sbin
SCRIPTS := pyglfs pyglfsd pyglfs-brickd pyglfs-mount

install: deps
	@for s in $(SCRIPTS); do \
	    target=$(CURDIR)/$(BIN)/$$s; link=$(PREFIX)/bin/$$s; \
	    [ "$$(readlink $$link 2>/dev/null)" = "$$target" ] || ln -sfn $$target $$link; done
	@cmp -s deploy/mount.fuse.pyglfs $(SBINDIR)/mount.fuse.pyglfs || \
	    install -m 0755 deploy/mount.fuse.pyglfs $(SBINDIR)/mount.fuse.pyglfs

# Two pyglfsd on 127.0.0.2 and 127.0.0.3, replica-2 volume gvol0 mounted at ./.demo/mnt
# (deploy/demo.sh; safe to repeat). demo-stop stops all of it and keeps ./.demo.
demo: install
	@bash deploy/demo.sh start

demo-stop:
	@bash deploy/demo.sh stop
