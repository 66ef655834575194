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
# setup.py states the version ranges LAIT works with; constraints.txt freezes one resolution of them (CPython
# 3.11, Linux x86-64), so that every fresh .venv gets the versions the tests and the recorded demo figures were
# made with. `make constraints` refreshes it from the newest versions setup.py allows; `make clean test CONSTRAINTS=`
# builds a venv without it.
CONSTRAINTS ?= constraints.txt
RESOLVE_VENV ?= .venv-resolve

# Keep every run offline: no hub downloads, no update checks, no telemetry.
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
export HF_DATASETS_OFFLINE = 1
export NO_ALBUMENTATIONS_UPDATE = 1
export TOKENIZERS_PARALLELISM = false
export PYTHONDONTWRITEBYTECODE = 1

.PHONY: venv test demo clean constraints

venv: $(STAMP)

$(STAMP): setup.py $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),--constraint $(CONSTRAINTS)) -e ".[all,dev]"
	touch $(STAMP)

# Resolve setup.py afresh in a throwaway venv and freeze the result. Review the diff (and rerun `make test` and
# `make demo`) before committing it: a new version can move the demo's figures.
constraints:
	rm -rf $(RESOLVE_VENV)
	$(PYTHON) -m venv $(RESOLVE_VENV)
	$(RESOLVE_VENV)/bin/python -m pip install --quiet --upgrade pip setuptools wheel
	$(RESOLVE_VENV)/bin/python -m pip install --quiet -e ".[all,dev]"
	{ printf '%s\n' "# Made by \`make constraints\` ($$($(RESOLVE_VENV)/bin/python -c 'import platform; print("CPython", platform.python_version(), platform.machine())')): every package that" \
	    "# \`pip install -e .[all,dev]\` resolved to, pinned. setup.py keeps the ranges; the Makefile installs with these pins."; \
	  $(RESOLVE_VENV)/bin/python -m pip freeze --exclude-editable | grep -v '^#'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf $(RESOLVE_VENV)

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
	rm -rf $(VENV) $(RESOLVE_VENV) $(DEMO_OUT) .pytest_cache
