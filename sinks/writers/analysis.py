"""Analysis requests: every event kept in `analysis_events`, the row of `analysis_requests` folded
from all of them each time one arrives (the state machine is `sinks.writers.lifecycle`).

An event older than the row's lifecycle state when it arrives is applied-but-superseded: kept,
flagged, counted, and changes no lifecycle field.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from schemas.analysis import AnalysisEvent
from sinks.core.batch import Outcome, Record
from sinks.writers.lifecycle import ROW_COLUMNS, State, Step, fold, step_of, superseded
from sinks.writers.owners import claim_owners, mismatches
from sinks.writers.staging import Staging, restage_one

STAGING = Staging.of(AnalysisEvent, "analysis_stage")
SELECT_ROWS = f"SELECT id, {', '.join(ROW_COLUMNS)} FROM eventsink.analysis_requests WHERE id = ANY(%s)"
ARCHIVED = "SELECT id FROM eventsink.analysis_requests_archive WHERE id = ANY(%s)"
CREATE_ROWS = """
INSERT INTO eventsink.analysis_requests (id, tenant_id, status, version, created_at, updated_at)
SELECT DISTINCT ON (analysis_id) analysis_id, tenant_id, 'pending', 0, occurred_at, occurred_at
FROM analysis_stage
WHERE analysis_id = ANY(%s)
ORDER BY analysis_id, kafka_offset
ON CONFLICT (id) DO NOTHING
"""
LOCK_ROWS = """
SELECT id, tenant_id FROM eventsink.analysis_requests
WHERE id = ANY(%s)
ORDER BY id
FOR UPDATE
"""
INSERT_EVENTS = """
INSERT INTO eventsink.analysis_events
    (tenant_id, dedupe_id, analysis_id, status, occurred_at, progress, result, error, kind,
     media_url, schema_version, attributes, kafka_topic, kafka_partition, kafka_offset)
SELECT s.tenant_id, s.dedupe_id, s.analysis_id, s.status, s.occurred_at, s.progress, s.result,
       s.error, s.kind, s.media_url, s.schema_version, s.attributes, %(topic)s, %(partition)s, s.kafka_offset
FROM analysis_stage s
JOIN eventsink.analysis_requests r ON r.id = s.analysis_id AND r.tenant_id = s.tenant_id
ORDER BY s.tenant_id, s.dedupe_id, s.kafka_offset
ON CONFLICT (tenant_id, dedupe_id) DO NOTHING
RETURNING kafka_offset, dedupe_id
"""
EVENTS_OF = """
SELECT analysis_id, dedupe_id, status, occurred_at, progress, result, error, kind, media_url
FROM eventsink.analysis_events
WHERE analysis_id = ANY(%s)
"""
MARK_SUPERSEDED = """
UPDATE eventsink.analysis_events e SET superseded = true
FROM unnest(%s::uuid[], %s::text[]) AS u(tenant_id, dedupe_id)
WHERE e.tenant_id = u.tenant_id AND e.dedupe_id = u.dedupe_id
"""
UPDATE_ROWS = """
UPDATE eventsink.analysis_requests r
SET status = u.status, progress = u.progress, result = u.result, error = u.error, kind = u.kind,
    media_url = u.media_url, version = u.version, created_at = u.created_at,
    updated_at = u.updated_at, deleted_at = u.deleted_at
FROM unnest(%s::uuid[], %s::text[], %s::int2[], %s::jsonb[], %s::text[], %s::text[], %s::text[],
            %s::int4[], %s::timestamptz[], %s::timestamptz[], %s::timestamptz[])
     AS u(id, status, progress, result, error, kind, media_url, version, created_at, updated_at, deleted_at)
WHERE r.id = u.id
"""


class AnalysisWriter:
    kind = "analysis"
    stage_ddl: tuple[str, ...] = (STAGING.ddl,)

    async def upsert(
        self, conn: psycopg.AsyncConnection, topic: str, partition: int, records: Sequence[Record[AnalysisEvent]]
    ) -> Outcome:
        if not records:
            return Outcome()
        cur = await STAGING.stage(conn, records)
        ids = sorted({r.event.analysis_id for r in records})
        archived = {row[0] for row in await (await cur.execute(ARCHIVED, (ids,))).fetchall()}
        live = [i for i in ids if i not in archived]
        outcome = Outcome()
        # An archived analysis was deleted long ago: a late event of it changes nothing.
        late = {r.offset for r in records if r.event.analysis_id in archived}
        outcome.applied |= late
        outcome.superseded |= late
        if not live:
            return outcome
        owners = await claim_owners(conn, live, CREATE_ROWS, LOCK_ROWS)
        outcome.rejected = mismatches([r for r in records if r.event.analysis_id in owners], owners, "analysis_id")
        await cur.execute(INSERT_EVENTS, {"topic": topic, "partition": partition})
        inserted = {int(off): dedupe for off, dedupe in await cur.fetchall()}
        if inserted:
            await self._refold(cur, records, inserted, outcome)
        outcome.applied |= set(inserted)
        return outcome

    async def _refold(
        self,
        cur: psycopg.AsyncCursor,
        records: Sequence[Record[AnalysisEvent]],
        inserted: dict[int, str],
        outcome: Outcome,
    ) -> None:
        arriving = sorted((r for r in records if r.offset in inserted), key=lambda r: r.offset)
        changed = sorted({r.event.analysis_id for r in arriving})
        history: dict[UUID, list[Step]] = {i: [] for i in changed}
        for aid, *fields in await (await cur.execute(EVENTS_OF, (changed,))).fetchall():
            history[aid].append(Step(*fields))
        stale_tenants, stale_ids = [], []
        rows: list[tuple[UUID, State]] = []
        by_analysis: dict[UUID, list[Record[AnalysisEvent]]] = {aid: [] for aid in changed}
        for r in arriving:  # still in delivery order
            by_analysis[r.event.analysis_id].append(r)
        for aid, new in by_analysis.items():
            new_ids = {r.event.dedupe_id for r in new}
            before = [s for s in history[aid] if s.dedupe_id not in new_ids]
            old = superseded(before, [step_of(r.event) for r in new])
            for r in new:
                if r.event.dedupe_id in old:
                    outcome.superseded.add(r.offset)
                    stale_tenants.append(r.event.tenant_id)
                    stale_ids.append(r.event.dedupe_id)
            rows.append((aid, fold(history[aid])))
        if stale_ids:
            await cur.execute(MARK_SUPERSEDED, (stale_tenants, stale_ids))
        result = ROW_COLUMNS.index("result")
        values = [[aid, *st.row()] for aid, st in rows]
        for v in values:  # jsonb travels wrapped
            v[result + 1] = Jsonb(v[result + 1]) if v[result + 1] is not None else None
        columns = list(zip(*values, strict=True))
        await cur.execute(UPDATE_ROWS, [list(c) for c in columns])

    async def upsert_one(
        self, conn: psycopg.AsyncConnection, topic: str, partition: int, record: Record[AnalysisEvent]
    ) -> Outcome:
        return await restage_one(self, STAGING, conn, topic, partition, record)
