# The two commands of the README: `make demo` and `make test`. Both set up .venv/ first
# (scripts/setup_env.sh is idempotent: it does nothing when the environment is complete).
VENV    ?= .venv
PYTHON  := $(VENV)/bin/python

.PHONY: setup demo test lint format

setup:
	@bash scripts/setup_env.sh

demo: setup
	@bash scripts/demo.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PYTHON) -m pytest $(PYTEST_ARGS)
