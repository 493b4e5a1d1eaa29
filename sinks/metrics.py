"""Metric rows: bulk upsert through a binary COPY into a session-local staging table."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg.types.json import Jsonb

from schemas.metric import MetricEvent
from sinks.batch import Outcome, Record
from sinks.staging import stage

TABLE = "eventsink.metrics_raw"

STAGE = """
CREATE TEMP TABLE IF NOT EXISTS metrics_stage (
    tenant_id    uuid,
    dedupe_id    text,
    name         text,
    value        float8,
    unit         text,
    occurred_at  timestamptz,
    tags         jsonb,
    kafka_offset bigint
) ON COMMIT DELETE ROWS
"""
COPY_STAGE = """
COPY metrics_stage (tenant_id, dedupe_id, name, value, unit, occurred_at, tags, kafka_offset)
FROM STDIN (FORMAT BINARY)
"""
STAGE_TYPES = ["uuid", "text", "text", "float8", "text", "timestamptz", "jsonb", "int8"]

# Sorted by key so that concurrent writers take index locks in one order (no deadlock); the
# offset breaks ties so the earliest of two same-key records in one batch is the one kept.
UPSERT = """
INSERT INTO eventsink.metrics_raw
    (tenant_id, dedupe_id, name, value, unit, occurred_at, tags,
     kafka_topic, kafka_partition, kafka_offset)
SELECT tenant_id, dedupe_id, name, value, unit, occurred_at, tags, %s, %s, kafka_offset
FROM metrics_stage
ORDER BY tenant_id, dedupe_id, kafka_offset
ON CONFLICT (tenant_id, dedupe_id) DO NOTHING
RETURNING kafka_offset
"""
INSERT_ONE = """
INSERT INTO eventsink.metrics_raw
    (tenant_id, dedupe_id, name, value, unit, occurred_at, tags,
     kafka_topic, kafka_partition, kafka_offset)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (tenant_id, dedupe_id) DO NOTHING
RETURNING kafka_offset
"""


def _row(record: Record[MetricEvent]) -> tuple:
    e = record.event
    return (e.tenant_id, e.dedupe_id, e.name, e.value, e.unit, e.occurred_at, e.tags, record.offset)


class MetricWriter:
    kind = "metric"
    stage_ddl: tuple[str, ...] = (STAGE,)

    async def upsert(
        self, conn: psycopg.AsyncConnection, topic: str, partition: int, records: Sequence[Record[MetricEvent]]
    ) -> Outcome:
        if not records:
            return Outcome()
        cur = await stage(conn, COPY_STAGE, STAGE_TYPES, map(_row, records))
        await cur.execute(UPSERT, (topic, partition))
        return Outcome(applied={int(r[0]) for r in await cur.fetchall()})

    async def upsert_one(
        self, conn: psycopg.AsyncConnection, topic: str, partition: int, record: Record[MetricEvent]
    ) -> Outcome:
        e = record.event
        cur = await conn.execute(
            INSERT_ONE,
            (
                e.tenant_id,
                e.dedupe_id,
                e.name,
                e.value,
                e.unit,
                e.occurred_at,
                Jsonb(e.tags),
                topic,
                partition,
                record.offset,
            ),
        )
        inserted = await cur.fetchone()
        return Outcome(applied={record.offset} if inserted else set())
