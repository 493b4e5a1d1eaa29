# Two commands for a newcomer: `make run` and `make test`. Each bootstraps .venv on its own.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# Every install is constrained to the versions pinned in requirements.lock (all extras; `make lock`
# regenerates it from pyproject.toml with uv, itself pinned here).
LOCK   := requirements.lock
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(LOCK)
UV_VERSION := 0.13.9
PIP_VERSION := 26.3
LOCK_ARGS ?=
# Parallel test processes (pytest-xdist): the suite mostly waits on workers, brokers and the
# database, so more processes than cores pays. Each has its own broker and database, and takes
# the next test when it is free (longest first, see tests/conftest.py). 0 = serial.
TEST_PROCESSES ?= 8
XDIST := $(if $(filter 0,$(TEST_PROCESSES)),,-n $(TEST_PROCESSES) --dist load --maxschedchunk 1)

.PHONY: run test test-unit test-fast packages bench lint clean lock

$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
		|| { echo "eventsink needs Python 3.11 or newer (set PYTHON=...)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'pip==$(PIP_VERSION)'
	$(PIP) -e '.[embedded,test]'
	@touch $(STAMP)

# Regenerate requirements.lock after a change of pyproject.toml: versions already pinned stay
# unless pyproject excludes them. `make lock LOCK_ARGS=--upgrade` moves everything to the newest
# allowed; `LOCK_ARGS="--upgrade-package aiokafka"` one distribution.
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'uv==$(UV_VERSION)'
	$(BIN)/uv pip compile pyproject.toml --all-extras --universal --python-version 3.11 \
		--custom-compile-command 'make lock' --quiet $(LOCK_ARGS) -o $(LOCK)

# Debian packages the suite runs for real (PgBouncer, pg_auto_failover, promtool): installed with
# apt-get when missing and this is a root shell (CI); elsewhere the tests that need them skip and
# say why (under CI=true they fail). See .ci/packages.
packages:
	@.ci/packages

run: $(STAMP)
	$(BIN)/eventsink run

test: $(STAMP) packages
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# Seconds, no services: schemas, the analysis state machine, configuration and deploy files.
test-unit: $(STAMP) packages
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# Everything but the multi-process end-to-end suites.
test-fast: $(STAMP) packages
	$(BIN)/python -m pytest $(XDIST) -m "not e2e" $(PYTEST_ARGS)

# About 35 minutes: the metric comparison (eventsink, reference loop, plain loop, Quix Streams),
# the mixed workload (metric + chat + analysis; eventsink only), the latency scenario (fixed
# rates, Kafka timestamp to commit), the memory scenario (64 KiB chat messages, a slow database)
# and the rebalance scenario (a second worker joins, then leaves), see bench/RESULTS.md. One
# scenario: BENCH_ARGS="--repeat 3 --scenario mixed" (or latency, memory, rebalance).
# To record: BENCH_ARGS="--repeat 5 --profile --record".
bench: BENCH_ARGS ?= --repeat 3 --profile
bench: $(STAMP)
	$(PIP) -e '.[bench]'
	$(BIN)/python -m bench.run $(BENCH_ARGS)

lint: $(STAMP)
	$(PIP) ruff
	$(BIN)/ruff check streams sinks schemas tests bench

clean:
	rm -rf $(VENV) .eventsink .pytest_cache build *.egg-info
