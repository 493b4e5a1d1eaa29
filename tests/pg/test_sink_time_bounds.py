"""No write waits for ever, and a batch too large for the time it is given is split (issue 19
and 20): a slow trigger on the test's own database makes every insert slow."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg_pool import PoolTimeout

import sinks.pool
from sinks.core.batch import Hole
from sinks.core.sink import Sink
from sinks.dsn import database_of
from sinks.errors import PoolBusy, TransientSinkError
from sinks.pool import open_pool
from sinks.writers.metric import MetricWriter
from tests.helpers import writers_pool
from tests.pg.test_sink import DeadLetters, batch, metric

WRITER = MetricWriter()
SLOW = """
CREATE FUNCTION eventsink.slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$;
CREATE TRIGGER slow BEFORE INSERT ON eventsink.metrics_raw FOR EACH ROW EXECUTE FUNCTION eventsink.slow_insert();
"""


def slow_inserts(dsn: str, seconds: float) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SLOW.format(seconds=seconds))  # type: ignore[arg-type]


def rows(dsn: str, tenant: uuid.UUID) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM eventsink.metrics_raw WHERE tenant_id = %s", (tenant,)).fetchone()
        return int(row[0]) if row else 0


def ledger_at(dsn: str, group: str, topic: str) -> int | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT last_offset FROM eventsink.offsets_ledger "
            "WHERE consumer_group = %s AND topic = %s AND partition = 0",
            (group, topic),
        ).fetchone()
        return int(row[0]) if row else None


@pytest.fixture
async def slow_pool(own_database: str) -> AsyncIterator[object]:
    # 40 inserts of 50 ms each: 2 s, twice the statement timeout. Ten of them fit.
    slow_inserts(own_database, 0.05)
    async with writers_pool(own_database, WRITER, max_size=1, statement_timeout_ms=1000) as p:
        yield p


async def test_a_batch_slower_than_the_statement_timeout_is_written_in_parts(own_database: str, slow_pool) -> None:  # type: ignore[no-untyped-def]
    tenant, topic, group = uuid.uuid4(), "metrics", "g-split"
    splits: list[tuple[int, int, str]] = []
    sink = Sink(
        slow_pool,
        group,
        WRITER,
        DeadLetters(),
        on_split=lambda b, exc: splits.append((b.first_offset, b.last_offset, str(exc))),
    )
    records = [(o, metric(tenant, f"d{o}", float(o))) for o in range(0, 40)]
    result = await sink.write(batch(topic, 0, records))
    # Every split is told, with why: 40 records of 50 ms each against a 1 s statement timeout,
    # the whole batch and each half of 20 ran out of time; the quarters of 10 fit.
    assert [(a, b) for a, b, _ in splits] == [(0, 39), (0, 19), (20, 39)]
    assert all("statement timeout" in why for _, _, why in splits), splits
    assert sorted(r.offset for r in result.applied) == list(range(0, 40))
    assert (result.ledger_before, result.ledger_after) == (-1, 39)
    assert rows(own_database, tenant) == 40
    assert ledger_at(own_database, group, topic) == 39
    assert sink.health.failing_since is None  # it committed in the end


async def test_a_batch_split_in_parts_keeps_its_claimed_holes_where_they_lie(own_database: str, slow_pool) -> None:  # type: ignore[no-untyped-def]
    """A hole the consumer verified inside the batch (here between its halves, where the cut
    falls) goes with the half that starts after it, and is checked against the ledger the first
    half committed: every record applied, the ledger at the batch's last offset."""
    tenant, topic, group = uuid.uuid4(), "metrics", "g-split-hole"
    sink = Sink(slow_pool, group, WRITER, DeadLetters())
    offsets = [*range(0, 20), *range(25, 45)]  # 20..24 hold nothing (markers, compaction)
    split = batch(topic, 0, [(o, metric(tenant, f"d{o}", float(o))) for o in offsets])
    split.holes = (Hole(19, 25),)
    result = await sink.write(split)
    assert sorted(r.offset for r in result.applied) == offsets
    assert rows(own_database, tenant) == 40
    assert ledger_at(own_database, group, topic) == 44


