# Two commands: `make quickstart` and `make test`. Both set up .venv first (once).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
QUICKSTART := outputs/quickstart

.PHONY: setup quickstart test lint docs docs-serve clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

quickstart: setup
	$(BIN)/python scripts/quickstart.py --config configs/quickstart.yaml

# Two workers (pytest-xdist): tests use one thread each (tests/conftest.py), so the two cores
# run two test files at once; a file's tests stay in one worker (module fixtures built once).
test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The documentation site (mkdocs-material + mkdocstrings, in the dev extra), built offline.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

clean:
	rm -rf $(QUICKSTART) wandb lightning_logs .pytest_cache site
