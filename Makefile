# sms-bridge: `make run` starts the bridge on its embedded defaults, `make test` runs every check.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Two stamps: `make run` installs what running needs; the test tools (pytest, hypothesis, ruff,
# mypy...) come with the first `make test` (or `make venv`).
STAMP      := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
CONFIG ?= config.example.yaml

.PHONY: run test lint typecheck pytest bench clean venv sysdeps

# Debian packages the flow tests run against (a real IMAP server, PostgreSQL). Installed when
# missing and we are root (CI, containers); otherwise those tests skip and say how to install them.
DEBS := dovecot-imapd chromium systemd postgresql

venv: $(TEST_STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(TEST_STAMP)

run: $(STAMP)
	mkdir -p var
	$(BIN)/sms-bridge run -c $(CONFIG)

lint: $(TEST_STAMP)
	$(BIN)/ruff format --check bridge tests bench
	$(BIN)/ruff check bridge tests bench

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

sysdeps:
	@{ command -v /usr/sbin/dovecot && command -v chromium && command -v systemd-analyze \
	  && ls /usr/lib/postgresql/*/bin/pg_ctl; } \
	  >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS); \
	  else \
	    echo "note: $(DEBS) is not installed; the IMAP, browser, unit-file and PostgreSQL tests will skip (apt-get install $(DEBS))"; \
	  fi; }

# PostgreSQL: the server at $$SMS_BRIDGE_TEST_PG (default 127.0.0.1:5432) when it answers, else
# a throw-away one for the run (tests/pgserver.py), so those tests run rather than skip.
pytest: $(TEST_STAMP) sysdeps
	$(BIN)/python -m tests.pgserver -- $(BIN)/pytest -q

test: lint typecheck pytest

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(TEST_STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
