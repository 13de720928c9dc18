# Set-up, run and test Tahsilat. Everything installs into .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo up test faults lint clean

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

# The fault-injection suite's long profile (make test runs its short one): three kills per
# service, a 30 s broker freeze, database connections killed and PostgreSQL restarted.
faults: install
	FAULTS_PROFILE=long $(BIN)/pytest -q tests/faults

lint: install
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) var .pytest_cache
