"""How many times a batch's transaction waits for the server (issue 21).

On a busy machine every round trip waits its turn on both sides (the worker's event loop, the
server's backend), and a batch's latency is mostly those waits: the BEGIN, the transaction's
settings and the ledger's lock go as one simple query, the ledger's advance and the COMMIT as
another. Counted from libpq's own trace of the connection (what the client sent and received),
against a real PostgreSQL; the rows and the ledger are checked beside the count.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import psycopg
import pytest

import sinks.pool
from sinks.core.batch import WriteResult
from sinks.core.sink import Sink
from sinks.writers.metric import INLINE_ROWS
from tests.helpers import ledger, writers_pool
from tests.pg.test_adaptive_batches import lock_waiters
from tests.pg.test_pipeline_edges import until
from tests.pg.test_sink import WRITER, DeadLetters, batch, metric

# What a metric batch waits for: BEGIN + settings + ledger lock; the staging table's CREATE;
# the COPY (its start, then its end); the upsert; the ledger's advance + COMMIT.
METRIC_BATCH_ROUND_TRIPS = 6
# A batch small enough to go inline (sinks.writers.metric.INLINE_ROWS): no table, no COPY.
INLINE_BATCH_ROUND_TRIPS = 3


@pytest.fixture
async def sink(own_database: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Sink]:
    """A sink on a pool of one connection, to a database of the test's own (the second test
    alters the ledger's table). The connection is never checked when handed out (a check is a
    round trip of its own, made after more than RECHECK_AFTER_S idle)."""
    monkeypatch.setattr(sinks.pool, "RECHECK_AFTER_S", 3600.0)
    async with writers_pool(own_database, WRITER, min_size=1, max_size=1) as pool:
        yield Sink(pool, f"g-{uuid.uuid4().hex[:8]}", WRITER, DeadLetters())


async def waits(sink: Sink, write: Awaitable[WriteResult[Any]]) -> tuple[int, WriteResult[Any]]:
    """The write's result, and how often the pool's one connection waited for the server during
    it: libpq's trace of what it received, counting the messages that end a wait,
    ReadyForQuery (a statement, or a pipeline, done) and CopyInResponse (ready for a COPY's data)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace"
        with path.open("w") as out:
            async with sink.pool.connection() as conn:
                conn.pgconn.trace(out.fileno())
                conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE)
            result = await write
            async with sink.pool.connection() as conn:
                conn.pgconn.untrace()  # flushes libpq's buffered trace
        rows = [[f.strip() for f in line.split("\t")] for line in path.read_text().splitlines()]
    n = sum(1 for r in rows if len(r) >= 3 and r[0] == "B" and r[2] in ("ReadyForQuery", "CopyInResponse"))
    return n, result


async def test_a_metric_batch_waits_for_the_server_six_times(sink: Sink, own_database: str) -> None:
    topic, tenant = f"m-{uuid.uuid4().hex[:8]}", uuid.uuid4()
    n_rows = INLINE_ROWS + 1  # the smallest batch that is staged
    first = batch(topic, 0, [(o, metric(tenant, f"d{o}")) for o in range(n_rows)])
    # The partition's first batch: its ledger row is created in the same round trip as the lock.
    n, _ = await waits(sink, sink.write(first))
    assert n == METRIC_BATCH_ROUND_TRIPS
    # Offsets n_rows.. carry new keys for the first half (d<n_rows>..), then the first batch's again.
    half = n_rows // 2
    second = batch(topic, 0, [(o, metric(tenant, f"d{o % (n_rows + half)}")) for o in range(n_rows, 2 * n_rows)])
    n, result = await waits(sink, sink.write(second))
    assert n == METRIC_BATCH_ROUND_TRIPS
    assert len(result.applied) == half and len(result.duplicates) == n_rows - half
    row = ledger(own_database, sink.group, topic)[0]
    assert row["last_offset"] == 2 * n_rows - 1
    assert row["rows_applied"] == n_rows + half and row["duplicates"] == n_rows - half
    with psycopg.connect(own_database) as conn:
        stored = conn.execute("SELECT count(*) FROM eventsink.metrics_raw WHERE tenant_id = %s", (tenant,)).fetchone()
    assert stored == (n_rows + half,)


