# sms-bridge: `make run` starts the bridge on its embedded defaults, `make test` runs every check.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Two stamps: `make run` installs what running needs; the test tools (pytest, hypothesis, ruff,
# mypy...) come with the first `make test` (or `make venv`).
STAMP      := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
CONFIG ?= config.example.yaml

.PHONY: run test lint typecheck pytest quick bench clean venv sysdeps jasmin-venv

# Debian packages the flow tests run against (a real IMAP server, the libraries' MTA,
# PostgreSQL). Installed when missing and we are root (CI, containers); otherwise those tests
# skip and say how to install them.
DEBS := dovecot-imapd chromium systemd postgresql postfix

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

# Postfix: debconf "No configuration" so the package writes no main.cf and starts no system
# MTA on port 25; the tests run their own instance (tests/flows/postfix.py). Should a system
# Postfix start anyway (another preseed), it is stopped and disabled, but only when this target
# installed it: an existing MTA of the machine is left alone.
sysdeps:
	@{ command -v /usr/sbin/dovecot && command -v chromium && command -v systemd-analyze \
	  && ls /usr/lib/postgresql/*/bin/pg_ctl && command -v /usr/sbin/postfix; } \
	  >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    had_postfix=$$(command -v /usr/sbin/postfix || true); \
	    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS); \
	    if [ -z "$$had_postfix" ]; then \
	      systemctl disable --now postfix.service >/dev/null 2>&1 || true; \
	      /usr/sbin/postfix status >/dev/null 2>&1 && /usr/sbin/postfix stop || true; \
	    fi; \
	  else \
	    echo "note: $(DEBS) is not installed; the IMAP, browser, unit-file, PostgreSQL and Postfix tests will skip (apt-get install $(DEBS))"; \
	  fi; }

# Jasmin SMS gateway for the gateway flow tests (tests/flows/jasmin.py), in a virtualenv of its
# own: its Twisted stack stays out of the project's. 0.11.0, not 0.11.1: 0.11.1 loses every
# delivery receipt (jookies/jasmin#1199). Needs RabbitMQ and Redis running on 127.0.0.1.
JASMIN_VERSION := 0.11.0
JASMIN_PYTHON  ?= $(PYTHON)
JASMIN_VENV    := .venv-jasmin
JASMIN_STAMP   := $(JASMIN_VENV)/.installed-$(JASMIN_VERSION)

jasmin-venv: $(JASMIN_STAMP)

$(JASMIN_STAMP):
	rm -rf $(JASMIN_VENV)
	$(JASMIN_PYTHON) -m venv $(JASMIN_VENV)
	$(JASMIN_VENV)/bin/pip install --quiet --upgrade pip
	$(JASMIN_VENV)/bin/pip install --quiet 'jasmin==$(JASMIN_VERSION)'
	touch $(JASMIN_STAMP)

# PostgreSQL: the server at $$SMS_BRIDGE_TEST_PG (default 127.0.0.1:5432) when it answers, else
# a throw-away one for the run (tests/pgserver.py), so those tests run rather than skip.
pytest: $(TEST_STAMP) sysdeps $(JASMIN_STAMP)
	$(BIN)/python -m tests.pgserver -- $(BIN)/pytest -q

test: lint typecheck pytest

# The tests without subprocesses or several bridges (marker `slow`): a quick check while working.
quick: $(TEST_STAMP)
	$(BIN)/python -m tests.pgserver -- $(BIN)/pytest -q -m "not slow"

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(TEST_STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(JASMIN_VENV) var .pytest_cache .mypy_cache .ruff_cache
