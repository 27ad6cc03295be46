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
# make slides: reveal.js's files, from PyPI's sphinx-revealjs (requirements-slides.txt), installed --no-deps into .venv.
STAMP_SLIDES := $(VENV)/.installed-slides
CHROMIUM := /usr/bin/chromium
# The venv's tools come first, so the notebooks' "python3" kernel is the venv's Python.
export PATH := $(BIN):$(PATH)
# The course's kernels (cn-course, cn-flax) live inside this checkout's venvs (ipykernel install --sys-prefix), never
# in the user's Jupyter folder, so two checkouts (a CI clone, a learner's) each run their own. JUPYTER_PATH puts
# both venvs' kernels before any user-wide one for every target here (lab, course, outputs, test, nbval's
# --nbval-kernel-name); the notebooks store only the plain names.
JUPYTER_KERNELS := $(CURDIR)/$(VENV)/share/jupyter:$(CURDIR)/$(VENV_FLAX)/share/jupyter
export JUPYTER_PATH := $(JUPYTER_KERNELS)$(if $(JUPYTER_PATH),:$(JUPYTER_PATH))
KERNEL_SPEC := $(VENV)/share/jupyter/kernels/$(KERNEL)/kernel.json
KERNEL_SPEC_FLAX := $(VENV_FLAX)/share/jupyter/kernels/$(KERNEL_FLAX)/kernel.json

.PHONY: setup setup-flax setup-colab setup-browser chromium course slides test test-python test-notebooks test-real-paths test-flax test-flax-python test-flax-notebook test-colab test-colab-python test-colab-notebooks test-browser outputs lab clean help

help:
	@echo "make setup    create .venv with the pinned stack and the '$(KERNEL)' Jupyter kernel"
	@echo "make setup-flax  create .venv-flax (notebook 05's Flax stack) and the '$(KERNEL_FLAX)' Jupyter kernel"
	@echo "make course   run every notebook headless into build/course/ (the main job)"
	@echo "make test     pytest for cnhelpers, then nbval over every notebook (what CI runs)"
	@echo "make test-notebooks  nbval over the notebooks, most doubled: Run All twice in one fresh kernel, both runs against the stored outputs (part of make test)"
	@echo "make test-flax  tests_flax, then nbval over notebook 05, doubled, in the '$(KERNEL_FLAX)' kernel (part of make test)"
	@echo "make test-real-paths  notebooks 00, 01, 03, 06 on sd15 and 07 on sdxl, small, from a loopback Hub (part of make test)"
	@echo "make test-colab  the tests marked colab and nbval (05 aside) with Colab's library versions, in .venv-colab (part of make test)"
	@echo "make test-browser  notebooks 00-03 and 06 in JupyterLab, driven in headless Chromium: errors, live widgets, sliders (part of make test)"
	@echo "make outputs  re-execute the notebooks in place, refreshing their stored outputs (and their runtime notes)"
	@echo "make slides   a reveal.js deck per notebook into build/slides/ (cells chosen by slideshow metadata), offline"
	@echo "make lab      open JupyterLab on notebooks/"

# .ci/run installs .venv and .venv-flax at once: their editable installs of this folder take turns (flock).
EDITABLE = mkdir -p build && flock build/editable-install.lock

setup: $(STAMP) $(KERNEL_SPEC)

