# Two commands do all the set-up on a fresh clone: `make train` and `make test`.
# Both create .venv when missing, install the project into it at the exact versions of
# requirements.lock (those the suite last passed with), then run.
# `make lock` re-resolves the newest releases pyproject.toml admits into requirements.lock;
# upgrading is `make lock && make test`, and committing the lock when the suite passes.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
LOCK := requirements.lock
EXTRAS := .[dev,sweep,cluster]

# Offline mirror beside the checkout (see ../shared/data/README.md).
ifeq ($(origin OSR_DATA_DIR),undefined)
ifneq ($(wildcard ../shared/data/MNIST),)
export OSR_DATA_DIR := $(abspath ../shared/data)
endif
endif

.PHONY: train test install lint lock
train: $(VENV)/.installed
	$(PY) -m osr.train model=mlae $(ARGS)

# the suite in TEST_WORKERS processes (each file's tests in one), one thread each: on two
# cores, two single-thread workers finish sooner than one process of two threads
TEST_WORKERS ?= 2
test: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --constraint $(LOCK) -e "$(EXTRAS)"
	touch $@

# A throwaway environment takes the newest releases the ranges admit; its freeze is the lock.
lock:
	rm -rf .lock-venv
	python3 -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet -e "$(EXTRAS)"
	{ echo "# make lock, $$(date -u +%F), Python $$(.lock-venv/bin/python -c 'import platform; print(platform.python_version(), platform.machine())')"; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf .lock-venv
