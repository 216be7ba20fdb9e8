# sms-bridge: `make run` starts the bridge on its embedded defaults, `make test` runs every check.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= config.example.yaml

.PHONY: run test lint typecheck pytest bench clean venv sysdeps

# Debian packages the flow tests run against (a real IMAP server). Installed when missing and
# we are root (CI, containers); otherwise those tests skip and say how to install them.
DEBS := dovecot-imapd chromium systemd

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	mkdir -p var
	$(BIN)/sms-bridge run -c $(CONFIG)

lint: $(STAMP)
	$(BIN)/ruff format --check bridge tests bench
	$(BIN)/ruff check bridge tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

sysdeps:
	@{ command -v /usr/sbin/dovecot && command -v chromium && command -v systemd-analyze; } \
	  >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS); \
	  else \
	    echo "note: $(DEBS) is not installed; the IMAP, browser and unit-file tests will skip (apt-get install $(DEBS))"; \
	  fi; }

pytest: $(STAMP) sysdeps
	$(BIN)/pytest -q

test: lint typecheck pytest

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
