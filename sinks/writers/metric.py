"""Metric rows: bulk upsert through a binary COPY into a session-local staging table."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from schemas.metric import MetricEvent
from sinks.core.batch import Outcome, Record
from sinks.writers.staging import Staging, restage_one

STAGING = Staging.of(MetricEvent, "metric_stage")

# Sorted by key so that concurrent writers take index locks in one order (no deadlock); the
# offset breaks ties so the earliest of two same-key records in one batch is the one kept.
UPSERT = """
INSERT INTO eventsink.metrics_raw
    (tenant_id, dedupe_id, name, value, unit, occurred_at, tags, schema_version, attributes,
     kafka_topic, kafka_partition, kafka_offset)
SELECT tenant_id, dedupe_id, name, value, unit, occurred_at, tags, schema_version, attributes, %s, %s, kafka_offset
FROM metric_stage
ORDER BY tenant_id, dedupe_id, kafka_offset
ON CONFLICT (tenant_id, dedupe_id) DO NOTHING
RETURNING kafka_offset
"""


class MetricWriter:
    kind = "metric"
    stage_ddl: tuple[str, ...] = (STAGING.ddl,)
    ordered = False

    async def upsert(
        self, conn: psycopg.AsyncConnection, topic: str, partition: int, records: Sequence[Record[MetricEvent]]
    ) -> Outcome:
        if not records:
            return Outcome()
        cur = await STAGING.stage(conn, records)
        await cur.execute(UPSERT, (topic, partition))
        return Outcome(applied={int(r[0]) for r in await cur.fetchall()})

    async def prepare(self, conn: psycopg.AsyncConnection, records: Sequence[Record[MetricEvent]]) -> None:
        """Nothing to take ahead: a metric row takes only its own key's lock."""

    async def upsert_one(
        self, conn: psycopg.AsyncConnection, topic: str, partition: int, record: Record[MetricEvent]
    ) -> Outcome:
        return await restage_one(self, STAGING, conn, topic, partition, record)
