# The two commands the README gives: `make demo` and `make test`. Each does its own set-up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m examples.orders.demo

test: $(STAMP)
	$(BIN)/ruff check binder binders tests examples benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check binder binders tests examples benchmarks
	$(BIN)/ruff format --check binder binders tests examples benchmarks

bench: $(STAMP)
	$(BIN)/python -m benchmarks --log

clean:
	rm -rf $(VENV) build dist *.egg-info
