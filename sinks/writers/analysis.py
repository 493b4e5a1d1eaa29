"""Analysis requests: every event kept in `analysis_events`, the row of `analysis_requests` folded
from all of them each time one arrives (the state machine is `sinks.writers.lifecycle`).

An event older than the row's lifecycle state when it arrives is applied-but-superseded: kept,
flagged, counted, and changes no lifecycle field.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg import AsyncConnection, AsyncCursor
from psycopg.types.json import Jsonb

from schemas.analysis import AnalysisEvent
from sinks.core.batch import Outcome, Record
from sinks.writers import owners
from sinks.writers.lifecycle import ROW_COLUMNS, Step, fold, step_of, superseded
from sinks.writers.staging import Records, StagedWriter, Staging

STAGING = Staging.of(AnalysisEvent, "analysis_stage")
SELECT_ROWS = f"SELECT id, {', '.join(ROW_COLUMNS)} FROM eventsink.analysis_requests WHERE id = ANY(%s)"
ARCHIVED = "SELECT id FROM eventsink.analysis_requests_archive WHERE id = ANY(%s)"
INSERT_EVENTS = """
INSERT INTO eventsink.analysis_events
    (tenant_id, dedupe_id, analysis_id, status, occurred_at, progress, result, error, kind,
     media_url, schema_version, attributes, kafka_topic, kafka_partition, kafka_offset)
SELECT s.tenant_id, s.dedupe_id, s.analysis_id, s.status, s.occurred_at, s.progress, s.result,
       s.error, s.kind, s.media_url, s.schema_version, s.attributes, %(topic)s, %(partition)s, s.kafka_offset
FROM analysis_stage s
JOIN unnest(%(ids)s::uuid[], %(tenants)s::uuid[]) AS o(id, tenant_id)
  ON o.id = s.analysis_id AND o.tenant_id = s.tenant_id
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
ROW_VALUES = """
unnest(%s::uuid[], %s::uuid[], %s::text[], %s::int2[], %s::jsonb[], %s::text[], %s::text[], %s::text[],
       %s::int4[], %s::timestamptz[], %s::timestamptz[], %s::timestamptz[])
  AS u(id, tenant_id, status, progress, result, error, kind, media_url, version, created_at, updated_at, deleted_at)
"""
# Rows are created from the events inserted, never ahead of them.
INSERT_ROWS = f"""
INSERT INTO eventsink.analysis_requests
    (id, tenant_id, status, progress, result, error, kind, media_url, version, created_at, updated_at, deleted_at)
SELECT * FROM {ROW_VALUES}
"""
UPDATE_ROWS = f"""
UPDATE eventsink.analysis_requests r
SET status = u.status, progress = u.progress, result = u.result, error = u.error, kind = u.kind,
    media_url = u.media_url, version = u.version, created_at = u.created_at,
    updated_at = u.updated_at, deleted_at = u.deleted_at
FROM {ROW_VALUES}
WHERE r.id = u.id
"""


class AnalysisWriter(StagedWriter[AnalysisEvent], kind="analysis", staging=STAGING, ordered=True):
    async def apply(
        self, conn: AsyncConnection, topic: str, partition: int, records: Records[AnalysisEvent]
    ) -> Outcome:
        cur = await STAGING.stage(conn, records)

        async def archived_of(missing: list[UUID]) -> set[UUID]:
            # Read under the row and claim locks: an analysis retention is archiving right now is
            # either locked by us (retention skips it) or, once retention committed, found here.
            return {row[0] for row in await (await cur.execute(ARCHIVED, (missing,))).fetchall()}

        claims = await owners.claim(conn, records, owners.ANALYSES, not_creatable=archived_of)
        archived = claims.excluded
        outcome = Outcome()
        # An archived analysis was deleted long ago: a late event of it changes nothing.
        late = {r.offset for r in records if r.event.analysis_id in archived}
        outcome.applied |= late
        outcome.superseded |= late
        live = [r for r in records if r.event.analysis_id not in archived]
        if not live:
            return outcome
        outcome.rejected = claims.refused
        ids, tenants = claims.pairs()
        await cur.execute(INSERT_EVENTS, {"ids": ids, "tenants": tenants, "topic": topic, "partition": partition})
        inserted = {int(off): dedupe for off, dedupe in await cur.fetchall()}
        if inserted:
            await self._refold(cur, records, inserted, claims, outcome)
        outcome.applied |= set(inserted)
        return outcome

    async def _refold(
        self,
        cur: AsyncCursor,
        records: Records[AnalysisEvent],
        inserted: dict[int, str],
        claims: owners.Claims,
        outcome: Outcome,
    ) -> None:
        arriving = sorted((r for r in records if r.offset in inserted), key=lambda r: r.offset)
        changed = sorted({r.event.analysis_id for r in arriving})
        history: dict[UUID, list[Step]] = {i: [] for i in changed}
        for aid, *fields in await (await cur.execute(EVENTS_OF, (changed,))).fetchall():
            history[aid].append(Step(*fields))
        stale_tenants, stale_ids = [], []
        by_analysis: dict[UUID, list[Record[AnalysisEvent]]] = {aid: [] for aid in changed}
        for r in arriving:  # still in delivery order
            by_analysis[r.event.analysis_id].append(r)
        created: list[list[Any]] = []
        updated: list[list[Any]] = []
        result = ROW_COLUMNS.index("result")
        for aid, new in by_analysis.items():
            new_ids = {r.event.dedupe_id for r in new}
            before = [s for s in history[aid] if s.dedupe_id not in new_ids]
            old = superseded(before, [step_of(r.event) for r in new])
            for r in new:
                if r.event.dedupe_id in old:
                    outcome.superseded.add(r.offset)
                    stale_tenants.append(r.event.tenant_id)
                    stale_ids.append(r.event.dedupe_id)
            values = [aid, claims.owners[aid], *fold(history[aid]).row()]
            values[result + 2] = Jsonb(values[result + 2]) if values[result + 2] is not None else None
            (created if aid in claims.new else updated).append(values)
        if stale_ids:
            await cur.execute(MARK_SUPERSEDED, (stale_tenants, stale_ids))
        for statement, rows in ((INSERT_ROWS, created), (UPDATE_ROWS, updated)):
            if rows:
                await cur.execute(statement, [list(c) for c in zip(*rows, strict=True)])

    async def prepare(self, conn: AsyncConnection, records: Records[AnalysisEvent]) -> None:
        """Before a batch is redone record by record: claim all its analyses at once."""
        await owners.lock_ids(conn, records, owners.ANALYSES)
