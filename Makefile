# One-command entry points for a fresh machine (Python 3.11, CPU).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test demo bench

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch 2.13.0 lies on this machine's disk; an unpinned torch would pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q tests

demo: install
	$(VENV)/bin/branchpoint demo --out out/demo
