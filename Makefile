# The course's two doors: `make lab` (learners, lecturers) and `make test` (everyone, CI).
# Both create .venv if it is missing and install the course into it (pip install -e ".[dev]").
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: lab test unit notebooks execute bench clean-cache clean help
help:
	@echo "make lab          install (first time) and start JupyterLab on notebooks/"
	@echo "make test         install (first time), run every test and every notebook in quick mode"
	@echo "make unit         the unit tests only: no notebook, no Jupyter kernel, no browser"
	@echo "make notebooks    every notebook in quick mode, as make test runs them"
	@echo "make execute      run every notebook in full mode headless; executed copies + HTML in build/"
	@echo "make bench        throughput benchmark (course batches vs DataLoader) and Pyro step ratio"
	@echo "make clean-cache  delete data/cache/ (generated data sets and checkpoints)"
	@echo "make clean        delete build/, data/cache/ and .venv/ (the next make installs again)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	@touch $(STAMP)

# JupyterLab refuses to start as root (containers, cloud machines) unless told to: the door says so for it.
# More options for the server: make lab LAB_ARGS="--port=8890 --no-browser".
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
LAB_ARGS ?=
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(LAB_ROOT) $(LAB_ARGS)

test: $(STAMP)
	COURSE_QUICK=1 MPLBACKEND=Agg $(BIN)/python -m pytest -v --nbval-lax --durations=15 tests notebooks

# Tests that start a browser or Jupyter kernels: make test runs them, make unit leaves them out.
INTEGRATION := tests/test_browser.py tests/test_execute.py
unit: $(STAMP)
	COURSE_QUICK=1 MPLBACKEND=Agg $(BIN)/python -m pytest -v tests $(addprefix --ignore=,$(INTEGRATION))

notebooks: $(STAMP)
	COURSE_QUICK=1 MPLBACKEND=Agg $(BIN)/python -m pytest -v --nbval-lax notebooks

execute: $(STAMP)
	$(BIN)/python -m course_utils.execute --out build

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

clean-cache:
	rm -rf data/cache

clean:
	rm -rf build data/cache $(VENV)
