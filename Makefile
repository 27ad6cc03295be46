# ControlNet course. `make course` runs every notebook; `make test` is what CI runs.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
KERNEL := cn-course
# The venv's tools come first, so the notebooks' "python3" kernel is the venv's Python.
export PATH := $(BIN):$(PATH)

.PHONY: setup course test test-python test-notebooks outputs lab clean help

help:
	@echo "make setup    create .venv with the pinned stack and the '$(KERNEL)' Jupyter kernel"
	@echo "make course   run every notebook headless into build/course/ (the main job)"
	@echo "make test     pytest for cnhelpers, then nbval over every notebook (what CI runs)"
	@echo "make outputs  re-execute the notebooks in place, refreshing their stored outputs"
	@echo "make lab      open JupyterLab on notebooks/"

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --user --name $(KERNEL) --display-name "ControlNet course (.venv)" >/dev/null
	touch $(STAMP)

course: setup
	$(BIN)/python -m cnhelpers.course --out build/course

outputs: setup
	$(BIN)/python -m cnhelpers.course --in-place

test: test-python test-notebooks

test-python: setup
	$(BIN)/python -m pytest tests

test-notebooks: setup
	$(BIN)/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider notebooks

lab: setup
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf build
