"""Analysis through `Sink.write`: the state machine, tenant isolation, and order independence."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from schemas.analysis import AnalysisEvent
from schemas.deadletter import DeadLetter, Reason
from sinks.core.batch import Batch, Record
from sinks.core.sink import Sink
from sinks.writers.analysis import AnalysisWriter
from tests.helpers import writers_pool

WRITER = AnalysisWriter()
T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
COLUMNS = "tenant_id, status, progress, result, error, kind, media_url, version, created_at, updated_at, deleted_at"


class Letters(list):
    async def __call__(self, dead: list[DeadLetter], conn: object = None) -> None:
        self.extend(dead)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[object]:
    async with writers_pool(database_url, WRITER, max_size=4) as p:
        yield p


def ev(tenant: uuid.UUID, aid: uuid.UUID, dedupe: str, status: str, seconds: float, **kw: object) -> AnalysisEvent:
    # dedupe_id is per tenant: qualify it by the analysis so that analyses never share one.
    fields = {
        "tenant_id": tenant,
        "dedupe_id": f"{aid}:{dedupe}",
        "analysis_id": aid,
        "status": status,
        "occurred_at": T0 + timedelta(seconds=seconds),
        "progress": None,
        "result": None,
        "error": None,
        "media_url": None,
        "kind": None,
    }
    return AnalysisEvent.model_construct(**{**fields, **kw})


def life(tenant: uuid.UUID, aid: uuid.UUID) -> list[AnalysisEvent]:
    return [
        ev(tenant, aid, "p", "pending", 0, kind="summary", media_url="s3://m/1.mp4"),
        ev(tenant, aid, "r1", "processing", 1, progress=20),
        ev(tenant, aid, "r2", "processing", 2, progress=70),
        ev(tenant, aid, "c", "completed", 3, result={"score": 0.5, "labels": ["a"]}),
        ev(tenant, aid, "r3", "processing", 4, progress=90),  # a late report after completion
        ev(tenant, aid, "d", "deleted", 5),
    ]


class Feed:
    """Delivers events to a sink as a topic partition would: offsets in delivery order."""

    def __init__(self, pool: object) -> None:
        self.sink = Sink(pool, f"g-{uuid.uuid4().hex[:8]}", WRITER, Letters())  # type: ignore[arg-type]
        self.topic = f"analysis-{uuid.uuid4().hex[:8]}"
        self.next = 0

    async def deliver(self, *events: AnalysisEvent):  # type: ignore[no-untyped-def]
        records = [Record(self.next + i, e, str(e.tenant_id).encode(), b"{}") for i, e in enumerate(events)]
        self.next += len(events)
        return await self.sink.write(Batch(self.topic, 0, records[0].offset, records[-1].offset, records))


def row(dsn: str, aid: uuid.UUID) -> tuple | None:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT {COLUMNS} FROM eventsink.analysis_requests WHERE id = %s", (aid,)).fetchone()


async def test_status_never_goes_backwards_and_late_events_are_superseded(pool: object, database_url: str) -> None:
    tenant, aid, feed = uuid.uuid4(), uuid.uuid4(), Feed(pool)
    events = life(tenant, aid)
    await feed.deliver(events[3])  # completed first
    result = await feed.deliver(events[1], events[0])  # then older steps
    assert result.superseded == 2
    r = row(database_url, aid)
    assert r[1:5] == ("completed", 100, {"score": 0.5, "labels": ["a"]}, None)  # type: ignore[index]
    with psycopg.connect(database_url) as conn:
        flags = dict(
            conn.execute("SELECT dedupe_id, superseded FROM eventsink.analysis_events WHERE analysis_id = %s", (aid,))
        )
    assert flags == {f"{aid}:c": False, f"{aid}:r1": True, f"{aid}:p": True}


async def test_a_soft_delete_keeps_the_row_and_nothing_revives_it(pool: object, database_url: str) -> None:
    tenant, aid, feed = uuid.uuid4(), uuid.uuid4(), Feed(pool)
    events = life(tenant, aid)
    await feed.deliver(*events[:4])
    await feed.deliver(events[5])
    await feed.deliver(ev(tenant, aid, "again", "pending", 9), ev(tenant, aid, "more", "processing", 10, progress=1))
    r = row(database_url, aid)
    assert (r[1], r[10]) == ("deleted", T0 + timedelta(seconds=5))  # type: ignore[index]
    assert r[3] == {"score": 0.5, "labels": ["a"]}  # type: ignore[index]


async def test_an_analysis_of_another_tenant_is_refused(pool: object, database_url: str) -> None:
    owner, other, aid, feed = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), Feed(pool)
    await feed.deliver(ev(owner, aid, "p", "pending", 0))
    before = row(database_url, aid)
    result = await feed.deliver(ev(other, aid, "x", "deleted", 1))
    assert [(d.reason, d.offset) for d in result.dead_letters] == [(Reason.TENANT_MISMATCH, 1)]
    assert row(database_url, aid) == before


@pytest.mark.parametrize("seed", range(40))
async def test_any_order_with_duplicates_ends_in_the_in_order_row(pool: object, database_url: str, seed: int) -> None:
    rng = random.Random(seed)
    tenant = uuid.uuid4()
    in_order, shuffled = uuid.uuid4(), uuid.uuid4()
    feed = Feed(pool)
    for e in life(tenant, in_order):
        await feed.deliver(e)
    events = life(tenant, shuffled)
    delivery = rng.sample(events, len(events)) + [rng.choice(events) for _ in range(rng.randint(0, 4))]
    rng.shuffle(delivery)
    while delivery:  # random batch boundaries
        n = rng.randint(1, 3)
        await feed.deliver(*delivery[:n])
        delivery = delivery[n:]
    assert row(database_url, shuffled) == row(database_url, in_order)


async def test_a_duplicate_resent_under_another_analysis_creates_no_row(pool: object, database_url: str) -> None:
    """The same event (same dedupe_id) re-sent naming another analysis_id is a duplicate: no pending,
    version-0 row appears for an analysis no event created."""
    tenant, aid, other, feed = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), Feed(pool)
    first = ev(tenant, aid, "p", "pending", 0)
    await feed.deliver(first)
    again = first.model_copy(update={"analysis_id": other})
    result = await feed.deliver(again)
    assert (len(result.applied), len(result.duplicates)) == (0, 1)
    assert row(database_url, other) is None
    assert row(database_url, aid)[1] == "pending"  # type: ignore[index]


async def test_a_batch_redone_record_by_record_keeps_delivery_order(pool: object, database_url: str) -> None:
    """A record the driver cannot send makes the batch be redone record by record; what an
    analysis event does depends on the ones delivered before it, so the redo keeps offset order
    (not key order): the older pending event, delivered second, is still superseded."""
    tenant, aid, feed = uuid.uuid4(), uuid.uuid4(), Feed(pool)
    later = ev(tenant, aid, "z-processing", "processing", 2, progress=50)
    older = ev(tenant, aid, "a-pending", "pending", 1)
    unsendable = ev(tenant, uuid.uuid4(), "m-bad", "processing", 3, progress=10**400)
    result = await feed.deliver(later, older, unsendable)
    assert [d.offset for d in result.dead_letters] == [2]
    assert result.superseded == 1
    assert row(database_url, aid)[1:3] == ("processing", 50)  # type: ignore[index]


@pytest.mark.parametrize("batching", ["one batch", "three batches"])
async def test_a_duplicate_naming_a_new_analysis_claims_nothing_in_any_batching(
    pool: object, database_url: str, batching: str
) -> None:
    """Tenant A's event of analysis X re-sent (same dedupe_id) naming Y, then tenant B's event of
    Y: the re-send is a duplicate and claims nothing; Y is B's, whether the three come in one
    batch or one by one (issue 19)."""
    a, b, x, y, feed = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), Feed(pool)
    first = AnalysisEvent.model_construct(**{**ev(a, x, "p", "pending", 0).__dict__, "dedupe_id": "shared"})
    again = first.model_copy(update={"analysis_id": y})
    sent = [first, again, ev(b, y, "p", "pending", 1)]
    if batching == "one batch":
        results = [await feed.deliver(*sent)]
    else:
        results = [await feed.deliver(e) for e in sent]
    assert [d for r in results for d in r.dead_letters] == []
    assert sum(len(r.applied) for r in results) == 2 and sum(len(r.duplicates) for r in results) == 1
    assert row(database_url, x)[0:2] == (a, "pending")  # type: ignore[index]
    assert row(database_url, y)[0:2] == (b, "pending")  # type: ignore[index]


@pytest.mark.parametrize("batching", ["one batch", "one by one"])
async def test_a_duplicate_of_a_stored_event_claims_nothing_in_any_batching(
    pool: object, database_url: str, batching: str
) -> None:
    """The same with A's first event stored by an earlier batch; A's own later event of Y is
    then refused, in either batching."""
    a, b, x, y, feed = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), Feed(pool)
    first = AnalysisEvent.model_construct(**{**ev(a, x, "p", "pending", 0).__dict__, "dedupe_id": "shared"})
    await feed.deliver(first)
    sent = [first.model_copy(update={"analysis_id": y}), ev(b, y, "p", "pending", 1), ev(a, y, "r", "processing", 2)]
    if batching == "one batch":
        results = [await feed.deliver(*sent)]
    else:
        results = [await feed.deliver(e) for e in sent]
    assert [(d.reason, d.offset) for r in results for d in r.dead_letters] == [(Reason.TENANT_MISMATCH, 3)]
    assert sum(len(r.duplicates) for r in results) == 1
    assert row(database_url, y)[0:2] == (b, "pending")  # type: ignore[index]
    assert row(database_url, x)[0:2] == (a, "pending")  # type: ignore[index]


async def test_a_result_with_floats_of_any_magnitude_completes_the_analysis(pool: object, database_url: str) -> None:
    """Issue 19: 3.2e21 is what a producer's JSON library writes for a large double. The event is
    stored, the row folded from it (read back from analysis_events and written again) completes,
    and both give back the floats that were sent, as floats."""
    tenant, aid, feed = uuid.uuid4(), uuid.uuid4(), Feed(pool)
    sent = {"x": 3.2e21, "y": [2e19, -1.2345678901234567e18, 1e308, 5e-324], "z": 2**64 - 1}
    await feed.deliver(ev(tenant, aid, "p", "pending", 0))
    result = await feed.deliver(ev(tenant, aid, "c", "completed", 1, result=sent))
    assert (len(result.applied), result.dead_letters) == (1, [])
    assert row(database_url, aid)[1:4] == ("completed", 100, sent)  # type: ignore[index]
    with psycopg.connect(database_url) as conn:
        (stored,) = conn.execute(
            "SELECT result FROM eventsink.analysis_events WHERE dedupe_id = %s", (f"{aid}:c",)
        ).fetchone()  # type: ignore[misc]
    assert stored == sent and type(stored["x"]) is float and type(stored["y"][0]) is float