async def test_an_inline_metric_batch_waits_for_the_server_three_times(sink: Sink, own_database: str) -> None:
    topic, tenant = f"m-{uuid.uuid4().hex[:8]}", uuid.uuid4()
    for first in (0, INLINE_ROWS):
        records = [(o, metric(tenant, f"d{o}")) for o in range(first, first + INLINE_ROWS)]
        n, result = await waits(sink, sink.write(batch(topic, 0, records)))
        assert n == INLINE_BATCH_ROUND_TRIPS and len(result.applied) == INLINE_ROWS
    assert ledger(own_database, sink.group, topic)[0]["last_offset"] == 2 * INLINE_ROWS - 1
    with psycopg.connect(own_database) as conn:
        stored = conn.execute("SELECT count(*) FROM eventsink.metrics_raw WHERE tenant_id = %s", (tenant,)).fetchone()
    assert stored == (2 * INLINE_ROWS,)


async def test_a_failure_in_the_transactions_start_rolls_back_and_the_connection_serves_the_next_batch(
    sink: Sink, own_database: str
) -> None:
    """The ledger's lock refused (a NOT NULL column its INSERT does not fill, as a schema drift
    would): the error comes out of the transaction's start, the transaction is rolled back,
    nothing is applied, and the same connection writes the next batch."""
    topic, tenant = f"m-{uuid.uuid4().hex[:8]}", uuid.uuid4()
    good = batch(topic, 0, [(0, metric(tenant, "a"))])
    with psycopg.connect(own_database, autocommit=True) as conn:
        conn.execute("ALTER TABLE eventsink.offsets_ledger ADD COLUMN drift int NOT NULL DEFAULT 0")
        conn.execute("ALTER TABLE eventsink.offsets_ledger ALTER COLUMN drift DROP DEFAULT")
    try:
        with pytest.raises(psycopg.errors.NotNullViolation) as raised:
            await sink.write(good)
        assert "drift" in str(raised.value)
    finally:
        with psycopg.connect(own_database, autocommit=True) as conn:
            conn.execute("ALTER TABLE eventsink.offsets_ledger DROP COLUMN drift")
    async with sink.pool.connection() as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    result = await sink.write(good)
    assert len(result.applied) == 1 and not result.dead_letters
    assert ledger(own_database, sink.group, topic)[0]["last_offset"] == 0


async def test_a_write_cancelled_inside_its_transactions_start_closes_its_connection(
    sink: Sink, own_database: str
) -> None:
    """A worker's shutdown cancels a batch waiting for the ledger's lock (another transaction
    holds it) in the transaction's start: the connection is closed, never handed out again
    half-way, and the batch written later is applied once."""
    topic, tenant = f"m-{uuid.uuid4().hex[:8]}", uuid.uuid4()
    await sink.write(batch(topic, 0, [(0, metric(tenant, "a"))]))
    async with sink.pool.connection() as conn:
        before = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())[0]  # type: ignore[index]
    second = batch(topic, 0, [(1, metric(tenant, "b")), (2, metric(tenant, "c"))])
    with psycopg.connect(own_database) as holder:
        holder.execute(
            "SELECT 1 FROM eventsink.offsets_ledger WHERE consumer_group = %s AND topic = %s FOR UPDATE",
            (sink.group, topic),
        )
        writing = asyncio.ensure_future(sink.write(second))
        await until(lambda: lock_waiters(own_database) == 1)  # the write waits for the ledger's lock
        writing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writing
        holder.rollback()
    async with sink.pool.connection() as conn:
        assert conn.info.pipeline_status == psycopg.pq.PipelineStatus.OFF
        after = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())[0]  # type: ignore[index]
    assert after != before, "the interrupted connection was handed out again"
    result = await sink.write(second)
    assert len(result.applied) == 2
    row = ledger(own_database, sink.group, topic)[0]
    assert row["last_offset"] == 2 and row["rows_applied"] == 3
