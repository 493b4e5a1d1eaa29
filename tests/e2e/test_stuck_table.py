"""One stuck table must not stop the others (issue 19): an analyst holds a lock on one kind's
table while metric, chat and analysis events flow; that kind waits, the others keep being
applied, and once the lock is gone everything lands exactly once."""

from __future__ import annotations

from pathlib import Path

import orjson
import psycopg
import pytest

from tests.faults.traffic import Traffic, oracle, settled
from tests.helpers import Scenario, WorkerProcess, ledger_totals, wait_until
from tests.web import get

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# The table each kind cannot write while it is locked.
TABLES = {
    "metric": "eventsink.metrics_raw",
    "chat": "eventsink.chat_sessions",
    "analysis": "eventsink.analysis_requests",
}


def applied(s: Scenario, topic: str) -> int:
    return ledger_totals(s.dsn, s.group, topic)["events"]


class TableLock:
    """`LOCK TABLE` in a transaction of its own, held until `release()`."""

    def __init__(self, dsn: str, table: str) -> None:
        self.conn = psycopg.connect(dsn)
        self.conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


@pytest.fixture
def isolated(kafka_bootstrap: str, own_database: str, tmp_path: Path) -> Scenario:
    """A database of its own: the locks would stall other tests' writers."""
    return Scenario(kafka_bootstrap, own_database, tmp_path, worker_dsn=own_database)


def test_a_locked_table_stops_only_its_own_kind(isolated: Scenario) -> None:
    s = isolated
    topics = {"metric": s.topic, "chat": s.chat_topic, "analysis": s.analysis_topic}
    # Two connections per kind, and writers that wait on the lock as long as it is held: with
    # one pool for every kind, the locked kind's writers would hold all of it.
    w = WorkerProcess(
        s.env(EVENTSINK_POOL_MAX_SIZE="2", EVENTSINK_LOCK_TIMEOUT_MS="120000"), s.data_dir / "worker.log"
    ).start()
    traffic = Traffic(s, metrics=1500, conversations=60, analyses=40, rate=300, seed=900, until_stopped=True).start()
    try:
        wait_until(lambda: all(applied(s, t) > 0 for t in topics.values()), 120, what="every kind applied")
        for kind, table in TABLES.items():
            lock = TableLock(s.dsn, table)
            try:
                others = {k: applied(s, t) for k, t in topics.items() if k != kind}
                # While the lock is held, each other kind's rows keep arriving (twice over: batches
                # that started before the lock do not count).
                for k, before in others.items():
                    what = f"{k} applied while {table} is locked"
                    wait_until(lambda k=k, b=before: applied(s, topics[k]) > b, 60, what=what)
                    mid = applied(s, topics[k])
                    wait_until(lambda k=k, b=mid: applied(s, topics[k]) > b, 60, what=f"{what}, again")
                # The locked kind's writers hold every connection of its pool: the database still
                # answers /readyz on a connection of its own.
                _, body = get(f"{w.web}/readyz")
                assert orjson.loads(body)["checks"]["database"] == "ok", body
                assert traffic.alive(), "the traffic ended before the locks were over"
            finally:
                lock.release()
        traffic.stop()
        settled(s, traffic, timeout=240)
        oracle(s)
        assert w.alive()
    finally:
        if traffic.alive():
            traffic.stop()
        w.stop()
