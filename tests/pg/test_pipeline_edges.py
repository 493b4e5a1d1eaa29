"""The pipeline at its edges: offsets the broker deleted (retention) before they were applied, and a
failure that is neither transient nor a record's.

The embedded broker (Tansu) cannot move a partition's log start (no DeleteRecords, no
retention on its in-memory store), so this is tested one level below the broker: a real
`Pipeline`, a real `Sink` on the real PostgreSQL, and a broker stand-in that reports the log
start a retention would leave. (The worker-level behaviour of the same code paths, a hole the
broker reports as records, is tested end to end in tests/e2e.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Literal

import orjson
import psycopg
import pytest

from schemas.deadletter import DeadLetter
from schemas.metric import MetricEvent
from sinks.core.batch import LogIdentity, Record
from sinks.core.sink import Sink
from sinks.errors import TransientSinkError
from sinks.pool import open_pool
from sinks.writers.metric import MetricWriter
from streams.worker.budget import record_bytes
from streams.worker.dedupe_cache import DedupeCache
from streams.worker.pipeline import Pipeline, PipelineConfig
from tests.helpers import writers_pool

WRITER = MetricWriter()


class Letters(list):
    async def __call__(self, dead: list[DeadLetter], conn: object = None) -> None:
        self.extend(dead)


class RetainedLog:
    """A partition whose first `start` offsets retention deleted: what a broker would answer."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.held: set[int] = set()
        self.seeks: list[tuple[int, int]] = []

    def hold(self, partition: int) -> None:
        self.held.add(partition)

    def release(self, partition: int) -> None:
        self.held.discard(partition)

    async def seek(self, partition: int, offset: int) -> None:
        self.seeks.append((partition, offset))

    def log_gap(self, partition: int, previous: int, offset: int) -> bool:
        return False

    def identity(self) -> LogIdentity:
        return LogIdentity()

    async def first_offset_from(self, partition: int, offset: int) -> tuple[int, int]:
        return max(offset, self.start), self.start

    def end_offset(self, partition: int) -> int | None:
        return None


@pytest.fixture
async def sink(database_url: str) -> AsyncIterator[Sink]:
    async with writers_pool(database_url, WRITER) as pool:
        yield Sink(pool, f"g-{uuid.uuid4().hex[:8]}", WRITER, Letters())


def pipeline(sink: Sink, control: RetainedLog, topic: str, on_data_loss: Literal["stop", "skip"]) -> Pipeline:
    config = PipelineConfig(
        batch_size=50,
        max_wait_s=0.05,
        max_inflight=2,
        retry_initial_s=0.05,
        retry_max_s=0.2,
        drain_timeout_s=5,
        hold_records=100,
        on_data_loss=on_data_loss,
    )
    cache = DedupeCache({}, topic, window_s=900, max_keys=1000)
    return Pipeline(topic=topic, model=MetricEvent, sink=sink, cache=cache, control=control, config=config)


def messages(tenant: str, offsets: range) -> list[SimpleNamespace]:
    """One fetch of partition 0, as the worker's consumer hands it over."""
    return [SimpleNamespace(partition=0, records=records(tenant, offsets))]


def records(tenant: str, offsets: range) -> list[SimpleNamespace]:
    return [
        SimpleNamespace(
            offset=o,
            key=tenant.encode(),
            value=orjson.dumps(
                {
                    "tenant_id": tenant,
                    "dedupe_id": f"e{o}",
                    "name": "cpu",
                    "value": 1.0,
                    "occurred_at": "2024-05-01T12:00:00Z",
                    "tags": {},
                }
            ),
            headers=(),
        )
        for o in offsets
    ]


def ledger(dsn: str, group: str, topic: str) -> tuple[int, int] | None:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT last_offset, lost FROM eventsink.offsets_ledger WHERE consumer_group = %s AND topic = %s",
            (group, topic),
        ).fetchone()  # type: ignore[return-value]


