# lbcore — `make demo` and `make test` both run the set-up first. On a machine without
# make, use the README's `./dev demo` and `./dev test`, which install it.
# Everything here needs root: Debian packages, network namespaces, cgroups, eBPF.

SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python

.DEFAULT_GOAL := help
.PHONY: help setup test demo lint wheel-test clean distclean

help:
	@echo "make demo        set up, then run the end-to-end demo"
	@echo "make test        set up, then run the whole test suite (root) and ruff"
	@echo "make setup       only the set-up (idempotent; scripts/setup.sh)"
	@echo "make lint        ruff check"
	@echo "make wheel-test  build the wheel and check it from a fresh venv"
	@echo "make clean       remove build output, caches and stamps (keeps .venv)"
	@echo "make distclean   clean, and remove .venv"

setup:
	@scripts/setup.sh

# Both pytest and ruff always run; the target fails if either failed.
test: setup
	@[ "$$(id -u)" = 0 ] || { echo "make test: needs root (try: sudo make test)" >&2; exit 1; }
	@rc=0; \
	echo "==> pytest -q tests plugins/*/tests"; \
	$(VENV)/bin/pytest -q tests plugins/lbcore-nftables/tests || rc=$$?; \
	echo "==> ruff check ."; $(VENV)/bin/ruff check . || rc=$$?; \
	exit $$rc

demo: setup
	$(PY) -m lbcore.demo

lint: setup
	$(VENV)/bin/ruff check .

wheel-test: setup
	scripts/wheel-test.sh

clean:
	rm -rf build dist .stamps .pytest_cache .ruff_cache .hypothesis *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
