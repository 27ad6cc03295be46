# ControlNet course. `make course` runs every notebook; `make test` is what CI runs.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
KERNEL := cn-course
# Notebook 05 (Flax/JAX) has its own pinned environment and kernel: diffusers <= 0.39, transformers 4.
VENV_FLAX := .venv-flax
BIN_FLAX := $(CURDIR)/$(VENV_FLAX)/bin
STAMP_FLAX := $(VENV_FLAX)/.installed
KERNEL_FLAX := cn-flax
FLAX_NOTEBOOK := notebooks/05_flax_tpu.ipynb
# Colab's library versions (constraints-colab.txt), in a venv of their own: make test-colab.
VENV_COLAB := .venv-colab
BIN_COLAB := $(CURDIR)/$(VENV_COLAB)/bin
STAMP_COLAB := $(VENV_COLAB)/.installed
# make test-browser: Playwright (requirements-browser.txt) in .venv, driving Debian's Chromium.
STAMP_BROWSER := $(VENV)/.installed-browser
CHROMIUM := /usr/bin/chromium
# Each test leg runs through .ci/leg, which appends its wall time to $$CI_TIMES when .ci/run sets it.
LEG ?= $(SHELL) $(CURDIR)/.ci/leg
# The venv's tools come first, so the notebooks' "python3" kernel is the venv's Python.
export PATH := $(BIN):$(PATH)

.PHONY: setup setup-flax setup-colab setup-browser chromium course test test-python test-notebooks test-notebooks-twice test-real-paths test-flax test-colab test-browser outputs lab clean help

help:
	@echo "make setup    create .venv with the pinned stack and the '$(KERNEL)' Jupyter kernel"
	@echo "make setup-flax  create .venv-flax (notebook 05's Flax stack) and the '$(KERNEL_FLAX)' Jupyter kernel"
	@echo "make course   run every notebook headless into build/course/ (the main job)"
	@echo "make test     pytest for cnhelpers, then nbval over every notebook (what CI runs)"
	@echo "make test-notebooks-twice  Run All twice in one kernel per notebook: the checked outputs must not change (part of make test)"
	@echo "make test-flax  tests_flax, then nbval over notebook 05 in the '$(KERNEL_FLAX)' kernel (part of make test)"
	@echo "make test-real-paths  notebooks 00, 01, 03, 06 on sd15 and 07 on sdxl, small, from a loopback Hub (part of make test)"
	@echo "make test-colab  pytest and nbval (05 aside) with Colab's library versions, in .venv-colab (part of make test)"
	@echo "make test-browser  notebooks 00-03 and 06 in JupyterLab, driven in headless Chromium: errors, live widgets, sliders (part of make test)"
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

setup-flax: $(STAMP_FLAX)

$(STAMP_FLAX): requirements-flax.txt pyproject.toml
	test -x $(BIN_FLAX)/python || $(PYTHON) -m venv $(VENV_FLAX)
	$(BIN_FLAX)/python -m pip install -q --upgrade pip
	$(BIN_FLAX)/python -m pip install -q -r requirements-flax.txt
	$(BIN_FLAX)/python -m pip install -q --no-deps -e .
	$(BIN_FLAX)/python -m ipykernel install --user --name $(KERNEL_FLAX) --display-name "ControlNet course, Flax (.venv-flax)" >/dev/null
	touch $(STAMP_FLAX)

# Colab's stack: the course's torch, then the package against Colab's pins, no bitsandbytes. The torch is
# .venv's, hard-linked (scripts/share_packages.py): the same files, so its ~5 GB are on the disk once.
setup-colab: $(STAMP_COLAB)

