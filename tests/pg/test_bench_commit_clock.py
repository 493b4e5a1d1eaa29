"""The benchmark's commit clock (bench/commit_clock.py) against a real PostgreSQL: a row's time
is its own transaction's COMMIT, whatever else that transaction did, and a rolled-back
savepoint or transaction leaves nothing behind. Times are compared with PostgreSQL's own clock
read by the test around each COMMIT, never with what the clock module computes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from bench import commit_clock

INSERT = """
INSERT INTO eventsink.metrics_raw
    (tenant_id, dedupe_id, name, value, unit, occurred_at, tags, kafka_topic, kafka_partition, kafka_offset)
VALUES (%s, %s, 'cpu', 1, 'ms', now(), '{}', 't', 0, 0)
ON CONFLICT (tenant_id, dedupe_id) DO NOTHING
"""


def server_ms(conn: psycopg.Connection) -> float:
    (ms,) = conn.execute("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::float8").fetchone()  # type: ignore[misc]
    return float(ms)


@pytest.fixture
def clocked(own_database: str) -> Iterator[str]:
    commit_clock.install(own_database)
    yield own_database


def test_each_row_takes_its_own_transactions_commit(clocked: str) -> None:
    tenant = uuid.uuid4()
    with psycopg.connect(clocked, autocommit=True) as conn, psycopg.connect(clocked, autocommit=True) as clock:
        window: dict[str, tuple[float, float]] = {}
        for name, ids in (("first", ["a1", "a2", "a3"]), ("second", ["b1", "b2"])):
            conn.execute("BEGIN")
            for i in ids:
                conn.execute(INSERT, (tenant, i))
            time.sleep(0.05)  # the transaction's start and its commit are 50 ms apart
            before = server_ms(clock)
            conn.execute("COMMIT")
            window[name] = (before, server_ms(clock))
        # A transaction that inserts nothing new (every key conflicts) is not timed.
        conn.execute("BEGIN")
        conn.execute(INSERT, (tenant, "a1"))
        conn.execute("COMMIT")
        rows = {d: (committed, received) for d, committed, received in commit_clock.rows(conn)}
        assert sorted(rows) == ["a1", "a2", "a3", "b1", "b2"]
        for d, (committed, received) in rows.items():
            before, after = window["first" if d.startswith("a") else "second"]
            assert before <= committed <= after, (d, before, committed, after)
            assert committed - received >= 50  # from the transaction's start, not its commit
        assert commit_clock.count(conn) == 5
        assert commit_clock.count(conn, "b%") == 2
        assert commit_clock.transactions(conn, "b%") == 1
        # One side row per transaction, not per row: the clock's own cost stays off the rows.
        (side_rows,) = conn.execute("SELECT count(*) FROM bench_clock.commits").fetchone()  # type: ignore[misc]
        assert side_rows == 2


def test_a_rolled_back_savepoint_or_transaction_leaves_no_time(clocked: str) -> None:
    tenant = uuid.uuid4()
    with psycopg.connect(clocked, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute(INSERT, (tenant, "gone"))
        conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        conn.execute("SAVEPOINT s")
        conn.execute(INSERT, (tenant, "undone"))  # the transaction's first row, then undone
        conn.execute("ROLLBACK TO SAVEPOINT s")
        conn.execute(INSERT, (tenant, "kept"))  # so this one must queue the clock again
        conn.execute("COMMIT")
        (side_rows,) = conn.execute("SELECT count(*) FROM bench_clock.commits").fetchone()  # type: ignore[misc]
        assert side_rows == 1
        assert [d for d, _, _ in commit_clock.rows(conn)] == ["kept"]
