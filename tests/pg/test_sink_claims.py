"""`Sink.write` checks what the stream side claims, never trusts it: a batch whose verdict is wrong
(a verified hole after another offset than the ledger's, a lost range that does not meet the
ledger, records that skip offsets no hole explains, a cached duplicate the ledger does not
confirm) is refused and nothing of it is applied. And an error no record's value can cause (a
bad deploy) never drains the stream into the DLQ. Real PostgreSQL throughout."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest

from schemas.deadletter import DeadLetter, Reason
from sinks.core.batch import Cached, Hole, LostRange
from sinks.core.sink import Sink
from sinks.errors import ClaimRefused, OffsetGap, TransientSinkError
from tests.helpers import writers_pool
from tests.pg.test_sink_edges import WRITER, Letters, batch, ledger_row, metric, record, stored


@pytest.fixture
async def sink(database_url: str) -> AsyncIterator[Sink]:
    async with writers_pool(database_url, WRITER) as pool:
        yield Sink(pool, f"g-{uuid.uuid4().hex[:8]}", WRITER, Letters())


def lost_rows(dsn: str, group: str, topic: str) -> list[tuple[int, int]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT first_offset, last_offset FROM eventsink.lost_ranges WHERE consumer_group = %s AND topic = %s",
            (group, topic),
        ).fetchall()


async def applied_up_to(sink: Sink, topic: str, tenant: uuid.UUID, last: int) -> None:
    await sink.write(batch(topic, *(record(i, metric(tenant, f"e{i}")) for i in range(last + 1))))


async def test_a_verified_hole_is_accepted_only_after_the_ledgers_offset(sink: Sink, database_url: str) -> None:
    """At shutdown a batch 5..7 was abandoned after the drain deadline; the next one starts at 10
    after a hole the consumer saw between 7 and 10. The ledger is at 4: accepting "nothing lies
    before 10" would move it past 5..7, which were never applied."""
    t, topic = uuid.uuid4(), f"m-{uuid.uuid4().hex[:8]}"
    await applied_up_to(sink, topic, t, 4)
    after_abandoned = batch(topic, record(10, metric(t, "j")), holes=(Hole(7, 10),))
    with pytest.raises(OffsetGap) as gap:
        await sink.write(after_abandoned)
    assert (gap.value.expected, gap.value.first) == (5, 10)
    with pytest.raises(OffsetGap):  # a hole that does not reach the batch says nothing of 9
        await sink.write(batch(topic, record(10, metric(t, "j")), holes=(Hole(4, 9),)))
    assert set(stored(database_url, t)) == {f"e{i}" for i in range(5)}
    assert ledger_row(database_url, sink.group, topic)[:2] == (4, 5)

    result = await sink.write(batch(topic, record(10, metric(t, "j")), holes=(Hole(4, 10),)))
    assert [r.offset for r in result.applied] == [10]
    assert ledger_row(database_url, sink.group, topic)[:2] == (10, 6)


async def test_records_that_skip_offsets_no_hole_explains_are_refused(sink: Sink, database_url: str) -> None:
    t, topic = uuid.uuid4(), f"m-{uuid.uuid4().hex[:8]}"
    jump = batch(topic, record(0, metric(t, "a")), record(5, metric(t, "b")))
    with pytest.raises(ClaimRefused, match=r"1\.\.4"):
        await sink.write(jump)
    elsewhere = batch(topic, record(0, metric(t, "a")), record(5, metric(t, "b")), holes=(Hole(1, 5),))
    with pytest.raises(ClaimRefused):
        await sink.write(elsewhere)
    beyond = batch(topic, record(0, metric(t, "a")))
    beyond.last_offset = 9  # the ledger would move past 1..9, which no record accounts for
    with pytest.raises(ClaimRefused, match=r"0\.\.9"):
        await sink.write(beyond)
    twice = batch(topic, record(0, metric(t, "a")), record(0, metric(t, "b")))
    with pytest.raises(ClaimRefused, match="twice"):
        await sink.write(twice)
    assert stored(database_url, t) == {}
    assert ledger_row(database_url, sink.group, topic) is None

    spanned = batch(topic, record(0, metric(t, "a")), record(5, metric(t, "b")), holes=(Hole(0, 5),))
    assert [r.offset for r in (await sink.write(spanned)).applied] == [0, 5]
    assert ledger_row(database_url, sink.group, topic)[:2] == (5, 2)


async def test_a_lost_range_is_recorded_only_where_it_meets_the_ledger_and_the_log_start(
    sink: Sink, database_url: str
) -> None:
    t, topic = uuid.uuid4(), f"m-{uuid.uuid4().hex[:8]}"
    await applied_up_to(sink, topic, t, 0)
    wrong = [
        (LostRange(5, 9, 10), ()),  # does not start after the ledger (0)
        (LostRange(1, 7, 10), ()),  # does not end where the broker's log starts
        (LostRange(1, 9, 10), ()),  # 10..11: nothing says they hold no record
        (LostRange(1, 9, 10), (Hole(8, 12),)),  # a hole after another offset than the loss's end
    ]
    for lost, holes in wrong:
        with pytest.raises(OffsetGap):
            await sink.write(batch(topic, record(12, metric(t, "m")), lost=lost, holes=holes))
    assert set(stored(database_url, t)) == {"e0"}
    assert ledger_row(database_url, sink.group, topic)[:5] == (0, 1, 1, 0, 0)
    assert lost_rows(database_url, sink.group, topic) == []

    result = await sink.write(batch(topic, record(12, metric(t, "m")), lost=LostRange(1, 9, 10), holes=(Hole(9, 12),)))
    assert (result.lost, [r.offset for r in result.applied]) == (9, [12])
    assert ledger_row(database_url, sink.group, topic)[:5] == (12, 2, 2, 0, 9)
    assert lost_rows(database_url, sink.group, topic) == [(1, 9)]


