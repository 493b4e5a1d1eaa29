"""Metric batches sent inline (`Staging.inline`: one array parameter per column, no staging table)
store what was sent, as staged ones do, with what arrays are known to trip on: the text NULL,
braces, quotes, backslashes and commas in a value, NULL elements beside values and alone, empty
text, -0.0, JSON numbers that jsonb would rewrite, `attributes` and `schema_version`. And the
batch size where one way gives over to the other. Real PostgreSQL; every expectation is what the
test sent.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from schemas.deadletter import DeadLetter
from schemas.metric import MetricEvent
from sinks.core.batch import Batch, Record
from sinks.core.sink import Sink
from sinks.writers.metric import INLINE_ROWS, MetricWriter
from tests.helpers import writers_pool

AWKWARD = ["NULL", "null", "", "{a,b}", '"quoted"', "back\\slash", "com,ma", " padded ", "ünï 😀", "\t\n"]


class Letters(list):
    async def __call__(self, dead: list[DeadLetter], conn: object = None) -> None:
        self.extend(dead)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Any]:
    async with writers_pool(database_url, MetricWriter()) as p:
        yield p


def event(tenant: uuid.UUID, i: int, **fields: Any) -> MetricEvent:
    values: dict[str, Any] = {
        "tenant_id": tenant,
        "dedupe_id": f"e{i}",
        "name": "cpu",
        "value": float(i),
        "occurred_at": datetime(2024, 5, 1, 12, 0, 0, i % 1_000_000, tzinfo=UTC),
        "tags": {},
        "unit": None,
        "schema_version": None,
        "attributes": None,
    }
    return MetricEvent.model_construct(**{**values, **fields})


async def write(pool: Any, writer: MetricWriter, events: list[MetricEvent]) -> tuple[Sink, str, Any]:
    topic = f"inline-{uuid.uuid4().hex[:8]}"
    letters = Letters()
    sink = Sink(pool, f"g-{uuid.uuid4().hex[:8]}", writer, letters)
    records = [Record(i, e, str(e.tenant_id).encode(), b"{}") for i, e in enumerate(events)]
    result = await sink.write(Batch(topic, 0, 0, len(records) - 1, records))
    assert letters == []
    return sink, topic, result


def stored(dsn: str, tenant: uuid.UUID) -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT dedupe_id, name, value, unit, occurred_at, tags, schema_version, attributes, kafka_offset"
            " FROM eventsink.metrics_raw WHERE tenant_id = %s",
            (tenant,),
        ).fetchall()
    return {r[0]: r[1:] for r in rows}


@pytest.mark.parametrize("writer", [MetricWriter(), MetricWriter(inline_rows=0)], ids=["inline", "staged"])
async def test_awkward_values_are_stored_as_sent(pool: Any, writer: MetricWriter, database_url: str) -> None:
    tenant = uuid.uuid4()
    events = [
        event(tenant, i, dedupe_id=f"{i}{text}", name=text or "n", unit=text, tags={text: text})
        for i, text in enumerate(AWKWARD)
    ]
    events += [
        event(tenant, 20, value=-0.0, unit=None, schema_version=1, attributes={"nested": {"deep": [1, None, "NULL"]}}),
        event(tenant, 21, value=5e-324, attributes={"big": 3.2e21, "tiny": 1e-7, "max": 1.7976931348623157e308}),
        event(tenant, 22, value=-1.7976931348623157e308, attributes={}, schema_version=1),
    ]
    assert writer.inlined(len(events)) is (writer.inline_rows > 0)
    _, _, result = await write(pool, writer, events)
    assert len(result.applied) == len(events)
    got = stored(database_url, tenant)
    assert set(got) == {e.dedupe_id for e in events}
    for offset, e in enumerate(events):
        name, value, unit, occurred, tags, version, attributes, kafka_offset = got[e.dedupe_id]
        assert (name, unit, tags, version, attributes, kafka_offset) == (
            e.name,
            e.unit,
            e.tags,
            e.schema_version,
            e.attributes,
            offset,
        )
        assert value == e.value and math.copysign(1, value) == math.copysign(1, e.value)
        assert occurred == e.occurred_at


@pytest.mark.parametrize("writer", [MetricWriter(), MetricWriter(inline_rows=0)], ids=["inline", "staged"])
async def test_a_column_all_null_and_a_column_null_beside_values(
    pool: Any, writer: MetricWriter, database_url: str
) -> None:
    """Every unit and attributes NULL in one batch (arrays of NULLs alone), then mixed."""
    tenant = uuid.uuid4()
    alone = [event(tenant, i) for i in range(3)]
    _, _, result = await write(pool, writer, alone)
    mixed = [event(tenant, 10, unit="pct", attributes={"a": 1}), event(tenant, 11), event(tenant, 12, unit="")]
    await write(pool, writer, mixed)
    got = stored(database_url, tenant)
    assert [got[f"e{i}"][2] for i in (0, 1, 2, 10, 11, 12)] == [None, None, None, "pct", None, ""]
    assert [got[f"e{i}"][6] for i in (0, 1, 2, 10, 11, 12)] == [None, None, None, {"a": 1}, None, None]
    assert len(result.applied) == 3


@pytest.mark.parametrize("writer", [MetricWriter(), MetricWriter(inline_rows=0)], ids=["inline", "staged"])
async def test_the_earliest_of_one_key_in_a_batch_is_kept(pool: Any, writer: MetricWriter, database_url: str) -> None:
    tenant = uuid.uuid4()
    events = [event(tenant, 1, value=1.0), event(tenant, 2), event(tenant, 1, value=3.0, dedupe_id="e1")]
    _, _, result = await write(pool, writer, events)
    assert sorted(r.offset for r in result.applied) == [0, 1]
    assert [r.offset for r in result.duplicates] == [2]
    assert stored(database_url, tenant)["e1"][1] == 1.0


@pytest.mark.parametrize("size", [INLINE_ROWS, INLINE_ROWS + 1])
async def test_either_side_of_the_inline_bound(pool: Any, size: int, database_url: str) -> None:
    """INLINE_ROWS records go inline, one more is staged: both apply every record once and
    advance the ledger to the last."""
    writer = MetricWriter()
    assert writer.inlined(size) is (size == INLINE_ROWS)
    tenant = uuid.uuid4()
    events = [event(tenant, i) for i in range(size)]
    sink, topic, result = await write(pool, writer, events)
    assert len(result.applied) == size
    assert {k: v[7] for k, v in stored(database_url, tenant).items()} == {f"e{i}": i for i in range(size)}
    assert (await sink.positions(topic))[0].last_offset == size - 1


@pytest.mark.parametrize("writer", [MetricWriter(), MetricWriter(inline_rows=0)], ids=["inline", "staged"])
async def test_a_client_encoding_from_the_environment_changes_nothing(
    writer: MetricWriter, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libpq takes PGCLIENTENCODING from the environment. psycopg's JSON dumper (the staged path's
    jsonb) encodes UTF-8 whatever the connection's encoding, which the server would read as
    LATIN1: 'ü' stored as 'Ã¼'. The pool pins UTF8."""
    monkeypatch.setenv("PGCLIENTENCODING", "LATIN1")
    tenant = uuid.uuid4()
    sent = event(tenant, 0, name="ü", unit="é", tags={"ü": "é"}, attributes={"x": "ß"})
    async with writers_pool(database_url, writer) as latin_pool:
        async with latin_pool.connection() as conn:
            assert conn.info.encoding == "utf-8"
        await write(latin_pool, writer, [sent])
    monkeypatch.delenv("PGCLIENTENCODING")  # read back as UTF-8 (psycopg's jsonb loader assumes it too)
    name, _, unit, _, tags, _, attributes, _ = stored(database_url, tenant)["e0"]
    assert (name, unit, tags, attributes) == ("ü", "é", {"ü": "é"}, {"x": "ß"})