async def test_a_transaction_past_the_client_bound_is_abandoned_and_its_connection_closed(own_database: str) -> None:
    """The server would answer, late (a 3 s insert, no statement timeout to speak of): the client
    gives up after its own bound, and the connection does not go back to the pool."""
    slow_inserts(own_database, 3)
    async with writers_pool(own_database, WRITER, max_size=1, statement_timeout_ms=600_000) as pool:
        async with pool.connection() as conn:
            before = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())[0]  # type: ignore[index]
        sink = Sink(pool, "g-bound", WRITER, DeadLetters(), transaction_timeout=0.5)
        tenant = uuid.uuid4()
        with pytest.raises(TransientSinkError) as raised:
            await sink.write(batch("metrics", 0, [(0, metric(tenant, "a"))]))
        assert isinstance(raised.value.__cause__, TimeoutError)
        # TimeoutError says nothing itself: the error (logged, and on /healthz) names the bound.
        assert str(raised.value) == "the transaction ran past its 0.5 s bound (transaction_timeout)"
        assert sink.health.failing_since is not None and sink.health.unreachable_since is not None
        assert sink.health.unreachable_for() >= 0.5  # unanswered since the transaction began
        async with pool.connection(timeout=10) as conn:
            after = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())[0]  # type: ignore[index]
        assert after != before  # a new connection: the one that ran out of time was closed
    assert rows(own_database, tenant) == 0