async def test_a_cached_duplicate_the_ledger_does_not_confirm_is_not_counted(sink: Sink, database_url: str) -> None:
    """The cache says key "k" was committed by the batch ending at 8; the ledger is at 2 (that
    commit is not in this database): the claim is refused, and the database judges the record."""
    t, topic = uuid.uuid4(), f"m-{uuid.uuid4().hex[:8]}"
    await applied_up_to(sink, topic, t, 2)
    result = await sink.write(
        batch(
            topic,
            record(3, metric(t, "e3")),
            cached=[Cached(record(4, metric(t, "k")), committed_at=8), Cached(record(5, metric(t, "e0")), 6)],
        )
    )
    assert (result.cached_duplicates, result.cache_misses) == (0, 2)
    assert sorted(r.offset for r in result.applied) == [3, 4]  # "k" was never stored
    assert [r.offset for r in result.duplicates] == [5]  # "e0" is, the database says so
    assert set(stored(database_url, t)) == {"e0", "e1", "e2", "e3", "k"}
    assert ledger_row(database_url, sink.group, topic)[:4] == (5, 6, 5, 1)


BAD_DEPLOYS = {
    # (what a bad deploy does to the table, how it is put right)
    "renamed column": (
        "ALTER TABLE eventsink.metrics_raw RENAME COLUMN value TO value_renamed",
        "ALTER TABLE eventsink.metrics_raw RENAME COLUMN value_renamed TO value",
    ),
    "renamed table": (
        "ALTER TABLE eventsink.metrics_raw RENAME TO metrics_raw_renamed",
        "ALTER TABLE eventsink.metrics_raw_renamed RENAME TO metrics_raw",
    ),
    "column type changed": (  # 42804: the statement no longer fits the table
        "ALTER TABLE eventsink.metrics_raw ALTER COLUMN name TYPE integer USING length(name)",
        "ALTER TABLE eventsink.metrics_raw ALTER COLUMN name TYPE text USING name::text",
    ),
}


@pytest.mark.parametrize("deploy", sorted(BAD_DEPLOYS))
async def test_an_error_every_record_meets_waits_and_dead_letters_nothing(deploy: str, own_database: str) -> None:
    """A schema change no record caused makes every record of every batch fail: the batch is
    retried (transient), nothing is dead-lettered, the ledger waits; once put right, every record
    is applied once."""
    breaking, fixing = BAD_DEPLOYS[deploy]
    letters = Letters()
    t, topic = uuid.uuid4(), f"m-{uuid.uuid4().hex[:8]}"
    async with writers_pool(own_database, WRITER) as pool:
        sink = Sink(pool, "g", WRITER, letters)
        await sink.write(batch(topic, record(100, metric(t, "earlier")), holes=(Hole(-1, 100),)))
        sent = batch(topic, *(record(101 + i, metric(t, f"e{i}")) for i in range(5)))
        sent.rejected.append(DeadLetter(Reason.INVALID_JSON, "not JSON", topic, 0, 106, None, b"{"))
        sent.last_offset = 106
        with psycopg.connect(own_database, autocommit=True) as conn:
            conn.execute(breaking)
        try:
            for _ in range(3):  # as the pipeline retries it
                with pytest.raises(TransientSinkError):
                    await sink.write(sent)
            assert letters == []
            assert ledger_row(own_database, "g", topic)[:2] == (100, 1)
        finally:
            with psycopg.connect(own_database, autocommit=True) as conn:
                conn.execute(fixing)
        result = await sink.write(sent)
    assert sorted(r.offset for r in result.applied) == [101, 102, 103, 104, 105]
    assert [d.offset for d in letters] == [106]  # the one record that is invalid, and only it
    assert stored(own_database, t) == {"earlier": 1.5, **{f"e{i}": 1.5 for i in range(5)}}
    assert ledger_row(own_database, "g", topic)[:3] == (106, 7, 6)


class BrokenWriter:
    """The metric writer after a bad deploy: its code fails for every record, whatever it holds."""

    kind, stage_ddl, ordered = WRITER.kind, WRITER.stage_ddl, WRITER.ordered

    async def upsert(self, *args: object) -> None:
        raise AttributeError("'MetricEvent' object has no attribute 'renamed_field'")

    async def prepare(self, *args: object) -> None:
        pass

    upsert_one = upsert


async def test_an_error_of_our_own_code_dead_letters_nothing(database_url: str) -> None:
    letters = Letters()
    t, topic = uuid.uuid4(), f"m-{uuid.uuid4().hex[:8]}"
    async with writers_pool(database_url, WRITER) as pool:
        sink = Sink(pool, f"g-{uuid.uuid4().hex[:8]}", BrokenWriter(), letters)  # type: ignore[arg-type]
        with pytest.raises(AttributeError):
            await sink.write(batch(topic, *(record(i, metric(t, f"e{i}")) for i in range(3))))
    assert letters == []
    assert stored(database_url, t) == {}
    assert ledger_row(database_url, sink.group, topic) is None
