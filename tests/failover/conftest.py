"""A pg_auto_failover formation per test (see `formation.py`), migrated, and torn down after it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sinks.migrate import migrate
from tests.failover.formation import Formation, missing
from tests.helpers import Scenario


@pytest.fixture
def formation() -> Iterator[Formation]:
    why = missing()
    if why:
        if os.environ.get("CI"):  # CI installs it (`.ci/packages`): its absence there is a failure
            pytest.fail(why)
        pytest.skip(why)
    f = Formation.new()
    try:
        f.start()
        migrate(f.dsn)
        yield f
    finally:
        f.stop()  # a test that asserts clean shutdowns calls it itself; a second call is harmless
        f.remove()


@pytest.fixture
def ha_scenario(kafka_bootstrap: str, formation: Formation, tmp_path: Path) -> Scenario:
    """A scenario whose workers and checks reach the formation through its multi-host DSN."""
    return Scenario(kafka_bootstrap, formation.dsn, tmp_path, worker_dsn=formation.dsn)
