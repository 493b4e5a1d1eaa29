"""`Sink.write` where the world is not as the worker believes: a cache the database contradicts,
a value the driver refuses, another log than the ledger's, records lost to retention, a frozen
writer holding the ledger lock. Real PostgreSQL throughout."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import psycopg
import pytest

from schemas.deadletter import DeadLetter, Reason
from schemas.metric import MetricEvent
from sinks.core.batch import Batch, Cached, LogIdentity, LostRange, Record
from sinks.core.sink import Sink
from sinks.errors import LogChanged, OffsetGap, TransientSinkError
from sinks.writers.metric import MetricWriter
from tests.helpers import writers_pool

WRITER = MetricWriter()


class Letters(list):
    async def __call__(self, dead: list[DeadLetter], conn: object = None) -> None:
        self.extend(dead)


@pytest.fixture
async def sink(database_url: str) -> AsyncIterator[Sink]:
    async with writers_pool(database_url, WRITER, lock_timeout_ms=500, idle_in_transaction_timeout_ms=31_000) as pool:
        yield Sink(pool, f"g-{uuid.uuid4().hex[:8]}", WRITER, Letters())


def metric(tenant: uuid.UUID, dedupe: str, value: object = 1.5) -> MetricEvent:
    return MetricEvent.model_construct(
        tenant_id=tenant,
        dedupe_id=dedupe,
        name="cpu",
        value=value,
        occurred_at=datetime(2024, 5, 1, 12, 0, 0, 1, tzinfo=UTC),
        tags={},
        unit=None,
    )


def record(offset: int, event: MetricEvent) -> Record[MetricEvent]:
    return Record(offset, event, str(event.tenant_id).encode(), b"{}")


def batch(topic: str, *records: Record[MetricEvent], **kw: object) -> Batch[MetricEvent]:
    offsets = [r.offset for r in records] + [c.record.offset for c in kw.get("cached", [])]  # type: ignore[attr-defined]
    return Batch(topic, 0, min(offsets), max(offsets), list(records), **kw)  # type: ignore[arg-type]


def stored(dsn: str, tenant: uuid.UUID) -> dict[str, float]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT dedupe_id, value FROM eventsink.metrics_raw WHERE tenant_id = %s", (tenant,))
        return dict(rows.fetchall())


def ledger_row(dsn: str, group: str, topic: str) -> tuple:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT last_offset, events, rows_applied, duplicates, lost, topic_id FROM eventsink.offsets_ledger "
            "WHERE consumer_group = %s AND topic = %s AND partition = 0",
            (group, topic),
        ).fetchone()  # type: ignore[return-value]


async def test_a_cached_duplicate_counts_only_if_the_ledger_confirms_its_commit(sink: Sink, database_url: str) -> None:
    """The cache saw these keys committed up to offset 9, but the database was restored to a point
    where the ledger is at 4: the key committed at 7 is not stored anymore and must be applied."""
    t, topic = uuid.uuid4(), f"m-{uuid.uuid4().hex[:8]}"
    await sink.write(batch(topic, *(record(i, metric(t, f"e{i}")) for i in range(5))))  # ledger 4
    result = await sink.write(
        batch(
            topic,
            record(5, metric(t, "e5")),
            cached=[Cached(record(6, metric(t, "e1")), committed_at=4), Cached(record(7, metric(t, "lost")), 9)],
        )
    )
    assert (result.cached_duplicates, result.cache_misses, len(result.applied)) == (1, 1, 2)
    assert set(stored(database_url, t)) == {"e0", "e1", "e2", "e3", "e4", "e5", "lost"}
    assert ledger_row(database_url, sink.group, topic)[:4] == (7, 8, 7, 1)


@pytest.mark.parametrize(
    ("writer", "refusal"),
    [
        # Staged: the COPY's float8 dumper refuses it in the client, without a SQLSTATE.
        (MetricWriter(inline_rows=0), "OverflowError"),
        # Inline: the batch's value array mixes float and int, which psycopg refuses to dump; redone
        # record by record, the lone int goes as numeric and the server refuses its cast to float8.
        (MetricWriter(), '(22003): "1000000000000000000000'),
    ],
    ids=["staged", "inline"],
)
async def test_a_value_the_driver_cannot_send_is_dead_lettered_alone(
    writer: MetricWriter, refusal: str, database_url: str
) -> None:
    """A value past what the column type can take (here built around the schema, as a bug or a
    library would) fails in the client or in the server: that record alone is dead-lettered."""
    t, topic = uuid.uuid4(), f"m-{uuid.uuid4().hex[:8]}"
    async with writers_pool(database_url, writer) as pool:
        sink = Sink(pool, f"g-{uuid.uuid4().hex[:8]}", writer, Letters())
        assert writer.inlined(3) is (writer.inline_rows > 0)
        result = await sink.write(
            batch(
                topic, record(0, metric(t, "a")), record(1, metric(t, "huge", value=10**400)), record(2, metric(t, "b"))
            )
        )
    assert [d.offset for d in result.dead_letters] == [1]
    assert result.dead_letters[0].reason is Reason.DB_REJECTED
    assert refusal in result.dead_letters[0].detail
    assert stored(database_url, t) == {"a": 1.5, "b": 1.5}
    assert ledger_row(database_url, sink.group, topic)[0] == 2


async def test_the_ledger_learns_its_log_and_refuses_another(sink: Sink, database_url: str) -> None:
    t, topic = uuid.uuid4(), f"m-{uuid.uuid4().hex[:8]}"
    first, second = uuid.uuid4(), uuid.uuid4()
    await sink.write(batch(topic, record(0, metric(t, "a")), identity=LogIdentity(first, "cluster-a")))
    assert ledger_row(database_url, sink.group, topic)[5] == first
    # The topic was deleted and created again: same name, offsets from 0, another id.
    with pytest.raises(LogChanged, match="topic id"):
        await sink.write(batch(topic, record(0, metric(t, "new")), identity=LogIdentity(second, "cluster-a")))
    with pytest.raises(LogChanged, match="cluster"):
        await sink.write(batch(topic, record(1, metric(t, "b")), identity=LogIdentity(first, "cluster-b")))
    assert set(stored(database_url, t)) == {"a"}
    # Unknown ids (a broker that reports none) are not a change.
    await sink.write(batch(topic, record(1, metric(t, "b"))))
    assert set(stored(database_url, t)) == {"a", "b"}


async def test_offsets_lost_to_retention_are_recorded_only_where_they_follow_the_ledger(
    sink: Sink, database_url: str
) -> None:
    t, topic = uuid.uuid4(), f"m-{uuid.uuid4().hex[:8]}"
    await sink.write(batch(topic, record(0, metric(t, "a"))))
    with pytest.raises(OffsetGap):  # a loss that does not start right after the ledger
        await sink.write(batch(topic, record(10, metric(t, "b")), lost=LostRange(5, 9, 10)))
    result = await sink.write(batch(topic, record(10, metric(t, "b")), lost=LostRange(1, 9, 10)))
    assert result.lost == 9
    assert ledger_row(database_url, sink.group, topic)[:5] == (10, 2, 2, 0, 9)
    with psycopg.connect(database_url) as conn:
        ranges = conn.execute(
            "SELECT first_offset, last_offset, reason FROM eventsink.lost_ranges WHERE consumer_group = %s",
            (sink.group,),
        ).fetchall()
    assert ranges == [(1, 9, "retention")]


async def test_a_frozen_writer_holding_the_ledger_lock_delays_but_cannot_block_or_corrupt(
    sink: Sink, database_url: str
) -> None:
    """A worker frozen in the middle of its transaction keeps the partition's ledger row locked.
    The next writer's lock wait times out (transient: retried), and the server ends the frozen
    session after idle_in_transaction_session_timeout; the frozen writer's late commit fails."""
    t, topic = uuid.uuid4(), f"m-{uuid.uuid4().hex[:8]}"
    await sink.write(batch(topic, record(0, metric(t, "a"))))
    frozen = psycopg.connect(database_url)
    frozen.execute("SET idle_in_transaction_session_timeout = 2000")
    frozen.execute(
        "SELECT last_offset FROM eventsink.offsets_ledger WHERE consumer_group = %s AND topic = %s "
        "AND partition = 0 FOR UPDATE",
        (sink.group, topic),
    )
    with pytest.raises(TransientSinkError, match="LockNotAvailable"):
        await sink.write(batch(topic, record(1, metric(t, "b"))))

    async def retried() -> bool:
        try:
            await sink.write(batch(topic, record(1, metric(t, "b"))))
        except TransientSinkError:
            return False
        return True

    deadline = asyncio.get_running_loop().time() + 30
    while not await retried():
        assert asyncio.get_running_loop().time() < deadline, "the frozen session was never ended"
    # The server ended the session (25P03, then the connection is closed).
    with pytest.raises(psycopg.Error):
        frozen.execute("UPDATE eventsink.offsets_ledger SET last_offset = 100 WHERE topic = %s", (topic,))
        frozen.commit()
    frozen.close()
    assert ledger_row(database_url, sink.group, topic)[0] == 1
    assert set(stored(database_url, t)) == {"a", "b"}
