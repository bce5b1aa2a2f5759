# Two commands do all the set-up on a fresh clone: `make train` and `make test`.
# Both create .venv when missing, install the project into it, then run.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

# Offline mirror beside the checkout (see ../shared/data/README.md).
ifeq ($(origin OSR_DATA_DIR),undefined)
ifneq ($(wildcard ../shared/data/MNIST),)
export OSR_DATA_DIR := $(abspath ../shared/data)
endif
endif

.PHONY: train test install lint
train: $(VENV)/.installed
	$(PY) -m osr.train model=mlae $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev,sweep,cluster]"
	touch $@
