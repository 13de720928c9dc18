# Set-up, run and test Tahsilat. Everything installs into .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo up test faults fuzz lint lock clean

install: $(STAMP)

# Exactly the versions in the lock file, each checked against its hash; then the project itself.
$(STAMP): pyproject.toml requirements/dev.lock
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	scripts/install-browser
	touch $(STAMP)

demo: install
	$(BIN)/tahsilat demo

up: install
	$(BIN)/tahsilat up

test: install
	$(BIN)/pytest -q -n 2 --dist loadfile

# The fault-injection suite's long profile (make test runs its short one): three kills per
# service, a 30 s broker freeze, database connections killed and PostgreSQL restarted.
faults: install
	FAULTS_PROFILE=long $(BIN)/pytest -q tests/faults

# schemathesis against every service's OpenAPI, long and with a new seed each run (make test
# runs a short seeded profile).
fuzz: install
	FUZZ_EXAMPLES=300 FUZZ_RANDOM=1 $(BIN)/pytest -q tests/integration/test_api_fuzz.py

lint: install
	$(BIN)/lint-imports

# After changing dependencies in pyproject.toml: pin every package (and its hashes) again.
LOCK := $(BIN)/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links
lock: install
	$(BIN)/pip install --quiet 'pip-tools>=7.4,<8'
	$(LOCK) -o requirements/runtime.lock pyproject.toml
	$(LOCK) --extra dev --extra local -o requirements/dev.lock pyproject.toml

clean:
	rm -rf $(VENV) var .pytest_cache
