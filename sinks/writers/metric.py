"""Metric rows: bulk upsert through a binary COPY into a session-local staging table."""

from __future__ import annotations

from psycopg import AsyncConnection

from schemas.metric import MetricEvent
from sinks.core.batch import Outcome
from sinks.writers.staging import Records, StagedWriter, Staging

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


class MetricWriter(StagedWriter[MetricEvent], kind="metric", staging=STAGING):
    """A metric row takes only its own key's lock: nothing to `prepare`."""

    async def apply(self, conn: AsyncConnection, topic: str, partition: int, records: Records[MetricEvent]) -> Outcome:
        cur = await STAGING.stage(conn, records)
        await cur.execute(UPSERT, (topic, partition))
        return Outcome(applied={int(r[0]) for r in await cur.fetchall()})
