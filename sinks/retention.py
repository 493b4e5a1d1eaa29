"""Retention: metric rows older than a cut deleted, idle chat sessions deleted (their messages
cascade), old soft-deleted analyses archived. All run in bounded batches, each its own short
transaction, next to live workers.

Rows are picked with `FOR UPDATE SKIP LOCKED` and the age condition is checked again when
deleting: a session a worker is writing to right now is skipped this round (its row is locked)
and is no longer idle once the worker commits.

Metric retention fixes its cut (`now() - days`) once per run and records it in
`eventsink.retention_horizons` before deleting, so `eventsink verify` knows that an event
older than it may have been pruned rather than lost. It walks the tenants and deletes each
one's old rows through the `(tenant_id, occurred_at)` index the table already has, and deletes
them by their key `(tenant_id, id)`: a batch reads only rows it deletes, and the hot insert path
pays for no extra index. (Every statement names the tenant with the id: on tables distributed by
tenant, README "Outgrowing one PostgreSQL", each row is then found on its own shard.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

COUNT_IDLE_SESSIONS = """
SELECT count(*), coalesce(sum(message_count), 0) FROM eventsink.chat_sessions
WHERE last_message_at < now() - %(age)s
"""
DELETE_IDLE_SESSIONS = """
WITH doomed AS (
    SELECT tenant_id, id FROM eventsink.chat_sessions
    WHERE last_message_at < now() - %(age)s
    ORDER BY id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM eventsink.chat_sessions s
USING doomed
WHERE s.tenant_id = doomed.tenant_id AND s.id = doomed.id AND s.last_message_at < now() - %(age)s
RETURNING s.message_count
"""
COUNT_DELETED_ANALYSES = """
SELECT count(*) FROM eventsink.analysis_requests
WHERE status = 'deleted' AND deleted_at < now() - %(age)s
"""
ARCHIVE_DELETED_ANALYSES = """
WITH doomed AS (
    SELECT tenant_id, id FROM eventsink.analysis_requests
    WHERE status = 'deleted' AND deleted_at < now() - %(age)s
    ORDER BY id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), moved AS (
    DELETE FROM eventsink.analysis_requests r
    USING doomed
    WHERE r.tenant_id = doomed.tenant_id AND r.id = doomed.id
    RETURNING r.*
), archived AS (
    INSERT INTO eventsink.analysis_requests_archive
        (id, tenant_id, status, progress, result, error, kind, media_url, version,
         created_at, updated_at, deleted_at)
    SELECT id, tenant_id, status, progress, result, error, kind, media_url, version,
           created_at, updated_at, deleted_at
    FROM moved
    RETURNING tenant_id, id
), forgotten AS (
    DELETE FROM eventsink.analysis_events e
    USING archived
    WHERE e.tenant_id = archived.tenant_id AND e.analysis_id = archived.id
)
SELECT id FROM archived
"""


METRICS = "metrics_raw"
CUT = "SELECT now() - %(age)s"
# The tenants with metric rows, one index probe each (a loose index scan).
METRIC_TENANTS = """
WITH RECURSIVE tenants AS (
    (SELECT tenant_id FROM eventsink.metrics_raw ORDER BY tenant_id LIMIT 1)
    UNION ALL
    SELECT (SELECT m.tenant_id FROM eventsink.metrics_raw m
            WHERE m.tenant_id > t.tenant_id ORDER BY m.tenant_id LIMIT 1)
    FROM tenants t
    WHERE t.tenant_id IS NOT NULL
)
SELECT tenant_id FROM tenants WHERE tenant_id IS NOT NULL
"""
COUNT_OLD_METRICS = """
SELECT count(*) FROM eventsink.metrics_raw WHERE tenant_id = %(tenant)s AND occurred_at < %(cut)s
"""
DELETE_OLD_METRICS = """
WITH doomed AS (
    SELECT id FROM eventsink.metrics_raw
    WHERE tenant_id = %(tenant)s AND occurred_at < %(cut)s
    ORDER BY occurred_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM eventsink.metrics_raw m
USING doomed
WHERE m.tenant_id = %(tenant)s AND m.id = doomed.id AND m.occurred_at < %(cut)s
RETURNING m.id
"""
# Only forward: rows older than an earlier, later cut were pruned then.
RAISE_HORIZON = """
INSERT INTO eventsink.retention_horizons AS h (target, horizon) VALUES (%(target)s, %(cut)s)
ON CONFLICT (target) DO UPDATE
SET horizon = greatest(h.horizon, excluded.horizon), updated_at = now()
"""
HORIZON = "SELECT horizon FROM eventsink.retention_horizons WHERE target = %s"


@dataclass
class RetentionResult:
    sessions: int = 0
    messages: int = 0
    analyses: int = 0
    metrics: int = 0
    metrics_cut: datetime | None = None  # metric rows with occurred_at before it are pruned


Progress = Callable[[str, int], None]


def _in_batches(
    conn: psycopg.Connection, statement: str, params: dict[str, Any], table: str, progress: Progress | None
) -> Iterator[list[tuple]]:
    """Run a bounded statement, each run its own short transaction, until it touches nothing;
    each run's rows are told to `progress` (as `table`'s) once the caller has counted them."""
    while True:
        with conn.transaction():
            rows = conn.execute(statement, params).fetchall()
        if not rows:
            return
        yield rows
        if progress:
            progress(table, len(rows))


@contextmanager
def _by_age(dsn: str, days: float, batch: int) -> Iterator[tuple[psycopg.Connection, dict[str, Any]]]:
    """An autocommit connection, and the parameters of the statements that pick rows by age:
    older than `days`, `batch` rows per run."""
    # prepare_threshold=None: a statement repeated per batch is never prepared by name (through
    # PgBouncer the next batch may run on another server connection, which does not know it).
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        yield conn, {"age": timedelta(days=days), "batch": batch}


def expire_chat(
    dsn: str, days: float, *, batch: int = 1000, dry_run: bool = False, progress: Progress | None = None
) -> RetentionResult:
    with _by_age(dsn, days, batch) as (conn, params):
        if dry_run:
            sessions, messages = conn.execute(COUNT_IDLE_SESSIONS, params).fetchone()  # type: ignore[misc]
            return RetentionResult(sessions=sessions, messages=int(messages))
        result = RetentionResult()
        for rows in _in_batches(conn, DELETE_IDLE_SESSIONS, params, "chat_sessions", progress):
            result.sessions += len(rows)
            result.messages += sum(r[0] for r in rows)
    return result


def archive_analyses(
    dsn: str, days: float, *, batch: int = 1000, dry_run: bool = False, progress: Progress | None = None
) -> RetentionResult:
    with _by_age(dsn, days, batch) as (conn, params):
        if dry_run:
            (count,) = conn.execute(COUNT_DELETED_ANALYSES, params).fetchone()  # type: ignore[misc]
            return RetentionResult(analyses=count)
        result = RetentionResult()
        for rows in _in_batches(conn, ARCHIVE_DELETED_ANALYSES, params, "analysis_requests", progress):
            result.analyses += len(rows)
    return result


def expire_metrics(
    dsn: str, days: float, *, batch: int = 1000, dry_run: bool = False, progress: Progress | None = None
) -> RetentionResult:
    """Delete metric rows whose occurred_at is before `now() - days` (the cut, fixed at the start
    and returned), tenant by tenant, `batch` rows per transaction.

    A duplicate that arrives after its original was deleted is stored again (and goes at the
    next run, if it is still older than the cut): the database's dedupe only knows what it holds.
    """
    result = RetentionResult()
    # prepare_threshold=None: a statement repeated per batch is never prepared by name (through
    # PgBouncer the next batch may run on another server connection, which does not know it).
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        (cut,) = conn.execute(CUT, {"age": timedelta(days=days)}).fetchone()  # type: ignore[misc]
        result.metrics_cut = cut
        tenants = [row[0] for row in conn.execute(METRIC_TENANTS)]
        if dry_run:
            for tenant in tenants:
                (n,) = conn.execute(COUNT_OLD_METRICS, {"tenant": tenant, "cut": cut}).fetchone()  # type: ignore[misc]
                result.metrics += n
            return result
        # Said before it is done: verify reads a missing event older than the horizon as pruned.
        conn.execute(RAISE_HORIZON, {"target": METRICS, "cut": cut})
        for tenant in tenants:
            params = {"tenant": tenant, "cut": cut, "batch": batch}
            for rows in _in_batches(conn, DELETE_OLD_METRICS, params, METRICS, progress):
                result.metrics += len(rows)
    return result


def horizon_of(conn: psycopg.Connection, target: str) -> datetime | None:
    """How far retention has pruned `target` (rows older than this may be gone), or None."""
    row = conn.execute(HORIZON, (target,)).fetchone()
    return row[0] if row else None


def counts_of(
    dsn: str, chat_days: float | None, analysis_days: float | None, metrics_days: float | None = None
) -> RetentionResult:
    """What a run would remove (for --dry-run and for the progress totals)."""
    out = RetentionResult()
    if metrics_days is not None:
        r = expire_metrics(dsn, metrics_days, dry_run=True)
        out.metrics, out.metrics_cut = r.metrics, r.metrics_cut
    if chat_days is not None:
        r = expire_chat(dsn, chat_days, dry_run=True)
        out.sessions, out.messages = r.sessions, r.messages
    if analysis_days is not None:
        out.analyses = archive_analyses(dsn, analysis_days, dry_run=True).analyses
    return out
