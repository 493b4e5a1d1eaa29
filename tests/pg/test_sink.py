"""`Sink.write(batch)` against a real PostgreSQL: the exactly-once protocol, one batch at a time."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import psycopg
import pytest

from schemas.deadletter import DeadLetter, Reason
from schemas.metric import MetricEvent
from sinks.core.batch import Batch, Cached, Hole, Record
from sinks.core.sink import Sink
from sinks.errors import OffsetGap, TransientSinkError
from sinks.pool import open_pool
from sinks.writers.metric import MetricWriter
from streams.dev.embedded import free_port
from tests.helpers import writers_pool

WRITER = MetricWriter()


class DeadLetters:
    """Collects what a sink hands over for the DLQ; can be told to fail."""

    def __init__(self) -> None:
        self.received: list[DeadLetter] = []
        self.fail = False

    async def __call__(self, dead: list[DeadLetter], conn: object = None) -> None:
        if self.fail:
            raise ConnectionError("broker unreachable")
        self.received.extend(dead)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[object]:
    async with writers_pool(database_url, WRITER, max_size=12) as p:
        yield p


@pytest.fixture
def dead() -> DeadLetters:
    return DeadLetters()


# These batches are small: by default they go inline (arrays bound as parameters); with
# inline_rows=0 they are staged (a COPY into the transaction's table), as a larger batch always is.
@pytest.fixture(params=[WRITER, MetricWriter(inline_rows=0)], ids=["inline", "staged"])
def sink(request: pytest.FixtureRequest, pool: object, dead: DeadLetters) -> Sink:
    return Sink(pool, f"g-{uuid.uuid4().hex[:8]}", request.param, dead)  # type: ignore[arg-type]


def metric(tenant: uuid.UUID, dedupe_id: str, value: float = 1.0, at: datetime | None = None) -> MetricEvent:
    return MetricEvent.model_construct(
        tenant_id=tenant,
        dedupe_id=dedupe_id,
        name="cpu",
        value=value,
        occurred_at=at or datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
        tags={"host": "a"},
        unit=None,
    )


def batch(topic: str, partition: int, records: list[tuple[int, MetricEvent]], **kw: object) -> Batch[MetricEvent]:
    recs = [Record(o, e, str(e.tenant_id).encode(), b"{}") for o, e in records]
    offsets = (
        [o for o, _ in records]
        + [d.offset for d in kw.get("rejected", [])]  # type: ignore[attr-defined]
        + [c.record.offset for c in kw.get("cached", [])]  # type: ignore[attr-defined]
    )
    return Batch(topic, partition, min(offsets), max(offsets), recs, **kw)  # type: ignore[arg-type]


def cached(offset: int, event: MetricEvent, committed_at: int) -> Cached[MetricEvent]:
    """A record the dedupe cache saw committed by the batch that ended at `committed_at`."""
    return Cached(Record(offset, event, str(event.tenant_id).encode(), b"{}"), committed_at)


def rows(dsn: str, tenant: uuid.UUID) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT dedupe_id, value, kafka_offset FROM eventsink.metrics_raw WHERE tenant_id = %s ORDER BY dedupe_id",
            (tenant,),
        ).fetchall()


def topic() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


async def test_two_tenants_with_the_same_dedupe_id_both_persist(sink: Sink, database_url: str) -> None:
    a, b, t = uuid.uuid4(), uuid.uuid4(), topic()
    result = await sink.write(batch(t, 0, [(0, metric(a, "same")), (1, metric(b, "same"))]))
    assert len(result.applied) == 2
    assert [r[0] for r in rows(database_url, a)] == ["same"]
    assert [r[0] for r in rows(database_url, b)] == ["same"]


async def test_duplicates_in_one_batch_keep_the_earliest(sink: Sink, database_url: str) -> None:
    a, t = uuid.uuid4(), topic()
    result = await sink.write(batch(t, 0, [(2, metric(a, "k", 2.0)), (0, metric(a, "k", 1.0)), (1, metric(a, "j"))]))
    assert (len(result.applied), len(result.duplicates)) == (2, 1)
    assert rows(database_url, a) == [("j", 1.0, 1), ("k", 1.0, 0)]


async def test_duplicates_across_batches_are_dropped(sink: Sink, database_url: str) -> None:
    a, t = uuid.uuid4(), topic()
    await sink.write(batch(t, 0, [(0, metric(a, "k", 1.0))]))
    result = await sink.write(batch(t, 0, [(1, metric(a, "k", 9.0)), (2, metric(a, "new"))]))
    assert [r.offset for r in result.duplicates] == [1]
    assert rows(database_url, a) == [("k", 1.0, 0), ("new", 1.0, 2)]


async def test_redelivery_after_commit_adds_nothing(sink: Sink, database_url: str) -> None:
    """The database committed but the Kafka commit never happened: the batch comes again."""
    a, t = uuid.uuid4(), topic()
    b = batch(t, 0, [(i, metric(a, f"e{i}")) for i in range(10)])
    first = await sink.write(b)
    again = await sink.write(b)
    assert len(first.applied) == 10
    assert (again.redelivered, len(again.applied), again.ledger_after) == (10, 0, 9)
    assert len(rows(database_url, a)) == 10
    # A redelivery that overlaps new records applies only the new part.
    overlap = await sink.write(batch(t, 0, [(i, metric(a, f"e{i}")) for i in range(5, 15)]))
    assert (overlap.redelivered, len(overlap.applied), overlap.ledger_after) == (5, 5, 14)


async def test_ledger_counts_every_outcome(sink: Sink, database_url: str) -> None:
    a, t = uuid.uuid4(), topic()
    bad = DeadLetter(Reason.INVALID_JSON, "nope", t, 0, 2, None, b"x")
    await sink.write(
        batch(
            t,
            0,
            [(0, metric(a, "x")), (1, metric(a, "x"))],
            rejected=[bad],
            cached=[cached(3, metric(a, "x"), committed_at=-1)],
        )
    )
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT last_offset, events, rows_applied, duplicates, dead_letters FROM eventsink.offsets_ledger "
            "WHERE consumer_group = %s AND topic = %s AND partition = 0",
            (sink.group, t),
        ).fetchone()
    assert row == (3, 4, 1, 2, 1)


async def test_a_batch_that_would_skip_records_is_refused(sink: Sink) -> None:
    a, t = uuid.uuid4(), topic()
    await sink.write(batch(t, 0, [(0, metric(a, "a"))]))
    with pytest.raises(OffsetGap) as gap:
        await sink.write(batch(t, 0, [(5, metric(a, "b"))]))
    assert (gap.value.expected, gap.value.first) == (1, 5)
    verified = batch(t, 0, [(5, metric(a, "b"))])
    verified.holes = (Hole(0, 5),)  # the broker said nothing lies after the ledger's offset 0
    assert len((await sink.write(verified)).applied) == 1


async def test_tenant_is_a_uuid_and_time_keeps_microseconds(sink: Sink, database_url: str) -> None:
    a, t = uuid.uuid4(), topic()
    at = datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)
    await sink.write(batch(t, 0, [(0, metric(a, "u", at=at))]))
    with psycopg.connect(database_url) as conn:
        tenant, occurred, kind, size = conn.execute(
            "SELECT tenant_id, occurred_at, pg_typeof(tenant_id)::text, pg_column_size(tenant_id) "
            "FROM eventsink.metrics_raw WHERE tenant_id = %s",
            (a,),
        ).fetchone()
    assert (tenant, occurred, kind, size) == (a, at, "uuid", 16)


async def test_a_batch_failing_part_way_leaves_nothing(sink: Sink, dead: DeadLetters, database_url: str) -> None:
    """Rows are upserted, then the dead letters cannot be delivered: the whole batch rolls back."""
    a, t = uuid.uuid4(), topic()
    bad = DeadLetter(Reason.INVALID_JSON, "nope", t, 0, 3, None, b"x")
    b = batch(t, 0, [(i, metric(a, f"e{i}")) for i in range(3)], rejected=[bad])
    dead.fail = True
    with pytest.raises(TransientSinkError, match="broker unreachable"):
        await sink.write(b)
    assert rows(database_url, a) == []
    assert await sink.positions(t) == {}  # the ledger row itself was rolled back
    dead.fail = False
    assert len((await sink.write(b)).applied) == 3
    assert [d.offset for d in dead.received] == [3]


async def test_a_record_the_database_refuses_is_dead_lettered_alone(
    sink: Sink, dead: DeadLetters, database_url: str
) -> None:
    a, t = uuid.uuid4(), topic()
    poison = metric(a, "poison", value=float("nan"))  # bypasses validation, as a bug would
    result = await sink.write(batch(t, 0, [(0, metric(a, "a")), (1, poison), (2, metric(a, "b"))]))
    assert sorted(r[0] for r in rows(database_url, a)) == ["a", "b"]
    assert [(d.offset, d.reason) for d in dead.received] == [(1, Reason.DB_REJECTED)]
    assert "23514" in dead.received[0].detail
    assert result.ledger_after == 2


async def test_concurrent_writers_with_overlapping_keys_do_not_deadlock(pool: object, database_url: str) -> None:
    tenants = [uuid.uuid4() for _ in range(5)]
    keys = [(t, f"k{i}") for t in tenants for i in range(400)]
    t, group = topic(), f"g-{uuid.uuid4().hex[:8]}"

    async def writer(partition: int) -> int:
        picked = random.sample(keys, 1000)
        random.shuffle(picked)
        sink = Sink(pool, group, WRITER, DeadLetters())  # type: ignore[arg-type]
        result = await sink.write(batch(t, partition, [(i, metric(tn, k)) for i, (tn, k) in enumerate(picked)]))
        return len(result.applied)

    applied = await asyncio.wait_for(asyncio.gather(*(writer(p) for p in range(10))), 60)
    with psycopg.connect(database_url) as conn:
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (tenant_id, dedupe_id)) FROM eventsink.metrics_raw "
            "WHERE tenant_id = ANY(%s)",
            (tenants,),
        ).fetchone()
    assert total == distinct == sum(applied)


async def test_an_unreachable_database_is_a_transient_error() -> None:
    p = open_pool(f"postgresql://postgres@127.0.0.1:{free_port()}/x", stage_ddl=WRITER.stage_ddl)
    await p.open(wait=False)
    try:
        sink = Sink(p, "g", WRITER, DeadLetters(), connection_timeout=1.0)
        with pytest.raises(TransientSinkError):
            await sink.write(batch(topic(), 0, [(0, metric(uuid.uuid4(), "a"))]))
    finally:
        await p.close()


async def test_sql_in_values_is_stored_verbatim(sink: Sink, database_url: str) -> None:
    a, t = uuid.uuid4(), topic()
    nasty = "'); DROP TABLE eventsink.metrics_raw; --"
    event = MetricEvent.model_construct(
        tenant_id=a,
        dedupe_id=nasty,
        name=nasty,
        value=1.0,
        occurred_at=datetime(2024, 5, 1, tzinfo=UTC),
        tags={nasty: f'{nasty} \\ " $1 %s'},
        unit=None,
    )
    await sink.write(batch(t, 0, [(0, event)]))
    with psycopg.connect(database_url) as conn:
        stored = conn.execute(
            "SELECT dedupe_id, name, tags FROM eventsink.metrics_raw WHERE tenant_id = %s", (a,)
        ).fetchone()
    assert stored == (nasty, nasty, event.tags)
