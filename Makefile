# The two commands of the README: `make demo` and `make test`. The venv is made here.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-trainers lint typecheck pytest e2e clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/daemon-watchdog demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

# Two workers: most tests wait on real processes, so two run side by side even on 2 cores
# (5.7 min instead of 10.3 on the CI's 2-core VM).
pytest: $(VENV)/.installed-dev
	$(BIN)/pytest -n 2

test: lint typecheck pytest

# Opt-in: real Hugging Face, Lightning and plain PyTorch trainers (CPU torch, tiny models built
# in code) killed mid-save under the watchdog. Its own venv: torch is several hundred MB.
TVENV ?= .venv-trainers
# A CPU build of torch is enough: a local one (a `+cpu` wheel in $PIP_FIND_LINKS) is taken
# first, else whatever `pip install torch` gives; `make test-trainers TORCH='torch==2.9.1'` picks.
TORCH ?= $(or $(lastword $(sort $(wildcard $(PIP_FIND_LINKS)/torch-*+cpu-*.whl))),torch)

$(TVENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TVENV)
	$(TVENV)/bin/python -m pip install -q --upgrade pip
	$(TVENV)/bin/python -m pip install -q '$(TORCH)'
	$(TVENV)/bin/python -m pip install -q -e '.[dev,trainers]'
	touch $@

test-trainers: $(TVENV)/.installed
	$(TVENV)/bin/pytest -m trainers tests/trainers

clean:
	rm -rf $(VENV) $(TVENV) .mypy_cache .pytest_cache .ruff_cache *.egg-info
