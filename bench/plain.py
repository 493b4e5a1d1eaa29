"""The plain loop (issue 21): the fastest honest way to move metric events into their table.

    getmany → orjson.loads per record → binary COPY into a staging table → INSERT … ON CONFLICT
    DO NOTHING (one transaction per partition batch, partitions concurrently) → commit offsets

No validation (a record that the COPY or the INSERT refuses stops the loop), no ledger, no DLQ,
no framework: an anchor for the benchmark, not a product. It maps a metric event to the row that
eventsink writes (sinks/writers/metric.py): same columns, tenant as uuid, occurred_at as
timestamptz, tags and unknown top-level fields (attributes) as jsonb. Reads the same environment
as `eventsink worker` (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL, EVENTSINK_*). Run until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import orjson
import uvloop
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from psycopg.types.json import set_json_dumps
from psycopg_pool import AsyncConnectionPool

from streams.settings import Settings

MAX_RECORDS = 20_000  # per getmany, across partitions
# The staging table's columns (eventsink's metric_stage) and their types.
STAGED = {
    "schema_version": "int2",
    "attributes": "jsonb",
    "tenant_id": "uuid",
    "dedupe_id": "text",
    "name": "text",
    "value": "float8",
    "occurred_at": "timestamptz",
    "tags": "jsonb",
    "unit": "text",
    "kafka_offset": "int8",
}
COLUMNS, TYPES = ", ".join(STAGED), list(STAGED.values())
KNOWN = frozenset(STAGED) - {"attributes", "kafka_offset"}  # the event's own fields
STAGE = f"CREATE TEMP TABLE plain_stage ({', '.join(f'{c} {t}' for c, t in STAGED.items())}) ON COMMIT DROP"
COPY = f"COPY plain_stage ({COLUMNS}) FROM STDIN (FORMAT BINARY)"
# As eventsink's: sorted by key (concurrent partitions lock index entries in one order), the
# earliest offset of a key kept.
UPSERT = f"""
INSERT INTO eventsink.metrics_raw ({COLUMNS}, kafka_topic, kafka_partition)
SELECT {COLUMNS}, %s, %s FROM plain_stage
ORDER BY tenant_id, dedupe_id, kafka_offset
ON CONFLICT (tenant_id, dedupe_id) DO NOTHING
"""

set_json_dumps(orjson.dumps)  # tags and attributes: dicts of JSON values, as orjson writes them


def row(r: ConsumerRecord) -> tuple[object, ...]:
    e = orjson.loads(r.value)
    extra = e.keys() - KNOWN
    attributes = {k: e[k] for k in extra} if extra else None
    at = datetime.fromisoformat(e["occurred_at"])
    tenant = UUID(e["tenant_id"])
    return (e.get("schema_version"), attributes, tenant, e["dedupe_id"], e["name"], e["value"], at, e["tags"],
            e.get("unit"), r.offset)  # fmt: skip


async def write(pool: AsyncConnectionPool, tp: TopicPartition, records: Sequence[ConsumerRecord]) -> None:
    rows = [row(r) for r in records]
    async with pool.connection() as conn:  # one transaction, committed on leaving
        await conn.execute(STAGE)
        async with conn.cursor().copy(COPY) as copy:
            copy.set_types(TYPES)
            for values in rows:
                await copy.write_row(values)
        await conn.execute(UPSERT, (tp.topic, tp.partition))


async def run(settings: Settings) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    pool = AsyncConnectionPool(settings.dsn, min_size=1, max_size=settings.pool_max_size, open=False)
    consumer = AIOKafkaConsumer(
        settings.metrics_topic,
        bootstrap_servers=settings.bootstrap_list,
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(500, settings.session_timeout_ms // 5),
    )
    await pool.open()
    await consumer.start()
    try:
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=500, max_records=MAX_RECORDS)
            if fetched:
                await asyncio.gather(*(write(pool, tp, records) for tp, records in fetched.items()))
                await consumer.commit({tp: records[-1].offset + 1 for tp, records in fetched.items()})
    finally:
        await consumer.stop()
        await pool.close()


if __name__ == "__main__":
    uvloop.run(run(Settings()))
