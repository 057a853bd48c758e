# Two commands on a fresh machine: `make train` (the main job) and `make test`; `make docs` builds the manual.
# Each creates .venv and installs what it needs the first time.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: train test test-fast docs clean

$(STAMP): pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/vitkit train

# two pytest workers of one thread each: the suite's time is mostly processes starting and small
# models, which one thread runs as fast; two torch processes of two threads each would fight for 2 cores
PYTEST = OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadgroup

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	site=$$(mktemp -d) && $(BIN)/mkdocs build --strict --quiet --site-dir $$site && rm -rf $$site
	$(PYTEST)

# the manual, as a site in site/ (open site/index.html); strict: a broken link or reference fails it
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

# the same without the slow end-to-end tests (training runs, browser, exports): for while you work
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(PYTEST) -m "not slow"

clean:
	rm -rf $(VENV)
