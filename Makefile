# The course's two doors: `make lab` (learners, lecturers) and `make test` (everyone, CI).
# Both create .venv if it is missing and install the course into it (pip install -e ".[dev]").
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: lab test unit notebooks execute pretrain bench clean-cache clean help
help:
	@echo "make lab          install (first time) and start JupyterLab on notebooks/"
	@echo "make test         install (first time), run every test, every notebook in quick mode, then in full mode"
	@echo "make unit         the unit tests only: no notebook, no Jupyter kernel, no browser"
	@echo "make notebooks    every notebook in quick mode, as make test runs them"
	@echo "make execute      run every notebook in full mode headless; executed copies + HTML in build/"
	@echo "make pretrain     train the shipped weights (data/weights/) on this machine; NB=02 for one notebook"
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
# Running a notebook saves its outputs into it. A git filter (nbstripout, set up for this clone only: no tracked
# file changes) shows git each notebook without them, so `git status` stays clean and `git pull` works; the
# file keeps its outputs for the learner. Cell ids stay: they are part of the committed notebooks; the details
# JupyterLab adds to language_info go. After each save, course_utils.lab re-stages a notebook whose only changes
# are outputs (git takes a file whose size changed for modified without reading it).
# Kernels get CurveZMQ keys from the server (transport_encryption=auto): nothing to warn about at each start.
NBSTRIPOUT := '"$(CURDIR)/$(BIN)/python" -m nbstripout --keep-id'
NB_LAB_KEYS := $(addprefix metadata.language_info.,codemirror_mode file_extension mimetype nbconvert_exporter \
               pygments_lexer version)
LAB_QUIET  := --KernelManager.transport_encryption=auto
LAB_CLEAN  := --FileContentsManager.post_save_hook=course_utils.lab.keep_git_clean
lab: $(STAMP)
	@if git rev-parse --git-dir >/dev/null 2>&1; then \
	  git config filter.nbstripout.clean $(NBSTRIPOUT) && git config filter.nbstripout.smudge cat && \
	  git config filter.nbstripout.required false && git config filter.nbstripout.extrakeys '$(NB_LAB_KEYS)' && \
	  attributes="$$(git rev-parse --git-path info/attributes)" && \
	  mkdir -p "$$(dirname "$$attributes")" && touch "$$attributes" && \
	  (grep -qxF '*.ipynb filter=nbstripout' "$$attributes" || echo '*.ipynb filter=nbstripout' >> "$$attributes"); fi
	$(BIN)/jupyter lab --notebook-dir=notebooks $(LAB_ROOT) $(LAB_QUIET) $(LAB_CLEAN) $(LAB_ARGS)

# With the shipped weights the series fits in about 9 minutes in full mode on a 2-core CPU, so the tests run it
# too: full mode's Checks (the claims about the trained models, at full evaluation size) run in CI.
test: $(STAMP)
	COURSE_QUICK=1 $(BIN)/python -m pytest -v --nbval-lax --durations=15 tests notebooks
	COURSE_QUICK=0 $(BIN)/python -m pytest -v --nbval-lax --durations=10 notebooks

# Tests that start a browser or Jupyter kernels: make test runs them, make unit leaves them out.
INTEGRATION := tests/test_browser.py tests/test_execute.py tests/test_clean_checkout.py
unit: $(STAMP)
	COURSE_QUICK=1 $(BIN)/python -m pytest -v tests $(addprefix --ignore=,$(INTEGRATION))

notebooks: $(STAMP)
	COURSE_QUICK=1 $(BIN)/python -m pytest -v --nbval-lax notebooks

# A cell still running after CELL_TIMEOUT seconds fails its notebook, named in one line, and the run goes on.
CELL_TIMEOUT ?= 1800
execute: $(STAMP)
	$(BIN)/python -m course_utils.execute --out build --cell-timeout $(CELL_TIMEOUT)

# The shipped weights: each notebook that trains runs in full mode, and every fit(cache=name) in it is written to
# data/weights/<name>.pt (float16 where the held-out loss does not change), then SHA256SUMS is rewritten.
NB ?=
pretrain: $(STAMP)
	$(BIN)/python -m course_utils.pretrained --train $(NB)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

clean-cache:
	rm -rf data/cache

clean:
	rm -rf build data/cache $(VENV)