$(STAMP): requirements.txt requirements-deepspeed.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(EDITABLE) $(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m pip install -q --no-deps --upgrade --target build/deepspeed-site -r requirements-deepspeed.txt
	touch $(STAMP)

$(KERNEL_SPEC): $(STAMP)
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "ControlNet course (.venv)" >/dev/null

setup-flax: $(STAMP_FLAX) $(KERNEL_SPEC_FLAX)

$(STAMP_FLAX): requirements-flax.txt pyproject.toml
	test -x $(BIN_FLAX)/python || $(PYTHON) -m venv $(VENV_FLAX)
	$(BIN_FLAX)/python -m pip install -q --upgrade pip
	$(BIN_FLAX)/python -m pip install -q -r requirements-flax.txt
	$(EDITABLE) $(BIN_FLAX)/python -m pip install -q --no-deps -e .
	touch $(STAMP_FLAX)

$(KERNEL_SPEC_FLAX): $(STAMP_FLAX)
	$(BIN_FLAX)/python -m ipykernel install --sys-prefix --name $(KERNEL_FLAX) --display-name "ControlNet course, Flax (.venv-flax)" >/dev/null

# Colab's stack: the course's torch, then the package against Colab's pins, no bitsandbytes. Every distribution of
# .venv that this install needs and Colab's pins leave alone (torch's ~5 GB among them; not those with files outside
# site-packages, such as Jupyter's templates) is .venv's, hard-linked (.ci/colab_shared.py): the same files,
# unpacked once, so pip here unpacks only what Colab's pins change (pip replaces a linked file it must change;
# .venv keeps its own), then drops what was linked for .venv's versions of the pinned ones and Colab's do not need.
COLAB_ROOTS := torch torchvision nbval pytest pytest-xdist
SPACE := $(subst ,, )
setup-colab: $(STAMP_COLAB)

$(STAMP_COLAB): $(STAMP) constraints-colab.txt pyproject.toml requirements.txt .ci/colab_shared.py
	test -x $(BIN_COLAB)/python || $(PYTHON) -m venv $(VENV_COLAB)
	$(BIN_COLAB)/python -m pip install -q --upgrade pip
	$(BIN)/python .ci/colab_shared.py link $(VENV) $(VENV_COLAB) constraints-colab.txt $(COLAB_ROOTS)
	$(EDITABLE) $(BIN_COLAB)/python -m pip install -q -c constraints-colab.txt -e ".[course]" \
	  $$(grep -E '^($(subst $(SPACE),|,$(COLAB_ROOTS)))==' requirements.txt)
	unneeded=$$($(BIN_COLAB)/python .ci/colab_shared.py unneeded $(COLAB_ROOTS)) && \
	  if [ -n "$$unneeded" ]; then $(BIN_COLAB)/python -m pip uninstall -q -y $$unneeded; fi
	touch $(STAMP_COLAB)

setup-browser: $(STAMP_BROWSER) $(STAMP_SLIDES) chromium

$(STAMP_BROWSER): $(STAMP) requirements-browser.txt
	$(BIN)/python -m pip install -q -r requirements-browser.txt
	touch $(STAMP_BROWSER)

$(STAMP_SLIDES): $(STAMP) requirements-slides.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-slides.txt
	touch $(STAMP_SLIDES)

# Debian's Chromium, when it is not there yet (sudo unless root). Playwright's own browser download is never used.
chromium:
	@test -x $(CHROMIUM) || { \
	  sudo=$$(test "$$(id -u)" -eq 0 || echo sudo); \
	  $$sudo apt-get update -q && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

course: setup setup-flax
	$(BIN)/python -m cnhelpers.course.runner --out build/course

outputs: setup setup-flax
	$(BIN)/python -m cnhelpers.course.runner --in-place

# A reveal.js deck per notebook that has slideshow metadata, with reveal.js beside them: open build/slides/*.html.
slides: setup $(STAMP_SLIDES)
	$(BIN)/python -m cnhelpers.course.slides --out build/slides

# make test: every set-up and test leg, TEST_JOBS (2) at a time, each on one torch thread, each after the legs it
# needs (.ci/schedule.py: the legs listed first start first, so the longest lead). Legs that run side by side share
# no folder: tests build in temporary folders, the notebooks in build/ (test-notebooks), build/colab (Colab's),
# build/real-paths, build/browser and build/twice-flax. Every leg on .venv waits for setup-browser, which installs
# into .venv. TEST_JOBS=1 runs the legs one after the other, with torch's default threads.
TEST_JOBS ?= 2
TEST_LEGS := setup setup-flax setup-browser:setup setup-colab:setup \
  test-notebooks:setup-browser test-colab-notebooks:setup-colab \
  test-python:setup-browser test-colab-python:setup-colab test-flax-notebook:setup-flax \
  test-flax-python:setup-flax test-real-paths:setup-browser test-browser:setup-browser
test:
	$(PYTHON) .ci/schedule.py --jobs $(TEST_JOBS) $(TEST_LEGS)

# pytest-xdist: two workers, one torch thread each. The tests are mostly short CLI runs whose start-up is one
# core's work, so two at a time use both cores.
XDIST := -n 2
# Each pytest leg's log ends with its slowest items, so a leg that grows shows where.
DURATIONS := --durations=15
ONE_THREAD := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

test-python: setup
	env $(ONE_THREAD) $(BIN)/python -m pytest $(XDIST) -p no:cacheprovider $(DURATIONS) tests

# nbval over the notebooks as tests/notebooks_twice.py writes them into build/twice/: each doubled, its cells then
# the same cells again, both with the stored outputs, in one fresh kernel, so one execution checks the first run
# against the stored (fresh-kernel) outputs and a second Run All in the same kernel against them too. The second
# run is left out where it could meet nothing the first left in the kernel, and runs smaller where the notebook
# has a knob for it (its RUN_ONCE and SHORT_RUN say which, and why); the second copy meets the files the first
# left in build/.
# Notebooks 03 and 09 train 4 steps in both copies (notebooks_twice.py's FIRST_RUN and SHORT_RUN), not 600 and
# 400: a run that short shows what every checked cell says (step counts and checkpoint names are masked:
# tests/short_run_sanitize.cfg); make outputs runs the full ones. Notebook 08 trains 4 steps on each tiny
# transformer base, not 20 (its first copy: this override; its second: SHORT_RUN's 2).
SHORT_RUN := CN_PROFILE_OVERRIDES="family_train_steps=4"
SHORT_RUN_SANITIZE := --nbval-sanitize-with tests/short_run_sanitize.cfg
TWICE := build/twice

test-notebooks: setup
	$(BIN)/python tests/notebooks_twice.py --out $(TWICE) --skip 05_
	env $(SHORT_RUN) $(BIN)/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider $(DURATIONS) \
	  $(SHORT_RUN_SANITIZE) $(TWICE)

# The Flax notebook runs in its own kernel (cn-flax, the .venv-flax Python), not in the current one.
test-flax: test-flax-python test-flax-notebook

test-flax-python: setup-flax
	$(BIN_FLAX)/python -m pytest -p no:cacheprovider $(DURATIONS) tests_flax

# The doubled 05 shares one persistent XLA compilation cache (JAX_CACHE) between its two runs: the second run's
# from_pt loads, jitted step and samplers are traced and lowered again and then loaded, not compiled (jax's compile
# event, which 05's CompileCounter counts, wraps the cache lookup, so its checked counts are the same).
JAX_CACHE := JAX_COMPILATION_CACHE_DIR=$(CURDIR)/build/jax-cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1
test-flax-notebook: setup-flax
	$(BIN_FLAX)/python tests/notebooks_twice.py --out $(TWICE)-flax --only 05_
	env $(JAX_CACHE) $(BIN_FLAX)/python -m pytest --nbval-lax --nbval-kernel-name $(KERNEL_FLAX) -p no:cacheprovider $(DURATIONS) $(TWICE)-flax

# The sd15 and sdxl profiles, small, over HTTP from the loopback test Hub (tests/real_paths_course.py).
test-real-paths: setup
	$(BIN)/python tests/real_paths_course.py

# Colab's leg runs what can differ between library versions on Colab's libraries: the tests marked colab (every
# test module says whether it is: tests/conftest.py), and each notebook once, in a fresh kernel, with the short
# values of tests/notebooks_twice.py's SHORT_RUN (the doubled notebooks' second copies pass against the same stored
# outputs), in a build folder of its own (build/colab) so that it need not wait for test-notebooks.
COLAB_NOTEBOOKS := build/colab-notebooks
test-colab: test-colab-python test-colab-notebooks

# Colab's venv has ipykernel 6 and no kernelspec of its own here: with .venv's kernelspecs on JUPYTER_PATH (ipykernel
# 7's, which declare CurveZMQ) the runner's tests started Colab's Python as a kernel that never answered (a hang in
# the clean-clone run of 894d615), so these legs see Colab's own tools and kernels only.
COLAB_ENV := env -u JUPYTER_PATH PATH=$(BIN_COLAB):$(PATH)
test-colab-python: setup-colab
	$(COLAB_ENV) $(ONE_THREAD) $(BIN_COLAB)/python -m pytest $(XDIST) -p no:cacheprovider $(DURATIONS) -m colab tests

test-colab-notebooks: setup-colab
	$(BIN_COLAB)/python tests/notebooks_twice.py --once --short --out $(COLAB_NOTEBOOKS) --skip 05_
	$(COLAB_ENV) $(SHORT_RUN) CN_BUILD_DIR=$(CURDIR)/build/colab $(BIN_COLAB)/python -m pytest --nbval-lax --nbval-current-env \
	  -p no:cacheprovider $(DURATIONS) $(SHORT_RUN_SANITIZE) $(COLAB_NOTEBOOKS)

# JupyterLab on loopback over a copy of the notebooks in build/browser/, Chromium through Playwright
# (tests_browser/); screenshots of every notebook in build/browser/screenshots/.
test-browser: setup-browser
	$(BIN)/python -m pytest -p no:cacheprovider $(DURATIONS) -s tests_browser

lab: setup
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf build