@pytest.mark.parametrize("writer", [MetricWriter(), MetricWriter(inline_rows=0)], ids=["inline", "staged"])
async def test_array_nulls_off_on_the_database_changes_nothing(writer: MetricWriter, own_database: str) -> None:
    """psycopg cannot type a list of None alone, so an all-NULL column goes as a text array
    `{NULL,...}` even where binary was asked for; under `array_nulls = off` (a database's or a
    role's setting) the server reads its elements as the string 'NULL'. Found by a review: a
    typical batch (unit, schema_version and attributes NULL in every record) was dead-lettered
    whole, and a unit NULL beside attributes set was stored as 'NULL'. Each transaction turns it
    back on (sinks/local_settings.py)."""
    with psycopg.connect(own_database, autocommit=True) as conn:
        name = conn.info.dbname
        conn.execute(f'ALTER DATABASE "{name}" SET array_nulls = off')
    tenant = uuid.uuid4()
    typical = [event(tenant, i) for i in range(100)]  # unit, schema_version, attributes: None
    unit_only = [event(tenant, 100 + i, schema_version=1, attributes={"k": i}) for i in range(3)]
    async with writers_pool(own_database, writer) as own_pool:
        async with own_pool.connection() as conn:
            assert (await (await conn.execute("SHOW array_nulls")).fetchone()) == ("off",)
        _, _, typical_result = await write(own_pool, writer, typical)
        await write(own_pool, writer, unit_only)
    assert len(typical_result.applied) == 100
    got = stored(own_database, tenant)
    assert {k: (v[2], v[5], v[6]) for k, v in got.items()} == {
        **{f"e{i}": (None, None, None) for i in range(100)},
        **{f"e{100 + i}": (None, 1, {"k": i}) for i in range(3)},
    }