async def until(predicate: object, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_by_default_a_partition_that_lost_records_to_retention_stops(sink: Sink, database_url: str) -> None:
    topic, tenant, log = f"m-{uuid.uuid4().hex[:8]}", str(uuid.uuid4()), RetainedLog(start=100)
    p = pipeline(sink, log, topic, "stop")
    p.on_assigned({0})
    p.ingest(messages(tenant, range(100, 130)))  # the ledger expects 0: 0..99 are gone
    await until(lambda: p.blocked() == {0: "data_lost"})
    assert 0 in log.held
    assert ledger(database_url, sink.group, topic) in (None, (-1, 0))  # nothing applied, nothing skipped
    p.ingest(messages(tenant, range(130, 140)))  # what arrives meanwhile waits for the operator
    await p.drain()
    with psycopg.connect(database_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM eventsink.metrics_raw WHERE tenant_id = %s", (tenant,)
        ).fetchone() == (0,)


async def test_with_skip_the_loss_is_recorded_and_the_partition_goes_on(sink: Sink, database_url: str) -> None:
    topic, tenant, log = f"m-{uuid.uuid4().hex[:8]}", str(uuid.uuid4()), RetainedLog(start=100)
    p = pipeline(sink, log, topic, "skip")
    p.on_assigned({0})
    p.ingest(messages(tenant, range(100, 130)))
    await until(lambda: (ledger(database_url, sink.group, topic) or (-1, 0))[0] == 129)
    await p.drain()
    assert ledger(database_url, sink.group, topic) == (129, 100)
    assert p.totals["lost"] == 100 and p.blocked() == {}
    with psycopg.connect(database_url) as conn:
        ranges = conn.execute(
            "SELECT first_offset, last_offset, reason FROM eventsink.lost_ranges WHERE consumer_group = %s",
            (sink.group,),
        ).fetchall()
        rows = conn.execute("SELECT count(*) FROM eventsink.metrics_raw WHERE tenant_id = %s", (tenant,)).fetchone()
    assert ranges == [(0, 99, "retention")] and rows == (30,)


async def test_a_failure_that_is_neither_transient_nor_a_records_ends_the_pipeline(database_url: str) -> None:
    """A bug (here: the dead-letter handler raising something no retry can cure) is not retried
    forever: after a few attempts the pipeline reports a crash, and the worker (told through
    on_crash) exits to restart from the ledger."""

    async def broken(dead: list[DeadLetter], conn: object = None) -> None:
        raise RuntimeError("a bug in the dead-letter path")

    pool = open_pool(database_url, stage_ddl=WRITER.stage_ddl)
    await pool.open(wait=True)
    crashes: list[BaseException] = []

    async def on_crash(exc: BaseException) -> None:
        crashes.append(exc)

    try:
        sink = Sink(pool, f"g-{uuid.uuid4().hex[:8]}", WRITER, broken)
        topic, log = f"m-{uuid.uuid4().hex[:8]}", RetainedLog(start=0)
        p = pipeline(sink, log, topic, "stop")
        p.on_crash = on_crash
        p.on_assigned({0})
        p.ingest([SimpleNamespace(partition=0, records=[SimpleNamespace(offset=0, key=None, value=b"{", headers=())])])
        await until(lambda: crashes)
        assert isinstance(crashes[0], RuntimeError) and p.crashed is crashes[0]
        assert ledger(database_url, sink.group, topic) in (None, (-1, 0))
    finally:
        await pool.close()


async def test_an_applied_batch_leaves_memory_without_waiting_for_the_cycle_collector(
    sink: Sink, database_url: str
) -> None:
    """Records weigh in the worker's byte budget until they are applied, when their bytes are given
    back: they must leave memory then too. A batch held by a reference cycle (the retry loop's)
    or by its partition's task until the next batch kept 64 KiB messages alive far beyond the
    budget, until a full garbage collection, which a worker seldom does."""
    topic, tenant, log = f"m-{uuid.uuid4().hex[:8]}", str(uuid.uuid4()), RetainedLog(start=0)
    p = pipeline(sink, log, topic, "stop")
    p.on_assigned({0})

    def alive() -> int:
        return sum(1 for o in gc.get_objects() if isinstance(o, Record) and str(o.event.tenant_id) == tenant)

    gc.collect()
    gc.disable()
    try:
        fetched = messages(tenant, range(0, 30))
        # Weighed as the worker's consumer weighs what it hands over: the budget empties when the
        # batch's write has returned, not when its commit is visible in the database.
        p.budget.take(sum(record_bytes(r) for r in fetched[0].records))
        p.ingest(fetched)
        del fetched
        assert alive() == 30
        await until(lambda: (ledger(database_url, sink.group, topic) or (-1, 0))[0] == 29)
        await until(lambda: p.budget.used == 0)
        assert alive() == 0, "applied records are still in memory"
    finally:
        gc.enable()
    await p.drain()


class MovingLedger(RetainedLog):
    """A partition with nothing before offset 100, whose ledger another writer moves by one each
    time the pipeline asks the broker about the hole: every answer is outdated once the batch
    reaches the sink, which refuses it each time."""

    def __init__(self, dsn: str, group: str, topic: str) -> None:
        super().__init__(start=0)
        self.dsn, self.group, self.topic = dsn, group, topic
        self.asked = 0

    async def first_offset_from(self, partition: int, offset: int) -> tuple[int, int]:
        self.asked += 1
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            await conn.execute(
                "INSERT INTO eventsink.offsets_ledger (consumer_group, topic, partition, last_offset) "
                "VALUES (%s, %s, 0, %s) ON CONFLICT (consumer_group, topic, partition) "
                "DO UPDATE SET last_offset = eventsink.offsets_ledger.last_offset + 1",
                (self.group, self.topic, offset),
            )
        return 100, 0


async def test_a_hole_the_ledger_keeps_refusing_stops_the_partition_instead_of_spinning(
    sink: Sink, database_url: str
) -> None:
    topic, tenant = f"m-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    log = MovingLedger(database_url, sink.group, topic)
    p = pipeline(sink, log, topic, "skip")
    p.on_assigned({0})
    p.ingest(messages(tenant, range(100, 130)))
    await until(lambda: p.blocked() == {0: "gap_unresolved"})
    assert log.asked == Pipeline.GAP_RESOLUTIONS
    assert 0 in log.held
    assert ledger(database_url, sink.group, topic) == (Pipeline.GAP_RESOLUTIONS - 1, 0)  # only the other writer's
    await p.drain()
    with psycopg.connect(database_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM eventsink.metrics_raw WHERE tenant_id = %s", (tenant,)
        ).fetchone() == (0,)


class MarkersAfter(RetainedLog):
    """A partition whose offsets 5..9 are transaction markers the consumer saw in one log read."""

    def log_gap(self, partition: int, previous: int, offset: int) -> bool:
        return (previous, offset) == (4, 10)


async def test_a_batch_abandoned_at_shutdown_is_not_skipped_by_the_next(database_url: str) -> None:
    """At shutdown the batch 0..4 cannot commit before the drain deadline (its dead letter is
    refused) and is abandoned; the next batch, 10..14, follows a hole the consumer saw after 4.
    Applying it would move the ledger past 0..4: they must come again to the next owner instead."""

    async def refused(dead: list[DeadLetter], conn: object = None) -> None:
        raise TransientSinkError("the DLQ's broker is unreachable")

    topic, tenant, log = f"m-{uuid.uuid4().hex[:8]}", str(uuid.uuid4()), MarkersAfter(start=0)
    invalid = SimpleNamespace(offset=2, key=tenant.encode(), value=b"{", headers=())
    fetched = [*records(tenant, range(0, 2)), invalid, *records(tenant, range(3, 5)), *records(tenant, range(10, 15))]
    async with writers_pool(database_url, WRITER) as pool:
        sink = Sink(pool, f"g-{uuid.uuid4().hex[:8]}", WRITER, refused)
        p = pipeline(sink, log, topic, "stop")
        p.config = dataclasses.replace(p.config, batch_size=5, drain_timeout_s=0.5)
        p.on_assigned({0})
        p.ingest([SimpleNamespace(partition=0, records=fetched)])
        await until(lambda: p.totals["consumed"] == 10)
        await p.drain()
    assert ledger(database_url, sink.group, topic) in (None, (-1, 0))
    with psycopg.connect(database_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM eventsink.metrics_raw WHERE tenant_id = %s", (tenant,)
        ).fetchone() == (0,)


async def test_an_idle_partition_whose_ledger_went_back_is_sought_to_it(sink: Sink, database_url: str) -> None:
    """The database went back in time (a failover to a standby that missed commits) while the
    partition had nothing more to write: no batch meets the gap, so the periodic ledger check
    (`Positioning.check` -> `Pipeline.behind`) must seek it back, or it stays behind for ever
    (seen in a CI run of tests/failover/test_async_failover.py)."""
    topic, tenant, log = f"m-{uuid.uuid4().hex[:8]}", str(uuid.uuid4()), RetainedLog(start=0)
    p = pipeline(sink, log, topic, "stop")
    p.on_assigned({0})
    p.ingest(messages(tenant, range(0, 20)))
    await until(lambda: (ledger(database_url, sink.group, topic) or (-1, 0))[0] == 19)
    await until(lambda: p.applied.get(0) == 20)
    before = p.applied[0]
    with psycopg.connect(database_url) as conn:  # as the promoted standby has it: 10..19 never committed
        conn.execute("DELETE FROM eventsink.metrics_raw WHERE tenant_id = %s AND kafka_offset >= 10", (tenant,))
        conn.execute(
            "UPDATE eventsink.offsets_ledger SET last_offset = 9 WHERE consumer_group = %s AND topic = %s",
            (sink.group, topic),
        )
    await p.behind(0, 10, applied_before=before + 1)  # a commit made since the ledger was read: nothing
    assert log.seeks == [] and p.applied[0] == 20
    await p.behind(0, 10, applied_before=before)
    assert log.seeks == [(0, 10)] and p.applied[0] == 10
    p.ingest(messages(tenant, range(10, 20)))  # what the seek brings again
    await until(lambda: (ledger(database_url, sink.group, topic) or (-1, 0))[0] == 19)
    await p.drain()
    with psycopg.connect(database_url) as conn:
        stored = conn.execute("SELECT count(*) FROM eventsink.metrics_raw WHERE tenant_id = %s", (tenant,)).fetchone()
    assert stored == (20,)


async def test_a_partition_read_through_a_rebalance_and_kept_resumes_from_the_ledger(
    sink: Sink, database_url: str
) -> None:
    """`RebalanceReader`'s side of the pipeline: a partition it read on (the group's consumer had
    delivered up to 49) is handed back at the new assignment positioned from the ledger
    (`sought`): what was buffered from the reader is dropped, a late record of the reader above
    the ledger's offset is stale, and the group's consumer's deliveries from the ledger apply
    every record once."""
    topic, tenant, log = f"m-{uuid.uuid4().hex[:8]}", str(uuid.uuid4()), RetainedLog(start=0)
    p = pipeline(sink, log, topic, "stop")
    p.on_assigned({0})
    p.ingest(messages(tenant, range(0, 50)))
    await until(lambda: (ledger(database_url, sink.group, topic) or (-1, 0))[0] == 49)
    assert p.next_offset(0) == 50  # where the reader starts
    p.ingest(messages(tenant, range(50, 100)))  # the reader's deliveries, during the group's join
    assert p.next_offset(0) == 100
    last, _ = ledger(database_url, sink.group, topic) or (-1, 0)
    p.sought(0, last + 1)  # the new assignment keeps it: positioned from the ledger
    assert p.next_offset(0) == last + 1
    p.ingest(messages(tenant, range(100, 110)))  # the reader's last fetch, late: stale
    p.ingest(messages(tenant, range(last + 1, 120)))  # the group's consumer, from the ledger
    await until(lambda: (ledger(database_url, sink.group, topic) or (-1, 0))[0] == 119)
    await p.drain()
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT count(*), count(DISTINCT dedupe_id) FROM eventsink.metrics_raw WHERE tenant_id = %s", (tenant,)
        ).fetchone()
        events = conn.execute(
            "SELECT events, duplicates FROM eventsink.offsets_ledger WHERE consumer_group = %s AND topic = %s",
            (sink.group, topic),
        ).fetchone()
    assert rows == (120, 120)
    assert events == (120, 0)  # each offset counted once: none applied twice, none taken for a duplicate
