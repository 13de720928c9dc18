# Set-up, run and test Tahsilat. Everything installs into .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo up test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/tahsilat demo

up: install
	$(BIN)/tahsilat up

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) var .pytest_cache
