# `make test` and `make demo` each build .venv when it is missing or setup.py changed, then run.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lait-installed
DEMO_OUT ?= demo-run
# Two test processes, one per core of the 2-core CI machine (pytest-xdist); each module runs whole in one
# of them, so a module's fixtures are built once. `make test TEST_WORKERS=0` runs everything in one process.
TEST_WORKERS ?= 2
PYTEST_ARGS ?= $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope)

# Keep every run offline: no hub downloads, no update checks, no telemetry.
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
export HF_DATASETS_OFFLINE = 1
export NO_ALBUMENTATIONS_UPDATE = 1
export TOKENIZERS_PARALLELISM = false
export PYTHONDONTWRITEBYTECODE = 1

.PHONY: venv test demo clean

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e ".[all,dev]"
	touch $(STAMP)

# The report tests drive headless Chromium: install Debian's package on a fresh machine (as root;
# through sudo when make runs as another user).
CHROMIUM_BIN := /usr/bin/chromium
$(CHROMIUM_BIN):
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update
	$(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

test: $(STAMP) $(CHROMIUM_BIN)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/lait demo --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
