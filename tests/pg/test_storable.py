"""Every decoded event is storable: it goes through `Sink.write` into the real PostgreSQL and
reads back equal, value for value, in a session of any time zone.

Events are drawn by hypothesis (`tests.strategies`), decoded from their bytes as a worker would,
written in one batch, and read back. What each column must hold is computed by the strategy from
what was sent (the UTC instant by datetime arithmetic from the drawn offset, JSON numbers as
exact decimals), never by the code under test. Timestamps are compared three ways: as the
instant psycopg gives back in the session's zone, as text in UTC with microseconds, and as
microseconds since the epoch.
"""

from __future__ import annotations

import json
import math
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from schemas import AnalysisEvent, ChatEvent, Decoded, MetricEvent, decode
from schemas.chat import MAX_CONTENT_BYTES
from schemas.columns import EARLIEST, LATEST
from schemas.deadletter import DeadLetter
from sinks.core.batch import Batch, Record
from sinks.core.sink import Sink
from sinks.writers.analysis import AnalysisWriter
from sinks.writers.chat import ChatWriter
from sinks.writers.metric import MetricWriter
from tests.helpers import writers_pool
from tests.strategies import Expected, json_decimal, json_number, valid_analysis, valid_chat, valid_metric

# West of Greenwich by hours and minutes (LMT at year 1), east by 14 hours, and UTC.
ZONES = ["UTC", "America/New_York", "Pacific/Kiritimati"]
WRITERS = [MetricWriter(), ChatWriter(), AnalysisWriter()]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Each example is one transaction; half the profile's count keeps the file within seconds.
EXAMPLES = settings(max_examples=max(15, settings().max_examples // 2))


class Refused:
    """The sink's dead-letter handler: a storable event must never reach it."""

    def __init__(self) -> None:
        self.dead: list[DeadLetter] = []

    async def __call__(self, dead: list[DeadLetter]) -> None:
        self.dead.extend(dead)


@pytest.fixture(scope="module", params=ZONES)
async def zone_pool(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[tuple[str, Any]]:
    zone = request.param
    dsn = make_conninfo(database_url, options=f"-c TimeZone={zone}")
    async with writers_pool(dsn, *WRITERS, max_size=2) as pool:
        yield zone, pool


async def write(pool: Any, writer: Any, model: type, expected: list[Expected]) -> dict[str, Any]:
    """Decode each payload from its bytes, as a worker would, and write them as one batch;
    return the decoded events by dedupe_id."""
    records = []
    for offset, exp in enumerate(expected):
        raw = json.dumps(exp.payload, ensure_ascii=False).encode()
        result = decode(raw, model, str(exp.tenant).encode(), {"max_content_bytes": MAX_CONTENT_BYTES})
        assert isinstance(result, Decoded), (exp.payload, result)
        records.append(Record(offset, result.event, str(exp.tenant).encode(), raw))
    refused = Refused()
    sink = Sink(pool, "storable", writer, refused)
    batch = Batch(f"storable-{uuid.uuid4().hex}", 0, 0, len(records) - 1, records)
    result = await sink.write(batch)
    assert refused.dead == [], [(d.reason, d.detail) for d in refused.dead]
    assert len(result.applied) == len(records)
    return {r.event.dedupe_id: r.event for r in records}


async def rows(pool: Any, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        return await (await conn.execute(sql, params)).fetchall()


# The instant three ways: psycopg's datetime (in the session zone), UTC text, epoch microseconds.
INSTANT = (
    "occurred_at, to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'),"
    " (extract(epoch FROM occurred_at) * 1000000)::numeric"
)


async def read_back(pool: Any, table: str, columns: str, tenant: uuid.UUID, events: list[Expected]) -> dict[str, Any]:
    """The tenant's rows of `table` by dedupe_id: `columns`, then the instant three ways (INSTANT).
    Exactly the events' keys are there."""
    sql = f"SELECT dedupe_id, {columns}, {INSTANT} FROM {table} WHERE tenant_id = %s"
    found = {r[0]: r[1:] for r in await rows(pool, sql, tenant)}
    assert set(found) == {e.dedupe_id for e in events}
    return found


def check_instant(exp: Expected, got: datetime, utc_text: str, epoch_us: Decimal) -> None:
    # The same instant, compared in UTC: Python never calls an aware datetime in a zone's repeated
    # hour (1969-10-26 01:00 in New York) equal to one of another zone (PEP 495).
    assert got.astimezone(UTC) == exp.occurred_at
    assert utc_text == exp.occurred_at.replace(tzinfo=None).isoformat(timespec="microseconds")
    assert epoch_us == (exp.occurred_at - EPOCH) // (datetime.resolution)


def same_float(got: float, want: float) -> None:
    assert got == want and math.copysign(1, got) == math.copysign(1, want), (got, want)


def unique_keys(items: list[Expected]) -> list[Expected]:
    return list({e.dedupe_id: e for e in items}.values())


def draw_owned(
    data: st.DataObject, event_of: Callable[[uuid.UUID], st.SearchStrategy[Expected]]
) -> tuple[list[uuid.UUID], list[Expected]]:
    """1 to 3 row ids (conversations, analyses) and 1 to 6 events of distinct keys among them."""
    ids = [uuid.uuid4() for _ in range(data.draw(st.integers(1, 3)))]
    return ids, unique_keys(data.draw(st.lists(st.sampled_from(ids).flatmap(event_of), min_size=1, max_size=6)))


# A metric batch this small goes inline (arrays bound as parameters) by default; staged (a COPY
# into the transaction's table) when inline_rows is 0, as a larger batch always is.
@pytest.mark.parametrize("writer", [MetricWriter(), MetricWriter(inline_rows=0)], ids=["inline", "staged"])
@given(data=st.data())
@EXAMPLES
async def test_metric_events_read_back_equal(
    zone_pool: tuple[str, Any], writer: MetricWriter, data: st.DataObject
) -> None:
    _, pool = zone_pool
    tenant = uuid.uuid4()
    events = unique_keys(data.draw(st.lists(valid_metric(tenant), min_size=1, max_size=6)))
    assert writer.inlined(len(events)) is (writer.inline_rows > 0)
    await write(pool, writer, MetricEvent, events)
    found = await read_back(pool, "eventsink.metrics_raw", "name, value, unit, tags::text", tenant, events)
    for exp in events:
        name, value, unit, tags, *instant = found[exp.dedupe_id]
        assert name == exp.values["name"] and unit == exp.values["unit"]
        same_float(value, exp.values["value"])
        assert json_decimal(tags) == json_number(exp.values["tags"])
        check_instant(exp, *instant)


@given(data=st.data())
@EXAMPLES
async def test_chat_events_read_back_equal(zone_pool: tuple[str, Any], data: st.DataObject) -> None:
    _, pool = zone_pool
    tenant = uuid.uuid4()
    conversations, events = draw_owned(data, lambda c: valid_chat(tenant, c))
    await write(pool, ChatWriter(), ChatEvent, events)
    names = ("session_id", "role", "content", "model", "prompt_tokens", "completion_tokens")
    found = await read_back(pool, "eventsink.chat_messages", ", ".join(names), tenant, events)
    for exp in events:
        *columns, got, utc_text, epoch_us = found[exp.dedupe_id]
        assert dict(zip(names, columns, strict=True)) == {n: exp.values[n] for n in names}
        check_instant(exp, got, utc_text, epoch_us)
    sessions = await rows(
        pool,
        "SELECT id, tenant_id, message_count, prompt_tokens, completion_tokens, created_at, last_message_at "
        "FROM eventsink.chat_sessions WHERE id = ANY(%s)",
        conversations,
    )
    count = Counter(e.values["session_id"] for e in events)
    for sid, owner, messages, prompt, completion, created, last in sessions:
        mine = [e for e in events if e.values["session_id"] == sid]
        assert owner == tenant and messages == count[sid]
        assert prompt == sum(e.values["prompt_tokens"] or 0 for e in mine)
        assert completion == sum(e.values["completion_tokens"] or 0 for e in mine)
        assert created == min(e.occurred_at for e in mine) and last == max(e.occurred_at for e in mine)
    assert {s[0] for s in sessions} == set(count)


@given(data=st.data())
@EXAMPLES
async def test_analysis_events_read_back_equal(zone_pool: tuple[str, Any], data: st.DataObject) -> None:
    _, pool = zone_pool
    tenant = uuid.uuid4()
    analyses, events = draw_owned(data, lambda a: valid_analysis(tenant, a))
    decoded = await write(pool, AnalysisWriter(), AnalysisEvent, events)
    columns = "analysis_id, status, progress, result::text, error, kind, media_url"
    found = await read_back(pool, "eventsink.analysis_events", columns, tenant, events)
    for exp in events:
        aid, status, progress, result, error, kind, media_url, *instant = found[exp.dedupe_id]
        v = exp.values
        assert (aid, status, progress, error, kind, media_url) == (
            v["analysis_id"],
            v["status"],
            v["progress"],
            v["error"],
            v["kind"],
            v["media_url"],
        )
        assert (None if result is None else json_decimal(result)) == json_number(v["result"])
        # And equal as Python reads it back (what the writer folds and verify compares).
        assert (None if result is None else json.loads(result)) == decoded[exp.dedupe_id].result
        check_instant(exp, *instant)
    owners = await rows(pool, "SELECT id, tenant_id FROM eventsink.analysis_requests WHERE id = ANY(%s)", analyses)
    assert {o[0] for o in owners} == {e.values["analysis_id"] for e in events}
    assert {o[1] for o in owners} == {tenant}


async def test_the_timestamp_bounds_are_what_every_session_gives_back(zone_pool: tuple[str, Any]) -> None:
    """The schema's bounds (`schemas.columns.EARLIEST` / `LATEST`) read back in every zone; a day
    further out, a session west (or east) of Greenwich cannot give the instant to Python."""
    zone, pool = zone_pool
    for bound in (EARLIEST, LATEST):
        assert (await rows(pool, "SELECT %s::timestamptz", bound))[0][0] == bound
    beyond = {"America/New_York": "0001-01-01T00:00:00Z", "Pacific/Kiritimati": "9999-12-31T12:00:00Z"}.get(zone)
    if beyond is not None:
        with pytest.raises(psycopg.DataError, match="year"):
            await rows(pool, "SELECT %s::timestamptz", beyond)
        assert decode_metric_at(beyond) is None, "the schema accepts an instant this session cannot read back"


def decode_metric_at(occurred_at: str) -> MetricEvent | None:
    body = {"tenant_id": str(uuid.uuid4()), "dedupe_id": "t", "name": "n", "value": 1, "tags": {}}
    result = decode(orjson.dumps({**body, "occurred_at": occurred_at}), MetricEvent)
    return result.event if isinstance(result, Decoded) else None


async def test_jsonb_gives_back_every_finite_double_written_with_a_fraction(zone_pool: tuple[str, Any]) -> None:
    """Why `schemas.columns.jsonb_text` spells out a float's exponent with a fraction: jsonb keeps
    a number's digits and scale, so 3.2e21 comes back as the integer 3200000000000000000000
    (an int to Python, beyond 64 bits for 2e19; another number for 1.2345678901234567e18), while
    3200000000000000000000.0 comes back as the float that was sent, up to 1e308 and down to
    5e-324. Through the pool's own JSON dumper, as the sinks write it (issue 19)."""
    _, pool = zone_pool
    sent = {"a": 1.2345678901234567e18, "b": 2e19, "c": 2.0**53 - 1, "d": 3.2e21, "e": 1.7976931348623157e308}
    sent |= {"f": -1e308, "g": 5e-324, "h": 1e-7, "i": 2**64 - 1, "j": -(2**63), "k": "1e+16 stays a string"}
    (plain,) = (await rows(pool, "SELECT %s::jsonb::text", json.dumps(sent)))[0]
    back = json.loads(plain)
    assert back["a"] == int(Decimal(repr(sent["a"]))) != sent["a"]  # the decimal shown, not the double
    assert back["b"] == 20000000000000000000 > 2**64
    (text,) = (await rows(pool, "SELECT %s::jsonb::text", Jsonb(sent)))[0]
    back = json.loads(text)
    assert back == sent and [type(v) for v in back.values()] == [type(v) for v in sent.values()]
    assert json_decimal(text) == json_number(sent)
    body = {"tenant_id": str(uuid.uuid4()), "dedupe_id": "a", "analysis_id": str(uuid.uuid4())}
    body |= {"status": "completed", "occurred_at": "2024-05-01T12:00:00Z"}
    kept = decode(json.dumps({**body, "result": sent}).encode(), AnalysisEvent)
    assert isinstance(kept, Decoded) and kept.event.result == sent
