# The two set-up commands (see README.md): `make run` and `make test`.
# Both create .venv and install jaxgen into it on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/vae/mnist.py:quick
WORKDIR ?= runs/vae_mnist
PYTEST_ARGS ?=

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
	$(PY) -m pytest -q $(PYTEST_ARGS)
