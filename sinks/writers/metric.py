"""Metric rows: one set-based upsert, from arrays bound as binary parameters (`Staging.inline`: no
table to create) for a batch of up to `INLINE_ROWS` records, else from a binary COPY into the
transaction's staging table."""

from __future__ import annotations

from psycopg import AsyncConnection

from schemas.metric import MetricEvent
from sinks.core.batch import Outcome, Record
from sinks.writers.staging import Records, StagedWriter, Staging

STAGING = Staging.of(MetricEvent, "metric_stage")

# Sorted by key so that concurrent writers take index locks in one order (no deadlock); the
# offset breaks ties so the earliest of two same-key records in one batch is the one kept.
_UPSERT = """
INSERT INTO eventsink.metrics_raw
    (tenant_id, dedupe_id, name, value, unit, occurred_at, tags, schema_version, attributes,
     kafka_topic, kafka_partition, kafka_offset)
SELECT tenant_id, dedupe_id, name, value, unit, occurred_at, tags, schema_version, attributes, %s, %s, kafka_offset
FROM {source}
ORDER BY tenant_id, dedupe_id, kafka_offset
ON CONFLICT (tenant_id, dedupe_id) DO NOTHING
RETURNING kafka_offset
"""
UPSERT = _UPSERT.format(source=STAGING.table)
UPSERT_INLINE = _UPSERT.format(source=STAGING.inline)

# The most records of a batch sent inline. Per transaction (bench/RESULTS.md, ninth round):
# creating the staging table costs PostgreSQL about 1.5 ms of CPU and two more waits for the
# server; binding a row's values as binary array elements costs the worker what copying it does
# up to 2,000 rows (at 5,000 it cost 1.6 times as much), and the server less at every size.
INLINE_ROWS = 2000


class MetricWriter(StagedWriter[MetricEvent], kind="metric", staging=STAGING):
    """A metric row takes only its own key's lock: nothing to `prepare`.

    `inline_rows`: the most records of a batch bound as arrays instead of staged (0: always staged).
    """

    def __init__(self, inline_rows: int = INLINE_ROWS) -> None:
        self.inline_rows = inline_rows

    def inlined(self, records: int) -> bool:
        """Whether a batch of this many records goes inline (no staging table)."""
        return records <= self.inline_rows

    async def apply(self, conn: AsyncConnection, topic: str, partition: int, records: Records[MetricEvent]) -> Outcome:
        if self.inlined(len(records)):
            cur = conn.cursor(binary=True)
            await cur.execute(UPSERT_INLINE, (topic, partition, *STAGING.arrays(records)))
        else:
            cur = await STAGING.stage(conn, records)
            await cur.execute(UPSERT, (topic, partition))
        return Outcome(applied={int(r[0]) for r in await cur.fetchall()})

    async def upsert_one(
        self, conn: AsyncConnection, topic: str, partition: int, record: Record[MetricEvent]
    ) -> Outcome:
        """One record of a batch redone row by row: inline unless `inline_rows` is 0 (then staged,
        and its table dropped before the next record's, as `StagedWriter.upsert_one` does)."""
        if self.inlined(1):
            return await self.upsert(conn, topic, partition, [record])
        return await super().upsert_one(conn, topic, partition, record)