async def test_the_pool_hands_out_no_connection_to_a_read_only_server(own_database: str) -> None:
    """A server that takes no writes (here: every transaction read-only, as on a standby) gets
    no connection from the pool; the wait ends in PoolTimeout, a transient error."""
    name = database_of(own_database)
    with psycopg.connect(own_database, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    pool = open_pool(own_database, max_size=1, name="read-only-test")
    await pool.open(wait=False)
    try:
        sink = Sink(pool, "g-ro", WRITER, DeadLetters(), connection_timeout=2)
        with pytest.raises(TransientSinkError) as raised:
            await sink.write(batch("metrics", 0, [(0, metric(uuid.uuid4(), "a"))]))
        assert isinstance(raised.value.__cause__, PoolTimeout)  # no connection was handed out
        assert sink.health.unreachable_since is not None
    finally:
        await pool.close()
        with psycopg.connect(own_database, autocommit=True) as conn:
            conn.execute("SET default_transaction_read_only = off")
            conn.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')


async def test_a_write_that_gets_no_connection_says_what_holds_the_pool(own_database: str) -> None:
    """A pool whose one connection a write holds (here: waiting on a row lock another session
    has) leaves the next ledger read and write to time out; the error says the pool's state, so
    that an operator reading the log sees writers in use, not a database that does not answer,
    and the sink's health does not call the database unreachable."""
    with psycopg.connect(own_database, autocommit=True) as blocker:
        async with writers_pool(own_database, WRITER, max_size=1) as pool:
            sink = Sink(pool, "g-dry", WRITER, DeadLetters(), connection_timeout=1)
            await sink.write(batch("metrics", 0, [(0, metric(uuid.uuid4(), "a"))]))  # the ledger row exists
            blocker.execute("BEGIN")
            blocker.execute("SELECT * FROM eventsink.offsets_ledger WHERE consumer_group = 'g-dry' FOR UPDATE")
            held = asyncio.create_task(sink.write(batch("metrics", 0, [(1, metric(uuid.uuid4(), "b"))])))
            try:
                for _ in range(500):  # until the held write has the pool's one connection (10 s at most)
                    if pool.get_stats()["pool_available"] == 0 and sink._held["write"] == 1:
                        break
                    await asyncio.sleep(0.02)
                else:
                    raise AssertionError(f"the write never took the connection: {pool.get_stats()}")
                with pytest.raises(TransientSinkError) as raised:
                    await sink.positions("metrics")
                assert isinstance(raised.value.__cause__, PoolTimeout)
                message = str(raised.value)
                assert "1 of at most 1 connections made or being made, 0 idle, in use here: 1 write" in message, message
                # A write that waits for the sink's own transactions: the database answers, so
                # /healthz says batches are not committed, not that no primary is reachable.
                with pytest.raises(PoolBusy) as busy:
                    await sink.write(batch("metrics", 1, [(0, metric(uuid.uuid4(), "c"))]))
                assert isinstance(busy.value.__cause__, PoolTimeout)
                assert sink.health.failing_since is not None and sink.health.unreachable_since is None
            finally:
                blocker.execute("ROLLBACK")
                # Its own failure must not hide the one above: checked after.
                (result,) = await asyncio.gather(held, return_exceptions=True)
        assert not isinstance(result, BaseException), result
        assert result.ledger_after == 1  # the held write went on once the lock was gone
    assert ledger_at(own_database, "g-dry", "metrics") == 1


async def test_an_idle_connection_whose_server_stopped_answering_is_given_up(
    own_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection idle past `RECHECK_AFTER_S` (here 0) is checked when handed out. Its backend
    stopped (SIGSTOP, as a frozen node would; the server still accepts new connections): the check
    gives up after its bound and the connection is closed, so the write fails as unreachable
    instead of waiting for ever (psycopg_pool's own timeout does not cover the check); the next
    write commits on a new connection."""
    monkeypatch.setattr(sinks.pool, "RECHECK_AFTER_S", 0.0)
    async with writers_pool(own_database, WRITER, max_size=1, check_timeout_s=1.0) as pool:
        sink = Sink(pool, "g-frozen", WRITER, DeadLetters(), connection_timeout=1)
        async with pool.connection() as conn:
            pid = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())[0]  # type: ignore[index]
        os.kill(pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            with pytest.raises(TransientSinkError) as raised:
                # Bounded here too: without the check's bound the write would wait for ever.
                await asyncio.wait_for(sink.write(batch("metrics", 0, [(0, metric(uuid.uuid4(), "a"))])), 60)
            waited = time.monotonic() - began
        finally:
            os.kill(pid, signal.SIGCONT)
        assert isinstance(raised.value.__cause__, PoolTimeout), raised.value
        assert not isinstance(raised.value, PoolBusy)
        # The check's 1 s, then psycopg's cancel of the query: up to 10 s more.
        assert waited < 15, waited
        assert sink.health.unreachable_since is not None
        tenant = uuid.uuid4()
        result = await sink.write(batch("metrics", 0, [(0, metric(tenant, "b"))]))
        assert result.ledger_after == 0
    assert rows(own_database, tenant) == 1


async def test_a_pooled_connection_that_became_read_only_is_not_handed_out_again(
    own_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a connection to a primary that a failover demoted: idle in the pool (longer than
    `RECHECK_AFTER_S`, here 0), it now reaches a server that refuses writes. The pool's check
    discards it; the batch is written on a new one."""
    monkeypatch.setattr(sinks.pool, "RECHECK_AFTER_S", 0.0)
    async with writers_pool(own_database, WRITER, max_size=1) as pool:
        async with pool.connection() as conn:
            before = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())[0]  # type: ignore[index]
            await conn.execute("SET default_transaction_read_only = on")  # the session's, kept after commit
            await conn.commit()
        sink = Sink(pool, "g-demoted", WRITER, DeadLetters())
        tenant = uuid.uuid4()
        result = await sink.write(batch("metrics", 0, [(0, metric(tenant, "a"))]))
        assert [r.offset for r in result.applied] == [0]
        async with pool.connection() as conn:
            after = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())[0]  # type: ignore[index]
        assert after != before
    assert rows(own_database, tenant) == 1


async def test_a_connection_given_back_a_moment_ago_that_became_read_only_fails_its_batch_once(
    own_database: str,
) -> None:
    """Given back under `RECHECK_AFTER_S` ago, a connection is handed out unchecked (a round trip
    saved per batch under load). If its server refuses writes meanwhile, the batch fails as
    transient (the pipeline retries it) and the connection is discarded; the retry is written on
    a new one."""
    async with writers_pool(own_database, WRITER, max_size=1) as pool:
        async with pool.connection() as conn:
            before = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())[0]  # type: ignore[index]
            await conn.execute("SET default_transaction_read_only = on")  # the session's, kept after commit
            await conn.commit()
        sink = Sink(pool, "g-demoted-now", WRITER, DeadLetters())
        tenant = uuid.uuid4()
        with pytest.raises(TransientSinkError, match="read-only"):
            await sink.write(batch("metrics", 0, [(0, metric(tenant, "a"))]))
        result = await sink.write(batch("metrics", 0, [(0, metric(tenant, "a"))]))
        assert [r.offset for r in result.applied] == [0]
        async with pool.connection() as conn:
            after = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())[0]  # type: ignore[index]
        assert after != before
    assert rows(own_database, tenant) == 1
