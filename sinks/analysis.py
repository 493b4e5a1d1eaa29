"""Analysis requests: a state machine whose row is a pure function of its set of events.

Every event is kept in `analysis_events` (unique per tenant and dedupe_id), and the row of
`analysis_requests` is folded from all of them each time one arrives. The fold orders lifecycle
events by rank (pending < processing < completed | failed) and then by time, so the same set of
events gives the same row whatever order and however many times they are delivered:

- status, progress, result and error come from the lifecycle event latest in that order; a
  terminal state is final (of two terminal events the earlier one stands); a `deleted` event is
  a soft delete that nothing revives: the row keeps its last lifecycle fields, `status` says
  `deleted` and `deleted_at` is the first delete's time;
- kind and media_url are descriptive: the earliest event carrying each sets it;
- created_at / updated_at are the earliest / latest event times, version counts the distinct
  events the row absorbed (so it is the same for any order of delivery and only grows).

An event older than the row's lifecycle state when it arrives is applied-but-superseded: kept,
flagged, counted, and changes no lifecycle field.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from schemas.analysis import AnalysisEvent
from sinks.batch import Outcome, Record
from sinks.chat import claim_owners, mismatches
from sinks.staging import restage_one, stage

RANK = {"pending": 0, "processing": 1, "completed": 2, "failed": 2}
TERMINAL = frozenset({"completed", "failed"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Step:
    """One analysis event, as the fold sees it."""

    dedupe_id: str
    status: str
    occurred_at: datetime
    progress: int | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    kind: str | None = None
    media_url: str | None = None


@dataclass(frozen=True, slots=True)
class State:
    status: str
    progress: int | None
    result: dict[str, Any] | None
    error: str | None
    kind: str | None
    media_url: str | None
    version: int
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None

    def row(self) -> tuple[Any, ...]:
        """The values of ROW_COLUMNS, as analysis_requests stores them."""
        return tuple(getattr(self, c) for c in ROW_COLUMNS)


# The columns of analysis_requests a fold decides (id and tenant_id aside).
ROW_COLUMNS = tuple(State.__dataclass_fields__)
SELECT_ROWS = f"SELECT id, {', '.join(ROW_COLUMNS)} FROM eventsink.analysis_requests WHERE id = ANY(%s)"


def lifecycle_key(step: Step) -> tuple[int, int, str]:
    """Greater means later in the analysis's life."""
    micros = (step.occurred_at - _EPOCH) // timedelta(microseconds=1)
    return RANK[step.status], (-micros if step.status in TERMINAL else micros), step.dedupe_id


def fold(steps: Iterable[Step]) -> State:
    steps = list({s.dedupe_id: s for s in steps}.values())
    if not steps:
        raise ValueError("an analysis has at least one event")
    lifecycle = [s for s in steps if s.status != "deleted"]
    deletes = [s.occurred_at for s in steps if s.status == "deleted"]
    current = max(lifecycle, key=lifecycle_key, default=None)
    by_time = sorted(steps, key=lambda s: (s.occurred_at, s.dedupe_id))
    progress = None
    if current is not None:
        progress = (
            current.progress if current.progress is not None else (100 if current.status == "completed" else None)
        )
    return State(
        status="deleted" if deletes else current.status,  # type: ignore[union-attr]
        progress=progress,
        result=current.result if current else None,
        error=current.error if current else None,
        kind=next((s.kind for s in by_time if s.kind is not None), None),
        media_url=next((s.media_url for s in by_time if s.media_url is not None), None),
        version=len(steps),
        created_at=by_time[0].occurred_at,
        updated_at=by_time[-1].occurred_at,
        deleted_at=min(deletes) if deletes else None,
    )


def superseded(before: Iterable[Step], arriving: Sequence[Step]) -> set[str]:
    """dedupe_ids of arriving events (in delivery order) older than the state they met."""
    key = max((lifecycle_key(s) for s in before if s.status != "deleted"), default=None)
    deleted = any(s.status == "deleted" for s in before)
    out = set()
    for step in arriving:
        if step.status == "deleted":
            if deleted:
                out.add(step.dedupe_id)
            deleted = True
        elif key is not None and lifecycle_key(step) < key:
            out.add(step.dedupe_id)
        else:
            key = lifecycle_key(step)
    return out


STAGE = """
CREATE TEMP TABLE IF NOT EXISTS analysis_stage (
    tenant_id    uuid,
    dedupe_id    text,
    analysis_id  uuid,
    status       text,
    occurred_at  timestamptz,
    progress     smallint,
    result       jsonb,
    error        text,
    kind         text,
    media_url    text,
    kafka_offset bigint
) ON COMMIT DELETE ROWS
"""
COPY_STAGE = """
COPY analysis_stage (tenant_id, dedupe_id, analysis_id, status, occurred_at, progress, result,
                     error, kind, media_url, kafka_offset)
FROM STDIN (FORMAT BINARY)
"""
STAGE_TYPES = ["uuid", "text", "uuid", "text", "timestamptz", "int2", "jsonb", "text", "text", "text", "int8"]
CLEAR_STAGE = "TRUNCATE analysis_stage"
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
     media_url, kafka_topic, kafka_partition, kafka_offset)
SELECT s.tenant_id, s.dedupe_id, s.analysis_id, s.status, s.occurred_at, s.progress, s.result,
       s.error, s.kind, s.media_url, %(topic)s, %(partition)s, s.kafka_offset
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


def step_of(event: AnalysisEvent) -> Step:
    return Step(
        event.dedupe_id,
        event.status,
        event.occurred_at,
        event.progress,
        event.result,
        event.error,
        event.kind,
        event.media_url,
    )


def _row(record: Record[AnalysisEvent]) -> tuple:
    e = record.event
    result = Jsonb(e.result) if e.result is not None else None
    return (
        e.tenant_id,
        e.dedupe_id,
        e.analysis_id,
        e.status,
        e.occurred_at,
        e.progress,
        result,
        e.error,
        e.kind,
        e.media_url,
        record.offset,
    )


class AnalysisWriter:
    kind = "analysis"
    stage_ddl: tuple[str, ...] = (STAGE,)

    async def upsert(
        self, conn: psycopg.AsyncConnection, topic: str, partition: int, records: Sequence[Record[AnalysisEvent]]
    ) -> Outcome:
        if not records:
            return Outcome()
        cur = await stage(conn, COPY_STAGE, STAGE_TYPES, map(_row, records))
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
        return await restage_one(self, conn, CLEAR_STAGE, topic, partition, record)
