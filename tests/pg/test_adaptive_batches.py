"""Adaptive batches (issue 21): a partition's batch is taken when a write slot is free, so what
arrives while other partitions' transactions hold every slot joins it; and the pool hands a
connection given back a moment ago out again without a round trip to check it.

Real `Pipeline`, real `Sink`, real PostgreSQL; the broker is the stand-in of
tests/pg/test_pipeline_edges.py (nothing here depends on what a broker answers).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace

import psycopg
import pytest

import sinks.pool
from schemas.metric import MetricEvent
from sinks.core.sink import Sink
from sinks.writers.metric import MetricWriter
from streams.settings import Settings
from streams.worker.dedupe_cache import DedupeCache
from streams.worker.pipeline import Pipeline, PipelineConfig
from tests.helpers import writers_pool
from tests.pg.test_pipeline_edges import Letters, RetainedLog, ledger, records, until

WRITER = MetricWriter()


@pytest.fixture
async def sink(database_url: str) -> AsyncIterator[Sink]:
    async with writers_pool(database_url, WRITER) as pool:
        yield Sink(pool, f"g-{uuid.uuid4().hex[:8]}", WRITER, Letters())


def fetch(partition: int, tenant: str, offsets: range) -> SimpleNamespace:
    return SimpleNamespace(partition=partition, records=records(tenant, offsets))


def transactions(dsn: str, topic: str, partition: int) -> int:
    """How many transactions inserted the partition's rows (rows of one transaction share xmin)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(DISTINCT xmin::text) FROM eventsink.metrics_raw"
            " WHERE kafka_topic = %s AND kafka_partition = %s",
            (topic, partition),
        ).fetchone()
    assert row is not None
    return int(row[0])


def lock_waiters(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%offsets_ledger%'"
            " AND datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_by_default_a_batch_waits_for_no_timer() -> None:
    assert Settings().batch_max_wait_ms == 0


async def test_records_that_arrive_while_every_slot_is_taken_join_the_waiting_batch(
    sink: Sink, database_url: str
) -> None:
    topic, tenant = f"m-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    config = PipelineConfig(
        batch_size=1000,
        max_wait_s=0.0,
        max_inflight=1,
        retry_initial_s=0.05,
        retry_max_s=0.2,
        drain_timeout_s=5,
        hold_records=5000,
    )
    cache = DedupeCache({}, topic, window_s=900, max_keys=1000)
    p = Pipeline(topic=topic, model=MetricEvent, sink=sink, cache=cache, control=RetainedLog(0), config=config)
    p.on_assigned({0, 1})
    p.ingest([fetch(0, tenant, range(0, 1))])
    await until(lambda: (ledger(database_url, sink.group, topic) or (-1,))[0] == 0)

    # Partition 0's next transaction waits for its ledger row, held here: it keeps the only slot.
    with psycopg.connect(database_url) as blocker:
        blocker.execute(
            "SELECT 1 FROM eventsink.offsets_ledger WHERE consumer_group = %s AND topic = %s AND partition = 0 "
            "FOR UPDATE",
            (sink.group, topic),
        )
        p.ingest([fetch(0, tenant, range(1, 2))])
        await until(lambda: lock_waiters(database_url) == 1)  # partition 0's writer holds the slot, waits
        p.ingest([fetch(1, tenant, range(0, 10))])
        await until(lambda: len(p._slots._waiters or ()) == 1)  # partition 1's writer waits for the slot
        p.ingest([fetch(1, tenant, range(10, 20))])
        blocker.rollback()
    try:
        await until(lambda: transactions(database_url, topic, 1) > 0 and p.applied.get(1) == 20)
        # Both fetches of partition 1 went in its first transaction: it took its batch only once
        # it had the slot (a batch taken before would have held the first fetch alone).
        assert transactions(database_url, topic, 1) == 1
    finally:
        await p.drain()


async def test_a_connection_given_back_a_moment_ago_is_not_checked_again(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = []
    writable = sinks.pool._writable

    async def counted(conn: psycopg.AsyncConnection) -> None:
        checks.append(conn)
        await writable(conn)

    monkeypatch.setattr(sinks.pool, "_writable", counted)
    pool = sinks.pool.open_pool(database_url, min_size=1, max_size=1, name="adaptive-test")
    await pool.open(wait=True)
    try:
        made = len(checks)  # the connection's own check when it was made
        for _ in range(3):
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
        assert len(checks) == made + 1, "only the first checkout after the connection was made is checked"

        monkeypatch.setattr(sinks.pool, "RECHECK_AFTER_S", 0.0)
        for _ in range(3):
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
        assert len(checks) == made + 4, "a connection idle for longer than RECHECK_AFTER_S is checked"
    finally:
        await pool.close()