$(STAMP_COLAB): $(STAMP) constraints-colab.txt pyproject.toml requirements.txt
	test -x $(BIN_COLAB)/python || $(PYTHON) -m venv $(VENV_COLAB)
	$(BIN_COLAB)/python -m pip install -q --upgrade pip
	$(BIN)/python scripts/share_packages.py $(VENV) $(VENV_COLAB) torch torchvision
	$(BIN_COLAB)/python -m pip install -q $$(grep -E '^(torch|torchvision)==' requirements.txt)
	$(BIN_COLAB)/python -m pip install -q -c constraints-colab.txt -e ".[course]" $$(grep -E '^(nbval|pytest|pytest-xdist)==' requirements.txt)
	touch $(STAMP_COLAB)

setup-browser: $(STAMP_BROWSER) chromium

$(STAMP_BROWSER): $(STAMP) requirements-browser.txt
	$(BIN)/python -m pip install -q -r requirements-browser.txt
	touch $(STAMP_BROWSER)

# Debian's Chromium, when it is not there yet (sudo unless root). Playwright's own browser download is never used.
chromium:
	@test -x $(CHROMIUM) || { \
	  sudo=$$(test "$$(id -u)" -eq 0 || echo sudo); \
	  $$sudo apt-get update -q && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

course: setup setup-flax
	$(BIN)/python -m cnhelpers.course --out build/course

outputs: setup setup-flax
	$(BIN)/python -m cnhelpers.course --in-place

test: test-python test-notebooks test-notebooks-twice test-real-paths test-flax test-colab test-browser

# pytest-xdist: two workers, one torch thread each. The tests are mostly short CLI runs whose start-up is one
# core's work, so two at a time use both cores (300 s -> 190 s here).
XDIST := -n 2
ONE_THREAD := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

test-python: setup
	$(LEG) test-python env $(ONE_THREAD) $(BIN)/python -m pytest $(XDIST) -p no:cacheprovider tests

test-notebooks: setup
	$(LEG) test-notebooks $(BIN)/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider notebooks --ignore=$(FLAX_NOTEBOOK)

# Run All twice in one kernel: the checked outputs of both runs equal the stored (fresh-kernel) ones; notebook
# 03 trains 40 steps here, and its second run is compared with its first (nbval checks the full run).
test-notebooks-twice: setup setup-flax
	$(LEG) notebooks-twice $(BIN)/python tests/notebooks_twice.py --small "03_:MAX_TRAIN_STEPS = 40"

# The Flax notebook runs in its own kernel (cn-flax, the .venv-flax Python), not in the current one.
test-flax: setup-flax
	$(LEG) tests-flax $(BIN_FLAX)/python -m pytest -p no:cacheprovider tests_flax
	$(LEG) notebook-flax $(BIN_FLAX)/python -m pytest --nbval-lax --nbval-kernel-name $(KERNEL_FLAX) -p no:cacheprovider $(FLAX_NOTEBOOK)

# The sd15 and sdxl profiles, small, over HTTP from the loopback test Hub (tests/real_paths_course.py).
test-real-paths: setup
	$(LEG) real-paths $(BIN)/python tests/real_paths_course.py

# Colab's leg trains notebook 03 for 240 steps, not 2,400: it shows the notebooks run on Colab's libraries; the
# full run's figures are checked by test-notebooks. The step counts are masked (tests/short_run_sanitize.cfg).
COLAB_SHORT := CN_PROFILE_OVERRIDES="course_train_steps=240"

test-colab: setup-colab
	$(LEG) colab-python env $(ONE_THREAD) $(BIN_COLAB)/python -m pytest $(XDIST) -p no:cacheprovider tests
	$(LEG) colab-notebooks env $(COLAB_SHORT) $(BIN_COLAB)/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider \
	  --nbval-sanitize-with tests/short_run_sanitize.cfg notebooks --ignore=$(FLAX_NOTEBOOK)

# JupyterLab on loopback over a copy of the notebooks in build/browser/, Chromium through Playwright
# (tests_browser/); screenshots of every notebook in build/browser/screenshots/.
test-browser: setup-browser
	$(LEG) test-browser $(BIN)/python -m pytest -p no:cacheprovider -s tests_browser

lab: setup
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf build
