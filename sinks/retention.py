"""Retention: idle chat sessions deleted (their messages cascade), old soft-deleted analyses
archived. Both run in bounded batches, each its own short transaction, next to live workers.

Rows are picked with `FOR UPDATE SKIP LOCKED` and the age condition is checked again when
deleting: a session a worker is writing to right now is skipped this round (its row is locked)
and is no longer idle once the worker commits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg

COUNT_IDLE_SESSIONS = """
SELECT count(*), coalesce(sum(message_count), 0) FROM eventsink.chat_sessions
WHERE last_message_at < now() - %(age)s
"""
DELETE_IDLE_SESSIONS = """
WITH doomed AS (
    SELECT id FROM eventsink.chat_sessions
    WHERE last_message_at < now() - %(age)s
    ORDER BY id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM eventsink.chat_sessions s
USING doomed
WHERE s.id = doomed.id AND s.last_message_at < now() - %(age)s
RETURNING s.message_count
"""
COUNT_DELETED_ANALYSES = """
SELECT count(*) FROM eventsink.analysis_requests
WHERE status = 'deleted' AND deleted_at < now() - %(age)s
"""
ARCHIVE_DELETED_ANALYSES = """
WITH doomed AS (
    SELECT id FROM eventsink.analysis_requests
    WHERE status = 'deleted' AND deleted_at < now() - %(age)s
    ORDER BY id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), moved AS (
    DELETE FROM eventsink.analysis_requests r
    USING doomed
    WHERE r.id = doomed.id
    RETURNING r.*
), archived AS (
    INSERT INTO eventsink.analysis_requests_archive
        (id, tenant_id, status, progress, result, error, kind, media_url, version,
         created_at, updated_at, deleted_at)
    SELECT id, tenant_id, status, progress, result, error, kind, media_url, version,
           created_at, updated_at, deleted_at
    FROM moved
    RETURNING id
), forgotten AS (
    DELETE FROM eventsink.analysis_events e
    USING archived
    WHERE e.analysis_id = archived.id
)
SELECT id FROM archived
"""


@dataclass
class RetentionResult:
    sessions: int = 0
    messages: int = 0
    analyses: int = 0


Progress = Callable[[str, int], None]


def _in_batches(conn: psycopg.Connection, statement: str, params: dict[str, Any]) -> Iterator[list[tuple]]:
    """Run a bounded statement, each run its own short transaction, until it touches nothing."""
    while True:
        with conn.transaction():
            rows = conn.execute(statement, params).fetchall()
        if not rows:
            return
        yield rows


def expire_chat(
    dsn: str, days: float, *, batch: int = 1000, dry_run: bool = False, progress: Progress | None = None
) -> RetentionResult:
    params = {"age": timedelta(days=days), "batch": batch}
    result = RetentionResult()
    with psycopg.connect(dsn, autocommit=True) as conn:
        if dry_run:
            sessions, messages = conn.execute(COUNT_IDLE_SESSIONS, params).fetchone()  # type: ignore[misc]
            return RetentionResult(sessions=sessions, messages=int(messages))
        for rows in _in_batches(conn, DELETE_IDLE_SESSIONS, params):
            result.sessions += len(rows)
            result.messages += sum(r[0] for r in rows)
            if progress:
                progress("chat_sessions", len(rows))
    return result


def archive_analyses(
    dsn: str, days: float, *, batch: int = 1000, dry_run: bool = False, progress: Progress | None = None
) -> RetentionResult:
    params = {"age": timedelta(days=days), "batch": batch}
    result = RetentionResult()
    with psycopg.connect(dsn, autocommit=True) as conn:
        if dry_run:
            (count,) = conn.execute(COUNT_DELETED_ANALYSES, params).fetchone()  # type: ignore[misc]
            return RetentionResult(analyses=count)
        for rows in _in_batches(conn, ARCHIVE_DELETED_ANALYSES, params):
            result.analyses += len(rows)
            if progress:
                progress("analysis_requests", len(rows))
    return result


def counts_of(dsn: str, chat_days: float | None, analysis_days: float | None) -> RetentionResult:
    """What a run would remove (for --dry-run and for the progress totals)."""
    out = RetentionResult()
    if chat_days is not None:
        r = expire_chat(dsn, chat_days, dry_run=True)
        out.sessions, out.messages = r.sessions, r.messages
    if analysis_days is not None:
        out.analyses = archive_analyses(dsn, analysis_days, dry_run=True).analyses
    return out
