# The two set-up commands (see README.md): `make run` and `make test`.
# Both create .venv and install jaxgen into it on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/vae/mnist.py:quick
WORKDIR ?= runs/vae_mnist
PYTEST_ARGS ?=
# Test processes (pytest-xdist; each test file stays in one process). Every process runs
# JAX on 4 fake CPU devices, so more than the machine's cores only adds memory.
PYTEST_WORKERS ?= 2

# Raw data: a local folder of dataset files if you have one (this checkout's
# ../shared/data when present), else each dataset's canonical download.
ifneq ($(wildcard ../shared/data),)
JAXGEN_DATA_DIR ?= $(abspath ../shared/data)
endif
export JAXGEN_DATA_DIR

.PHONY: run test install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(PY) -m experiments.train --config=$(CONFIG) --workdir=$(WORKDIR)

test: $(VENV)/.installed
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS)
